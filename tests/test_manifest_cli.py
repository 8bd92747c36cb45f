"""Manifests, `acik verify`, `acik info`, and the model API from scratch."""

import json
import subprocess
import sys

import torch

import acik
from acik.cli import main
from acik.config import preset
from acik.llm import LLM
from acik.manifest import tokenizer_identity, verify
from acik.model import Transformer
from acik.tokenizer import save_byte_tokenizer


def make_llm(tmp_path):
    cfg = preset("tiny", num_hidden_layers=2)
    model = Transformer(cfg)
    model.init_weights(seed=0)
    return LLM(model, cfg, tokenizer_dir=save_byte_tokenizer(tmp_path / "tok"))


def test_save_load_verify_and_flip_a_byte(tmp_path, capsys):
    llm = make_llm(tmp_path)
    out = llm.save(tmp_path / "model", seed=0, recipe={"preset": "tiny"})
    manifest = json.loads((out / "acik.json").read_text())
    assert manifest["kind"] == "model" and manifest["seed"] == 0
    assert set(manifest["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert manifest["tokenizer_identity"] == tokenizer_identity(tmp_path / "tok")
    assert "acik" in manifest["code_version"]
    assert verify(out) == []
    assert main(["verify", str(out)]) == 0

    again = acik.load(out, dtype="float32")
    x = torch.randint(0, 260, (1, 9))
    with torch.no_grad():
        assert torch.equal(again.model(x), llm.model(x))

    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["verify", str(out)]) == 1
    assert "changed: model.safetensors" in capsys.readouterr().out

    (out / "extra.txt").write_text("x")
    (out / "generation_config.json").unlink()
    problems = verify(out)
    assert "extra: extra.txt" in problems and "missing: generation_config.json" in problems


def test_human_facing_files_do_not_change_identity(tmp_path):
    llm = make_llm(tmp_path)
    out = llm.save(tmp_path / "model")
    (out / "README.md").write_text("# a card\n")
    from acik.manifest import write_manifest
    before = json.loads((out / "acik.json").read_text())["directory_hash"]
    assert write_manifest(out, kind="model")["directory_hash"] == before


def test_tokenizer_identity_survives_resave(tmp_path):
    a = save_byte_tokenizer(tmp_path / "a")
    data = json.loads((a / "tokenizer.json").read_text())
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "tokenizer.json").write_text(json.dumps(data, indent=4, sort_keys=True))
    (tmp_path / "b" / "tokenizer_config.json").write_text((a / "tokenizer_config.json").read_text())
    assert tokenizer_identity(a) == tokenizer_identity(tmp_path / "b")
    data["added_tokens"][0]["content"] = "<|eot|>"
    (tmp_path / "b" / "tokenizer.json").write_text(json.dumps(data))
    assert tokenizer_identity(a) != tokenizer_identity(tmp_path / "b")


def test_info_command(tmp_path):
    out = make_llm(tmp_path).save(tmp_path / "model")
    result = subprocess.run([sys.executable, "-m", "acik", "info", str(out)], capture_output=True, text=True,
                            check=True)
    text = result.stdout
    assert "family:        llama" in text
    n = sum(p.numel() for p in Transformer(preset("tiny", num_hidden_layers=2)).parameters())
    assert f"{n:,}" in text
    assert "4 query / 2 key-value" in text and "full x2" in text


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a model: it has no config.json" in err and "Traceback" not in err

