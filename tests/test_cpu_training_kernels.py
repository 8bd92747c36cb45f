"""acik's CPU training kernels (acik.kernels.cpu_training): causal attention with and without RoPE, RMSNorm and
SwiGLU, forward and backward, against float64 references built from PyTorch's own operators; on this CPU's
path and the AVX2 one; the same bits for any thread count; and a whole model's gradients with the kernels
against the same model on PyTorch's operators."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from acik.config import ModelConfig
from acik.kernels import cpu_training
from acik.model import Transformer
from acik.model.attention import first_keys
from acik.model.rope import RotaryEmbedding, apply_rope
from acik.train.loop import token_losses

pytestmark = pytest.mark.skipif(
    cpu_training.library() is None,
    reason="acik's CPU kernels cannot be built here (they need Linux x86-64 with AVX2, a C compiler, OpenMP torch)")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def reference_attention(q, k, v, scale, cos=None, sin=None, first=None):
    """float64: apply_rope then SDPA on the [B, H, T, D] layout (with the mask of `first` keys if given); returns
    the output and a function of the output gradient giving (dq, dk, dv)."""
    q, k, v = (x.double().detach().requires_grad_() for x in (q, k, v))
    qt, kt = q.transpose(1, 2), k.transpose(1, 2)
    if cos is not None:
        c, s = cos.double()[:, None], sin.double()[:, None]
        qt, kt = apply_rope(qt, c, s), apply_rope(kt, c, s)
    T = q.shape[1]
    j, i = torch.arange(T)[None, None, :], torch.arange(T)[None, :, None]
    mask = None if first is None else ((j <= i) & (j >= first[:, :, None]))[:, None]
    out = F.scaled_dot_product_attention(qt, kt, v.transpose(1, 2), attn_mask=mask, is_causal=mask is None,
                                         scale=scale, enable_gqa=True).transpose(1, 2)

    def grads(g):
        return torch.autograd.grad(out, (q, k, v), g.double())
    return out, grads


def tables(B: int, T: int, D: int, batch_rows: bool):
    cfg = ModelConfig(hidden_size=D * 2, num_attention_heads=2, num_key_value_heads=1)
    pos = torch.arange(T).expand(B if batch_rows else 1, T) + torch.arange(B if batch_rows else 1)[:, None] * 3
    cos, sin = RotaryEmbedding(cfg)(pos, torch.float32)
    return cos[:, 0], sin[:, 0]


@pytest.mark.parametrize("march", ["native", "haswell"])  # this CPU's path (AVX-512 here) and the AVX2 one
def test_attention_matches_the_float64_reference(march, monkeypatch):
    """Forward and all three gradients within 2e-6 of the largest value, for GQA and plain heads, head sizes
    16-128, lengths that end mid-block (1, 63, 100, 257), with RoPE tables per batch row, shared, or none (a head
    of 16 rotates halves narrower than an AVX-512 vector: the scalar path)."""
    monkeypatch.setenv("ACIK_CPU_KERNEL_MARCH", march)
    g = torch.Generator().manual_seed(0)
    for (B, T, H, Hkv, D), rope in [((2, 100, 4, 2, 32), "rows"), ((1, 257, 2, 1, 64), "shared"),
                                    ((3, 63, 3, 3, 16), "rows"), ((2, 130, 4, 4, 128), None),
                                    ((2, 1, 2, 1, 32), "rows")]:
        q, k, v = (torch.randn(B, T, h, D, generator=g) for h in (H, Hkv, Hkv))
        cos, sin = tables(B, T, D, rope == "rows") if rope else (None, None)
        q, k, v = (x.requires_grad_() for x in (q, k, v))
        out = cpu_training.causal_attention(q, k, v, D ** -0.5, cos, sin)
        ref, ref_grads = reference_attention(q, k, v, D ** -0.5, cos, sin)
        assert rel_err(out, ref) < 2e-6, (B, T, H, Hkv, D, rope)
        go = torch.randn(B, T, H, D, generator=g)
        for got, want in zip(torch.autograd.grad(out, (q, k, v), go), ref_grads(go)):
            assert got.shape == want.shape and torch.isfinite(got).all()
            assert (got.double() - want).abs().max() < 2e-6 * max(want.abs().max().item(), 1.0), (B, T, H, D, rope)


@pytest.mark.parametrize("march", ["native", "haswell"])
def test_attention_with_first_keys_matches_the_masked_reference(march, monkeypatch):
    """Packed examples and sliding windows: query i sees keys first[i] .. i, including rows whose block holds
    no visible key and key blocks skipped whole."""
    monkeypatch.setenv("ACIK_CPU_KERNEL_MARCH", march)
    g = torch.Generator().manual_seed(5)
    B, T, H, Hkv, D = 2, 200, 4, 2, 32
    index = torch.arange(T)
    starts = torch.tensor([[0] * 70 + [70] * 100 + [170] * 30, [0] * 200])
    window = torch.clamp(index - 47, min=0).expand(B, T)
    for first in (starts, window, torch.maximum(starts, window)):
        q, k, v = (torch.randn(B, T, h, D, generator=g).requires_grad_() for h in (H, Hkv, Hkv))
        cos, sin = tables(B, T, D, True)
        out = cpu_training.causal_attention(q, k, v, 0.3, cos, sin, first)
        ref, ref_grads = reference_attention(q, k, v, 0.3, cos, sin, first)
        assert rel_err(out, ref) < 2e-6
        go = torch.randn(B, T, H, D, generator=g)
        for got, want in zip(torch.autograd.grad(out, (q, k, v), go), ref_grads(go)):
            assert (got.double() - want).abs().max() < 2e-6 * max(want.abs().max().item(), 1.0)


def test_first_keys_of_packed_rows_and_windows():
    cfg = ModelConfig(hidden_size=32, num_attention_heads=2, num_key_value_heads=1, sliding_window=3)
    seg = torch.tensor([[1, 1, 1, 2, 2, 0, 0]])
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 0]])  # packing's padding: segment 0, positions 0
    assert first_keys(pos, seg, cfg, "full_attention").tolist() == [[0, 0, 0, 3, 3, 5, 5]]
    assert first_keys(pos, seg, cfg, "sliding_attention").tolist() == [[0, 0, 0, 3, 3, 5, 5]]
    plain = torch.arange(6)[None]
    assert first_keys(plain, None, cfg, "full_attention") is None
    assert first_keys(plain, None, cfg, "sliding_attention").tolist() == [[0, 0, 0, 1, 2, 3]]
    # masks that are not ranges take the masked path: an id in two runs, positions that skip
    assert first_keys(pos, torch.tensor([[1, 1, 2, 2, 1, 1, 1]]), cfg, "full_attention") is False
    assert first_keys(torch.tensor([[0, 1, 5, 6, 7, 8, 9]]), seg, cfg, "full_attention") is False
    assert first_keys(plain, None, cfg, "block_sparse_attention") is False


def test_attention_is_the_same_for_any_thread_count_and_takes_bf16():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(4, 150, h, 32, generator=g).requires_grad_() for h in (4, 2, 2))
    go = torch.randn(4, 150, 4, 32, generator=g)
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out = cpu_training.causal_attention(q, k, v, 0.2)
            runs.append((out, *torch.autograd.grad(out, (q, k, v), go)))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    out = cpu_training.causal_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), 0.2)
    assert out.dtype == torch.bfloat16 and rel_err(out, runs[0][0]) < 2e-2


@pytest.mark.parametrize("march", ["native", "haswell"])
def test_rms_norm_and_swiglu_match_the_float64_reference(march, monkeypatch):
    monkeypatch.setenv("ACIK_CPU_KERNEL_MARCH", march)
    g = torch.Generator().manual_seed(2)
    for rows, C in [(1, 16), (130, 64), (300, 256)]:
        x, w = torch.randn(rows, C, generator=g).requires_grad_(), (torch.rand(C, generator=g) + 0.5).requires_grad_()
        y = cpu_training.rms_norm(x, w, 1e-5)
        xd, wd = x.double().detach().requires_grad_(), w.double().detach().requires_grad_()
        ref = wd * F.rms_norm(xd, (C,), eps=1e-5)
        assert rel_err(y, ref) < 1e-6
        gy = torch.randn(rows, C, generator=g)
        for got, want in zip(torch.autograd.grad(y, (x, w), gy), torch.autograd.grad(ref, (xd, wd), gy.double())):
            assert rel_err(got, want) < 1e-5, (rows, C)
    for n in (1, 7, 16, 1000, 4099):  # vector tails
        gate, up = (torch.randn(n, generator=g).mul(4).requires_grad_() for _ in range(2))
        gate.data[0] = -100.0  # exp's clamp: silu(-100) is -0.0 to fp32
        h = cpu_training.swiglu(gate, up)
        gd, ud = gate.double().detach().requires_grad_(), up.double().detach().requires_grad_()
        ref = F.silu(gd) * ud
        assert rel_err(h, ref) < 1e-6
        gh = torch.randn(n, generator=g)
        for got, want in zip(torch.autograd.grad(h, (gate, up), gh), torch.autograd.grad(ref, (gd, ud), gh.double())):
            assert rel_err(got, want) < 1e-6, n
        hb = cpu_training.swiglu(gate.bfloat16(), up.bfloat16())  # bf16 in and out, rounded once
        want = F.silu(gate.bfloat16().double()) * up.bfloat16().double()
        assert hb.dtype == torch.bfloat16 and rel_err(hb, want) < 8e-3


def test_rms_norm_weight_gradient_is_the_same_for_any_thread_count():
    """dw sums over rows in fixed chunks, then over the chunks in order: no dependence on the team size."""
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(1000, 128, generator=g).requires_grad_(), torch.rand(128, generator=g).requires_grad_()
    gy = torch.randn(1000, 128, generator=g)
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            runs.append(torch.autograd.grad(cpu_training.rms_norm(x, w, 1e-6), (x, w), gy))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize("extra", [{}, {"qk_norm": "head"}, {"partial_rotary_factor": 0.5},
                                   {"q_bias": True, "k_bias": True, "v_bias": True}])
def test_model_gradients_with_the_kernels_match_pytorch_operators(extra, monkeypatch):
    """Training on a CPU runs the kernels: a model's loss and gradients agree with PyTorch's operators."""
    cfg = ModelConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, **extra)
    ids = torch.randint(0, 97, (3, 71), generator=torch.Generator().manual_seed(4))
    assert_kernels_match_pytorch(cfg, monkeypatch, ids[:, :-1], ids[:, 1:])


def assert_kernels_match_pytorch(cfg: ModelConfig, monkeypatch, ids, targets, **forward) -> None:
    """The same model and batch through the kernels and through PyTorch's operators (ACIK_CPU_KERNELS=0):
    loss and every gradient to fp32 rounding."""
    def run(kernels: str):
        monkeypatch.setenv("ACIK_CPU_KERNELS", kernels)
        model = Transformer(cfg)
        model.init_weights(0)
        loss = token_losses(model(ids, **forward), targets) / (targets != -100).sum()
        loss.backward()
        return loss.item(), {n: p.grad for n, p in model.named_parameters()}

    loss, grads = run("1")
    ref_loss, ref_grads = run("0")
    assert abs(loss - ref_loss) < 1e-5
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        assert rel_err(grad, ref_grads[name]) < 2e-5, name


@pytest.mark.parametrize("sliding", [None, 16])
def test_packed_and_sliding_window_gradients_match_pytorch_operators(sliding, monkeypatch):
    """Packed examples as acik.train.sft packs them (segment ids, positions restarting per example, padding as
    segment 0 with no targets), with full or sliding-window layers: the kernel's gradients against the masked
    PyTorch path."""
    cfg = ModelConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, sliding_window=sliding)
    g = torch.Generator().manual_seed(6)
    ids = torch.randint(0, 97, (2, 90), generator=g)
    seg = torch.tensor([[1] * 30 + [2] * 45 + [0] * 15, [1] * 90])
    pos = torch.cat([torch.arange(30), torch.arange(45), torch.zeros(15, dtype=torch.long)])[None]
    pos = torch.cat([pos, torch.arange(90)[None]])
    targets = torch.randint(0, 97, (2, 90), generator=g).masked_fill(seg == 0, -100)
    assert_kernels_match_pytorch(cfg, monkeypatch, ids, targets, positions=pos, segment_ids=seg)


def test_model_uses_the_kernels_only_for_training(monkeypatch):
    """Inference (no grad) keeps PyTorch's operators: logits there stay bit-identical to transformers'."""
    calls = []
    real = cpu_training._forward
    monkeypatch.setattr(cpu_training, "_forward", lambda *a: calls.append(1) or real(*a))
    model = Transformer(ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                    num_attention_heads=2, num_key_value_heads=1))
    ids = torch.randint(0, 50, (1, 9))
    with torch.no_grad():
        model(ids)
    assert not calls
    model(ids).sum().backward()
    assert calls


@pytest.mark.parametrize("march", ["native", "haswell"])
def test_cross_entropy_matches_the_float64_reference(march, monkeypatch):
    """Per-row loss with z-loss and ignored rows, and the logits' gradient, for vocabularies that end mid-vector;
    bf16 logits computed in fp32 (the gradient in bf16); an out-of-range target is refused, as PyTorch does."""
    monkeypatch.setenv("ACIK_CPU_KERNEL_MARCH", march)
    g = torch.Generator().manual_seed(7)
    for N, V, z in [(5, 16, 0.0), (37, 260, 1e-4), (8, 1000, 0.0), (3, 7, 1e-2)]:
        logits = (torch.randn(N, V, generator=g) * 3).requires_grad_()
        targets = torch.randint(0, V, (N,), generator=g)
        targets[1] = -100
        loss = cpu_training.cross_entropy(logits, targets, z)
        xd = logits.double().detach().requires_grad_()
        lse = xd.logsumexp(-1)
        ref = (F.cross_entropy(xd, targets, ignore_index=-100, reduction="none") + z * lse ** 2) * (targets != -100)
        assert loss.shape == (N,) and loss[1] == 0 and rel_err(loss, ref) < 1e-6, (N, V)
        w = torch.rand(N, generator=g)  # a different upstream gradient per row
        got, = torch.autograd.grad((loss * w).sum(), logits)
        want, = torch.autograd.grad((ref * w.double()).sum(), xd)
        assert rel_err(got, want) < 1e-5 and not got[1].any(), (N, V)
        lb = logits.detach().bfloat16().requires_grad_()
        loss_b = cpu_training.cross_entropy(lb, targets, z)
        ref_b = F.cross_entropy(lb.double(), targets, ignore_index=-100, reduction="none")
        ref_b = (ref_b + z * lb.double().logsumexp(-1) ** 2) * (targets != -100)
        assert loss_b.dtype == torch.float32 and rel_err(loss_b, ref_b) < 1e-6
        got_b, = torch.autograd.grad(loss_b.sum(), lb)
        want_b, = torch.autograd.grad(ref_b.sum(), lb)  # float64 math on the bf16 logits, rounded to bf16
        assert got_b.dtype == torch.bfloat16 and rel_err(got_b, want_b) < 2e-2
    with pytest.raises(ValueError, match="target 9 is out of range for 7 classes"):
        cpu_training.cross_entropy(torch.randn(2, 7), torch.tensor([1, 9]))
