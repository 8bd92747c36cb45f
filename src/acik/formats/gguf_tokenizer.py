"""The tokenizer inside a GGUF file, as a Hugging Face `tokenizers` tokenizer behind acik's `Tokenizer`.

A GGUF has no `tokenizer.json`: llama.cpp keeps the vocabulary, merges, token types, special ids, flags
and chat template as `tokenizer.*` metadata and picks the pre-tokenizer by name (`tokenizer.ggml.pre`).
This module rebuilds the `tokenizer.json` and `tokenizer_config.json` those keys describe, so the
tokenizer goes through the same `acik.tokenizer.Tokenizer` as one loaded from a directory and splits
text the way llama.cpp does:

- `gpt2`: byte-level BPE. The pre-tokenizer is llama.cpp's list of regexes for the file's
  `tokenizer.ggml.pre`, each splitting the pieces of the one before (a `Sequence` of isolating
  `Split`s), then the GPT-2 byte alphabet. A name acik does not know is an error, never a guess.
- `llama`: SentencePiece-style BPE: spaces become U+2581 (plus one in front of the text after every
  special token, llama.cpp's `add_space_prefix`), pieces merge by score, and characters outside the
  vocabulary fall back to `<0xXX>` byte tokens.

Tokens typed CONTROL (and UNKNOWN) become special added tokens and USER_DEFINED ones plain added tokens, so
all are matched whole inside text, as llama.cpp does. `add_bos`/`add_eos` become the post-processor.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from acik.formats import TokenizerError

# GGUF token types (llama.cpp's llama_token_type; gguf.TokenType).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# llama.cpp's pre-tokenizer regexes (src/llama-vocab.cpp, llm_tokenizer_bpe), each group under the names
# llama.cpp gives it. Where llama.cpp rewrote a model's pattern for its own regex engine, this keeps the
# original from the model's tokenizer.json, which `tokenizers` (Oniguruma) runs as written: `(?i:'s|...)`
# for `(?:'[sS]|...)` means the same; gpt-4o's and tekken's letter classes are llama.cpp's approximation
# (its look-aheads leave out combining marks and treat non-ASCII letters as both cases), so there acik
# splits as the model's own tokenizer (and transformers) do, not as llama.cpp does.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
          r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
          r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
           r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
           r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclasses.dataclass(frozen=True)
class PreTokenizer:
    """One of llama.cpp's BPE pre-tokenizer types: its regexes and the flags llama.cpp sets with it."""

    regexes: tuple[str, ...]
    ignore_merges: bool = False  # a piece that is already a token is not merged (Llama 3, Tekken)
    add_bos: bool = False  # llama.cpp's default when the file has no tokenizer.ggml.add_bos_token


_DEFAULT = PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"))
_GPT2_PRE = PreTokenizer((_GPT2,))
_DIGITS_THEN_GPT2 = PreTokenizer((r"\p{N}", _GPT2))
_LLAMA3_PRE = PreTokenizer((_LLAMA3,), ignore_merges=True, add_bos=True)
_QWEN2_PRE = PreTokenizer((_QWEN2,))
_GPT4O_PRE = PreTokenizer((_GPT4O,))

# `tokenizer.ggml.pre` names, grouped as llama.cpp groups them onto one regex set.
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "default": _DEFAULT,
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                     "jina-v5-nano"),
                    _LLAMA3_PRE),
    **dict.fromkeys(("dbrx", "smaug-bpe"), PreTokenizer((_LLAMA3,))),
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b", "mellum2"),
                    _DIGITS_THEN_GPT2),
    **dict.fromkeys(("gpt-2", "phi-2", "olmo", "mpt", "jais", "trillion", "granite-docling", "exaone4",
                     "jina-es", "jina-de", "jina-v2-es", "jina-v2-de", "gigachat", "mellum", "a.x-4.0"),
                    _GPT2_PRE),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan",
                     "solar-open"), _QWEN2_PRE),
    **dict.fromkeys(("gpt-4o", "llama4", "minimax-m2"), _GPT4O_PRE),
    "tekken": PreTokenizer((_TEKKEN,), ignore_merges=True, add_bos=True),
}

# The special tokens: tokenizer_config.json's name -> the GGUF key's stem (tokenizer.ggml.<stem>_token_id).
_SPECIAL_KEYS = {"bos_token": "bos", "eos_token": "eos", "unk_token": "unknown", "pad_token": "padding"}
# llama.cpp's ids for a SentencePiece vocabulary whose file names none.
_SPM_DEFAULT_IDS = {"bos_token": 1, "eos_token": 2, "unk_token": 0}


# ---------------------------------------------------------------------------------------------
# Reading the metadata


def _open(path: Path) -> Any:
    """The model loader's reader (`acik.formats.gguf.open_gguf`: faster, and its errors name the file and the fix),
    its errors as tokenizer errors."""
    from acik.formats.gguf import GGUFError, open_gguf

    try:
        return open_gguf(path)
    except GGUFError as e:
        raise TokenizerError(str(e)) from None


