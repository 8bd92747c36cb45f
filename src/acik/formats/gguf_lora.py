"""A LoRA adapter (PEFT format, as `acik finetune --lora` writes it) -> llama.cpp's LoRA adapter GGUF, for
`llama-cli --lora adapter.gguf` and Ollama's `ADAPTER`.

llama.cpp's format (its convert_lora_to_gguf.py and llama-adapter.cpp): `general.type` = "adapter",
`adapter.type` = "lora", `adapter.lora.alpha`, `general.architecture` that of the base model, and per adapted
weight `<gguf name>.lora_a` with PEFT's A shape [r, in] and `<gguf name>.lora_b` with B's [out, r] (GGUF lists them
innermost first: ne = [in, r] and [r, out], which llama.cpp checks against the base weight's [in, out]). llama.cpp
adds (alpha / r) * B A x, r read from A; acik writes alpha = scaling * r so that rsLoRA's alpha / sqrt(r) comes out
the same. For `llama`, B's rows go through the Q/K permutation of the base weights (A's columns are inputs, which
the permutation does not touch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from acik.formats.gguf_tensors import permute_rows, qk_heads
from acik.formats.gguf_writer import (
    GGUFWriteError,
    check_writable,
    finish,
    gguf_name,
    partial_path,
    source_metadata,
)

LORA_TYPES = ("f32", "f16", "bf16")


def write_lora_gguf(llm, out: str | Path, kind: str = "f32", *, adapter_dir: str | Path | None = None,
                    name: str | None = None) -> dict[str, Any]:
    """Write the LoRA layers of `llm` (a base with an unmerged adapter, as `acik.load(adapter_dir)` gives) as a
    llama.cpp adapter GGUF. Returns a summary (path, tensors, rank, alpha, architecture)."""
    import gguf

    from acik.formats.gguf import PERMUTED
    from acik.formats.gguf_writer import _tensor
    from acik.train.lora import lora_layers

    if kind not in LORA_TYPES:
        raise GGUFWriteError(f"--type {kind!r} for a LoRA adapter: llama.cpp applies adapters in float; use one of "
                             f"{', '.join(LORA_TYPES)}")
    config = llm.config
    arch = check_writable(config)
    layers = lora_layers(llm.model)
    if not layers:
        raise GGUFWriteError("this model has no LoRA layers; pass a LoRA adapter directory")
    alphas = {round(layer.scaling * layer.r, 6) for layer in layers.values()}
    if len(alphas) != 1:
        raise GGUFWriteError(f"the adapter's layers scale differently (alpha * r / rank: {sorted(alphas)}); "
                             "llama.cpp's adapter format has one alpha")
    if config.tie_word_embeddings and "lm_head" in layers:
        raise GGUFWriteError("the adapter changes the output head of a model whose head is its embedding (tied); "
                             "llama.cpp has no separate output weight to apply it to: merge it instead "
                             "(`acik lora merge`)")
    heads = qk_heads(config)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(partial_path(out)), arch)
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    alpha = alphas.pop()
    writer.add_float32("adapter.lora.alpha", float(alpha))
    writer.add_name(name or (Path(adapter_dir).name if adapter_dir is not None else "acik-lora"))
    for key, value in source_metadata(adapter_dir).items():
        writer.add_string(key, value)
    for key, value in source_metadata(llm.path).items():
        writer.add_string(key.replace("acik.source.", "acik.base."), value)
    count = 0
    for module, layer in sorted(layers.items()):
        stem = gguf_name(f"{module}.weight", config.model_type)
        a = layer.lora_A.weight.detach().float()
        b = layer.lora_B.weight.detach().float()
        short = module.rsplit(".", 1)[-1]
        if arch in PERMUTED and short in heads:
            b = permute_rows(b, heads[short])
        for suffix, w in ((".lora_a", a), (".lora_b", b)):
            data, qtype = _tensor(stem + suffix, w, kind if w.shape[-1] % 32 == 0 or kind == "f32" else "f32")
            writer.add_tensor(stem + suffix, data, raw_dtype=qtype)
            count += 1
    finish(writer, out)
    r = next(iter(layers.values())).r
    return {"path": out, "tensors": count, "rank": r, "alpha": alpha, "architecture": arch,
            "bytes": out.stat().st_size}


def read_lora_gguf(path: str | Path) -> dict[str, Any]:
    """alpha and the tensors of a llama.cpp adapter GGUF, as float32 in PyTorch's dimension order (for checks)."""
    from acik.formats.gguf import metadata, open_gguf
    from acik.formats.gguf_tensors import to_torch

    reader = open_gguf(path)
    meta = metadata(reader)
    if meta.get("general.type") != "adapter" or meta.get("adapter.type") != "lora":
        raise GGUFWriteError(f"{path}: not a LoRA adapter GGUF (general.type {meta.get('general.type')!r})")
    from gguf.quants import dequantize

    tensors = {}
    for t in reader.tensors:
        values = dequantize(t.data, t.tensor_type).astype("float32")
        tensors[t.name] = to_torch(values).reshape(tuple(int(n) for n in reversed(t.shape.tolist())))
    return {"alpha": float(meta["adapter.lora.alpha"]), "architecture": meta["general.architecture"],
            "tensors": tensors}


def apply_lora_gguf(base: dict[str, torch.Tensor], adapter: dict[str, Any]) -> dict[str, torch.Tensor]:
    """llama.cpp's arithmetic on GGUF tensors: W + (alpha / r) B A for every `.lora_a`/`.lora_b` pair (tests use it
    to check an adapter GGUF against acik's adapted model without llama.cpp)."""
    out = dict(base)
    for name, a in adapter["tensors"].items():
        if not name.endswith(".lora_a"):
            continue
        stem = name[: -len(".lora_a")]
        b = adapter["tensors"][stem + ".lora_b"]
        if stem not in out:
            raise GGUFWriteError(f"adapter tensor {name} has no base weight {stem}")
        out[stem] = out[stem] + (adapter["alpha"] / a.shape[0]) * (b @ a)
    return out
