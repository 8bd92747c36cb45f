"""Hugging Face model directories in and out: `config.json` <-> `ModelConfig`, and safetensors weights <-> a
`Transformer` (through the family maps of `acik.formats.families`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from acik.config import ModelConfig
from acik.formats import CheckpointError
from acik.formats.families import COMMON_KEYS, Tensors, family_of

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model")


# ---------------------------------------------------------------------------------------------
# config.json
# ---------------------------------------------------------------------------------------------

def _rope_from_hf(hf: dict) -> dict:
    """Both spellings: legacy `rope_theta` + `rope_scaling` and transformers v5 `rope_parameters`."""
    params = dict(hf.get("rope_parameters") or {})
    legacy = dict(hf.get("rope_scaling") or {})
    theta = params.pop("rope_theta", None) or hf.get("rope_theta") or 10000.0
    partial = params.pop("partial_rotary_factor", None) or hf.get("partial_rotary_factor") or 1.0
    scaling = {**legacy, **params}
    if "type" in scaling and "rope_type" not in scaling:
        scaling["rope_type"] = scaling.pop("type")
    scaling.pop("type", None)
    if scaling.get("rope_type", "default") == "default":
        scaling = None
    return {"rope_theta": float(theta), "rope_scaling": scaling, "partial_rotary_factor": float(partial)}


def config_from_hf(hf: dict, source: str = "config.json") -> ModelConfig:
    model_type = hf.get("model_type")
    if not model_type:
        raise CheckpointError(f"{source}: no model_type; this does not look like a Hugging Face model config")
    fam = family_of(model_type)
    values: dict[str, Any] = {k: hf[k] for k in COMMON_KEYS if hf.get(k) is not None and k not in fam.skip_keys}
    values.update(_rope_from_hf(hf))
    if fam.eps_key in hf:
        values["norm_eps"] = float(hf[fam.eps_key])
    if "hidden_act" in hf:
        values["hidden_act"] = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}.get(
            hf["hidden_act"], hf["hidden_act"])
    values["torch_dtype"] = str(hf.get("dtype") or hf.get("torch_dtype") or "float32").replace("torch.", "")
    values.update(fam.from_hf(hf))
    values.update(fam.fixed)
    values["model_type"] = model_type
    try:
        return ModelConfig(**values)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: {e}") from None


def config_to_hf(cfg: ModelConfig) -> dict:
    fam = family_of(cfg.model_type)
    out: dict[str, Any] = {"architectures": [fam.architecture], "model_type": cfg.model_type}
    out.update({k: getattr(cfg, k) for k in COMMON_KEYS if k not in fam.skip_keys})
    out[fam.eps_key] = cfg.norm_eps
    out["hidden_act"] = {"gelu_tanh": "gelu_pytorch_tanh"}.get(cfg.hidden_act, cfg.hidden_act)
    out["rope_theta"] = cfg.rope_theta
    out["rope_scaling"] = cfg.rope_scaling
    if cfg.partial_rotary_factor != 1.0:
        out["partial_rotary_factor"] = cfg.partial_rotary_factor
    out.update(fam.to_hf(cfg))
    out["dtype"] = out["torch_dtype"] = cfg.torch_dtype
    out["use_cache"] = True
    out.update(cfg.extra)
    return out


def read_config(path: str | Path) -> ModelConfig:
    path = Path(path)
    cfg_path = path / "config.json" if path.is_dir() else path
    if not cfg_path.exists():
        raise CheckpointError(f"{cfg_path}: missing; a model directory needs config.json")
    try:
        hf = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: malformed JSON ({e}); restore the file from the model's source") \
            from None
    if not isinstance(hf, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object at the top level")
    return config_from_hf(hf, str(cfg_path))


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------

def weight_files(directory: Path) -> list[Path]:
    index = directory / WEIGHTS_INDEX
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: malformed index ({e})") from None
        files = [directory / name for name in sorted(set(weight_map.values()))]
        for f in files:
            if not f.exists():
                raise CheckpointError(f"{f}: listed in {index.name} but missing; download the complete model")
        return files
    single = sorted(directory.glob("*.safetensors"))
    if single:
        return single
    pickles = [p.name for p in directory.glob("*.bin")] + [p.name for p in directory.glob("*.pt*")]
    if pickles:
        raise CheckpointError(
            f"{directory}: only {', '.join(sorted(pickles))} (PyTorch pickle). acik never unpickles a file someone "
            "else wrote, because unpickling can run arbitrary code. Convert it once, in an environment you trust: "
            "python -c \"from transformers import AutoModelForCausalLM as M; "
            f"M.from_pretrained('{directory}').save_pretrained('OUT_DIR', safe_serialization=True)\"")
    raise CheckpointError(f"{directory}: no {WEIGHTS} (or sharded safetensors with {WEIGHTS_INDEX})")


def iter_checkpoint(files: list[Path]) -> Tensors:
    """Yield (name, tensor) one at a time, so loading never holds a second full copy of the model."""
    from safetensors import SafetensorError, safe_open

    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        except (SafetensorError, OSError, RuntimeError) as e:
            raise CheckpointError(f"{path}: cannot read safetensors ({e}); the file is truncated or corrupt, "
                                  "download it again") from None


def load_weights(model: torch.nn.Module, config: ModelConfig, files: list[Path], dtype: torch.dtype,
                 device: str | torch.device) -> None:
    """Fill every parameter of `model` (on the meta device) from `files`, checking names and shapes."""
    fam = family_of(config.model_type)
    params = dict(model.named_parameters())
    filled: set[str] = set()
    where = ", ".join(f.name for f in files)
    for name, tensor in _pack_experts(fam.load_tensors(iter_checkpoint(files), config), params):
        if name.endswith("rotary_emb.inv_freq"):
            continue
        if name not in params:
            if name == "lm_head.weight" and config.tie_word_embeddings:
                continue  # tied: the head is the embedding
            raise CheckpointError(f"{where}: unexpected tensor {name!r}; the weights do not match config.json "
                                  f"(model_type {config.model_type!r})")
        p = params[name]
        if tuple(tensor.shape) != tuple(p.shape):
            hint = ""
            if ".mlp.router." in name or ".mlp.experts." in name:
                hint = (f"; the router and the experts must both have num_experts={config.num_experts} "
                        "(config.json num_local_experts)")
            raise CheckpointError(f"{where}: tensor {name!r} has shape {tuple(tensor.shape)} but config.json "
                                  f"implies {tuple(p.shape)}{hint}")
        target = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
        _set_param(model, name, target)
        filled.add(name)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    missing = sorted(set(params) - filled - tied)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CheckpointError(f"{where}: missing tensor(s) {', '.join(missing[:3])}{more}; the checkpoint is "
                              "incomplete or for a different architecture")


def _pack_experts(tensors: Tensors, params: dict) -> Tensors:
    """Dense expert weights for a model that holds them packed (`expert_quant="mxfp4"`): quantise at load."""
    from acik.quant.mxfp4 import quantize_mxfp4

    for name, t in tensors:
        if name not in params and f"{name}_blocks" in params:
            blocks, scales = quantize_mxfp4(t)
            yield f"{name}_blocks", blocks
            yield f"{name}_scales", scales
        else:
            yield name, t


def _unpack_experts(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Packed expert weights back to dense, for families whose checkpoints cannot store MXFP4."""
    from acik.quant.mxfp4 import dequantize_mxfp4

    out = {}
    for name, t in state.items():
        if name.endswith("_scales") and name.removesuffix("_scales") + "_blocks" in state:
            continue
        if name.endswith("_blocks") and name.removesuffix("_blocks") + "_scales" in state:
            base = name.removesuffix("_blocks")
            out[base] = dequantize_mxfp4(t, state[f"{base}_scales"], dtype)
        else:
            out[name] = t
    return out