def read_tokenizer_metadata(path: str | Path, reader: Any = None) -> dict[str, Any]:
    """The file's `tokenizer.*` keys as Python values (pass `reader`, a `gguf.GGUFReader`, to reuse one)."""
    path = Path(path)
    reader = _open(path) if reader is None else reader
    meta: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.") or key in ("general.architecture", "general.name"):
            try:
                meta[key] = field.contents()
            except Exception as e:
                raise TokenizerError(f"{path}: metadata key {key} cannot be read ({e}).") from None
    return meta


# ---------------------------------------------------------------------------------------------
# tokenizer.json and tokenizer_config.json from the metadata


def _added_tokens(tokens: list[str], types: list[int]) -> list[dict]:
    # llama.cpp matches CONTROL, UNKNOWN and USER_DEFINED tokens whole inside text; the first two are special
    # (skipped by decode(skip_special_tokens=True)), user-defined ones (like `<think>`) are text.
    return [{"id": i, "content": tokens[i], "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": types[i] != USER_DEFINED}
            for i in range(len(tokens)) if types[i] in (CONTROL, UNKNOWN, USER_DEFINED)]


def _post_processor(add_bos: bool, add_eos: bool, bos: str | None, eos: str | None, ids: dict) -> dict | None:
    if not (add_bos or add_eos):
        return None

    def seq(name: str, type_id: int) -> list[dict]:
        out = [{"SpecialToken": {"id": bos, "type_id": type_id}}] if add_bos else []
        out.append({"Sequence": {"id": name, "type_id": type_id}})
        return out + ([{"SpecialToken": {"id": eos, "type_id": type_id}}] if add_eos else [])

    specials = {t: {"id": t, "ids": [ids[t]], "tokens": [t]} for t, on in ((bos, add_bos), (eos, add_eos)) if on}
    return {"type": "TemplateProcessing", "single": seq("A", 0), "pair": seq("A", 0) + seq("B", 1),
            "special_tokens": specials}


def _merges(meta: dict, path: Path) -> list[list[str]]:
    out = []
    for rank, merge in enumerate(meta.get("tokenizer.ggml.merges") or []):
        cut = merge.find(" ", 1)  # as llama.cpp: the first space after the first character
        if cut < 0:
            raise TokenizerError(f"{path}: tokenizer.ggml.merges[{rank}] = {merge!r} is not two tokens "
                                 "separated by a space.")
        out.append([merge[:cut], merge[cut + 1:]])
    return out


def _spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[list[str]]:
    """The merges a SentencePiece vocabulary implies: every split of a normal token into two tokens,
    ranked by the token's score (llama.cpp merges the best-scoring pair first), ties by id."""
    vocab = {t: i for i, t in enumerate(tokens) if types[i] in (NORMAL, UNKNOWN, USER_DEFINED, UNUSED)}
    found = []
    for token, i in vocab.items():
        if types[i] != NORMAL:
            continue
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                found.append((-scores[i], i, vocab[left], vocab[right], left, right))
    found.sort()
    return [[left, right] for *_, left, right in found]


