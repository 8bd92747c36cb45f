"""Learning-rate schedules as pure functions of the step, so resuming needs only the step number."""

from __future__ import annotations

import math


def lr_factor(step: int, max_steps: int, warmup_steps: int, schedule: str = "cosine", min_lr_ratio: float = 0.1,
              decay_fraction: float = 0.2) -> float:
    """Multiplier of the peak learning rate at `step` (0-based).

    - "cosine": linear warmup, then cosine from 1 to `min_lr_ratio` at `max_steps`.
    - "wsd": warmup-stable-decay: linear warmup, constant, then linear decay to `min_lr_ratio` over
      the last `decay_fraction` of the steps (lets one run branch into several lengths).
    - "constant": linear warmup, then constant.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(max_steps - warmup_steps, 1)
        progress = min(max(step - warmup_steps, 0) / span, 1.0)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "wsd":
        decay_steps = max(int(round(max_steps * decay_fraction)), 1)
        decay_start = max_steps - decay_steps
        if step < decay_start:
            return 1.0
        progress = min((step - decay_start + 1) / decay_steps, 1.0)
        return 1.0 - (1 - min_lr_ratio) * progress
    raise ValueError(f"unknown schedule {schedule!r}; use cosine, wsd or constant")
