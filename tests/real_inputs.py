"""Inputs the tests read but do not make: the real model `make setup` installs, and the data in ../shared/data.
Each helper skips the calling test, with the fix in the message, where its input is absent."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("ACIK_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA} (set ACIK_SHARED_DATA to its location)")
    return SHARED_DATA


def shipped_gguf() -> Path:
    """SmolLM2-135M-Instruct's Q4_1 GGUF, found as acik finds the built-in name."""
    from acik.models import ModelNotFound, builtin_path

    try:
        return builtin_path("smollm2-135m-instruct")
    except ModelNotFound as e:
        pytest.skip(str(e))


def udhr2_texts() -> list[tuple[str, str]]:
    """(file name, text) of every language of the Universal Declaration of Human Rights in nltk's udhr2."""
    path = shared_data() / "nltk_data" / "corpora" / "udhr2.zip"
    if not path.exists():
        pytest.skip(f"{path} missing")
    with zipfile.ZipFile(path) as z:
        return [(n, z.read(n).decode("utf-8")) for n in z.namelist() if n.endswith(".txt")]
