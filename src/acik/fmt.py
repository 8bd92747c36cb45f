"""How acik prints numbers to people: losses, byte sizes, counted nouns. One place, so every
command reads the same ("loss 2.346", "512 KB", "1 step") instead of each f-string choosing."""

from __future__ import annotations

import math

_SIZE_UNITS = ("KB", "MB", "GB", "TB", "PB")


def loss(x: float | None) -> str:
    """A loss (or any measured real number) to 4 significant digits: 2.346, 0.01235, 10.50;
    "n/a" for None. Trailing zeros are kept, so a column of losses lines up."""
    if x is None:
        return "n/a"
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    s = f"{x:#.4g}"
    return s[:-1] if s.endswith(".") else s


def size(n_bytes: int | float) -> str:
    """A byte count in decimal units: 999 B, 12.3 KB, 4.56 MB, 1.23 GB (3 significant digits, at
    least the integer part)."""
    n = float(n_bytes)
    if abs(n) < 1000:
        return f"{int(n)} B"
    for unit in _SIZE_UNITS:
        n /= 1000
        if abs(n) < 999.5 or unit == _SIZE_UNITS[-1]:
            return f"{n:.3g} {unit}" if abs(n) < 100 else f"{n:.0f} {unit}"
    raise AssertionError("unreachable")


def count(n: int, noun: str, plural: str | None = None) -> str:
    """`n` with its noun in the right number: "1 step", "2 steps", "12,800 tokens";
    `plural` for irregular nouns ("entry", "entries")."""
    word = noun if n == 1 else (plural or noun + "s")
    return f"{n:,} {word}"
