"""`acik generate`, `acik chat` and `acik pull` (never touching the network)."""

import io
import json

import pytest

from acik.cli import main
from acik.config import preset
from acik.engine.generate import chat_loop, resolve_model
from acik.llm import LLM
from acik.model.transformer import Transformer
from acik.tokenizer import save_byte_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    save_byte_tokenizer(d)
    cfg = preset("tiny", max_position_embeddings=256, eos_token_id=256)
    model = Transformer(cfg)
    model.init_weights(0)
    LLM(model, cfg, tokenizer_dir=d).save(d, command="test")
    return d


def test_generate_command_is_greedy_and_reproducible(model_dir, capsys):
    argv = ["generate", str(model_dir), "Hello", "--max-new-tokens", "8", "--temperature", "0"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    assert capsys.readouterr().out == first
    import acik

    llm = acik.load(model_dir)
    assert first == llm.generate("Hello", max_new_tokens=8, temperature=0) + "\n"


def test_generate_command_reads_a_recipe(model_dir, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("max_new_tokens: 3\ntemperature: 0.0\n")
    assert main(["generate", str(model_dir), "Hi", "--recipe", str(recipe), "-v"]) == 0
    assert "new tokens" in capsys.readouterr().err
    recipe.write_text("max_new_tokenz: 3\n")
    assert main(["generate", str(model_dir), "Hi", "--recipe", str(recipe)]) == 2
    assert "max_new_tokenz" in capsys.readouterr().err


def test_generate_command_bad_input(model_dir, capsys):
    assert main(["generate", str(model_dir), "Hi", "--temperature", "-1"]) == 2
    assert "temperature" in capsys.readouterr().err
    assert main(["generate", str(model_dir / "nope"), "Hi"]) == 2
    assert "no such model directory" in capsys.readouterr().err


def test_pull_offline_fails_at_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ACIK_HOME", str(tmp_path))
    assert main(["pull", "someone/some-model"]) == 2
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE" in err and "someone/some-model" in err
    assert main(["pull", "not-a-repo-id"]) == 2


def test_chat_finds_a_pulled_model(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ACIK_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="acik pull owner/name"):
        resolve_model("owner/name")
    target = tmp_path / "models" / "owner" / "name"
    target.parent.mkdir(parents=True)
    target.symlink_to(model_dir)
    assert resolve_model("owner/name") == target


def test_chat_loop(model_dir, tmp_path):
    import acik

    llm = acik.load(model_dir)
    save = tmp_path / "chat.json"
    script = "\n".join([
        "Hello there", "second line", "",  # a two-line message
        "/system Be brief.",
        "Hi", "",
        f"/save {save}",
        "/reset",
        "/bogus",
    ]) + "\n"
    out = io.StringIO()
    chat_loop(llm, dict(max_new_tokens=6, temperature=0), inp=io.StringIO(script), out=out)
    text = out.getvalue()
    assert text.count("tokens/s") == 2
    assert "system prompt set" in text and "conversation reset" in text and "unknown command /bogus" in text
    saved = json.loads(save.read_text())["messages"]
    assert [m["role"] for m in saved] == ["system", "user", "assistant"]
    assert saved[0]["content"] == "Be brief." and saved[1]["content"] == "Hi"
    # The reply is what the engine makes of the same conversation.
    expected = llm.chat(saved[:2], max_new_tokens=6, temperature=0)
    assert saved[2]["content"] == expected


def test_chat_stream_equals_chat(model_dir):
    import acik

    llm = acik.load(model_dir)
    msgs = [{"role": "user", "content": "Hi"}]
    whole = llm.chat(msgs, max_new_tokens=10, temperature=0)
    assert "".join(llm.chat(msgs, max_new_tokens=10, temperature=0, stream=True)) == whole
