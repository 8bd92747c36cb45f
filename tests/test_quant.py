"""Quantization: error bounds, packed layouts, quantized linears against their dequantized
reference (forward and backward), directories other tools read, and bad input."""

from __future__ import annotations

import json
import platform

import pytest
import torch

import acik
from acik.config import ModelConfig
from acik.formats.compressed import _pack_rows, _unpack_rows, pack_int32
from acik.kernels import build, cpu_matmul
from acik.model import Transformer
from acik.quant import METHODS, QuantizationError, methods, quantize_model
from acik.quant.linear import Int4Linear, Int8Linear, QuantLinear

GROUP = {"int8": None, "w8a8": None, "int4": 64, "int4-hqq": 64, "nf4": 64, "mxfp4": 32}


def weights(out=96, n_in=256, seed=0) -> torch.Tensor:
    """Gaussian weights with a few outliers, like a trained layer's."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, n_in, generator=g) * 0.02
    w.view(-1)[torch.randint(0, w.numel(), (out,), generator=g)] *= 8
    return w


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# --- quantize -> dequantize error bounds ---------------------------------------------------------

def test_int8_error_within_half_a_step():
    w = weights()
    codes, scale = methods.quantize_int8(w)
    back = methods.dequantize_int8(codes, scale)
    assert codes.dtype == torch.int8 and scale.shape == (w.shape[0],)
    assert ((back - w).abs() <= scale[:, None] / 2 + 1e-7).all()
    assert rel_err(back, w) < 0.02


@pytest.mark.parametrize("hqq", [False, True])
def test_int4_error(hqq):
    w = weights()
    quantize = methods.quantize_int4_hqq if hqq else methods.quantize_int4
    codes, scale, zero = quantize(w, 64)
    assert codes.max() <= 15 and scale.shape == zero.shape == (w.shape[0], 4)
    back = methods.dequantize_int4(codes, scale, zero)
    if not hqq:  # round to nearest over a range that covers the group: within half a step
        step = scale.float().repeat_interleave(64, dim=1)
        assert ((back - w).abs() <= step / 2 * 1.01 + 1e-6).all()
        assert (zero == zero.round()).all()  # integer zero points (compressed-tensors)
    assert rel_err(back, w) < 0.12


def test_hqq_beats_round_to_nearest():
    """HQQ minimises an l_p (p < 1) error; its mean absolute error must be below plain rounding's."""
    w = weights(256, 512)
    rtn = methods.dequantize_int4(*methods.quantize_int4(w, 64))
    hqq = methods.dequantize_int4(*methods.quantize_int4_hqq(w, 64))
    assert (hqq - w).abs().mean() < 0.97 * (rtn - w).abs().mean()


def _hqq_reference(w: torch.Tensor, group_size: int, iters: int, p=0.7, beta=10.0, kappa=1.01):
    """The paper's update written in weight units, no early stop: per group, shrink the residual with
    the l_p proximal operator, then set the zero point to the mean that fits the shrunk residual."""
    g = w.float().reshape(w.shape[0], -1, group_size)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    scale = ((hi - lo).clamp(min=1e-5) / 15.0).half().float()
    zero = -lo / scale
    best_zero, best_err = zero, torch.full_like(zero, float("inf"))
    for _ in range(iters):
        codes = torch.round(g / scale + zero).clamp(0, 15)
        err = g - (codes - zero) * scale
        group_err = err.abs().mean(-1, keepdim=True)
        best_zero = torch.where(group_err < best_err, zero, best_zero)
        best_err = torch.minimum(group_err, best_err)
        shrunk = torch.sign(err) * torch.relu(err.abs() - err.abs().pow(p - 1) / beta)
        zero = (codes - (g - shrunk) / scale).mean(-1, keepdim=True)
        beta *= kappa
    return best_zero.squeeze(-1)


def test_hqq_matches_the_weight_unit_update():
    """acik runs HQQ in code units, chunk by chunk; without early stopping it must be the same
    iteration as the paper's weight-unit form, whatever the chunk size."""
    w = weights(64, 256)
    want = _hqq_reference(w, 64, iters=20).half().float()
    rows, whole = (methods.quantize_int4_hqq(w, 64, tol=0, chunk=c) for c in (256, 1 << 18))
    assert all(torch.equal(a, b) for a, b in zip(rows, whole))  # one row at a time == all rows at once
    diff = (whole[2].float() - want).abs()
    # Float rounding in a different order can move a zero point by an fp16 step or two (1/128 at 8),
    # never more, and rarely.
    assert (diff == 0).float().mean() > 0.97 and diff.max() < 0.04


def test_hqq_early_stop_keeps_the_error():
    """Stopping once an iteration gains under 1e-4 (the default) loses almost nothing against 20
    full iterations, and still beats plain rounding by a clear margin."""
    w = weights(256, 512)
    l1 = {}
    for name, kwargs in (("full", {"tol": 0}), ("early", {}), ("one", {"iters": 1})):
        l1[name] = (methods.dequantize_int4(*methods.quantize_int4_hqq(w, 64, **kwargs)) - w).abs().mean()
    rtn = (methods.dequantize_int4(*methods.quantize_int4(w, 64)) - w).abs().mean()
    assert l1["early"] <= 1.002 * l1["full"]
    assert l1["early"] < 0.97 * rtn
    assert l1["one"] > 1.01 * l1["full"]  # the iterations are what does the work


