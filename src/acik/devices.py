"""Where a model runs and in what precision: the one place that turns "auto", "cuda" or "bf16" into a torch
device and dtype, for loading, fine-tuning and distributed training alike."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_device(device: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """"auto" (or None): the GPU where torch sees one, else Apple's MPS, else the CPU. "cuda" takes the
    process's own GPU (`local_rank` under torchrun) and fails clearly where torch sees none."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        else:
            return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} asked for, but torch sees no GPU; use device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def resolve_dtype(dtype: str | torch.dtype | None, default: str | torch.dtype = "float32") -> torch.dtype:
    """A torch dtype from its name; "auto" (or None) means `default` (a checkpoint's stored dtype, say)."""
    if dtype in (None, "auto"):
        dtype = default
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)} or auto")
    return DTYPES[dtype]
