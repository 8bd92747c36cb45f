"""An `LLM` -> a GGUF file that llama.cpp, Ollama and acik run alike: the inverse of `acik.formats.gguf`.

Written with the `gguf` package's `GGUFWriter` (llama.cpp's own). What goes in:
  tensors      llama.cpp's names; Q and K rows permuted for `llama` as llama.cpp's converter does (GPT-J-style
               rotation); 2-D weights in the asked type, norms, biases and other 1-D tensors F32 (as llama.cpp
               keeps them); for q4_0/q4_1 the token embedding and output head Q8_0 (a 4-bit embedding costs more
               quality than it saves); a weight whose rows do not split into 32-blocks falls back to F16
  metadata     the architecture's shape keys, RoPE (plain, linear, Llama 3's `rope_freqs`), the tokenizer
               (`gguf_vocab`), `general.sampling.*` from the model's generation defaults, `general.name`,
               `general.license`, and `acik.source.*`: what the file was made from (the acik manifest's
               directory hash, or the source file's sha256)
Types: f32, f16, bf16, q8_0, q4_0, q4_1. Quantized models (acik int4/int8 layers) must be dequantized first
(`acik.load(src, dequantize=True, dtype="float32")`; `convert_to_gguf` does it).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from acik.formats import CheckpointError
from acik.formats.gguf import _BLOCK_NAMES, _SAMPLING, _TOP_NAMES, ARCHITECTURES, PERMUTED
from acik.formats.gguf_tensors import permute_rows, qk_heads
from acik.manifest import card_license, read_manifest, sha256_file

TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1")
# acik model_type -> GGUF architecture (the families acik reads back, minus MoE).
WRITABLE = {ours: arch for arch, ours in ARCHITECTURES.items() if ours in ("llama", "qwen2", "qwen3", "olmo2")}
# llama_ftype of each type (general.file_type): MOSTLY_F16 = 1, Q4_0 = 2, Q4_1 = 3, Q8_0 = 7, BF16 = 32.
_FILE_TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "bf16": 32}
# Config values every family written here shares; a model that differs is not what llama.cpp's graph runs.
_PLAIN = dict(norm_type="rmsnorm", mlp_type="gated", hidden_act="silu", parallel_residual=False, num_experts=0,
              logit_softcap=None, attention_scale=None, sliding_window=None, attention_sinks=False)


class GGUFWriteError(CheckpointError):
    """A model acik cannot write as GGUF; the message says what and what to do instead."""


@functools.cache
def _gguf_names() -> dict[str, str]:
    """acik module name pattern (`{i}` for the layer) -> GGUF stem, the inverse of gguf._BLOCK_NAMES/_TOP_NAMES.
    `post_attention_layernorm` is `ffn_norm` (pre-norm families) unless olmo2 overrides it."""
    out = {ours: stem for stem, ours in _TOP_NAMES.items()}
    for stem, ours in _BLOCK_NAMES.items():
        if stem in ("post_attention_norm", "ffn_gate_inp"):
            continue
        out[f"model.layers.{{i}}.{ours}"] = f"blk.{{i}}.{stem}"
    return out


def gguf_name(param: str, model_type: str) -> str:
    """acik parameter name (`model.layers.3.self_attn.q_proj.weight`) -> GGUF tensor name (`blk.3.attn_q.weight`)."""
    module, _, kind = param.rpartition(".")
    parts = module.split(".")
    layer = None
    if module.startswith("model.layers.") and parts[2].isdigit():
        layer = parts[2]
        module = ".".join(parts[:2] + ["{i}"] + parts[3:])
    stem = _gguf_names().get(module)
    if model_type == "olmo2" and module.endswith(".post_attention_layernorm"):
        stem = "blk.{i}.post_attention_norm"
    if stem is None:
        raise GGUFWriteError(f"parameter {param} has no GGUF tensor name; this model has parts llama.cpp does not run")
    return f"{stem.format(i=layer)}.{kind}"


def check_writable(config) -> str:
    """The GGUF architecture of `config`, or GGUFWriteError naming what llama.cpp would run differently."""
    arch = WRITABLE.get(config.model_type)
    if arch is None:
        raise GGUFWriteError(f"model type {config.model_type!r} cannot be written to GGUF by acik; it writes "
                             f"{', '.join(sorted(WRITABLE))}")
    from acik.formats.families import FAMILIES

    expect = {**_PLAIN, **FAMILIES[config.model_type].fixed}
    for key, value in expect.items():
        if key.endswith("_bias"):
            continue  # biases are tensors; llama.cpp reads whichever are present
        if getattr(config, key) != value:
            raise GGUFWriteError(f"this {config.model_type} model has {key}={getattr(config, key)!r} where "
                                 f"llama.cpp's {arch} runs {value!r}; it cannot be written to GGUF")
    if any(t != "full_attention" for t in config.layer_types or []):
        raise GGUFWriteError(f"this model has layer types {sorted(set(config.layer_types))}; acik writes GGUF only "
                             "for models whose every layer is full attention")
    rope = dict(config.rope_scaling or {})
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", "linear", "llama3"):
        raise GGUFWriteError(f"RoPE scaling {rope} cannot be written to GGUF by acik (it writes none, linear and "
                             "llama3)")
    return arch


def _metadata(writer, config, arch: str, kind: str) -> torch.Tensor | None:
    """Architecture keys; returns Llama 3's `rope_freqs` tensor when the model has that RoPE scaling."""
    import gguf

    head_dim = config.head_dim
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(config.rope_theta))
    writer.add_layer_norm_rms_eps(float(config.norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(int(head_dim * config.partial_rotary_factor))
    writer.add_key_length(head_dim)  # written by llama.cpp's converter whatever the head size
    writer.add_value_length(head_dim)
    writer.add_file_type(_FILE_TYPE[kind])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    rope = dict(config.rope_scaling or {})
    kind_rope = rope.get("rope_type", rope.get("type", "default"))
    if kind_rope == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif kind_rope == "llama3":
        from copy import copy

        from acik.model.rope import rope_frequencies

        plain = copy(config)
        plain.rope_scaling = None
        base, _ = rope_frequencies(plain)
        scaled, _ = rope_frequencies(config)
        return (base / scaled).float()  # llama.cpp divides each frequency by these
    return None


def _tensor(name: str, w: torch.Tensor, kind: str):
    """(data, raw_dtype) for `GGUFWriter.add_tensor`: numpy in PyTorch's dimension order."""
    import gguf
    from gguf.quants import quantize

    Q = gguf.GGMLQuantizationType
    w = w.detach().to("cpu")
    if w.dim() < 2 or kind == "f32":
        return w.float().numpy(), Q.F32
    target = kind
    if kind in ("q4_0", "q4_1") and name in ("token_embd.weight", "output.weight"):
        target = "q8_0"
    if target.startswith("q") and w.shape[-1] % 32:
        target = "f16"  # llama.cpp's converter falls back the same way
    if target == "f16":
        return w.to(torch.float16).numpy(), Q.F16
    if target == "bf16":
        # numpy has no bfloat16: the raw 16-bit patterns, typed BF16
        return w.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16), Q.BF16
    qtype = {"q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "q4_1": Q.Q4_1}[target]
    return quantize(w.float().numpy(), qtype), qtype


def source_metadata(path: str | Path | None) -> dict[str, str]:
    """`acik.source.*` of what a model was loaded from: its name, the acik manifest hash of a directory (computed
    where it has no acik.json), or a file's sha256."""
    path = Path(path) if path is not None else None
    out: dict[str, str] = {}
    if path is None:
        return out
    out["acik.source.path"] = path.name
    if path.is_dir() and (path / "acik.json").exists():
        out["acik.source.directory_hash"] = read_manifest(path)["directory_hash"]
    elif path.is_file():
        out["acik.source.sha256"] = sha256_file(path)
    elif path.is_dir():
        from acik.manifest import directory_hash, hash_files

        out["acik.source.directory_hash"] = directory_hash(hash_files(path))
    return out


def partial_path(out: Path) -> Path:
    """Where a GGUF is written before it is complete: `out` never holds half a file, and a source being read is not
    truncated under its reader's memory map when `out` names it."""
    return out.with_name(out.name + ".partial")


def finish(writer, out: Path) -> None:
    """Write the header, metadata and tensors of `writer` (opened on `partial_path(out)`), then move it to `out`."""
    import os

    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    except BaseException:
        writer.close()
        partial_path(out).unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(partial_path(out), out)


def _license(llm) -> str | None:
    """The source's license: a GGUF's general.license, else the model card's `license:` front matter."""
    path = Path(llm.path) if llm.path is not None else None
    if path is None:
        return None
    if path.is_file():
        from acik.formats.gguf import metadata, open_gguf

        value = metadata(open_gguf(path)).get("general.license")
        return str(value) if value else None
    return card_license(path)


def write_gguf(llm, out: str | Path, kind: str = "f16", *, name: str | None = None) -> dict[str, Any]:
    """Write `llm` (float weights) as a GGUF file of type `kind`; returns a summary (path, tensors by type,
    bytes, pre-tokenizer)."""
    import gguf

    from acik.formats.gguf_vocab import vocab_from_tokenizer, write_vocab
    from acik.quant import is_quantized

    if kind not in TYPES:
        raise GGUFWriteError(f"--type {kind!r} is not a type acik writes; use one of {', '.join(TYPES)}")
    if is_quantized(llm.model):
        raise GGUFWriteError("this model is quantized in acik's layouts; load it with dequantize=True (GGUF sources) "
                             "or convert its unquantized parent")
    config = llm.config
    arch = check_writable(config)
    state = {k: v for k, v in llm.model.state_dict().items() if not k.endswith("rotary_emb.inv_freq")}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    vocab = vocab_from_tokenizer(llm.tokenizer, state["model.embed_tokens.weight"].shape[0])

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(partial_path(out)), arch)
    writer.add_type("model")
    writer.add_name(name or (Path(llm.path).stem if llm.path is not None else "acik-model"))
    license_ = _license(llm)
    if license_:
        writer.add_license(license_)
    for key, value in source_metadata(llm.path).items():
        writer.add_string(key, value)
    from acik.version import __version__

    writer.add_string("acik.version", __version__)
    rope_freqs = _metadata(writer, config, arch, kind)
    _sampling(writer, llm.generation_defaults)
    write_vocab(writer, vocab)

    counts: dict[str, int] = {}
    if rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", rope_freqs.numpy(), raw_dtype=gguf.GGMLQuantizationType.F32)
        counts["F32"] = 1
    heads = qk_heads(config)
    for param, w in state.items():
        tname = gguf_name(param, config.model_type)
        module = param.rsplit(".", 2)[-2]
        if arch in PERMUTED and module in heads:
            w = permute_rows(w, heads[module])
        data, qtype = _tensor(tname, w, kind)
        writer.add_tensor(tname, data, raw_dtype=qtype)
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
    finish(writer, out)
    return {"path": out, "tensor_types": counts, "bytes": out.stat().st_size, "pre_tokenizer": vocab.pre,
            "architecture": arch}


def _sampling(writer, defaults: dict) -> None:
    ours_to_key = {ours: key for key, ours in _SAMPLING.items()}
    for ours, value in defaults.items():
        key = ours_to_key.get(ours)
        if key is None or value is None:
            continue
        if key == "top_k":
            writer.add_int32(f"general.sampling.{key}", int(value))
        else:
            writer.add_float32(f"general.sampling.{key}", float(value))
