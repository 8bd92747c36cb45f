"""Model families: how each Hugging Face `model_type` spells its config.json and stores its weights. Everything
family-specific lives here, at the edge; the model itself never branches on a family name."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from acik.config import ModelConfig
from acik.formats import CheckpointError

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
