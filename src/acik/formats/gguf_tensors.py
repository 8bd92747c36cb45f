"""GGUF tensor data -> the layouts acik holds: llama.cpp's quantized blocks decoded into acik's int4, int8 and
MXFP4 buffers without going through float where acik runs the type as stored, and float otherwise.

llama.cpp's block layouts (ggml-common.h), each block covering 32 consecutive inputs of one row unless noted:
  Q4_0   fp16 d, 16 bytes of nibbles            w = d * (q - 8)
  Q4_1   fp16 d, fp16 m, 16 bytes of nibbles    w = d * q + m
  Q8_0   fp16 d, 32 int8 codes                  w = d * q
  MXFP4  E8M0 byte e, 16 bytes of E2M1 nibbles  w = fp4(q) * 2^(e - 127)
  Q4_K   256 inputs: fp16 d, fp16 dmin, 12 bytes of 6-bit sub-block scales and mins, 128 bytes of nibbles;
         each 32-input sub-block s has w = d * sc[s] * q - dmin * m[s]
In the 4-bit types the low nibbles of a block's 16 bytes are inputs 0..15 and the high nibbles 16..31 (Q4_K: per
64 inputs, low nibbles 0..31, high 32..63). acik packs two codes a byte with the even input low, so the codes are
reordered, never changed.
"""

from __future__ import annotations

import numpy as np
import torch

INT4_GROUP = 32
INT8_GROUP = 32


def _blocks(raw: np.ndarray, rows: int, block_bytes: int) -> np.ndarray:
    """The tensor's bytes as uint8 [rows, blocks per row, block_bytes], a view of the file's memory map."""
    return np.asarray(raw).reshape(rows, -1, block_bytes)


def _fp16(b: np.ndarray) -> torch.Tensor:
    """Two little-endian bytes per block [..., 2] -> fp16 [...] (a copy, off the memory map)."""
    return torch.from_numpy(np.ascontiguousarray(b).view(np.float16)[..., 0].copy())


def to_torch(a: np.ndarray) -> torch.Tensor:
    """A contiguous tensor that owns its memory: never a view of the file's memory map, which would keep the
    file's pages as the model's storage (read-only, and unaligned for the packed kernels)."""
    a = np.ascontiguousarray(a)
    base = a
    while base is not None:
        if isinstance(base, (np.memmap, memoryview)) or type(base).__name__ == "mmap":
            return torch.from_numpy(a.copy())
        base = getattr(base, "base", None)
    return torch.from_numpy(a)


def _pack_even_low(codes: np.ndarray) -> np.ndarray:
    """uint8 codes [rows, n] (n even) -> [rows, n/2], input 2k in the low nibble of byte k (acik's packing)."""
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def _repack(qs: np.ndarray) -> np.ndarray:
    """llama.cpp's 16 nibble bytes per block [..., 16] -> acik's packing of the same 32 codes [..., 16], byte to
    byte: inputs 2k and 2k+1 are the low nibbles of bytes 2k and 2k+1 for k < 8, their high nibbles (bytes 2k-16
    and 2k-15) after. (The byte shuffles run in numpy: single-threaded, they stay fast on a busy machine where
    PyTorch's threads spin.)"""
    even, odd = qs[..., 0::2], qs[..., 1::2]
    return np.concatenate([(even & 0x0F) | (odd << 4), (even >> 4) | (odd & 0xF0)], axis=-1)


