"""LoRA (Hu et al. 2021): a frozen linear layer W plus a trainable low-rank update (alpha / r) * B A.

The wrapped module keeps PEFT's names (`q_proj.base_layer`, `q_proj.lora_A`, `q_proj.lora_B`), and
since acik's module tree mirrors Hugging Face Llama, an adapter saves as
`base_model.model.<module>.lora_A.weight` in `adapter_model.safetensors` with an `adapter_config.json`:
what `peft.PeftModel.from_pretrained` reads. The base layer may be any module with `in_features` and
`out_features` (a quantized NF4 layer for QLoRA).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
ALL_LINEAR = "all-linear"


class LoRAError(ValueError):
    pass


class LoRALinear(nn.Module):
    def __init__(self, base_layer: nn.Module, r: int, alpha: float, dropout: float = 0.0, use_rslora: bool = False):
        super().__init__()
        if r <= 0:
            raise LoRAError(f"LoRA rank r={r}: must be positive")
        self.base_layer = base_layer
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.r, self.alpha = r, alpha
        # rsLoRA (Kalajdzievski 2023) scales by alpha/sqrt(r) so higher ranks still learn.
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        weight = getattr(base_layer, "weight", None)
        device = weight.device if isinstance(weight, torch.Tensor) else None
        # Adapters train in float32 even on a bf16 or NF4 base: they are small and need the precision.
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=device, dtype=torch.float32)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=device, dtype=torch.float32)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @torch.no_grad()
    def reset_lora(self, generator: torch.Generator | None = None) -> None:
        # PEFT's default: A ~ kaiming-uniform(a=sqrt(5)) as nn.Linear, B = 0, so training starts at the base model.
        bound = 1 / math.sqrt(self.in_features)
        self.lora_A.weight.copy_(torch.rand(self.lora_A.weight.shape, generator=generator) * 2 * bound - bound)
        self.lora_B.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        update = self.lora_B(self.lora_A(self.lora_dropout(x.to(self.lora_A.weight.dtype))))
        return out + (update * self.scaling).to(out.dtype)

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (
        not isinstance(module, LoRALinear) and hasattr(module, "in_features") and hasattr(module, "out_features")
        and not any(True for _ in module.children()))


def linear_module_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if _is_linear(m) and not isinstance(m, LoRALinear)]


def resolve_targets(model: nn.Module, targets: str | list[str]) -> list[str]:
    """Full module names that `targets` selects: "all-linear" (every linear layer but the output head, as
    PEFT), or names matched as the last part(s) of a module's name (`q_proj`, `self_attn.o_proj`).
    A target that matches nothing is an error naming the linear layers there are."""
    linear = linear_module_names(model)
    if targets == ALL_LINEAR or targets == [ALL_LINEAR]:
        chosen = [n for n in linear if n.split(".")[-1] != "lm_head"]
    else:
        if isinstance(targets, str):
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        if not targets:
            raise LoRAError("no LoRA target modules given")
        chosen = []
        for t in targets:
            hits = [n for n in linear if n == t or n.endswith("." + t)]
            if not hits:
                kinds = sorted({n.split(".")[-1] for n in linear})
                raise LoRAError(f"LoRA target {t!r} names no linear module in this model; its linear modules are "
                                f"{', '.join(kinds)} (or use {ALL_LINEAR!r})")
            chosen.extend(hits)
    return sorted(set(chosen), key=linear.index)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def apply_lora(model: nn.Module, targets: str | list[str], r: int = 8, alpha: float = 16, dropout: float = 0.0,
               seed: int = 0, use_rslora: bool = False) -> list[str]:
    """Freeze every parameter of `model`, wrap the target layers in LoRALinear; returns their names."""
    from acik.model.inference import refuse_if_optimized

    refuse_if_optimized(model, "add LoRA adapters")
    names = resolve_targets(model, targets)
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    for name in names:
        layer = LoRALinear(model.get_submodule(name), r, alpha, dropout, use_rslora)
        layer.reset_lora(gen)
        _set_module(model, name, layer)
    return names


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n]


def adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The adapter's tensors under PEFT's names (from `state`, a model state dict, if given)."""
    if state is None:
        state = {n: p.detach() for n, p in lora_parameters(model)}
    return {PEFT_PREFIX + k: v.detach().to("cpu", torch.float32).contiguous()
            for k, v in state.items() if ".lora_A." in k or ".lora_B." in k}


