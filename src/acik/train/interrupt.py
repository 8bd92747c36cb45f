"""Stopping a training run cleanly on Ctrl-C (SIGINT) or SIGTERM.

While `StopSignals` is active, the first SIGINT or SIGTERM only records that a stop was asked for;
the loop finishes the step in progress, all processes agree to stop after the same step, a
checkpoint is written and `TrainingInterrupted` is raised (the CLI exits with 128 + the signal's
number: 130 for SIGINT, 143 for SIGTERM). The same signal arriving again within `grace_s` is
ignored: torchrun forwards the terminal's Ctrl-C to workers that already got it. A later one quits
at once, without the checkpoint.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after writing a checkpoint. A KeyboardInterrupt, so code that
    handles Ctrl-C already handles it; `exit_code` is the conventional 128 + signal number."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None, announce: bool = True):
        self.signum, self.step, self.checkpoint, self.announce = signum, step, checkpoint, announce
        self.exit_code = 128 + signum
        where = f"checkpoint saved to {checkpoint}" if checkpoint else "no checkpoint saved"
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; {where}")


class StopSignals:
    """Context manager: catch SIGINT/SIGTERM as a stop request (main thread only; elsewhere, or
    when `enabled` is false, signals keep their usual effect)."""

    def __init__(self, *, announce: bool = True, grace_s: float = 2.0, enabled: bool = True):
        self.signum: int | None = None
        self._first_at = 0.0
        self._announce = announce
        self._grace_s = grace_s
        self._enabled = enabled and threading.current_thread() is threading.main_thread()
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        now = time.monotonic()
        if self.signum is None:
            self.signum, self._first_at = signum, now
            if self._announce:
                # os.write, not print: a handler may run in the middle of another write to stderr.
                os.write(2, f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint "
                            "(press Ctrl-C again to quit without one)\n".encode())
            return
        if signum == self.signum and now - self._first_at < self._grace_s:
            return
        self.restore()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    def __enter__(self) -> StopSignals:
        if self._enabled:
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self.restore()


def stop_agreed(stop: StopSignals, d) -> int | None:
    """The signal to stop on after this step, the same on every process (a collective under torchrun:
    every process calls it once per step). SIGINT wins when processes got different signals."""
    if not d.enabled:
        return stop.signum
    import torch

    from acik.train.distributed import all_reduce_sum

    mine = torch.tensor([float(stop.signum == signal.SIGINT), float(stop.signum == signal.SIGTERM)],
                        dtype=torch.float64)
    got_int, got_term = all_reduce_sum(mine, d).tolist()
    return signal.SIGINT if got_int else signal.SIGTERM if got_term else None
