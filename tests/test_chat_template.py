"""Chat templates: acik's sandboxed renderer against `transformers.apply_chat_template`, one by one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from acik.chat_template import ChatTemplateError, render_chat_template
from acik.tokenizer import load_tokenizer, train_bpe
from real_inputs import shared_data as _shared_data

transformers = pytest.importorskip("transformers")


LLAMA_EXTRA = ["<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|python_tag|>"]
# The special tokens each model's tokenizer_config.json declares (what its template reads as bos_token etc.).
SPECIALS = {
    "meta-llama-Llama-3.3-70B-Instruct": {
        "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
        "additional_special_tokens": LLAMA_EXTRA},
    "meta-llama-Llama-3.2-3B-Instruct": {
        "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
        "additional_special_tokens": LLAMA_EXTRA},
    "mistralai-Mistral-Nemo-Instruct-2407": {
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "additional_special_tokens": ["[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                                      "[TOOL_CALLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"]},
    "Qwen-Qwen3-0.6B": {
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "additional_special_tokens": ["<|im_start|>", "<think>", "</think>", "<tool_call>", "</tool_call>",
                                      "<tool_response>", "</tool_response>"]},
    "Qwen-QwQ-32B": {
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "additional_special_tokens": ["<|im_start|>", "<think>", "</think>", "<tool_call>", "</tool_call>"]},
    "openai-gpt-oss-120b": {
        "bos_token": "<|startoftext|>", "eos_token": "<|return|>", "pad_token": "<|endoftext|>",
        "additional_special_tokens": ["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>",
                                      "<|call|>"]},
}

ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer", "description": "first"},
                                                    "b": {"type": "integer"}}, "required": ["a", "b"]}}}
CALL = {"id": "call12345", "type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}

CONVERSATIONS = {
    "single": [{"role": "user", "content": "Merhaba! Nasılsın? 你好 👋"}],
    "system_multi": [
        {"role": "system", "content": "You answer in one line."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"},
    ],
    "no_system_multi": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    ],
    "reasoning": [
        {"role": "user", "content": "Why is the sky blue?"},
        {"role": "assistant", "content": "Rayleigh scattering.", "reasoning_content": "Short answer."},
        {"role": "user", "content": "More?"},
    ],
    "tool_call": [
        {"role": "system", "content": "Use tools when useful."},
        {"role": "user", "content": "Add 2 and 3."},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call12345", "name": "add", "content": "5"},
    ],
    "tool_answered": [
        {"role": "user", "content": "Add 2 and 3."},
        {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call12345", "name": "add", "content": "5"},
        {"role": "assistant", "content": "2 + 3 = 5."},
    ],
}


@pytest.fixture(scope="module")
def base_tokenizer(tmp_path_factory) -> Path:
    text = (_shared_data() / "tinyshakespeare.txt").read_text(encoding="utf-8")[:100_000]
    src = tmp_path_factory.mktemp("c") / "c.txt"
    src.write_text(text, encoding="utf-8")
    return train_bpe([src], 600, tmp_path_factory.mktemp("t") / "base", show_progress=False)


def template_dir(base: Path, out: Path, name: str) -> Path:
    """A tokenizer directory with model `name`'s chat template and special tokens."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_bytes((base / "tokenizer.json").read_bytes())
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
           **SPECIALS[name],
           "chat_template": (_shared_data() / "chat_templates" / f"{name}.jinja").read_text(encoding="utf-8")}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def pairs(base_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("templates")
    out = {}
    for name in SPECIALS:
        d = template_dir(base_tokenizer, root / name, name)
        out[name] = (load_tokenizer(d), transformers.AutoTokenizer.from_pretrained(str(d)))
    return out


def _render_both(ours, theirs, messages, **kw):
    results = []
    for fn in (lambda: ours.apply_chat_template(messages, **kw),
               lambda: theirs.apply_chat_template(messages, **kw)):
        try:
            results.append(fn())
        except Exception as e:  # the same conversations must fail in both, with the template's message
            results.append(("error", str(e).split(": ")[-1]))
    return results


@pytest.mark.parametrize("name", list(SPECIALS))
def test_templates_match_transformers(pairs, name):
    ours, theirs = pairs[name]
    checked = 0
    for conv_name, messages in CONVERSATIONS.items():
        for tools in (None, [ADD]):
            for agp in (True, False):
                kw = {"tools": tools, "add_generation_prompt": agp, "date_string": "26 Jul 2024"}
                a, b = _render_both(ours, theirs, messages, tokenize=False, **kw)
                assert a == b, (name, conv_name, tools is not None, agp)
                if not isinstance(a, tuple):
                    checked += 1
                    ids = ours.apply_chat_template(messages, tokenize=True, **kw)
                    assert ids == theirs.apply_chat_template(messages, tokenize=True, return_dict=False, **kw)
                    assert ours.decode(ids) == a
    assert checked >= 16, f"{name}: too few conversations rendered ({checked})"


def test_template_options_match_transformers(pairs):
    msgs = CONVERSATIONS["system_multi"]
    cases = [("Qwen-Qwen3-0.6B", {"enable_thinking": False}),
             ("openai-gpt-oss-120b", {"reasoning_effort": "high", "model_identity": "You are acik."}),
             ("openai-gpt-oss-120b", {"builtin_tools": ["browser", "python"]}),
             ("meta-llama-Llama-3.3-70B-Instruct", {"date_string": "1 Jan 2025"})]
    for name, kw in cases:
        ours, theirs = pairs[name]
        assert ours.apply_chat_template(msgs, **kw) == theirs.apply_chat_template(
            msgs, add_generation_prompt=True, tokenize=False, **kw), (name, kw)


def test_continue_final_message_matches_transformers(pairs):
    msgs = [{"role": "user", "content": "Count to three."}, {"role": "assistant", "content": "One, two,"}]
    for name in ("Qwen-Qwen3-0.6B", "meta-llama-Llama-3.3-70B-Instruct"):
        ours, theirs = pairs[name]
        assert ours.apply_chat_template(msgs, add_generation_prompt=False, continue_final_message=True) == \
            theirs.apply_chat_template(msgs, continue_final_message=True, tokenize=False)


def test_default_chatml_is_stop_token_aware(base_tokenizer):
    tok = load_tokenizer(base_tokenizer)
    assert tok.token_to_id("<|im_end|>") in tok.stop_token_ids
    assert not tok.is_harmony


def test_template_that_raises_gives_a_clear_error():
    tpl = ("{% if messages[0].role != 'user' %}"
           "{{ raise_exception('Conversations must start with a user turn') }}"
           "{% endif %}{{ messages[0].content }}")
    assert render_chat_template(tpl, [{"role": "user", "content": "x"}]) == "x"
    with pytest.raises(ChatTemplateError, match="raised an error: Conversations must start with a user turn"):
        render_chat_template(tpl, [{"role": "system", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="syntax error at line 1"):
        render_chat_template("{% for m in messages %}", [{"role": "user", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="empty conversation"):
        render_chat_template("x", [])


def test_sandbox_blocks_python_internals():
    msgs = [{"role": "user", "content": "x"}]
    for tpl in ("{{ messages.__class__.__mro__[1].__subclasses__() }}",
                "{{ ''.__class__.__base__ }}",
                "{% set ns = namespace(_private=1) %}",
                "{{ messages.append(1) }}",
                "{{ cycler.__init__.__globals__ }}"):
        with pytest.raises(ChatTemplateError):
            render_chat_template(tpl, msgs)


def test_helpers_match_transformers(base_tokenizer):
    theirs = transformers.AutoTokenizer.from_pretrained(str(base_tokenizer))
    ours = load_tokenizer(base_tokenizer)
    msgs = [{"role": "user", "content": "<b>&'\"ğ</b>", "extra": {"z": 1, "a": [1, 2]}}]
    tpl = ("{{ messages[0] | tojson }}|{{ messages[0].extra | tojson(indent=2) }}|"
           "{{ messages[0].extra | tojson(sort_keys=true, separators=(',', ':')) }}|"
           "{% for m in messages %}{% if loop.first %}{% continue %}{% endif %}{{ m }}{% endfor %}"
           "{% set d = dict(a=1) %}{{ d.a }}|{{ eos_token }}|{{ strftime_now('%Y') }}|"
           "{% generation %}gen{% endgeneration %}\n  {% if true %}\n    trimmed\n  {% endif %}\n")
    assert ours.apply_chat_template(msgs, chat_template=tpl) == theirs.apply_chat_template(
        msgs, chat_template=tpl, add_generation_prompt=True, tokenize=False)


def test_template_files_and_named_templates(base_tokenizer, tmp_path):
    d = tmp_path / "t"
    d.mkdir()
    (d / "tokenizer.json").write_bytes((base_tokenizer / "tokenizer.json").read_bytes())
    cfg = json.loads((base_tokenizer / "tokenizer_config.json").read_text())
    cfg["chat_template"] = [{"name": "default", "template": "D{{ messages[0].content }}"},
                            {"name": "tool_use", "template": "T{{ tools | length }}"}]
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok, theirs = load_tokenizer(d), transformers.AutoTokenizer.from_pretrained(str(d))
    msgs = [{"role": "user", "content": "x"}]
    assert tok.apply_chat_template(msgs) == "Dx" == theirs.apply_chat_template(msgs, tokenize=False)
    assert tok.apply_chat_template(msgs, tools=[{}]) == "T1" == theirs.apply_chat_template(
        msgs, tools=[{}], tokenize=False)
    (d / "chat_template.jinja").write_text("J{{ messages | length }}")
    assert load_tokenizer(d).apply_chat_template(msgs) == "J1" == transformers.AutoTokenizer.from_pretrained(
        str(d)).apply_chat_template(msgs, tokenize=False)
