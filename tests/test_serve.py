"""`acik serve` against the official `openai` client, raw HTTP, and the model itself.

Expected values come from outside the server: `transformers`' tokenizer for prompt lengths, a plain
greedy loop over the model's forward for generated text, and the model's own log-softmax for logprobs."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest
import torch

import acik
from acik.serve import ServerConfig, ServeSettings, build_app, check_exposure, create_app
from acik.serve.policy import Policy, PolicyFile, filter_stream
from serve_helpers import LiveServer, ScriptedEngine, make_tiny_model

KEY = "test-key"
MODEL = "tiny-chat"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def llm(model_dir):
    return acik.load(model_dir)


@pytest.fixture(scope="module")
def server(model_dir, llm):
    app = build_app(ServeSettings(model=str(model_dir), api_key=KEY, max_batch_size=4), llm=llm)
    with LiveServer(app) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def hf_chat_ids(model_dir, messages) -> list[int]:
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
    out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@torch.no_grad()
def greedy(llm, ids: list[int], n: int) -> list[int]:
    """Reference greedy decoding: the whole sequence through the model each step, no cache."""
    ids = list(ids)
    out = []
    stops = set(llm.tokenizer.stop_token_ids)
    for _ in range(n):
        token = int(llm.model(torch.tensor([ids]))[0, -1].float().argmax())
        out.append(token)
        if token in stops:
            break
        ids.append(token)
    return out


@torch.no_grad()
def scores(llm, ids: list[int]) -> list[float]:
    lp = torch.log_softmax(llm.model(torch.tensor([ids]))[0].float(), dim=-1)
    return [float(lp[i, ids[i + 1]]) for i in range(len(ids) - 1)]


# -- conformance with the openai client ------------------------------------------------------------
def test_models(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    m = models.data[0]
    assert m.object == "model" and m.owned_by == "acik" and isinstance(m.created, int)
    assert client.models.retrieve(MODEL).id == MODEL


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there!"}]


def test_chat_non_stream(client, llm, model_dir):
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0)
    prompt = hf_chat_ids(model_dir, MESSAGES)
    expected = greedy(llm, prompt, 12)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == MODEL
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.index == 0 and c.message.role == "assistant"
    stops = set(llm.tokenizer.stop_token_ids)
    assert c.message.content == llm.tokenizer.decode([t for t in expected if t not in stops],
                                                     skip_special_tokens=True)
    assert c.finish_reason == ("stop" if expected[-1] in stops else "length")
    assert r.usage.prompt_tokens == len(prompt)
    assert r.usage.completion_tokens == len(expected)
    assert r.usage.total_tokens == len(prompt) + len(expected)
    assert c.logprobs is None


def test_chat_stream_with_usage(client, server):
    kw = dict(model=MODEL, messages=MESSAGES, max_tokens=10, temperature=0)
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    body = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in body) == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in body][-1] == full.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in body[:-1])
    assert all(c.usage is None for c in body)
    assert chunks[-1].choices == [] and chunks[-1].usage == full.usage
    # Raw stream: SSE framing and the [DONE] terminator, exactly.
    with httpx.stream("POST", server.url + "/v1/chat/completions", headers=auth(),
                      json={**kw, "stream": True}) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = resp.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert "usage" not in json.loads(events[-2][6:])  # not asked for


def test_chat_logprobs(client, llm, model_dir):
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, temperature=0,
                                       logprobs=True, top_logprobs=3)
    prompt = hf_chat_ids(model_dir, MESSAGES)
    content = r.choices[0].logprobs.content
    ids = greedy(llm, prompt, 4)
    ref = scores(llm, prompt + ids)[len(prompt) - 1:]
    assert len(content) == len(ids)
    for item, want in zip(content, ref):
        assert item.logprob == pytest.approx(want, abs=1e-4)
        assert len(item.top_logprobs) == 3
        assert item.top_logprobs[0].logprob == pytest.approx(item.logprob, abs=1e-5)  # greedy = the top token


def test_completions_prompt_shapes(client, llm):
    tok = llm.tokenizer
    r = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=5, temperature=0)
    ids = tok.encode("Once upon")
    assert r.object == "text_completion" and r.choices[0].index == 0
    assert r.choices[0].text == tok.decode(greedy(llm, ids, 5), skip_special_tokens=True)
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens <= 5
    r2 = client.completions.create(model=MODEL, prompt=["Once upon", "A time"], max_tokens=3, temperature=0)
    assert [c.index for c in r2.choices] == [0, 1]
    assert r2.choices[0].text == tok.decode(greedy(llm, ids, 3), skip_special_tokens=True)
    r3 = client.completions.create(model=MODEL, prompt=ids, max_tokens=5, temperature=0)
    assert r3.choices[0].text == r.choices[0].text
    r4 = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=5, temperature=0, echo=True)
    assert r4.choices[0].text == "Once upon" + r.choices[0].text
    # A vanishing temperature is greedy (dividing logits by it would overflow).
    tiny = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=5, temperature=1e-30, seed=3)
    assert tiny.choices[0].text == r.choices[0].text
    # Same seed, same sample.
    a = client.completions.create(model=MODEL, prompt="x", max_tokens=8, temperature=1.0, seed=7)
    b = client.completions.create(model=MODEL, prompt="x", max_tokens=8, temperature=1.0, seed=7)
    assert a.choices[0].text == b.choices[0].text


def test_lm_eval_local_completions_shape(server, llm):
    """The exact payload lm-evaluation-harness's `local-completions` sends for log-likelihoods."""
    a, b = [72, 101, 108, 108, 111, 44, 32, 119], [84, 104, 101, 32, 99, 97, 116]
    payload = {"model": MODEL, "prompt": [a, b], "temperature": 0, "max_tokens": 1, "logprobs": 1,
               "seed": 1234, "echo": True}
    r = httpx.post(server.url + "/v1/completions", json=payload, headers=auth(), timeout=60)
    assert r.status_code == 200, r.text
    choices = sorted(r.json()["choices"], key=lambda c: c["index"])
    for ids, choice in zip([a, b], choices):
        lp = choice["logprobs"]
        n = len(ids)
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == n + 1
        assert lp["tokens"][:n] == [llm.tokenizer.decode([t]) for t in ids]
        got = lp["token_logprobs"][1:n]
        assert got == pytest.approx(scores(llm, ids), abs=1e-4)
        # Each prompt position's alternatives hold the model's likeliest token (lm-eval's is_greedy reads them),
        # not only the prompt's own token.
        with torch.no_grad():
            best = torch.log_softmax(llm.model(torch.tensor([ids])).float()[0], -1).max(-1).values
        assert [max(d.values()) for d in lp["top_logprobs"][1:n]] == pytest.approx(best[:n - 1].tolist(), abs=1e-4)
        assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
        # The generated token is the greedy one, with its logprob.
        nxt = greedy(llm, ids, 1)[0]
        assert lp["token_logprobs"][n] == pytest.approx(scores(llm, ids + [nxt])[-1], abs=1e-4)
        assert all(isinstance(d, dict) and len(d) >= 1 for d in lp["top_logprobs"][1:])
    # max_tokens 0 with echo: pure scoring.
    r = httpx.post(server.url + "/v1/completions", headers=auth(),
                   json={**payload, "prompt": a, "max_tokens": 0})
    lp = r.json()["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(a) and lp["token_logprobs"][1:] == pytest.approx(scores(llm, a), abs=1e-4)
    assert r.json()["usage"]["completion_tokens"] == 0


# -- errors -------------------------------------------------------------------------------------------------
def check_error(r: httpx.Response, status: int, param: str | None = "any") -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param != "any":
        assert err["param"] == param
    return err


def test_wrong_and_missing_key(server):
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.models.list()
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=MODEL, messages=MESSAGES)
    check_error(httpx.get(server.url + "/v1/models"), 401)
    assert httpx.get(server.url + "/health").status_code == 200  # health needs no key


