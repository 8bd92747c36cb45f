"""acik's own weight-only matmuls for x86-64 CPUs (cpu_matmul.c), built on first use: int8 (one scale per output,
or one per block of inputs as GGUF's Q8_0), int4, and a table kernel for the 4-bit formats whose levels are not
evenly spaced (NF4, MXFP4; AVX-512 only).

PyTorch's `_weight_int8pack_mm` reads int8 weights at about a third of this project's CPU's memory speed,
so int8 decode was barely faster than bf16, and PyTorch has no NF4 or MXFP4 kernel at all. The C kernels
multiply the weights by int16-quantized activations with AVX-512 VNNI (or AVX2) integer dot products over
blocked weight layouts (docs/quantization.md "acik's CPU kernels").

Built on first use by acik.kernels.build (cached per machine; `ACIK_CPU_KERNELS=0` turns it off). Where it
cannot be built, `available()` is False and the quantized layers use PyTorch's kernels or dequantize per call.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from acik.kernels import build


@functools.cache
def _library(march: str) -> ctypes.CDLL | None:
    lib = build.compile_library("cpu_matmul", march)
    if lib is None:
        return None
    lib.acik_int8_matmul.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 3 + [ctypes.c_int] * 2
    lib.acik_int8_matmul.restype = ctypes.c_int
    lib.acik_int4_matmul.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 4 + [ctypes.c_int] * 2
    lib.acik_int4_matmul.restype = ctypes.c_int
    lib.acik_lut4_matmul.argtypes = ([ctypes.c_void_p] * 5 + [ctypes.c_int64] * 4 + [ctypes.c_void_p, ctypes.c_float]
                                     + [ctypes.c_int] * 3)
    lib.acik_lut4_matmul.restype = ctypes.c_int
    lib.acik_int8b_matmul.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 4 + [ctypes.c_int] * 2
    lib.acik_int8b_matmul.restype = ctypes.c_int
    lib.acik_isa.restype = ctypes.c_int
    return lib


_KERNEL: list = [None] * 4  # acik_int8_matmul, acik_int4_matmul, acik_lut4_matmul, acik_int8b_matmul: looked up once


def library() -> ctypes.CDLL | None:
    """The built kernel for this machine, or None where it cannot be used."""
    if not build.enabled():
        return None
    lib = _library(build.march())
    if lib is not None:
        _KERNEL[:] = [lib.acik_int8_matmul, lib.acik_int4_matmul, lib.acik_lut4_matmul, lib.acik_int8b_matmul]
    return lib


def available() -> bool:
    return library() is not None


def isa() -> str | None:
    """Which instruction set the kernel was built for: "avx512-vnni", "avx2", or None."""
    lib = library()
    return None if lib is None else {512: "avx512-vnni", 256: "avx2"}[lib.acik_isa()]


def supports(out_features: int, in_features: int, group_size: int | None = None) -> bool:
    """Whether the int8 kernel (group_size None) or the int4 kernel takes a layer of this shape."""
    if group_size is None:
        return out_features % 16 == 0 and in_features % 2 == 0
    return out_features % 16 == 0 and group_size % 8 == 0 and in_features % group_size == 0


def supports_int8_blocks(in_features: int, group_size: int) -> bool:
    """Whether the int8 block kernel takes blocks of `group_size` inputs (any number of outputs)."""
    return group_size % 32 == 0 and group_size <= 4096 and in_features % group_size == 0


def block(weight: torch.Tensor) -> torch.Tensor:
    """int8 [out, in] -> the kernel's layout [out/16, in/2, 16, 2] (blocks of 16 outputs x 2 inputs)."""
    n, k = weight.shape
    return weight.reshape(n // 16, 16, k // 2, 2).permute(0, 2, 1, 3).contiguous()


def unblock(blocked: torch.Tensor) -> torch.Tensor:
    """The inverse of `block`: int8 [out, in]."""
    nb, kp = blocked.shape[:2]
    return blocked.permute(0, 2, 1, 3).reshape(nb * 16, kp * 2)


def _empty_out(x: torch.Tensor, n: int) -> torch.Tensor:
    """x.shape[:-1] + (n,), allocated with plain integer sizes: 1 µs less than a shape tuple, per matmul."""
    shape = x.shape
    if len(shape) == 3:
        return torch.empty(shape[0], shape[1], n, dtype=x.dtype)
    if len(shape) == 2:
        return torch.empty(shape[0], n, dtype=x.dtype)
    return torch.empty((*shape[:-1], n), dtype=x.dtype)


def _launch(which: int, x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None,
            *extra) -> torch.Tensor:
    """Kernel `which` (0: int8; 1: int4, `extra` the group size; 2: table, `extra` the group size, the table, its
    unit and whether the scales are E8M0; 3: int8 blocks, `extra` the group size, `weight` the codes [out, in]) on
    x [..., in] -> [..., out]. A decode step makes ~50-85 of these calls, so this path avoids every tensor
    operation it can."""
    if x.dtype not in (torch.float32, torch.bfloat16):
        return _launch(which, x.float(), weight, scales, bias, *extra).to(x.dtype)
    if not x.is_contiguous():
        x = x.contiguous()
    n, k = weight.shape[0] * (16 if which != 3 else 1), x.shape[-1]
    y = _empty_out(x, n)
    rows = x.numel() // k
    kernel = _KERNEL[which]
    if kernel is None:
        library()
        kernel = _KERNEL[which]
    extra = tuple(e.data_ptr() if isinstance(e, torch.Tensor) else e for e in extra)
    err = rows and kernel(weight.data_ptr(), scales.data_ptr(), 0 if bias is None else bias.data_ptr(), x.data_ptr(),
                          y.data_ptr(), rows, n, k, *extra, x.dtype == torch.bfloat16, torch.get_num_threads())
    if err == -1:
        raise MemoryError("acik's CPU kernel could not allocate its activation buffers")
    if err:
        raise RuntimeError(f"acik's CPU kernel {which} is not in this build (isa {isa()}); check supports_table()")
    return y


@torch.library.custom_op("acik::int8_matmul", mutates_args=())
def _int8_matmul_op(x: torch.Tensor, blocked: torch.Tensor, scale: torch.Tensor,
                    bias: torch.Tensor | None) -> torch.Tensor:
    return _launch(0, x, blocked, scale, bias)


@_int8_matmul_op.register_fake
def _(x: torch.Tensor, blocked: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], blocked.shape[0] * 16)