def test_hqq_no_worse_than_the_hqq_package():
    hqq = pytest.importorskip("hqq.core.quantize")
    w = weights(128, 256)
    linear = torch.nn.Linear(256, 128, bias=False)
    with torch.no_grad():
        linear.weight.copy_(w)
    theirs = hqq.HQQLinear(linear, quant_config=hqq.BaseQuantizeConfig(nbits=4, group_size=64, axis=1),
                           compute_dtype=torch.float32, device="cpu").dequantize()
    ours = methods.dequantize_int4(*methods.quantize_int4_hqq(w, 64))
    assert (ours - w).abs().mean() <= 1.01 * (theirs - w).abs().mean()


def test_nf4_error_and_levels():
    w = weights()
    codes, absmax = methods.quantize_nf4(w, 64)
    back = methods.dequantize_nf4(codes, absmax)
    levels = torch.tensor(methods.NF4_LEVELS)
    half_gap = (levels[1:] - levels[:-1]).max() / 2
    assert ((back - w).abs() <= half_gap * absmax.float().repeat_interleave(64, dim=1) * 1.01).all()
    # Each block's largest magnitude is exactly representable (level +-1 times absmax).
    assert torch.allclose(back.abs().reshape(-1, 64).amax(1), w.abs().reshape(-1, 64).amax(1), rtol=1e-3)
    assert rel_err(back, w) < 0.15


def test_mxfp4_error():
    w = weights()
    back = methods.dequantize_mxfp4(*methods.quantize_mxfp4(w), torch.float32)
    assert rel_err(back, w) < 0.15


# --- packed layouts ------------------------------------------------------------------------------

def test_nibble_pack_round_trip():
    codes = torch.randint(0, 16, (7, 10), dtype=torch.uint8)
    packed = methods.pack_nibbles(codes)
    assert packed.shape == (7, 5)
    assert (packed[:, 0] == codes[:, 0] | (codes[:, 1] << 4)).all()  # even element in the low nibble
    assert torch.equal(methods.unpack_nibbles(packed), codes)


def test_compressed_tensors_packing_matches_the_library():
    ct = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    codes = torch.randint(0, 16, (24, 64), dtype=torch.uint8)
    signed = (codes.to(torch.int16) - 8).to(torch.int8)
    assert torch.equal(pack_int32(methods.pack_nibbles(codes)), ct.pack_to_int32(signed, 4))
    zeros = torch.randint(0, 16, (20, 3), dtype=torch.uint8)  # 20 rows: packing pads to 24
    want = ct.pack_to_int32((zeros.to(torch.int16) - 8).to(torch.int8), 4, packed_dim=0)
    assert torch.equal(_pack_rows(zeros), want)
    assert torch.equal(_unpack_rows(want, 20), zeros)
    # an int8 head in an int4 directory: pack-quantized at 8 bits, four codes to an int32
    from acik.formats.compressed import saved_tensors

    head = Int8Linear.from_linear(torch.nn.Linear(64, 24))
    packed = saved_tensors("lm_head", head, packed=True)["lm_head.weight_packed"]
    assert torch.equal(packed, ct.pack_to_int32(head.weight, 8))


def test_mxfp4_codes_decode_per_the_spec():
    """Decode MXFP4 from the E2M1 bit definition (sign, 2-bit exponent bias 1, 1 mantissa bit)."""
    w = weights(4, 64)
    blocks, scales = methods.quantize_mxfp4(w)
    codes = methods.unpack_nibbles(blocks).reshape(4, 2, 32).long()
    sign, exp, man = codes >> 3, (codes >> 1) & 3, codes & 1
    mag = torch.where(exp == 0, man * 0.5, (1 + man * 0.5) * 2.0 ** (exp - 1))
    ref = ((-1.0) ** sign * mag * 2.0 ** (scales.long() - 127)[..., None]).reshape(4, 64)
    assert torch.equal(methods.dequantize_mxfp4(blocks, scales, torch.float32), ref.float())