def test_unknown_model(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert e.value.status_code == 404 and e.value.body["code"] == "model_not_found"
    assert e.value.body["param"] == "model" and "gpt-4o" in e.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")


def test_bad_requests_are_400(server, llm):
    url = server.url + "/v1/chat/completions"
    h = {**auth(), "Content-Type": "application/json"}
    err = check_error(httpx.post(url, content=b'{"model": "tiny-chat", "messages": [', headers=h), 400)
    assert "JSON" in err["message"]
    check_error(httpx.post(url, json={"model": MODEL, "messages": MESSAGES, "temperature": 5}, headers=h), 400,
                "temperature")
    check_error(httpx.post(url, json={"model": MODEL}, headers=h), 400, "messages")
    check_error(httpx.post(url, json={"model": MODEL, "messages": MESSAGES, "n": 2}, headers=h), 400, "n")
    check_error(httpx.post(url, json={"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]},
                           headers=h), 400)
    check_error(httpx.post(url, json=[1, 2], headers=h), 400)
    long = "a" * (llm.config.max_position_embeddings + 10)
    err = check_error(httpx.post(url, json={"model": MODEL, "messages": [{"role": "user", "content": long}]},
                                 headers=h), 400)
    assert err["code"] == "context_length_exceeded" and "maximum context length" in err["message"]
    c = server.url + "/v1/completions"
    check_error(httpx.post(c, json={"model": MODEL, "prompt": [1, 99999]}, headers=h), 400, "prompt")
    check_error(httpx.post(c, json={"model": MODEL, "prompt": []}, headers=h), 400)
    check_error(httpx.post(c, json={"model": MODEL, "prompt": "x", "max_tokens": 0}, headers=h), 400)
    check_error(httpx.get(server.url + "/v1/nothing", headers=h), 404)


def test_health_metrics_openapi(server, client):
    client.completions.create(model=MODEL, prompt="hi", max_tokens=3)
    m = httpx.get(server.url + "/metrics", headers=auth()).text
    for name in ("acik_requests_total", "acik_generation_tokens_total", "acik_engine_queue_depth",
                 "acik_time_to_first_token_seconds_bucket", "acik_time_per_output_token_seconds_count"):
        assert name in m
    assert 'acik_requests_total{endpoint="/v1/completions",status="200"}' in m
    spec = httpx.get(server.url + "/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= set(spec["paths"])
    assert httpx.get(server.url + "/docs").status_code == 404  # swagger would load a CDN


def test_page_headers_and_no_cors(server):
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and "<title>acik chat</title>" in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "script-src 'self'" in csp
    assert "http" not in csp and "*" not in csp
    for name in ("index.html", "app.js", "app.css"):
        assert httpx.get(server.url + f"/static/{name}").status_code == 200
    assert "//" not in httpx.get(server.url + "/").text.replace("<!doctype", "")  # no external URLs
    r = httpx.options(server.url + "/v1/models", headers={"Origin": "http://evil.example",
                                                          "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in r.headers
    r = httpx.get(server.url + "/v1/models", headers={**auth(), "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_when_configured(llm):
    app = create_app(ScriptedEngine("hi"), llm.tokenizer, ServerConfig(MODEL, 512, 260,
                                                                      cors_origins=["http://ok.example"]))
    with LiveServer(app) as s:
        r = httpx.get(s.url + "/v1/models", headers={"Origin": "http://ok.example"})
        assert r.headers["access-control-allow-origin"] == "http://ok.example"
        r = httpx.get(s.url + "/v1/models", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers


def test_busy_is_429(llm):
    app = create_app(ScriptedEngine("x" * 200, delay=0.01), llm.tokenizer, ServerConfig(MODEL, 512, 260,
                                                                                        max_concurrency=1))
    with LiveServer(app) as s:
        body = {"model": MODEL, "messages": MESSAGES, "stream": True}
        with httpx.stream("POST", s.url + "/v1/chat/completions", json=body) as first:
            lines = first.iter_lines()  # keep a reference: a collected iterator closes the connection
            next(lines)
            second = httpx.post(s.url + "/v1/chat/completions", json=body)
            err = check_error(second, 429)
            assert err["type"] == "rate_limit_error" and second.headers["retry-after"] == "1"
        deadline = time.time() + 5
        while app.state.acik.in_flight and time.time() < deadline:
            time.sleep(0.01)
        assert httpx.post(s.url + "/v1/chat/completions", json={**body, "stream": False}).status_code == 200


# -- privacy --------------------------------------------------------------------------------------------------
def test_exposure_needs_a_key(capsys):
    from acik.cli import main

    with pytest.raises(ValueError, match="--api-key"):
        check_exposure(ServeSettings(model="m", host="0.0.0.0"))
    check_exposure(ServeSettings(model="m", host="0.0.0.0", api_key="k"))
    check_exposure(ServeSettings(model="m", host="0.0.0.0", insecure_no_auth=True))
    check_exposure(ServeSettings(model="m", host="::1"))
    assert ServeSettings().host == "127.0.0.1"
    assert main(["serve", "nowhere", "--host", "0.0.0.0"]) == 2
    assert "--insecure-no-auth" in capsys.readouterr().err


# -- guardrails ------------------------------------------------------------------------------------------------
def make_policy(**kw) -> Policy:
    from acik.recipe import from_dict

    return Policy(from_dict(PolicyFile, kw))


def test_policy_redacts_across_chunks():
    p = make_policy(output={"redact": "all", "hold": 32})
    text = "Mail me at jane.doe@example.com or call +1 415-555-0100 from 192.168.1.20 today, thanks."
    for size in (1, 3, 7, 100):
        chunks = [text[i:i + size] for i in range(0, len(text), size)]
        out = "".join(t for t, _ in filter_stream(p, chunks))
        assert out == "Mail me at [redacted] or call [redacted] from [redacted] today, thanks.", size


def test_policy_blocks_output_and_input(tmp_path):
    f = tmp_path / "policy.yaml"
    f.write_text("input:\n  blocked: ['(?i)forbidden topic']\n  refusal: No.\n"
                 "output:\n  blocked: ['SECRET-\\d+']\n")
    p = Policy.load(f)
    assert p.check_input(["let's discuss the Forbidden Topic"]) == "No."
    assert p.check_input(["hello"]) is None
    out = list(filter_stream(p, ["The code is SEC", "RET-42 ok", " more"]))
    assert out[-1] == ("", True) and "SECRET" not in "".join(t for t, _ in out)
    f.write_text("output:\n  redact: [ssn]\n")
    with pytest.raises(ValueError, match="unknown kind 'ssn'"):
        Policy.load(f)
    f.write_text("outptu: {}\n")
    with pytest.raises(ValueError, match="unknown key 'outptu'"):
        Policy.load(f)


def test_policy_in_server(llm):
    policy = make_policy(input={"blocked": ["(?i)bomb"], "refusal": "Not that."},
                         output={"blocked": ["launch code"], "redact": ["email"]})
    engine = ScriptedEngine("Write to bob@example.org. The launch code is 0000. And more text here.")
    app = create_app(engine, llm.tokenizer, ServerConfig(MODEL, 512, 260, policy=policy))
    with LiveServer(app) as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0)
        r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].finish_reason == "content_filter"
        assert r.choices[0].message.content == "Write to [redacted]. The "
        chunks = list(c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                stream=True))
        assert chunks[-1].choices[0].finish_reason == "content_filter"
        assert "launch" not in "".join(ch.choices[0].delta.content or "" for ch in chunks)
        n = len(engine.requests)
        r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "how to make a BOMB"}])
        assert r.choices[0].message.content == "Not that." and r.choices[0].finish_reason == "content_filter"
        assert len(engine.requests) == n  # the model never saw it
        r = c.completions.create(model=MODEL, prompt="hi")
        assert r.choices[0].finish_reason == "length" and r.choices[0].text == "Write to bob@example.org"[:16]


# -- resources ------------------------------------------------------------------------------------------------
def test_disconnect_frees_slot_within_one_step(model_dir):
    llm = acik.load(model_dir)
    prompt = "hello"
    # Greedy, so the run is known not to stop early on its own.
    assert not set(greedy(llm, llm.tokenizer.encode(prompt), 30)) & set(llm.tokenizer.stop_token_ids)
    forward = llm.model.forward

    def slow_forward(*args, **kwargs):  # make one decode step long enough to count steps against
        time.sleep(0.05)
        return forward(*args, **kwargs)

    llm.model.forward = slow_forward
    app = build_app(ServeSettings(model=str(model_dir), max_batch_size=2), llm=llm)
    engine = app.state.acik.engine
    with LiveServer(app) as s:
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 400, "stream": True, "temperature": 0}
        with httpx.stream("POST", s.url + "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            got = 0
            for line in lines:
                got += line.startswith("data: ")
                if got == 3:
                    break
            assert engine.stats()["active"] == 1
            steps_at_close = engine.stats()["steps"]
        # leaving the block closed the connection
        deadline = time.time() + 10
        while engine.stats()["active"] and time.time() < deadline:
            time.sleep(0.005)
        stats = engine.stats()
        assert stats["active"] == 0 and stats["free_slots"] == 2
        # The step that was running when the client left may finish; the next one no longer has it.
        assert stats["steps"] - steps_at_close <= 1, stats
        assert app.state.acik.in_flight == 0
        assert httpx.post(s.url + "/v1/completions", json={**body, "stream": False, "max_tokens": 2}).status_code \
            == 200



class HarmonyTokenizer:
    """acik's byte tokenizer dressed as a gpt-oss one: enough for the server's harmony path."""

    is_harmony = True

    def __init__(self, tok):
        self.tok = tok
        self.stop_token_ids = tok.stop_token_ids

    def apply_chat_template(self, messages, add_generation_prompt=True, tools=None, tokenize=False, **kw):
        return "".join(f"<|start|>{m['role']}<|message|>{m['content']}<|end|>" for m in messages) + "<|start|>assistant"

    def encode(self, text, add_special_tokens=True):
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids, skip_special_tokens=False):
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)


