"""`acik info`: what a model holds (a Hugging Face directory, a quantized one, a GGUF file, a LoRA adapter),
read from its files without loading the weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from safetensors import safe_open

from acik import fmt
from acik.config import ModelConfig
from acik.devices import resolve_dtype
from acik.formats.compressed import _method_of, is_acik_quantized, read_quantization
from acik.formats.families import family_of
from acik.formats.hf import read_config, weight_files
from acik.model import Transformer
from acik.quant import targets
from acik.quant.mxfp4 import BITS_PER_WEIGHT, mxfp4_bytes


def describe(reference: str | Path) -> str:
    """`acik info REF`: a model directory, a GGUF file, a LoRA adapter directory or a built-in model name."""
    from acik.models import resolve

    ref = resolve(reference)
    head = f"adapter:       {ref.path} (LoRA, on the base model below)\n" if ref.kind == "adapter" else ""
    model = ref.model
    if model.kind == "gguf":
        from acik.formats.gguf import describe_gguf

        return head + "\n".join([f"file:          {model.path}", *describe_gguf(model.path)])
    return head + describe_directory(model.path)


def describe_directory(directory: Path) -> str:
    """What a Hugging Face model directory holds, without loading its weights."""
    config = read_config(directory)
    with torch.device("meta"):  # count weights as dense, whatever the storage
        model = Transformer(dataclasses.replace(config, expert_quant=None))
    n_params = model.num_parameters()
    files = weight_files(directory)
    file_bytes = sum(f.stat().st_size for f in files)
    dtype = resolve_dtype("auto", config.torch_dtype)
    bytes_per = torch.finfo(dtype).bits // 8
    pattern = _run_lengths([_layer_label(config, t) for t in config.layer_types])
    lines = [
        f"directory:     {directory}",
        f"family:        {config.model_type} ({family_of(config.model_type).architecture})",
        f"parameters:    {n_params:,} ({fmt.params(n_params)})",
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
        f"weights:       {fmt.size(n_params * bytes_per)} in {config.torch_dtype} "
        f"({fmt.size(n_params * 2)} bf16, {fmt.size(n_params * 4)} fp32); files on disk {fmt.size(file_bytes)}",
    ]
    if config.num_experts:
        lines.insert(8, f"experts:       {config.num_experts} per MoE layer, top-{config.num_experts_per_tok}")
        lines += _expert_memory(model, config)
    lines += describe_quantization(directory)
    return "\n".join(lines)


def _expert_memory(model: torch.nn.Module, config: ModelConfig) -> list[str]:
    """Bytes in memory for each way of holding the experts: dequantised, or packed MXFP4."""
    expert = sum(p.numel() for n, p in model.named_parameters()
                 if ".mlp.experts." in n and n.endswith(("gate_up_proj", "down_proj")))
    rest = model.num_parameters() - expert
    stored = " (stored as MXFP4)" if config.expert_quant == "mxfp4" else ""
    return [
        f"expert weights: {expert:,} of {model.num_parameters():,} parameters{stored}",
        f"memory:        dequantised {fmt.size((expert + rest) * 2)} bf16 / {fmt.size((expert + rest) * 4)} fp32; "
        f"packed MXFP4 experts {fmt.size(mxfp4_bytes(expert) + rest * 2)} "
        f"({BITS_PER_WEIGHT} bits per expert weight, other weights bf16)",
    ]


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


def describe_quantization(directory: str | Path) -> list[str]:
    """Lines for `acik info`: method, format, bits per weight and bytes of a quantized directory."""
    directory = Path(directory)
    qc = read_quantization(directory)
    if not is_acik_quantized(qc):
        return []
    method, group_size, skip, head = _method_of(qc, str(directory / "config.json"))
    config = read_config(directory)
    with torch.device("meta"):
        model = Transformer(config)
    layers = {f"{n}.": model.get_submodule(n).weight.numel() for n in targets(model, skip)}
    q_bytes = 0
    for f in weight_files(directory):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                prefix = k[:k.rfind(".") + 1]
                if prefix in layers and not k.endswith(".bias"):
                    t = st.get_slice(k)
                    n = 1
                    for d in t.get_shape():
                        n *= d
                    q_bytes += n * _DTYPE_BYTES[t.get_dtype()]
    q_weights = sum(layers.values())
    group = f", group size {group_size}" if group_size else ""
    group += f", lm_head {head}" if head and "lm_head." in layers else ""
    return [f"quantization:  {method}{group} ({qc.get('quant_method')} format), {len(layers)} linear layers",
            f"quantized:     {q_weights:,} weights in {fmt.size(q_bytes)}: {8 * q_bytes / q_weights:.2f} bits per "
            "weight with scales"]


_DTYPE_BYTES = {"I8": 1, "U8": 1, "I16": 2, "I32": 4, "I64": 8, "F16": 2, "BF16": 2, "F32": 4}
