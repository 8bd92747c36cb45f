"""What acik prints can be typed as printed: quickstart's closing commands, a taken port, bad sampling flags."""

import os
import shlex
import socket
import stat
import sys
from pathlib import Path

import pytest

from acik.cli import main
from acik.invocation import acik_command, shell_path
from acik.quickstart.pipeline import MODEL_STAGES, closing_message


def _script(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "acik"
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_acik_command_is_the_venv_script_when_not_on_path(tmp_path, monkeypatch):
    script = _script(tmp_path / ".venv" / "bin")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(script), "quickstart"])
    monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))
    assert acik_command() == ".venv/bin/acik"
    # Once the venv's bin is on the PATH, the shell finds this very script: plain `acik`.
    monkeypatch.setenv("PATH", str(script.parent))
    assert acik_command() == "acik"
    # Another acik on the PATH is not this one: keep the path.
    other = _script(tmp_path / "other")
    monkeypatch.setenv("PATH", str(other.parent))
    assert acik_command() == ".venv/bin/acik"
    # Started from outside the checkout: an absolute path.
    monkeypatch.chdir(tmp_path / "other")
    assert acik_command() == str(script)


def test_quickstart_closing_lines_run_as_printed(tmp_path, monkeypatch):
    script = _script(tmp_path / ".venv" / "bin")
    (script.parent / "activate").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(script), "quickstart"])
    monkeypatch.setenv("PATH", "/nonexistent")
    models = {s: {"label": label, "acc": 0.25, "val_loss": 3.5} for s, label in MODEL_STAGES.items()}
    text = closing_message(tmp_path / "runs" / "quickstart", {"models": models, "questions": 300}, 10.0, {})
    chat = next(line for line in text.splitlines() if line.startswith("Chat with it:"))
    words = shlex.split(chat.split(":", 1)[1])
    assert words[:3] == [".venv/bin/acik", "chat", "runs/quickstart/finetune"]
    assert os.access(words[0], os.X_OK)  # the printed program exists from this directory
    assert "source .venv/bin/activate" in text
    assert all(" acik " not in line for line in text.splitlines() if line.startswith(("Chat", "Serve", "Check")))


def test_shell_path_quotes_and_relativises(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shell_path(tmp_path / "runs" / "a") == "runs/a"
    assert shlex.split(shell_path("/tmp/with space/x")) == ["/tmp/with space/x"]


def test_serve_with_its_port_taken_says_so_before_loading(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        # The model directory does not exist: an error about the port proves nothing was loaded first.
        code = main(["serve", str(tmp_path / "no-model"), "--port", str(port)])
    err = capsys.readouterr().err
    assert code != 0
    assert f"port {port}" in err and "--port" in err and "in use" in err
    assert "no-model" not in err and "acik serve:" not in err.replace("acik serve: error", "")


@pytest.mark.parametrize("command", ["chat", "generate"])
@pytest.mark.parametrize("flags,message", [
    (["--temperature", "-1"], "--temperature must be >= 0"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--top-k", "-3"], "--top-k must be >= 0"),
    (["--min-p", "2"], "--min-p must be in [0, 1]"),
    (["--repetition-penalty", "0"], "--repetition-penalty must be > 0"),
    (["--frequency-penalty", "3"], "--frequency-penalty must be in [-2, 2]"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--temperature", "nan"], "--temperature must be >= 0"),
    (["--set", "top_k=-2"], "--top-k must be >= 0"),
])
def test_bad_sampling_flags_fail_before_the_model_loads(tmp_path, capsys, command, flags, message):
    argv = [command, str(tmp_path / "no-model")] + (["hi"] if command == "generate" else []) + flags
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "no-model" not in err


def test_good_sampling_flags_reach_the_model(tmp_path, capsys):
    # Valid settings pass the check: the error is then the missing model, found only by loading it.
    assert main(["chat", str(tmp_path / "no-model"), "--temperature", "0", "--top-p", "1", "--min-p", "0"]) == 2
    assert "no-model" in capsys.readouterr().err
