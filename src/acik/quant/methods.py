"""The quantizers: weight matrix [out, in] -> integer codes plus the scales that bring them back.

All are calibration-free and run in seconds on a 124M-parameter model. Every 4-bit method keeps
one code per weight in a uint8 tensor [out, in] here; `pack_nibbles` turns that into two codes per
byte (even element in the low nibble, as gpt-oss's MXFP4 blocks) for storage.
"""

from __future__ import annotations

import torch

from acik.quant.mxfp4 import dequantize_mxfp4, quantize_mxfp4

# QLoRA's NormalFloat4 levels (Dettmers et al. 2023, as bitsandbytes ships them): quantiles of a
# standard normal, rescaled to [-1, 1], with an exact zero.
NF4_LEVELS = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
              -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
              0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
              0.7229568362236023, 1.0)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes 0..15 [..., n] (n even) -> bytes [..., n / 2], the even element in the low nibble."""
    codes = codes.to(torch.uint8)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).contiguous()


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of `pack_nibbles`: bytes [..., n / 2] -> uint8 codes [..., n]."""
    return torch.stack((packed & 0x0F, packed >> 4), dim=-1).flatten(-2)


def _stored(t: torch.Tensor) -> torch.Tensor:
    """Round to float16, the dtype group scales and zeros are stored in (as llama.cpp's Q4_1 and
    compressed-tensors do), so the codes are chosen against the scale that will be used."""
    return t.half().float()


