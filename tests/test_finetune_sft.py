"""SFT data: formats, assistant-only loss masks (against transformers' own assistant mask), packing
without cross-example attention, bad input."""

import json

import pytest
import torch
import transformers as tf

from acik.tokenizer import CHATML_TEMPLATE, IM_END, load_tokenizer, save_byte_tokenizer, train_bpe
from acik.train import sft

# acik's ChatML with transformers' `{% generation %}` marks around what the assistant says: transformers
# renders the same text and reports which tokens fall inside the marks.
CHATML_GENERATION = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{ '\\n' }}{% else %}{{ message['content'] + '<|im_end|>' + '\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3 times that, in words?"},
    {"role": "assistant", "content": "Twelve, which is 3 × 4 ✓"},
    {"role": "user", "content": "thanks"},
]


@pytest.fixture(scope="module")
def byte_tok(tmp_path_factory):
    return load_tokenizer(save_byte_tokenizer(tmp_path_factory.mktemp("bytetok")))


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bpe")
    text = d / "corpus.txt"
    words = "What is the answer and times that in words thanks You are terse Twelve which is assistant user system"
    text.write_text("\n".join(f"{words} {i} {words[::-1]}" for i in range(300)))
    return train_bpe([text], 400, d / "tok", show_progress=False, manifest=False)


def _hf_assistant_mask(tok_dir, messages):
    hf = tf.PreTrainedTokenizerFast.from_pretrained(tok_dir)
    out = hf.apply_chat_template(messages, chat_template=CHATML_GENERATION, tokenize=True, return_dict=True,
                                 return_assistant_tokens_mask=True)
    return out["input_ids"], [bool(m) for m in out["assistant_masks"]]


@pytest.mark.parametrize("which", ["byte", "bpe"])
def test_assistant_mask_matches_transformers_token_by_token(which, byte_tok, bpe_dir):
    tok_dir = byte_tok.path if which == "byte" else bpe_dir
    tok = load_tokenizer(tok_dir)
    assert tok.chat_template == CHATML_TEMPLATE
    ex = sft.tokenize_example(tok, CHAT)
    ref_ids, ref_mask = _hf_assistant_mask(tok_dir, CHAT)
    assert ex.ids == ref_ids
    for i, (ours, ref) in enumerate(zip(ex.mask, ref_mask)):
        assert ours == ref, f"token {i} ({tok.decode([ex.ids[i]])!r}): acik {ours}, transformers {ref}"
    # And what the mask selects is exactly each reply followed by the turn's end token.
    runs, cur = [], []
    for t, m in zip(ex.ids, ex.mask):
        if m:
            cur.append(t)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    assert runs == ["4." + IM_END, "Twelve, which is 3 × 4 ✓" + IM_END]
    assert ex.ids[ex.mask.index(True) - 1] != tok.token_to_id(IM_END)


def _runs(tok, ex):
    runs, cur = [], []
    for t, m in zip(ex.ids + [None], ex.mask + [False]):
        if m:
            cur.append(t)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    return runs


@pytest.mark.parametrize("template, end", [("meta-llama-Llama-3.3-70B-Instruct.jinja", "<|eot_id|>"),
                                           ("Qwen-QwQ-32B.jinja", "<|im_end|>"),
                                           ("Qwen-Qwen3-0.6B.jinja", "<|im_end|>")])
def test_assistant_mask_with_published_templates(template, end, shared_data, byte_tok):
    tok = load_tokenizer(byte_tok.path)
    tok._chat_template = (shared_data / "chat_templates" / template).read_text()
    chat = [m for m in CHAT if m["role"] != "system"]
    ex = sft.tokenize_example(tok, chat)
    assert _runs(tok, ex) == ["4." + end, "Twelve, which is 3 × 4 ✓" + end]
    # The whole rendered conversation is there, in order.
    assert tok.decode(ex.ids) == tok.apply_chat_template(chat, add_generation_prompt=False)


def test_tool_calls_are_trained_on_with_plain_chatml(shared_data, byte_tok):
    records = sft.read_records(shared_data / "instruct" / "glaive_toolcall_en_demo.json")
    data = sft.build_examples(records[:20], byte_tok, max_seq_len=100_000)
    assert data.format == "messages" and data.stats["kept"] == 20
    with_calls = [e for e in data.examples if "<tool_call>" in byte_tok.decode(e.ids)]
    assert with_calls
    ex = with_calls[0]
    runs = _runs(byte_tok, ex)
    assert any(r.lstrip().startswith("<tool_call>\n{\"name\"") and r.endswith("</tool_call>" + IM_END) for r in runs)
    text = byte_tok.decode(ex.ids)
    assert "<tools>" in text  # tool definitions went into the system prompt
    # Tool results are context, not targets.
    assert not any("<|im_start|>tool" in r for r in runs)


def test_formats_and_detection(byte_tok, tmp_path):
    alpaca = {"instruction": "Add", "input": "2 and 3", "output": "5"}
    msgs, _ = sft.to_messages(alpaca, sft.detect_format(alpaca))
    assert msgs == [{"role": "user", "content": "Add\n\n2 and 3"}, {"role": "assistant", "content": "5"}]
    gsm = {"question": "2+3?", "answer": "#### 5"}
    assert sft.detect_format(gsm) == "prompt-completion"
    msgs, _ = sft.to_messages(gsm, "prompt-completion", system_prompt="Be brief.")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"] and msgs[2]["content"] == "#### 5"
    odd = {"q": "2+3?", "a": "5"}
    with pytest.raises(sft.SFTDataError, match="--prompt-field"):
        sft.detect_format(odd)
    msgs, _ = sft.to_messages(odd, sft.detect_format(odd, "q", "a"), "q", "a")
    assert msgs[1]["content"] == "5"
    share = {"system": "S", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    msgs, _ = sft.to_messages(share, sft.detect_format(share))
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    # A JSON array file reads like JSONL.
    (tmp_path / "a.json").write_text(json.dumps([alpaca, alpaca]))
    assert len(sft.read_records(tmp_path / "a.json")) == 2


def test_bad_input_is_clear_or_counted(byte_tok, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(sft.SFTDataError, match="empty"):
        sft.read_records(empty)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": \n')
    with pytest.raises(sft.SFTDataError, match="broken.jsonl:2"):
        sft.read_records(broken)
    long_reply = "x" * 300
    records = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "no reply"}]},
        {"messages": [{"role": "user", "content": "long"}, {"role": "assistant", "content": long_reply}]},
        {"messages": [{"role": "user", "content": "y" * 300}, {"role": "assistant", "content": "short"}]},
    ]
    dropped = sft.build_examples(records, byte_tok, max_seq_len=128, too_long="drop")
    assert dropped.stats["kept"] == 1
    assert dropped.stats["skipped_no_assistant_turn"] == 1 and dropped.stats["skipped_too_long"] == 2
    cut = sft.build_examples(records, byte_tok, max_seq_len=128, too_long="truncate")
    assert cut.stats["kept"] == 2 and cut.stats["truncated"] == 1
    assert cut.stats["skipped_too_long_no_assistant_left"] == 1
    assert all(len(e.ids) <= 128 for e in cut.examples)
    with pytest.raises(sft.SFTDataError, match="no usable examples.*skipped_no_assistant_turn=1"):
        sft.build_examples(records[1:2], byte_tok)
    with pytest.raises(sft.SFTDataError, match="unknown speaker"):
        sft.build_examples([{"conversations": [{"from": "narrator", "value": "x"}]}], byte_tok)


