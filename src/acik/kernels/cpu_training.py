"""acik's training kernels for x86-64 CPUs (cpu_training.c), forward and backward: causal self-attention (computed
in fp32 from fp32 or bf16), RMSNorm (fp32), SwiGLU and cross-entropy (fp32 or bf16).

PyTorch's CPU flash-attention kernel runs the small heads of small models (head_dim 32-64) at a fraction
of the speed of the CPU's matrix multiplies, and its bf16 version more slowly still, so attention was a
fifth of a small model's training step here. acik's kernel computes the same FlashAttention recurrence
with register-tiled products (docs/training.md "CPU kernels"). It works in fp32 whatever the
input dtype: under bf16 autocast it is still faster than PyTorch's bf16 kernel, and more exact.

RMSNorm, SwiGLU and cross-entropy are chains of elementwise operators in PyTorch (about fifteen passes over the
activations for one RMSNorm, seven over the logits for cross-entropy, forward and backward); here each is one
or two passes each way.

Results are deterministic and the same for any number of threads. Built on first use by acik.kernels.build;
where it cannot be built, `supports` is False and the model runs PyTorch's operators as before.
"""

from __future__ import annotations

import ctypes
import sys

import torch

from acik.kernels import build


def _load(march: str) -> ctypes.CDLL | None:
    lib = build.compile_library("cpu_training", march)
    if lib is None:
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.acik_attention_forward.argtypes = [ptr] * 5 + [i64] + [ptr] * 3 + [i64] * 5 + [ctypes.c_float, ctypes.c_int]
    lib.acik_attention_forward.restype = ctypes.c_int
    lib.acik_attention_backward.argtypes = [ptr] * 5 + [i64] + [ptr] * 7 + [i64] * 5 + [ctypes.c_float, ctypes.c_int]
    lib.acik_attention_backward.restype = ctypes.c_int
    lib.acik_vector_width.restype = ctypes.c_int
    lib.acik_rms_norm_forward.argtypes = [ptr] * 4 + [i64] * 2 + [ctypes.c_float, ctypes.c_int]
    lib.acik_rms_norm_backward.argtypes = [ptr] * 6 + [i64] * 2 + [ctypes.c_int]
    lib.acik_swiglu_forward.argtypes = [ptr] * 3 + [i64, ctypes.c_int, ctypes.c_int]
    lib.acik_swiglu_backward.argtypes = [ptr] * 5 + [i64, ctypes.c_int, ctypes.c_int]
    lib.acik_cross_entropy_forward.argtypes = [ptr] * 4 + [i64] * 3 + [ctypes.c_float] + [ctypes.c_int] * 2
    lib.acik_cross_entropy_backward.argtypes = [ptr] * 5 + [i64] * 3 + [ctypes.c_float] + [ctypes.c_int] * 2
    for f in (lib.acik_rms_norm_forward, lib.acik_rms_norm_backward, lib.acik_swiglu_forward, lib.acik_swiglu_backward,
              lib.acik_cross_entropy_forward, lib.acik_cross_entropy_backward):
        f.restype = ctypes.c_int
    return lib


_LOADED: dict[str, ctypes.CDLL | None] = {}  # -march -> library; a plain dict, which torch.compile reads as is


def library() -> ctypes.CDLL | None:
    """The built kernels for this machine, or None where they cannot be used."""
    if not build.enabled():
        return None
    march = build.march()
    if march not in _LOADED:
        load = _load
        if "torch._dynamo" in sys.modules:  # a build is no graph: torch.compile calls it as is
            load = torch.compiler.disable(_load)  # (applied here: importing dynamo costs every start ~1 s)
        _LOADED[march] = load(march)
    return _LOADED[march]


def supports(x: torch.Tensor, width: int | None = None) -> bool:
    """Whether the kernels take x (fp32 or bf16, on CPU) whose rows are `width` long (a head for attention, a
    hidden state for RMSNorm; SwiGLU takes any): it must divide by the vector width, 16 floats with AVX-512, 8
    with AVX2. (RMSNorm takes fp32 only.)"""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16):
        return False
    lib = library()
    return lib is not None and (width is None or width % lib.acik_vector_width() == 0)


def _check(err: int) -> None:
    if err == -2:
        raise ValueError("acik's CPU attention kernel takes heads of at most 1024")
    if err:
        raise MemoryError("acik's CPU training kernel could not allocate its buffers")


def _rope(cos: torch.Tensor | None, sin: torch.Tensor | None) -> tuple[int, int, int]:
    """The tables' pointers and batch stride (0: one table for every row), or zeros without RoPE."""
    if cos is None:
        return 0, 0, 0
    return cos.data_ptr(), sin.data_ptr(), 0 if cos.shape[0] == 1 else cos.stride(0)


