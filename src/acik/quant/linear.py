"""Quantized drop-in replacements for `nn.Linear`.

Each layer holds its codes and scales as buffers (what gets saved), computes forward with the
fastest kernel PyTorch has for its layout on the input's device, and implements backward with
respect to its input by dequantizing the weight: the packed kernels have no gradient, and QLoRA
needs one to train adapters on a frozen quantized base. The weights themselves never get a gradient.

Kernels (measured on a 2-core AVX-512 CPU, see docs/quantization.md):
- int8 weight-only: on x86-64 CPUs acik's own kernel (acik.kernels.cpu_matmul: int8 weights times
  int16-quantized activations, about twice as fast as PyTorch's), built on first use; elsewhere, or where it
  cannot be built, `aten._weight_int8pack_mm` (int8 [out, in], one scale per row).
- int4: on x86-64 CPUs acik's own kernel (acik.kernels.cpu_matmul: codes times int16-quantized activations;
  1.1x PyTorch's at one row, 1.25-1.5x at 8-64), elsewhere `aten._weight_int4pack_mm_for_cpu`;
  on CUDA dequantize per call. The CPU kernels need out_features divisible by 16 and take their own packed
  layout, built once on first use.
- w8a8: dynamic per-token int8 activations times int8 weights via `torch._int_mm` (on CUDA it needs
  more than 16 rows, so decode's few rows are zero-padded).
- NF4 and MXFP4: on x86-64 CPUs with AVX-512, acik's table kernel (acik.kernels.cpu_matmul.table_matmul: each
  code looks up an int16 level); elsewhere the weight is dequantized per layer, per call.
Both packed kernels run much faster with bfloat16 activations than float32 ones on this CPU, so
they compute in bfloat16 and hand back the input's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from acik.kernels import cpu_matmul
from acik.quant import methods, mxfp4

KERNEL_DTYPE = torch.bfloat16


class _QuantMatmul(torch.autograd.Function):
    """y = x @ W^T through the layer's kernel; dy/dx via the dequantized W."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: QuantLinear) -> torch.Tensor:
        ctx.layer = layer
        return layer.matmul(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        w = ctx.layer.dequantize(grad.dtype)
        return grad @ w, None


class QuantLinear(nn.Module):
    """Common part: shapes, bias, forward/backward plumbing, and how many bytes the weight takes.
    `__init__` makes an empty layer of the right shapes (to load saved buffers into);
    `from_linear` quantizes an `nn.Linear`."""

    method: str = ""
    group_size: int | None = None
    _kernel: tuple | None = None  # what the layer's CPU kernel reads, built on first use (subclasses)

    def __init__(self, in_features: int, out_features: int, bias: bool, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        # The base is frozen: LoRA trains adapters beside it, never its weights or bias.
        self.bias = nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False) if bias else None

    @property
    def dense_shape(self) -> tuple[int, int]:
        """The float weight this layer stands for (`Transformer.num_parameters` counts it)."""
        return self.out_features, self.in_features

    def _fill(self, linear: nn.Linear, **buffers: torch.Tensor) -> QuantLinear:
        for name, value in buffers.items():
            setattr(self, name, value.to(linear.weight.device))
        if linear.bias is not None:
            self.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return self

    def matmul(self, x: torch.Tensor) -> torch.Tensor:  # x [..., in] -> [..., out], no bias
        return F.linear(x, self.dequantize(x.dtype))

    def _apply(self, fn, recurse=True):
        self._kernel = None  # moved or cast: the kernel's layout is rebuilt from the buffers on next use
        # `model.to(torch.bfloat16)` must move the codes and scales, not round the scales to bf16.
        before = {name: b for name, b in self._buffers.items() if b is not None}
        out = super()._apply(fn, recurse)
        for name, old in before.items():
            if self._buffers[name].dtype != old.dtype:  # keep the stored values; take only the device
                self._buffers[name] = old.to(self._buffers[name].device)
        return out

    def _load_from_state_dict(self, *args, **kwargs):
        self._kernel = None
        return super()._load_from_state_dict(*args, **kwargs)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight [out, in] these codes stand for, in `dtype`."""
        raise NotImplementedError

    def _empty(self, out_features: int, bias: bool) -> QuantLinear:
        """A layer of this one's kind and settings with `out_features` outputs, on the meta device."""
        raise NotImplementedError

    @classmethod
    def concat(cls, layers: list[nn.Module]) -> QuantLinear | None:
        """One layer computing `layers`' outputs side by side (acik.model.inference fuses projections so), or
        None where they differ in kind or settings. Every layout here keeps its codes and scales with
        out_features first, so fusing is concatenation."""
        first = layers[0]
        if any(type(m) is not cls or m.in_features != first.in_features or m.group_size != first.group_size
               or m.method != first.method for m in layers):
            return None
        fused = first._empty(sum(m.out_features for m in layers), any(m.bias is not None for m in layers))
        for name in first._buffers:
            setattr(fused, name, torch.cat([m._buffers[name] for m in layers]))
        if fused.bias is not None:
            like = next(m.bias for m in layers if m.bias is not None)
            fused.bias = nn.Parameter(torch.cat([m.bias if m.bias is not None else like.new_zeros(m.out_features)
                                                 for m in layers]), requires_grad=False)
        return fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _QuantMatmul.apply(x, self) if torch.is_grad_enabled() and x.requires_grad else self.matmul(x)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    @property
    def weight_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers(recurse=False))

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.weight_bytes / (self.in_features * self.out_features)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.group_size else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"method={self.method}{group}, bits_per_weight={self.bits_per_weight:.2f}")


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