def q4_to_int4(raw: np.ndarray, rows: int, cols: int, kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_0 or Q4_1 blocks -> acik's int4 group-32 buffers (packed uint8 [rows, cols/2], scale and zero fp16
    [rows, cols/32]) with w = (code - zero) * scale. Q4_0's zero is 8, exact. Q4_1's is -m/d rounded to fp16, so
    a weight moves by at most |m| * 2^-11 (fp16's rounding of the zero point, times d)."""
    size = 18 if kind == "Q4_0" else 20
    b = _blocks(raw, rows, size)
    d = _fp16(b[..., 0:2])
    packed = to_torch(_repack(b[..., size - 16:]).reshape(rows, cols // 2))
    if kind == "Q4_0":
        return packed, d, torch.full_like(d, 8.0)
    return _affine(packed, d.float(), _fp16(b[..., 2:4]).float())


def _affine(packed: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor) \
        -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Groups stored as w = scale * code + minimum (codes packed as acik packs them, [rows, cols/2]) -> acik's
    (packed, scale, zero) with zero = -minimum / scale. A group whose scale is 0 (every weight equal to its
    minimum), or whose zero point fp16 cannot hold, is rewritten exactly as codes 0 with zero -1 and
    scale = minimum."""
    rows, half = packed.shape
    zero = -minimum / torch.where(scale == 0, torch.ones_like(scale), scale)
    bad = (scale == 0) | (zero.abs() > 65504) | ~torch.isfinite(zero)
    if bool(bad.any()):
        grouped = packed.reshape(rows, -1, INT4_GROUP // 2).clone()
        grouped[bad] = 0
        packed = grouped.reshape(rows, half)
        scale = torch.where(bad, minimum, scale)
        zero = torch.where(bad, torch.full_like(zero, -1.0), zero)
    return packed, scale.half(), zero.half()


def q4k_to_int4(raw: np.ndarray, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_K super-blocks -> acik's int4 group-32 buffers: each 32-input sub-block is an affine 4-bit grid, so this
    is exact but for fp16's rounding of the combined scale d * sc and of the zero point (dmin * m) / (d * sc)."""
    from gguf.quants import Q4_K

    b = _blocks(raw, rows, 144)
    d = _fp16(b[..., 0:2]).float()[..., None]
    dmin = _fp16(b[..., 2:4]).float()[..., None]
    sc, mins = Q4_K.get_scale_min(np.ascontiguousarray(b[..., 4:16]).reshape(-1, 12))
    sc = torch.from_numpy(sc.astype(np.float32)).reshape(rows, -1, 8)
    mins = torch.from_numpy(mins.astype(np.float32)).reshape(rows, -1, 8)
    qs = b[..., 16:].reshape(rows, -1, 4, 32)  # per 64 inputs: 32 bytes, low nibbles first
    codes = np.stack([qs & 0x0F, qs >> 4], axis=3).reshape(rows, cols)
    packed = to_torch(_pack_even_low(codes))
    scale = (d * sc).reshape(rows, -1)
    minimum = -(dmin * mins).reshape(rows, -1)
    # Round the scale to fp16 first and take the zero point against the rounded scale, so the reconstruction
    # error is the zero point's rounding alone.
    scale = scale.half().float()
    return _affine(packed, scale, minimum)


def q8_0_to_int8(raw: np.ndarray, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Q8_0 blocks -> (codes int8 [rows, cols], scales fp16 [rows, cols/32]), exact."""
    b = _blocks(raw, rows, 34)
    return to_torch(b[..., 2:].view(np.int8).reshape(rows, cols)), _fp16(b[..., 0:2])


def mxfp4_to_acik(raw: np.ndarray, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """MXFP4 blocks of a tensor of `shape` (numpy order, inputs last) -> acik's (blocks uint8 [..., in/32, 16],
    scales uint8 [..., in/32]), exact: the E2M1 codes and E8M0 exponents are the same, only the nibble order
    differs."""
    rows = int(np.prod(shape[:-1]))
    b = _blocks(raw, rows, 17)
    groups = shape[-1] // 32
    blocks = to_torch(_repack(b[..., 1:]).reshape(*shape[:-1], groups, 16))
    return blocks, to_torch(b[..., 0].reshape(*shape[:-1], groups))


def int4_minmax(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float weights [out, in] -> int4 group-32 buffers, each group's 16 levels spanning its own minimum to
    maximum (a fractional fp16 zero point). Used to re-quantize types acik does not run as stored (Q5_K, Q3_K, ...):
    their groups are already on a coarse grid, so min-max loses less than round-to-nearest with an integer zero."""
    rows, cols = w.shape
    g = w.float().reshape(rows, -1, INT4_GROUP)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    scale = ((hi - lo) / 15.0).half().float()
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round((g - lo[..., None]) / safe[..., None]).clamp(0, 15).to(torch.uint8)
    return _affine(to_torch(_pack_even_low(codes.reshape(rows, cols).numpy())), scale, lo)


def unpermute_rows(n_rows: int, n_head: int) -> torch.Tensor:
    """Row order that undoes llama.cpp's `LlamaModel.permute` of a Q or K projection: its converter interleaves
    each head's two rotary halves (rows h, j, i -> h, i, j) for llama.cpp's GPT-J-style rotation; acik, like
    Hugging Face, rotates halves (NeoX style). hf_rows = gguf_rows[index]."""
    if n_rows % (2 * n_head):
        raise ValueError(f"{n_rows} rows do not split into {n_head} heads of an even size")
    return torch.arange(n_rows).reshape(n_head, n_rows // n_head // 2, 2).transpose(1, 2).reshape(-1)


def permute_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's `LlamaModel.permute` of Q or K rows (Hugging Face's rotate-half layout -> GPT-J's interleaved
    one): the inverse of `unpermute_rows`, so the reader and the writer share one definition of the layout."""
    return w.index_select(0, torch.argsort(unpermute_rows(w.shape[0], n_head)))


def qk_heads(config) -> dict[str, int]:
    """The heads of the projections llama.cpp stores permuted, by module name."""
    return {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}
