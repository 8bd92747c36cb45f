"""Quantized weight formats, the methods that fill them, and `quantize_model`, which swaps a
model's `nn.Linear` layers for quantized ones in place.

Methods (all calibration-free):
  int8      weight-only, symmetric, one scale per output channel, or (group_size=32) one fp16 scale per block
            of 32 inputs, as llama.cpp's Q8_0
  int4      weight-only, asymmetric, groups of 32/64/128 inputs, round to nearest
  int4-hqq  the int4 layout with HQQ-optimised zero points
  nf4       QLoRA's NormalFloat4 levels, one absmax per block of inputs
  mxfp4     OCP MXFP4 as gpt-oss stores it (groups of 32, power-of-two scales)
  w8a8      int8 weights and dynamic per-token int8 activations
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from acik.quant.embedding import QuantEmbedding
from acik.quant.linear import Int4Linear, Int8Linear, MXFP4Linear, NF4Linear, QuantLinear

METHODS = ("int8", "int4", "int4-hqq", "nf4", "mxfp4", "w8a8")
DEFAULT_GROUP_SIZE = {"int4": 64, "int4-hqq": 64, "nf4": 64, "mxfp4": 32}
EIGHT_BIT = ("int8", "w8a8")
INT8_GROUP_SIZES = (32, 64, 128, 256)  # int8's blocks (None: per channel); the block kernel takes multiples of 32
HEAD_METHODS = ("int8", "same")  # what `head=` takes: int8, or the body's method


def default_skip(method: str) -> list[str]:
    """The layers `method` leaves unquantized unless told otherwise. `int8` quantizes the output head too, as
    llama.cpp's Q8_0 does: at 8 bits it costs no measurable quality, and with acik's int8 CPU kernel an int8
    head decodes faster than a prepacked bf16 one (docs/quantization.md "The output head"). Every other method
    keeps the head: at 4 bits its error shows directly in perplexity (`head="int8"` gives it 8 bits instead,
    as llama.cpp gives it 6-8 in its 4-bit types), and w8a8's kernel is for compute-bound prefill. vLLM cannot
    load a quantized head: `skip=["lm_head"]`."""
    return [] if method == "int8" else ["lm_head"]


class QuantizationError(ValueError):
    """A quantization request that cannot be carried out as asked; the message says what to change."""


def check_method(method: str, group_size: int | None) -> int | None:
    """Validate (method, group_size) and return the group size to use (None: per channel)."""
    if method not in METHODS:
        raise QuantizationError(f"unknown quantization method {method!r}; valid methods: {', '.join(METHODS)}")
    if method == "int8" and group_size is not None:
        if group_size not in INT8_GROUP_SIZES:
            raise QuantizationError(f"int8: group size {group_size} not supported; use one of "
                                    f"{', '.join(map(str, INT8_GROUP_SIZES))} (32 is llama.cpp's Q8_0), or none for "
                                    "one scale per output channel")
        return group_size
    if method in EIGHT_BIT:
        if group_size is not None:
            raise QuantizationError(f"{method} uses one scale per output channel; drop the group size "
                                    f"({group_size}), or use int8 for block-wise scales")
        return None
    if method == "mxfp4":
        if group_size not in (None, 32):
            raise QuantizationError(f"mxfp4 fixes its group size at 32 (the OCP format); got {group_size}")
        return 32
    group_size = group_size or DEFAULT_GROUP_SIZE[method]
    if method.startswith("int4") and group_size not in (32, 64, 128, 256):
        raise QuantizationError(f"{method}: group size {group_size} not supported; use 32, 64, 128 or 256 "
                                "(the sizes PyTorch's int4 kernels take)")
    if group_size < 2 or group_size % 2:
        raise QuantizationError(f"{method}: group size must be a positive even number, got {group_size}")
    return group_size


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, QuantLinear) for m in model.modules())


def _skipped(name: str, skip: Iterable[str]) -> bool:
    """`skip` entries match a full module name or any dotted part of it (`lm_head`, `o_proj`, `layers.0`)."""
    return any(name == s or f".{name}.".find(f".{s}.") >= 0 for s in skip)


def quantize_layer(linear: nn.Linear, method: str, group_size: int | None) -> QuantLinear:
    if method in ("int8", "w8a8"):
        return Int8Linear.from_linear(linear, activations=method == "w8a8", group_size=group_size)
    if method in ("int4", "int4-hqq"):
        return Int4Linear.from_linear(linear, group_size, hqq=method == "int4-hqq")
    if method == "nf4":
        return NF4Linear.from_linear(linear, group_size)
    return MXFP4Linear.from_linear(linear)


def targets(model: nn.Module, skip: Iterable[str]) -> list[str]:
    """Names of the `nn.Linear` layers `quantize_model` would replace. A head tied to the input
    embeddings always stays as it is: the embedding table is the same tensor."""
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    skip = list(skip) + (["lm_head"] if tied else [])
    return [name for name, m in model.named_modules() if type(m) is nn.Linear and not _skipped(name, skip)]


def head_method(method: str, head: str | None) -> str | None:
    """The method `lm_head` gets when it differs from `method` (None: the same, or the head is not quantized),
    from `quantize_model`'s `head` argument: None (the default) or "same", the body's method; "int8"."""
    if head not in (None, *HEAD_METHODS):
        raise QuantizationError(f"head={head!r}: use {' or '.join(repr(h) for h in HEAD_METHODS)} (the body's "
                                "method), or skip the head to keep it unquantized")
    return None if head in (None, "same") or head == method else head


def quantize_model(model: nn.Module, method: str, group_size: int | None = None,
                   skip: Iterable[str] | None = None, head: str | None = None) -> nn.Module:
    """Replace every `nn.Linear` of `model` (except those in `skip`; None: `default_skip(method)`)
    with its quantized version, in place, and return the model. `head="int8"` quantizes `lm_head` at 8 bits
    whatever `method` is (with the default skip list, the head is then quantized); None or "same" give it
    `method`, where it is quantized at all. Raises QuantizationError, before changing anything, for an
    unknown method, a group size that does not divide a layer's input size, a head both skipped and given a
    method, or a model that is already quantized."""
    group_size = check_method(method, group_size)
    head = head_method(method, head)
    if skip is None:
        skip = [s for s in default_skip(method) if not (head and s == "lm_head")]
    elif head and "lm_head" in skip:
        raise QuantizationError(f"head={head!r} quantizes lm_head, but skip={list(skip)} keeps it; drop one")
    skip = list(skip)
    if is_quantized(model):
        done = next(m for m in model.modules() if isinstance(m, QuantLinear))
        raise QuantizationError(f"this model is already quantized ({done.method}); quantize its unquantized "
                                "parent instead, since re-quantizing compounds the rounding errors")
    names = targets(model, skip)
    if not names:
        raise QuantizationError(f"no nn.Linear layers to quantize (skip={skip})")
    head = head if "lm_head" in names else None
    step = max(group_size or 1, 2)
    for name in names:
        if name == "lm_head" and head:
            continue  # per channel: no group size to divide
        n_in = model.get_submodule(name).in_features
        if n_in % step:
            divisors = [g for g in (32, 64, 128, 256) if n_in % g == 0]
            hint = f"group sizes that divide it: {', '.join(map(str, divisors))}" if divisors else \
                f"skip it with --skip {name.rsplit('.', 1)[-1]}"
            raise QuantizationError(f"{name}: in_features {n_in} is not divisible by the group size {step} of "
                                    f"{method}; {hint}")
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if name == "lm_head" and head:
            setattr(parent, attr, quantize_layer(getattr(parent, attr), head, None))
        else:
            setattr(parent, attr, quantize_layer(getattr(parent, attr), method, group_size))
    model.quantization = {"method": method, "group_size": group_size, "skip": skip, "head": head}
    return model


def quantization_summary(model: nn.Module) -> dict:
    """Bytes and bits per weight over the quantized layers, and the bytes of the whole model."""
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    q_weights = sum(m.in_features * m.out_features for m in layers)
    q_bytes = sum(m.weight_bytes for m in layers)
    seen = {id(b) for m in layers for b in m.buffers(recurse=False)}
    other = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            other += t.numel() * t.element_size()
    return {"quantized_weights": q_weights, "quantized_bytes": q_bytes,
            "bits_per_weight": 8 * q_bytes / q_weights if q_weights else None,
            "total_bytes": q_bytes + other}


__all__ = ["HEAD_METHODS", "METHODS", "Int4Linear", "Int8Linear", "MXFP4Linear", "NF4Linear", "QuantEmbedding",
           "QuantLinear",
           "QuantizationError", "check_method", "default_skip", "head_method", "is_quantized",
           "quantization_summary", "quantize_model", "targets"]
