// acik chat: talks only to the server that served this page; conversations live in localStorage.
// Model output is untrusted: it is rendered by building DOM nodes with textContent, never innerHTML.
"use strict";

const STORE = "acik.conversations.v1";
const SETTINGS = "acik.settings.v1";
const $ = (id) => document.getElementById(id);

let conversations = load(STORE, []);
let settings = Object.assign({ system: "", temperature: 0.7, maxTokens: 512, apiKey: "" }, load(SETTINGS, {}));
let current = null; // the conversation being shown
let controller = null; // AbortController of the reply in progress
let modelId = null;

function load(key, fallback) {
  try { const v = JSON.parse(localStorage.getItem(key)); return v ?? fallback; } catch { return fallback; }
}
function save() {
  try { localStorage.setItem(STORE, JSON.stringify(conversations)); } catch { setStatus("could not save: storage full"); }
}
function saveSettings() { localStorage.setItem(SETTINGS, JSON.stringify(settings)); }
function setStatus(text) { $("status").textContent = text; }
function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

// ---- Markdown, rendered safely: a small subset (code blocks, headings, lists, quotes, emphasis, links).
function renderInline(text, parent) {
  const re = /(`[^`\n]+`)|(\*\*[^*\n]+\*\*)|(\*[^*\n]+\*)|(\[[^\]\n]+\]\((https?:\/\/[^\s)]+)\))/;
  while (text) {
    const m = re.exec(text);
    if (!m) { parent.appendChild(document.createTextNode(text)); return; }
    if (m.index) parent.appendChild(document.createTextNode(text.slice(0, m.index)));
    const tok = m[0];
    if (m[1]) parent.appendChild(el("code", null, tok.slice(1, -1)));
    else if (m[2]) parent.appendChild(el("strong", null, tok.slice(2, -2)));
    else if (m[3]) parent.appendChild(el("em", null, tok.slice(1, -1)));
    else {
      const a = el("a", null, tok.slice(1, tok.indexOf("](")));
      a.href = m[5]; a.rel = "noopener noreferrer nofollow"; a.target = "_blank";
      parent.appendChild(a);
    }
    text = text.slice(m.index + tok.length);
  }
}

function renderMarkdown(src, parent) {
  parent.replaceChildren();
  const lines = src.split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = /^\s*```(.*)$/.exec(line);
    if (fence) {
      const body = [];
      for (i++; i < lines.length && !/^\s*```\s*$/.test(lines[i]); i++) body.push(lines[i]);
      i++;
      const pre = el("pre"); const code = el("code", null, body.join("\n"));
      if (fence[1].trim()) code.dataset.lang = fence[1].trim();
      pre.appendChild(code); parent.appendChild(pre);
      continue;
    }
    const h = /^(#{1,6})\s+(.*)$/.exec(line);
    if (h) { const node = el("h" + Math.min(h[1].length + 2, 6)); renderInline(h[2], node); parent.appendChild(node); i++; continue; }
    if (/^\s*([-*+]|\d+[.)])\s+/.test(line)) {
      const ordered = /^\s*\d/.test(line);
      const list = el(ordered ? "ol" : "ul");
      while (i < lines.length && /^\s*([-*+]|\d+[.)])\s+/.test(lines[i])) {
        const li = el("li"); renderInline(lines[i].replace(/^\s*([-*+]|\d+[.)])\s+/, ""), li); list.appendChild(li); i++;
      }
      parent.appendChild(list); continue;
    }
    if (/^>\s?/.test(line)) {
      const q = el("blockquote"); const body = [];
      while (i < lines.length && /^>\s?/.test(lines[i])) body.push(lines[i++].replace(/^>\s?/, ""));
      renderInline(body.join("\n"), q); parent.appendChild(q); continue;
    }
    if (!line.trim()) { i++; continue; }
    const para = [];
    while (i < lines.length && lines[i].trim() && !/^\s*(```|#{1,6}\s|>|[-*+]\s|\d+[.)]\s)/.test(lines[i])) para.push(lines[i++]);
    if (!para.length) para.push(lines[i++]);
    const p = el("p"); p.style.whiteSpace = "pre-wrap"; renderInline(para.join("\n"), p); parent.appendChild(p);
  }
}

// ---- Conversations
function newConversation() {
  current = { id: String(Date.now()) + Math.random().toString(16).slice(2, 6), title: "New chat", messages: [] };
  conversations.unshift(current);
  save(); renderList(); renderMessages();
  $("input").focus();
}

function renderList() {
  const ul = $("conversations");
  ul.replaceChildren();
  for (const c of conversations) {
    const li = el("li", c === current ? "active" : "");
    const open = el("button", "open", c.title); open.type = "button"; open.title = c.title;
    open.onclick = () => { if (controller) return; current = c; renderList(); renderMessages(); $("app").classList.remove("show-sidebar"); };
    const del = el("button", "delete", "\u00d7"); del.type = "button"; del.setAttribute("aria-label", "Delete conversation");
    del.onclick = () => {
      if (controller && c === current) return;
      conversations = conversations.filter((x) => x !== c);
      if (c === current) current = conversations[0] || null;
      save(); if (!current) newConversation(); else { renderList(); renderMessages(); }
    };
    li.append(open, del); ul.appendChild(li);
  }
}

function messageNode(m) {
  if (m.role === "notice") return el("div", "msg notice", m.content);
  const node = el("div", "msg " + m.role + (m.error ? " error" : ""));
  if (m.reasoning) {
    const d = el("details", "reasoning"); d.appendChild(el("summary", null, "Reasoning"));
    d.appendChild(el("div", "reasoning-text", m.reasoning)); node.appendChild(d);
  }
  const body = el("div", "body");
  if (m.role === "assistant") renderMarkdown(m.content, body); else body.textContent = m.content;
  node.appendChild(body);
  if (m.meta) node.appendChild(el("div", "meta", m.meta));
  return node;
}

function renderMessages() {
  const box = $("messages");
  box.replaceChildren();
  if (!current || !current.messages.length) {
    box.appendChild(el("div", "empty", "Start a conversation. Everything stays on this machine."));
    return;
  }
  for (const m of current.messages) box.appendChild(messageNode(m));
  box.scrollTop = box.scrollHeight;
}

// ---- Talking to the server
// What the model is sent: the page's notices are not part of the conversation, and a turn that failed
// (its reply is an error) is left out so that, say, one message too long does not ride along forever.
function historyOf(messages) {
  const out = [];
  for (let i = 0; i < messages.length; i++) {
    const m = messages[i], next = messages[i + 1];
    if (m.role !== "user" && m.role !== "assistant") continue;
    if (m.error || (m.role === "user" && next && next.role === "assistant" && next.error)) continue;
    out.push({ role: m.role, content: m.content });
  }
  return out;
}

const DROPPED_NOTICE = "This conversation has outgrown the model's context, so its oldest messages are no longer " +
  "sent to the model (they stay here). The system prompt is always sent.";

function headers() {
  const h = { "Content-Type": "application/json" };
  if (settings.apiKey) h.Authorization = "Bearer " + settings.apiKey;
  return h;
}

async function fetchModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    if (r.status === 401) { setStatus("This server needs an API key: open Settings."); return; }
    const data = await r.json();
    modelId = data.data[0].id;
    $("model-name").textContent = modelId;
  } catch (e) { setStatus("Cannot reach the server: " + e.message); }
}

