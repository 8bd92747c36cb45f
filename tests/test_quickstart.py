"""`acik quickstart --fast` end to end: report and pictures, manifests, rerun skips, reproduce, eval over the API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from acik.quickstart.pipeline import PACKAGED_RECIPE, STAGES

REPO = Path(__file__).resolve().parents[1]


def acik(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "acik", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=900)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("quickstart")
    recipe = root / "quickstart.yaml"
    shutil.copy(PACKAGED_RECIPE, recipe)
    done = acik("quickstart", "--fast", "--out", str(root / "run"), "--recipe", str(recipe))
    assert done.returncode == 0, done.stderr[-4000:]
    (root / "run" / "stderr.txt").write_text(done.stderr)
    return root / "run"


def test_recipe_copies_match():
    assert (REPO / "recipes" / "quickstart.yaml").read_text() == PACKAGED_RECIPE.read_text()


def test_fast_quickstart_end_to_end(run_dir: Path):
    from PIL import Image

    from acik.manifest import verify

    for stage in STAGES:
        assert [p for p in verify(run_dir / stage) if "human-facing" not in p] == [], stage
    report = run_dir / "report" / "report.md"
    text = report.read_text()
    for png in ("report_eval.png", "report_loss.png"):
        assert f"]({png})" in text
        with Image.open(run_dir / "report" / png) as im:
            im.load()
            assert im.size[0] > 300 and im.size[1] > 200
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert results["questions"] >= 200
    m = results["models"]
    assert set(m) == {"pretrain", "finetune", "int8"}
    for r in m.values():  # --fast trains too little to beat chance reliably; the full run is the real test
        assert 0 <= r["acc"] <= 1 and 0 <= r["acc_calibrated"] <= 1 and r["n"] == results["questions"]
    # The held-out questions were never trained on.
    held = {json.loads(line)["name"] for line in (run_dir / "qa" / "heldout.jsonl").read_text().splitlines()}
    trained = {json.loads(line)["name"] for line in (run_dir / "qa" / "train.jsonl").read_text().splitlines()}
    assert len(held) >= 200 and not held & trained
    # Model cards carry Hub metadata with the evaluation results.
    card = (run_dir / "finetune" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"] == "../pretrain" and meta["license"] == "other"
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == round(m["finetune"]["acc"], 4)
    assert "DATA_CARD.md" in card and "## Limitations and risks" in card
    # Every stage records the command that rebuilds it alone.
    for stage in STAGES:
        cmd = json.loads((run_dir / stage / "acik.json").read_text())["command"]
        assert cmd[:6] == ["acik", "quickstart", "--stage", stage, "--out", str(run_dir / stage)]
    stderr = (run_dir / "stderr.txt").read_text()
    assert "acik chat" in stderr and "acik serve" in stderr and "[9/9] report" in stderr


def test_rerun_skips_finished_stages(run_dir: Path):
    done = acik("quickstart", "--fast", "--out", str(run_dir), "--recipe", str(run_dir.parent / "quickstart.yaml"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("already done") == len(STAGES)


def test_reproduce_gives_identical_bits(run_dir: Path, tmp_path: Path):
    for stage in ("pretrain", "int8"):
        done = acik("reproduce", str(run_dir / stage), "--out", str(tmp_path / stage))
        assert done.returncode == 0, done.stdout + done.stderr[-3000:]
        assert "identical bits" in done.stdout


def test_reproduce_sees_a_changed_seed(run_dir: Path, tmp_path: Path):
    # The same stage, its recorded recipe changed: a copy of the recipe with another seed.
    recipe = yaml.safe_load((run_dir.parent / "quickstart.yaml").read_text())
    recipe["seed"] = 1
    changed = tmp_path / "quickstart-seed1.yaml"
    changed.write_text(yaml.safe_dump(recipe))
    stage = tmp_path / "pretrain"
    shutil.copytree(run_dir / "pretrain", stage)
    manifest = json.loads((stage / "acik.json").read_text())
    cmd = manifest["command"]
    cmd[cmd.index("--out") + 1] = str(stage)
    cmd[cmd.index("--recipe") + 1] = str(changed)
    (stage / "acik.json").write_text(json.dumps(manifest))
    done = acik("reproduce", str(stage), "--out", str(tmp_path / "rebuilt"))
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    assert "DIFFERENT" in done.stdout and "differs: model.safetensors" in done.stdout


def test_eval_over_the_api_equals_eval_on_the_directory(run_dir: Path):
    pytest.importorskip("acik.serve")
    from acik.eval.harness import evaluate
    from acik.serve import ServeSettings, build_app
    from serve_helpers import LiveServer

    model = run_dir / "finetune"
    local = evaluate(model, ["heldout_mc"], data_dir=run_dir / "qa", limit=24)
    with LiveServer(build_app(ServeSettings(model=str(model), model_name="qs"))) as server:
        remote = evaluate(api=server.url + "/v1", model_name="qs", tasks=["heldout_mc"], data_dir=run_dir / "qa",
                          limit=24, tokenizer_dir=model)
    a, b = local["tasks"]["heldout_mc"], remote["tasks"]["heldout_mc"]
    assert a["n"] == b["n"] == 24
    assert a["acc"] == b["acc"] and a["acc_norm"] == b["acc_norm"]
