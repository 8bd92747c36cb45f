"""int8 in blocks (GGUF's Q8_0 at 32 inputs a block): the codec against llama.cpp's, acik's block kernel against
the dequantized reference on both instruction sets, the layer's fallback, the 8-bit embedding and the head tied to
it (one copy of the table), and `acik quantize --method int8 --group-size 32` round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import acik
from acik.config import ModelConfig
from acik.kernels import cpu_matmul
from acik.model import Transformer
from acik.quant import Int8Linear, QuantEmbedding, QuantizationError, methods, quantize_model

needs_cpu_kernels = pytest.mark.skipif(
    not cpu_matmul.available(),
    reason="acik's CPU kernels cannot be built here (they need Linux x86-64 with AVX2, a C compiler, OpenMP torch)")


def q8_0_blocks(w: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """llama.cpp's own Q8_0 quantization of w [out, in] (the gguf package's reference), split into (codes int8
    [out, in], scales fp16 [out, in / 32]) as a GGUF reader does: each 34-byte block is d (fp16), then 32 codes."""
    import gguf

    raw = gguf.quants.quantize(w.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)  # uint8 [out, in / 32 * 34]
    blocks = raw.reshape(w.shape[0], -1, 34)
    scales = torch.from_numpy(blocks[..., :2].copy().view(np.float16)[..., 0])
    codes = torch.from_numpy(blocks[..., 2:].copy().view(np.int8).reshape(w.shape))
    return codes, scales


def test_codes_and_scales_match_llama_cpp_q8_0():
    """Our int8 g32 quantizer is llama.cpp's Q8_0 (a code may differ by one where the fp16 rounding of the scale
    moves a weight across a rounding boundary: ours picks codes against the stored scale), and a Q8_0 tensor read
    through from_blocks dequantizes exactly as gguf's reference dequantizer."""
    import gguf

    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 256, generator=g) * 0.02
    w[3, :32] = 0.0  # an all-zero block: scale 0, codes 0
    codes, scales = methods.quantize_int8(w, 32)
    ref_codes, ref_scales = q8_0_blocks(w.numpy())
    assert codes.dtype == torch.int8 and scales.dtype == torch.float16 and scales.shape == (48, 8)
    assert torch.equal(scales, ref_scales)
    assert (codes.int() - ref_codes.int()).abs().max() <= 1 and (codes != ref_codes).float().mean() < 0.01
    assert codes.abs().max() <= 127 and not codes[3, :32].any()
    back = methods.dequantize_int8(codes, scales)
    assert ((back - w).abs().reshape(48, 8, 32) <= scales.float()[..., None] / 2 + 1e-9).all()

    raw = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q8_0)
    layer = Int8Linear.from_blocks(ref_codes, ref_scales)
    want = torch.from_numpy(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q8_0))
    assert layer.group_size == 32 and torch.equal(layer.dequantize(), want)
    assert layer.weight is ref_codes or layer.weight.data_ptr() == ref_codes.data_ptr()  # kept, not copied


def test_from_blocks_rejects_bad_input():
    with pytest.raises(ValueError, match="int8 codes"):
        Int8Linear.from_blocks(torch.zeros(4, 64), torch.ones(4, 2))
    with pytest.raises(ValueError, match=r"scales \(4, 3\)"):
        Int8Linear.from_blocks(torch.zeros(4, 64, dtype=torch.int8), torch.ones(4, 3))
    with pytest.raises(ValueError, match="divisible by the block size"):
        QuantEmbedding(10, 48, group_size=32)
    with pytest.raises(ValueError, match="w8a8 keeps one scale per channel"):
        Int8Linear(64, 16, False, activations=True, group_size=32)


