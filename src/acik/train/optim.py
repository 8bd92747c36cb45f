"""Optimizers: AdamW everywhere, or Muon for the hidden matrix weights with AdamW for the rest."""

from __future__ import annotations

import torch
from torch import nn


def _adamw(groups: list[dict], lr: float, betas: tuple[float, float], eps: float,
           device: torch.device) -> torch.optim.Optimizer:
    # Fused AdamW is one kernel per step on GPU (and on CPU since torch 2.4); fall back if a
    # parameter type (e.g. an older torch's DTensor) does not support it.
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=device.type != "cpu")


def _is_hidden_matrix(name: str, p: torch.Tensor) -> bool:
    # Muon orthogonalises matrix updates; embeddings and the output head are lookups/classifiers
    # whose rows are updated sparsely, so they stay with AdamW (as in the Muon paper).
    return p.ndim == 2 and "embed_tokens" not in name and "lm_head" not in name


def build_optimizers(named_params: list[tuple[str, nn.Parameter]], *, optimizer: str, lr: float, weight_decay: float,
                     betas: tuple[float, float], eps: float, muon_lr: float | None = None,
                     muon_momentum: float = 0.95, sharded: bool = False) -> list[torch.optim.Optimizer]:
    """One or two optimizers over the trainable parameters. Each param group records its peak
    learning rate as `initial_lr`; the loop scales it by the schedule each step.

    Weight decay applies to matrices (ndim >= 2), never to norms, biases or sinks.
    """
    seen: set[int] = set()
    params = []
    for name, p in named_params:  # tied weights appear once
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            params.append((name, p))
    if not params:
        raise ValueError("no trainable parameters")
    device = params[0][1].device
    if optimizer == "adamw":
        decay = [p for _, p in params if p.ndim >= 2]
        no_decay = [p for _, p in params if p.ndim < 2]
        groups = [g for g in ({"params": decay, "weight_decay": weight_decay, "initial_lr": lr},
                              {"params": no_decay, "weight_decay": 0.0, "initial_lr": lr}) if g["params"]]
        return [_adamw(groups, lr, betas, eps, device)]
    if optimizer == "muon":
        if not hasattr(torch.optim, "Muon"):
            raise ValueError(f"optimizer 'muon' needs torch.optim.Muon (torch >= 2.9); this torch is "
                             f"{torch.__version__}; use optimizer: adamw")
        if sharded:
            raise ValueError("optimizer 'muon' orthogonalises whole matrices, which FSDP shards across processes; "
                             "use parallel: ddp with muon, or optimizer: adamw with fsdp")
        matrices = [p for n, p in params if _is_hidden_matrix(n, p)]
        rest_decay = [p for n, p in params if not _is_hidden_matrix(n, p) and p.ndim >= 2]
        rest_no_decay = [p for n, p in params if p.ndim < 2]
        mlr = muon_lr if muon_lr is not None else lr
        # "match_rms_adamw" rescales Muon's update to AdamW's RMS, so one learning rate fits both.
        muon = torch.optim.Muon([{"params": matrices, "initial_lr": mlr}], lr=mlr, weight_decay=weight_decay,
                                momentum=muon_momentum, adjust_lr_fn="match_rms_adamw")
        groups = [g for g in ({"params": rest_decay, "weight_decay": weight_decay, "initial_lr": lr},
                              {"params": rest_no_decay, "weight_decay": 0.0, "initial_lr": lr}) if g["params"]]
        return [muon, _adamw(groups, lr, betas, eps, device)] if groups else [muon]
    raise ValueError(f"unknown optimizer {optimizer!r}; use adamw or muon")


def set_lr(optimizers: list[torch.optim.Optimizer], factor: float) -> float:
    """Scale every group's peak learning rate by `factor`; returns the first group's new rate."""
    for opt in optimizers:
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * factor
    return optimizers[-1].param_groups[0]["lr"]