async function send(text) {
  if (!modelId) await fetchModel();
  if (!modelId) return;
  const conv = current;
  conv.messages.push({ role: "user", content: text });
  if (conv.title === "New chat") conv.title = text.slice(0, 40);
  const reply = { role: "assistant", content: "", reasoning: "" };
  conv.messages.push(reply);
  save(); renderList(); renderMessages();
  const box = $("messages");
  const node = box.lastElementChild;
  const body = node.querySelector(".body");
  let reasoningBox = null;

  const history = historyOf(conv.messages.slice(0, -1));
  if (settings.system.trim()) history.unshift({ role: "system", content: settings.system });
  controller = new AbortController();
  setBusy(true);
  const started = performance.now();
  let first = null, usage = null, timings = null, finish = null, pending = false;
  const paint = () => {
    pending = false;
    renderMarkdown(reply.content, body);
    if (reply.reasoning) {
      if (!reasoningBox) {
        const d = el("details", "reasoning"); d.appendChild(el("summary", null, "Reasoning"));
        reasoningBox = el("div", "reasoning-text"); d.appendChild(reasoningBox); node.insertBefore(d, body);
      }
      reasoningBox.textContent = reply.reasoning;
    }
    box.scrollTop = box.scrollHeight;
  };
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify({
        model: modelId, messages: history, stream: true, stream_options: { include_usage: true }, truncation: "auto",
        temperature: Number(settings.temperature), max_tokens: Number(settings.maxTokens) || undefined,
      }),
    });
    if (!r.ok) {
      let msg = r.status + " " + r.statusText;
      try { msg = (await r.json()).error.message; } catch { /* not JSON */ }
      throw new Error(msg);
    }
    // The server left the oldest turns out to fit the context: say so once in this conversation.
    if (Number(r.headers.get("X-Acik-Dropped-Messages") || 0) > 0 && !conv.messages.some((m) => m.role === "notice")) {
      const notice = { role: "notice", content: DROPPED_NOTICE };
      conv.messages.splice(conv.messages.length - 2, 0, notice);
      if (conv === current && node.previousElementSibling) box.insertBefore(messageNode(notice), node.previousElementSibling);
      save();
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, cut); buf = buf.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.usage) usage = chunk.usage;
          if (chunk.timings) timings = chunk.timings;
          const choice = chunk.choices && chunk.choices[0];
          if (!choice) continue;
          const delta = choice.delta || {};
          if (delta.content || delta.reasoning_content) {
            if (first === null) first = performance.now();
            reply.content += delta.content || "";
            reply.reasoning += delta.reasoning_content || "";
            if (!pending) { pending = true; requestAnimationFrame(paint); }
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") { reply.error = true; reply.content += (reply.content ? "\n\n" : "") + "Error: " + e.message; }
    else finish = "stopped";
  } finally {
    controller = null;
    setBusy(false);
  }
  const parts = [];
  // The server's own timing: tokens can reach the page in bursts, and a rate from arrival times would be noise.
  if (timings && timings.predicted_per_second) parts.push(timings.predicted_per_second.toFixed(1) + " tokens/s");
  if (usage && usage.completion_tokens) parts.push(usage.completion_tokens + " tokens");
  if (first !== null) parts.push(((first - started) / 1000).toFixed(2) + " s to first token");
  if (finish && finish !== "stop") parts.push(finish === "length" ? "stopped at max tokens" : finish === "content_filter" ? "blocked by policy" : finish);
  reply.meta = parts.join(" \u00b7 ");
  if (!reply.reasoning) delete reply.reasoning;
  save();
  const fresh = messageNode(reply);
  if (reply.error) fresh.classList.add("error");
  node.replaceWith(fresh);
  box.scrollTop = box.scrollHeight;
}

