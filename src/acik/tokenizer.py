"""Tokenizers: acik's byte-level tokenizer, BPE training, loading real models' tokenizers.

Every tokenizer is a Hugging Face `tokenizer.json` (+ `tokenizer_config.json`), so `transformers`
loads what acik writes and acik loads what others publish. The Rust `tokenizers` library does the
splitting and merging; this module adds what sits around it: training inputs, special tokens and
bos/eos rules from `tokenizer_config.json`, chat templates, stop tokens and streaming decoding.
"""

from __future__ import annotations

import codecs
import dataclasses
import gzip
import io
import json
import shutil
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from acik import fmt
from acik.formats import TokenizerError

# acik's special tokens, in id order after the byte (or merged) vocabulary.
ENDOFTEXT = "<|endoftext|>"
PAD = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, PAD, IM_START, IM_END]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# GPT-4's pre-tokenisation (cl100k): contractions, words with one leading non-letter, digits in
# groups of at most three, punctuation runs, and newlines kept apart from other whitespace.
GPT4_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Tokens that end an assistant turn in the chat formats we know (ChatML, Llama 3, harmony, Gemma).
# `<|end|>` is deliberately absent: in harmony it ends a message but the turn goes on.
TURN_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|return|>", "<|call|>", "<end_of_turn>")

# The special-token names transformers recognises in tokenizer_config.json.
NAMED_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                        "mask_token")

TEXT_SUFFIXES = {".txt", ".text", ".md", ".rst"}
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")


def _check_text(text: object) -> None:
    """Turn the backend's opaque TypeError into a message that names the problem."""
    if not isinstance(text, str):
        raise TypeError(f"encode expects a str, got {type(text).__name__}")
    for i, ch in enumerate(text):
        if 0xD800 <= ord(ch) <= 0xDFFF:
            raise ValueError(f"text has a lone surrogate U+{ord(ch):04X} at index {i}, which is not valid "
                             "Unicode; decode the source bytes with errors='replace' first")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (the byte-level BPE alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + n)
            n += 1
    return mapping


def tokenizer_config(model_max_length: int = 1 << 20) -> dict:
    """The `tokenizer_config.json` acik writes for its own tokenizers (ChatML chat template)."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": ENDOFTEXT,
        "pad_token": PAD,
        "unk_token": None,
        "additional_special_tokens": [IM_START, IM_END],
        "chat_template": CHATML_TEMPLATE,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
    }


def _tokenizer_json(vocab: dict[str, int], merges: list[list[str]], pre_tokenizer: dict) -> dict:
    """A byte-level BPE `tokenizer.json` with acik's special tokens right after `vocab`."""
    added = [
        {"id": len(vocab) + i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, tok in enumerate(SPECIAL_TOKENS)
    ]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": None,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": merges},
    }


def byte_tokenizer_json() -> dict:
    """A `tokenizer.json` with one token per byte (id == byte value) and acik's special tokens."""
    alphabet = bytes_to_unicode()
    vocab = {alphabet[b]: b for b in range(256)}
    pre = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return _tokenizer_json(vocab, [], pre)


def _write_tokenizer_dir(out: Path, tok_json: dict, model_max_length: int = 1 << 20) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(json.dumps(tok_json, ensure_ascii=False, indent=1), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(model_max_length), indent=2),
                                               encoding="utf-8")


def save_byte_tokenizer(out_dir: str | Path) -> Path:
    """Write acik's byte-level tokenizer (260 tokens) to `out_dir`; returns the directory."""
    out = Path(out_dir)
    _write_tokenizer_dir(out, byte_tokenizer_json())
    return out


# ---------------------------------------------------------------------------------------------
# Training inputs


def _open_text(path: Path) -> io.TextIOBase:
    name = path.name
    if name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    if name.endswith(".zst"):
        import zstandard

        return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True),
                                encoding="utf-8")
    return open(path, encoding="utf-8")


