"""Training loop: determinism, exact resume after SIGKILL, data order, optimizers, export, bad input."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from acik.recipe import RecipeError, load_recipe
from acik.train.data import global_batch, rank_micro_batches
from acik.train.loop import TrainSettings
from acik.train.pretrain import TrainError, check_batch, pretrain
from acik.train.schedule import lr_factor

REPO = Path(__file__).resolve().parents[1]
TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 60

MICRO = dict(model="tiny", model_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                         "num_attention_heads": 2, "num_key_value_heads": 1},
             seq_len=32, batch_size=4, max_steps=6, warmup_steps=2, log_every=1, eval_every=3, eval_batches=2,
             checkpoint_every=2, keep_checkpoints=2, progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text(TEXT)
    return p


def settings(text_file: Path, **kw) -> TrainSettings:
    return TrainSettings(**{**MICRO, "data": str(text_file), **kw})


def weights(run: Path, name: str = "model") -> dict[str, torch.Tensor]:
    return load_file(str(run / name / "model.safetensors"))


def assert_bitwise(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_same_recipe_twice_is_bitwise_identical(tmp_path, text_file):
    pretrain(settings(text_file), tmp_path / "a")
    pretrain(settings(text_file), tmp_path / "b")
    assert_bitwise(weights(tmp_path / "a"), weights(tmp_path / "b"))
    pretrain(settings(text_file, seed=7), tmp_path / "c")
    key = "model.embed_tokens.weight"
    assert not torch.equal(weights(tmp_path / "a")[key], weights(tmp_path / "c")[key])


def test_run_directory_contents_and_transformers_loads_the_model(tmp_path, text_file):
    from transformers import LlamaForCausalLM

    from acik.manifest import verify
    run = tmp_path / "run"
    result = pretrain(settings(text_file, max_steps=4), run)
    assert result.step == 4 and result.tokens_seen == 4 * 4 * 32
    assert (run / "report.md").read_text().count("validation loss") >= 1
    assert (run / "report_loss.png").stat().st_size > 1000
    kinds = [__import__("json").loads(line)["kind"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert kinds.count("train") == 4 and kinds.count("val") >= 1
    assert verify(run / "model") == []
    manifest = __import__("json").loads((run / "model" / "acik.json").read_text())
    assert manifest["parents"][0]["role"] == "data" and manifest["seed"] == 1337
    assert manifest["recipe"]["seq_len"] == 32
    # Independent check: transformers reads the exported directory and computes the same logits.
    hf = LlamaForCausalLM.from_pretrained(run / "model").eval()
    import acik

    ours = acik.load(run / "model").model
    ids = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-5, rtol=1e-5)


def test_resume_after_sigkill_is_bitwise_identical(tmp_path, text_file):
    """Kill a CLI run with SIGKILL at a random step (possibly mid-checkpoint), resume, compare."""
    steps = 120
    common = ["--set", "checkpoint_every=1", "--set", "eval_every=40", "--set", f"max_steps={steps}",
              "--set", "keep_checkpoints=3"]
    recipe = tmp_path / "micro.yaml"
    import yaml

    recipe.write_text(yaml.safe_dump({k: v for k, v in MICRO.items() if k != "progress"}))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "acik", "train", "--recipe", str(recipe), "--data", str(text_file), "--out",
           str(killed), "--quiet", *common]
    kill_after = random.Random().randint(3, steps // 2)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    ckpts = killed / "checkpoints"
    while time.time() < deadline and proc.poll() is None:
        done = [p for p in ckpts.glob("step_*")] if ckpts.exists() else []
        if done and max(int(p.name[5:]) for p in done) >= kill_after:
            break
        time.sleep(0.005)
    assert proc.poll() is None, f"run ended before the kill: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model").exists()
    killed_at = max(int(p.name[5:]) for p in ckpts.glob("step_*"))
    assert 0 < killed_at < steps

    s = load_recipe(TrainSettings, recipe, common[1::2], data=str(text_file), progress=False)
    resumed = pretrain(s, killed, resume="auto")
    assert resumed.step == steps
    pretrain(s, tmp_path / "straight")
    assert_bitwise(weights(killed), weights(tmp_path / "straight"))
    # The metrics log reads as one run: every step once.
    import json

    train_steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()
                   if json.loads(line)["kind"] == "train"]
    assert train_steps == list(range(1, steps + 1))


def test_corrupt_checkpoint_is_skipped_with_a_warning(tmp_path, text_file):
    run = tmp_path / "run"
    pretrain(settings(text_file, max_steps=4, keep_checkpoints=3, checkpoint_every=1), run)
    newest = run / "checkpoints" / "step_00000004"
    data = bytearray((newest / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (newest / "model.safetensors").write_bytes(bytes(data))
    # A half-written temporary folder from a crash is ignored.
    (run / "checkpoints" / ".step_00000005.tmp-1").mkdir()
    with pytest.warns(UserWarning, match="skipping corrupt checkpoint .*step_00000004"):
        result = pretrain(settings(text_file, max_steps=6, keep_checkpoints=3, checkpoint_every=1), run,
                          resume="auto")
    assert result.step == 6
    pretrain(settings(text_file, max_steps=6), tmp_path / "straight")
    assert_bitwise(weights(run), weights(tmp_path / "straight"))
    assert len(list((run / "checkpoints").glob("step_*"))) == 3


def test_batch_is_a_pure_function_of_seed_step_and_global_batch():
    tokens = np.arange(5000, dtype=np.uint16)
    for step in (0, 5, 123):
        whole = global_batch(tokens, 16, 8, seed=3, step=step)
        for world in (1, 2, 4):
            parts = [mb for r in range(world) for mb in rank_micro_batches(tokens, 16, 8, 1 if world == 4 else 2,
                                                                           3, step, r, world)]
            assert torch.equal(torch.cat([p["input_ids"] for p in parts]), whole["input_ids"])
        assert torch.equal(whole["targets"][:, :-1], whole["input_ids"][:, 1:])
    step0, step1 = global_batch(tokens, 16, 8, 3, 0), global_batch(tokens, 16, 8, 3, 1)
    assert not torch.equal(step0["input_ids"], step1["input_ids"])


def test_gradient_accumulation_matches_one_big_batch(tmp_path, text_file):
    pretrain(settings(text_file, max_steps=3), tmp_path / "a")
    pretrain(settings(text_file, max_steps=3, micro_batch_size=1), tmp_path / "b")
    for k, v in weights(tmp_path / "a").items():
        torch.testing.assert_close(weights(tmp_path / "b")[k], v, atol=2e-6, rtol=0)


def test_schedules():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(55, 100, 10, min_lr_ratio=0.0) == pytest.approx(0.5)
    # WSD: flat until the last 20%, then linear to the floor.
    assert lr_factor(79, 100, 10, "wsd", 0.0, 0.2) == 1.0
    assert lr_factor(89, 100, 10, "wsd", 0.0, 0.2) == pytest.approx(0.5)
    assert lr_factor(99, 100, 10, "wsd", 0.0, 0.2) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_factor(50, 100, 10, "linear")


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_optimizers_train(tmp_path, text_file, optimizer):
    r = pretrain(settings(text_file, max_steps=30, lr=3e-3, warmup_steps=3, optimizer=optimizer, checkpoint_every=0,
                          z_loss=1e-4, schedule="wsd"), tmp_path / optimizer)
    first = __import__("json").loads((tmp_path / optimizer / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert r.final_loss < first - 1.0, (first, r.final_loss)


def test_muon_uses_muon_for_hidden_matrices_only():
    from acik.config import preset
    from acik.model import Transformer
    from acik.train.optim import build_optimizers

    m = Transformer(preset("tiny", num_hidden_layers=1))
    muon, adamw = build_optimizers(list(m.named_parameters()), optimizer="muon", lr=1e-3, weight_decay=0.1,
                                   betas=(0.9, 0.95), eps=1e-8)
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    assert id(m.model.layers[0].self_attn.q_proj.weight) in in_muon
    assert id(m.model.embed_tokens.weight) not in in_muon
    with pytest.raises(ValueError, match="FSDP"):
        build_optimizers(list(m.named_parameters()), optimizer="muon", lr=1e-3, weight_decay=0.1,
                         betas=(0.9, 0.95), eps=1e-8, sharded=True)


def test_bad_input_is_explained(tmp_path, text_file):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: tiny\nlearning_rate: 0.1\n")
    with pytest.raises(RecipeError, match="learning_rate"):
        load_recipe(TrainSettings, recipe)
    recipe.write_text("model: tiny\nbatch_size: twelve\n")
    with pytest.raises(RecipeError, match="batch_size"):
        load_recipe(TrainSettings, recipe)
    with pytest.raises(TrainError, match="batch_size 12 does not divide by the 5 processes"):
        check_batch(TrainSettings(batch_size=12), 5)
    with pytest.raises(TrainError, match="micro_batch_size 3"):
        check_batch(TrainSettings(batch_size=8, micro_batch_size=3), 2)
    with pytest.raises(ValueError, match="num_layers"):
        pretrain(settings(text_file, model_config={"num_layers": 2}), tmp_path / "x")
    with pytest.raises(TrainError, match="seq_len 1024 exceeds"):
        pretrain(settings(text_file, seq_len=1024, model_config={"max_position_embeddings": 64}), tmp_path / "x")
    with pytest.raises(ValueError, match="no such file"):
        pretrain(settings(tmp_path / "missing.txt"), tmp_path / "x")


def test_data_directory_with_another_tokenizer_is_refused(tmp_path, monkeypatch):
    """A data directory records its tokenizer's identity; training it with another tokenizer is refused."""
    import json
    import types

    from acik.manifest import tokenizer_identity
    from acik.tokenizer import save_byte_tokenizer
    from acik.train.data import DataError, load_data

    data_dir = tmp_path / "data"
    data_tok = save_byte_tokenizer(data_dir / "tokenizer")
    other = save_byte_tokenizer(tmp_path / "other")
    cfg = json.loads((other / "tokenizer_config.json").read_text())
    cfg["eos_token"] = "<|im_end|>"
    (other / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert tokenizer_identity(other) != tokenizer_identity(data_tok)
    ids = np.frombuffer(TEXT.encode(), dtype=np.uint8).astype(np.uint16)
    # The data stage's reader interface (acik.data.shards: read_sidecar, load_tokens), stood in for so
    # this test does not depend on building a real data directory.
    fake = types.ModuleType("acik.data.shards")
    fake.read_sidecar = lambda d: {"tokenizer_identity": tokenizer_identity(data_tok), "vocab_size": 260,
                                   "dtype": "uint16"}
    fake.load_tokens = lambda d, split: ids[:-500] if split == "train" else ids[-500:]
    monkeypatch.setitem(sys.modules, "acik.data", types.ModuleType("acik.data"))
    monkeypatch.setitem(sys.modules, "acik.data.shards", fake)
    with pytest.raises(DataError, match="was tokenized with tokenizer"):
        load_data(data_dir, tokenizer_dir=other)
    loaded = load_data(data_dir)
    assert loaded.tokenizer_dir == data_dir / "tokenizer" and len(loaded.val) == 500
    assert load_data(data_dir, tokenizer_dir=data_tok).vocab_size == 260


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_process_torchrun_matches_one_process_and_resumes_in_one(tmp_path, text_file, parallel):
    """2 processes (gloo, CPU) == 1 process within 1e-5; a 2-process checkpoint resumes in 1 process."""
    import yaml

    recipe = tmp_path / "micro.yaml"
    recipe.write_text(yaml.safe_dump({**{k: v for k, v in MICRO.items() if k != "progress"}, "max_steps": 4}))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "acik", "train",
           "--recipe", str(recipe), "--data", str(text_file), "--out", str(tmp_path / "two"), "--quiet",
           "--set", f"parallel={parallel}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    s = load_recipe(TrainSettings, recipe, data=str(text_file), progress=False)
    pretrain(s, tmp_path / "one")
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-5, rtol=0)
    assert torch.load(tmp_path / "two" / "checkpoints" / "step_00000002" / "train_state.pt",
                      weights_only=True)["world_size"] == 2
    pretrain(s, tmp_path / "two", resume=str(tmp_path / "two" / "checkpoints" / "step_00000002"))
    for k in one:
        torch.testing.assert_close(weights(tmp_path / "two")[k], one[k], atol=1e-5, rtol=0)


