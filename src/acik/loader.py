"""`acik.load`: the one place an `LLM` is assembled. A model reference is resolved (`acik.models`), the format
modules translate the files (`acik.formats`), device and dtype are resolved once (`acik.devices`), then the
options that change the model (quantize at load, a LoRA adapter, inference optimization) apply in that order."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from acik.devices import resolve_device, resolve_dtype
from acik.formats import compressed
from acik.formats.hf import build_model, read_config
from acik.llm import LLM
from acik.models import ModelRef, resolve

# generation_config.json keys that are sampling defaults, under acik's names.
_GENERATION_KEYS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                    "repetition_penalty": "repetition_penalty", "max_new_tokens": "max_new_tokens"}


def generation_defaults(directory: Path) -> dict:
    """The sampling defaults a model directory's generation_config.json sets, as transformers reads them:
    `do_sample: false` means greedy."""
    path = directory / "generation_config.json"
    if not path.exists():
        return {}
    try:
        gen = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # generation defaults are a convenience: a broken file must not stop the model loading
    if not isinstance(gen, dict):
        return {}
    out = {ours: gen[theirs] for theirs, ours in _GENERATION_KEYS.items() if gen.get(theirs) is not None}
    if gen.get("do_sample") is False:
        out = {k: v for k, v in out.items() if k not in ("temperature", "top_p", "top_k", "min_p")}
        out["temperature"] = 0.0
    return out


def load(reference: str | Path | ModelRef, device: str | torch.device | None = "cpu",
         dtype: str | torch.dtype | None = "auto", *, dequantize: bool = False, active_experts: int | None = None,
         mxfp4: str = "dequantize", quantize: str | None = None, group_size: int | None = None,
         skip: list[str] | None = None, head: str | None = None, adapter: str | Path | None = None,
         optimize: bool = False) -> LLM:
    """Load a model: a Hugging Face directory, a `.gguf` file, a LoRA adapter directory (loaded on its base), a
    run directory, a built-in name (`smollm2-135m-instruct`) or a repository pulled with `acik pull`.

    `dequantize`: a GGUF's quantized tensors as float weights in `dtype` (default: kept as stored where acik
    runs the type, re-quantized onto int4/int8 where it does not). `active_experts`: experts each token is
    routed to (MoE top-k), overriding the config. `mxfp4`: "dequantize" (expand MXFP4 experts to `dtype` at
    load) or "packed" (keep 4.25-bit experts in memory). `quantize`: an `acik.quant` method (int8, int4,
    int4-hqq, nf4, mxfp4, w8a8) applied at load with `group_size`, `skip` and `head` ("int8": the head at 8
    bits whatever the method); a directory written by `acik quantize` loads quantized by itself. `adapter`: a
    LoRA adapter directory (PEFT format) applied unmerged (a quantized load of an adapter directory merges it into
    the base first, so the adapted weights are what is quantized). `optimize`: rewrite the model for inference only
    (see `LLM.optimize`)."""
    ref = resolve(reference)
    merge = False  # an adapter directory quantized: quantize the adapted weights, not the base under the adapter
    if ref.kind == "adapter":
        if adapter is not None:
            raise ValueError(f"{ref.path} is a LoRA adapter already; pass its base model with adapter=, or the "
                             "adapter directory alone")
        adapter, ref, merge = ref.path, ref.model, bool(quantize)
    if mxfp4 not in ("dequantize", "packed"):
        raise ValueError(f"mxfp4={mxfp4!r}: use 'dequantize' or 'packed'")
    device = resolve_device(device)
    if ref.kind == "gguf":
        model, config, defaults = _load_gguf(ref, device, dtype, dequantize, quantize)
    else:
        model, config = _load_hf(ref.path, device, dtype, mxfp4, active_experts, quantize)
        defaults = generation_defaults(ref.path)
    if active_experts is not None and ref.kind == "gguf":
        _set_active_experts(config, active_experts, ref.path)
    if merge:
        from acik.train.lora import load_adapter, merge_lora

        load_adapter(model, adapter)
        merge_lora(model)
        adapter = None
    if quantize:
        from acik.quant import quantize_model

        quantize_model(model, quantize, group_size, skip, head)
    if adapter is not None:
        from acik.train.lora import load_adapter

        load_adapter(model, adapter)
        model.eval()
    tokenizer = ref.path if ref.kind == "gguf" else (ref.path if (ref.path / "tokenizer.json").exists() else None)
    llm = LLM(model, config, ref.path, tokenizer, generation_defaults=defaults)
    if optimize:
        llm.optimize()
    return llm


def _set_active_experts(config, active_experts: int, where: Path) -> None:
    if not config.num_experts:
        raise ValueError(f"{where}: active_experts={active_experts} but this model has no experts")
    if not 0 < active_experts <= config.num_experts:
        raise ValueError(f"active_experts={active_experts}: must be in 1..{config.num_experts} "
                         "(the experts per MoE layer)")
    config.num_experts_per_tok = active_experts


def _load_hf(path: Path, device: torch.device, dtype, mxfp4: str, active_experts: int | None,
             quantize: str | None):
    config = read_config(path)
    if config.num_experts:
        config.expert_quant = "mxfp4" if mxfp4 == "packed" else None
    if active_experts is not None:
        _set_active_experts(config, active_experts, path)
    dtype = resolve_dtype(dtype, config.torch_dtype)
    stored = compressed.read_quantization(path)
    if stored and quantize:
        raise compressed.QuantizationError(f"{path} is already quantized ({stored.get('quant_method')}); load it "
                                           "without quantize=, or quantize its unquantized parent")
    if compressed.is_acik_quantized(stored):
        return compressed.load_quantized(path, config, device, dtype), config
    return build_model(config, path, device, dtype), config


def _load_gguf(ref: ModelRef, device: torch.device, dtype, dequantize: bool, quantize: str | None):
    from acik.formats.gguf import load_gguf

    if quantize and not dequantize:
        raise ValueError(f"{ref.path}: a GGUF file is quantized as stored; load it with dequantize=True "
                         "(--dequantize) to quantize its float weights another way")
    loaded = load_gguf(ref.path, device=device, dtype=dtype, dequantize=dequantize)
    return loaded.model, loaded.config, dict(loaded.generation_defaults)
