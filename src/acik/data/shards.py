"""Token shards: what pretraining reads.

`tokens/{split}-{NNNNN}.bin` holds raw little-endian token ids (uint16 when the vocabulary fits,
else uint32), `.idx` the uint64 start offset of each document in that shard, and `.json` the
shard's sidecar. `tokens/tokens.json` sums them up with the tokenizer's identity hash. Every
document ends with the tokenizer's `<|endoftext|>` id. Documents go to `train` or `val` by a hash
of their text, so the split does not depend on order, workers or reruns.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import xxhash

from acik.manifest import tokenizer_identity
from acik.tokenizer import ENDOFTEXT, save_byte_tokenizer

SPLITS = ("train", "val")
SIDECAR = "tokens.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def split_of(text: str, val_fraction: float, seed: int = 0) -> str:
    return "val" if xxhash.xxh3_64_intdigest(text.encode("utf-8"), seed) < val_fraction * 2.0**64 else "train"


def install_tokenizer(data_dir: Path, tokenizer_dir: str | Path | None) -> Path:
    """Copy the tokenizer into DATA_DIR/tokenizer (acik's byte-level one when none is given)."""
    dest = data_dir / "tokenizer"
    if tokenizer_dir is not None and Path(tokenizer_dir).resolve() == dest.resolve():
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    if tokenizer_dir is None:
        return save_byte_tokenizer(dest)
    src = Path(tokenizer_dir)
    if not (src / "tokenizer.json").exists():
        raise FileNotFoundError(
            f"tokenizer {src}: no tokenizer.json there; pass a tokenizer directory "
            f"(e.g. one written by `acik tokenizer train`) or leave --tokenizer out"
        )
    dest.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copyfile(src / name, dest / name)
    return dest


def _eos_id(tok, tok_dir: Path) -> int:
    eos = tok.token_to_id(ENDOFTEXT)
    if eos is None:
        cfg_path = tok_dir / "tokenizer_config.json"
        name = json.loads(cfg_path.read_text()).get("eos_token") if cfg_path.exists() else None
        if isinstance(name, dict):
            name = name.get("content")
        eos = tok.token_to_id(name) if name else None
    if eos is None:
        raise ValueError(
            f"tokenizer {tok_dir}: has neither {ENDOFTEXT} nor an eos_token; documents need an end-of-text id"
        )
    return int(eos)


class _ShardWriter:
    def __init__(self, out: Path, split: str, dtype: np.dtype, shard_tokens: int, common: dict):
        self.out, self.split, self.dtype, self.shard_tokens, self.common = (
            out,
            split,
            dtype,
            shard_tokens,
            common,
        )
        self.index = 0
        self.shards: list[dict] = []
        self.tokens = self.documents = 0
        self._f = None

    def _open(self) -> None:
        self.name = f"{self.split}-{self.index:05d}"
        self._f = open(self.out / f"{self.name}.bin", "wb")
        self._offsets: list[int] = []
        self._pos = 0

    def add(self, ids: np.ndarray) -> None:
        if self._f is None:
            self._open()
        self._offsets.append(self._pos)
        self._f.write(ids.astype(self.dtype.newbyteorder("<"), copy=False).tobytes())
        self._pos += len(ids)
        if self._pos >= self.shard_tokens:
            self._close()

    def _close(self) -> None:
        if self._f is None:
            return
        self._f.close()
        np.asarray(self._offsets, dtype="<u8").tofile(self.out / f"{self.name}.idx")
        info = {
            **self.common,
            "split": self.split,
            "shard": self.name,
            "tokens": self._pos,
            "documents": len(self._offsets),
        }
        (self.out / f"{self.name}.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        self.shards.append({"name": self.name, "tokens": self._pos, "documents": len(self._offsets)})
        self.tokens += self._pos
        self.documents += len(self._offsets)
        self.index += 1
        self._f = None

    def finish(self) -> dict:
        self._close()
        return {"tokens": self.tokens, "documents": self.documents, "shards": self.shards}


def iter_documents(data_dir: str | Path) -> Iterator[dict]:
    import zstandard

    for path in sorted((Path(data_dir) / "documents").glob("*.jsonl.zst")):
        with open(path, "rb") as f:
            reader = zstandard.ZstdDecompressor().stream_reader(f)
            for line in io.TextIOWrapper(reader, encoding="utf-8"):
                if line.strip():
                    yield json.loads(line)


def read_documents(data_dir: str | Path, split: str | None = None) -> Iterator[dict]:
    """The kept documents in order; with `split` ("train" or "val"), only those the token shards put there."""
    if split is None:
        yield from iter_documents(data_dir)
        return
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {SPLITS}")
    try:
        info = read_sidecar(data_dir)
        fraction, seed = info["val_fraction"], info.get("split_seed", 0)
    except FileNotFoundError:  # not tokenized: the recipe says where the split would fall
        from acik.manifest import read_manifest

        recipe = read_manifest(data_dir)["recipe"]
        fraction, seed = recipe["tokenize"]["val_fraction"], recipe["seed"]
    for doc in iter_documents(data_dir):
        if split_of(doc["text"], fraction, seed) == split:
            yield doc


def tokenize_documents(data_dir: str | Path, tokenizer_dir: str | Path | None, cfg, seed: int = 0) -> dict:
    """(Re)write DATA_DIR/tokens from DATA_DIR/documents; returns the summary stored in tokens.json."""
    from tokenizers import Tokenizer

    root = Path(data_dir)
    tok_dir = install_tokenizer(root, tokenizer_dir)
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    vocab = tok.get_vocab_size(with_added_tokens=True)
    dtype = np.dtype(np.uint16 if vocab <= 65535 else np.uint32)
    eos = _eos_id(tok, tok_dir)
    identity = tokenizer_identity(tok_dir)
    out = root / "tokens"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    common = {
        "tokenizer_identity": identity,
        "vocab_size": vocab,
        "dtype": dtype.name,
        "byteorder": "little",
        "eos_id": eos,
    }
    writers = {s: _ShardWriter(out, s, dtype, cfg.shard_tokens, common) for s in SPLITS}

    def flush(batch: list[dict]) -> None:
        encodings = tok.encode_batch([d["text"] for d in batch], add_special_tokens=False)
        for d, enc in zip(batch, encodings):
            ids = np.fromiter(enc.ids, dtype=np.int64, count=len(enc.ids))
            writers[split_of(d["text"], cfg.val_fraction, seed)].add(np.append(ids, eos))

    batch: list[dict] = []
    for doc in iter_documents(root):
        batch.append(doc)
        if len(batch) >= cfg.batch_documents:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    summary = {
        **common,
        "val_fraction": cfg.val_fraction,
        "splits": {s: w.finish() for s, w in writers.items()},
    }
    (out / SIDECAR).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def read_sidecar(data_dir: str | Path) -> dict:
    """The token summary of a data directory: tokenizer identity, vocab size, dtype, counts per split."""
    path = Path(data_dir) / "tokens" / SIDECAR
    if not path.exists():
        raise FileNotFoundError(f"{path}: no token shards; run `acik data tokenize {data_dir}` first")
    return json.loads(path.read_text())


def load_tokens(data_dir: str | Path, split: str = "train") -> np.ndarray:
    """All tokens of `split` as one array: a read-only memmap for one shard, a concatenation for several."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {SPLITS}")
    info = read_sidecar(data_dir)
    dtype = np.dtype(info["dtype"]).newbyteorder("<")
    shards = info["splits"][split]["shards"]
    arrays = [
        np.memmap(Path(data_dir) / "tokens" / f"{s['name']}.bin", dtype=dtype, mode="r")
        for s in shards
        if s["tokens"] > 0
    ]
    if not arrays:
        return np.zeros(0, dtype=dtype)
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def load_document_offsets(data_dir: str | Path, split: str = "train") -> np.ndarray:
    """Start offset of every document of `split` in the array `load_tokens` returns."""
    info = read_sidecar(data_dir)
    out, base = [], 0
    for s in info["splits"][split]["shards"]:
        out.append(np.fromfile(Path(data_dir) / "tokens" / f"{s['name']}.idx", dtype="<u8") + base)
        base += s["tokens"]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.uint64)
