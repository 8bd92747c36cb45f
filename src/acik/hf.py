"""Hugging Face model directories in and out: `config.json` <-> `ModelConfig`, safetensors weights
<-> `Transformer`, and the per-family name maps. Everything family-specific lives here, at the edge.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from acik.config import ModelConfig

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model")


class CheckpointError(ValueError):
    """A model directory that cannot be loaded as it is; the message names the file and the fix."""


# ---------------------------------------------------------------------------------------------
# Families: how each `model_type` spells its config and stores its weights.
# ---------------------------------------------------------------------------------------------

Tensors = Iterator[tuple[str, torch.Tensor]]


@dataclass
class Family:
    architecture: str
    # Config values fixed by the architecture (not stored in its config.json).
    fixed: dict[str, Any] = field(default_factory=dict)
    # Family-specific config.json keys -> ModelConfig values, and back.
    from_hf: Callable[[dict], dict] = lambda hf: {}
    to_hf: Callable[[ModelConfig], dict] = lambda cfg: {}
    # Checkpoint tensors -> acik names (and back); identity for the Llama tree.
    load_tensors: Callable[[Tensors, ModelConfig], Tensors] = lambda tensors, cfg: tensors
    save_tensors: Callable[[Tensors, ModelConfig], Tensors] = lambda tensors, cfg: tensors
    eps_key: str = "rms_norm_eps"


def _attention_bias_from_hf(hf: dict) -> dict:
    b = bool(hf.get("attention_bias", False))
    return dict(q_bias=b, k_bias=b, v_bias=b, o_bias=b, mlp_bias=bool(hf.get("mlp_bias", False)))


def _attention_bias_to_hf(cfg: ModelConfig) -> dict:
    return {"attention_bias": cfg.q_bias, "mlp_bias": cfg.mlp_bias}


def _windowed_layers_from_hf(hf: dict) -> dict:
    """Qwen2/Qwen3: `use_sliding_window` with the first `max_window_layers` layers full."""
    window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
    n = hf["num_hidden_layers"]
    types = hf.get("layer_types") or [
        "sliding_attention" if window and i >= hf.get("max_window_layers", n) else "full_attention"
        for i in range(n)]
    return {"sliding_window": window, "layer_types": types}


def _windowed_layers_to_hf(cfg: ModelConfig) -> dict:
    sliding = "sliding_attention" in cfg.layer_types
    first = cfg.layer_types.index("sliding_attention") if sliding else cfg.num_hidden_layers
    return {"use_sliding_window": sliding, "sliding_window": cfg.sliding_window,
            "max_window_layers": first, "layer_types": cfg.layer_types}


FAMILIES: dict[str, Family] = {
    "llama": Family(
        "LlamaForCausalLM",
        from_hf=_attention_bias_from_hf,
        to_hf=_attention_bias_to_hf,
    ),
    "mistral": Family(
        "MistralForCausalLM",
        from_hf=lambda hf: {"sliding_window": hf.get("sliding_window")},
        to_hf=lambda cfg: {"sliding_window": cfg.sliding_window},
    ),
    "qwen2": Family(
        "Qwen2ForCausalLM",
        fixed=dict(q_bias=True, k_bias=True, v_bias=True),
        from_hf=_windowed_layers_from_hf,
        to_hf=_windowed_layers_to_hf,
    ),
    "qwen3": Family(
        "Qwen3ForCausalLM",
        fixed=dict(qk_norm="head"),
        from_hf=lambda hf: {**_attention_bias_from_hf(hf), **_windowed_layers_from_hf(hf)},
        to_hf=lambda cfg: {**_attention_bias_to_hf(cfg), **_windowed_layers_to_hf(cfg)},
    ),
    "olmo2": Family(
        "Olmo2ForCausalLM",
        fixed=dict(qk_norm="full", norm_placement="post", rmsnorm_cast="after"),
        from_hf=_attention_bias_from_hf,
        to_hf=lambda cfg: {"attention_bias": cfg.q_bias},
    ),
}

# Keys every family spells the same way.
COMMON_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "max_position_embeddings", "tie_word_embeddings",
               "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range")


def family_of(model_type: str) -> Family:
    if model_type not in FAMILIES:
        raise CheckpointError(f"unknown model_type {model_type!r}; acik loads: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[model_type]


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
    values: dict[str, Any] = {k: hf[k] for k in COMMON_KEYS if hf.get(k) is not None}
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
    out.update({k: getattr(cfg, k) for k in COMMON_KEYS})
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
    for name, tensor in fam.load_tensors(iter_checkpoint(files), config):
        if name.endswith("rotary_emb.inv_freq"):
            continue
        if name not in params:
            if name == "lm_head.weight" and config.tie_word_embeddings:
                continue  # tied: the head is the embedding
            raise CheckpointError(f"{where}: unexpected tensor {name!r}; the weights do not match config.json "
                                  f"(model_type {config.model_type!r})")
        p = params[name]
        if tuple(tensor.shape) != tuple(p.shape):
            raise CheckpointError(f"{where}: tensor {name!r} has shape {tuple(tensor.shape)} but config.json "
                                  f"implies {tuple(p.shape)}")
        target = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
        _set_param(model, name, target)
        filled.add(name)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    missing = sorted(set(params) - filled - tied)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CheckpointError(f"{where}: missing tensor(s) {', '.join(missing[:3])}{more}; the checkpoint is "
                              "incomplete or for a different architecture")


def _set_param(model: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    setattr(module, attr, torch.nn.Parameter(value, requires_grad=value.is_floating_point()))


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, config: ModelConfig) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        dtype = config.torch_dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)} or 'auto'")
    return DTYPES[dtype]


def build_model(config: ModelConfig, directory: str | Path, device=None, dtype=None):
    """Construct the Transformer on the meta device and fill it from `directory`'s safetensors."""
    from acik.model import Transformer

    directory = Path(directory)
    files = weight_files(directory)
    device, dtype = resolve_device(device), resolve_dtype(dtype, config)
    with torch.device("meta"):
        model = Transformer(config)
    load_weights(model, config, files, dtype, device)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # Buffers (RoPE frequencies) are computed, not stored: rebuild them on the real device.
    rotary = type(model.model.rotary_emb)(config).to(device)
    model.model.rotary_emb = rotary
    return model.eval()