def int8_matmul(x: torch.Tensor, blocked: torch.Tensor, scale: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., in] @ (codes * scale)^T + bias, with `blocked` = block(codes) int8, `scale` and `bias` fp32
    [out], all on CPU; x fp32 or bf16 (others compute in fp32). Call only where `available()`."""
    if torch.compiler.is_compiling():  # opaque to inductor, which fuses around it
        return _int8_matmul_op(x, blocked, scale, bias)
    return _launch(0, x, blocked, scale, bias)  # eager: the direct call skips the dispatcher's few µs


def block_int4(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int4 codes uint8 0..15 [out, in] with fp16 scale and zero [out, in/group] (w = (code - zero) * scale) ->
    the kernel's layout: uint8 [out/16, in/8, 16, 4] (byte 4j + t: output j's codes for inputs t and 4 + t of
    each 8, low and high nibble) and fp16 [out/16, groups, 2, 16] (scale, then zero: as stored, no bigger)."""
    n, k = codes.shape
    c = codes.to(torch.uint8).reshape(n // 16, 16, k // 8, 2, 4)
    packed = (c[:, :, :, 0] | (c[:, :, :, 1] << 4)).permute(0, 2, 1, 3).contiguous()
    so = torch.stack([scale.half(), zero.half()], dim=-1).reshape(n // 16, 16, -1, 2).permute(0, 2, 3, 1).contiguous()
    return packed, so


@torch.library.custom_op("acik::int4_matmul", mutates_args=())
def _int4_matmul_op(x: torch.Tensor, packed: torch.Tensor, so: torch.Tensor, group_size: int,
                    bias: torch.Tensor | None) -> torch.Tensor:
    return _launch(1, x, packed, so, bias, group_size)


@_int4_matmul_op.register_fake
def _(x: torch.Tensor, packed: torch.Tensor, so: torch.Tensor, group_size: int,
      bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], packed.shape[0] * 16)


def int4_matmul(x: torch.Tensor, packed: torch.Tensor, so: torch.Tensor, group_size: int,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., in] @ dequantized^T + bias, with (packed, so) = block_int4(...) and `bias` fp32 [out], all on
    CPU; x fp32 or bf16 (others compute in fp32). Call only where `available()`."""
    if torch.compiler.is_compiling():
        return _int4_matmul_op(x, packed, so, group_size, bias)
    return _launch(1, x, packed, so, bias, group_size)


def supports_table() -> bool:
    """Whether the table kernel (NF4) is built here: it needs AVX-512 (vpermw); the AVX2 build has none."""
    return isa() == "avx512-vnni"


def block_table(codes: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """4-bit codes uint8 [out, in] with one scale per group [out, in/group], fp16 or E8M0 bytes (uint8: 2^(e-127))
    -> the table kernel's layout: uint8 [out/16, in/2, 16] (byte j: output j's codes for a pair of inputs, low
    nibble first) and the scales [out/16, groups, 16] in their own dtype."""
    n, k = codes.shape
    c = codes.to(torch.uint8).reshape(n // 16, 16, k // 2, 2)
    packed = (c[..., 0] | (c[..., 1] << 4)).permute(0, 2, 1).contiguous()
    sc = (scale if scale.dtype == torch.uint8 else scale.half()).reshape(n // 16, 16, -1).permute(0, 2, 1)
    sc = sc.contiguous()
    return packed, sc


def table_matmul(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, table: torch.Tensor, unit: float,
                 group_size: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., in] @ (table[codes] * unit * scale)^T + bias, with (packed, scale) = block_table(...), `table`
    int16 [32] (entries 0-15 used, |v| <= 2047), all on CPU. Call only where `supports_table()`."""
    if torch.compiler.is_compiling():
        return _table_matmul_op(x, packed, scale, table, unit, group_size, bias)
    return _launch(2, x, packed, scale, bias, group_size, table, unit, scale.dtype == torch.uint8)


