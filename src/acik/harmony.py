"""Harmony, the chat format of gpt-oss: render conversations and parse what the model writes.

A harmony conversation is a run of messages, each
`<|start|>{author}[ to={recipient}][<|channel|>{channel}][ {content type}]<|message|>{content}{end}`,
where the end is `<|end|>`, or `<|call|>` for a tool call and `<|return|>` for the model's last
message (both stop generation). The assistant thinks in the `analysis` channel, calls tools in
`commentary`, and answers in `final`; reasoning from earlier turns is dropped from the history once
a turn ended in a final answer.

OpenAI's `openai-harmony` package downloads its vocabulary at run time, so acik speaks the format
itself. `render_chat` takes chat messages in the `transformers` style (`content`, `thinking`,
`tool_calls`) and gives exactly the string gpt-oss's published chat template gives; `parse_harmony`
turns the model's output back into messages; `to_chat_message` folds them into one chat message.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import Any

START, END, MESSAGE, CHANNEL = "<|start|>", "<|end|>", "<|message|>", "<|channel|>"
RETURN, CALL, CONSTRAIN = "<|return|>", "<|call|>", "<|constrain|>"
STOP_TOKENS = (RETURN, CALL)  # generation ends on these; `<|end|>` only ends a message
CHANNELS = ("analysis", "commentary", "final")
ROLES = ("system", "developer", "user", "assistant", "tool")
DEFAULT_IDENTITY = "You are ChatGPT, a large language model trained by OpenAI."
KNOWLEDGE_CUTOFF = "2024-06"


class HarmonyError(ValueError):
    pass


@dataclasses.dataclass
class HarmonyMessage:
    """One harmony message. `role` is one of ROLES; a tool's reply has role "tool" and `name` the tool
    (its author in the header, e.g. "functions.add"). `complete` is False for a message cut off by
    the end of the text (still streaming, or the model hit its token limit)."""

    role: str
    content: str
    channel: str | None = None
    recipient: str | None = None
    content_type: str | None = None
    name: str | None = None
    end: str | None = None
    complete: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


# ---------------------------------------------------------------------------------------------
# Rendering


def render_message(msg: HarmonyMessage) -> str:
    """One message in harmony's wire form. The end token is `msg.end` or, if unset, `<|call|>` for an
    assistant message to a recipient (a tool call) and `<|end|>` otherwise."""
    author = msg.name if msg.role == "tool" and msg.name else msg.role
    header = author
    if msg.recipient:
        header += f" to={msg.recipient}"
    if msg.channel:
        header += f"{CHANNEL}{msg.channel}"
    if msg.content_type:
        header += f" {msg.content_type}"
    end = msg.end or (CALL if msg.role == "assistant" and msg.recipient else END)
    return f"{START}{header}{MESSAGE}{msg.content}{end}"


def render_messages(messages: list[HarmonyMessage], add_generation_prompt: bool = False) -> str:
    text = "".join(render_message(m) for m in messages)
    return text + (f"{START}assistant" if add_generation_prompt else "")


def system_content(*, model_identity: str | None = None, reasoning_effort: str = "medium",
                   date: str | None = None, has_tools: bool = False) -> str:
    """The system message gpt-oss expects (identity, cutoff, date, reasoning effort, channels)."""
    date = date or datetime.now().strftime("%Y-%m-%d")
    text = (f"{model_identity if model_identity is not None else DEFAULT_IDENTITY}\n"
            f"Knowledge cutoff: {KNOWLEDGE_CUTOFF}\nCurrent date: {date}\n\nReasoning: {reasoning_effort}\n\n"
            "# Valid channels: analysis, commentary, final. Channel must be included for every message.")
    if has_tools:
        text += "\nCalls to these tools must go to the commentary channel: 'functions'."
    return text


def _ts_type(spec: dict, nested_indent: str = " " * 16) -> str:
    """A JSON-schema type in the TypeScript-like notation harmony uses for tool parameters."""
    t = spec.get("type")
    if t == "array":
        items = spec.get("items")
        if items:
            simple = {"string": "string[]", "number": "number[]", "integer": "number[]",
                      "boolean": "boolean[]"}
            if items.get("type") in simple:
                out = simple[items["type"]]
            else:
                inner = _ts_type(items)
                out = "any[]" if inner == "object | object" or len(inner) > 50 else inner + "[]"
        else:
            out = "any[]"
        return out + (" | null" if spec.get("nullable") else "")
    if isinstance(t, list) and t:
        return " | ".join(t) if len(t) > 1 else t[0]
    if spec.get("oneOf"):
        variants = spec["oneOf"]
        if len(variants) > 1 and any(v.get("type") == "object" for v in variants):
            return "any"
        return " | ".join(_ts_type(v) for v in variants)
    if t == "string":
        if spec.get("enum"):
            return '"' + '" | "'.join(spec["enum"]) + '"'
        return "string" + (" | null" if spec.get("nullable") else "")
    if t in ("number", "integer"):
        return "number"
    if t == "boolean":
        return "boolean"
    if t == "object":
        props = spec.get("properties")
        if not props:
            return "object"
        required = spec.get("required") or []
        # The published template puts a newline and its own indentation before nested types; we match it.
        parts = [f"{name}{'' if name in required else '?'}: \n{nested_indent}{_ts_type(p)}"
                 for name, p in props.items()]
        return "{\n" + ", ".join(parts) + "}"
    return "any"


def render_tools(tools: list[dict], namespace: str = "functions") -> str:
    """Function tools (OpenAI JSON-schema form) as harmony's `namespace functions { ... }` block."""
    out = f"## {namespace}\n\nnamespace {namespace} {{\n\n"
    for tool in tools:
        fn = tool.get("function", tool)
        out += f"// {fn.get('description', '')}\ntype {fn['name']} = "
        params = fn.get("parameters") or {}
        if params.get("properties"):
            out += "(_: {\n"
            required = params.get("required") or []
            for name, spec in params["properties"].items():
                if spec.get("description"):
                    out += f"// {spec['description']}\n"
                out += f"{name}{'' if name in required else '?'}: {_ts_type(spec)}"
                if "default" in spec:
                    if spec.get("enum"):
                        out += f", // default: {spec['default']}"
                    elif spec.get("oneOf"):
                        out += f"// default: {spec['default']}"
                    else:
                        out += f", // default: {json.dumps(spec['default'], ensure_ascii=False)}"
                out += ",\n"
            out += "}) => any;\n\n"
        else:
            out += "() => any;\n\n"
    return out + f"}} // namespace {namespace}"


