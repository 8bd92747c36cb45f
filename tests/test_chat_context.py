"""Chats that outlive their context: the terminal, `LLM.chat` and the API drop the oldest turns (keeping
the system prompt) instead of failing, and a single message too long is refused without ending the chat."""

from __future__ import annotations

import io
import json
import sys

import httpx
import openai
import pytest

from acik.cli import main
from acik.config import preset
from acik.engine.history import ContextOverflow, fit_conversation, reply_budget
from acik.llm import LLM
from acik.model.transformer import Transformer
from acik.serve import ServerConfig, create_app
from acik.tokenizer import load_tokenizer, save_byte_tokenizer
from serve_helpers import LiveServer, ScriptedEngine

SYSTEM = "Answer in one word."
QUESTIONS = [f"Question {i}: which river runs through city number {i}, and why?" for i in range(12)]
CONTEXT_ERROR = "maximum context length"


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """A tiny model on a shared machine: threads only wait on each other."""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random model with a 256-token context and acik's byte tokenizer (one token per byte)."""
    d = tmp_path_factory.mktemp("model256")
    save_byte_tokenizer(d)
    cfg = preset("tiny", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256, eos_token_id=256)
    model = Transformer(cfg)
    model.init_weights(0)
    LLM(model, cfg, tokenizer_dir=d).save(d, command="test")
    return d


@pytest.fixture
def prompts(monkeypatch):
    """The prompt of every request the engine is given, as text."""
    from acik.engine.scheduler import Engine

    seen: list[list[int]] = []
    submit = Engine.submit
    monkeypatch.setattr(Engine, "submit", lambda self, r: seen.append(list(r.prompt_ids)) or submit(self, r))
    return seen


def _text(ids: list[int]) -> str:
    return bytes(t for t in ids if t < 256).decode("utf-8", "replace")


# -- the one function that decides -----------------------------------------------------------------------

def test_fit_drops_whole_oldest_turns_and_keeps_the_system_prompt():
    encode = lambda msgs: [0] * sum(len(m["content"]) + 2 for m in msgs)  # noqa: E731 (a stand-in template)
    msgs = [{"role": "system", "content": "s" * 10}]
    for i in range(6):
        msgs += [{"role": "user", "content": f"u{i}" * 5}, {"role": "assistant", "content": f"a{i}" * 5}]
    msgs.append({"role": "user", "content": "now" * 4})
    full = len(encode(msgs))
    assert fit_conversation(msgs, encode, full + 10, 10).dropped_turns == 0  # fits: untouched

    fitted = fit_conversation(msgs, encode, 80, 20)
    assert fitted.messages[0] == msgs[0] and fitted.messages[-1] == msgs[-1]
    assert len(fitted.prompt_ids) <= 60 and fitted.dropped_turns > 0
    assert fitted.dropped_messages == 2 * fitted.dropped_turns  # whole user+assistant pairs
    assert fitted.messages[1]["role"] == "user"
    # The fewest turns are dropped: one more turn would not have fit.
    one_more = [msgs[0]] + msgs[-(len(fitted.messages) - 1) - 2:]
    assert len(encode(one_more)) > 60

    # The newest message alone, over the reserve but under the context: sent alone, with the room left.
    squeezed = fit_conversation(msgs, encode, 30, 20)
    assert squeezed.messages == [msgs[0], msgs[-1]]
    with pytest.raises(ContextOverflow, match="context holds 20"):
        fit_conversation(msgs, encode, 20, 5)
    assert reply_budget(256, 256) == 128 and reply_budget(4096, 300) == 300 and reply_budget(256, None) == 64


# -- the terminal -----------------------------------------------------------------------------------------