@torch.library.custom_op("acik::table_matmul", mutates_args=())
def _table_matmul_op(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, table: torch.Tensor, unit: float,
                     group_size: int, bias: torch.Tensor | None) -> torch.Tensor:
    return _launch(2, x, packed, scale, bias, group_size, table, unit, scale.dtype == torch.uint8)


@_table_matmul_op.register_fake
def _(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, table: torch.Tensor, unit: float,
      group_size: int, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], packed.shape[0] * 16)


def int8_block_matmul(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, group_size: int,
                      bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., in] @ (codes * scales per block)^T + bias, with `codes` int8 [out, in] and `scales` fp16
    [out, in / group_size] as stored (GGUF Q8_0 at group_size 32), both contiguous, `bias` fp32 [out], all on
    CPU; x fp32 or bf16 (others compute in fp32). Call only where `available()` and
    `supports_int8_blocks(in, group_size)`."""
    if torch.compiler.is_compiling():
        return _int8_block_matmul_op(x, codes, scales, group_size, bias)
    return _launch(3, x, codes, scales, bias, group_size)


@torch.library.custom_op("acik::int8_block_matmul", mutates_args=())
def _int8_block_matmul_op(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, group_size: int,
                          bias: torch.Tensor | None) -> torch.Tensor:
    return _launch(3, x, codes, scales, bias, group_size)


@_int8_block_matmul_op.register_fake
def _(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, group_size: int,
      bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], codes.shape[0])