def _jsonl_texts(path: Path) -> Iterator[str]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise TokenizerError(f"{path}:{lineno}: not valid JSON ({e.msg}).") from None
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise TokenizerError(f"{path}:{lineno}: a JSONL training record needs a string 'text' field.")
            yield text


def _plain_texts(path: Path, chunk_chars: int = 1 << 20) -> Iterator[str]:
    # Long files go to the trainer in ~1 MB pieces cut after a newline, so memory stays flat.
    buf: list[str] = []
    size = 0
    try:
        with _open_text(path) as f:
            for line in f:
                buf.append(line)
                size += len(line)
                if size >= chunk_chars and line.strip():
                    yield "".join(buf)
                    buf, size = [], 0
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); training reads "
                             "UTF-8 text files, JSONL with a 'text' field, or a data directory.") from None
    if buf:
        yield "".join(buf)


def _is_jsonl(path: Path) -> bool:
    return path.name.endswith(JSONL_SUFFIXES)


def _is_text(path: Path) -> bool:
    name = path.name.lower().removesuffix(".gz").removesuffix(".zst")
    return Path(name).suffix in TEXT_SUFFIXES


def training_files(inputs: Iterable[str | Path]) -> list[Path]:
    """The files that `train_bpe` reads for `inputs`, in order.

    A file is read as it is. A data directory (it has `data_card.json`) contributes the kept documents
    under `documents/`; any other folder contributes its text and JSONL files, recursively, sorted.
    """
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            if (path / "data_card.json").exists():
                docs = path / "documents"
                found = sorted(p for p in docs.rglob("*") if p.is_file() and _is_jsonl(p)) if docs.is_dir() \
                    else []
                if not found:
                    raise TokenizerError(f"{path}: a data directory without kept documents "
                                         f"({docs}/*.jsonl.zst); run the data stage first.")
                files.extend(found)
            else:
                found = sorted(
                    p for p in path.rglob("*")
                    if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
                    and (_is_jsonl(p) or _is_text(p))
                )
                if not found:
                    raise TokenizerError(f"{path}: no .txt/.md/.jsonl files in this folder.")
                files.extend(found)
        else:
            raise TokenizerError(f"{path}: no such file or folder.")
    return files


def iter_training_texts(inputs: Iterable[str | Path]) -> Iterator[str]:
    """Every training text of `inputs` (see `training_files`)."""
    for path in training_files(inputs):
        yield from (_jsonl_texts(path) if _is_jsonl(path) else _plain_texts(path))


# ---------------------------------------------------------------------------------------------
# Training


@dataclasses.dataclass
class TokenizerRecipe:
    """Settings of `acik tokenizer train`."""

    input: list[str] = dataclasses.field(default_factory=list)
    vocab_size: int = 32768
    out: str | None = None
    min_frequency: int = 2
    model_max_length: int = 1 << 20


class _Counter:
    def __init__(self, texts: Iterable[str]):
        self.texts, self.chars, self.bytes, self.docs = texts, 0, 0, 0

    def __iter__(self) -> Iterator[str]:
        for text in self.texts:
            self.docs += 1
            self.chars += len(text)
            self.bytes += len(text.encode("utf-8", "surrogatepass"))
            yield text


