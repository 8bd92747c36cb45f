"""Decontamination: drop documents that share a long word n-gram (13 by default) with an evaluation set.

Text is compared lowercased, as runs of word characters, so punctuation and spacing differences do
not hide an overlap. N-grams are 64-bit hashes; the evaluation side is a sorted array saved once per
run and loaded by every task.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import xxhash

WORD = re.compile(r"\w+")
_MULT = np.uint64(0x9E3779B97F4A7C15)


def ngram_hashes(text: str, n: int) -> np.ndarray:
    words = WORD.findall(text.lower())
    if len(words) < n:
        return np.zeros(0, dtype=np.uint64)
    h = np.fromiter((xxhash.xxh3_64_intdigest(w.encode()) for w in words), dtype=np.uint64, count=len(words))
    out = np.zeros(len(words) - n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            out = out * _MULT + h[j : len(words) - n + 1 + j]
    return out


def _eval_texts(path: Path):
    if path.suffix in (".jsonl", ".ndjson"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                yield " ".join(_strings(json.loads(line)))
    else:
        yield path.read_text(encoding="utf-8")


def _strings(obj) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return []


def build_index(eval_sets: list[str], n: int) -> np.ndarray:
    """Sorted unique n-gram hashes of every evaluation file."""
    parts = []
    for name in eval_sets:
        path = Path(name)
        if not path.exists():
            raise FileNotFoundError(f"decontamination.eval_sets: {name} not found")
        parts.extend(ngram_hashes(t, n) for t in _eval_texts(path))
    if not parts:
        return np.zeros(0, dtype=np.uint64)
    return np.unique(np.concatenate(parts))


def contaminated(text: str, index: np.ndarray, n: int) -> bool:
    if index.size == 0:
        return False
    h = ngram_hashes(text, n)
    if h.size == 0:
        return False
    pos = np.searchsorted(index, h)
    pos[pos >= index.size] = 0
    return bool(np.any(index[pos] == h))