@needs_cpu_kernels
@pytest.mark.parametrize("march", ["native", "haswell"])  # this CPU's path (AVX-512 VNNI here) and the AVX2 one
def test_block_kernel_matches_the_dequantized_reference(march, monkeypatch):
    """The kernel against the float64 matmul with the dequantized weight: fp32 to 1e-4 of the largest output (it
    rounds activations to int16, as acik's int8 kernel), bf16 to its output rounding. Output counts that are not
    whole tiles of 4 (the tails), groups of 32, 64 and 4096 (a partial set of 16 scales), 0-9 rows, 1-2 threads."""
    monkeypatch.setenv("ACIK_CPU_KERNEL_MARCH", march)
    assert cpu_matmul.isa() in (("avx2",) if march == "haswell" else ("avx2", "avx512-vnni"))
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    try:
        for (n, k, group), rows, dtype, bias, nthreads in [
            ((1536, 576, 32), 1, torch.float32, True, 2), ((7, 320, 32), 3, torch.float32, False, 1),
            ((50, 256, 64), 5, torch.bfloat16, True, 2), ((1, 32, 32), 2, torch.float32, True, 2),
            ((33, 8192, 4096), 9, torch.float32, False, 2), ((192, 576, 32), 4, torch.bfloat16, False, 1),
            ((64, 64, 32), 0, torch.float32, True, 2),
        ]:
            torch.set_num_threads(nthreads)
            codes = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
            scales = (torch.rand(n, k // group, generator=g) * 0.01 + 1e-4).half()
            b = torch.randn(n, generator=g) if bias else None
            x = (torch.randn(rows, k, generator=g) * torch.rand(k, generator=g) * 3).to(dtype)
            y = cpu_matmul.int8_block_matmul(x, codes, scales, group, b)
            ref = torch.nn.functional.linear(x.double(), methods.dequantize_int8(codes, scales, torch.float64),
                                             None if b is None else b.double())
            assert y.dtype == dtype and y.shape == (rows, n)
            if rows:
                tol = (1e-4 if dtype == torch.float32 else 1e-2) * max(ref.abs().max().item(), 1.0)
                assert (y.double() - ref).abs().max().item() <= tol, (n, k, group, rows, dtype)
    finally:
        torch.set_num_threads(threads)


@needs_cpu_kernels
def test_block_kernel_propagates_nan_and_inf():
    codes = torch.randint(-127, 128, (12, 64), dtype=torch.int8)
    x = torch.randn(3, 64)
    x[1, 5], x[2, 7] = float("nan"), float("inf")
    y = cpu_matmul.int8_block_matmul(x, codes, torch.ones(12, 2, dtype=torch.float16), 32)
    assert y[0].isfinite().all() and y[1].isnan().all() and y[2].isnan().all()


@needs_cpu_kernels
def test_layer_uses_the_block_kernel_and_falls_back(monkeypatch):
    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 40)  # 40 outputs: the block kernel takes any count
    x = torch.randn(2, 3, 128)
    layer = Int8Linear.from_linear(lin, group_size=32)
    ref = torch.nn.functional.linear(x, layer.dequantize(), lin.bias)
    with torch.no_grad():
        assert torch.allclose(layer(x), ref, atol=1e-4) and layer._kernel[0] == "acik-blocks"
        assert torch.allclose(layer(x.bfloat16()).float(), ref, atol=3e-2)
    layer.for_inference()  # already the kernel's layout: nothing to drop or add
    assert set(layer._buffers) == {"weight", "weight_scale"}
    monkeypatch.setenv("ACIK_CPU_KERNELS", "0")  # dequantize per call
    layer = Int8Linear.from_linear(lin, group_size=32)
    with torch.no_grad():
        assert torch.allclose(layer(x), ref, atol=1e-5) and layer._kernel[0] == "dequantize"
    xg = x.clone().requires_grad_(True)  # backward through the dequantized weight, as the other layers
    layer(xg).sum().backward()
    assert torch.allclose(xg.grad, layer.dequantize().sum(0).expand_as(x), atol=1e-5)


def tied_config() -> ModelConfig:
    return ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, torch_dtype="float32", tie_word_embeddings=True)


