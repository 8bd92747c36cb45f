"""Printed numbers: losses to 4 significant digits, sizes in KB under a MB, "1 step" not "1 steps"."""

from __future__ import annotations

import re

import pytest

from acik import fmt
from acik.cli import main as cli_main
from test_train import MICRO, TEXT


@pytest.mark.parametrize(("x", "text"), [(2.345678901234, "2.346"), (0.0123456, "0.01235"), (10.5, "10.50"),
                                         (3.0, "3.000"), (1234.56, "1235"), (None, "n/a"), (float("nan"), "nan")])
def test_loss_has_four_significant_digits(x, text):
    assert fmt.loss(x) == text


@pytest.mark.parametrize(("n", "text"), [(0, "0 B"), (999, "999 B"), (1000, "1 KB"), (12_345, "12.3 KB"),
                                         (999_499, "999 KB"), (999_500, "1 MB"), (4_560_000, "4.56 MB"),
                                         (123_456_789, "123 MB"), (2_500_000_000, "2.5 GB")])
def test_size_uses_the_unit_that_fits(n, text):
    assert fmt.size(n) == text


def test_params_reads_like_a_model_name():
    assert [fmt.params(n) for n in (950, 26_912, 134_515_008, 1_235_814_400, 20_914_757_184)] == \
        ["950", "26.9K", "135M", "1.24B", "20.9B"]


def test_count_agrees_in_number():
    assert fmt.count(1, "step") == "1 step"
    assert fmt.count(0, "step") == "0 steps"
    assert fmt.count(12_800, "token") == "12,800 tokens"
    assert fmt.count(1, "entry", "entries") == "1 entry" and fmt.count(3, "entry", "entries") == "3 entries"


def test_train_quantize_and_info_print_clean_numbers(tmp_path, capsys, one_thread):
    """One training step, its int8 copy and `acik info`: what a user reads after each."""
    import yaml

    corpus, recipe, run = tmp_path / "corpus.txt", tmp_path / "micro.yaml", tmp_path / "run"
    corpus.write_text(TEXT)
    recipe.write_text(yaml.safe_dump({k: v for k, v in MICRO.items() if k != "progress"}))
    assert cli_main(["train", "--recipe", str(recipe), "--data", str(corpus), "--out", str(run), "--quiet",
                     "--max-steps", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"trained 1 step, 128 tokens in [\d.]+ s; final loss \d\.\d{3}, validation loss \d\.\d{3};",
                     out), out

    assert cli_main(["quantize", str(run / "model"), "--out", str(tmp_path / "int8")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\(\d[\d.]* KB\); model \d[\d.]* KB;", out), out  # a model this small is KB, not 0.1 MiB

    assert cli_main(["info", str(run / "model")]) == 0
    out = capsys.readouterr().out
    assert " KB" in out and "MiB" not in out and "(26.9K)" in out, out
