"""Kubernetes launch: a Kubeflow Trainer `TrainJob` (torch-distributed runtime) or a Training Operator
`PyTorchJob` that runs a recipe through torchrun, plus the Dockerfile of the image it names.

The recipe travels in a ConfigMap in the same file, so the cluster runs exactly the recipe you have;
data and the run directory live on a PersistentVolumeClaim (`acik-data`, `acik-runs`), so
`--resume auto` continues after a pod is rescheduled.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from acik.recipe import read_yaml

DOCKERFILE = """\
# Image for `acik train` on Kubernetes. Build from the acik source tree:
#   docker build -t IMAGE -f Dockerfile .  &&  docker push IMAGE
FROM pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime
WORKDIR /opt/acik
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
COPY recipes ./recipes
RUN pip install --no-cache-dir . && python -c "import acik, torch; print(acik.__version__, torch.__version__)"
ENV PYTHONUNBUFFERED=1 OMP_NUM_THREADS=8
ENTRYPOINT []
"""


def _name(recipe: str) -> str:
    stem = re.sub(r"[^a-z0-9-]+", "-", Path(recipe).stem.lower()).strip("-") or "run"
    return f"acik-train-{stem}"[:52]


def job_command(name: str, data: str | None, overrides: list[str]) -> list[str]:
    """The command every node runs. torchrun takes its node count, rank and rendezvous address from the
    PET_* environment variables that both Kubeflow operators set, so the command is the same on every node."""
    cmd = ["torchrun", "-m", "acik", "train", "--recipe", "/etc/acik/recipe.yaml", "--out", f"/runs/{name}",
           "--resume", "auto", "--quiet", "--set", "device=cuda"]
    if data:
        cmd += ["--data", data]
    for o in overrides:
        cmd += ["--set", o]
    return cmd


def manifests(recipe: str, *, nodes: int, gpus_per_node: int, image: str, kind: str = "TrainJob",
              data: str | None = None, overrides: list[str] | None = None) -> list[dict]:
    """ConfigMap (the recipe) + the job, as Kubernetes objects."""
    if nodes < 1 or gpus_per_node < 1:
        raise ValueError(f"--nodes ({nodes}) and --gpus-per-node ({gpus_per_node}) must be at least 1")
    settings = read_yaml(recipe)
    name = _name(recipe)
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-recipe"},
                 "data": {"recipe.yaml": yaml.safe_dump(settings, sort_keys=False)}}
    cmd = job_command(name, data, overrides or [])
    mounts = [{"name": "recipe", "mountPath": "/etc/acik"}, {"name": "data", "mountPath": "/data"},
              {"name": "runs", "mountPath": "/runs"}, {"name": "dshm", "mountPath": "/dev/shm"}]
    volumes = [{"name": "recipe", "configMap": {"name": f"{name}-recipe"}},
               {"name": "data", "persistentVolumeClaim": {"claimName": "acik-data"}},
               {"name": "runs", "persistentVolumeClaim": {"claimName": "acik-runs"}},
               {"name": "dshm", "emptyDir": {"medium": "Memory"}}]  # NCCL needs a large /dev/shm
    resources = {"limits": {"nvidia.com/gpu": gpus_per_node}}
    if kind == "TrainJob":
        job = {
            "apiVersion": "trainer.kubeflow.org/v1alpha1",
            "kind": "TrainJob",
            "metadata": {"name": name},
            "spec": {
                "runtimeRef": {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                               "name": "torch-distributed"},
                "trainer": {"image": image, "command": cmd, "numNodes": nodes, "numProcPerNode": gpus_per_node,
                            "resourcesPerNode": resources},
                # Mount the recipe, data and run volumes into the trainer ("node") containers.
                "podTemplateOverrides": [{
                    "targetJobs": [{"name": "node"}],
                    "spec": {"volumes": volumes,
                             "containers": [{"name": "node", "volumeMounts": mounts}]},
                }],
            },
        }
    elif kind == "PyTorchJob":
        container = {"name": "pytorch", "image": image, "command": cmd, "resources": resources,
                     "volumeMounts": mounts}
        template = {"spec": {"containers": [container], "volumes": volumes}}
        replicas = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": template}}
        if nodes > 1:
            replicas["Worker"] = {"replicas": nodes - 1, "restartPolicy": "OnFailure", "template": template}
        job = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": name},
               "spec": {"nprocPerNode": str(gpus_per_node), "pytorchReplicaSpecs": replicas}}
    else:
        raise ValueError(f"unknown job kind {kind!r}; use TrainJob or PyTorchJob")
    return [configmap, job]


def emit(recipe: str, out_dir: str | Path, *, nodes: int, gpus_per_node: int, image: str, kind: str = "TrainJob",
         data: str | None = None, overrides: list[str] | None = None) -> list[Path]:
    """Write `OUT/<kind>.yaml` (apply with `kubectl apply -f`) and `OUT/Dockerfile`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs = manifests(recipe, nodes=nodes, gpus_per_node=gpus_per_node, image=image, kind=kind, data=data,
                     overrides=overrides)
    job_path = out / f"{kind.lower()}.yaml"
    job_path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    docker = out / "Dockerfile"
    docker.write_text(DOCKERFILE)
    return [job_path, docker]
