"""What a run shows and leaves behind: metrics JSONL, the end-of-run report and its loss curve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from acik import fmt

# Dense bf16 peak FLOP/s of common training GPUs, for model FLOPs utilisation (MFU).
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12,
                   "L4": 121e12, "RTX 4090": 165e12, "RTX 3090": 71e12}


def peak_flops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_FLOPS.items():
        if key in device_name:
            return value
    return None


def flops_per_token(n_params: int, n_layers: int, seq_len: int, hidden: int) -> float:
    """Training FLOPs per token: 6N for the matmuls plus the attention scores (PaLM appendix B)."""
    return 6 * n_params + 12 * n_layers * hidden * seq_len


class Metrics:
    """Append-only JSONL log, one object per line; resuming drops lines past the resumed step so
    the log reads as one uninterrupted run."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines() if line.strip()
                    and json.loads(line).get("step", 0) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))
        elif path.exists():
            path.unlink()

    def log(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def draw_loss(ax, records: list[dict], title: str | None = None) -> bool:
    """Train and validation loss curves of `records` (metrics.jsonl rows) on a matplotlib axis."""
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("kind") == "val"]
    if train:
        ax.plot(*zip(*train), label="train", linewidth=1)
    if val:
        ax.plot(*zip(*val), label="validation", marker="o", markersize=3)
    if title:
        ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    return bool(train or val)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def plot_loss(records: list[dict], out: Path) -> Path | None:
    if not any(r.get("kind") in ("train", "val") for r in records):
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    draw_loss(ax, records)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def write_report(run_dir: Path, summary: dict[str, Any]) -> Path:
    """`report.md` and `report_loss.png` in `run_dir` (human-facing files, outside the directory hash)."""
    records = read_metrics(run_dir / "metrics.jsonl")
    png = plot_loss(records, run_dir / "report_loss.png")
    vals = [r for r in records if r.get("kind") == "val"]
    lines = ["# Training report", ""]
    rows = [
        ("steps", summary.get("steps")),
        ("tokens seen", f"{summary.get('tokens_seen', 0):,}"),
        ("wall time", f"{summary.get('wall_s', 0):.1f} s"),
        ("throughput", f"{summary.get('tokens_per_s', 0):,.0f} tokens/s"),
        ("parameters", f"{summary.get('parameters', 0):,}"),
        ("processes", summary.get("world_size")),
        ("device", summary.get("device")),
        ("final train loss", fmt.loss(summary.get("final_loss"))),
        ("final validation loss", fmt.loss(vals[-1]["val_loss"] if vals else None)),
        ("MFU", f"{summary['mfu'] * 100:.1f}%" if summary.get("mfu") is not None else "n/a (CPU or unknown GPU)"),
    ]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    if png:
        lines += ["", f"![loss curve]({png.name})"]
    if vals:
        lines += ["", "| step | validation loss |", "|---:|---:|"] + [f"| {r['step']} | {fmt.loss(r['val_loss'])} |"
                                                                         for r in vals]
    if summary.get("recipe"):
        lines += ["", "## Recipe", "", "```json", json.dumps(summary["recipe"], indent=2), "```"]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines) + "\n")
    return out
