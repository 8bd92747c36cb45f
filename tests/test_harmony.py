"""Harmony (gpt-oss): acik's renderer against the published template run by transformers, and parsing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from acik import harmony
from acik.harmony import HarmonyError, HarmonyMessage, parse_harmony, render_chat
from acik.tokenizer import load_tokenizer, save_byte_tokenizer

transformers = pytest.importorskip("transformers")


def gpt_oss_template() -> str:
    root = Path(os.environ.get("ACIK_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    path = root / "chat_templates" / "openai-gpt-oss-120b.jinja"
    if not path.exists():
        pytest.skip(f"{path} not found (set ACIK_SHARED_DATA)")
    return path.read_text(encoding="utf-8")


HARMONY_SPECIALS = ["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|call|>",
                    "<|return|>"]


@pytest.fixture(scope="module")
def gpt_oss_dir(tmp_path_factory) -> Path:
    d = save_byte_tokenizer(tmp_path_factory.mktemp("gptoss"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|startoftext|>",
           "eos_token": "<|return|>", "pad_token": "<|endoftext|>",
           "additional_special_tokens": [t for t in HARMONY_SPECIALS if t != "<|return|>"],
           "chat_template": gpt_oss_template()}
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [200002, 199999, 200012]}))
    return d


@pytest.fixture(scope="module")
def hf(gpt_oss_dir):
    return transformers.AutoTokenizer.from_pretrained(str(gpt_oss_dir))


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather",
    "parameters": {"type": "object", "required": ["city"], "properties": {
        "city": {"type": "string", "description": "City name, e.g. İzmir"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
        "days": {"type": "integer", "default": 1},
        "hourly": {"type": "boolean"},
        "fields": {"type": "array", "items": {"type": "string"}},
        "where": {"type": "object", "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                  "required": ["lat"]},
        "note": {"type": ["string", "null"]},
    }}}}
NOW = {"type": "function", "function": {"name": "now", "description": "The time now"}}
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "İzmir"}}}

CONVERSATIONS = {
    "user_only": [{"role": "user", "content": "Merhaba"}],
    "system_multi_thinking": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "thinking": "Simple arithmetic."},
        {"role": "user", "content": "3+3?"},
    ],
    "developer": [{"role": "developer", "content": "Be kind."}, {"role": "user", "content": "Hi"}],
    "tool_pending": [
        {"role": "user", "content": "Weather in İzmir?"},
        {"role": "assistant", "thinking": "Need the weather tool.", "tool_calls": [CALL]},
        {"role": "tool", "content": '{"temp": 24, "sky": "clear"}'},
    ],
    "tool_answered": [
        {"role": "user", "content": "Weather in İzmir?"},
        {"role": "assistant", "content": "Calling the tool.", "tool_calls": [CALL]},
        {"role": "tool", "content": "24C"},
        {"role": "assistant", "content": "It is 24°C and clear.", "reasoning_content": "Got 24C."},
    ],
    "training_sample": [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue.", "thinking": "Any colour will do."},
    ],
}


@pytest.mark.parametrize("conv", list(CONVERSATIONS))
def test_render_chat_matches_transformers(hf, conv):
    messages = CONVERSATIONS[conv]
    for tools in (None, [WEATHER, NOW]):
        for agp in (True, False):
            for kw in ({}, {"reasoning_effort": "low", "model_identity": "You are acik, an open model."}):
                expected = hf.apply_chat_template(messages, tools=tools, add_generation_prompt=agp,
                                                  tokenize=False, **kw)
                ours = render_chat(messages, tools, add_generation_prompt=agp, **kw)
                assert ours == expected, (tools, agp, kw)


def test_tokenizer_knows_harmony(gpt_oss_dir, hf):
    tok = load_tokenizer(gpt_oss_dir)
    assert tok.is_harmony
    stops = {tok.id_to_token(i) for i in tok.stop_token_ids if tok.id_to_token(i)}
    assert {"<|return|>", "<|call|>"} <= stops and "<|end|>" not in stops
    msgs = CONVERSATIONS["tool_pending"]
    assert tok.apply_chat_template(msgs, tools=[WEATHER], tokenize=True) == hf.apply_chat_template(
        msgs, tools=[WEATHER], add_generation_prompt=True, return_dict=False)


def test_render_errors_like_the_template(hf):
    bad = [{"role": "user", "content": "x"},
           {"role": "assistant", "content": "<|channel|>final<|message|>hi"},
           {"role": "user", "content": "y"}]
    with pytest.raises(HarmonyError, match="channel"):
        render_chat(bad)
    with pytest.raises(Exception, match="channel"):
        hf.apply_chat_template(bad, tokenize=False)
    orphan = [{"role": "user", "content": "x"}, {"role": "tool", "content": "5"}]
    with pytest.raises(HarmonyError, match="tool call"):
        render_chat(orphan)
    with pytest.raises(HarmonyError, match="empty"):
        render_chat([])


def test_parse_round_trips_rendered_messages():
    msgs = [
        HarmonyMessage("system", "You are a model.\nReasoning: high"),
        HarmonyMessage("developer", "# Instructions\n\nBe kind."),
        HarmonyMessage("user", "Weather in İzmir? 🌤"),
        HarmonyMessage("assistant", "Need the tool.", channel="analysis", end="<|end|>"),
        HarmonyMessage("assistant", '{"city": "İzmir"}', channel="commentary",
                       recipient="functions.get_weather", content_type="<|constrain|>json", end="<|call|>"),
        HarmonyMessage("tool", "24C", channel="commentary", recipient="assistant",
                       name="functions.get_weather", end="<|end|>"),
        HarmonyMessage("assistant", "It is 24°C.", channel="final", end="<|return|>"),
    ]
    text = harmony.render_messages(msgs)
    parsed = parse_harmony(text)
    for m in msgs:
        m.end = m.end or "<|end|>"
    assert parsed == msgs
    assert harmony.render_messages(parsed) == text


def test_parse_model_completion_and_fold_into_chat_message(hf):
    # What gpt-oss writes after the generation prompt "<|start|>assistant".
    completion = ("<|channel|>analysis<|message|>User wants weather. Use tool.<|end|>"
                  "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
                  '<|message|>{"city": "İzmir"}<|call|>')
    parsed = parse_harmony(completion)
    assert [(m.role, m.channel, m.recipient) for m in parsed] == [
        ("assistant", "analysis", None), ("assistant", "commentary", "functions.get_weather")]
    assert parsed[1].content_type == "<|constrain|>json" and parsed[1].end == "<|call|>"
    message = harmony.to_chat_message(parsed)
    assert message == {"role": "assistant", "content": "", "thinking": "User wants weather. Use tool.",
                       "tool_calls": [{"type": "function", "function": {"name": "get_weather",
                                                                        "arguments": {"city": "İzmir"}}}]}
    # The folded message goes back into the conversation and renders as the template renders it.
    conv = [{"role": "user", "content": "Weather in İzmir?"}, message, {"role": "tool", "content": "24C"}]
    assert render_chat(conv, [WEATHER]) == hf.apply_chat_template(
        conv, tools=[WEATHER], add_generation_prompt=True, tokenize=False)
    final = parse_harmony("<|channel|>final<|message|>Sunny, 24°C.<|return|>")
    assert harmony.to_chat_message(final) == {"role": "assistant", "content": "Sunny, 24°C."}
    # Recipient before the channel, as the template writes tool calls.
    alt = parse_harmony(' to=functions.now<|channel|>commentary json<|message|>{}<|call|>')
    assert (alt[0].role, alt[0].recipient, alt[0].content_type) == ("assistant", "functions.now", "json")


def test_parse_incomplete_and_bad_text():
    partial = parse_harmony("<|channel|>final<|message|>Merhab")
    assert partial[0].content == "Merhab" and not partial[0].complete and partial[0].end is None
    header_only = parse_harmony("<|channel|>analysis")
    assert header_only[0].channel == "analysis" and not header_only[0].complete
    assert parse_harmony("") == []
    with pytest.raises(HarmonyError, match="expected <\\|start\\|>"):
        parse_harmony("<|channel|>final<|message|>a<|end|>stray text")


def test_drop_old_analysis():
    msgs = parse_harmony(
        "<|start|>user<|message|>q1<|end|>"
        "<|start|>assistant<|channel|>analysis<|message|>think1<|end|>"
        "<|start|>assistant<|channel|>final<|message|>a1<|end|>"
        "<|start|>user<|message|>q2<|end|>"
        "<|start|>assistant<|channel|>analysis<|message|>think2<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.f json<|message|>{}<|call|>")
    kept = harmony.drop_old_analysis(msgs)
    assert [m.content for m in kept] == ["q1", "a1", "q2", "think2", "{}"]
    # Once the second turn ends in a final answer, its reasoning goes too.
    msgs += parse_harmony("<|start|>assistant<|channel|>final<|message|>a2<|return|>")
    assert [m.content for m in harmony.drop_old_analysis(msgs)] == ["q1", "a1", "q2", "{}", "a2"]


def test_stream_parser_separates_channels(gpt_oss_dir):
    tok = load_tokenizer(gpt_oss_dir)
    completion = ("<|channel|>analysis<|message|>Düşünüyorum…<|end|>"
                  "<|start|>assistant<|channel|>final<|message|>Cevap: 42 🎉<|return|>")
    ids = tok.encode(completion, add_special_tokens=False)
    dec, stream = tok.stream_decoder(), harmony.HarmonyStream()
    events = []
    for i in ids:
        events += stream.feed(dec.add(i))
    events += stream.feed(dec.flush())
    by_channel: dict = {}
    for channel, _, delta in events:
        by_channel[channel] = by_channel.get(channel, "") + delta
    assert by_channel == {"analysis": "Düşünüyorum…", "final": "Cevap: 42 🎉"}
    assert [m.end for m in stream.messages] == ["<|end|>", "<|return|>"]
