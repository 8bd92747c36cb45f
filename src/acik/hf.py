"""Hugging Face model directories in and out: `config.json` <-> `ModelConfig`, safetensors weights
<-> `Transformer`, and the per-family name maps. Everything family-specific lives here, at the edge.
"""

from __future__ import annotations

import json
import re
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
    # COMMON_KEYS this family's config.json does not spell that way (written by `to_hf` instead).
    skip_keys: tuple[str, ...] = ()
    # Whether the family's checkpoints can hold MXFP4 experts (`*_blocks`/`*_scales`); others are
    # written dense when the model holds them packed.
    stores_mxfp4: bool = False


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


# Mixture of Experts families. acik's MoE layout (see acik.model.moe): `mlp.router.weight` [E, H],
# `mlp.experts.gate_up_proj` [E, 2I, H] (gate rows, then up rows), `mlp.experts.down_proj` [E, H, I].

def _moe_from_hf(hf: dict) -> dict:
    return {"num_experts": hf["num_local_experts"], "num_experts_per_tok": hf["num_experts_per_tok"],
            "router_aux_loss_coef": float(hf.get("router_aux_loss_coef") or 0.0)}


def _moe_to_hf(cfg: ModelConfig) -> dict:
    return {"num_local_experts": cfg.num_experts, "num_experts_per_tok": cfg.num_experts_per_tok,
            "router_aux_loss_coef": cfg.router_aux_loss_coef}


_MIXTRAL_EXPERT = re.compile(r"(.*)\.(?:block_sparse_moe|mlp)\.experts\.(\d+)\.(w[123])\.weight$")


def _mixtral_load(tensors: Tensors, cfg: ModelConfig) -> Tensors:
    """Both layouts: per-expert `block_sparse_moe.experts.N.w1/w2/w3` + `block_sparse_moe.gate` (every
    published checkpoint), and the fused `mlp.experts.gate_up_proj`/`down_proj` + `mlp.gate` of
    transformers v5. w1 is the gate, w3 the up projection, w2 the down projection."""
    n = cfg.num_experts
    pending: dict[str, dict[tuple[str, int], torch.Tensor]] = {}
    for name, t in tensors:
        name = name.replace(".block_sparse_moe.", ".mlp.")
        if name.endswith(".mlp.gate.weight"):
            yield name.replace(".mlp.gate.", ".mlp.router."), t
            continue
        m = _MIXTRAL_EXPERT.match(name)
        if not m:
            yield name, t
            continue
        layer, expert, which = m.group(1), int(m.group(2)), m.group(3)
        if expert >= n:
            raise CheckpointError(f"tensor {name!r} is expert {expert}, but config.json has num_local_experts={n}; "
                                  "the router and the experts must agree")
        got = pending.setdefault(layer, {})
        got[(which, expert)] = t
        if len(got) == 3 * n:
            def stack(w: str, got=got) -> torch.Tensor:
                return torch.stack([got[(w, e)] for e in range(n)])

            yield f"{layer}.mlp.experts.gate_up_proj", torch.cat([stack("w1"), stack("w3")], dim=1)
            yield f"{layer}.mlp.experts.down_proj", stack("w2")
            del pending[layer]
    for layer, got in pending.items():
        raise CheckpointError(f"{layer}: only {len(got)} of the {3 * n} expert tensors (w1, w2, w3 for "
                              f"{n} experts); the checkpoint is incomplete or num_local_experts is wrong")


def _mixtral_save(tensors: Tensors, cfg: ModelConfig) -> Tensors:
    """The per-expert layout, which every version of transformers reads."""
    for name, t in tensors:
        if ".mlp.router." in name:
            yield name.replace(".mlp.router.", ".block_sparse_moe.gate."), t
        elif name.endswith(".mlp.experts.gate_up_proj"):
            prefix = name.removesuffix(".mlp.experts.gate_up_proj") + ".block_sparse_moe.experts"
            gate, up = t.chunk(2, dim=1)
            for e in range(t.shape[0]):
                yield f"{prefix}.{e}.w1.weight", gate[e].clone()
                yield f"{prefix}.{e}.w3.weight", up[e].clone()
        elif name.endswith(".mlp.experts.down_proj"):
            prefix = name.removesuffix(".mlp.experts.down_proj") + ".block_sparse_moe.experts"
            for e in range(t.shape[0]):
                yield f"{prefix}.{e}.w2.weight", t[e].clone()
        else:
            yield name, t