class Int8Linear(QuantLinear):
    """Symmetric int8 weights `weight` int8 [out, in] with either one scale per output channel (`group_size`
    None: `weight_scale` fp32 [out]) or one per block of `group_size` consecutive inputs (`weight_scale` fp16
    [out, in / group_size]; at 32 this is llama.cpp's Q8_0, whose blocks are an fp16 scale and 32 codes).
    Block scales stay fp16 as GGUF stores them: exact for Q8_0 files, half the bytes of fp32 (8.5 bits per
    weight in all), and the kernel widens them for free (vcvtph2ps).

    With `activations=True` (w8a8, per channel only) the input is quantized per token on the fly too and the
    matmul runs in int8 (`torch._int_mm`), which pays off where compute, not memory, is the limit (prefill,
    batches).

    Kernels on CPU: per channel, acik's blocked int8 kernel (its own layout, built on first use); per block,
    acik's block kernel reads `weight` and `weight_scale` as stored (no second layout), so a tied output head
    can share them with a `QuantEmbedding` (`Int8Linear.tied_to`). Elsewhere the weight is dequantized per call
    (per block) or PyTorch's `_weight_int8pack_mm` runs (per channel)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, activations: bool = False, device=None,
                 group_size: int | None = None):
        super().__init__(in_features, out_features, bias, device)
        if group_size is not None and (activations or group_size < 1 or in_features % group_size):
            raise ValueError(f"int8 blocks of {group_size} inputs need in_features ({in_features}) divisible by it "
                             "and weight-only int8 (w8a8 keeps one scale per channel)")
        self.group_size = group_size
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        scale_shape = (out_features,) if group_size is None else (out_features, in_features // group_size)
        self.register_buffer("weight_scale", torch.ones(scale_shape, device=device,
                                                        dtype=torch.float32 if group_size is None else torch.float16))
        self.activations = activations
        self.method = "w8a8" if activations else "int8"

    @classmethod
    def from_linear(cls, linear: nn.Linear, activations: bool = False, group_size: int | None = None) -> Int8Linear:
        """Quantize `linear`: one scale per output channel, or (`group_size=32`) one fp16 scale per block of 32
        inputs, as llama.cpp's Q8_0."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, activations, "meta", group_size)
        codes, scale = methods.quantize_int8(linear.weight, group_size)
        return layer._fill(linear, weight=codes, weight_scale=scale)

    @classmethod
    def from_blocks(cls, codes: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None) -> Int8Linear:
        """A layer from block-quantized weights as stored, e.g. a GGUF Q8_0 tensor: `codes` int8 [out, in],
        `scales` [out, in / group] (fp16, as Q8_0's `d`; other float dtypes are rounded to fp16) with
        w[o, i] = codes[o, i] * scales[o, i // group]; `bias` [out] or None. The tensors are kept, not copied,
        where they already have these dtypes and are contiguous."""
        if codes.dtype != torch.int8 or codes.dim() != 2 or scales.dim() != 2 or scales.shape[0] != codes.shape[0] \
                or scales.shape[1] < 1 or codes.shape[1] % scales.shape[1]:
            raise ValueError(f"from_blocks takes int8 codes [out, in] and scales [out, in / group]; got codes "
                             f"{codes.dtype} {tuple(codes.shape)} and scales {tuple(scales.shape)}")
        out_features, in_features = codes.shape
        layer = cls(in_features, out_features, bias is not None, device="meta",
                    group_size=in_features // scales.shape[1])
        layer.weight, layer.weight_scale = codes.contiguous(), scales.to(torch.float16).contiguous()
        if bias is not None:
            layer.bias = nn.Parameter(bias.detach().float().to(codes.device), requires_grad=False)
        return layer

    @classmethod
    def tied_to(cls, embedding: nn.Module, bias: torch.Tensor | None = None) -> Int8Linear:
        """The output head over a `QuantEmbedding`'s codes and scales (tie_word_embeddings): the same tensors,
        not a copy: `model.lm_head = Int8Linear.tied_to(model.model.embed_tokens)`."""
        return cls.from_blocks(embedding.weight, embedding.weight_scale, bias)

    def codes(self) -> torch.Tensor:
        if "weight" not in self._buffers:  # for_inference kept only the kernel's layout
            return cpu_matmul.unblock(self.kernel_weight)
        return self.weight

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return methods.dequantize_int8(self.codes(), self.weight_scale, dtype)

    def _empty(self, out_features: int, bias: bool) -> Int8Linear:
        return Int8Linear(self.in_features, out_features, bias, self.activations, "meta", self.group_size)

    def _own_kernel(self) -> bool:
        if self.activations or self.weight_scale.device.type != "cpu":
            return False
        if self.group_size is None:
            return cpu_matmul.supports(self.out_features, self.in_features) and cpu_matmul.available()
        return cpu_matmul.supports_int8_blocks(self.in_features, self.group_size) and cpu_matmul.available()

    def _kernel_weights(self) -> tuple:
        if self._kernel is None:
            bias = None if self.bias is None else self.bias.detach().float().contiguous()
            if self.group_size is not None:  # the block kernel reads the stored buffers; elsewhere dequantize
                self._kernel = (("acik-blocks", self.weight.contiguous(), self.weight_scale.contiguous(), bias)
                                if self._own_kernel() else ("dequantize", None, None, None))
            elif self._own_kernel():
                weight = self._buffers.get("kernel_weight")
                blocked = cpu_matmul.block(self.weight) if weight is None else weight
                self._kernel = ("acik", blocked, self.weight_scale.float().contiguous(), bias)
            else:  # cast once, not per token (85 casts a decoded token at 124M)
                self._kernel = ("aten", self.codes(), self.weight_scale.to(KERNEL_DTYPE), None)
        return self._kernel

    def for_inference(self) -> None:
        """Keep only acik's kernel layout (acik.model.inference.optimize: the model will only run forward), so
        the codes are not held twice. Block-scaled layers already are the block kernel's layout."""
        if self.group_size is None and "weight" in self._buffers and self._own_kernel():
            self.register_buffer("kernel_weight", self._kernel_weights()[1], persistent=False)
            del self._buffers["weight"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self._kernel or self._kernel_weights()
        if kernel[0] in ("acik", "acik-blocks") and not (x.requires_grad and torch.is_grad_enabled()):
            if kernel[0] == "acik-blocks":
                return cpu_matmul.int8_block_matmul(x, *kernel[1:3], self.group_size, kernel[3])  # adds the bias
            return cpu_matmul.int8_matmul(x, *kernel[1:])  # adds the bias too
        return super().forward(x)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        flat = _flat(x)
        if self.activations:
            xs = (flat.float().abs().amax(dim=1, keepdim=True) / 127.0).clamp(min=1e-12)
            xq = torch.round(flat.float() / xs).clamp(-127, 127).to(torch.int8)
            rows = xq.shape[0]
            if xq.is_cuda and rows <= 16:  # CUDA's int8 GEMM wants more than 16 rows (decode has 1-8)
                xq = F.pad(xq, (0, 0, 0, 17 - rows))
            y = torch._int_mm(xq, self.weight.t())[:rows].float() * xs * self.weight_scale
        else:
            kind, weight, scale, _ = self._kernel_weights()
            if kind == "dequantize":
                return super().matmul(x)
            if kind == "acik-blocks":
                return cpu_matmul.int8_block_matmul(x, weight, scale, self.group_size)
            if kind == "acik":
                return cpu_matmul.int8_matmul(x, weight, scale)
            y = torch.ops.aten._weight_int8pack_mm(flat.to(KERNEL_DTYPE), weight, scale)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


class Int4Linear(QuantLinear):
    """Asymmetric 4-bit weights in groups of `group_size` along the input dimension, round to
    nearest (`hqq=False`) or with HQQ-optimised fractional zero points (`hqq=True`).
    Buffers: `weight_packed` uint8 [out, in/2] (two codes a byte, even element low), `weight_scale`
    and `weight_zero` fp16 [out, in/group] with w = (code - zero) * scale."""

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int, hqq: bool = False,
                 device=None):
        super().__init__(in_features, out_features, bias, device)
        self.group_size = group_size
        self.method = "int4-hqq" if hqq else "int4"
        groups = in_features // group_size
        self.register_buffer("weight_packed", torch.zeros(out_features, in_features // 2, dtype=torch.uint8,
                                                          device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, groups, dtype=torch.float16, device=device))
        self.register_buffer("weight_zero", torch.zeros(out_features, groups, dtype=torch.float16, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int, hqq: bool = False) -> Int4Linear:
        quantize = methods.quantize_int4_hqq if hqq else methods.quantize_int4
        codes, scale, zero = quantize(linear.weight, group_size)
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size, hqq, "meta")
        return layer._fill(linear, weight_packed=methods.pack_nibbles(codes), weight_scale=scale, weight_zero=zero)

    def codes(self) -> torch.Tensor:
        return methods.unpack_nibbles(self.weight_packed)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return methods.dequantize_int4(self.codes(), self.weight_scale, self.weight_zero, dtype)

    def _empty(self, out_features: int, bias: bool) -> Int4Linear:
        return Int4Linear(self.in_features, out_features, bias, self.group_size, self.method == "int4-hqq", "meta")

    def _own_kernel(self) -> bool:
        return (self.weight_scale.device.type == "cpu"
                and cpu_matmul.supports(self.out_features, self.in_features, self.group_size)
                and cpu_matmul.available())

    def _kernel_weights(self) -> tuple:
        """(kind, packed weight, scales-and-offsets): acik's int4 kernel's layout ("acik") or PyTorch's ("aten")."""
        if self._kernel is None and "kernel_weight" in self._buffers:  # for_inference kept only these
            self._kernel = (self.kernel_kind, self.kernel_weight, self.kernel_scales)
        if self._kernel is None and self._own_kernel():
            self._kernel = ("acik", *cpu_matmul.block_int4(self.codes(), self.weight_scale, self.weight_zero))
        if self._kernel is None:
            # The kernel computes (code - 8) * scale + offset; ours is (code - zero) * scale.
            scale = self.weight_scale.float()
            offset = (8.0 - self.weight_zero.float()) * scale
            sz = torch.stack([scale.t(), offset.t()], dim=-1).contiguous().to(KERNEL_DTYPE)
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(self.codes().to(torch.int32), 1)
            self._kernel = ("aten", packed, sz)
        return self._kernel

    def for_inference(self) -> None:
        """Keep only the CPU kernel's layout (acik.model.inference.optimize: the model will only run forward).
        Otherwise the stored nibbles and scales stay beside it, and the layer takes twice its size in memory."""
        if "weight_packed" not in self._buffers or self.out_features % 16 or self.weight_packed.device.type != "cpu":
            return
        self.kernel_kind, packed, sz = self._kernel_weights()
        self.register_buffer("kernel_weight", packed, persistent=False)
        self.register_buffer("kernel_scales", sz, persistent=False)
        for name in ("weight_packed", "weight_scale", "weight_zero"):
            del self._buffers[name]

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        # The CPU kernels' layouts need out_features % 16 == 0; elsewhere (and on GPUs, untested
        # here) dequantize per call instead.
        if self.out_features % 16 or x.device.type != "cpu":
            return super().matmul(x)
        kind, packed, sz = self._kernel or self._kernel_weights()
        if kind == "acik":
            return cpu_matmul.int4_matmul(x, packed, sz, self.group_size)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(_flat(x).to(KERNEL_DTYPE), packed, self.group_size, sz)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


class TableLinear(QuantLinear):
    """4-bit codes that stand for a table of levels times a scale per group (NF4, MXFP4). On x86-64 CPUs with
    AVX-512 they run acik's table kernel (acik.kernels.cpu_matmul.table_matmul: each code looks up an int16 level,
    `TABLE` = the levels / `UNIT`); elsewhere each call dequantizes the weight. Subclasses say how their stored
    buffers (`STORED`) give codes and group scales (`_table_inputs`)."""

    TABLE: torch.Tensor
    UNIT: float
    STORED: tuple[str, ...]

    def _table_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes uint8 [out, in], scales [out, in/group]: fp16, or uint8 E8M0 exponents)."""
        raise NotImplementedError

    def _kernel_weights(self) -> tuple | None:
        """The table kernel's layout (codes, scales), or None where it does not run. Either answer is kept until the
        layer moves (an empty tuple for "none"), so a machine without the kernel does not ask again per call."""
        if self._kernel is None and "kernel_weight" in self._buffers:  # for_inference kept only these
            self._kernel = (self.kernel_weight, self.kernel_scales)
        if self._kernel is None:
            runs = (self._buffers[self.STORED[0]].device.type == "cpu" and self.out_features % 16 == 0
                    and cpu_matmul.available() and cpu_matmul.supports_table())
            self._kernel = cpu_matmul.block_table(*self._table_inputs()) if runs else ()
        return self._kernel or None

    def for_inference(self) -> None:
        """Keep only the table kernel's layout (acik.model.inference.optimize), not the stored codes beside it."""
        if self.STORED[0] in self._buffers and self._kernel_weights() is not None:
            packed, scales = self._kernel
            self.register_buffer("kernel_weight", packed, persistent=False)
            self.register_buffer("kernel_scales", scales, persistent=False)
            for name in self.STORED:
                del self._buffers[name]

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self._kernel_weights() if x.device.type == "cpu" else None
        if kernel is None:
            return super().matmul(x)
        return cpu_matmul.table_matmul(x, *kernel, self.TABLE, self.UNIT, self.group_size)