def save_weights(model: torch.nn.Module, config: ModelConfig, out: Path,
                 max_shard_bytes: int = 5 * 1024**3) -> list[str]:
    """Write safetensors (sharded with an index above `max_shard_bytes`); returns the file names."""
    from safetensors.torch import save_file

    fam = family_of(config.model_type)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("rotary_emb.inv_freq")}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
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
    if tokenizer_dir is not None and Path(tokenizer_dir).resolve() != out.resolve():
        for name in TOKENIZER_FILES:
            src = Path(tokenizer_dir) / name
            if src.exists():
                shutil.copyfile(src, out / name)
    return out


def describe(directory: str | Path) -> str:
    """`acik info`: what a model directory holds, without loading its weights."""
    from acik.model import Transformer

    directory = Path(directory)
    config = read_config(directory)
    with torch.device("meta"):
        model = Transformer(config)
    n_params = model.num_parameters()
    files = weight_files(directory)
    file_bytes = sum(f.stat().st_size for f in files)
    dtype = resolve_dtype("auto", config)
    bytes_per = torch.finfo(dtype).bits // 8
    pattern = _run_lengths([_layer_label(config, t) for t in config.layer_types])
    lines = [
        f"directory:     {directory}",
        f"family:        {config.model_type} ({family_of(config.model_type).architecture})",
        f"parameters:    {n_params:,} ({n_params / 1e6:.1f}M)",
        f"dtype:         {config.torch_dtype}",
        f"layers:        {config.num_hidden_layers}",
        f"hidden size:   {config.hidden_size} (intermediate {config.intermediate_size})",
        f"heads:         {config.num_attention_heads} query / {config.num_key_value_heads} key-value "
        f"(head_dim {config.head_dim})",
        f"vocabulary:    {config.vocab_size}",
        f"context:       {config.max_position_embeddings}",
        f"rope:          theta {config.rope_theta:g}"
        + (f", {config.rope_scaling.get('rope_type')} scaling" if config.rope_scaling else ""),
        f"attention:     {pattern}",
        f"embeddings:    {'tied' if config.tie_word_embeddings else 'untied'}",
        f"weights:       {_gib(n_params * bytes_per)} in {config.torch_dtype} "
        f"({_gib(n_params * 2)} bf16, {_gib(n_params * 4)} fp32); files on disk {_gib(file_bytes)}",
    ]
    if config.num_experts:
        lines.insert(8, f"experts:       {config.num_experts} per MoE layer, top-{config.num_experts_per_tok}")
    return "\n".join(lines)


def _layer_label(config: ModelConfig, layer_type: str) -> str:
    if layer_type == "sliding_attention":
        return f"sliding({config.sliding_window})"
    if layer_type == "block_sparse_attention":
        return f"block-sparse({config.block_size}/{config.block_stride})"
    return "full"


def _run_lengths(labels: list[str]) -> str:
    runs: list[list] = []
    for label in labels:
        if runs and runs[-1][0] == label:
            runs[-1][1] += 1
        else:
            runs.append([label, 1])
    return ", ".join(f"{label} x{n}" if n > 1 else label for label, n in runs)


def _gib(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB" if n >= 1024**3 else f"{n / 1024**2:.1f} MiB"


def load(path: str | Path, device: str | None = "cpu", dtype: str | torch.dtype | None = "auto", **kwargs):
    """Load a model directory as an `acik.llm.LLM` (model, config, tokenizer)."""
    from acik.llm import LLM

    return LLM.load(path, device=device, dtype=dtype, **kwargs)