# --- quantized linears == dequantized reference, forward and backward ----------------------------

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantized_linear_matches_dequantized_reference(method, dtype):
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 96, bias=True)
    with torch.no_grad():
        linear.weight.copy_(weights())
    model = torch.nn.Sequential(linear)
    quantize_model(model, method, GROUP[method], skip=[])
    layer = model[0]
    assert isinstance(layer, QuantLinear) and layer.method == method
    w = layer.dequantize(torch.float32)
    x = torch.randn(2, 5, 256, dtype=dtype, requires_grad=True)
    y = layer(x)
    x_ref = x.detach().float().requires_grad_()
    y_ref = torch.nn.functional.linear(x_ref, w, layer.bias.float())
    assert y.dtype == dtype and y.shape == (2, 5, 96)
    # The packed kernels compute in bf16; w8a8 also rounds the activations to int8 per token.
    tol = {"w8a8": 0.03}.get(method, 0.01 if (dtype == torch.bfloat16 or method in ("int8", "int4", "int4-hqq"))
                             else 1e-5)
    if method in ("nf4", "mxfp4") and dtype == torch.float32 and cpu_matmul.supports_table():
        tol = 2e-3  # the table kernel: int16 activations, NF4's levels rounded to 1/2047
    scale = y_ref.abs().max().item()
    assert (y.float() - y_ref).abs().max().item() <= tol * scale
    g = torch.randn_like(y_ref)
    y.backward(g.to(dtype))
    y_ref.backward(g)
    gtol = 0.01 if dtype == torch.bfloat16 else 1e-5
    assert (x.grad.float() - x_ref.grad).abs().max().item() <= gtol * x_ref.grad.abs().max().item()
    assert not any(p.requires_grad for p in layer.parameters())  # a frozen base


def test_lora_style_training_through_a_frozen_nf4_base():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64))
    quantize_model(model, "nf4", 64, skip=[])
    a = torch.zeros(64, 4, requires_grad=True)
    b = (torch.randn(4, 64) * 0.1).requires_grad_()
    x = torch.randn(8, 64, requires_grad=True)
    loss = (model(x) + x @ b.t() @ a.t()).pow(2).mean()
    loss.backward()
    assert a.grad is not None and a.grad.abs().sum() > 0 and x.grad is not None


