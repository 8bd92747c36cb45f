"""Normalisation layers. RMSNorm has two cast orders, and real checkpoints depend on which."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6, cast: str = "before"):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.cast = cast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.cast == "before":  # Llama: back to the input dtype, then scale
            return self.weight * h.to(dtype)
        return (self.weight * h).to(dtype)  # OLMo-2, gpt-oss: scale in fp32, then cast


def make_norm(config, dim: int | None = None) -> nn.Module:
    dim = dim or config.hidden_size
    if config.norm_type == "layernorm":
        return nn.LayerNorm(dim, eps=config.norm_eps, bias=config.norm_bias)
    return RMSNorm(dim, eps=config.norm_eps, cast=config.rmsnorm_cast)