def test_holdout_split_is_deterministic_and_order_free():
    records = [{"prompt": str(i), "completion": str(i * 2)} for i in range(200)]
    train, val = sft.split_holdout(records, 0.1)
    train2, val2 = sft.split_holdout(records[::-1], 0.1)
    assert sorted(map(json.dumps, val)) == sorted(map(json.dumps, val2)) and 5 <= len(val) <= 40
    assert len(train) + len(val) == 200 and not set(map(json.dumps, val)) & set(map(json.dumps, train))
    assert len(sft.split_holdout(records[:2], 0.01)[1]) == 1


def test_packed_examples_cannot_attend_across_the_boundary(byte_tok):
    from acik.config import preset
    from acik.model import Transformer

    torch.manual_seed(0)
    model = Transformer(preset("tiny"))
    model.init_weights(seed=0)
    model.eval()
    a = sft.tokenize_example(byte_tok, CHAT[:3])
    b = sft.tokenize_example(byte_tok, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    a2 = sft.Example([t if i < 5 else (t + 1) % 256 for i, t in enumerate(a.ids)], a.mask)
    packed = sft.collate([a, b], [[0, 1]], pad_id=0, packed=True)
    packed2 = sft.collate([a2, b], [[0, 1]], pad_id=0, packed=True)
    alone = sft.collate([b], [[0]], pad_id=0, packed=False)
    n_a, n_b = len(a.ids) - 1, len(b.ids) - 1
    assert packed.segment_ids[0].tolist() == [1] * n_a + [2] * n_b
    assert packed.positions[0, n_a:].tolist() == list(range(n_b))
    with torch.no_grad():
        lp = model(packed.input_ids, positions=packed.positions, segment_ids=packed.segment_ids)
        lp2 = model(packed2.input_ids, positions=packed2.positions, segment_ids=packed2.segment_ids)
        la = model(alone.input_ids)
    torch.testing.assert_close(lp[0, n_a:], la[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(lp[0, n_a:], lp2[0, n_a:], rtol=0, atol=0)  # changing example 1 changes nothing
    assert not torch.allclose(lp[0, :n_a], lp2[0, :n_a])
    # Targets: next tokens of the assistant spans only, never across the boundary.
    tgt = packed.targets[0].tolist()
    assert tgt[:n_a] == [t if m else sft.IGNORE for t, m in zip(a.ids[1:], a.mask[1:])]
    assert tgt[n_a:] == [t if m else sft.IGNORE for t, m in zip(b.ids[1:], b.mask[1:])]


def test_batch_stream_is_a_function_of_seed_and_step(byte_tok):
    records = [{"prompt": f"q{i}", "completion": "a" * (i % 9 + 1)} for i in range(50)]
    data = sft.build_examples(records, byte_tok, max_seq_len=64)
    s1 = sft.BatchStream(data, batch_size=3, seq_len=64, packed=True, pad_id=0, seed=5)
    s2 = sft.BatchStream(data, batch_size=3, seq_len=64, packed=True, pad_id=0, seed=5)
    for i in [7, 0, 30, 3]:  # any order, across epochs
        assert torch.equal(s1.micro_batch(i).input_ids, s2.micro_batch(i).input_ids)
    # One epoch covers every example once.
    seen = sorted(i for rows in s1.epoch_batches(0) for row in rows for i in row)
    assert seen == list(range(50))
