"""Rotary position embeddings: default, linear, llama3 and YaRN frequency schedules.

Each schedule returns inverse frequencies and an attention factor that scales cos/sin (YaRN's
mscale); the rotation itself is the same for all of them (rotate-half layout, as in HF Llama).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _default_inv_freq(theta: float, dim: int) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def rope_frequencies(config) -> tuple[torch.Tensor, float]:
    dim = int(config.head_dim * config.partial_rotary_factor)
    base = config.rope_theta
    params = dict(config.rope_scaling or {})
    kind = params.get("rope_type", params.get("type", "default"))
    inv_freq = _default_inv_freq(base, dim)
    if kind == "default":
        return inv_freq, 1.0
    if kind == "linear":
        return inv_freq / params["factor"], 1.0
    if kind == "llama3":
        factor = params["factor"]
        low, high = params["low_freq_factor"], params["high_freq_factor"]
        old_len = params["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return torch.where(medium, smoothed, scaled), 1.0
    if kind == "yarn":
        return _yarn(params, base, dim, config.max_position_embeddings)
    raise ValueError(f"unsupported rope_type {kind!r}; acik supports default, linear, llama3 and yarn")


def _yarn(params: dict, base: float, dim: int, max_pos: int) -> tuple[torch.Tensor, float]:
    original = params.get("original_max_position_embeddings") or max_pos
    factor = params.get("factor") or max_pos / original

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        if params.get("mscale") and params.get("mscale_all_dim"):
            attention_factor = mscale(factor, params["mscale"]) / mscale(factor, params["mscale_all_dim"])
        else:
            attention_factor = mscale(factor)
    beta_fast = params.get("beta_fast") or 32
    beta_slow = params.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolate = 1 - ramp  # 1: keep the original frequency (high-frequency dims)
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolate) + (1.0 / pos_freqs) * extrapolate
    return inv_freq, float(attention_factor)


class RotaryEmbedding(nn.Module):
    def __init__(self, config):
        super().__init__()
        inv_freq, self.attention_factor = rope_frequencies(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, T] -> cos, sin [B, 1, T, rot_dim] (1: broadcast over heads), computed in fp32 then
        cast. `sin` has its first half negated: see apply_rope."""
        freqs = positions[..., None].float() * self.inv_freq.float()
        cos, sin = freqs.cos() * self.attention_factor, freqs.sin() * self.attention_factor
        cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)
        return cos.to(dtype)[:, None], sin.to(dtype)[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D]; cos, sin [B, 1, T, R] from RotaryEmbedding, R <= D (partial rotary rotates the first R dims).

    HF's rotate-half form is x * cos + cat(-x2, x1) * sin. With the sign folded into sin's first half, the
    rotated copy is a plain roll by half, and the whole rotation is three operators (it runs twice per layer
    per decode step, so operator count is most of its cost)."""
    rot = cos.shape[-1]
    if rot == x.shape[-1]:
        return torch.addcmul(x * cos, x.roll(rot // 2, -1), sin)
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return torch.cat((torch.addcmul(x_rot * cos, x_rot.roll(rot // 2, -1), sin), x_pass), dim=-1)