def test_piped_chat_answers_a_dozen_questions_in_a_256_token_context(model_dir, prompts, monkeypatch, capsys):
    script = "".join(q + "\n\n" for q in QUESTIONS)
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    code = main(["chat", str(model_dir), "--system", SYSTEM, "--max-new-tokens", "16", "--temperature", "0"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err == ""
    assert captured.out.count("tokens/s") == len(QUESTIONS)  # every question answered
    assert captured.out.count("no longer fits the model's context of 256 tokens") == 1  # said once
    assert len(prompts) == len(QUESTIONS)
    for q, ids in zip(QUESTIONS, prompts):
        text = _text(ids)
        assert len(ids) <= 256 - 16 and text.startswith("system\n" + SYSTEM) and q in text
    assert QUESTIONS[0] not in _text(prompts[-1])  # the oldest turns went


def test_a_message_longer_than_the_context_is_refused_and_the_chat_goes_on(model_dir, prompts, tmp_path):
    import acik
    from acik.engine.cli import chat_loop

    llm = acik.load(model_dir)
    save = tmp_path / "chat.json"
    script = "Hello\n\n" + "word " * 80 + "\n\n" + f"Still there?\n\n/save {save}\n"
    out = io.StringIO()
    chat_loop(llm, dict(max_new_tokens=8, temperature=0), inp=io.StringIO(script), out=out)
    text = out.getvalue()
    assert "the message comes to" in text and "context holds 256" in text and "goes on without it" in text
    assert "truncate=True" not in text  # a Python argument means nothing in the terminal
    assert text.count("tokens/s") == 2
    saved = json.loads(save.read_text())["messages"]
    assert [m["content"] for m in saved if m["role"] == "user"] == ["Hello", "Still there?"]
    assert len(prompts) == 2


def test_cli_hints_name_cli_flags(model_dir, capsys):
    assert main(["generate", str(model_dir), "x" * 300, "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert "300 tokens" in err and "shorten it" in err and "truncate=True" not in err
    assert main(["generate", str(model_dir), "x" * 100, "--max-new-tokens", "2", "--max-seq-len", "64"]) == 2
    assert "raise --max-seq-len (now 64; the model allows 256)" in capsys.readouterr().err


# -- Python ---------------------------------------------------------------------------------------------

def test_llm_chat_truncation_auto(model_dir, prompts):
    import acik

    llm = acik.load(model_dir)
    msgs = [{"role": "system", "content": SYSTEM}]
    for q in QUESTIONS[:6]:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": "Thames, because " * 2}]
    msgs.append({"role": "user", "content": "And the last one?"})
    with pytest.raises(ValueError, match="truncation='auto'"):
        llm.chat(msgs, max_new_tokens=4)
    assert isinstance(llm.chat(msgs, max_new_tokens=4, temperature=0, truncation="auto"), str)
    text = _text(prompts[-1])
    assert SYSTEM in text and "And the last one?" in text and QUESTIONS[0] not in text
    with pytest.raises(ValueError, match="'auto'.*'disabled'"):
        llm.chat(msgs, truncation="yes")


# -- the API --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tok = load_tokenizer(save_byte_tokenizer(tmp_path_factory.mktemp("tok")))
    engine = ScriptedEngine("Fine.", delay=0.01)
    with LiveServer(create_app(engine, tok, ServerConfig("m", 256, 260))) as s:
        s.engine = engine
        yield s


def _long_conversation() -> list[dict]:
    msgs = [{"role": "system", "content": SYSTEM}]
    for q in QUESTIONS[:8]:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": "Fine."}]
    return msgs + [{"role": "user", "content": "And now?"}]


def test_api_keeps_its_error_and_truncates_when_asked(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=30)
    msgs = _long_conversation()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="m", messages=msgs, max_tokens=8)
    assert e.value.code == "context_length_exceeded" and CONTEXT_ERROR in str(e.value)
    assert '"truncation": "auto"' in e.value.body["message"]

    raw = client.chat.completions.with_raw_response.create(model="m", messages=msgs, max_tokens=8,
                                                           extra_body={"truncation": "auto"})
    reply = raw.parse()
    assert reply.choices[0].message.content == "Fine."
    dropped = int(raw.headers["x-acik-dropped-messages"])
    assert dropped > 0 and dropped % 2 == 0
    prompt = _text(server.engine.requests[-1].prompt_ids)
    assert prompt.startswith("system\n" + SYSTEM) and "And now?" in prompt
    assert QUESTIONS[0] not in prompt and len(server.engine.requests[-1].prompt_ids) <= 256 - 8
    assert reply.model_extra["timings"]["predicted_n"] == 5

    # A single message too long for the context: the OpenAI error, truncation or not.
    with pytest.raises(openai.BadRequestError, match="Shorten the message") as e:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "w" * 400}],
                                       extra_body={"truncation": "auto"})
    assert e.value.code == "context_length_exceeded"
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "m", "messages": msgs, "truncation": "some"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "truncation"


def test_stream_carries_the_servers_timing(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=30)
    chunks = list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}],
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Fine."
    timed = [c.model_extra["timings"] for c in chunks if (c.model_extra or {}).get("timings")]
    assert len(timed) == 1 and timed[0]["predicted_n"] == 5
    # Five tokens 10 ms apart: four intervals; a sleep never returns early, and the bound is loose for a busy CPU.
    assert 4 * 10 <= timed[0]["predicted_ms"] < 5000
    assert 1 < timed[0]["predicted_per_second"] <= 100
    assert chunks[-1].usage.completion_tokens == 5
