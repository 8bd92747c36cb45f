"""Fine-tuning runs: LoRA adapters that peft + transformers load with the same logits, merge, full
fine-tuning, resume after SIGKILL, bad LoRA targets, the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as tf
from safetensors.torch import load_file

import acik
from acik.cli import main as cli_main
from acik.manifest import verify
from acik.tokenizer import save_byte_tokenizer
from acik.train.finetune import merge
from acik.train.lora import LoRAError, apply_lora
from hf_models import make_hf_model

SRC = Path(__file__).resolve().parents[1] / "src"

FAST = dict(batch_size=2, max_seq_len=128, lr=1e-2, warmup_steps=2, eval_every=0, eval_batches=2, log_every=5,
            progress=False)


def chat_records(n=40):
    rows = []
    for i in range(n):
        a, b = i % 7, i % 5
        rows.append({"messages": [{"role": "system", "content": "You add."},
                                  {"role": "user", "content": f"{a}+{b}?"},
                                  {"role": "assistant", "content": f"{a + b}"},
                                  {"role": "user", "content": "thanks"},
                                  {"role": "assistant", "content": "ok"}]})
    return rows


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("base")
    cfg = tf.LlamaConfig(vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False)
    make_hf_model(cfg, d / "model")
    save_byte_tokenizer(d / "model")
    (d / "model" / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny base\n")
    data = d / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in chat_records()))
    return d / "model", data


@pytest.fixture(scope="module")
def lora_run(base, tmp_path_factory):
    model_dir, data = base
    run = tmp_path_factory.mktemp("run")
    out = acik.finetune(model_dir, data, run, max_steps=8, seed=1, data_license="CC0-1.0", **FAST)
    return run, out


def test_adapter_loads_in_peft_with_the_same_logits(base, lora_run, tmp_path):
    import peft

    model_dir, _ = base
    run, adapter = lora_run
    assert adapter == run / "adapter"
    assert sorted(p.name for p in adapter.iterdir()) == ["README.md", "acik.json", "adapter_config.json",
                                                         "adapter_model.safetensors"]
    assert all(k.startswith("base_model.model.model.layers.") for k in load_file(adapter / "adapter_model.safetensors"))
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    hf_base = tf.AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        base_logits = hf_base(ids).logits
    peft_model = peft.PeftModel.from_pretrained(hf_base, adapter).eval()
    ours = acik.load(model_dir, dtype="float32", adapter=run)  # a run directory finds its adapter/
    with torch.no_grad():
        peft_logits = peft_model(ids).logits
        our_logits = ours.model(ids)
    assert (peft_logits - our_logits).abs().max().item() <= 1e-4
    assert (peft_logits - base_logits).abs().max().item() > 1e-2  # the adapter learned something

    merged = merge(model_dir, adapter, tmp_path / "merged")
    with torch.no_grad():
        merged_logits = acik.load(merged, dtype="float32").model(ids)
        hf_merged = tf.AutoModelForCausalLM.from_pretrained(merged, attn_implementation="eager").eval()(ids).logits
    assert (merged_logits - our_logits).abs().max().item() <= 1e-4
    assert (hf_merged - our_logits).abs().max().item() <= 1e-4
    assert not [p for p in verify(merged) if "human-facing" not in p]


def test_run_directory_has_metrics_card_and_manifest(base, lora_run):
    model_dir, data = base
    run, adapter = lora_run
    card = (adapter / "README.md").read_text()
    for fact in ("base_model: model", "license: apache-2.0", str(data), "CC0-1.0", "lora (r=8"):
        assert fact in card, fact
    manifest = json.loads((adapter / "acik.json").read_text())
    assert {p["role"] for p in manifest["parents"]} == {"base_model", "data"}
    assert not [p for p in verify(adapter) if "human-facing" not in p]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert train[-1]["step"] == 8 and train[-1]["loss"] < train[0]["loss"]
    assert [r for r in records if r["kind"] == "val"]
    stats = json.loads((run / "data_stats.json").read_text())
    assert stats["train"]["kept"] + stats["val"]["kept"] == 40


def _cli(args, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(SRC), **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "acik", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait(proc):
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def test_lora_resume_after_sigkill_is_bitwise_identical(base, tmp_path):
    model_dir, data = base
    args = [str(model_dir), "--data", str(data), "--max-steps", "4", "--lora-dropout", "0.1", "--lr", "1e-2",
            "--batch-size", "2", "--max-seq-len", "128", "--set", "checkpoint_every=2", "--set", "progress=false",
            "--set", "eval_every=0"]
    # The interrupted run (SIGKILL right after step 2's checkpoint) and the uninterrupted one, side by side.
    killed = _cli(["finetune", *args, "--out", str(tmp_path / "a")], {"ACIK_TEST_KILL_AT_STEP": "3"})
    whole = _cli(["finetune", *args, "--out", str(tmp_path / "b")])
    rc, err = _wait(killed)
    assert rc == -9, err[-2000:]
    assert (tmp_path / "a" / "checkpoints" / "step_00000002").is_dir()
    assert not (tmp_path / "a" / "adapter").exists()
    rc, err = _wait(_cli(["finetune", *args, "--out", str(tmp_path / "a"), "--resume", "auto"]))
    assert rc == 0, err[-2000:]
    assert f"resuming from step 2 ({tmp_path / 'a' / 'checkpoints' / 'step_00000002'})" in err
    rc, err = _wait(whole)
    assert rc == 0, err[-2000:]
    a = load_file(tmp_path / "a" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_full_finetune_writes_a_model_transformers_loads(base, tmp_path):
    model_dir, data = base
    out = acik.finetune(model_dir, data, tmp_path / "run", method="full", max_steps=4, **{**FAST, "lr": 1e-3})
    assert out == tmp_path / "run" / "model"
    hf = tf.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = acik.load(out, dtype="float32").model(ids)
        before = acik.load(model_dir, dtype="float32").model(ids)
        assert (hf(ids).logits - ours).abs().max().item() <= 1e-4
    assert (ours - before).abs().max().item() > 1e-3
    assert (out / "tokenizer.json").exists() and "library_name: transformers" in (out / "README.md").read_text()
    assert not [p for p in verify(out) if "human-facing" not in p]


def test_lora_target_naming_no_module_is_an_error(base, tmp_path):
    model_dir, data = base
    llm = acik.load(model_dir, dtype="float32")
    with pytest.raises(LoRAError, match="'qproj' names no linear module.*q_proj"):
        apply_lora(llm.model, ["qproj"])
    assert cli_main(["finetune", str(model_dir), "--data", str(data), "--out", str(tmp_path / "x"),
                     "--lora-targets", "q_proj,attn_out"]) == 2
    names = apply_lora(llm.model, ["q_proj", "self_attn.v_proj"])
    assert names == [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]


def test_cli_prompt_fields_and_merge(base, tmp_path, capsys):
    model_dir, _ = base
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"q": f"{i}+1?", "a": str(i + 1)}) + "\n" for i in range(30)))
    val = tmp_path / "val.jsonl"
    val.write_text("".join(json.dumps({"q": f"{i}+2?", "a": str(i + 2)}) + "\n" for i in range(5)))
    rc = cli_main(["finetune", str(model_dir), "--data", str(data), "--val-data", str(val), "--out",
                   str(tmp_path / "run"), "--prompt-field", "q", "--response-field", "a", "--max-steps", "3",
                   "--packing", "off", "--max-seq-len", "64", "--lora-targets", "q_proj,v_proj",
                   "--set", "progress=false"])
    assert rc == 0
    cfg = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert len(cfg["target_modules"]) == 4
    stats = json.loads((tmp_path / "run" / "data_stats.json").read_text())
    assert stats["format"] == "prompt-completion" and stats["val"]["kept"] == 5 and stats["train"]["kept"] == 30
    assert cli_main(["lora", "merge", str(model_dir), str(tmp_path / "run"), "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "model.safetensors").exists() and (tmp_path / "m" / "README.md").exists()
    # Data with no usable example is a clear error, not a crash.
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n" * 2 + json.dumps(
        {"messages": [{"role": "user", "content": "hey"}]}) + "\n")
    assert cli_main(["finetune", str(model_dir), "--data", str(bad), "--out", str(tmp_path / "r2")]) == 2
    assert "no usable examples" in capsys.readouterr().err


def test_qlora_trains_lora_on_a_frozen_nf4_base(base, tmp_path):
    from acik.quant import NF4Linear

    model_dir, data = base
    out = acik.finetune(model_dir, data, tmp_path / "run", method="qlora", quant_block_size=32, max_steps=6, **FAST)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["method"] == "qlora" and summary["peak_memory_bytes"] > 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"]
    # Unmerged on an NF4-quantized base (as trained) and on the full-precision base (as peft would).
    q = acik.load(model_dir, dtype="float32", quantize="nf4", group_size=32, adapter=out)
    layer = q.model.model.layers[0].self_attn.q_proj
    assert isinstance(layer.base_layer, NF4Linear)
    full = acik.load(model_dir, dtype="float32", adapter=out)
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (q.model(ids) - full.model(ids)).abs().max().item()
    assert 0 < diff < 5  # NF4 rounding, not a different model
