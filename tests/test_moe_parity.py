"""Mixtral, gpt-oss (dense and MXFP4) and Falcon (three qkv layouts) against transformers (fp32, eager)."""

import json

import pytest
import torch
import transformers as tf
from safetensors.torch import load_file, save_file

import acik
from acik.quant.mxfp4 import dequantize_mxfp4, quantize_mxfp4
from hf_models import hf_logits, make_hf_model

SEQ = 21  # longer than every sliding window below
BASE = dict(vocab_size=97, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=256, tie_word_embeddings=False)


def mixtral(**kw):
    return tf.MixtralConfig(**{**BASE, "intermediate_size": 48, "num_local_experts": 4, "num_experts_per_tok": 2,
                               "sliding_window": 8, **kw})


def gpt_oss(**kw):
    rope = {"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
            "truncate": False, "original_max_position_embeddings": 4096}
    return tf.GptOssConfig(**{**BASE, "intermediate_size": 64, "head_dim": 16, "num_local_experts": 4,
                              "num_experts_per_tok": 2, "sliding_window": 6, "rope_parameters": rope,
                              "max_position_embeddings": 131072, **kw})


def falcon(**kw):
    cfg = dict(vocab_size=97, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, bias=True,
               max_position_embeddings=256, ffn_hidden_size=96)
    return tf.FalconConfig(**{**cfg, **kw})


CASES = {
    "mixtral": lambda: mixtral(),
    "gpt_oss": lambda: gpt_oss(),
    "falcon-grouped": lambda: falcon(new_decoder_architecture=True, num_kv_heads=2),
    "falcon-multi-query": lambda: falcon(multi_query=True, parallel_attn=True),
    "falcon-interleaved": lambda: falcon(multi_query=False, parallel_attn=False, tie_word_embeddings=False),
}


@pytest.fixture(scope="module")
def input_ids():
    return torch.randint(0, 97, (2, SEQ), generator=torch.Generator().manual_seed(1))


def _diff(a, b):
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("name", list(CASES))
def test_logits_and_round_trip(name, tmp_path, input_ids):
    ref = make_hf_model(CASES[name](), tmp_path / "hf")
    expected = hf_logits(ref, input_ids)
    llm = acik.load(tmp_path / "hf", dtype="float32")
    with torch.no_grad():
        ours = llm.model(input_ids)
    assert _diff(ours, expected) <= 1e-4, f"{name}: max |Δlogits| = {_diff(ours, expected)}"
    llm.save(tmp_path / "ours")
    back = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "ours", attn_implementation="eager").eval()
    assert _diff(hf_logits(back, input_ids), expected) <= 1e-4, f"{name}: logits changed after save"


def _fabricate_mxfp4(src, dst):
    """Quantise a dense gpt-oss directory's experts to MXFP4 the way the published checkpoints store them."""
    dst.mkdir()
    state = load_file(src / "model.safetensors")
    for name in [n for n in state if n.endswith((".experts.gate_up_proj", ".experts.down_proj"))]:
        blocks, scales = quantize_mxfp4(state.pop(name).transpose(1, 2))  # stored [E, out, in/32, 16]
        state[f"{name}_blocks"], state[f"{name}_scales"] = blocks, scales
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    (dst / "config.json").write_text(json.dumps(cfg))
    return state


@pytest.fixture(scope="module")
def mxfp4_dir(tmp_path_factory):
    """(directory, transformers reference model holding the same dequantised expert weights)."""
    root = tmp_path_factory.mktemp("mxfp4")
    ref = make_hf_model(gpt_oss(), root / "dense")
    state = _fabricate_mxfp4(root / "dense", root / "mxfp4")
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if f"{name}_blocks" in state:
                p.copy_(dequantize_mxfp4(state[f"{name}_blocks"], state[f"{name}_scales"], torch.float32)
                        .transpose(1, 2))
    return root / "mxfp4", ref


@pytest.mark.parametrize("mode", ["dequantize", "packed"])
def test_mxfp4_logits(mode, mxfp4_dir, input_ids, tmp_path):
    path, ref = mxfp4_dir
    expected = hf_logits(ref, input_ids)
    llm = acik.load(path, dtype="float32", mxfp4=mode)
    with torch.no_grad():
        ours = llm.model(input_ids)
    assert _diff(ours, expected) <= 1e-4, f"mxfp4 {mode}: max |Δlogits| = {_diff(ours, expected)}"
    llm.save(tmp_path / "out")
    written = load_file(tmp_path / "out" / "model.safetensors")
    assert any(n.endswith("_blocks") for n in written) == (mode == "packed")
    back = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager",
                                                   dtype=torch.float32).eval()
    assert _diff(hf_logits(back, input_ids), expected) <= 1e-4, f"mxfp4 {mode}: logits changed after save"
