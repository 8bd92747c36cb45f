"""Tokenizers from GGUF files, checked against transformers' GGUF tokenizer and llama.cpp's rules.

The shipped SmolLM2-135M-Instruct GGUF (pre-tokenizer `smollm`) is compared with
`AutoTokenizer.from_pretrained(dir, gguf_file=...)` on wikitext-2 test and udhr2. transformers ignores
`tokenizer.ggml.pre` for `smollm` (it splits with plain GPT-2 rules), while llama.cpp and the model's own
tokenizer.json first cut every digit apart; so the ids must equal transformers' tokenizer with that
pre-tokenizer restored everywhere, and unmodified transformers on every text without a digit. Tiny GGUF
files written here cover the other pre-tokenizers, the SentencePiece-style `llama` model (against a
Python transcription of llama.cpp's merge loop) and the error cases.
"""

from __future__ import annotations

import heapq
import json
import re
import unicodedata
from pathlib import Path

import pytest

from acik.cli import main as cli_main
from acik.manifest import tokenizer_identity
from acik.tokenizer import TokenizerError, load_tokenizer
from real_inputs import shared_data as _shared_data
from real_inputs import shipped_gguf as _smol_path
from real_inputs import udhr2_texts

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
regex = pytest.importorskip("regex")

from acik.formats.gguf_tokenizer import (  # noqa: E402  (after the skips: it needs gguf)
    PRE_TOKENIZERS,
    write_gguf_tokenizer,
)

UNKNOWN, CONTROL, USER_DEFINED, BYTE = 2, 3, 4, 6


def _has_digit(text: str) -> bool:
    return any(unicodedata.category(c).startswith("N") for c in text)


@pytest.fixture(scope="module")
def smol():
    return load_tokenizer(_smol_path())


@pytest.fixture(scope="module")
def hf_smol():
    path = _smol_path()
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="module")
def hf_smol_digits(hf_smol):
    """transformers' tokenizer of the file with the pre-tokenizer of SmolLM2's own tokenizer.json (and
    llama.cpp's `smollm`): every digit on its own, then GPT-2's byte-level split."""
    from tokenizers import Tokenizer, pre_tokenizers

    backend = Tokenizer.from_str(hf_smol.backend_tokenizer.to_str())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    return backend


def _compare(smol, hf_smol, hf_smol_digits, texts: list[str]) -> int:
    """Assert the ids equal the digit-splitting reference on every text and transformers on every text
    without a digit; returns how many texts transformers (which keeps digit runs whole) tokenizes differently."""
    ours = smol.encode_batch(texts)
    ref = [e.ids for e in hf_smol_digits.encode_batch(texts, add_special_tokens=True)]
    theirs = [e.ids for e in hf_smol.backend_tokenizer.encode_batch(texts, add_special_tokens=True)]
    differ = 0
    for text, a, b, c in zip(texts, ours, ref, theirs):
        assert a == b, text[:200]
        if not _has_digit(text):
            assert a == c, text[:200]
        differ += a != c
    return differ


# -- the shipped model ---------------------------------------------------------------------------