def _groups(w: torch.Tensor, group_size: int) -> torch.Tensor:
    out, n_in = w.shape
    return w.detach().float().reshape(out, n_in // group_size, group_size)


# --- int8: symmetric, one scale per output channel or per block of inputs ---------------------

def quantize_int8(w: torch.Tensor, group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (codes int8 [out, in], scale): per output channel (`group_size` None), scale fp32 [out] and
    w ~= codes * scale[:, None]; per block of `group_size` inputs, scale fp16 [out, in / group_size] and each
    block's weights ~= its codes * its scale (llama.cpp's Q8_0 at group_size 32: fp16 d, then 32 int8 codes)."""
    if group_size is None:
        w = w.detach().float()
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
        codes = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        return codes, scale
    g = _groups(w, group_size)
    # Codes are chosen against the fp16 scale that will be stored; a block whose scale rounds to zero (all
    # weights under ~7e-6) stays zero, and clamping keeps codes symmetric (never -128).
    scale = _stored((g.abs().amax(dim=-1) / 127.0).clamp(max=65504.0))
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round(g / safe[..., None]).clamp(-127, 127) * (scale > 0)[..., None]
    return codes.to(torch.int8).reshape(w.shape), scale.half()


def dequantize_int8(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The inverse of `quantize_int8`, for either scale layout (scale [out] or [out, in / group])."""
    if scale.dim() == 1:
        return (codes.float() * scale.float()[:, None]).to(dtype)
    out, n_in = codes.shape
    g = codes.float().reshape(out, scale.shape[1], -1)
    return (g * scale.float()[..., None]).reshape(out, n_in).to(dtype)


# --- int4: asymmetric, group-wise along the input dimension ----------------------------------

def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round to nearest -> (codes uint8 0..15 [out, in], scale fp16 [out, G], zero fp16 [out, G]) with
    w ~= (codes - zero) * scale per group. The zero point is an integer here (the compressed-tensors
    convention), so 0.0 is exactly representable."""
    g = _groups(w, group_size)
    lo = g.amin(dim=-1).clamp(max=0.0)
    hi = g.amax(dim=-1).clamp(min=0.0)
    scale = _stored(((hi - lo) / 15.0).clamp(min=1e-6))
    zero = torch.round(-lo / scale).clamp(0, 15)
    codes = torch.round(g / scale[..., None] + zero[..., None]).clamp(0, 15)
    return codes.to(torch.uint8).reshape(w.shape), scale.half(), zero.half()


def quantize_int4_hqq(w: torch.Tensor, group_size: int, iters: int = 20, p: float = 0.7, beta: float = 10.0,
                      kappa: float = 1.01, tol: float = 1e-4,
                      chunk: int = 1 << 18) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HQQ (Badri & Shaji 2023): keep the min-max scale, then optimise each group's (fractional) zero
    point by half-quadratic splitting against an l_p (p < 1) error, which tolerates a few outliers
    instead of stretching every group around them. Same layout as `quantize_int4`, with float zeros.

    Each group keeps the best zero point it has seen, so stopping early never makes the result
    worse. Like the hqq package, a pass stops once the error stops improving: here when one iteration
    lowers the summed absolute error by less than `tol` of it (`tol=0`: always `iters` iterations).
    Rows are processed `chunk` weights at a time so the working set stays in cache; with `tol=0` the
    chunking does not change the result."""
    g = _groups(w, group_size)
    rows = max(1, chunk // w.shape[1])
    parts = [_hqq_zero_points(g[r:r + rows], iters, p, beta, kappa, tol) for r in range(0, g.shape[0], rows)]
    codes, scale, zero = (torch.cat(t) for t in zip(*parts))
    return codes.to(torch.uint8).reshape(w.shape), scale.half(), zero.half()


def _hqq_zero_points(g: torch.Tensor, iters: int, p: float, beta: float, kappa: float,
                     tol: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """groups [rows, G, size] -> (codes [rows, G, size] float, scale [rows, G], zero [rows, G]).

    Works in code units (weights divided by the group scale), where the reconstruction is
    code - zero. The proximal step for |e|^p (e the error in weight units) shrinks e by
    |e|^(p-1) / beta; the zero update is then zero -= mean(sign(e) * min(|e|, |e|^(p-1) / beta)),
    which in code units (e = s * u) is mean(sign(u) * min(|u|, |u|^(p-1) * s^(p-2) / beta))."""
    lo, hi = g.amin(dim=-1, keepdim=True), g.amax(dim=-1, keepdim=True)
    scale = _stored((hi - lo).clamp(min=1e-5) / 15.0)
    x = g / scale
    zero = -lo / scale
    best_zero, best_err = zero, torch.full_like(zero, float("inf"))
    total = float("inf")
    for _ in range(iters):
        t = x + zero
        u = t - t.round().clamp_(0, 15)
        a = u.abs()
        group_err = a.mean(dim=-1, keepdim=True)
        better = group_err < best_err
        best_err = torch.where(better, group_err, best_err)
        best_zero = torch.where(better, zero, best_zero)
        now = (best_err * scale).sum().item()  # the weight-unit l1 error of the best zeros so far
        if total - now <= tol * now:
            break
        total = now
        shrink = torch.minimum(a, a.pow(p - 1).mul_(scale.pow(p - 2) / beta))
        zero = zero - torch.copysign(shrink, u).mean(dim=-1, keepdim=True)
        beta *= kappa
    best_zero = _stored(best_zero)
    codes = (x + best_zero).round_().clamp_(0, 15)
    return codes, scale.squeeze(-1), best_zero.squeeze(-1)


def dequantize_int4(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    out, n_in = codes.shape
    g = codes.float().reshape(out, scale.shape[1], -1)
    return ((g - zero.float()[..., None]) * scale.float()[..., None]).reshape(out, n_in).to(dtype)


# --- NF4: normal-float levels times a per-block absmax ---------------------------------------

def quantize_nf4(w: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (codes uint8 0..15 [out, in], absmax fp16 [out, in / block_size]). Blocks run along the
    input dimension of each row, which for row-major storage is bitsandbytes' blocking."""
    g = _groups(w, block_size)
    absmax = _stored(g.abs().amax(dim=-1).clamp(min=1e-6))
    levels = torch.tensor(NF4_LEVELS, device=w.device)
    mid = (levels[1:] + levels[:-1]) / 2
    codes = torch.bucketize((g / absmax[..., None]).contiguous(), mid)
    return codes.to(torch.uint8).reshape(w.shape), absmax.half()


def dequantize_nf4(codes: torch.Tensor, absmax: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    out, n_in = codes.shape
    levels = torch.tensor(NF4_LEVELS, device=codes.device)
    g = levels[codes.long()].reshape(out, absmax.shape[1], -1)
    return (g * absmax.float()[..., None]).reshape(out, n_in).to(dtype)


# --- MXFP4: the OCP microscaling format, codec in acik.quant.mxfp4 ---------------------------

__all__ = ["NF4_LEVELS", "dequantize_int4", "dequantize_int8", "dequantize_mxfp4", "dequantize_nf4", "pack_nibbles",
           "quantize_int4", "quantize_int4_hqq", "quantize_int8", "quantize_mxfp4", "quantize_nf4", "unpack_nibbles"]
