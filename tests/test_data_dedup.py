"""Near-duplicate detection on a planted corpus, PII scrubbing, and decontamination."""

from __future__ import annotations

import itertools
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from acik.data import decontam, dedup, pii
from acik.data.recipe import DedupConfig, PIIConfig


def shingle_set(words: list[str], n: int = 5) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(sa: set, sb: set) -> float:
    return len(sa & sb) / len(sa | sb)


def mutate(words: list[str], k: int, rng: random.Random) -> list[str]:
    out = list(words)
    for pos in rng.sample(range(len(out)), k):
        out[pos] = f"new{rng.randrange(10**9)}"
    return out


def test_planted_corpus_clusters():
    rng = random.Random(0)
    docs, family = [], []
    for f in range(100):
        base = [f"w{rng.randrange(50_000)}" for _ in range(300)]
        # Two near copies (Jaccard ~0.9 with the base) and one distant relative (~0.4).
        for words in (base, mutate(base, 3, rng), mutate(base, 3, rng), mutate(base, 26, rng)):
            docs.append(words)
            family.append(f)
    cfg = DedupConfig()
    perms = dedup.permutations(cfg.bands * cfg.rows, cfg.seed)
    sigs = np.stack([dedup.minhash(" ".join(d), cfg, perms) for d in docs])
    dropped, stats = dedup.near_duplicates(sigs, cfg)
    cluster = [dropped.get(i, i) for i in range(len(docs))]
    sets = [shingle_set(d) for d in docs]
    high = low = high_same = low_same = 0
    for i, j in itertools.combinations(range(len(docs)), 2):
        if family[i] != family[j] and (i + j) % 37:  # unrelated pairs: Jaccard 0, sample some
            continue
        jac = jaccard(sets[i], sets[j])
        if jac >= 0.85:
            high += 1
            high_same += cluster[i] == cluster[j]
        elif jac <= 0.5:
            low += 1
            low_same += cluster[i] == cluster[j]
    assert high >= 150 and low >= 300, (high, low)
    assert high_same / high >= 0.95, f"only {high_same}/{high} near-duplicate pairs clustered"
    assert low_same / low <= 0.01, f"{low_same}/{low} dissimilar pairs clustered"
    # The first document of a cluster (input order) is the one kept.
    assert all(root < i for i, root in dropped.items())
    assert stats["clusters"] >= 95


def test_exact_hash_normalises_case_and_spacing():
    assert dedup.exact_hash("Hello   World\n") == dedup.exact_hash("hello world")
    assert dedup.exact_hash("hello world") != dedup.exact_hash("hello worlds")


def test_pii_placeholders_and_counts():
    text = (
        "Write to jane.doe@example.org or call +1 (555) 123-4567 or 030 1234 5678. "
        "Server 93.184.216.34 and 2001:db8:85a3::8a2e:370:7334 are public. "
        "Dates 2024-01-15, versions 1.2.3, local 192.168.1.1 and 127.0.0.1 stay."
    )
    out, counts = pii.scrub(text, PIIConfig())
    assert "jane.doe@example.org" not in out and pii.EMAIL_PLACEHOLDER in out
    assert "93.184.216.34" not in out and pii.IP_PLACEHOLDER in out
    assert "123-4567" not in out and "1234 5678" not in out and pii.PHONE_PLACEHOLDER in out
    for kept in ("2024-01-15", "1.2.3", "192.168.1.1", "127.0.0.1"):
        assert kept in out
    assert counts["email"] == 1 and counts["phone"] == 2 and counts["ip"] == 1
    off, _ = pii.scrub(text, PIIConfig(email=False, ip=False, phone=False))
    assert off == text


def test_decontamination_against_shared_eval_set(tmp_path):
    root = Path(os.environ.get("ACIK_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    path = root / "eval" / "arc_easy.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not found (set ACIK_SHARED_DATA)")
    index = decontam.build_index([str(path)], 13)
    row = json.loads(path.read_text().splitlines()[5])
    question = " ".join(decontam.WORD.findall(row["query"]))
    words = question.split()
    assert len(words) >= 14
    leak = "Some study notes. " + " ".join(words[:13]).upper() + ", and more."
    near = "Some study notes. " + " ".join(words[:12]) + " and more."
    assert decontam.contaminated(leak, index, 13)
    assert not decontam.contaminated(near, index, 13)
    assert not decontam.contaminated("An unrelated text about gardening in spring.", index, 13)