def test_casting_a_model_keeps_scales_exact():
    model = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.Linear(64, 64))
    quantize_model(model, "int4", 32, skip=[])
    before = model[0].dequantize()
    model.to(torch.bfloat16)
    assert model[0].weight_scale.dtype == torch.float16 and torch.equal(model[0].dequantize(), before)
    assert model(torch.randn(2, 128, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_int4_kernel_used_and_fallback_for_odd_widths():
    lin = torch.nn.Linear(128, 40)  # 40 outputs: not a multiple of 16, so no packed kernel
    layer = Int4Linear.from_linear(lin, 32)
    x = torch.randn(3, 128)
    assert torch.allclose(layer(x), torch.nn.functional.linear(x, layer.dequantize(), lin.bias), atol=1e-5)
    layer = Int4Linear.from_linear(torch.nn.Linear(128, 48), 32)
    layer(x)
    assert layer._kernel is not None


needs_cpu_kernels = pytest.mark.skipif(
    not cpu_matmul.available(),
    reason="acik's CPU kernels cannot be built here (they need Linux x86-64 with AVX2, a C compiler, OpenMP torch)")


def test_int8_kernel_layout_round_trips():
    codes = torch.randint(-127, 128, (48, 10), dtype=torch.int8)
    blocked = cpu_matmul.block(codes)
    assert blocked.shape == (3, 5, 16, 2) and torch.equal(blocked[1, 2, 3], codes[16 + 3, 4:6])
    assert torch.equal(cpu_matmul.unblock(blocked), codes)


@needs_cpu_kernels
@pytest.mark.parametrize("march", ["native", "haswell"])  # this CPU's path (AVX-512 VNNI here) and the AVX2 one
def test_int8_kernel_matches_the_dequantized_reference(march, monkeypatch):
    """acik's int8 kernel against the float64 matmul with the dequantized weight: fp32 to 1e-4 of the largest
    output (it rounds activations to int16), bf16 to its output rounding. Shapes with odd block counts (the
    tiles' tails), in_features past one int32 chunk and not a multiple of it, 0-9 rows, one and two threads."""
    monkeypatch.setenv("ACIK_CPU_KERNEL_MARCH", march)
    assert cpu_matmul.isa() in (("avx2",) if march == "haswell" else ("avx2", "avx512-vnni"))
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    try:
        for (n, k), rows, dtype, bias, nthreads in [
            ((176, 300), 1, torch.float32, True, 2), ((176, 300), 5, torch.bfloat16, False, 2),
            ((16, 2), 3, torch.float32, False, 2), ((144, 600), 9, torch.float32, True, 1),
            ((2064, 256), 1, torch.bfloat16, True, 2), ((64, 64), 0, torch.float32, True, 2),
        ]:
            torch.set_num_threads(nthreads)
            codes = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
            scale = torch.rand(n, generator=g) * 0.01 + 1e-4
            b = torch.randn(n, generator=g) if bias else None
            x = (torch.randn(rows, k, generator=g) * torch.rand(k, generator=g) * 3).to(dtype)
            y = cpu_matmul.int8_matmul(x, cpu_matmul.block(codes), scale, b)
            ref = torch.nn.functional.linear(x.double(), codes.double() * scale.double()[:, None],
                                             None if b is None else b.double())
            assert y.dtype == dtype and y.shape == (rows, n)
            if rows:
                tol = (1e-4 if dtype == torch.float32 else 1e-2) * max(ref.abs().max().item(), 1.0)
                assert (y.double() - ref).abs().max().item() <= tol, (n, k, rows, dtype)
    finally:
        torch.set_num_threads(threads)


def test_int4_kernel_layout():
    codes = torch.randint(0, 16, (32, 64), dtype=torch.uint8)
    scale, zero = torch.rand(32, 2).half(), (torch.rand(32, 2) * 15).half()
    packed, so = cpu_matmul.block_int4(codes, scale, zero)
    assert packed.shape == (2, 8, 16, 4) and so.shape == (2, 2, 2, 16) and so.dtype == torch.float16
    # block 1, inputs 16-23, output 16 + 5: byte t holds inputs 16 + t (low nibble) and 20 + t (high)
    assert torch.equal(packed[1, 2, 5] & 15, codes[21, 16:20]) and torch.equal(packed[1, 2, 5] >> 4, codes[21, 20:24])
    assert torch.equal(so[1, 1, 0, 5], scale[21, 1]) and torch.equal(so[1, 1, 1, 5], zero[21, 1])


@needs_cpu_kernels
@pytest.mark.parametrize("march", ["native", "haswell"])
def test_int4_kernel_matches_the_dequantized_reference(march, monkeypatch):
    """acik's int4 kernel against the float64 matmul with the dequantized weight, for round-to-nearest and HQQ's
    fractional zero points, groups of 32/64/128, block counts with tails, 0-9 rows, one and two threads."""
    monkeypatch.setenv("ACIK_CPU_KERNEL_MARCH", march)
    assert cpu_matmul.isa() in (("avx2",) if march == "haswell" else ("avx2", "avx512-vnni"))
    g = torch.Generator().manual_seed(1)
    threads = torch.get_num_threads()
    try:
        for (n, k, group), rows, dtype, hqq, nthreads in [
            ((176, 320, 32), 1, torch.float32, False, 2), ((176, 256, 64), 5, torch.bfloat16, True, 2),
            ((16, 128, 128), 3, torch.float32, True, 2), ((80, 384, 64), 9, torch.float32, False, 1),
            ((64, 64, 32), 0, torch.float32, False, 2),
        ]:
            torch.set_num_threads(nthreads)
            w = torch.randn(n, k, generator=g)
            codes, scale, zero = (methods.quantize_int4_hqq if hqq else methods.quantize_int4)(w, group)
            packed, so = cpu_matmul.block_int4(codes, scale, zero)
            bias = torch.randn(n, generator=g)
            x = (torch.randn(rows, k, generator=g) * torch.rand(k, generator=g) * 3).to(dtype)
            y = cpu_matmul.int4_matmul(x, packed, so, group, bias)
            ref = torch.nn.functional.linear(x.double(), methods.dequantize_int4(codes, scale, zero).double(),
                                             bias.double())
            assert y.dtype == dtype and y.shape == (rows, n)
            if rows:
                tol = (1e-4 if dtype == torch.float32 else 1e-2) * ref.abs().max().item()
                assert (y.double() - ref).abs().max().item() <= tol, (n, k, group, rows, dtype)
    finally:
        torch.set_num_threads(threads)


@needs_cpu_kernels
def test_int4_layer_uses_acik_kernel_and_falls_back(monkeypatch):
    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 48)
    x = torch.randn(2, 3, 128)
    layer = Int4Linear.from_linear(lin, 32)
    ref = torch.nn.functional.linear(x, layer.dequantize(), lin.bias)
    with torch.no_grad():
        assert torch.allclose(layer(x), ref, atol=1e-4) and layer._kernel[0] == "acik"
    monkeypatch.setenv("ACIK_CPU_KERNELS", "0")  # PyTorch's kernel (bf16 activations and scales)
    layer = Int4Linear.from_linear(lin, 32)
    with torch.no_grad():
        assert torch.allclose(layer(x), ref, atol=3e-2) and layer._kernel[0] == "aten"


@needs_cpu_kernels
def test_cpu_kernels_build_once_per_machine(monkeypatch, tmp_path):
    """The build is cached under a key of the source, the flags and the CPU's model and instruction sets (not
    /proc/cpuinfo lines that change as it runs, like its clock), so later processes load it without building."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert build.compile_library.__wrapped__("cpu_matmul", "native") is not None
    built = list(tmp_path.glob("acik/kernels/*.so"))
    assert len(built) == 1
    mtime = built[0].stat().st_mtime_ns
    assert build.compile_library.__wrapped__("cpu_matmul", "native") is not None
    assert list(tmp_path.glob("acik/kernels/*.so")) == built and built[0].stat().st_mtime_ns == mtime


def test_cpu_kernels_without_a_compiler_fall_back(monkeypatch, tmp_path):
    """No C compiler: no kernel (one warning), and the layers run PyTorch's kernels instead of failing."""
    import warnings

    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert build.compile_library.__wrapped__("cpu_matmul", "native") is None
    if platform.machine() in ("x86_64", "AMD64") and "OpenMP" in torch.__config__.parallel_info():
        assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert not list(tmp_path.glob("acik/kernels/*.so"))  # nothing half-written left behind
    monkeypatch.setattr(cpu_matmul, "library", lambda: None)
    layer = Int8Linear.from_linear(torch.nn.Linear(64, 32))
    with torch.no_grad():
        layer(torch.randn(2, 64))
    assert layer._kernel[0] == "aten"


needs_table_kernel = pytest.mark.skipif(not cpu_matmul.supports_table(),
                                        reason="acik's table kernel (NF4) needs AVX-512 and a C compiler")


def test_tables_hold_the_levels():
    """NF4's table is within half a step of its levels (1/2047); MXFP4's (E2M1 times 2) is exact. Both stay within
    2047, which keeps the kernel's int32 sums from overflowing."""
    from acik.quant.linear import MXFP4Linear, NF4Linear
    from acik.quant.mxfp4 import FP4_VALUES

    nf4 = NF4Linear.TABLE[:16].double() * NF4Linear.UNIT
    assert (nf4 - torch.tensor(methods.NF4_LEVELS, dtype=torch.float64)).abs().max() <= 0.5 * NF4Linear.UNIT + 1e-9
    assert torch.equal(MXFP4Linear.TABLE[:16].double() * MXFP4Linear.UNIT, torch.tensor(FP4_VALUES).double().abs()
                       * torch.tensor(FP4_VALUES).double().sign())
    assert max(NF4Linear.TABLE.abs().max(), MXFP4Linear.TABLE.abs().max()) <= 2047


@needs_table_kernel
@pytest.mark.parametrize("method", ["nf4", "mxfp4"])
def test_table_kernel_matches_the_reference(method):
    """The table kernel against the float64 matmul with the dequantized weight: fp32 to 1e-3 of the largest output
    for NF4 (its levels are rounded to 1/2047) and 1e-4 for MXFP4 (exact levels; only the activations are
    rounded), bf16 to its output rounding; block tails, 0-9 rows, one and two threads, and a NaN row."""
    from acik.quant.linear import MXFP4Linear, NF4Linear

    cls = NF4Linear if method == "nf4" else MXFP4Linear
    g = torch.Generator().manual_seed(2)
    threads = torch.get_num_threads()
    try:
        for (n, k, group), rows, dtype, nthreads in [
            ((176, 320, 32), 1, torch.float32, 2), ((176, 256, 64), 5, torch.bfloat16, 2),
            ((16, 256, 128), 3, torch.float32, 2), ((80, 384, 64), 9, torch.float32, 1),
            ((64, 64, 32), 0, torch.float32, 2),
        ]:
            torch.set_num_threads(nthreads)
            lin = torch.nn.Linear(k, n)
            with torch.no_grad():
                lin.weight.copy_(torch.randn(n, k, generator=g) * 0.05)
                lin.bias.copy_(torch.randn(n, generator=g))
            layer = cls.from_linear(lin, group) if method == "nf4" else cls.from_linear(lin)
            packed, scale = cpu_matmul.block_table(*layer._table_inputs())
            x = (torch.randn(rows, k, generator=g) * torch.rand(k, generator=g) * 3).to(dtype)
            y = cpu_matmul.table_matmul(x, packed, scale, cls.TABLE, cls.UNIT, layer.group_size, lin.bias.detach())
            ref = torch.nn.functional.linear(x.double(), layer.dequantize().double(), lin.bias.detach().double())
            assert y.dtype == dtype and y.shape == (rows, n)
            if rows:
                close = 1e-3 if method == "nf4" else 1e-4
                tol = (close if dtype == torch.float32 else 1e-2) * ref.abs().max().item()
                assert (y.double() - ref).abs().max().item() <= tol, (n, k, group, rows, dtype)
        x = torch.randn(2, 64)
        x[1, 3] = float("nan")
        small = torch.nn.Linear(64, 32)
        layer = cls.from_linear(small, 32) if method == "nf4" else cls.from_linear(small)
        y = cpu_matmul.table_matmul(x, *cpu_matmul.block_table(*layer._table_inputs()), cls.TABLE, cls.UNIT, 32)
        assert y[0].isfinite().all() and y[1].isnan().all()
    finally:
        torch.set_num_threads(threads)


@needs_table_kernel
@pytest.mark.parametrize("method", ["nf4", "mxfp4"])
def test_table_layers_use_the_kernel_and_fall_back(method, monkeypatch):
    from acik.quant.linear import MXFP4Linear, NF4Linear

    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 48)
    x = torch.randn(2, 3, 128)

    def make():
        return NF4Linear.from_linear(lin, 64) if method == "nf4" else MXFP4Linear.from_linear(lin)

    layer = make()
    ref = torch.nn.functional.linear(x, layer.dequantize(), lin.bias)
    with torch.no_grad():
        assert torch.allclose(layer(x), ref, atol=2e-3) and layer._kernel is not None
    monkeypatch.setenv("ACIK_CPU_KERNELS", "0")  # dequantize per call: exact
    layer = make()
    with torch.no_grad():
        assert torch.allclose(layer(x), ref, atol=1e-5) and layer._kernel_weights() is None