def _set_param(model: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    setattr(module, attr, torch.nn.Parameter(value, requires_grad=value.is_floating_point()))


def build_model(config: ModelConfig, directory: str | Path, device: torch.device, dtype: torch.dtype):
    """Construct the Transformer on the meta device and fill it from `directory`'s safetensors."""
    from acik.model import Transformer

    files = weight_files(Path(directory))
    with torch.device("meta"):
        model = Transformer(config)
    load_weights(model, config, files, dtype, device)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # Buffers (RoPE frequencies) are computed, not stored: rebuild them on the real device.
    model.model.rotary_emb = type(model.model.rotary_emb)(config).to(device)
    return model.eval()


def save_weights(model: torch.nn.Module, config: ModelConfig, out: Path,
                 max_shard_bytes: int = 5 * 1024**3) -> list[str]:
    """Write safetensors (sharded with an index above `max_shard_bytes`); returns the file names."""
    from safetensors.torch import save_file

    fam = family_of(config.model_type)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("rotary_emb.inv_freq")}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    if config.expert_quant == "mxfp4" and not fam.stores_mxfp4:
        state = _unpack_experts(state, model.model.embed_tokens.weight.dtype)
    tensors = [(name, t.detach().to("cpu").contiguous()) for name, t in
               fam.save_tensors(iter(state.items()), config)]
    shards: list[list[tuple[str, torch.Tensor]]] = [[]]
    size = 0
    for name, t in tensors:
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, t))
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(dict(shards[0]), str(out / WEIGHTS), metadata=meta)
        return [WEIGHTS]
    names, weight_map = [], {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(dict(shard), str(out / fname), metadata=meta)
        names.append(fname)
        weight_map.update({n: fname for n, _ in shard})
    total = sum(t.numel() * t.element_size() for _, t in tensors)
    (out / WEIGHTS_INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                indent=2))
    return names + [WEIGHTS_INDEX]


def save_pretrained(model: torch.nn.Module, config: ModelConfig, out_dir: str | Path, *,
                    tokenizer_dir: str | Path | None = None, generation_config: dict | None = None,
                    max_shard_bytes: int = 5 * 1024**3) -> Path:
    """Write a Hugging Face model directory (config, weights, generation config, tokenizer files).
    The caller writes the manifest and model card, which know the run's provenance."""
    import shutil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in list(out.glob("*.safetensors")) + [out / WEIGHTS_INDEX]:
        stale.unlink(missing_ok=True)
    param_dtype = next(model.parameters()).dtype
    hf_cfg = config_to_hf(config)
    hf_cfg["dtype"] = hf_cfg["torch_dtype"] = str(param_dtype).replace("torch.", "")
    (out / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
    save_weights(model, config, out, max_shard_bytes)
    gen = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
           "pad_token_id": config.pad_token_id, **(generation_config or {})}
    (out / "generation_config.json").write_text(json.dumps({k: v for k, v in gen.items() if v is not None},
                                                           indent=2) + "\n")
    if tokenizer_dir is not None and Path(tokenizer_dir).suffix.lower() == ".gguf":
        from acik.formats.gguf_tokenizer import write_gguf_tokenizer

        write_gguf_tokenizer(tokenizer_dir, out)  # a model loaded from GGUF: its tokenizer as files
    elif tokenizer_dir is not None and Path(tokenizer_dir).resolve() != out.resolve():
        for name in TOKENIZER_FILES:
            src = Path(tokenizer_dir) / name
            if src.exists():
                shutil.copyfile(src, out / name)
    return out