def _table(levels, unit: float) -> torch.Tensor:
    table = torch.zeros(32, dtype=torch.int16)  # the kernel reads 32 entries; codes use the first 16
    table[:16] = torch.round(torch.tensor(levels, dtype=torch.float64) / unit).to(torch.int16)
    return table


class NF4Linear(TableLinear):
    """QLoRA's NormalFloat4: `weight_packed` uint8 [out, in/2] and one fp16 `weight_absmax` per
    block of `group_size` inputs (no double quantization of the absmax: 0.25 bits per weight at
    block 64). The table kernel's levels are NF4's times 2047, rounded (the largest scale that cannot overflow
    its int32 sums): a weight moves by under 1/4094 of its block's absmax, finer than bf16's rounding of it."""

    method = "nf4"
    UNIT = 1 / 2047
    TABLE = _table(methods.NF4_LEVELS, UNIT)
    STORED = ("weight_packed", "weight_absmax")

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int, device=None):
        super().__init__(in_features, out_features, bias, device)
        self.group_size = group_size
        self.register_buffer("weight_packed", torch.zeros(out_features, in_features // 2, dtype=torch.uint8,
                                                          device=device))
        self.register_buffer("weight_absmax", torch.ones(out_features, in_features // group_size,
                                                         dtype=torch.float16, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int) -> NF4Linear:
        codes, absmax = methods.quantize_nf4(linear.weight, group_size)
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size, "meta")
        return layer._fill(linear, weight_packed=methods.pack_nibbles(codes), weight_absmax=absmax)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return methods.dequantize_nf4(methods.unpack_nibbles(self.weight_packed), self.weight_absmax, dtype)

    def _empty(self, out_features: int, bias: bool) -> NF4Linear:
        return NF4Linear(self.in_features, out_features, bias, self.group_size, "meta")

    def _table_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        return methods.unpack_nibbles(self.weight_packed), self.weight_absmax


