"""Ctrl-C and SIGTERM during training: a checkpoint at the step boundary, a line that says where,
exit 130/143, and `--resume auto` continuing to the same bits as a run that was never stopped."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import acik
from acik.recipe import load_recipe
from acik.train.interrupt import StopSignals
from acik.train.loop import TrainSettings
from acik.train.pretrain import pretrain
from test_finetune_lora import FAST, chat_records
from test_train import MICRO, REPO, TEXT, assert_bitwise, weights

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

ENV = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}


def _logged_step(run: Path) -> int:
    """The last training step in RUN/metrics.jsonl (0 before the first)."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines()
             if line.endswith("}") and '"kind": "train"' in line]
    return max(steps, default=0)


def _signal_at(proc: subprocess.Popen, run: Path, step: int, sig: int, timeout: float = 120) -> str:
    """Send `sig` to `proc` once RUN has logged `step`; returns its stderr after it exits."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and _logged_step(run) < step:
        time.sleep(0.005)
    assert proc.poll() is None, f"the run ended before the signal: {proc.communicate()[1][-2000:]}"
    proc.send_signal(sig)
    return proc.communicate(timeout=300)[1]


def _stopped_line(err: str, sig: str) -> tuple[int, Path]:
    m = re.search(rf"stopped by {sig} at step (\d+); checkpoint saved to (\S+); to continue, run the same command "
                  r"with --resume auto$", err, re.M)
    assert m, err[-2000:]
    return int(m.group(1)), Path(m.group(2))


@pytest.fixture
def micro_recipe(tmp_path: Path) -> tuple[Path, Path]:
    text = tmp_path / "corpus.txt"
    text.write_text(TEXT)
    recipe = tmp_path / "micro.yaml"
    # No periodic checkpoint before the end: the one found after the signal is the signal's.
    recipe.write_text(yaml.safe_dump({**{k: v for k, v in MICRO.items() if k != "progress"}, "max_steps": 80,
                                      "checkpoint_every": 0, "eval_every": 40}))
    return recipe, text


def test_sigterm_during_train_checkpoints_and_resume_matches_an_uninterrupted_run(tmp_path, micro_recipe, capsys):
    recipe, text = micro_recipe
    run = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "acik", "train", "--recipe", str(recipe), "--data", str(text),
                             "--out", str(run), "--quiet"], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    err = _signal_at(proc, run, random.Random().randint(3, 20), signal.SIGTERM)
    assert proc.returncode == 143, err[-2000:]
    step, path = _stopped_line(err, "SIGTERM")
    assert 3 <= step < 80 and path == run / "checkpoints" / f"step_{step:08d}"
    assert [p.name for p in (run / "checkpoints").iterdir()] == [path.name]
    assert not (run / "model").exists()

    s = load_recipe(TrainSettings, recipe, data=str(text), progress=False)
    capsys.readouterr()
    assert pretrain(s, run, resume="auto").step == 80
    assert f"resuming from step {step} ({path})" in capsys.readouterr().err
    pretrain(s, tmp_path / "straight")
    assert_bitwise(weights(run), weights(tmp_path / "straight"))
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if '"kind": "train"' in line]
    assert logged == list(range(1, 81))


def test_resume_auto_without_a_checkpoint_says_so(tmp_path, micro_recipe, capsys):
    _, text = micro_recipe
    pretrain(TrainSettings(**{**MICRO, "data": str(text), "max_steps": 1}), tmp_path / "fresh", resume="auto")
    assert "no checkpoint found, starting from step 0" in capsys.readouterr().err


def test_sigint_during_lora_finetune_checkpoints_and_resume_matches(tmp_path):
    import transformers as tf

    from acik.tokenizer import save_byte_tokenizer
    from hf_models import make_hf_model

    cfg = tf.LlamaConfig(vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False)
    model_dir, data = tmp_path / "base", tmp_path / "chat.jsonl"
    make_hf_model(cfg, model_dir)
    save_byte_tokenizer(model_dir)
    data.write_text("".join(json.dumps(r) + "\n" for r in chat_records()))
    flags = dict(max_steps=30, lora_dropout=0.1, lr=1e-2, batch_size=2, max_seq_len=128, seed=1)
    recipe = {**FAST, "checkpoint_every": 0, "log_every": 1, "eval_every": 0}
    recipe.pop("batch_size"), recipe.pop("max_seq_len"), recipe.pop("lr")
    cli = [str(model_dir), "--data", str(data), "--out", str(tmp_path / "a"), "--max-steps", "30",
           "--lora-dropout", "0.1", "--lr", "1e-2", "--batch-size", "2", "--max-seq-len", "128", "--seed", "1",
           *[a for k, v in recipe.items() for a in ("--set", f"{k}={v}")]]
    proc = subprocess.Popen([sys.executable, "-m", "acik", "finetune", *cli], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    err = _signal_at(proc, tmp_path / "a", 3, signal.SIGINT)
    assert proc.returncode == 130, err[-2000:]
    step, path = _stopped_line(err, "SIGINT")
    assert path.is_dir() and not (tmp_path / "a" / "adapter").exists()

    acik.finetune(model_dir, data, tmp_path / "a", resume="auto", **flags, **recipe)
    acik.finetune(model_dir, data, tmp_path / "b", **flags, **recipe)
    a = load_file(tmp_path / "a" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_repeated_signal_within_the_grace_period_is_ignored_and_a_later_one_quits():
    with StopSignals(announce=False, grace_s=60) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # torchrun forwarding the same signal: still just a stop request
        assert stop.signum == signal.SIGTERM
    with StopSignals(announce=False, grace_s=0) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers are given back


@pytest.mark.slow
def test_ctrl_c_under_torchrun_stops_every_process_at_the_same_step(tmp_path, micro_recipe):
    """Ctrl-C in a terminal signals the whole process group (torchrun and its 2 workers; torchrun
    forwards it again): one checkpoint, at one step, and it resumes like the existing 2-process test."""
    recipe, text = micro_recipe
    run = tmp_path / "two"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "acik",
                             "train", "--recipe", str(recipe), "--data", str(text), "--out", str(run), "--quiet"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and _logged_step(run) < 5:
        time.sleep(0.005)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    os.killpg(proc.pid, signal.SIGINT)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode != 0
    step, path = _stopped_line(err, "SIGINT")
    assert err.count("stopped by SIGINT") == 1  # rank 0 speaks for both
    assert [p.name for p in (run / "checkpoints").iterdir()] == [path.name]
    assert torch.load(path / "train_state.pt", weights_only=True)["world_size"] == 2
    s = load_recipe(TrainSettings, recipe, data=str(text), progress=False)
    pretrain(s, run, resume="auto")
    pretrain(s, tmp_path / "one")
    one, two = weights(tmp_path / "one"), weights(run)
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-5, rtol=0)