@needs_cpu_kernels
def test_int8_kernel_propagates_nan_and_inf():
    codes = torch.randint(-127, 128, (32, 64), dtype=torch.int8)
    x = torch.randn(3, 64)
    x[1, 5] = float("nan")
    x[2, 7] = float("inf")
    y = cpu_matmul.int8_matmul(x, cpu_matmul.block(codes), torch.ones(32))
    assert y[0].isfinite().all() and y[1].isnan().all() and y[2].isnan().all()


@needs_cpu_kernels
def test_int8_kernel_shares_torchs_openmp_runtime():
    """The kernel links the OpenMP runtime torch loaded: a second one would run a second pool of threads, which
    on few cores slows every parallel region (acik.engine.openmp)."""
    cpu_matmul.int8_matmul(torch.randn(1, 64), cpu_matmul.block(torch.ones(32, 64, dtype=torch.int8)), torch.ones(32))
    maps = open("/proc/self/maps").read().split("\n")
    runtimes = {line.split()[-1] for line in maps if "libgomp" in line or "libomp" in line or "libiomp" in line}
    assert len(runtimes) == 1, runtimes


@needs_cpu_kernels
def test_int8_layer_uses_acik_kernel_and_falls_back(monkeypatch):
    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 48)
    x = torch.randn(2, 3, 128)
    ref = torch.nn.functional.linear(x, Int8Linear.from_linear(lin).dequantize(), lin.bias)
    layer = Int8Linear.from_linear(lin)
    with torch.no_grad():
        assert torch.allclose(layer(x), ref, atol=1e-4) and layer._kernel[0] == "acik"
    monkeypatch.setenv("ACIK_CPU_KERNELS", "0")  # PyTorch's kernel (bf16 activations)
    layer = Int8Linear.from_linear(lin)
    with torch.no_grad():
        assert torch.allclose(layer(x), ref, atol=2e-2) and layer._kernel[0] == "aten"
    odd = Int8Linear.from_linear(torch.nn.Linear(128, 40))  # 40 outputs: not whole blocks of 16
    monkeypatch.delenv("ACIK_CPU_KERNELS")
    with torch.no_grad():
        odd(x)
    assert odd._kernel[0] == "aten"