def test_embedding_lookup_and_tied_head_share_one_table():
    """A model holding its embedding as int8 blocks with the head tied to it: the lookup returns the dequantized
    rows, the head computes with the same codes and scales (same storage, not a copy), the model's logits equal
    those of the float model holding the dequantized table, and casts keep the sharing and the stored dtypes."""
    torch.manual_seed(0)
    cfg = tied_config()
    model = Transformer(cfg)
    model.init_weights(0)
    emb = QuantEmbedding.from_embedding(model.model.embed_tokens, group_size=32)
    ids = torch.tensor([[1, 5, 9, 200, 17, 3]])
    assert torch.equal(emb(ids), emb.dequantize()[ids])
    assert (emb.dequantize() - model.model.embed_tokens.weight).abs().max() < 0.5 * emb.weight_scale.float().max()
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(emb.dequantize())  # the float reference: same table, float
        ref = model(ids)
    model.model.embed_tokens = emb
    model.lm_head = Int8Linear.tied_to(emb)
    assert model.lm_head.weight.data_ptr() == emb.weight.data_ptr()
    assert model.lm_head.weight_scale.data_ptr() == emb.weight_scale.data_ptr()
    with torch.no_grad():
        got = model(ids)
    torch.testing.assert_close(got, ref, atol=1e-4 * ref.abs().max().item(), rtol=0)
    held = {t.data_ptr(): t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())}
    assert sum(held.values()) < sum(p.numel() * 4 for p in model.parameters()) + 256 * 64 * 1.1  # table once
    model.to(torch.bfloat16)
    assert emb.dtype == torch.bfloat16 and emb.weight.dtype == torch.int8 and emb.weight_scale.dtype == torch.float16
    assert model.lm_head.weight_scale.data_ptr() == emb.weight_scale.data_ptr()
    with torch.no_grad():
        assert model(ids).dtype == torch.bfloat16


def test_transformer_re_ties_after_a_move(monkeypatch):
    """A device move gives each module its own copy of shared buffers; the model points the head back at the
    embedding's. (Simulated on CPU: the move makes new tensors.)"""
    cfg = tied_config()
    model = Transformer(cfg)
    model.model.embed_tokens = QuantEmbedding.from_embedding(model.model.embed_tokens)
    model.lm_head = Int8Linear.tied_to(model.model.embed_tokens)
    model._apply(lambda t: t.clone())
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.lm_head.weight_scale.data_ptr() == model.model.embed_tokens.weight_scale.data_ptr()


@pytest.fixture(scope="module")
def base_dir(quant_base_dir):
    return quant_base_dir


def test_quantize_save_load_round_trip(base_dir, tmp_path):
    """acik quantize --method int8 --group-size 32: every linear (the head too, as int8 does) gets blocks of 32,
    closer to the float model than per-channel int8; the directory records the group strategy and reloads the
    same layers and logits."""
    from acik.cli import main

    ids = torch.tensor([[1, 5, 9, 200, 17, 3, 250, 42]])
    with torch.no_grad():
        dense = acik.load(base_dir).model(ids)
        per_row = acik.load(base_dir, quantize="int8").model(ids)
    out = tmp_path / "q8"
    assert main(["quantize", str(base_dir), "--method", "int8", "--group-size", "32", "--out", str(out)]) == 0
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["acik"] == {"method": "int8", "group_size": 32, "skip": [], "head": None}
    assert qc["config_groups"]["group_0"]["weights"]["strategy"] == "group"
    llm = acik.load(out)
    head = llm.model.lm_head
    assert isinstance(head, Int8Linear) and head.group_size == 32 and head.weight_scale.dtype == torch.float16
    with torch.no_grad():
        got = llm.model(ids)
        again = acik.load(base_dir, quantize="int8", group_size=32).model(ids)
    assert torch.equal(got, again)
    assert (got - dense).norm() < (per_row - dense).norm()
    fast = acik.load(out, optimize=True)  # fused projections concatenate codes and block scales
    with torch.no_grad():
        torch.testing.assert_close(fast.model(ids), got, atol=1e-4 * got.abs().max().item(), rtol=0)


def test_group_size_errors():
    model = torch.nn.Sequential(torch.nn.Linear(96, 64))
    with pytest.raises(QuantizationError, match="int8: group size 48 not supported.*32 is llama.cpp's Q8_0"):
        quantize_model(model, "int8", 48, skip=[])
    with pytest.raises(QuantizationError, match="in_features 96 is not divisible by the group size 64"):
        quantize_model(model, "int8", 64, skip=[])
    with pytest.raises(QuantizationError, match="w8a8 uses one scale per output channel"):
        quantize_model(model, "w8a8", 32, skip=[])
    assert type(model[0]) is torch.nn.Linear
