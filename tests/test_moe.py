"""The MoE layer's routing, losses and packed MXFP4 experts, and bad-input errors for MoE directories."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import acik
from acik.config import ModelConfig
from acik.formats import CheckpointError
from acik.info import describe
from acik.model import Transformer
from acik.model.moe import MoE, add_group_bias, router_losses
from acik.quant.mxfp4 import dequantize_mxfp4, mxfp4_bytes, quantize_mxfp4
from hf_models import make_hf_model
from test_moe_parity import _fabricate_mxfp4, gpt_oss, mixtral


def tiny_moe(**kw) -> ModelConfig:
    return ModelConfig(**{**dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_experts=4, num_experts_per_tok=2), **kw})


def test_routing_counts_and_aux_loss_by_hand():
    """A router that ignores its input and prefers experts 0 > 1 > 2 > 3: every token goes to 0 and 1."""
    moe = MoE(tiny_moe(router_bias=True))
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.bias.copy_(torch.tensor([3.0, 2.0, 1.0, 0.0]))
        for p in moe.experts.parameters():
            p.normal_()
    moe(torch.randn(2, 5, 32))
    assert moe.last_counts.tolist() == [10, 10, 0, 0]
    p = torch.softmax(torch.tensor([3.0, 2.0, 1.0, 0.0]), 0)
    assert moe.last_aux_loss.item() == pytest.approx(4 * (p[0] + p[1]).item(), rel=1e-6)
    z = torch.logsumexp(torch.tensor([3.0, 2.0, 1.0, 0.0]), 0) ** 2
    assert moe.last_z_loss.item() == pytest.approx(z.item(), rel=1e-6)


def test_routing_counts_and_aux_loss_match_transformers(tmp_path):
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    ref = make_hf_model(mixtral(), tmp_path / "hf")
    x = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = ref(x, output_router_logits=True)
    llm = acik.load(tmp_path / "hf", dtype="float32")
    llm.model.train()  # losses are for training: they must carry gradients
    llm.model(x)
    layers = [m for m in llm.model.modules() if isinstance(m, MoE)]
    for layer, logits in zip(layers, out.router_logits, strict=True):
        expected = torch.bincount(logits.softmax(-1).topk(2, -1).indices.flatten(), minlength=4)
        assert layer.last_counts.tolist() == expected.tolist()
        hf_aux = load_balancing_loss_func((logits,), 4, 2)
        assert layer.last_aux_loss.item() == pytest.approx(hf_aux.item(), rel=1e-5)
    aux, z = router_losses(llm.model)
    (aux + z).backward()
    assert llm.model.model.layers[0].mlp.router.weight.grad.abs().sum() > 0


def test_grouped_dispatch_equals_per_token_reference():
    """Dispatch grouped by expert against the obvious per-token loop (reference only, in the test)."""
    cfg = tiny_moe(expert_act="clamped_swiglu", expert_bias=True, router_bias=True, router_order="topk_softmax")
    torch.manual_seed(0)
    moe = MoE(cfg)
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_()
    x = torch.randn(7, 32)
    _, index, weights = moe.route(x)
    expected = torch.zeros_like(x)
    for t in range(7):
        for j in range(2):
            e = index[t, j]
            h = moe.experts.gated(x[t] @ moe.experts.gate_up_proj[e].T + moe.experts.gate_up_proj_bias[e])
            expected[t] += weights[t, j] * (h @ moe.experts.down_proj[e].T + moe.experts.down_proj_bias[e])
    assert torch.allclose(moe(x), expected, atol=1e-5)


def test_group_bias_gradient_is_summed_in_fp32():
    # The fused (GPU) expert path adds biases by row; on CUDA a bf16 backward summed the rows in bf16
    # (benchmarks/gpu_check.py measures it there; CPU reductions accumulate in fp32 anyway).
    torch.manual_seed(0)
    sizes = torch.tensor([700, 0, 300])
    grad = torch.randn(1000, 16)
    bias = torch.randn(3, 16, dtype=torch.bfloat16, requires_grad=True)
    y = add_group_bias(torch.zeros(1000, 16, dtype=torch.bfloat16), bias, sizes)
    assert torch.equal(y[:700], bias[0].detach().expand(700, 16))
    assert torch.equal(y[700:], bias[2].detach().expand(300, 16))
    y.backward(grad.bfloat16())
    exact = torch.stack([g.sum(0) for g in grad.bfloat16().float().split(sizes.tolist())])
    assert bias.grad.dtype == torch.bfloat16
    assert ((bias.grad.float() - exact).norm() / exact.norm()) < 4e-3  # one bf16 rounding of the sum


def test_mxfp4_codec_matches_spec():
    w = torch.tensor([[0.5, -1.0, 6.0, 0.0] + [0.0] * 28])
    blocks, scales = quantize_mxfp4(w)
    assert scales.tolist() == [[127]]  # max 6 fits E2M1 as is: scale 2^0
    assert blocks[0, 0, :2].tolist() == [0x1 | (0xA << 4), 0x7 | (0x0 << 4)]  # low nibble = even element
    assert torch.equal(dequantize_mxfp4(blocks, scales, torch.float32), w)
    big = torch.randn(3, 8, 64) * 100
    b, s = quantize_mxfp4(big)
    err = (dequantize_mxfp4(b, s, torch.float32) - big).abs()
    # At most half the widest code gap (4..6) times the scale (< amax / 3): nothing clips.
    assert (err <= big.abs().reshape(3, 8, 2, 32).amax(-1).repeat_interleave(32, -1) / 3).all()


@pytest.fixture(scope="module")
def mxfp4_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("mx")
    make_hf_model(gpt_oss(), root / "dense")
    _fabricate_mxfp4(root / "dense", root / "mxfp4")
    return root / "mxfp4"


def test_packed_mode_keeps_packed_bytes(mxfp4_path):
    llm = acik.load(mxfp4_path, dtype="float32", mxfp4="packed")
    cfg = llm.config
    n_expert_weights = cfg.num_hidden_layers * cfg.num_experts * 3 * cfg.hidden_size * cfg.intermediate_size
    held = 0
    for name, p in llm.model.named_parameters():
        if ".experts." in name and not name.endswith("_bias"):
            assert p.dtype == torch.uint8, name
            held += p.numel()
    assert held == mxfp4_bytes(n_expert_weights)  # 4.25 bits per weight, nothing dequantised kept
    assert not any(name.endswith(("gate_up_proj", "down_proj")) for name, _ in llm.model.named_parameters())
    dense = acik.load(mxfp4_path, dtype="float32")
    dense_bytes = sum(p.numel() * p.element_size() for n, p in dense.model.named_parameters()
                      if ".experts." in n and not n.endswith("_bias"))
    assert dense_bytes == 4 * n_expert_weights
    info = describe(mxfp4_path)
    assert "4.25 bits" in info and "packed" in info, info


def test_mxfp4_scales_of_wrong_shape(mxfp4_path, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((mxfp4_path / "config.json").read_text())
    state = load_file(mxfp4_path / "model.safetensors")
    name = "model.layers.1.mlp.experts.down_proj_scales"
    state[name] = state[name][:, :, :1].contiguous()
    save_file(state, bad / "model.safetensors")
    for mode in ("dequantize", "packed"):
        with pytest.raises(CheckpointError, match="scales have shape"):
            acik.load(bad, mxfp4=mode)


def test_router_disagreeing_with_experts(tmp_path):
    make_hf_model(mixtral(), tmp_path / "hf")
    state = load_file(tmp_path / "hf" / "model.safetensors")
    name = "model.layers.0.block_sparse_moe.gate.weight"
    state[name] = torch.cat([state[name], state[name][:1]])  # a fifth expert row in the router
    save_file(state, tmp_path / "hf" / "model.safetensors")
    with pytest.raises(CheckpointError, match="router and the experts must"):
        acik.load(tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg["num_local_experts"] = 3  # experts 0..3 on disk, config says 3
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="router and the experts must agree"):
        acik.load(tmp_path / "hf")


def test_mixtral_fused_layout(tmp_path):
    """transformers v5's in-memory layout (mlp.gate, mlp.experts.gate_up_proj/down_proj) loads the same."""
    ref = make_hf_model(mixtral(), tmp_path / "hf")
    fused = {k: v.contiguous() for k, v in ref.state_dict().items()}
    assert any(k.endswith("mlp.experts.gate_up_proj") for k in fused)
    (tmp_path / "fused").mkdir()
    save_file(fused, tmp_path / "fused" / "model.safetensors")
    (tmp_path / "fused" / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    x = torch.randint(0, 97, (1, 12))
    a, b = acik.load(tmp_path / "hf").model, acik.load(tmp_path / "fused").model
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_training_from_scratch_moe_backward():
    model = Transformer(tiny_moe())
    model.init_weights(seed=0)
    logits = model(torch.randint(0, 50, (2, 9)))
    aux, z = router_losses(model)
    (logits.float().logsumexp(-1).mean() + 0.01 * aux + 0.001 * z).backward()
    assert model.model.layers[1].mlp.experts.gate_up_proj.grad.abs().sum() > 0


@pytest.mark.skipif(not hasattr(torch, "_grouped_mm"), reason="this torch has no torch._grouped_mm")
def test_grouped_mm_path_equals_per_expert_path():
    """The fused path (used on recent GPUs) and the portable one agree; torch runs the former's forward on CPU too,
    including experts that receive no tokens."""
    from acik.model.moe import grouped_linear, grouped_mm_linear

    gen = torch.Generator().manual_seed(0)
    sizes = torch.tensor([3, 0, 5, 2])
    x, w, b = torch.randn(10, 16, generator=gen), torch.randn(4, 8, 16, generator=gen), torch.randn(4, 8, generator=gen)
    with torch.no_grad():
        assert torch.allclose(grouped_mm_linear(x, w, sizes, b), grouped_linear(x, w, sizes, b), atol=1e-5)


def test_alibi_falcon_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "falcon", "alibi": True, "hidden_size": 64,
                                                      "num_attention_heads": 4, "num_hidden_layers": 2,
                                                      "vocab_size": 97}))
    with pytest.raises(CheckpointError, match="ALiBi"):
        acik.load(tmp_path)


def test_packed_mode_for_dense_checkpoints(mxfp4_path, tmp_path):
    """A dense MoE checkpoint loaded packed is quantised at load with the same codec as a real MXFP4 file;
    a family that cannot store MXFP4 (Mixtral) is written dense again."""
    x = torch.randint(0, 97, (1, 12))
    packed = acik.load(mxfp4_path.parent / "dense", dtype="float32", mxfp4="packed")
    real = acik.load(mxfp4_path, dtype="float32")
    with torch.no_grad():
        assert torch.equal(packed.model(x), real.model(x))
    make_hf_model(mixtral(intermediate_size=64), tmp_path / "mixtral")
    llm = acik.load(tmp_path / "mixtral", dtype="float32", mxfp4="packed")
    llm.save(tmp_path / "out")
    assert not any(n.endswith(("_blocks", "_scales")) for n in load_file(tmp_path / "out" / "model.safetensors"))
    with torch.no_grad():
        assert torch.allclose(acik.load(tmp_path / "out").model(x), llm.model(x), atol=1e-5)
