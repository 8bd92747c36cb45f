"""MXFP4 (OCP Microscaling FP4), the format gpt-oss ships its expert weights in.

A weight matrix [..., n_in] is cut into groups of 32 along the input dimension. Each group stores
32 E2M1 codes (4 bits: sign, 2 exponent bits, 1 mantissa bit, so magnitudes 0, .5, 1, 1.5, 2, 3,
4, 6) packed two per byte with the even element in the low nibble (`blocks`, uint8
[..., n_in / 32, 16]), and one shared power-of-two scale as an E8M0 byte with bias 127
(`scales`, uint8 [..., n_in / 32]). That is 4 + 8/32 = 4.25 bits per weight.
"""

from __future__ import annotations

import torch

GROUP = 32
BITS_PER_WEIGHT = 4.25
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
# Midpoints between neighbouring magnitudes: rounding to nearest is a bucketize against these.
_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)


def check_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, name: str = "tensor") -> None:
    """Raise ValueError unless `blocks`/`scales` are a consistent MXFP4 pair."""
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise ValueError(f"{name}: MXFP4 blocks and scales must be uint8, got {blocks.dtype} and {scales.dtype}")
    if blocks.ndim < 2 or blocks.shape[-1] != GROUP // 2:
        raise ValueError(f"{name}: MXFP4 blocks must end in a dimension of {GROUP // 2} bytes (32 codes), "
                         f"got shape {tuple(blocks.shape)}")
    if tuple(scales.shape) != tuple(blocks.shape[:-1]):
        raise ValueError(f"{name}: MXFP4 scales have shape {tuple(scales.shape)} but the blocks "
                         f"{tuple(blocks.shape)} need one scale per group, shape {tuple(blocks.shape[:-1])}")


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """blocks uint8 [..., G, 16], scales uint8 [..., G] -> weights [..., G * 32] in `dtype`."""
    check_mxfp4(blocks, scales)
    lut = torch.tensor(FP4_VALUES, dtype=torch.float32, device=blocks.device)
    codes = torch.stack((blocks & 0x0F, blocks >> 4), dim=-1).long()  # low nibble first: even element
    values = lut[codes].flatten(-2)  # [..., G, 32]
    # ldexp is exact for powers of two, in fp32, then one rounding into the target dtype.
    values = torch.ldexp(values, (scales.to(torch.int32) - 127)[..., None].float())
    return values.flatten(-2).to(dtype)


def quantize_mxfp4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weights [..., n_in] (n_in a multiple of 32) -> (blocks uint8 [..., n_in/32, 16], scales uint8 [..., n_in/32]).

    Each group's scale is the smallest power of two that brings its largest magnitude within
    E2M1's range (6), so nothing clips; each value then rounds to the nearest E2M1 code."""
    if w.shape[-1] % GROUP:
        raise ValueError(f"MXFP4 needs the input dimension to be a multiple of {GROUP}, got {w.shape[-1]}")
    groups = w.detach().float().reshape(*w.shape[:-1], w.shape[-1] // GROUP, GROUP)
    amax = groups.abs().amax(dim=-1)
    exponent = torch.ceil(torch.log2(amax / 6.0)).nan_to_num(0.0, neginf=0.0, posinf=0.0)
    exponent = exponent.clamp(-127, 127)
    scaled = groups / torch.exp2(exponent)[..., None]
    magnitude = torch.bucketize(scaled.abs().contiguous(), torch.tensor(_MIDPOINTS, device=w.device))
    codes = (magnitude | ((scaled < 0).long() << 3)).to(torch.uint8)  # sign bit 3
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    scales = (exponent + 127).to(torch.uint8)
    return blocks.contiguous(), scales.contiguous()


def mxfp4_bytes(n_weights: int) -> int:
    """Bytes MXFP4 needs for `n_weights` weights (packed codes plus one scale per 32)."""
    return n_weights // 2 + n_weights // GROUP
