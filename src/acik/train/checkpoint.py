"""Resumable checkpoints in `RUN_DIR/checkpoints/step_NNNNNNNN/`.

Each holds `model.safetensors` (full, unsharded weights), `train_state.pt` (optimizer states, step,
tokens seen, RNG states; written with torch.save, read back with weights_only=True) and `meta.json`
(step and the SHA-256 of the other two). A checkpoint is written into a temporary folder, every file
fsynced, then renamed into place, so a crash leaves either the whole checkpoint or none of it; a
checkpoint whose hashes do not match is skipped with a warning.

States are gathered to full (unsharded) tensors, so a checkpoint written by N processes, DDP or FSDP,
resumes in any number of processes.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from acik.manifest import sha256_file

PREFIX = "step_"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded CPU weights (a collective under DDP/FSDP: every process must call it; only rank 0
    receives the tensors when sharded)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def gather(model: nn.Module, optimizers: list[torch.optim.Optimizer]) -> tuple[dict, list[dict]]:
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd = get_model_state_dict(model, options=opts)
    optim_sds = [get_optimizer_state_dict(model, opt, options=opts) for opt in optimizers]
    return model_sd, optim_sds


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(ckpt_dir: Path, step: int, model_sd: dict, optim_sds: list[dict], extra: dict, keep: int) -> Path:
    """Write checkpoint `step` atomically (call on one process only) and keep the newest `keep`."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"{PREFIX}{step:08d}"
    tmp = ckpt_dir / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    # Tied weights share storage, which safetensors refuses; each name gets its own copy.
    save_file({k: v.detach().contiguous().clone() for k, v in model_sd.items()}, str(tmp / "model.safetensors"))
    torch.save({"optimizers": optim_sds, "step": step, "rng": rng_state(), **extra}, tmp / "train_state.pt")
    meta = {"step": step, "files": {n: sha256_file(tmp / n) for n in ("model.safetensors", "train_state.pt")},
            **{k: v for k, v in extra.items() if isinstance(v, (int, float, str))}}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    for name in ("model.safetensors", "train_state.pt", "meta.json"):
        _fsync_file(tmp / name)
    _fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. after resuming from it): replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(ckpt_dir)
    for old in list_checkpoints(ckpt_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Finished checkpoint folders, oldest first (temporary folders are ignored)."""
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def check(path: Path) -> str | None:
    """None if checkpoint `path` is intact, else what is wrong with it."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        for name, digest in meta["files"].items():
            if sha256_file(path / name) != digest:
                return f"{name} does not match its recorded hash"
    except (OSError, ValueError, KeyError) as e:
        return f"unreadable ({e})"
    return None


def latest_valid(ckpt_dir: Path) -> Path | None:
    """The newest intact checkpoint; corrupt ones are skipped with a warning."""
    for path in reversed(list_checkpoints(ckpt_dir)):
        problem = check(path)
        if problem is None:
            return path
        warnings.warn(f"skipping corrupt checkpoint {path}: {problem}", stacklevel=2)
    return None


def load(path: Path, model: nn.Module, optimizers: list[torch.optim.Optimizer]) -> dict:
    """Restore `model` and `optimizers` (wrapped or not, in any number of processes) from `path`;
    returns the training state (step, tokens seen, ...)."""
    model_sd = load_file(str(path / "model.safetensors"))
    state = torch.load(path / "train_state.pt", map_location="cpu", weights_only=True)
    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_sd, options=opts)
    if len(state["optimizers"]) != len(optimizers):
        raise ValueError(f"checkpoint {path} has {len(state['optimizers'])} optimizer states, this run has "
                         f"{len(optimizers)}; resume with the same optimizer setting")
    for opt, sd in zip(optimizers, state["optimizers"]):
        set_optimizer_state_dict(model, opt, sd, options=opts)
    set_rng_state(state["rng"])
    return state