def _tool_call(message: dict) -> dict:
    call = message["tool_calls"][0]
    return call.get("function", call)


def render_chat(messages: list[dict], tools: list[dict] | None = None, *, add_generation_prompt: bool = True,
                reasoning_effort: str = "medium", model_identity: str | None = None,
                date: str | None = None) -> str:
    """Render chat messages for gpt-oss, exactly as its published chat template does.

    A first system or developer message becomes the developer instructions. An assistant message's
    `thinking` is rendered only where the format keeps it: in the last message of a training sample
    (no generation prompt) and before a tool call that no later final answer follows. A tool result
    is JSON-quoted, as the template does.
    """
    if not messages:
        raise HarmonyError("cannot render an empty conversation; pass at least one message.")
    from acik.chat_template import normalize_messages

    messages = normalize_messages(messages)
    parts = [render_message(HarmonyMessage("system", system_content(
        model_identity=model_identity, reasoning_effort=reasoning_effort, date=date, has_tools=bool(tools))))]
    developer = ""
    if messages[0]["role"] in ("system", "developer"):
        developer, messages = messages[0].get("content", ""), messages[1:]
    if developer or tools:
        text = f"# Instructions\n\n{developer}\n\n" if developer else ""
        if tools:
            text += "# Tools\n\n" + render_tools(tools)
        parts.append(render_message(HarmonyMessage("developer", text)))
    last_call: str | None = None
    for i, m in enumerate(messages):
        role = m["role"]
        if role == "assistant":
            content, thinking = m.get("content", ""), m.get("thinking")
            for field in (content, thinking or ""):
                if f"{CHANNEL}analysis{MESSAGE}" in field or f"{CHANNEL}final{MESSAGE}" in field:
                    raise HarmonyError("assistant content must not contain <|channel|> tags: pass the "
                                       "analysis as 'thinking' and the answer as 'content'.")
            if "tool_calls" in m:
                later = messages[i + 1:]
                later_final = any(f["role"] == "assistant" and "tool_calls" not in f for f in later)
                if content and thinking:
                    raise HarmonyError("an assistant tool call may carry 'content' or 'thinking', not both.")
                if (content or thinking) and not later_final:
                    parts.append(render_message(HarmonyMessage("assistant", content or thinking, "analysis")))
                call = _tool_call(m)
                parts.append(render_message(HarmonyMessage(
                    "assistant", json.dumps(call.get("arguments"), ensure_ascii=False), "commentary",
                    recipient=f"functions.{call['name']}", content_type=call.get("content_type", "json"))))
                last_call = call["name"]
            elif i == len(messages) - 1 and not add_generation_prompt:
                if "thinking" in m:
                    parts.append(render_message(HarmonyMessage("assistant", thinking, "analysis")))
                parts.append(render_message(HarmonyMessage("assistant", content, "final", end=RETURN)))
            else:
                parts.append(render_message(HarmonyMessage("assistant", content, "final")))
                last_call = None
        elif role == "tool":
            if last_call is None:
                raise HarmonyError("a tool message needs an earlier assistant message with a tool call.")
            parts.append(render_message(HarmonyMessage(
                "tool", json.dumps(m.get("content"), ensure_ascii=False), "commentary",
                recipient="assistant", name=f"functions.{last_call}")))
        elif role == "user":
            parts.append(render_message(HarmonyMessage("user", m.get("content", ""))))
    return "".join(parts) + (f"{START}assistant" if add_generation_prompt else "")


# ---------------------------------------------------------------------------------------------
# Parsing