def test_bpe_tokenizer_and_several_text_files(tmp_path):
    """The small recipe's inputs: a BPE tokenizer directory and a list of text files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from acik.tokenizer import tokenizer_config

    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(TEXT)
    b.write_text(TEXT.upper())
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train([str(a), str(b)], trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    tok.save(str(tok_dir / "tokenizer.json"))
    (tok_dir / "tokenizer_config.json").write_text(__import__("json").dumps(tokenizer_config()))
    s = load_recipe(TrainSettings, REPO / "recipes" / "small.yaml",
                    [f"model_config={MICRO['model_config']}", "max_steps=2", "seq_len=16", "batch_size=2",
                     "eval_every=0", "checkpoint_every=0"], progress=False)
    s.data, s.tokenizer = [str(a), str(b)], str(tok_dir)
    pretrain(s, tmp_path / "run")
    import acik

    llm = acik.load(tmp_path / "run" / "model")
    assert llm.config.vocab_size == tok.get_vocab_size()
    assert Tokenizer.from_file(str(tmp_path / "run" / "model" / "tokenizer.json")).get_vocab_size() == 300
    manifest = __import__("json").loads((tmp_path / "run" / "model" / "acik.json").read_text())
    roles = [p["role"] for p in manifest["parents"]]
    assert roles == ["data", "data", "tokenizer"]


def test_activation_checkpointing_gives_the_same_weights(tmp_path, text_file):
    pretrain(settings(text_file, max_steps=3, checkpoint_every=0), tmp_path / "a")
    pretrain(settings(text_file, max_steps=3, checkpoint_every=0, activation_checkpointing=True), tmp_path / "b")
    for k, v in weights(tmp_path / "a").items():
        torch.testing.assert_close(weights(tmp_path / "b")[k], v, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_compile_trains_like_eager(tmp_path, text_file):
    pretrain(settings(text_file, max_steps=3, checkpoint_every=0), tmp_path / "a")
    pretrain(settings(text_file, max_steps=3, checkpoint_every=0, compile=True), tmp_path / "b")
    for k, v in weights(tmp_path / "a").items():
        torch.testing.assert_close(weights(tmp_path / "b")[k], v, atol=1e-4, rtol=0)


def test_moe_model_trains_with_router_losses(tmp_path, text_file):
    from acik.model.moe import MoE

    cfg = {**MICRO["model_config"], "num_experts": 4, "num_experts_per_tok": 2, "router_aux_loss_coef": 0.5,
           "router_z_loss_coef": 0.01, "model_type": "mixtral"}
    r = pretrain(settings(text_file, model_config=cfg, max_steps=12, lr=3e-3, checkpoint_every=0), tmp_path / "moe")
    import acik

    model = acik.load(tmp_path / "moe" / "model").model
    assert any(isinstance(m, MoE) for m in model.modules()) and r.final_loss < 5.0
    # The hook sees the layers' losses and weighs them with the config's coefficients.
    from acik.config import ModelConfig
    from acik.model import Transformer
    from acik.train.loop import moe_aux_loss

    model = Transformer(ModelConfig(**{**cfg, "vocab_size": 260}))
    model.init_weights(0)
    model(torch.randint(0, 256, (2, 16)))
    layers = [m for m in model.modules() if isinstance(m, MoE)]
    expected = 0.5 * torch.stack([m.last_aux_loss for m in layers]).mean() + 0.01 * torch.stack(
        [m.last_z_loss for m in layers]).mean()
    torch.testing.assert_close(moe_aux_loss(model), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_trains_on_a_gpu_and_resumes(tmp_path, text_file):
    """The loop's bookkeeping tensors (step loss, token counts) meet GPU losses; bf16 autocast is on."""
    r = pretrain(settings(text_file, device="cuda", max_steps=4), tmp_path / "gpu")
    assert r.final_loss is not None and r.final_loss < 6.0
    pretrain(settings(text_file, device="cuda", max_steps=4), tmp_path / "gpu",
             resume=str(tmp_path / "gpu" / "checkpoints" / "step_00000002"))