def test_harmony_reasoning_goes_apart(llm):
    pieces = ["<|channel|>", "analysis", "<|message|>", "Two ", "plus two.", "<|end|>", "<|start|>", "assistant",
              "<|channel|>", "final", "<|message|>", "It is ", "4."]
    engine = ScriptedEngine(pieces)
    app = create_app(engine, HarmonyTokenizer(llm.tokenizer), ServerConfig(MODEL, 512, 260))
    with LiveServer(app) as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0)
        r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "2+2?"}])
        msg = r.choices[0].message
        assert msg.content == "It is 4." and msg.model_extra["reasoning_content"] == "Two plus two."
        chunks = list(c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "2+2?"}],
                                                stream=True))
        deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
        assert "".join(d.content or "" for d in deltas) == "It is 4."
        assert "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas) == "Two plus two."
        assert not engine.requests[0].skip_special_tokens  # the parser needs the channel markers
        # Output that is not harmony at all still reaches the client.
        engine.reply = "plain words"
        r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content == "plain words"


def test_shutdown_ends_streams_and_closes_engine(llm):
    engine = ScriptedEngine("x" * 2000, delay=0.01)
    app = create_app(engine, llm.tokenizer, ServerConfig(MODEL, 4096, 260))
    server = LiveServer(app).__enter__()
    lines: list[str] = []
    done = threading.Event()

    def stream():
        try:
            with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=30,
                              json={"model": MODEL, "messages": MESSAGES, "stream": True}) as r:
                for line in r.iter_lines():
                    lines.append(line)
        except httpx.HTTPError:
            pass
        done.set()

    t = threading.Thread(target=stream)
    t.start()
    while len(lines) < 5:
        time.sleep(0.01)
    start = time.time()
    server.__exit__(None, None, None)  # graceful: 2 s for in-flight requests, then cancel them
    assert done.wait(10) and time.time() - start < 8
    assert engine.closed and engine.requests and app.state.acik.in_flight == 0