def _gpt_oss_from_hf(hf: dict) -> dict:
    quant = hf.get("quantization_config") or {}
    if quant and quant.get("quant_method") != "mxfp4":
        raise CheckpointError(f"quantization_config.quant_method {quant.get('quant_method')!r} is not supported "
                              "for gpt-oss; acik reads mxfp4 (the published format) or unquantised weights")
    n = hf["num_hidden_layers"]
    bias = bool(hf.get("attention_bias", True))
    types = hf.get("layer_types") or ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
    return {**_moe_from_hf(hf), "sliding_window": hf.get("sliding_window"), "layer_types": types,
            "swiglu_limit": float(hf.get("swiglu_limit", 7.0)), "q_bias": bias, "k_bias": bias, "v_bias": bias,
            "o_bias": bias, "expert_quant": "mxfp4" if quant else None}


def _gpt_oss_to_hf(cfg: ModelConfig) -> dict:
    out = {**_moe_to_hf(cfg), "sliding_window": cfg.sliding_window, "layer_types": cfg.layer_types,
           "swiglu_limit": cfg.swiglu_limit, "attention_bias": cfg.q_bias}
    if cfg.expert_quant == "mxfp4":
        out["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
            "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    return out


def _deinterleave(t: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """gpt-oss stores gate/up interleaved (gate = even rows, up = odd rows); acik keeps them as halves."""
    n = t.shape[dim]
    index = torch.cat([torch.arange(0, n, 2), torch.arange(1, n, 2)]).to(t.device)
    return t.index_select(dim, index)


def _interleave(t: torch.Tensor, dim: int = 1) -> torch.Tensor:
    half = t.shape[dim] // 2
    return torch.stack([t.narrow(dim, 0, half), t.narrow(dim, half, half)], dim=dim + 1).flatten(dim, dim + 1)


def _gpt_oss_load(tensors: Tensors, cfg: ModelConfig) -> Tensors:
    """gpt-oss experts are stored transposed ([E, in, out]) with gate/up interleaved, or as MXFP4
    `*_blocks`/`*_scales` ([E, out, in/32, 16] / [E, out, in/32]). With `expert_quant="mxfp4"` the
    packed bytes are kept; otherwise they are dequantised here."""
    from acik.quant.mxfp4 import check_mxfp4, dequantize_mxfp4

    packed = cfg.expert_quant == "mxfp4"
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in tensors:
        m = re.match(r"(.*\.mlp\.experts\.(gate_up_proj|down_proj))_(blocks|scales)$", name)
        if m:
            base, proj, part = m.groups()
            got = pending.setdefault(base, {})
            got[part] = t
            if len(got) < 2:
                continue
            del pending[base]
            try:
                check_mxfp4(got["blocks"], got["scales"], base)
            except ValueError as e:
                raise CheckpointError(f"{e}; the MXFP4 checkpoint is corrupt or mislabelled") from None
            blocks, scales = got["blocks"], got["scales"]
            if packed:
                if proj == "gate_up_proj":
                    blocks, scales = _deinterleave(blocks), _deinterleave(scales)
                yield f"{base}_blocks", blocks
                yield f"{base}_scales", scales
            else:
                w = dequantize_mxfp4(blocks, scales, torch.float32)  # [E, out, in]
                yield base, _deinterleave(w) if proj == "gate_up_proj" else w
            continue
        if name.endswith(".mlp.experts.gate_up_proj_bias"):
            t = _deinterleave(t)
        elif name.endswith((".mlp.experts.gate_up_proj", ".mlp.experts.down_proj")):
            t = t.transpose(1, 2)
            if name.endswith("gate_up_proj"):
                t = _deinterleave(t)
        yield name, t.contiguous()
    for base, got in pending.items():
        raise CheckpointError(f"{base}: MXFP4 needs both {base}_blocks and {base}_scales; only {', '.join(got)} "
                              "found. The checkpoint is incomplete")


def _gpt_oss_save(tensors: Tensors, cfg: ModelConfig) -> Tensors:
    for name, t in tensors:
        if name.endswith(".mlp.experts.gate_up_proj"):
            t = _interleave(t).transpose(1, 2)
        elif name.endswith(".mlp.experts.down_proj"):
            t = t.transpose(1, 2)
        elif name.endswith((".mlp.experts.gate_up_proj_bias", ".mlp.experts.gate_up_proj_blocks",
                            ".mlp.experts.gate_up_proj_scales")):
            t = _interleave(t)
        yield name, t.contiguous()


# Falcon: fused query_key_value in three layouts, LayerNorm with bias, GELU MLP, parallel blocks.

def _falcon_layout(cfg: ModelConfig) -> str:
    if cfg.extra.get("new_decoder_architecture"):
        return "grouped"  # per kv head: [its q heads..., k, v] (Falcon-40B/180B, Falcon2)
    if cfg.extra.get("multi_query", True):
        return "multi_query"  # [all q heads | k | v] (Falcon-7B)
    return "interleaved"  # per head: [q, k, v]


def _falcon_from_hf(hf: dict) -> dict:
    if hf.get("alibi"):
        raise CheckpointError("this Falcon uses ALiBi position biases (alibi: true, e.g. falcon-rw), which acik does "
                              "not implement; acik runs the rotary Falcon models (7B, 40B, 180B, Falcon2)")
    new_arch = bool(hf.get("new_decoder_architecture", False))
    multi_query = bool(hf.get("multi_query", True))
    # Early Falcon configs spell the shape n_head / n_layer.
    heads, hidden = hf.get("num_attention_heads") or hf["n_head"], hf["hidden_size"]
    parallel = new_arch or bool(hf.get("parallel_attn", True))
    two_norms = new_arch and (hf.get("num_ln_in_parallel_attn") or 2) == 2
    kv = hf.get("num_kv_heads") or heads if new_arch else (1 if multi_query else heads)
    bias = bool(hf.get("bias", False))
    act = hf.get("activation", "gelu")
    return {"num_attention_heads": heads, "num_hidden_layers": hf.get("num_hidden_layers") or hf["n_layer"],
            "num_key_value_heads": kv, "head_dim": hidden // heads,
            "intermediate_size": hf.get("ffn_hidden_size") or 4 * hidden,
            "hidden_act": {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}.get(act, act),
            "q_bias": bias, "k_bias": bias, "v_bias": bias, "o_bias": bias, "mlp_bias": bias,
            "parallel_residual": parallel, "parallel_two_norms": two_norms,
            "tie_word_embeddings": bool(hf.get("tie_word_embeddings", True)),
            "extra": {"new_decoder_architecture": new_arch, "multi_query": multi_query}}


def _falcon_to_hf(cfg: ModelConfig) -> dict:
    out = {"num_kv_heads": cfg.num_key_value_heads, "ffn_hidden_size": cfg.intermediate_size,
           "activation": {"gelu_tanh": "gelu_pytorch_tanh"}.get(cfg.hidden_act, cfg.hidden_act), "bias": cfg.q_bias,
           "parallel_attn": cfg.parallel_residual, "alibi": False}
    if cfg.extra.get("new_decoder_architecture"):
        out["num_ln_in_parallel_attn"] = 2 if cfg.parallel_two_norms else 1
    return out


_FALCON_NAMES = [("transformer.word_embeddings.", "model.embed_tokens."), ("transformer.ln_f.", "model.norm."),
                 ("transformer.h.", "model.layers."), (".self_attention.dense.", ".self_attn.o_proj."),
                 (".mlp.dense_h_to_4h.", ".mlp.up_proj."), (".mlp.dense_4h_to_h.", ".mlp.down_proj."),
                 (".ln_attn.", ".input_layernorm."), (".ln_mlp.", ".post_attention_layernorm.")]


def _falcon_split_qkv(t: torch.Tensor, cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    heads, kv, hd, rest = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, t.shape[1:]
    layout = _falcon_layout(cfg)
    if layout == "grouped":
        g = t.reshape(kv, heads // kv + 2, hd, *rest)
        return g[:, :-2].reshape(-1, *rest), g[:, -2].reshape(-1, *rest), g[:, -1].reshape(-1, *rest)
    if layout == "multi_query":
        g = t.reshape(heads + 2, hd, *rest)
        return g[:heads].reshape(-1, *rest), g[heads], g[heads + 1]
    g = t.reshape(heads, 3, hd, *rest)
    return g[:, 0].reshape(-1, *rest), g[:, 1].reshape(-1, *rest), g[:, 2].reshape(-1, *rest)


def _falcon_fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    heads, kv, hd, rest = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, q.shape[1:]
    layout = _falcon_layout(cfg)
    if layout == "grouped":
        parts = [q.reshape(kv, heads // kv, hd, *rest), k.reshape(kv, 1, hd, *rest), v.reshape(kv, 1, hd, *rest)]
        return torch.cat(parts, dim=1).reshape(-1, *rest)
    if layout == "multi_query":
        return torch.cat([q, k, v])
    parts = [x.reshape(heads, 1, hd, *rest) for x in (q, k, v)]
    return torch.cat(parts, dim=1).reshape(-1, *rest)


def _falcon_load(tensors: Tensors, cfg: ModelConfig) -> Tensors:
    for name, t in tensors:
        for old, new in _FALCON_NAMES:
            name = name.replace(old, new)
        if ".self_attention.query_key_value." in name:
            prefix, _, kind = name.partition(".self_attention.query_key_value.")
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), _falcon_split_qkv(t, cfg)):
                yield f"{prefix}.self_attn.{proj}.{kind}", part.contiguous()
            continue
        yield name, t


def _falcon_save(tensors: Tensors, cfg: ModelConfig) -> Tensors:
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in tensors:
        m = re.match(r"(.*)\.self_attn\.([qkv])_proj\.(weight|bias)$", name)
        if m:
            key = f"{m.group(1)}.self_attention.query_key_value.{m.group(3)}"
            got = pending.setdefault(key, {})
            got[m.group(2)] = t
            if len(got) == 3:
                name, t = key, _falcon_fuse_qkv(got["q"], got["k"], got["v"], cfg)
                del pending[key]
            else:
                continue
        for old, new in _FALCON_NAMES:
            if old in (".ln_attn.", ".ln_mlp.") and not cfg.parallel_two_norms:
                continue  # one-norm and sequential Falcons call theirs input/post_attention_layernorm
            name = name.replace(new, old)
        yield name, t


def _acik_patterns_from_hf(hf: dict) -> dict:
    """Attention patterns of models trained with acik (sliding or block-sparse layers in a Llama tree)."""
    out = {k: hf[k] for k in ("layer_types", "sliding_window", "block_size", "block_stride") if hf.get(k)}
    if "layer_types" in out and "block_sparse_attention" not in out["layer_types"]:
        out = {k: v for k, v in out.items() if k not in ("block_size", "block_stride")}
    return out


def _acik_patterns_to_hf(cfg: ModelConfig) -> dict:
    # Written only when some layer is not full attention. transformers' Llama ignores these keys,
    # so such a model runs exactly only in acik (docs/models.md says so).
    if all(t == "full_attention" for t in cfg.layer_types):
        return {}
    out: dict[str, Any] = {"layer_types": cfg.layer_types, "sliding_window": cfg.sliding_window}
    if "block_sparse_attention" in cfg.layer_types:
        out.update(block_size=cfg.block_size, block_stride=cfg.block_stride)
    return out


FAMILIES: dict[str, Family] = {
    "llama": Family(
        "LlamaForCausalLM",
        from_hf=lambda hf: {**_attention_bias_from_hf(hf), **_acik_patterns_from_hf(hf)},
        to_hf=lambda cfg: {**_attention_bias_to_hf(cfg), **_acik_patterns_to_hf(cfg)},
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
    "mixtral": Family(
        "MixtralForCausalLM",
        from_hf=lambda hf: {**_moe_from_hf(hf), "sliding_window": hf.get("sliding_window")},
        to_hf=lambda cfg: {**_moe_to_hf(cfg), "sliding_window": cfg.sliding_window},
        load_tensors=_mixtral_load,
        save_tensors=_mixtral_save,
    ),
    "gpt_oss": Family(
        "GptOssForCausalLM",
        fixed=dict(attention_sinks=True, router_bias=True, expert_bias=True, router_order="topk_softmax",
                   expert_act="clamped_swiglu", rmsnorm_cast="after"),
        from_hf=_gpt_oss_from_hf,
        to_hf=_gpt_oss_to_hf,
        load_tensors=_gpt_oss_load,
        save_tensors=_gpt_oss_save,
        stores_mxfp4=True,
    ),
    "falcon": Family(
        "FalconForCausalLM",
        fixed=dict(norm_type="layernorm", norm_bias=True, mlp_type="plain"),
        from_hf=_falcon_from_hf,
        to_hf=_falcon_to_hf,
        load_tensors=_falcon_load,
        save_tensors=_falcon_save,
        eps_key="layer_norm_epsilon",
        skip_keys=("intermediate_size", "num_key_value_heads", "head_dim"),
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
    if tokenizer_dir is not None and Path(tokenizer_dir).resolve() != out.resolve():
        for name in TOKENIZER_FILES:
            src = Path(tokenizer_dir) / name
            if src.exists():
                shutil.copyfile(src, out / name)
    return out


def describe(directory: str | Path) -> str:
    """`acik info`: what a model directory holds, without loading its weights."""
    import dataclasses

    from acik.model import Transformer

    directory = Path(directory)
    config = read_config(directory)
    with torch.device("meta"):  # count weights as dense, whatever the storage
        model = Transformer(dataclasses.replace(config, expert_quant=None))
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
        lines += _expert_memory(model, config)
    from acik.quant.formats import describe_quantization

    lines += describe_quantization(directory)
    return "\n".join(lines)


def _expert_memory(model: torch.nn.Module, config: ModelConfig) -> list[str]:
    """Bytes in memory for each way of holding the experts: dequantised, or packed MXFP4."""
    from acik.quant.mxfp4 import BITS_PER_WEIGHT, mxfp4_bytes

    expert = sum(p.numel() for n, p in model.named_parameters()
                 if ".mlp.experts." in n and n.endswith(("gate_up_proj", "down_proj")))
    rest = model.num_parameters() - expert
    stored = " (stored as MXFP4)" if config.expert_quant == "mxfp4" else ""
    return [
        f"expert weights: {expert:,} of {model.num_parameters():,} parameters{stored}",
        f"memory:        dequantised {_gib((expert + rest) * 2)} bf16 / {_gib((expert + rest) * 4)} fp32; "
        f"packed MXFP4 experts {_gib(mxfp4_bytes(expert) + rest * 2)} "
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


def _gib(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB" if n >= 1024**3 else f"{n / 1024**2:.1f} MiB"


def load(path: str | Path, device: str | None = "cpu", dtype: str | torch.dtype | None = "auto", **kwargs):
    """Load a model directory as an `acik.llm.LLM` (model, config, tokenizer)."""
    from acik.llm import LLM

    return LLM.load(path, device=device, dtype=dtype, **kwargs)

