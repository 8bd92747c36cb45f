"""The one timing loop the benchmark scripts share (imported as a sibling module when run as scripts)."""

from __future__ import annotations

import time
from collections.abc import Callable


def run_times(fn: Callable[[], object], repeats: int, warmup: bool = True) -> list[float]:
    """Wall seconds of `repeats` calls of `fn`, after one untimed warm-up call."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times
