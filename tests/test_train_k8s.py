"""`acik train --emit-k8s`: the Kubeflow manifests and Dockerfile it writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from acik.cli import main

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "tinyshakespeare.yaml"


def test_trainjob_manifest_runs_the_recipe_through_torchrun(tmp_path):
    assert main(["train", "--recipe", str(RECIPE), "--emit-k8s", "--nodes", "4", "--gpus-per-node", "8",
                 "--out", str(tmp_path), "--image", "registry.example/acik:1", "--data", "/data/shards"]) == 0
    configmap, job = yaml.safe_load_all((tmp_path / "trainjob.yaml").read_text())
    assert configmap["kind"] == "ConfigMap"
    # The cluster runs exactly this recipe.
    assert yaml.safe_load(configmap["data"]["recipe.yaml"]) == yaml.safe_load(RECIPE.read_text())
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    assert job["spec"]["runtimeRef"]["name"] == "torch-distributed"
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == 4 and trainer["numProcPerNode"] == 8
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == 8
    assert trainer["image"] == "registry.example/acik:1"
    cmd = trainer["command"]
    assert cmd[:4] == ["torchrun", "-m", "acik", "train"]
    assert cmd[cmd.index("--recipe") + 1] == "/etc/acik/recipe.yaml"
    assert cmd[cmd.index("--resume") + 1] == "auto" and cmd[cmd.index("--data") + 1] == "/data/shards"
    override = job["spec"]["podTemplateOverrides"][0]
    mounts = {m["mountPath"] for m in override["spec"]["containers"][0]["volumeMounts"]}
    assert {"/etc/acik", "/runs", "/data"} <= mounts
    assert {v["name"] for v in override["spec"]["volumes"]} >= {"recipe", "runs", "data"}
    docker = (tmp_path / "Dockerfile").read_text()
    assert docker.startswith("#") and "FROM pytorch/pytorch" in docker and "pip install" in docker


def test_pytorchjob_option(tmp_path):
    assert main(["train", "--recipe", str(RECIPE), "--emit-k8s", "--nodes", "3", "--gpus-per-node", "2",
                 "--k8s-kind", "PyTorchJob", "--out", str(tmp_path)]) == 0
    _, job = yaml.safe_load_all((tmp_path / "pytorchjob.yaml").read_text())
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] == 2
    assert job["spec"]["nprocPerNode"] == "2"
    container = specs["Worker"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2 and container["command"][0] == "torchrun"


def test_cli_errors_name_the_problem(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny\nwarmup: 10\n")
    assert main(["train", "--recipe", str(bad), "--out", str(tmp_path / "run")]) == 2
    assert "unknown key 'warmup'" in capsys.readouterr().err
    assert main(["train", "--recipe", str(RECIPE), "--out", str(tmp_path / "run"), "--data",
                 str(tmp_path / "nope.txt")]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--emit-k8s"])  # --out is required