def test_example_policy_loads():
    from pathlib import Path

    p = Policy.load(Path(__file__).resolve().parents[1] / "recipes" / "policy.example.yaml")
    assert p.check_input(["how do I build a bomb"]) and p.check_input(["how do I build a shed"]) is None
    assert p.redact_text("mail a@b.io") == "mail [redacted]"


@pytest.mark.parametrize("optimize", [True, False])
def test_serve_loads_the_model_optimized_unless_told_not_to(model_dir, optimize):
    """`acik serve` (ServeSettings.optimize, `--no-optimize`) runs the model optimized for inference by default."""
    app = build_app(ServeSettings(model=str(model_dir), optimize=optimize))
    engine = app.state.acik.engine
    try:
        assert getattr(engine.model, "inference_only", False) == optimize
    finally:
        engine.close()


def test_requests_without_sampling_options_take_the_models_defaults(model_dir, tmp_path):
    """A model whose generation_config.json says greedy (`do_sample: false`) answers a request that sets no
    temperature greedily, whatever its seed; one that sets a temperature samples."""
    greedy_dir = tmp_path / "greedy"
    greedy_dir.mkdir()
    for f in model_dir.iterdir():
        if f.is_file():
            (greedy_dir / f.name).write_bytes(f.read_bytes())
    (greedy_dir / "generation_config.json").write_text(json.dumps({"do_sample": False}))
    app = build_app(ServeSettings(model=str(greedy_dir), api_key=KEY, max_batch_size=2))
    with LiveServer(app) as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key=KEY, max_retries=0, timeout=60)

        def reply(**kw):
            return c.chat.completions.create(model="greedy", messages=MESSAGES, max_tokens=10, **kw)\
                .choices[0].message.content

        want = reply(temperature=0)
        assert {reply(seed=s) for s in range(3)} == {want}
        assert len({reply(seed=s, temperature=1.5) for s in range(3)}) > 1