function setBusy(busy) {
  $("send").hidden = busy; $("stop").hidden = !busy; $("input").disabled = busy; $("new-chat").disabled = busy;
  setStatus(busy ? "generating\u2026" : "");
}

// ---- Wiring
function init() {
  $("system-prompt").value = settings.system;
  $("temperature").value = settings.temperature; $("temperature-value").textContent = settings.temperature;
  $("max-tokens").value = settings.maxTokens;
  $("api-key").value = settings.apiKey;
  $("system-prompt").oninput = (e) => { settings.system = e.target.value; saveSettings(); };
  $("temperature").oninput = (e) => { settings.temperature = e.target.value; $("temperature-value").textContent = e.target.value; saveSettings(); };
  $("max-tokens").oninput = (e) => { settings.maxTokens = e.target.value; saveSettings(); };
  $("api-key").onchange = (e) => { settings.apiKey = e.target.value; saveSettings(); fetchModel(); };
  $("toggle-settings").onclick = () => {
    const s = $("settings"); s.hidden = !s.hidden; $("toggle-settings").setAttribute("aria-expanded", String(!s.hidden));
  };
  $("toggle-sidebar").onclick = () => $("app").classList.toggle("show-sidebar");
  $("new-chat").onclick = () => { newConversation(); $("app").classList.remove("show-sidebar"); };
  $("stop").onclick = () => { if (controller) controller.abort(); };
  $("composer").onsubmit = (e) => {
    e.preventDefault();
    const text = $("input").value.trim();
    if (!text || controller) return;
    $("input").value = ""; $("input").style.height = "";
    send(text);
  };
  $("input").onkeydown = (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); $("composer").requestSubmit(); }
  };
  $("input").oninput = (e) => { e.target.style.height = "auto"; e.target.style.height = e.target.scrollHeight + "px"; };
  current = conversations[0] || null;
  if (!current || current.messages.length) newConversation(); else { renderList(); renderMessages(); }
  fetchModel();
}

document.addEventListener("DOMContentLoaded", init);