def gguf_tokenizer_json(meta: dict[str, Any], path: str | Path = "<gguf>") -> tuple[dict, dict]:
    """(`tokenizer.json`, `tokenizer_config.json`) as dicts for a GGUF's `tokenizer.*` metadata.

    Raises TokenizerError naming `path` for a file without a tokenizer, a tokenizer model other than
    `gpt2`/`llama`, or a `gpt2` pre-tokenizer acik does not know.
    """
    path = Path(path)
    model = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if model is None or not tokens:
        raise TokenizerError(f"{path}: this GGUF file has no tokenizer (no tokenizer.ggml.model/tokens "
                             "metadata); load a tokenizer from a directory or another GGUF file instead.")
    if model not in ("gpt2", "llama"):
        raise TokenizerError(f"{path}: tokenizer model {model!r} (tokenizer.ggml.model) is not supported; acik "
                             "reads 'gpt2' (byte-level BPE) and 'llama' (SentencePiece-style BPE) tokenizers.")
    tokens = [str(t) for t in tokens]
    n = len(tokens)
    types = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * n)
    if len(types) < n:
        raise TokenizerError(f"{path}: tokenizer.ggml.token_type has {len(types)} entries for {n} tokens.")
    seen: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if t in seen:
            raise TokenizerError(f"{path}: token {t!r} appears twice in the vocabulary (ids {seen[t]} and {i}).")
        seen[t] = i

    # Special tokens: the file's ids, else llama.cpp's SentencePiece defaults; out of range means none.
    ids: dict[str, int | None] = {}
    for name, key in _SPECIAL_KEYS.items():
        tid = meta.get(f"tokenizer.ggml.{key}_token_id")
        if tid is None and model == "llama":
            tid = _SPM_DEFAULT_IDS.get(name)
        ids[name] = int(tid) if tid is not None and 0 <= int(tid) < n else None
    names = {k: (tokens[v] if v is not None else None) for k, v in ids.items()}

    if model == "gpt2":
        pre_name = meta.get("tokenizer.ggml.pre")
        if pre_name is None:
            # llama.cpp falls back to 'default' with a loud warning; the ids it gives are rarely the
            # model's, so acik refuses instead of guessing.
            raise TokenizerError(f"{path}: a gpt2 tokenizer without tokenizer.ggml.pre (the pre-tokenizer "
                                 "name); regenerate the file with a current llama.cpp convert_hf_to_gguf.py.")
        pre = PRE_TOKENIZERS.get(pre_name)
        if pre is None:
            raise TokenizerError(f"{path}: unknown pre-tokenizer {pre_name!r} (tokenizer.ggml.pre); acik knows "
                                 f"{', '.join(sorted(PRE_TOKENIZERS))}.")
        default_bos = pre.add_bos
        splits = [{"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": False}
                  for r in pre.regexes]
        byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
        model_json = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": pre.ignore_merges, "vocab": seen, "merges": _merges(meta, path)}
        normalizer, pre_tokenizer, decoder = None, {"type": "Sequence", "pretokenizers": [*splits, byte_level]}, \
            byte_level
    else:
        default_bos = True
        prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
        # llama.cpp merges by score and ignores any merge list; a file with merges and no scores gets those.
        scores = meta.get("tokenizer.ggml.scores")
        if scores is None and "tokenizer.ggml.merges" in meta:
            merges = _merges(meta, path)
        else:
            merges = _spm_merges(tokens, [float(s) for s in scores or [0.0] * n], types)
        # Unknown characters become <0xXX> byte tokens when the vocabulary has all 256 of them.
        byte_fallback = all(f"<0x{b:02X}>" in seen for b in range(256))
        model_json = {"type": "BPE", "dropout": None, "unk_token": names["unk_token"],
                      "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
                      "byte_fallback": byte_fallback, "ignore_merges": False, "vocab": seen, "merges": merges}
        # A space in front of the text and of every piece after a special token (llama.cpp's
        # is_prev_special rule), even where the piece already starts with one: a normalizer runs on
        # each piece between added tokens, where Metaspace would skip a piece that starts with a space.
        steps = [{"type": "Prepend", "prepend": "\u2581"}] if prefix else []
        normalizer = {"type": "Sequence", "normalizers": [
            *steps, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
        pre_tokenizer = None  # SentencePiece merges run over the whole piece, spaces included
        steps = [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                 {"type": "ByteFallback"}, {"type": "Fuse"}]
        if prefix:
            steps.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
        decoder = {"type": "Sequence", "decoders": steps}

    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", default_bos))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    for flag, name in ((add_bos, "bos_token"), (add_eos, "eos_token")):
        if flag and names[name] is None:
            raise TokenizerError(f"{path}: tokenizer.ggml.add_{name} is true but the file names no "
                                 f"{name} id (tokenizer.ggml.{_SPECIAL_KEYS[name]}_token_id).")
    tok_json = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": _added_tokens(tokens, types),
        "normalizer": normalizer, "pre_tokenizer": pre_tokenizer,
        "post_processor": _post_processor(add_bos, add_eos, names["bos_token"], names["eos_token"], seen),
        "decoder": decoder, "model": model_json,
    }
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", **names,
                              "add_bos_token": add_bos, "add_eos_token": add_eos,
                              "clean_up_tokenization_spaces": False}
    template = meta.get("tokenizer.chat_template")
    if template is not None:
        config["chat_template"] = str(template)
    return tok_json, config


# ---------------------------------------------------------------------------------------------
# Entry points


def _stop_ids(meta: dict, n: int) -> dict:
    # End-of-turn and end-of-message tokens end generation in llama.cpp besides eos.
    extra = [int(meta[k]) for k in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
             if meta.get(k) is not None and 0 <= int(meta[k]) < n]
    return {"eos_token_id": extra} if extra else {}


def gguf_tokenizer_files(path: str | Path, reader: Any = None) -> tuple[dict, dict, dict, str]:
    """What `acik.tokenizer.load_tokenizer` builds a GGUF file's tokenizer from: the `tokenizer.json` and
    `tokenizer_config.json` contents, the generation config (stop tokens) and the identity hash that the
    directory `write_gguf_tokenizer` writes would have. `reader`: an open `gguf.GGUFReader` of the file."""
    from acik.manifest import canonical_json_hash

    path = Path(path)
    meta = read_tokenizer_metadata(path, reader)
    tok_json, config = gguf_tokenizer_json(meta, path)
    identity = canonical_json_hash({"tokenizer": {k: v for k, v in tok_json.items()
                                                  if k not in ("truncation", "padding")},
                                    "special": {k: config[k] for k in
                                                ("bos_token", "eos_token", "pad_token", "unk_token",
                                                 "chat_template") if config.get(k) is not None}})
    return tok_json, config, _stop_ids(meta, len(tok_json["model"]["vocab"])), identity


def write_gguf_tokenizer(path: str | Path, out_dir: str | Path, reader: Any = None) -> Path:
    """Write a GGUF file's tokenizer as `tokenizer.json` + `tokenizer_config.json` in `out_dir`."""
    path, out = Path(path), Path(out_dir)
    tok_json, config = gguf_tokenizer_json(read_tokenizer_metadata(path, reader), path)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(json.dumps(tok_json, ensure_ascii=False), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
    return out
