"""acik's Transformer against transformers on tiny random models of every family (fp32, eager)."""

import pytest
import torch
import transformers as tf

import acik
from hf_models import hf_logits, make_hf_model

SMALL = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)


def llama(**kw):
    return tf.LlamaConfig(**{**SMALL, "tie_word_embeddings": False, **kw})


CASES = {
    "llama": lambda: llama(),
    "llama-tied": lambda: llama(tie_word_embeddings=True),
    "llama-bias-headdim": lambda: llama(head_dim=24, attention_bias=True, mlp_bias=True),
    "llama3-rope": lambda: llama(rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                                  "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                  "original_max_position_embeddings": 32}),
    "llama-yarn": lambda: llama(rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                                 "original_max_position_embeddings": 32, "truncate": False}),
    "llama-linear-mqa": lambda: llama(num_key_value_heads=1,
                                      rope_parameters={"rope_type": "linear", "rope_theta": 10000.0,
                                                       "factor": 2.0}),
    "mistral-window": lambda: tf.MistralConfig(**SMALL, sliding_window=7),
    "qwen2-window-layers": lambda: tf.Qwen2Config(**SMALL, use_sliding_window=True, sliding_window=5,
                                                  max_window_layers=1),
    "qwen3-qknorm": lambda: tf.Qwen3Config(**SMALL, head_dim=32),
    "olmo2": lambda: tf.Olmo2Config(**SMALL),
}


@pytest.fixture(scope="module")
def input_ids():
    return torch.randint(0, SMALL["vocab_size"], (2, 19), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(name, tmp_path, input_ids):
    ref = make_hf_model(CASES[name](), tmp_path / "hf")
    llm = acik.load(tmp_path / "hf", dtype="float32")
    with torch.no_grad():
        ours = llm.model(input_ids)
    diff = (ours - hf_logits(ref, input_ids)).abs().max().item()
    assert diff <= 1e-4, f"{name}: max |Δlogits| = {diff}"


@pytest.mark.parametrize("name", ["llama-tied", "qwen2-window-layers", "olmo2", "qwen3-qknorm"])
def test_round_trip_through_transformers(name, tmp_path, input_ids):
    make_hf_model(CASES[name](), tmp_path / "hf")
    llm = acik.load(tmp_path / "hf", dtype="float32")
    llm.save(tmp_path / "ours")
    back = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "ours", attn_implementation="eager").eval()
    with torch.no_grad():
        ours = llm.model(input_ids)
    diff = (ours - hf_logits(back, input_ids)).abs().max().item()
    assert diff <= 1e-4, f"{name}: max |Δlogits| after save = {diff}"


@pytest.mark.parametrize("name,scale", [("llama-bias-headdim", True), ("qwen3-qknorm", False), ("olmo2", False)])
def test_every_parameter_matters(name, scale, tmp_path, input_ids):
    """Perturb each tensor in turn: the comparison must then fail, so no weight is unused or misplaced.

    Scaling by 1.01 as such; with QK-norm, scaling q_proj/k_proj is a true invariance (the norm undoes it),
    so those families get an elementwise perturbation of the same size instead."""
    ref = make_hf_model(CASES[name](), tmp_path / "hf")
    x = input_ids[:1, :12]
    expected = hf_logits(ref, x)
    llm = acik.load(tmp_path / "hf", dtype="float32")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        assert (llm.model(x) - expected).abs().max().item() <= 1e-4
        for pname, p in llm.model.named_parameters():
            factor = torch.tensor(1.01) if scale else 1 + 0.01 * torch.randn(p.shape, generator=gen)
            original = p.clone()
            p.mul_(factor)
            diff = (llm.model(x) - expected).abs().max().item()
            p.copy_(original)
            assert diff > 1e-4, f"perturbing {pname} did not change the logits (max |Δ| {diff})"
