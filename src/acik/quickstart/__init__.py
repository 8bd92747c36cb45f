"""`acik quickstart`: the whole stack in one command, from the local Python environment's documentation to
an evaluated, quantized chat model with a report; see `acik.quickstart.pipeline`."""

from __future__ import annotations


def add_cli(sub) -> None:
    from acik.quickstart.pipeline import add_cli as _add_cli

    _add_cli(sub)


def run(out="runs/quickstart", **kwargs) -> dict:
    """Run the quickstart into `out` (see `acik.quickstart.pipeline.run`)."""
    from acik.quickstart.pipeline import run as _run

    return _run(out, **kwargs)


__all__ = ["add_cli", "run"]
