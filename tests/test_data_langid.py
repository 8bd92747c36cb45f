"""Language ID on 300-character snippets of the Universal Declaration of Human Rights (udhr2)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest

from acik.data import langid
from acik.data.recipe import LangIdConfig

# udhr2 file -> the ISO 639-1 code py3langid answers with.
LANGS = {
    "eng": "en",
    "tur": "tr",
    "deu": "de",
    "fra": "fr",
    "spa": "es",
    "ita": "it",
    "nld": "nl",
    "pol": "pl",
    "rus": "ru",
    "ukr": "uk",
    "ces": "cs",
    "swe": "sv",
    "arb": "ar",
    "hin": "hi",
    "ben": "bn",
    "jpn": "ja",
    "kor": "ko",
    "vie": "vi",
    "ind": "id",
    "cmn_hans": "zh",
}


def snippets() -> dict[str, list[str]]:
    root = Path(os.environ.get("ACIK_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    path = root / "nltk_data" / "corpora" / "udhr2.zip"
    if not path.exists():
        pytest.skip(f"{path} not found (set ACIK_SHARED_DATA)")
    out = {}
    with zipfile.ZipFile(path) as z:
        for name in LANGS:
            text = " ".join(z.read(f"udhr2/{name}.txt").decode("utf-8").split())
            out[name] = [text[i : i + 300] for i in range(0, len(text) - 300, 300)]
    return out


def accuracy(candidates=None) -> tuple[float, dict[str, float]]:
    total = correct = 0
    per = {}
    for name, snips in snippets().items():
        ok = sum(langid.classify(s, candidates)[0] == LANGS[name] for s in snips)
        per[name] = ok / len(snips)
        total += len(snips)
        correct += ok
    return correct / total, per


def test_udhr2_20_languages_at_least_95_percent():
    overall, per = accuracy()
    assert overall >= 0.95, per
    # Indonesian is the one language the full model confuses (with Malay); the rest are near perfect.
    assert all(v >= 0.95 for k, v in per.items() if k != "ind"), per


def test_restricting_candidates_fixes_indonesian():
    overall, per = accuracy(candidates=sorted(set(LANGS.values())))
    assert min(per.values()) >= 0.95, per


def test_keep_and_confidence_rules():
    cfg = LangIdConfig(keep=["en"], min_confidence=0.65)
    english = "The quick brown fox jumps over the lazy dog while the children watch from the window."
    assert langid.check(english, cfg)[0] is None
    assert (
        langid.check("Der schnelle braune Fuchs springt über den faulen Hund.", cfg)[0] == "langid.language"
    )
    strict = LangIdConfig(keep=["en"], min_confidence=0.999999)
    assert langid.check("ok fine", strict)[0] in ("langid.min_confidence", "langid.language")
    assert langid.check(english, LangIdConfig(keep=None))[0] is None