class MXFP4Linear(TableLinear):
    """OCP MXFP4 as gpt-oss stores it: `weight_blocks` uint8 [out, in/32, 16], `weight_scales`
    uint8 [out, in/32] (E8M0). The table kernel's levels are E2M1's times 2, exact, and it reads the E8M0 scales
    as stored."""

    method = "mxfp4"
    group_size = 32
    UNIT = 0.5
    TABLE = _table(mxfp4.FP4_VALUES, UNIT)
    STORED = ("weight_blocks", "weight_scales")

    def __init__(self, in_features: int, out_features: int, bias: bool, device=None):
        super().__init__(in_features, out_features, bias, device)
        self.register_buffer("weight_blocks", torch.zeros(out_features, in_features // 32, 16, dtype=torch.uint8,
                                                          device=device))
        self.register_buffer("weight_scales", torch.full((out_features, in_features // 32), 127, dtype=torch.uint8,
                                                         device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> MXFP4Linear:
        blocks, scales = methods.quantize_mxfp4(linear.weight)
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, "meta")
        return layer._fill(linear, weight_blocks=blocks, weight_scales=scales)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return methods.dequantize_mxfp4(self.weight_blocks, self.weight_scales, dtype)

    def _empty(self, out_features: int, bias: bool) -> MXFP4Linear:
        return MXFP4Linear(self.in_features, out_features, bias, "meta")

    def _table_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        return methods.unpack_nibbles(self.weight_blocks.reshape(self.out_features, -1)), self.weight_scales


LAYERS = (Int8Linear, Int4Linear, NF4Linear, MXFP4Linear)