@torch.library.custom_op("acik::causal_attention", mutates_args=())
def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
             first: torch.Tensor | None, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    (B, T, H, D), Hkv = q.shape, k.shape[2]
    o, lse = torch.empty_like(q), q.new_empty(B, H, T)
    _check(library().acik_attention_forward(q.data_ptr(), k.data_ptr(), v.data_ptr(), *_rope(cos, sin),
                                            0 if first is None else first.data_ptr(), o.data_ptr(), lse.data_ptr(),
                                            B, T, H, Hkv, D, scale, torch.get_num_threads()))
    return o, lse


@_forward.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
      first: torch.Tensor | None, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    B, T, H, _ = q.shape
    return torch.empty_like(q), q.new_empty(B, H, T)


@torch.library.custom_op("acik::causal_attention_backward", mutates_args=())
def _backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
              first: torch.Tensor | None, o: torch.Tensor, lse: torch.Tensor, grad: torch.Tensor,
              scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    (B, T, H, D), Hkv = q.shape, k.shape[2]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    _check(library().acik_attention_backward(q.data_ptr(), k.data_ptr(), v.data_ptr(), *_rope(cos, sin),
                                             0 if first is None else first.data_ptr(), o.data_ptr(), lse.data_ptr(),
                                             grad.data_ptr(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
                                             B, T, H, Hkv, D, scale, torch.get_num_threads()))
    return dq, dk, dv


@_backward.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
      first: torch.Tensor | None, o: torch.Tensor, lse: torch.Tensor, grad: torch.Tensor, scale: float) -> tuple:
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup(ctx, inputs: tuple, output: tuple) -> None:
    q, k, v, cos, sin, first, ctx.scale = inputs
    ctx.save_for_backward(q, k, v, cos, sin, first, *output)


def _grad(ctx, grad: torch.Tensor, _grad_lse: torch.Tensor | None) -> tuple:
    q, k, v, cos, sin, first, o, lse = ctx.saved_tensors
    return (*_backward(q, k, v, cos, sin, first, o, lse, grad.contiguous(), ctx.scale), None, None, None, None)


