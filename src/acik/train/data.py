"""Training data: token arrays from a data directory or a raw text file, and batches that are a pure
function of (seed, step, global batch size).

Every process computes the whole global batch's sample offsets from the same counter-based seed and
takes its own slice, so the data a model sees at step k does not depend on how many processes share
the work, and resuming at step k needs no saved data-loader state beyond k itself.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from acik.manifest import tokenizer_identity


class DataError(ValueError):
    pass


@dataclass
class TokenData:
    train: np.ndarray  # 1-D token ids
    val: np.ndarray
    tokenizer_dir: Path | None  # None: acik's byte-level tokenizer
    source: Path
    parents: list[dict]  # manifest entries naming the data (and tokenizer) by hash
    vocab_size: int


def _text_parent(path: Path) -> dict:
    from acik.manifest import sha256_file

    return {"role": "data", "path": str(path), "sha256": sha256_file(path)}


def _dir_parent(path: Path, role: str) -> dict:
    from acik.manifest import read_manifest

    try:
        return {"role": role, "path": str(path), "directory_hash": read_manifest(path)["directory_hash"]}
    except ValueError:
        return {"role": role, "path": str(path), "directory_hash": None}


def encode_text(text: str, tokenizer_dir: Path | None) -> np.ndarray:
    """Token ids of `text`. Byte-level: the UTF-8 bytes are the ids (acik's byte tokenizer maps id == byte)."""
    if tokenizer_dir is None:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    # Encode paragraph by paragraph (keeping the newlines) so a large file fits in memory and the
    # tokenizer's pre-split regex sees natural boundaries.
    pieces = [p + "\n\n" for p in text.split("\n\n")]
    pieces[-1] = pieces[-1][:-2]
    ids: list[int] = []
    for i in range(0, len(pieces), 4096):
        for enc in tok.encode_batch(pieces[i:i + 4096], add_special_tokens=False):
            ids.extend(enc.ids)
    dtype = np.uint16 if tok.get_vocab_size() <= 65535 else np.uint32
    return np.asarray(ids, dtype=dtype)


def load_data(path: str | Path | list[str | Path], tokenizer_dir: str | Path | None = None,
              val_fraction: float = 0.1) -> TokenData:
    """Load a data directory (with `train`/`val` splits and its own tokenizer) or raw text file(s).

    Raw text is tokenized with `tokenizer_dir` (default: the byte-level tokenizer) and the last
    `val_fraction` of each file is held out for validation.
    """
    tok = Path(tokenizer_dir) if tokenizer_dir else None
    paths = [Path(p) for p in path] if isinstance(path, (list, tuple)) else [Path(path)]
    if len(paths) == 1 and paths[0].is_dir():
        return _load_data_dir(paths[0], tok)
    trains, vals, parents = [], [], []
    for p in paths:
        if not p.is_file():
            raise DataError(f"--data {p}: no such file or directory (give a data directory from `acik data` "
                            "or UTF-8 text files)")
        ids = encode_text(p.read_text(encoding="utf-8", errors="replace"), tok)
        n_val = max(int(len(ids) * val_fraction), 1)
        trains.append(ids[:-n_val])
        vals.append(ids[-n_val:])
        parents.append(_text_parent(p))
    if tok is not None:
        parents.append({"role": "tokenizer", "path": str(tok), "tokenizer_identity": tokenizer_identity(tok)})
    return TokenData(np.concatenate(trains), np.concatenate(vals), tok, paths[0], parents, _vocab_size(tok))


def _vocab_size(tokenizer_dir: Path | None) -> int:
    if tokenizer_dir is None:
        return 260
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise DataError(f"tokenizer {tokenizer_dir}: no tokenizer.json there (train one with "
                        "`acik tokenizer train`, or leave 'tokenizer' unset for byte level)")
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()


def _load_data_dir(path: Path, tok: Path | None) -> TokenData:
    try:
        from acik.data.shards import load_tokens, read_sidecar
    except ImportError:
        raise DataError(f"--data {path}: reading data directories needs the data stage (acik.data.shards), "
                        "which this installation lacks; pass a raw text file instead") from None
    sidecar = read_sidecar(path)
    data_tok = path / "tokenizer"
    if tok is not None:
        ours, theirs = tokenizer_identity(tok), sidecar.get("tokenizer_identity")
        if theirs is not None and ours != theirs:
            raise DataError(f"--data {path} was tokenized with tokenizer {theirs[:16]}..., but the model's "
                            f"tokenizer {tok} is {ours[:16]}...; train with the data directory's own "
                            f"tokenizer ({data_tok}) or re-tokenize the data with yours")
    else:
        tok = data_tok if data_tok.is_dir() else None
    train, val = load_tokens(path, "train"), load_tokens(path, "val")
    if len(val) == 0:
        raise DataError(f"--data {path}: the 'val' split is empty; validation needs held-out tokens: raise "
                        f"the data's validation fraction with `acik data tokenize {path} --set "
                        "tokenize.val_fraction=0.1` (whole documents go to validation: with only a few "
                        "documents, use more)")
    parents = [_dir_parent(path, "data")]
    vocab = int(sidecar.get("vocab_size") or _vocab_size(tok))
    return TokenData(np.asarray(train), np.asarray(val), tok, path, parents, vocab)


def _step_generator(seed: int, step: int, stream: str) -> torch.Generator:
    # A counter-based seed: hashing (seed, stream, step) gives every step its own independent stream
    # without having to replay the steps before it.
    digest = hashlib.sha256(f"{seed}/{stream}/{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def sample_offsets(n_tokens: int, seq_len: int, batch_size: int, seed: int, step: int,
                   stream: str = "train") -> torch.Tensor:
    """Start offsets of the `batch_size` windows of step `step` (the whole global batch)."""
    span = n_tokens - seq_len - 1
    if span < 1 and stream == "val":
        raise DataError(f"the validation split has {n_tokens} tokens, fewer than seq_len + 1 = {seq_len + 1}: "
                        "raise val_fraction (raw text: --set val_fraction=0.2; a data directory: `acik data "
                        "tokenize DIR --set tokenize.val_fraction=0.1`) or lower seq_len")
    if span < 1:
        raise DataError(f"the data has {n_tokens} tokens, fewer than seq_len + 1 = {seq_len + 1}")
    return torch.randint(0, span + 1, (batch_size,), generator=_step_generator(seed, step, stream))


def windows(tokens: np.ndarray, offsets: torch.Tensor, seq_len: int) -> dict[str, torch.Tensor]:
    rows = np.stack([tokens[o:o + seq_len + 1].astype(np.int64) for o in offsets.tolist()])
    t = torch.from_numpy(rows)
    return {"input_ids": t[:, :-1].contiguous(), "targets": t[:, 1:].contiguous()}


def global_batch(tokens: np.ndarray, seq_len: int, batch_size: int, seed: int, step: int,
                 stream: str = "train") -> dict[str, torch.Tensor]:
    """The whole global batch of step `step`: input_ids and targets [batch_size, seq_len]."""
    return windows(tokens, sample_offsets(len(tokens), seq_len, batch_size, seed, step, stream), seq_len)


def rank_micro_batches(tokens: np.ndarray, seq_len: int, batch_size: int, micro_batch_size: int, seed: int,
                       step: int, rank: int, world_size: int) -> list[dict[str, torch.Tensor]]:
    """This process's share of step `step`, split into micro-batches for gradient accumulation.

    Rows [rank * batch_size / world, (rank + 1) * batch_size / world) of the global batch belong to
    `rank`, so the union over ranks is the global batch whatever `world_size` is.
    """
    per_rank = batch_size // world_size
    offsets = sample_offsets(len(tokens), seq_len, batch_size, seed, step)[rank * per_rank:(rank + 1) * per_rank]
    return [windows(tokens, offsets[i:i + micro_batch_size], seq_len) for i in range(0, per_rank, micro_batch_size)]
