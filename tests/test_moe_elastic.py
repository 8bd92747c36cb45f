"""Elastic experts: `acik moe-shrink` and `acik.load(..., active_experts=k)`, checked against transformers."""

import json

import pytest
import torch
import transformers as tf

import acik
from acik.cli import main
from acik.model.moe import moe_layers
from hf_models import hf_logits, make_hf_model
from test_moe_parity import mixtral

TEXT = "Açık kaynak, herkes için. Open weights, open data, open code. " * 6


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny Mixtral whose vocabulary is acik's byte-level one (260 ids), with no tokenizer.json."""
    root = tmp_path_factory.mktemp("elastic")
    make_hf_model(mixtral(vocab_size=260), root / "hf")
    (root / "calib.txt").write_text(TEXT, encoding="utf-8")
    return root


def test_active_experts_matches_transformers_top_k(source):
    x = torch.randint(0, 260, (1, 14), generator=torch.Generator().manual_seed(2))
    for k in (1, 3):
        cfg = tf.AutoConfig.from_pretrained(source / "hf")
        cfg.num_experts_per_tok = k
        ref = tf.AutoModelForCausalLM.from_pretrained(source / "hf", config=cfg, attn_implementation="eager").eval()
        llm = acik.load(source / "hf", dtype="float32", active_experts=k)
        with torch.no_grad():
            diff = (llm.model(x) - hf_logits(ref, x)).abs().max().item()
        assert diff <= 1e-4, f"top-{k}: max |Δlogits| = {diff}"
    with pytest.raises(ValueError, match="active_experts=5"):
        acik.load(source / "hf", active_experts=5)


def test_shrink_to_all_experts_is_identity(source, tmp_path):
    assert main([
        "moe-shrink", str(source / "hf"), "--experts", "4", "--calib", str(source / "calib.txt"),
        "--out", str(tmp_path / "same")]) == 0
    x = torch.tensor([list(TEXT[:30].encode())])
    with torch.no_grad():
        a = acik.load(source / "hf", dtype="float32").model(x)
        b = acik.load(tmp_path / "same", dtype="float32").model(x)
    assert torch.equal(a, b)


def test_shrink_keeps_most_routed_experts(source, tmp_path):
    assert main([
        "moe-shrink", str(source / "hf"), "--experts", "2", "--calib", str(source / "calib.txt"),
        "--out", str(tmp_path / "small")]) == 0
    manifest = json.loads((tmp_path / "small" / "acik.json").read_text())
    layers = manifest["moe_shrink"]["layers"]
    for info in layers.values():
        counts = info["counts"]
        assert sorted(counts, reverse=True)[:2] == sorted((counts[e] for e in info["kept"]), reverse=True)
    # The result is a Mixtral directory that transformers loads, and acik agrees with it.
    back = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "small", attn_implementation="eager").eval()
    assert back.config.num_local_experts == 2 and back.config.num_experts_per_tok == 2
    small = acik.load(tmp_path / "small", dtype="float32")
    x = torch.tensor([list(TEXT[:30].encode())])
    with torch.no_grad():
        assert (small.model(x) - hf_logits(back, x)).abs().max().item() <= 1e-4
    # The kept experts are the source's, unchanged.
    src = acik.load(source / "hf", dtype="float32")
    for layer_idx, (a, b) in enumerate(zip(moe_layers(src.model), moe_layers(small.model), strict=True)):
        keep = torch.tensor(layers[str(layer_idx)]["kept"])
        assert torch.equal(a.experts.gate_up_proj[keep], b.experts.gate_up_proj)
        assert torch.equal(a.router.weight[keep], b.router.weight)


def test_shrink_needs_a_tokenizer(tmp_path, capsys):
    make_hf_model(mixtral(), tmp_path / "hf")  # vocabulary 97: not the byte-level tokenizer's
    (tmp_path / "calib.txt").write_text(TEXT)
    code = main(["moe-shrink", str(tmp_path / "hf"), "--experts", "2", "--calib", str(tmp_path / "calib.txt"),
                 "--out", str(tmp_path / "out")])
    assert code == 2
    assert "no tokenizer.json" in capsys.readouterr().err