def test_shipped_special_tokens_and_flags(smol, hf_smol):
    assert smol.vocab_size == len(hf_smol) == 49152
    assert (smol.bos_token, smol.eos_token, smol.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert (smol.bos_token_id, smol.eos_token_id, smol.pad_token_id) == (1, 2, 2)
    assert (smol.eos_token_id, smol.bos_token_id) == (hf_smol.eos_token_id, hf_smol.bos_token_id)
    assert smol.special_tokens_map["unk_token"] == "<|endoftext|>"
    assert smol.all_special_ids == list(range(17))  # the 17 CONTROL tokens
    assert smol.encode("hi") == hf_smol.encode("hi") == [6004]  # add_bos_token is false: no <|im_start|>
    assert 2 in smol.stop_token_ids
    assert "SmolLM" in smol.chat_template


def test_special_tokens_inside_text(smol, hf_smol):
    text = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<file_sep><|endoftext|>"
    ids = smol.encode(text)
    assert ids[0] == 1 and ids.count(2) == 1 and ids[-2:] == [5, 0]
    assert ids == hf_smol.encode(text)
    assert smol.decode(ids) == text
    assert smol.decode(ids, skip_special_tokens=True) == "user\nWhat is 2+2?\nassistant\n"


def test_digits_are_split_as_llama_cpp_does(smol):
    pieces = [p for p, _ in smol.backend.pre_tokenizer.pre_tokenize_str("In 1972 ,\n      1. x2")]
    # Digits first, each on its own; then GPT-2's rules, under which the whitespace run before a digit
    # ends its piece and so stays whole (`\s+(?!\S)`), where plain GPT-2 would give "ĊĠĠĠĠĠ" + "Ġ1".
    assert pieces == ["In", "Ġ", "1", "9", "7", "2", "Ġ,", "ĊĠĠĠĠĠĠ", "1", ".", "Ġx", "2"]
    assert smol.encode("\n      1") == [smol.token_to_id("ĊĠĠĠĠĠĠ"), smol.token_to_id("1")]


def test_wikitext_ids_equal_transformers(smol, hf_smol, hf_smol_digits):
    lines = (_shared_data() / "wikitext-2" / "test.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    assert len(lines) > 4000
    differ = _compare(smol, hf_smol, hf_smol_digits, lines)
    assert differ < 10  # wikitext's numbers are space-separated, where both splits agree


def _udhr2(smol, hf_smol, hf_smol_digits, limit: int | None) -> None:
    texts = [text[:limit] for _, text in udhr2_texts()]
    assert len(texts) > 350
    _compare(smol, hf_smol, hf_smol_digits, texts)
    assert smol.decode_batch(smol.encode_batch(texts)) == texts


def test_udhr2_every_language(smol, hf_smol, hf_smol_digits):
    # Every text of the corpus, cut to its first 1,500 characters to keep the default run quick.
    _udhr2(smol, hf_smol, hf_smol_digits, 1500)


@pytest.mark.slow
def test_udhr2_full_texts(smol, hf_smol, hf_smol_digits):
    _udhr2(smol, hf_smol, hf_smol_digits, None)


CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Merhaba!"},
     {"role": "assistant", "content": "Merhaba! Nasılsın?"}, {"role": "user", "content": "İyiyim, 2+2?"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello! 👋"}],
]


@pytest.mark.parametrize("conv", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("agp", [True, False])
def test_chat_template_matches_transformers(smol, hf_smol, conv, agp):
    msgs = CONVERSATIONS[conv]
    ours = smol.apply_chat_template(msgs, add_generation_prompt=agp)
    assert ours == hf_smol.apply_chat_template(msgs, add_generation_prompt=agp, tokenize=False)
    assert ours.startswith("<|im_start|>system\n") and ours.endswith("<|im_start|>assistant\n") == agp
    ids = smol.apply_chat_template(msgs, add_generation_prompt=agp, tokenize=True)
    assert ids == hf_smol.apply_chat_template(msgs, add_generation_prompt=agp, tokenize=True, return_dict=False)


def test_stream_decoding(smol):
    text = "Türkçe ğüşöç, 日本語 and 👩‍👩‍👧 <|im_end|>"
    dec = smol.stream_decoder()
    out = "".join(dec.add(i) for i in smol.encode(text)) + dec.flush()
    assert out == text


# -- tiny files written here ---------------------------------------------------------------------


def _write_gguf(path: Path, tokens: list[str], types: list[int], *, model: str = "gpt2", pre: str | None = None,
                merges: list[str] | None = None, scores: list[float] | None = None, **keys) -> Path:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    if model is not None:
        w.add_tokenizer_model(model)
    if pre is not None:
        w.add_tokenizer_pre(pre)
    if tokens:
        w.add_token_list(tokens)
        w.add_token_types(types)
    if merges is not None:
        w.add_token_merges(merges)
    if scores is not None:
        w.add_token_scores(scores)
    for key, value in keys.items():
        getattr(w, f"add_{key}")(value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return path


SAMPLE = [
    "Hello, world! It's 2024-06-01 and we've 1234567 tokens; DON'T SHOUT. x=3.14",
    "  leading spaces\n\n\ttabs\r\nCRLF   trailing  \n",
    "Türkçe: ılık, ğüşöç, İstanbul; IĞDIR ıi — «quotes» ½ ² ٣٤٥ ४२",
    "日本語のテキストと中文文本，还有한국어. hindi: नमस्ते दुनिया, বাংলা",
    "camelCaseWords and HTTPServer/path/to file.py: return a+b*c",
]


@pytest.fixture(scope="module")
def byte_level_vocab() -> tuple[list[str], list[int], list[str]]:
    """A byte-level BPE vocabulary learnt here (tokens, types, merges), with two special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    text = (_shared_data() / "tinyshakespeare.txt").read_text(encoding="utf-8")[:150_000]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=1200, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text, *SAMPLE * 20], trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get) + ["<|endoftext|>", "<think>"]
    types = [1] * (len(tokens) - 2) + [CONTROL, USER_DEFINED]
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    return tokens, types, merges


GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"


def _llama_cpp_splits(name: str) -> list[str]:
    """The regexes llama.cpp applies one after the other for `name` (src/llama-vocab.cpp); the
    Llama 3, Qwen2 and GPT-4o patterns are transformers' copies of the models' own."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS as tf

    return {"default": [r"[\p{P}\$\+<=>\^~\|]+", GPT2_RE, r"\p{N}+", r"[0-9][0-9][0-9]"],
            "smollm": [r"\p{N}", GPT2_RE], "olmo": [GPT2_RE], "llama-bpe": [tf["llama-bpe"]],
            "qwen2": [tf["qwen2"]], "gpt-4o": [tf["gpt-4o"]]}[name]


def _split_like_llama_cpp(text: str, patterns: list[str]) -> list[str]:
    # Each regex cuts every piece so far into its matches and the text between them (unicode_regex_split).
    pieces = [text]
    for pattern in patterns:
        out = []
        for piece in pieces:
            pos = 0
            for m in regex.finditer(pattern, piece):
                out += [piece[pos:m.start()]] if m.start() > pos else []
                out.append(m.group())
                pos = m.end()
            out += [piece[pos:]] if pos < len(piece) else []
        pieces = out
    return pieces


@pytest.mark.parametrize("name", ["default", "llama-bpe", "smollm", "qwen2", "gpt-4o", "olmo"])
def test_pre_tokenizers(tmp_path, byte_level_vocab, name):
    tokens, types, merges = byte_level_vocab
    path = _write_gguf(tmp_path / f"{name}.gguf", tokens, types, pre=name, merges=merges,
                       bos_token_id=len(tokens) - 2, eos_token_id=len(tokens) - 2, add_bos_token=False)
    tok = load_tokenizer(path)
    texts = SAMPLE + [text[:400] for _, text in udhr2_texts()[::8]]
    for text in texts:
        got = [text[a:b] for _, (a, b) in tok.backend.pre_tokenizer.pre_tokenize_str(text)]
        assert got == _split_like_llama_cpp(text, _llama_cpp_splits(name)), (name, text[:80])
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("a<think>b<|endoftext|>")[-3:] == [len(tokens) - 1, tok.token_to_id("b"), len(tokens) - 2]
    assert tok.all_special_ids == [len(tokens) - 2]  # <think> is USER_DEFINED: matched whole, not special
    if name in ("olmo", "qwen2", "gpt-4o"):  # transformers builds these the same way (GPT-2 default or the regex)
        theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
        assert tok.encode_batch(texts) == theirs(texts)["input_ids"]


def test_llama_bpe_adds_bos_unless_the_file_says_no(tmp_path, byte_level_vocab):
    tokens, types, merges = byte_level_vocab
    eot = len(tokens) - 2
    with pytest.raises(TokenizerError, match="add_bos_token is true but the file names no bos_token"):
        load_tokenizer(_write_gguf(tmp_path / "a.gguf", tokens, types, pre="llama-bpe", merges=merges))
    tok = load_tokenizer(_write_gguf(tmp_path / "b.gguf", tokens, types, pre="llama-bpe", merges=merges,
                                     bos_token_id=eot))
    assert tok.encode("hi")[0] == eot and tok.encode("hi", add_special_tokens=False)[0] != eot
    think = eot + 1
    tok = load_tokenizer(_write_gguf(tmp_path / "c.gguf", tokens, types, pre="llama-bpe", merges=merges,
                                     bos_token_id=eot, add_bos_token=False, eos_token_id=think, add_eos_token=True))
    assert tok.encode("hi")[-1] == think and eot not in tok.encode("hi")


# -- SentencePiece-style (tokenizer.ggml.model = llama) ------------------------------------------


@pytest.fixture(scope="module")
def spm_vocab() -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece-style vocabulary (tokens, scores, types): <unk> <s> </s>, the 256 byte tokens,
    two control tokens and a user-defined one, then pieces scored by merge order, then single characters."""
    from tokenizers import SentencePieceBPETokenizer

    data = _shared_data()
    text = (data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:100_000]
    sp = SentencePieceBPETokenizer()
    sp.train_from_iterator([text, *SAMPLE * 20], vocab_size=900, min_frequency=2, show_progress=False)
    model = json.loads(sp.to_str())["model"]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), "<|im_start|>", "<|im_end|>", "<tool>"]
    types = [UNKNOWN, CONTROL, CONTROL, *[BYTE] * 256, CONTROL, CONTROL, USER_DEFINED]
    scores = [0.0] * len(tokens)
    for merge in model["merges"]:
        piece = "".join(merge if isinstance(merge, list) else merge.split(" "))
        if piece not in tokens:
            tokens.append(piece)
            types.append(1)
            scores.append(-float(len(scores)))
    for char in sorted(t for t in model["vocab"] if len(t) == 1 and t not in tokens):
        tokens.append(char)
        types.append(1)
        scores.append(-1e6 - len(scores))
    return tokens, scores, types


def _spm_merge(piece: str, vocab: dict[str, int], scores: list[float]) -> list[int]:
    # llama.cpp's llm_tokenizer_spm_session: repeatedly merge the adjacent pair whose concatenation is the
    # best-scoring token (leftmost on ties); what is left unknown is spelled as <0xXX> byte tokens.
    syms = list(piece)
    prev, nxt = list(range(-1, len(syms) - 1)), [*range(1, len(syms)), -1]
    queue: list[tuple[float, int, int, int]] = []

    def push(left: int, right: int) -> None:
        if left >= 0 and right >= 0 and syms[left] + syms[right] in vocab:
            text = syms[left] + syms[right]
            heapq.heappush(queue, (-scores[vocab[text]], left, right, len(text)))

    for i in range(1, len(syms)):
        push(i - 1, i)
    while queue:
        _, left, right, size = heapq.heappop(queue)
        if not syms[left] or not syms[right] or len(syms[left]) + len(syms[right]) != size:
            continue
        syms[left], syms[right] = syms[left] + syms[right], ""
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prev[nxt[right]] = left
        push(prev[left], left)
        push(left, nxt[left])
    ids, i = [], 0
    while i != -1:
        ids += [vocab[syms[i]]] if syms[i] in vocab else [vocab[f"<0x{b:02X}>"] for b in syms[i].encode()]
        i = nxt[i]
    return ids


def _spm_reference(text: str, tokens: list[str], scores: list[float], types: list[int], *, bos: bool,
                   prefix: bool) -> list[int]:
    # llama.cpp's tokenize for an SPM vocabulary: special tokens cut out first; every other piece gets a
    # space in front when it starts the text or follows a special token; spaces become U+2581.
    vocab = {t: i for i, t in enumerate(tokens)}
    specials = sorted((t for t, ty in zip(tokens, types) if ty in (UNKNOWN, CONTROL, USER_DEFINED)), key=len,
                      reverse=True)
    ids, prev_special = [1] if bos else [], True
    for k, frag in enumerate(re.split("(" + "|".join(map(re.escape, specials)) + ")", text)):
        if k % 2:
            ids.append(vocab[frag])
            prev_special = True
        elif frag:
            ids += _spm_merge(((" " if prefix and prev_special else "") + frag).replace(" ", "\u2581"), vocab, scores)
            prev_special = False
    return ids


@pytest.mark.parametrize("prefix", [True, False])
def test_sentencepiece_style_matches_llama_cpp(tmp_path, spm_vocab, prefix):
    tokens, scores, types = spm_vocab
    path = _write_gguf(tmp_path / "spm.gguf", tokens, types, model="llama", scores=scores, bos_token_id=1,
                       eos_token_id=2, unk_token_id=0, add_space_prefix=prefix,
                       chat_template="{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}")
    tok = load_tokenizer(path)
    lines = (_shared_data() / "wikitext-2" / "test.txt").read_text(encoding="utf-8").splitlines()[:400]
    texts = SAMPLE + lines + [t[:300] for _, t in udhr2_texts()[::6]] + [
        "", " ", "  two  spaces", " x", "<|im_start|>user\nhi there<|im_end|>", "a<tool>b", "<s>not bos",
        "emoji 😀 and \x00 nul", "</s>"]
    for text in texts:
        ids = tok.encode(text)
        assert ids == _spm_reference(text, tokens, scores, types, bos=True, prefix=prefix), text[:80]
        if "<" not in text:
            assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.bos_token_id == 1 and tok.eos_token_id == 2 and tok.special_tokens_map["unk_token"] == "<unk>"
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "<|im_start|>hi<|im_end|>"
    assert tok.token_to_id("<0x41>") == 3 + 0x41
    if prefix:
        # transformers prepends U+2581 only at the very start and never doubles a leading space; on text
        # where those rules cannot differ from llama.cpp's, the ids must be the same.
        theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
        plain = [t.lstrip() for t in texts if t.strip() and "<" not in t]
        assert len(plain) > 100
        assert tok.encode_batch(plain) == theirs(plain)["input_ids"]


# -- writing, identity, CLI ----------------------------------------------------------------------


def test_written_directory_loads_the_same(tmp_path, byte_level_vocab):
    tokens, types, merges = byte_level_vocab
    path = _write_gguf(tmp_path / "m.gguf", tokens, types, pre="qwen2", merges=merges, eos_token_id=len(tokens) - 2,
                       chat_template="{{ messages[0]['content'] }}")
    tok = load_tokenizer(path)
    out = write_gguf_tokenizer(path, tmp_path / "tok")
    again, hf = load_tokenizer(out), transformers.AutoTokenizer.from_pretrained(str(out))
    assert tok.identity == again.identity == tokenizer_identity(out)
    assert tok.encode_batch(SAMPLE) == again.encode_batch(SAMPLE) == hf(SAMPLE)["input_ids"]
    assert again.apply_chat_template([{"role": "user", "content": "x"}]) == "x"


def test_cli_encode_reads_gguf(tmp_path, byte_level_vocab, capsys):
    tokens, types, merges = byte_level_vocab
    path = _write_gguf(tmp_path / "m.gguf", tokens, types, pre="olmo", merges=merges)
    assert cli_main(["tokenizer", "encode", str(path), "hi<|endoftext|>"]) == 0
    assert json.loads(capsys.readouterr().out)[-1] == len(tokens) - 2


# -- bad input -----------------------------------------------------------------------------------


def test_errors_name_the_file_and_the_problem(tmp_path, byte_level_vocab, capsys):
    tokens, types, merges = byte_level_vocab
    cases = {
        "no_tokenizer.gguf": ({"model": None, "tokens": [], "types": []}, "has no tokenizer"),
        "unknown_pre.gguf": ({"pre": "banana-bpe"}, "unknown pre-tokenizer 'banana-bpe'"),
        "no_pre.gguf": ({}, "without tokenizer.ggml.pre"),
        "bert.gguf": ({"model": "bert"}, "tokenizer model 'bert'"),
    }
    for name, (kw, message) in cases.items():
        args = {"tokens": tokens, "types": types, "merges": merges, **kw}
        path = _write_gguf(tmp_path / name, args.pop("tokens"), args.pop("types"), **args)
        with pytest.raises(TokenizerError, match=re.escape(message)) as e:
            load_tokenizer(path)
        assert str(path) in str(e.value)
    with pytest.raises(TokenizerError) as e:
        load_tokenizer(tmp_path / "unknown_pre.gguf")
    assert all(name in str(e.value) for name in PRE_TOKENIZERS)  # the message lists what acik knows

    bad = tmp_path / "bad_magic.gguf"
    bad.write_bytes(b"NOPE" + bytes(64))
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes((tmp_path / "unknown_pre.gguf").read_bytes()[:5000])
    for path in (bad, truncated, tmp_path / "missing.gguf"):
        with pytest.raises(TokenizerError, match=re.escape(str(path))):
            load_tokenizer(path)
    # The CLI prints one line and exits non-zero, no traceback.
    assert cli_main(["tokenizer", "encode", str(tmp_path / "unknown_pre.gguf"), "x"]) != 0
    err = capsys.readouterr().err
    assert "banana-bpe" in err and "Traceback" not in err


def test_duplicate_tokens_are_refused(tmp_path):
    path = _write_gguf(tmp_path / "dup.gguf", ["a", "b", "a"], [1, 1, 1], pre="olmo", merges=[])
    with pytest.raises(TokenizerError, match="'a' appears twice"):
        load_tokenizer(path)