@pytest.mark.slow
@needs_cpu_kernels
def test_cpu_kernels_under_torch_compile():
    """Compiled, the kernels are opaque operators (acik::int8_matmul, acik::int4_matmul, acik::table_matmul) inside
    one graph: the same outputs as eager."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.GELU(), torch.nn.Linear(96, 32))
    quantize_model(model, "int8", skip=[])
    model[2] = Int4Linear.from_linear(torch.nn.Linear(96, 32), 32)
    if cpu_matmul.supports_table():
        from acik.quant.linear import MXFP4Linear, NF4Linear

        model.append(NF4Linear.from_linear(torch.nn.Linear(32, 32), 32))
        model.append(MXFP4Linear.from_linear(torch.nn.Linear(32, 32)))
    x = torch.randn(3, 64)
    with torch.no_grad():
        want = model(x)
        got = torch.compile(model, fullgraph=True)(x)
    assert model[0]._kernel[0] == "acik" and model[2]._kernel[0] == "acik"
    # Inductor's GELU may differ from eager's by an ulp, and the next kernel rounds its input to int16 steps of
    # 1/32767 of the row's largest value, so one step may move: the kernels' own bound, 1e-4 (not 1e-5).
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


# --- model directories ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base_dir(quant_base_dir):
    return quant_base_dir


IDS = torch.tensor([[1, 5, 9, 200, 17, 3, 250, 42]])


@pytest.mark.parametrize("method", METHODS)
def test_optimized_quantized_model_fuses_and_matches(base_dir, method):
    """LLM.optimize fuses quantized q/k/v and gate/up by concatenating codes and scales: same logits."""
    plain = acik.load(base_dir, quantize=method, group_size=GROUP[method])
    fast = acik.load(base_dir, quantize=method, group_size=GROUP[method], optimize=True)
    attn = fast.model.model.layers[0].self_attn
    assert type(attn.qkv_proj).__name__ == type(plain.model.model.layers[0].self_attn.q_proj).__name__
    assert attn.qkv_proj.out_features == 128 + 2 * 64
    with torch.no_grad():
        ref, got = plain.model(IDS), fast.model(IDS)
    torch.testing.assert_close(got, ref, atol=1e-4 * ref.abs().max().item(), rtol=0)
    # the CPU kernels' layouts (int4, acik's int8) replace the stored codes instead of sitting beside them
    nbytes = [sum(b.numel() * b.element_size() for b in m.model.buffers()) for m in (plain, fast)]
    assert nbytes[1] <= nbytes[0]
    own_layout = (method.startswith("int4") or (method == "int8" and cpu_matmul.available())
                  or (method in ("nf4", "mxfp4") and cpu_matmul.supports_table()))
    assert ("kernel_weight" in attn.qkv_proj._buffers) == own_layout


@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip(base_dir, tmp_path, method):
    llm = acik.load(base_dir, quantize=method)
    with torch.no_grad():
        before = llm.model(IDS)
        dense = acik.load(base_dir).model(IDS)
    assert rel_err(before, dense) < 0.2
    llm.save(tmp_path / method)
    qc = json.loads((tmp_path / method / "config.json").read_text())["quantization_config"]
    assert qc["acik"]["method"] == method
    manifest = json.loads((tmp_path / method / "acik.json").read_text())
    assert manifest["quantization"]["method"] == method and manifest["parents"][0]["role"] == "source"
    again = acik.load(tmp_path / method)
    with torch.no_grad():
        assert torch.equal(again.model(IDS), before)
    with pytest.raises(QuantizationError, match="already quantized"):
        quantize_model(again.model, "int8")
    with pytest.raises(QuantizationError, match="already quantized"):
        acik.load(tmp_path / method, quantize="int4")


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_transformers_reads_compressed_tensors(base_dir, tmp_path, method):
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    # int8 with its head quantized too: transformers must read that, not drop its scales.
    llm = acik.load(base_dir, quantize=method, skip=[] if method == "int8" else None)
    llm.save(tmp_path / method)
    # compressed-tensors 0.20's meta-device setup leaves asymmetric zero points unpacked, so the
    # int4 route that keeps weights compressed rejects packed ones; dequantize=True reads them.
    kwargs = {"quantization_config": CompressedTensorsConfig(dequantize=True)} if method == "int4" else {}
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / method, **kwargs).eval()
    with torch.no_grad():
        ours = llm.model(IDS).float()
        theirs = hf(IDS).logits.float()
        dense = acik.load(base_dir).model(IDS)
    assert isinstance(llm.model.lm_head, QuantLinear) == (method == "int8")
    # Same weights, so agreement far inside the quantization error (ours runs activations in bf16).
    assert (ours - theirs).abs().max() < 0.1 * (ours - dense).abs().max() + 5e-3


@pytest.mark.parametrize("method", ["int4", "nf4"])  # compressed-tensors and acik's own layout
def test_int8_head_under_a_4bit_method(base_dir, tmp_path, method):
    """head="int8": the body in 4 bits, the output head per channel in 8 (llama.cpp's choice); the directory
    records it (a second compressed-tensors group targeting lm_head, for int4) and reloads the same layers."""
    from acik.info import describe

    llm = acik.load(base_dir, quantize=method, head="int8")
    assert isinstance(llm.model.lm_head, Int8Linear) and llm.model.quantization["head"] == "int8"
    assert type(llm.model.model.layers[0].self_attn.q_proj).__name__ != "Int8Linear"
    assert llm.model.quantization["skip"] == []
    llm.save(tmp_path / "q")
    qc = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert qc["acik"]["head"] == "int8"
    if method == "int4":
        groups = qc["config_groups"]
        assert groups["group_1"]["targets"] == ["lm_head"] and groups["group_1"]["weights"]["num_bits"] == 8
        assert groups["group_0"]["weights"]["num_bits"] == 4 and qc["ignore"] == []
    again = acik.load(tmp_path / "q")
    assert isinstance(again.model.lm_head, Int8Linear) and again.model.quantization["head"] == "int8"
    with torch.no_grad():
        assert torch.equal(again.model(IDS), llm.model(IDS))
        dense, bf16_head = acik.load(base_dir).model(IDS), acik.load(base_dir, quantize=method).model(IDS)
    # the 8-bit head adds little to the 4-bit body's error
    assert rel_err(llm.model(IDS).detach(), dense) < 1.1 * rel_err(bf16_head, dense) + 0.01
    assert ", lm_head int8" in describe(tmp_path / "q")


def test_head_option_errors():
    model = Transformer(ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                    num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(QuantizationError, match="keeps it"):
        quantize_model(model, "int4", 32, skip=["lm_head"], head="int8")
    with pytest.raises(QuantizationError, match="head='int4'"):
        quantize_model(model, "int4", 32, head="int4")
    assert not any(isinstance(m, QuantLinear) for m in model.modules())  # refused before changing anything


def test_info_shows_bits_and_bytes(base_dir, tmp_path):
    from acik.info import describe

    acik.load(base_dir, quantize="int4").save(tmp_path / "q")
    text = describe(tmp_path / "q")
    assert "int4, group size 64 (compressed-tensors format), 14 linear layers" in text
    assert "4.32 bits per weight" in text


def test_cli_quantize(base_dir, tmp_path, capsys):
    from acik.cli import main

    out = tmp_path / "nf4"
    assert main(["quantize", str(base_dir), "--method", "nf4", "--group-size", "32", "--out", str(out)]) == 0
    assert "nf4" in capsys.readouterr().out
    manifest = json.loads((out / "acik.json").read_text())
    assert manifest["quantization"]["group_size"] == 32 and manifest["recipe"]["method"] == "nf4"
    assert main(["verify", str(out)]) == 0
    assert main(["quantize", str(out), "--method", "int8", "--out", str(tmp_path / "again")]) == 2
    assert "already quantized" in capsys.readouterr().err


# --- bad input -----------------------------------------------------------------------------------

def test_unknown_method_lists_valid_ones():
    with pytest.raises(QuantizationError, match="valid methods: int8, int4, int4-hqq, nf4, mxfp4, w8a8"):
        quantize_model(torch.nn.Sequential(torch.nn.Linear(64, 64)), "int3")


def test_group_size_must_divide_in_features():
    model = torch.nn.Sequential(torch.nn.Linear(96, 64))
    with pytest.raises(QuantizationError, match=r"0: in_features 96 is not divisible by the group size 64.*32"):
        quantize_model(model, "int4", 64, skip=[])
    assert type(model[0]) is torch.nn.Linear  # nothing half-done
    with pytest.raises(QuantizationError, match="group size 48 not supported"):
        quantize_model(model, "int4", 48, skip=[])
    with pytest.raises(QuantizationError, match="one scale per output channel"):
        quantize_model(model, "w8a8", 64, skip=[])  # int8 takes blocks (tests/test_quant_int8_blocks.py)
    with pytest.raises(QuantizationError, match="fixes its group size at 32"):
        quantize_model(model, "mxfp4", 64, skip=[])


@pytest.mark.parametrize("method", METHODS)
def test_default_skip(base_dir, tmp_path, method):
    """int8 quantizes the output head (as llama.cpp's Q8_0 does), every other method keeps it unless told
    otherwise; the skip list is written out, so the directory reloads the same layers."""
    llm = acik.load(base_dir, quantize=method)
    head_quantized = method == "int8"
    assert isinstance(llm.model.lm_head, QuantLinear) == head_quantized
    assert llm.model.quantization["skip"] == ([] if head_quantized else ["lm_head"])
    everything = acik.load(base_dir, quantize=method, group_size=GROUP[method], skip=[])
    assert isinstance(everything.model.lm_head, QuantLinear)
    kept = acik.load(base_dir, quantize=method, group_size=GROUP[method], skip=["lm_head"])
    assert type(kept.model.lm_head) is torch.nn.Linear
    if method == "int8":
        llm.save(tmp_path / "q")
        assert isinstance(acik.load(tmp_path / "q").model.lm_head, QuantLinear)
        kept.save(tmp_path / "kept")
        assert type(acik.load(tmp_path / "kept").model.lm_head) is torch.nn.Linear


def test_cli_head_default_and_skip(base_dir, tmp_path):
    from acik.cli import main

    assert main(["quantize", str(base_dir), "--method", "int4", "--out", str(tmp_path / "a")]) == 0
    qc = json.loads((tmp_path / "a" / "config.json").read_text())["quantization_config"]
    assert qc["ignore"] == ["lm_head"] and qc["acik"]["skip"] == ["lm_head"]
    assert main(["quantize", str(base_dir), "--method", "int4", "--skip", "", "--out", str(tmp_path / "b")]) == 0
    assert isinstance(acik.load(tmp_path / "b").model.lm_head, QuantLinear)
    assert main(["quantize", str(base_dir), "--method", "int8", "--skip", "lm_head", "--out", str(tmp_path / "c")]) == 0
    qc = json.loads((tmp_path / "c" / "config.json").read_text())["quantization_config"]
    assert qc["ignore"] == ["lm_head"] and type(acik.load(tmp_path / "c").model.lm_head) is torch.nn.Linear
    assert main(["quantize", str(base_dir), "--method", "int4", "--head", "int8", "--out", str(tmp_path / "d")]) == 0
    assert isinstance(acik.load(tmp_path / "d").model.lm_head, Int8Linear)


def test_tied_head_never_quantized():
    cfg = ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = quantize_model(Transformer(cfg), "int8", skip=[])
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_skip_keeps_layers_dense(base_dir):
    llm = acik.load(base_dir, quantize="int8", skip=["lm_head", "down_proj", "layers.0"])
    m = llm.model
    assert type(m.lm_head) is torch.nn.Linear and type(m.model.layers[1].mlp.down_proj) is torch.nn.Linear
    assert type(m.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert isinstance(m.model.layers[1].self_attn.q_proj, QuantLinear)


@pytest.mark.slow
def test_nf4_codes_match_bitsandbytes():
    bnb = pytest.importorskip("bitsandbytes.functional")
    w = weights(64, 256)
    packed, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4")
    theirs = packed.flatten()
    theirs = torch.stack((theirs >> 4, theirs & 0x0F), dim=-1).flatten().reshape(w.shape)  # high nibble first
    ours, _ = methods.quantize_nf4(w, 64)
    # Ties can fall either way where our fp16 absmax differs from bitsandbytes' fp32 one.
    assert (ours == theirs).float().mean() > 0.995
