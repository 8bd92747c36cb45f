"""Normalisation layers. RMSNorm has two cast orders, and real checkpoints depend on which."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from acik.kernels import cpu_training


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6, cast: str = "before"):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.cast = cast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fp32 = x.dtype == self.weight.dtype == torch.float32
        if fp32 and torch.is_grad_enabled() and cpu_training.supports(x, x.shape[-1]):
            return cpu_training.rms_norm(x, self.weight, self.eps)  # training on a CPU: one pass each way
        # F.rms_norm computes in fp32 and rounds once to x's dtype, the weight applied before that
        # rounding: bit-identical to the float()/pow/mean/rsqrt spelling (tests/test_engine_step.py
        # holds it to that), in fewer operators.
        if self.cast == "before":  # Llama: back to the input dtype, then scale
            return self.weight * F.rms_norm(x, self.weight.shape, None, self.eps)
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)  # OLMo-2, gpt-oss: scale in fp32, then cast


def make_norm(config, dim: int | None = None) -> nn.Module:
    dim = dim or config.hidden_size
    if config.norm_type == "layernorm":
        return nn.LayerNorm(dim, eps=config.norm_eps, bias=config.norm_bias)
    return RMSNorm(dim, eps=config.norm_eps, cast=config.rmsnorm_cast)