_forward.register_autograd(_grad, setup_context=_setup)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                     cos: torch.Tensor | None = None, sin: torch.Tensor | None = None,
                     first_key: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T * scale, causal) v for q [B, T, H, D] and k, v [B, T, Hkv, D] (query head h reads key head
    h // (H / Hkv)) -> [B, T, H, D] in q's dtype, computed in fp32. With `cos` and `sin` ([B, T, D] or [1, T, D],
    acik.model.rope's tables), q and k are rotated first, as `apply_rope` does. `first_key` [B, T] (int, at most
    the query's own index) narrows query i to keys first_key[i] .. i: packed examples, sliding windows.
    Differentiable (not in cos, sin and first_key). Call where `supports(q, D)` and H % Hkv == 0."""
    dtype = q.dtype
    if cos is not None:
        cos, sin = cos.float().contiguous(), sin.float().contiguous()
    if first_key is not None:
        first_key = first_key.to(torch.int64).contiguous()
    o, _ = _forward(q.float().contiguous(), k.float().contiguous(), v.float().contiguous(), cos, sin, first_key,
                    scale)
    return o.to(dtype)


@torch.library.custom_op("acik::rms_norm", mutates_args=())
def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    C = x.shape[-1]
    y, rstd = torch.empty_like(x), x.new_empty(x.numel() // C)
    _check(library().acik_rms_norm_forward(x.data_ptr(), weight.data_ptr(), y.data_ptr(), rstd.data_ptr(),
                                           x.numel() // C, C, eps, torch.get_num_threads()))
    return y, rstd


@_rms_norm.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(x), x.new_empty(x.numel() // x.shape[-1])


@torch.library.custom_op("acik::rms_norm_backward", mutates_args=())
def _rms_norm_backward(x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor,
                       grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    C = x.shape[-1]
    dx, dw = torch.empty_like(x), torch.empty_like(weight)
    _check(library().acik_rms_norm_backward(x.data_ptr(), weight.data_ptr(), rstd.data_ptr(), grad.data_ptr(),
                                            dx.data_ptr(), dw.data_ptr(), x.numel() // C, C,
                                            torch.get_num_threads()))
    return dx, dw


@_rms_norm_backward.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, grad: torch.Tensor) -> tuple:
    return torch.empty_like(x), torch.empty_like(weight)


def _rms_norm_setup(ctx, inputs: tuple, output: tuple) -> None:
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight, output[1])


def _rms_norm_grad(ctx, grad: torch.Tensor, _grad_rstd: torch.Tensor | None) -> tuple:
    x, weight, rstd = ctx.saved_tensors
    return (*_rms_norm_backward(x, weight, rstd, grad.contiguous()), None)


_rms_norm.register_autograd(_rms_norm_grad, setup_context=_rms_norm_setup)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * x / sqrt(mean(x^2, -1) + eps) for fp32 x [..., C] and weight [C]. Differentiable. Call where
    `supports(x, C)`."""
    return _rms_norm(x.contiguous(), weight, eps)[0]


@torch.library.custom_op("acik::swiglu", mutates_args=())
def _swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    h = torch.empty_like(gate)
    _check(library().acik_swiglu_forward(gate.data_ptr(), up.data_ptr(), h.data_ptr(), gate.numel(),
                                         gate.dtype == torch.bfloat16, torch.get_num_threads()))
    return h


@_swiglu.register_fake
def _(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(gate)


@torch.library.custom_op("acik::swiglu_backward", mutates_args=())
def _swiglu_backward(gate: torch.Tensor, up: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dg, du = torch.empty_like(gate), torch.empty_like(up)
    _check(library().acik_swiglu_backward(gate.data_ptr(), up.data_ptr(), grad.data_ptr(), dg.data_ptr(),
                                          du.data_ptr(), gate.numel(), gate.dtype == torch.bfloat16,
                                          torch.get_num_threads()))
    return dg, du


@_swiglu_backward.register_fake
def _(gate: torch.Tensor, up: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(gate), torch.empty_like(up)


def _swiglu_setup(ctx, inputs: tuple, output: torch.Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _swiglu_grad(ctx, grad: torch.Tensor) -> tuple:
    return _swiglu_backward(*ctx.saved_tensors, grad.contiguous())


_swiglu.register_autograd(_swiglu_grad, setup_context=_swiglu_setup)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for tensors of one shape, fp32 or bf16 (computed in fp32, rounded once). Differentiable.
    Call where `supports(gate)`."""
    if up.dtype != gate.dtype:
        up = up.to(gate.dtype)
    return _swiglu(gate.contiguous(), up.contiguous())


@torch.library.custom_op("acik::cross_entropy", mutates_args=())
def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor, z_loss: float,
                   ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    N, V = logits.shape
    loss, lse = logits.new_empty(N, dtype=torch.float32), logits.new_empty(N, dtype=torch.float32)
    _check(library().acik_cross_entropy_forward(logits.data_ptr(), targets.data_ptr(), loss.data_ptr(), lse.data_ptr(),
                                                N, V, ignore_index, z_loss, logits.dtype == torch.bfloat16,
                                                torch.get_num_threads()))
    return loss, lse


@_cross_entropy.register_fake
def _(logits: torch.Tensor, targets: torch.Tensor, z_loss: float, ignore_index: int) -> tuple:
    N = logits.shape[0]
    return logits.new_empty(N, dtype=torch.float32), logits.new_empty(N, dtype=torch.float32)


@torch.library.custom_op("acik::cross_entropy_backward", mutates_args=())
def _cross_entropy_backward(logits: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor, grad: torch.Tensor,
                            z_loss: float, ignore_index: int) -> torch.Tensor:
    N, V = logits.shape
    dx = torch.empty_like(logits)
    _check(library().acik_cross_entropy_backward(logits.data_ptr(), targets.data_ptr(), lse.data_ptr(),
                                                 grad.data_ptr(), dx.data_ptr(), N, V, ignore_index, z_loss,
                                                 logits.dtype == torch.bfloat16, torch.get_num_threads()))
    return dx


@_cross_entropy_backward.register_fake
def _(logits: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor, grad: torch.Tensor, z_loss: float,
      ignore_index: int) -> torch.Tensor:
    return torch.empty_like(logits)


def _cross_entropy_setup(ctx, inputs: tuple, output: tuple) -> None:
    logits, targets, ctx.z_loss, ctx.ignore_index = inputs
    ctx.save_for_backward(logits, targets, output[1])


def _cross_entropy_grad(ctx, grad: torch.Tensor, _grad_lse: torch.Tensor | None) -> tuple:
    logits, targets, lse = ctx.saved_tensors
    dx = _cross_entropy_backward(logits, targets, lse, grad.float().contiguous(), ctx.z_loss, ctx.ignore_index)
    return dx, None, None, None


_cross_entropy.register_autograd(_cross_entropy_grad, setup_context=_cross_entropy_setup)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, z_loss: float = 0.0,
                  ignore_index: int = -100) -> torch.Tensor:
    """Per-row loss [N] (fp32) of logits [N, V] (fp32 or bf16, computed in fp32) against targets [N]:
    logsumexp - the target's logit + z_loss * logsumexp^2, and 0 where the target is `ignore_index`.
    Differentiable in the logits. Call where `supports(logits)`."""
    targets = targets.to(torch.int64).contiguous()
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= logits.shape[1]))
    if bool(bad.any()):
        raise ValueError(f"target {int(targets[bad][0])} is out of range for {logits.shape[1]} classes")
    return _cross_entropy(logits.contiguous(), targets, z_loss, ignore_index)[0]