def _parse_header(header: str) -> HarmonyMessage:
    # Header forms: "assistant", "assistant<|channel|>final",
    # "assistant to=functions.f<|channel|>commentary json",
    # "assistant<|channel|>commentary to=functions.f <|constrain|>json",
    # "functions.f to=assistant<|channel|>commentary".
    channel = None
    if CHANNEL in header:
        header, rest = header.split(CHANNEL, 1)
        words = rest.replace(CONSTRAIN, f" {CONSTRAIN}").split()
        channel = words[0] if words else None
        header = header + " " + " ".join(words[1:])
    recipient, content_type, author = None, None, None
    for word in header.replace(CONSTRAIN, f" {CONSTRAIN}").split():
        if word.startswith("to="):
            recipient = word[3:]
        elif author is None:
            author = word
        elif word == CONSTRAIN:
            continue
        else:
            content_type = word
    author = author or "assistant"
    role, name = (author, None) if author in ROLES else ("tool", author)
    return HarmonyMessage(role, "", channel=channel, recipient=recipient, content_type=content_type,
                          name=name)


def parse_harmony(text: str, role: str = "assistant") -> list[HarmonyMessage]:
    """Split harmony text (special tokens kept) into messages.

    The text may start inside a message header, as a model's completion does after the generation
    prompt `<|start|>assistant` (the author is then `role`). A last message without an end token is
    returned with `complete=False`. Text outside any message (before the first header) is an error.
    """
    out: list[HarmonyMessage] = []
    pos, n = 0, len(text)
    first = True
    while pos < n:
        if text.startswith(START, pos):
            pos += len(START)
            implicit = False
        elif first:
            implicit = True
        else:
            raise HarmonyError(f"expected {START} at character {pos}, found {text[pos:pos + 20]!r}.")
        first = False
        at = text.find(MESSAGE, pos)
        if at < 0:  # header still arriving
            header = text[pos:]
            msg = _parse_header(role + header if implicit else header)
            msg.complete = False
            out.append(msg)
            break
        header = text[pos:at]
        if implicit and (not header or header[0].isspace() or header.startswith(CHANNEL)):
            header = role + header
        msg = _parse_header(header)
        body_start = at + len(MESSAGE)
        ends = [(text.find(tok, body_start), tok) for tok in (END, RETURN, CALL)]
        ends = [(i, tok) for i, tok in ends if i >= 0]
        if ends:
            stop, tok = min(ends)
            msg.content, msg.end = text[body_start:stop], tok
            pos = stop + len(tok)
        else:
            msg.content, msg.complete = text[body_start:], False
            pos = n
        out.append(msg)
    return out


def drop_old_analysis(messages: list[HarmonyMessage]) -> list[HarmonyMessage]:
    """The history as the format wants it resent: assistant `analysis` messages followed later by an
    assistant `final` message are dropped (reasoning of finished turns); reasoning of a turn still
    in progress (e.g. before a tool call) is kept."""
    last_final = max((i for i, m in enumerate(messages) if m.role == "assistant" and m.channel == "final"),
                     default=-1)
    return [m for i, m in enumerate(messages)
            if not (m.role == "assistant" and m.channel == "analysis" and i < last_final)]


def to_chat_message(messages: list[HarmonyMessage]) -> dict[str, Any]:
    """Fold the parsed assistant messages of one turn into a chat message: `content` (final answer),
    `thinking` (analysis) and `tool_calls` (commentary messages to `functions.*`)."""
    final, thinking, calls = [], [], []
    for m in messages:
        if m.role != "assistant":
            continue
        if m.recipient and m.recipient.startswith("functions."):
            try:
                args: Any = json.loads(m.content)
            except json.JSONDecodeError:
                args = m.content
            calls.append({"type": "function", "function": {"name": m.recipient[len("functions."):],
                                                           "arguments": args}})
        elif m.channel == "final":
            final.append(m.content)
        else:  # analysis, and commentary preambles
            thinking.append(m.content)
    out: dict[str, Any] = {"role": "assistant", "content": "".join(final)}
    if thinking:
        out["thinking"] = "\n".join(thinking)
    if calls:
        out["tool_calls"] = calls
    return out


class HarmonyStream:
    """Parse harmony text as it streams in: `feed(text)` returns (channel, recipient, delta) tuples for
    the content that arrived, so a chat can show `final` live and keep `analysis` apart."""

    def __init__(self, role: str = "assistant"):
        self.role = role
        self.text = ""
        self._sent: list[int] = []

    def feed(self, chunk: str) -> list[tuple[str | None, str | None, str]]:
        self.text += chunk
        events = []
        for i, m in enumerate(parse_harmony(self.text, self.role)):
            if i == len(self._sent):
                self._sent.append(0)
            if len(m.content) > self._sent[i]:
                events.append((m.channel, m.recipient, m.content[self._sent[i]:]))
                self._sent[i] = len(m.content)
        return events

    @property
    def messages(self) -> list[HarmonyMessage]:
        return parse_harmony(self.text, self.role)