def train_bpe(
    inputs: list[str | Path],
    vocab_size: int,
    out_dir: str | Path,
    *,
    min_frequency: int = 2,
    show_progress: bool | None = None,
    model_max_length: int = 1 << 20,
    manifest: bool = True,
    command: str | list[str] | None = None,
    recipe: dict | None = None,
) -> Path:
    """Train a byte-level BPE tokenizer on `inputs` and write it to `out_dir`; returns the directory.

    Ids 0-255 are the 256 bytes (in byte order), then the merges in the order they were learnt, then
    `<|endoftext|>`, `<|pad|>`, `<|im_start|>`, `<|im_end|>`. So `vocab_size` counts everything and
    must be at least 260; with too little text the vocabulary ends up smaller (said in the manifest).
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    n_special = len(SPECIAL_TOKENS)
    if vocab_size < 256 + n_special:
        raise TokenizerError(f"vocab_size {vocab_size} is too small: a byte-level BPE needs the 256 byte "
                             f"tokens plus {n_special} special tokens, so at least {256 + n_special}.")
    files = training_files(inputs)
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    tok = Tokenizer(models.BPE())
    # Split with GPT-4's regex, then map bytes to the printable alphabet (the regex already split words).
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT4_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    pre = json.loads(tok.pre_tokenizer.__getstate__())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - n_special, min_frequency=min_frequency, show_progress=show_progress,
        special_tokens=[], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    texts = _Counter(iter_training_texts(files))
    total = sum(p.stat().st_size for p in files)
    start = time.perf_counter()
    tok.train_from_iterator(texts, trainer=trainer, length=None)
    seconds = time.perf_counter() - start
    if texts.chars == 0:
        raise TokenizerError(f"the training corpus is empty: {len(files)} file(s) gave no text "
                             f"({', '.join(str(p) for p in files[:3])}).")

    # Renumber: bytes first in byte order (id == byte, as in acik's byte tokenizer and tiktoken), then
    # each merge's result at 256 + its rank. The merges alone define the BPE; ids are just labels.
    trained = json.loads(tok.to_str())["model"]
    merges = [m.split(" ") if isinstance(m, str) else list(m) for m in trained["merges"]]
    alphabet = bytes_to_unicode()
    vocab = {alphabet[b]: b for b in range(256)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    if set(vocab) != set(trained["vocab"]):
        raise RuntimeError("BPE training produced a vocabulary that its merges do not explain; "
                           "this is a bug in acik's renumbering.")
    out = Path(out_dir)
    _write_tokenizer_dir(out, _tokenizer_json(vocab, merges, pre), model_max_length)
    load_tokenizer(out)  # fail here, not later, if what we wrote does not load

    if manifest:
        from acik.manifest import read_manifest, tokenizer_identity, write_manifest

        parents = []
        for item in inputs:
            p = Path(item)
            if p.is_dir() and (p / "acik.json").exists():
                parents.append({"role": "data", "path": str(p),
                                "directory_hash": read_manifest(p)["directory_hash"]})
        write_manifest(out, kind="tokenizer", command=command, recipe=recipe, parents=parents, extra={
            "tokenizer_identity": tokenizer_identity(out),
            "training": {
                "inputs": [str(p) for p in files], "documents": texts.docs, "characters": texts.chars,
                "bytes": texts.bytes, "input_file_bytes": total, "seconds": round(seconds, 3),
                "vocab_size_requested": vocab_size, "vocab_size": len(vocab) + n_special,
                "merges": len(merges), "min_frequency": min_frequency,
                "pre_tokenizer": "gpt4-regex + byte-level",
            },
        })
    return out


# ---------------------------------------------------------------------------------------------
# Loading


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path}: malformed {what}: not valid JSON ({e.msg} at line {e.lineno}, "
                             f"column {e.colno}).") from None
    except UnicodeDecodeError:
        raise TokenizerError(f"{path}: malformed {what}: not UTF-8 text.") from None


class Tokenizer:
    """A loaded tokenizer: ids, text, chat templates and stop tokens, as `transformers` would give them.

    Build one with `acik.load_tokenizer(dir)`; `backend` is the `tokenizers.Tokenizer` underneath.
    """

    def __init__(self, backend: Any, config: dict | None = None, *, chat_template: str | dict | None = None,
                 generation_config: dict | None = None, path: str | Path | None = None):
        from tokenizers import AddedToken

        self.backend = backend
        self.config = dict(config or {})
        self.path = Path(path) if path is not None else None
        self._identity: str | None = None
        self.special_tokens_map: dict[str, str] = {}
        for key in NAMED_SPECIAL_TOKENS:
            content = _token_content(self.config.get(key))
            if content is not None:
                self.special_tokens_map[key] = content
        extra = self.config.get("additional_special_tokens") or self.config.get("extra_special_tokens") or []
        if isinstance(extra, dict):
            extra = list(extra.values())
        self.extra_special_tokens = [c for c in map(_token_content, extra) if c is not None]

        # Like transformers: special tokens the config names but tokenizer.json lacks become added tokens.
        present = {t.content for t in backend.get_added_tokens_decoder().values()}
        decl = self.config.get("added_tokens_decoder") or {}
        for _, spec in sorted(decl.items(), key=lambda kv: int(kv[0])):
            if spec.get("content") not in present:
                backend.add_tokens([AddedToken(
                    spec["content"], single_word=spec.get("single_word", False),
                    lstrip=spec.get("lstrip", False), rstrip=spec.get("rstrip", False),
                    normalized=spec.get("normalized", True), special=spec.get("special", False))])
                present.add(spec["content"])
        named = [*self.special_tokens_map.values(), *self.extra_special_tokens]
        missing = list(dict.fromkeys(t for t in named if t not in present))
        if missing:
            backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])

        # bos/eos come from tokenizer.json's post-processor alone: transformers (>= 5) drops the config's
        # add_bos_token/add_eos_token whenever tokenizer.json exists, and ids must match what it gives.
        # A config that disagrees is a trap for whoever reads it, so say so.
        for flag, key, where in (("add_bos_token", "bos_token", 0), ("add_eos_token", "eos_token", -1)):
            if flag in self.config and self.special_tokens_map.get(key) is not None:
                tid = backend.token_to_id(self.special_tokens_map[key])
                ids = backend.encode("", add_special_tokens=True).ids
                adds = bool(ids) and ids[where] == tid
                if bool(self.config[flag]) != adds:
                    warnings.warn(f"{path or 'tokenizer'}: tokenizer_config.json says "
                                  f"{flag}={self.config[flag]} but "
                                  f"tokenizer.json's post-processor {'adds' if adds else 'does not add'} "
                                  f"{self.special_tokens_map[key]}; acik follows tokenizer.json, as "
                                  "transformers does.", stacklevel=3)

        self._chat_template = chat_template if chat_template is not None else self.config.get("chat_template")
        self.generation_config = dict(generation_config or {})
        self._model_type = type(backend.model).__name__
        self._byte_level = _is_byte_level(backend)
        self._token_bytes: list[bytes | None] | None = None

    # -- vocabulary ------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Every id the tokenizer can produce, added tokens included (transformers' `len(tokenizer)`)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def _special_id(self, key: str) -> int | None:
        token = self.special_tokens_map.get(key)
        return None if token is None else self.backend.token_to_id(token)

    @property
    def bos_token(self) -> str | None:
        return self.special_tokens_map.get("bos_token")

    @property
    def eos_token(self) -> str | None:
        return self.special_tokens_map.get("eos_token")

    @property
    def pad_token(self) -> str | None:
        return self.special_tokens_map.get("pad_token")

    @property
    def bos_token_id(self) -> int | None:
        return self._special_id("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._special_id("eos_token")

    @property
    def pad_token_id(self) -> int | None:
        return self._special_id("pad_token")

    @property
    def all_special_ids(self) -> list[int]:
        return sorted(i for i, t in self.backend.get_added_tokens_decoder().items() if t.special)

    @property
    def stop_token_ids(self) -> list[int]:
        """Ids that end an assistant turn: eos, generation_config's eos ids, and known turn-end tokens."""
        ids: list[int] = []
        if self.eos_token_id is not None:
            ids.append(self.eos_token_id)
        gen = self.generation_config.get("eos_token_id")
        ids.extend(gen if isinstance(gen, list) else [gen] if isinstance(gen, int) else [])
        added = {t.content: i for i, t in self.backend.get_added_tokens_decoder().items()}
        ids.extend(added[token] for token in TURN_END_TOKENS if token in added)
        return list(dict.fromkeys(ids))

    @property
    def identity(self) -> str:
        """The identity hash of `acik.manifest.tokenizer_identity` (needs the tokenizer's directory)."""
        if self._identity is None:
            if self.path is None:
                raise TokenizerError("not loaded from a directory, so there is no identity hash.")
            from acik.manifest import tokenizer_identity

            self._identity = tokenizer_identity(self.path)
        return self._identity

    # -- text <-> ids ----------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        try:
            return self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        except TypeError:
            _check_text(text)
            raise

    def encode_batch(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch_fast(texts, add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        text = self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        # transformers only applies this WordPiece-era cleanup to non-BPE models (it corrupts BPE output).
        if self.config.get("clean_up_tokenization_spaces") and self._model_type != "BPE":
            text = _clean_up_tokenization(text)
        return text

    def decode_batch(self, batch: list[list[int]], skip_special_tokens: bool = False) -> list[str]:
        if self.config.get("clean_up_tokenization_spaces") and self._model_type != "BPE":
            return [self.decode(ids, skip_special_tokens) for ids in batch]
        return self.backend.decode_batch([list(ids) for ids in batch],
                                         skip_special_tokens=skip_special_tokens)

    def stream_decoder(self, skip_special_tokens: bool = False) -> StreamDecoder:
        """An incremental decoder: feed ids one at a time, get text that never splits a character."""
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)

    # -- chat --------------------------------------------------------------------------------
    @property
    def chat_template(self) -> str | None:
        """The default chat template (a named set's "default"), or None."""
        tpl = self._chat_template
        if isinstance(tpl, dict):
            return tpl.get("default")
        return tpl

    @property
    def chat_templates(self) -> dict[str, str]:
        tpl = self._chat_template
        if isinstance(tpl, dict):
            return dict(tpl)
        return {} if tpl is None else {"default": tpl}

    @property
    def is_harmony(self) -> bool:
        """True for gpt-oss's harmony format (channels, `<|start|>`/`<|message|>`)."""
        tpl = self.chat_template or ""
        return "<|channel|>" in tpl and "<|message|>" in tpl

    def get_chat_template(self, chat_template: str | None = None, tools: list | None = None) -> str:
        templates = self.chat_templates
        if chat_template is not None:
            return templates.get(chat_template, chat_template)
        if tools is not None and "tool_use" in templates:
            return templates["tool_use"]
        if "default" in templates:
            return templates["default"]
        if templates:
            raise TokenizerError(f"this tokenizer has several chat templates and no default; pass "
                                 f"chat_template= one of {sorted(templates)}.")
        raise TokenizerError("this tokenizer has no chat template (no 'chat_template' in "
                             "tokenizer_config.json and no chat_template.jinja); pass chat_template=.")

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            tools: list[dict] | None = None, tokenize: bool = False, *,
                            documents: list[dict] | None = None, chat_template: str | None = None,
                            continue_final_message: bool = False, **kwargs: Any) -> str | list[int]:
        """Render `messages` with the chat template exactly as `transformers.apply_chat_template` does.

        Extra keyword arguments reach the template (e.g. `reasoning_effort`, `enable_thinking`,
        `date_string`). With `tokenize=True` the ids come without an extra bos (the template writes it).
        """
        from acik.chat_template import render_chat_template

        template = self.get_chat_template(chat_template, tools)
        text = render_chat_template(template, messages, tools=tools, documents=documents,
                                    add_generation_prompt=add_generation_prompt,
                                    continue_final_message=continue_final_message,
                                    **{**self.special_tokens_map, **kwargs})
        return self.encode(text, add_special_tokens=False) if tokenize else text

    # -- saving ------------------------------------------------------------------------------
    def save(self, out_dir: str | Path) -> Path:
        """Copy the tokenizer's files into `out_dir` (a model directory), byte for byte."""
        if self.path is None:
            raise TokenizerError("this tokenizer was not loaded from a directory; nothing to copy.")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name in TOKENIZER_FILES:
            if (self.path / name).exists() and (self.path / name).resolve() != (out / name).resolve():
                shutil.copyfile(self.path / name, out / name)
        return out

    def __repr__(self) -> str:
        where = f" from {self.path}" if self.path else ""
        return f"<acik Tokenizer {self._model_type} vocab={self.vocab_size}{where}>"


TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
)


def _is_byte_level(backend: Any) -> bool:
    decoder = json.loads(backend.decoder.__getstate__()) if backend.decoder is not None else None
    return bool(decoder) and decoder.get("type") == "ByteLevel"


def _clean_up_tokenization(text: str) -> str:
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                 (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load the tokenizer of a model or tokenizer directory (`tokenizer.json` + `tokenizer_config.json`)
    or of a `.gguf` file (its `tokenizer.*` metadata; see `acik.formats.gguf_tokenizer`)."""
    from tokenizers import Tokenizer as Backend

    root = Path(path)
    if root.suffix.lower() == ".gguf" and not root.is_dir():
        from acik.formats.gguf_tokenizer import gguf_tokenizer_files

        tok_json, config, generation, identity = gguf_tokenizer_files(root)
        try:
            backend = Backend.from_str(json.dumps(tok_json))
        except Exception as e:  # the Rust error type is not importable; its message says what is wrong
            raise TokenizerError(f"{root}: the tokenizer metadata does not make a valid tokenizer: {e}") from None
        tok = Tokenizer(backend, config, generation_config=generation)
        tok._identity = identity  # the identity of the directory write_gguf_tokenizer() writes
        return tok
    if not root.is_dir():
        raise TokenizerError(f"{root}: no such directory.")
    tok_path = root / "tokenizer.json"
    if not tok_path.exists():
        hint = ""
        if (root / "tokenizer.model").exists():
            hint = (" It has only a SentencePiece tokenizer.model; convert it once with transformers "
                    "(AutoTokenizer.from_pretrained(dir).save_pretrained(dir)).")
        raise TokenizerError(f"{tok_path}: missing; acik loads tokenizers from tokenizer.json.{hint}")
    tok_json = _read_json(tok_path, "tokenizer.json")
    if not isinstance(tok_json, dict) or not isinstance(tok_json.get("model"), dict):
        raise TokenizerError(f"{tok_path}: malformed tokenizer.json: it has no 'model' section.")
    try:
        backend = Backend.from_str(json.dumps(tok_json))
    except Exception as e:  # the Rust error type is not importable; its message says what is wrong
        raise TokenizerError(f"{tok_path}: malformed tokenizer.json: {e}") from None
    cfg_path = root / "tokenizer_config.json"
    config = _read_json(cfg_path, "tokenizer_config.json") if cfg_path.exists() else {}
    # Older exports keep special tokens in special_tokens_map.json; the config wins where both say.
    stm = root / "special_tokens_map.json"
    if stm.exists():
        for key, value in _read_json(stm, "special_tokens_map.json").items():
            config.setdefault(key, value)
    template: str | dict | None = None
    jinja = root / "chat_template.jinja"
    if jinja.exists():
        template = jinja.read_text(encoding="utf-8")
    elif (root / "chat_template.json").exists():
        template = _read_json(root / "chat_template.json", "chat_template.json").get("chat_template")
    elif isinstance(config.get("chat_template"), list):  # [{"name":..., "template":...}, ...]
        template = {t["name"]: t["template"] for t in config["chat_template"]}
    gen_path = root / "generation_config.json"
    generation = _read_json(gen_path, "generation_config.json") if gen_path.exists() else {}
    return Tokenizer(backend, config, chat_template=template, generation_config=generation, path=root)


# ---------------------------------------------------------------------------------------------
# Streaming detokenisation


class StreamDecoder:
    """Turn ids into text one id at a time, never emitting half a character.

    The concatenation of everything `add` and `flush` return equals `tokenizer.decode(all_ids)`.
    Byte-level tokenizers (GPT-2 alphabet) map each id to its bytes and run an incremental UTF-8
    decoder, which is exact and O(1) per token. Other tokenizers (SentencePiece-style, WordPiece)
    decode a short window of recent ids and emit what it adds, holding back text that ends in a
    replacement character until the next id completes it. Where decode cleans up spaces before
    punctuation (WordPiece with `clean_up_tokenization_spaces`), a later id can change the last few
    characters, so those decode everything each time and hold back the last few characters.
    """

    CLEANUP_HOLDBACK = 5  # longer than any clean-up pattern (" n't")

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.emitted: list[str] = []
        self._skip = set(tokenizer.all_special_ids) if skip_special_tokens else set()
        if tokenizer._byte_level:
            if tokenizer._token_bytes is None:
                tokenizer._token_bytes = _token_bytes_table(tokenizer)
            self._table = tokenizer._token_bytes
            self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        else:
            self._table = None
            self._prefix = 0  # start of the window that gives context to the next id
            self._read = 0  # ids before this are already emitted
            self._cleanup = bool(tokenizer.config.get("clean_up_tokenization_spaces")) and \
                tokenizer._model_type != "BPE"
            self._done = 0  # characters emitted so far

    def add(self, token_id: int) -> str:
        """Feed one id; returns the text it completes (often "", never a broken character)."""
        self.ids.append(token_id)
        if self._table is not None:
            if token_id in self._skip:
                return ""
            piece = self._table[token_id] if 0 <= token_id < len(self._table) else None
            if piece is None:
                raise TokenizerError(f"token id {token_id} is not in the vocabulary.")
            out = self._utf8.decode(piece)
        elif self._cleanup:
            full = self.tokenizer.decode(self.ids, self.skip_special_tokens)
            stable = full[:max(0, len(full) - self.CLEANUP_HOLDBACK)]
            if len(stable) <= self._done or stable.endswith("\ufffd"):
                return ""
            out = stable[self._done:]
        else:
            dec = self.tokenizer.decode
            before = dec(self.ids[self._prefix:self._read], self.skip_special_tokens)
            after = dec(self.ids[self._prefix:], self.skip_special_tokens)
            if len(after) <= len(before) or after.endswith("\ufffd"):
                return ""
            out = after[len(before):]
            self._prefix, self._read = self._read, len(self.ids)
        if out:
            self.emitted.append(out)
            if self._table is None:
                self._done += len(out)
        return out

    def flush(self) -> str:
        """The text still held back (an incomplete character decodes to U+FFFD, as `decode` does)."""
        if self._table is not None:
            out = self._utf8.decode(b"", final=True)
        else:
            full = self.tokenizer.decode(self.ids, self.skip_special_tokens)
            done = "".join(self.emitted)
            out = full[len(done):] if full.startswith(done) else ""
            self._prefix = self._read = len(self.ids)
            self._done += len(out)
        if out:
            self.emitted.append(out)
        return out

    @property
    def text(self) -> str:
        """Everything emitted so far."""
        return "".join(self.emitted)


def _token_bytes_table(tokenizer: Tokenizer) -> list[bytes | None]:
    """Each id's bytes for a byte-level tokenizer, as its ByteLevel decoder sees them."""
    inverse = {c: b for b, c in bytes_to_unicode().items()}
    backend = tokenizer.backend
    vocab = backend.get_vocab(with_added_tokens=True)
    added = {i: t.content for i, t in backend.get_added_tokens_decoder().items()}
    table: list[bytes | None] = [None] * (max(vocab.values()) + 1 if vocab else 0)
    for token, i in vocab.items():
        token = added.get(i, token)
        # The ByteLevel decoder maps a token through the byte alphabet only if every character is in it.
        if all(c in inverse for c in token):
            table[i] = bytes(inverse[c] for c in token)
        else:
            table[i] = token.encode("utf-8")
    return table


# ---------------------------------------------------------------------------------------------
# CLI


def _train_command(recipe: TokenizerRecipe) -> list[str]:
    """The command line that repeats this training, with every setting spelled out."""
    return ["acik", "tokenizer", "train", "--input", *recipe.input, "--vocab-size", str(recipe.vocab_size),
            "--out", str(recipe.out), "--min-frequency", str(recipe.min_frequency)]


def _cmd_train(args: Any) -> int:
    from acik.recipe import load_recipe, to_dict

    recipe = load_recipe(TokenizerRecipe, args.recipe, args.set, input=args.input or None,
                         vocab_size=args.vocab_size, out=args.out, min_frequency=args.min_frequency)
    if not recipe.input:
        raise TokenizerError("no training input: pass --input FILE_OR_DIR (or 'input:' in the recipe).")
    if not recipe.out:
        raise TokenizerError("no output directory: pass --out DIR (or 'out:' in the recipe).")
    start = time.perf_counter()
    out = train_bpe(recipe.input, recipe.vocab_size, recipe.out, min_frequency=recipe.min_frequency,
                    show_progress=not args.quiet and sys.stderr.isatty(),
                    model_max_length=recipe.model_max_length, command=_train_command(recipe),
                    recipe=to_dict(recipe))
    from acik.manifest import read_manifest

    m = read_manifest(out)
    t = m["training"]
    print(f"trained {fmt.count(t['vocab_size'], 'token')} ({fmt.count(t['merges'], 'merge')}) on "
          f"{fmt.size(t['bytes'])} "
          f"in {time.perf_counter() - start:.1f} s -> {out}")
    print(f"tokenizer identity {m['tokenizer_identity'][:16]}")
    return 0


def _cmd_encode(args: Any) -> int:
    tok = load_tokenizer(args.dir)
    text = args.text if args.text is not None else sys.stdin.read()
    print(json.dumps(tok.encode(text, add_special_tokens=not args.no_special)))
    return 0


def _cmd_decode(args: Any) -> int:
    tok = load_tokenizer(args.dir)
    print(tok.decode([int(x) for x in args.ids.replace(",", " ").split()]))
    return 0


def _cmd_render(args: Any) -> int:
    from acik.recipe import parse_override

    tok = load_tokenizer(args.dir)
    messages = _read_json(Path(args.messages), "messages file")
    tools = _read_json(Path(args.tools), "tools file") if args.tools else None
    kwargs = {".".join(path): value for path, value in map(parse_override, args.set or [])}
    out = tok.apply_chat_template(messages, add_generation_prompt=not args.no_generation_prompt, tools=tools,
                                  tokenize=args.ids, **kwargs)
    print(json.dumps(out) if args.ids else out)
    return 0


def add_cli(subparsers: Any) -> None:
    p = subparsers.add_parser("tokenizer", help="train and use tokenizers")
    sub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train a byte-level BPE tokenizer")
    t.add_argument("--recipe", help="YAML recipe (keys: input, vocab_size, out, min_frequency)")
    t.add_argument("--set", action="append", help="override a recipe key: key=value")
    t.add_argument("--input", nargs="+", help="text files, folders, JSONL with 'text', or data directories")
    t.add_argument("--vocab-size", type=int, help="total vocabulary size incl. 4 special tokens (>= 260)")
    t.add_argument("--out", help="output directory")
    t.add_argument("--min-frequency", type=int, help="merge only pairs seen at least this often (default 2)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train)
    e = sub.add_parser("encode", help="print the ids of TEXT (or stdin)")
    e.add_argument("dir", help="tokenizer directory (a model directory holds one)")
    e.add_argument("text", nargs="?", help="the text to encode (default: read stdin)")
    e.add_argument("--no-special", action="store_true", help="do not add bos/eos")
    e.set_defaults(func=_cmd_encode)
    d = sub.add_parser("decode", help="print the text of IDS")
    d.add_argument("dir", help="tokenizer directory (a model directory holds one)")
    d.add_argument("ids", help="ids separated by spaces or commas")
    d.set_defaults(func=_cmd_decode)
    r = sub.add_parser("render", help="render a conversation with the directory's chat template")
    r.add_argument("dir", help="tokenizer directory (a model directory holds one)")
    r.add_argument("messages", help="JSON file: a list of {role, content, ...} messages")
    r.add_argument("--tools", help="JSON file: a list of function tools (JSON schema)")
    r.add_argument("--set", action="append", help="template variable: key=value (e.g. reasoning_effort=high)")
    r.add_argument("--no-generation-prompt", action="store_true", help="do not open an assistant turn")
    r.add_argument("--ids", action="store_true", help="print token ids instead of text")
    r.set_defaults(func=_cmd_render)
