"""Deduplication: exact (normalised text hash), then near-duplicate with MinHash LSH.

Each candidate pair that LSH puts in a shared bucket is confirmed by its estimated Jaccard
similarity before it joins a cluster; the first document of a cluster, in input order, is kept.
Signatures are computed in the tasks; clustering runs once over all of them.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np
import xxhash

WORD = re.compile(r"\w+")
_PRIME = np.uint64((1 << 61) - 1)
_MASK32 = np.uint64(0xFFFFFFFF)
_MULT = np.uint64(0x9E3779B97F4A7C15)


def normalize(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def exact_hash(text: str) -> str:
    return xxhash.xxh3_128_hexdigest(normalize(text).encode())


def shingles(text: str, n: int) -> np.ndarray:
    """Distinct 32-bit hashes of the word n-grams of `text` (the whole text if shorter than n)."""
    words = WORD.findall(unicodedata.normalize("NFKC", text).lower())
    if not words:
        return np.zeros(1, dtype=np.uint64)
    h = np.fromiter((xxhash.xxh3_64_intdigest(w.encode()) for w in words), dtype=np.uint64, count=len(words))
    n = min(n, len(words))
    out = np.zeros(len(words) - n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            out = out * _MULT + h[j : len(words) - n + 1 + j]
    return np.unique(out >> np.uint64(32))


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    a = rng.randint(1, (1 << 61) - 1, size=num_perm, dtype=np.uint64)
    b = rng.randint(0, (1 << 61) - 1, size=num_perm, dtype=np.uint64)
    return a, b


def minhash(text: str, cfg, perms: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """MinHash signature (bands * rows uint32 values) of the word n-gram set."""
    a, b = perms
    s = shingles(text, cfg.ngram)
    sig = np.full(a.shape[0], 0xFFFFFFFF, dtype=np.uint64)
    # Chunks bound the temporary (shingles x permutations) array on very long documents.
    with np.errstate(over="ignore"):
        for i in range(0, s.shape[0], 4096):
            values = ((s[i : i + 4096, None] * a[None, :] + b[None, :]) % _PRIME) & _MASK32
            np.minimum(sig, values.min(axis=0), out=sig)
    return sig.astype(np.uint32)


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, x: int, y: int) -> None:
        rx, ry = self.find(x), self.find(y)
        if rx != ry:
            # The smaller index is the root, so each cluster keeps its first document in input order.
            self.parent[max(rx, ry)] = min(rx, ry)


def near_duplicates(signatures: np.ndarray, cfg) -> tuple[dict[int, int], dict]:
    """Cluster rows of `signatures` (n x bands*rows); returns {dropped row: kept row} and statistics."""
    n = signatures.shape[0]
    uf = _UnionFind(n)
    pairs = confirmed = 0
    checked: set[tuple[int, int]] = set()
    for band in range(cfg.bands):
        cols = signatures[:, band * cfg.rows : (band + 1) * cfg.rows]
        buckets: dict[bytes, list[int]] = {}
        for i in range(n):
            buckets.setdefault(cols[i].tobytes(), []).append(i)
        for members in buckets.values():
            if len(members) < 2:
                continue
            if len(members) * (len(members) - 1) // 2 <= cfg.max_bucket_pairs:
                cand = [(x, y) for k, x in enumerate(members) for y in members[k + 1 :]]
            else:
                cand = list(zip(members, members[1:]))
            for x, y in cand:
                if (x, y) in checked or uf.find(x) == uf.find(y):
                    continue
                checked.add((x, y))
                pairs += 1
                if float(np.mean(signatures[x] == signatures[y])) >= cfg.threshold:
                    confirmed += 1
                    uf.union(x, y)
    dropped = {}
    sizes: dict[int, int] = {}
    for i in range(n):
        root = uf.find(i)
        sizes[root] = sizes.get(root, 0) + 1
        if root != i:
            dropped[i] = root
    clusters = [s for s in sizes.values() if s > 1]
    stats = {
        "candidate_pairs": pairs,
        "confirmed_pairs": confirmed,
        "clusters": len(clusters),
        "largest_cluster": max(clusters, default=1),
        "documents_in_clusters": sum(clusters),
    }
    return dropped, stats
