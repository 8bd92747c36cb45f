"""`acik reproduce` reruns the recorded command and compares bits."""

import json

import pytest

from acik.cli import main
from acik.reproduce import reproduce


@pytest.fixture
def trained(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.txt").write_text("the quick brown fox jumps over the lazy dog. " * 200)
    assert main(["tokenizer", "train", "--input", "in.txt", "--vocab-size", "300", "--out", "tok", "--quiet"]) == 0
    return tmp_path / "tok"


def test_reproduce_gives_identical_bits(trained, capsys):
    assert main(["reproduce", str(trained)]) == 0
    assert "identical bits" in capsys.readouterr().out


def test_reproduce_reports_a_difference(trained):
    manifest = json.loads((trained / "acik.json").read_text())
    i = manifest["command"].index("--vocab-size")
    manifest["command"][i + 1] = "290"  # as if the recipe had said otherwise
    (trained / "acik.json").write_text(json.dumps(manifest))
    [result] = reproduce(trained, quiet=True)
    assert not result.identical
    assert "differs: tokenizer.json" in result.differences


def test_reproduce_refuses_a_directory_without_command(tmp_path):
    from acik.manifest import write_manifest

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.txt").write_text("x")
    write_manifest(tmp_path / "d", kind="other", command="made by hand")
    with pytest.raises(ValueError, match="records no `acik ...` command"):
        reproduce(tmp_path / "d")
