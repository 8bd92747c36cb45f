"""Reading and writing Hugging Face directories: config spellings, shards, bad input."""

import json

import pytest
import torch
import transformers as tf

import acik
from acik.formats import CheckpointError
from hf_models import hf_logits, make_hf_model

CFG = dict(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
IDS = torch.tensor([[3, 14, 15, 9, 26, 5, 35, 8, 9, 7]])


@pytest.fixture
def model_dir(tmp_path):
    ref = make_hf_model(tf.LlamaConfig(**CFG), tmp_path / "m")
    return tmp_path / "m", ref


def test_legacy_config_spelling(model_dir):
    path, _ = model_dir
    cfg = json.loads((path / "config.json").read_text())
    cfg.pop("rope_parameters", None)
    cfg.pop("dtype", None)
    cfg.update(rope_theta=5000.0, rope_scaling={"type": "linear", "factor": 2.0}, torch_dtype="float32")
    (path / "config.json").write_text(json.dumps(cfg))
    ref = tf.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    llm = acik.load(path, dtype="float32")
    assert llm.config.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    assert llm.config.rope_theta == 5000.0
    with torch.no_grad():
        assert (llm.model(IDS) - hf_logits(ref, IDS)).abs().max() <= 1e-4


def test_sharded_checkpoint_and_dtype(tmp_path):
    ref = make_hf_model(tf.LlamaConfig(**CFG), tmp_path / "src")
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    llm = acik.load(tmp_path / "sharded", dtype="float32")
    with torch.no_grad():
        assert (llm.model(IDS) - hf_logits(ref, IDS)).abs().max() <= 1e-4
    bf16 = acik.load(tmp_path / "sharded", dtype="bfloat16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    # acik writes shards too, and reads its own shards back
    llm.save(tmp_path / "ours")
    from acik.formats.hf import save_pretrained
    save_pretrained(llm.model, llm.config, tmp_path / "ours-sharded", max_shard_bytes=20_000)
    assert len(list((tmp_path / "ours-sharded").glob("model-*.safetensors"))) > 1
    again = acik.load(tmp_path / "ours-sharded", dtype="float32")
    with torch.no_grad():
        assert torch.equal(again.model(IDS), llm.model(IDS))


def test_pickle_only_directory_is_refused(model_dir):
    path, _ = model_dir
    (path / "model.safetensors").unlink()
    (path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="never unpickles.*save_pretrained"):
        acik.load(path)


def test_truncated_safetensors(model_dir):
    path, _ = model_dir
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated or corrupt"):
        acik.load(path)


def test_missing_safetensors(model_dir):
    path, _ = model_dir
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        acik.load(path)


def test_missing_shard(tmp_path):
    ref = make_hf_model(tf.LlamaConfig(**CFG), tmp_path / "src")
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    next((tmp_path / "sharded").glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match="model-00002.*missing"):
        acik.load(tmp_path / "sharded")


def _rewrite_tensors(path, edit):
    from safetensors.torch import load_file, save_file
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors")


def test_shape_mismatch(model_dir):
    path, _ = model_dir
    _rewrite_tensors(path, lambda t: t.__setitem__("model.layers.0.mlp.up_proj.weight", torch.zeros(47, 32)))
    with pytest.raises(CheckpointError, match=r"up_proj.weight.*shape \(47, 32\).*\(48, 32\)"):
        acik.load(path)


def test_missing_tensor(model_dir):
    path, _ = model_dir
    _rewrite_tensors(path, lambda t: t.pop("model.layers.1.self_attn.k_proj.weight"))
    with pytest.raises(CheckpointError, match="missing tensor.*layers.1.self_attn.k_proj.weight"):
        acik.load(path)


def test_unknown_model_type(model_dir):
    path, _ = model_dir
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = "mystery"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unknown model_type 'mystery'.*llama"):
        acik.load(path)


def test_malformed_config(model_dir):
    path, _ = model_dir
    (path / "config.json").write_text('{"model_type": "llama", ')
    with pytest.raises(CheckpointError, match="config.json: malformed JSON"):
        acik.load(path)