def adapter_config(layers: dict[str, LoRALinear], base_model: str | None, dropout: float,
                   use_rslora: bool = False) -> dict[str, Any]:
    first = next(iter(layers.values()))
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": first.r,
        "lora_alpha": first.alpha,
        "lora_dropout": dropout,
        # Full module names, so PEFT wraps exactly the layers acik trained.
        "target_modules": sorted(layers),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": use_rslora,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
    }


def save_adapter(model: nn.Module, out_dir: str | Path, *, base_model: str | None, dropout: float = 0.0,
                 use_rslora: bool = False, state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `adapter_config.json` and `adapter_model.safetensors` (PEFT's format) into `out_dir`."""
    from safetensors.torch import save_file

    layers = lora_layers(model)
    if not layers:
        raise LoRAError("this model has no LoRA layers to save")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state_dict(model, state), str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    cfg = adapter_config(layers, base_model, dropout, use_rslora)
    (out / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
    return out


def find_adapter_dir(path: str | Path) -> Path:
    """An adapter directory, or a fine-tuning run directory holding one in `adapter/`."""
    path = Path(path)
    for d in (path, path / "adapter"):
        if (d / ADAPTER_CONFIG).exists():
            return d
    raise LoRAError(f"{path}: no {ADAPTER_CONFIG} here (nor in {path / 'adapter'}); is this a LoRA adapter?")


def read_adapter_config(adapter_dir: Path) -> dict:
    cfg = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise LoRAError(f"{adapter_dir}: peft_type {cfg.get('peft_type')!r}; acik loads LoRA adapters only")
    unsupported = [k for k in ("use_dora", "modules_to_save", "layers_to_transform", "rank_pattern", "alpha_pattern")
                   if cfg.get(k)]
    if unsupported or cfg.get("bias", "none") != "none" or cfg.get("fan_in_fan_out"):
        raise LoRAError(f"{adapter_dir}: adapter options acik does not support: "
                        f"{unsupported or ['bias' if cfg.get('bias', 'none') != 'none' else 'fan_in_fan_out']}")
    return cfg


def load_adapter(model: nn.Module, adapter: str | Path) -> list[str]:
    """Wrap `model`'s target layers with LoRA and fill them from a PEFT-format adapter (unmerged)."""
    from safetensors.torch import load_file

    adapter_dir = find_adapter_dir(adapter)
    cfg = read_adapter_config(adapter_dir)
    weights_path = adapter_dir / ADAPTER_WEIGHTS
    if not weights_path.exists():
        raise LoRAError(f"{weights_path}: missing (acik reads adapters in safetensors only)")
    tensors = load_file(str(weights_path))
    # PEFT names: base_model.model.<module>.lora_A[.default].weight
    wanted: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        for part in ("lora_A", "lora_B"):
            for tail in (f".{part}.weight", f".{part}.default.weight"):
                if name.endswith(tail):
                    wanted.setdefault(name[: -len(tail)], {})[part] = value
    targets = cfg.get("target_modules") or []
    names = resolve_targets(model, targets if isinstance(targets, list) else [targets])
    missing = [n for n in names if n not in wanted]
    if missing or set(wanted) - set(names):
        extra = sorted(set(wanted) - set(names))
        raise LoRAError(f"{adapter_dir}: adapter does not fit this model: no weights for {missing[:3]}"
                        if missing else f"{adapter_dir}: weights for modules the config does not target: {extra[:3]}")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        ab = wanted[name]
        layer = LoRALinear(model.get_submodule(name), ab["lora_A"].shape[0], cfg["lora_alpha"], 0.0,
                           cfg.get("use_rslora", False))
        if ab["lora_A"].shape != layer.lora_A.weight.shape or ab["lora_B"].shape != layer.lora_B.weight.shape:
            raise LoRAError(f"{adapter_dir}: {name}: adapter shapes {tuple(ab['lora_A'].shape)}, "
                            f"{tuple(ab['lora_B'].shape)} do not fit a {layer.in_features}->{layer.out_features} layer")
        with torch.no_grad():
            layer.lora_A.weight.copy_(ab["lora_A"])
            layer.lora_B.weight.copy_(ab["lora_B"])
        _set_module(model, name, layer)
    return names


@torch.no_grad()
def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA update into its base weight (W += scaling * B A) and unwrap; returns how many."""
    layers = lora_layers(model)
    for name, layer in layers.items():
        base = layer.base_layer
        if not isinstance(base, nn.Linear):
            raise LoRAError(f"{name}: cannot merge into a {type(base).__name__}; load the base model unquantized "
                            "(acik lora merge does) and merge there")
        base.weight.copy_((base.weight.float() + layer.delta_weight().float()).to(base.weight.dtype))
        _set_module(model, name, base)
    return len(layers)
