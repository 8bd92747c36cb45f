"""torchrun integration: process group setup, DDP or FSDP2 wrapping, and small collective helpers.

Run under `torchrun --nproc-per-node N -m acik train ...`; without torchrun's environment the
same code runs as one process with no process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from acik.devices import resolve_device


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    mesh: object | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    device = resolve_device(name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def setup(device: str = "auto") -> Dist:
    """Join torchrun's process group if there is one (gloo on CPU, NCCL on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    mesh = None
    if world > 1:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(dev.type, (world,))
    return Dist(rank, world, local_rank, dev, mesh)


def teardown() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap(model: nn.Module, d: Dist, parallel: str, activation_checkpointing: bool = False) -> nn.Module:
    """Wrap for data parallelism: "ddp" replicates, "fsdp" shards parameters, gradients and optimizer
    state (FSDP2 `fully_shard` on each block, then the whole model)."""
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    if not d.enabled:
        return model
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model.model.layers:
            fully_shard(layer, mesh=d.mesh)
        fully_shard(model, mesh=d.mesh)
        return model
    raise ValueError(f"unknown parallel mode {parallel!r}; use ddp or fsdp")


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in the backward pass instead of storing them."""
    from torch.utils.checkpoint import checkpoint

    for layer in model.model.layers:
        if getattr(layer, "_acik_checkpointed", False):
            continue
        inner = layer.forward

        def forward(*args, _inner=inner, **kwargs):
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        layer.forward = forward
        layer._acik_checkpointed = True


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def all_reduce_sum(value: torch.Tensor, d: Dist) -> torch.Tensor:
    """The sum of `value` over processes, on `value`'s device (NCCL reduces only GPU tensors, so a CPU
    tensor travels through this process's device)."""
    if d.enabled:
        out = value.to(d.device, copy=True)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.to(value.device)
    return value


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()
