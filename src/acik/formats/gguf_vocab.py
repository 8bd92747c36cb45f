"""An acik tokenizer -> GGUF `tokenizer.*` metadata, the inverse of `gguf_tokenizer`.

llama.cpp does not run a tokenizer.json: it keeps the vocabulary, token types, merges and special ids, and picks
its pre-tokenizer (the regexes that split text before BPE) by name (`tokenizer.ggml.pre`). The name is derived
here from the source's own pre-tokenizer: its regexes (tokenizers' `Split`, `Digits` and `ByteLevel(use_regex)`
steps written out as the regexes they run) and its `ignore_merges` flag must be exactly those of one of
llama.cpp's names (`gguf_tokenizer.PRE_TOKENIZERS`). Anything else is refused with the reason: a wrong name
makes llama.cpp split text differently from the model's training, silently.

Only byte-level BPE tokenizers (`tokenizer.ggml.model = gpt2`: GPT-2, Llama 3, Qwen, SmolLM, acik's own)
are written; SentencePiece-style vocabularies (`llama`) are refused for now.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from acik.formats import TokenizerError
from acik.formats.gguf_tokenizer import _GPT2, CONTROL, NORMAL, PRE_TOKENIZERS, UNUSED, USER_DEFINED

# The name written for each of llama.cpp's regex groups: the one llama.cpp's converter writes for the best known
# model of the group (several names share one set of regexes in llama.cpp).
_PREFERRED = ("llama-bpe", "smaug-bpe", "smollm", "gpt-2", "qwen2", "gpt-4o", "tekken", "default")


@dataclass
class Vocab:
    """What `tokenizer.*` holds: tokens in id order, their GGUF types, merges, the pre-tokenizer name and the
    special ids (`bos`, `eos`, `unk`, `padding`, `eot`) with the add_bos/add_eos flags."""

    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    special: dict[str, int] = field(default_factory=dict)
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | None = None


def _regexes(pre: dict | None) -> list[str] | None:
    """The regexes a tokenizer.json pre-tokenizer splits with, in order, or None when it does something a regex
    list does not describe (Metaspace, Whitespace, a Split that is not isolating, ...)."""
    if pre is None:
        return []
    kind = pre.get("type")
    if kind == "Sequence":
        out: list[str] = []
        for step in pre.get("pretokenizers", []):
            got = _regexes(step)
            if got is None:
                return None
            out.extend(got)
        return out
    if kind == "ByteLevel":
        return [_GPT2] if pre.get("use_regex", True) else []
    if kind == "Digits":
        return [r"\p{N}"] if pre.get("individual_digits") else [r"\p{N}+"]
    if kind == "Split" and pre.get("behavior") == "Isolated" and not pre.get("invert"):
        pattern = pre.get("pattern", {})
        return [pattern["Regex"]] if "Regex" in pattern else None
    return None


def pre_tokenizer_name(tok_json: dict) -> str:
    """llama.cpp's `tokenizer.ggml.pre` for a tokenizer.json, or TokenizerError saying why there is none."""
    regexes = _regexes(tok_json.get("pre_tokenizer"))
    if regexes is None:
        raise TokenizerError(f"pre-tokenizer {json.dumps(tok_json.get('pre_tokenizer'))[:200]} is not a list of "
                             "regex splits; llama.cpp has no name for it, so it cannot be written to GGUF")
    if not regexes:
        raise TokenizerError("the tokenizer splits text with no regex before BPE (a byte-level tokenizer without "
                             "a pre-tokenizer); no llama.cpp pre-tokenizer does that, so llama.cpp would tokenize "
                             "differently: it cannot be written to GGUF")
    ignore = bool(tok_json.get("model", {}).get("ignore_merges", False))
    matches = [name for name, p in PRE_TOKENIZERS.items() if list(p.regexes) == regexes and p.ignore_merges == ignore]
    if not matches:
        raise TokenizerError(f"the tokenizer's pre-tokenizer regexes {regexes} (ignore_merges={ignore}) are none of "
                             "llama.cpp's pre-tokenizers (acik.formats.gguf_tokenizer.PRE_TOKENIZERS); llama.cpp "
                             "would split text differently, so it cannot be written to GGUF")
    preferred = [n for n in _PREFERRED if n in matches]
    return preferred[0] if preferred else matches[0]


def vocab_from_tokenizer(tok: Any, n_vocab: int) -> Vocab:
    """An `acik.tokenizer.Tokenizer` -> `Vocab` with `n_vocab` entries (the model's embedding rows; ids the
    tokenizer lacks become unused `[PADn]` tokens, as llama.cpp's converter writes them)."""
    tok_json = json.loads(tok.backend.to_str())
    model = tok_json.get("model", {})
    if model.get("type") != "BPE":
        raise TokenizerError(f"a {model.get('type')} tokenizer cannot be written to GGUF; acik writes byte-level "
                             "BPE tokenizers")
    if not tok._byte_level:
        raise TokenizerError("a SentencePiece-style BPE tokenizer (no byte-level decoder) cannot be written to GGUF "
                             "by acik yet; only byte-level BPE tokenizers (GPT-2, Llama 3, Qwen, SmolLM) are")
    pre = pre_tokenizer_name(tok_json)
    size = tok.vocab_size
    if size > n_vocab:
        raise TokenizerError(f"the tokenizer has {size} tokens but the model's embedding only {n_vocab} rows")
    tokens: list[str | None] = [None] * n_vocab
    types = [NORMAL] * n_vocab
    for text, i in model["vocab"].items():
        tokens[i] = text
    for i, added in tok.backend.get_added_tokens_decoder().items():
        tokens[i] = added.content
        types[i] = CONTROL if added.special else USER_DEFINED
    for i, text in enumerate(tokens):
        if text is None:
            tokens[i], types[i] = f"[PAD{i}]", UNUSED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    special = {}
    for key, ours in (("bos", tok.bos_token_id), ("eos", tok.eos_token_id), ("padding", tok.pad_token_id),
                      ("unk", tok._special_id("unk_token"))):
        if ours is not None:
            special[key] = int(ours)
    # The turn's end where it differs from eos (llama.cpp stops on eot as on eos).
    for stop in tok.stop_token_ids:
        if 0 <= stop < n_vocab and stop != special.get("eos") and types[stop] == CONTROL:
            special["eot"] = int(stop)
            break
    # add_bos/add_eos as the tokenizer actually does it (its post-processor), not as a config claims.
    ids = tok.backend.encode("a", add_special_tokens=True).ids
    add_bos = "bos" in special and len(ids) > 1 and ids[0] == special["bos"]
    add_eos = "eos" in special and len(ids) > 1 and ids[-1] == special["eos"]
    template = tok.chat_template
    return Vocab([str(t) for t in tokens], types, merges, pre, special, add_bos, add_eos,
                 template if isinstance(template, str) else None)


def write_vocab(writer: Any, vocab: Vocab) -> None:
    """Add `vocab` as `tokenizer.*` keys to a `gguf.GGUFWriter`."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "unk": writer.add_unk_token_id,
              "padding": writer.add_pad_token_id, "eot": writer.add_eot_token_id}
    for key, tid in vocab.special.items():
        adders[key](tid)
    # Always written: llama.cpp's default for a missing flag depends on the pre-tokenizer name.
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template is not None:
        writer.add_chat_template(vocab.chat_template)
