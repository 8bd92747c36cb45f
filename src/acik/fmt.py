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


def _scaled(n: float, units: tuple[str, ...], sep: str) -> str:
    """`n` (>= 1000) divided by 1000 until it fits one of `units`, to 3 significant digits."""
    for unit in units:
        n /= 1000
        if abs(n) < 999.5 or unit == units[-1]:
            return f"{n:.3g}{sep}{unit}" if abs(n) < 100 else f"{n:.0f}{sep}{unit}"
    raise AssertionError("unreachable")


def size(n_bytes: int | float) -> str:
    """A byte count in decimal units: 999 B, 12.3 KB, 4.56 MB, 1.23 GB (3 significant digits, at
    least the integer part)."""
    return f"{int(n_bytes)} B" if abs(n_bytes) < 1000 else _scaled(float(n_bytes), _SIZE_UNITS, " ")


def params(n: int) -> str:
    """A parameter count as model names write it: 950, 26.9K, 135M, 1.24B."""
    return str(n) if abs(n) < 1000 else _scaled(float(n), ("K", "M", "B", "T"), "")


def count(n: int, noun: str, plural: str | None = None) -> str:
    """`n` with its noun in the right number: "1 step", "2 steps", "12,800 tokens";
    `plural` for irregular nouns ("entry", "entries")."""
    word = noun if n == 1 else (plural or noun + "s")
    return f"{n:,} {word}"
