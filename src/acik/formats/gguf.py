"""GGUF files (llama.cpp, Ollama, LM Studio) in: metadata -> `ModelConfig`, `general.sampling.*` -> sampling
defaults, tensors -> a `Transformer` holding each weight as stored where acik runs the type. Parsing is the `gguf`
package's (llama.cpp's own reader); this module only translates.

How each tensor type is held (without `dequantize`; with it, every weight is float in the asked dtype):
  Q4_0, Q4_1, Q4_K   int4, groups of 32 (`Int4Linear`), exact but for fp16 rounding of Q4_1/Q4_K zero points
  Q8_0               int8 with one fp16 scale per 32 inputs (`Int8Linear` blocks), exact
  MXFP4              acik's MXFP4 (`MXFP4Linear`, or packed experts), exact
  other quantized    re-quantized at load: up to 5.5 bits a weight (Q5_K, Q5_0, Q3_K, IQ4_XS, ...) onto int4
                     groups of 32 with min-max fractional zero points, wider ones (Q6_K, Q8_K) onto int8 blocks
  F32, F16, BF16     float in the model dtype
Norms, biases, the router and experts that are not MXFP4 are float. The token embedding is float unless
acik has an 8-bit embedding (then Q8_0 stays 8-bit, and a tied head reads the same codes).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from acik import fmt
from acik.config import ModelConfig
from acik.formats import CheckpointError
from acik.formats import gguf_tensors as gt


class GGUFError(CheckpointError):
    """A GGUF file acik cannot read as it is; the message names the file and what is unsupported."""


@dataclass
class GGUFModel:
    model: nn.Module  # acik.model.Transformer, eval mode
    config: ModelConfig
    generation_defaults: dict[str, Any] = field(default_factory=dict)
    tensor_types: dict[str, int] = field(default_factory=dict)  # GGUF type name -> tensors of that type


# GGUF architecture -> acik model_type (Mixtral is `llama` with expert tensors).
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "olmo2": "olmo2", "gpt-oss": "gpt_oss"}
# Architectures whose converter interleaves the rotary halves of Q and K (`LlamaModel.permute`); the others
# (qwen2, qwen3, olmo2, gpt-oss) are NeoX-rotation in llama.cpp and stored as Hugging Face stores them.
PERMUTED = {"llama"}

# GGUF tensor names (per block, without `.weight`/`.bias`) -> acik's module names.
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "ffn_norm": "post_attention_layernorm",
    "post_attention_norm": "post_attention_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj", "ffn_gate_inp": "mlp.router",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_EXPERTS = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")

# general.sampling.* -> acik's sampling option names.
_SAMPLING = {"temp": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
             "penalty_repeat": "repetition_penalty"}

_FLOAT = {"F32", "F16", "BF16", "F64"}
_EXACT_INT4 = {"Q4_0", "Q4_1", "Q4_K"}


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

@functools.cache
def _reader_class():
    import gguf

    class Reader(gguf.GGUFReader):
        """`gguf.GGUFReader` parsing from a plain ndarray view of its memory map: the same bytes, but each of the
        ~10^6 small slices it takes of a vocabulary skips `np.memmap`'s per-slice bookkeeping (2-3x faster)."""

        @property
        def data(self) -> np.ndarray:
            return self._plain

        @data.setter
        def data(self, value: np.ndarray) -> None:
            self._map = value  # keeps the mapping open while the view is used
            self._plain = value.view(np.ndarray)

    return Reader


def open_gguf(path: str | Path):
    """The `gguf.GGUFReader` of `path`, with every failure turned into a GGUFError naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise GGUFError(f"{path}: cannot open ({e.strerror or e})") from None
    if magic != b"GGUF":
        raise GGUFError(f"{path}: not a GGUF file (it starts with {magic!r}, not b'GGUF'); pass a .gguf model file")
    try:
        return _reader_class()(path)
    except ValueError as e:
        msg = str(e)
        if "GGMLQuantizationType" in msg:
            found = re.findall(r"\d+", msg.split(" is not")[0])  # "np.uint32(250) is not a valid ..."
            type_id = found[-1] if found else msg.split()[0]
            raise GGUFError(f"{path}: unknown tensor type id {type_id}: the gguf package does not know it (a newer "
                            "llama.cpp type?); upgrade the gguf package, or convert the file "
                            "with a type acik reads (Q8_0, Q4_K, Q4_0, F16...)") from None
        raise GGUFError(f"{path}: truncated or corrupt GGUF ({msg}); download the file again") from None
    except (IndexError, OSError, EOFError, KeyError, OverflowError) as e:
        raise GGUFError(f"{path}: truncated or corrupt GGUF ({type(e).__name__}: {e}); download the file "
                        "again") from None


def metadata(reader) -> dict[str, Any]:
    """The key-value fields as Python values, but for long arrays (the vocabulary, merges): the model needs none,
    and converting them costs seconds."""
    return {name: f.contents() for name, f in reader.fields.items() if len(f.data) <= 1024}


def _type_name(t) -> str:
    return t.tensor_type.name


def tensor_types(reader) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in reader.tensors:
        counts[_type_name(t)] = counts.get(_type_name(t), 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _shape(t) -> tuple[int, ...]:
    """A tensor's shape in PyTorch order (GGUF lists dimensions innermost first)."""
    return tuple(int(n) for n in reversed(t.shape.tolist()))


# ---------------------------------------------------------------------------------------------
# Metadata -> ModelConfig and sampling defaults
# ---------------------------------------------------------------------------------------------

def architecture(meta: dict, path: Path) -> str:
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise GGUFError(f"{path}: GGUF architecture {arch!r} is not supported; acik reads "
                        f"{', '.join(sorted(ARCHITECTURES))}")
    return arch


def config_from_gguf(meta: dict, tensors: dict[str, Any], path: Path) -> ModelConfig:
    """`meta` (from `metadata`) and the tensors by name -> ModelConfig."""
    from acik.formats.families import FAMILIES

    arch = architecture(meta, path)

    def get(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    def need(key: str) -> Any:
        value = get(key)
        if value is None:
            raise GGUFError(f"{path}: metadata key {arch}.{key} is missing; the file is incomplete")
        return value

    heads, kv = need("attention.head_count"), get("attention.head_count_kv") or need("attention.head_count")
    if isinstance(kv, list) or isinstance(heads, list):
        raise GGUFError(f"{path}: per-layer head counts ({arch}.attention.head_count_kv is a list) are not "
                        "supported")
    hidden, layers = int(need("embedding_length")), int(need("block_count"))
    head_dim = int(get("attention.key_length") or hidden // heads)
    embd = tensors.get("token_embd.weight")
    if embd is None:
        raise GGUFError(f"{path}: no token_embd.weight tensor; the file holds no language model")
    experts = int(get("expert_count") or 0)
    model_type = "mixtral" if arch == "llama" and experts else ARCHITECTURES[arch]
    fixed = {k: v for k, v in FAMILIES[model_type].fixed.items() if not k.endswith("_bias")}

    def has(name: str) -> bool:
        return name in tensors

    values: dict[str, Any] = dict(
        vocab_size=_shape(embd)[0], hidden_size=hidden, num_hidden_layers=layers,
        intermediate_size=int(get("expert_feed_forward_length") or need("feed_forward_length")),
        num_attention_heads=int(heads), num_key_value_heads=int(kv), head_dim=head_dim,
        max_position_embeddings=int(get("context_length") or 2048),
        norm_eps=float(get("attention.layer_norm_rms_epsilon") or get("attention.layer_norm_epsilon") or 1e-5),
        rope_theta=float(get("rope.freq_base") or 10000.0),
        tie_word_embeddings=not has("output.weight"),
        q_bias=has("blk.0.attn_q.bias"), k_bias=has("blk.0.attn_k.bias"), v_bias=has("blk.0.attn_v.bias"),
        o_bias=has("blk.0.attn_output.bias"), mlp_bias=has("blk.0.ffn_up.bias"),
        lm_head_bias=has("output.bias"), model_type=model_type, torch_dtype=_stored_dtype(tensors),
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"), pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
        eos_token_id=_eos(meta),
    )
    rot = get("rope.dimension_count")
    if rot and int(rot) != head_dim:
        values["partial_rotary_factor"] = int(rot) / head_dim
    values["rope_scaling"] = _rope_scaling(arch, get, tensors, values, path)
    if experts:
        values.update(num_experts=experts, num_experts_per_tok=int(need("expert_used_count")),
                      router_bias=has("blk.0.ffn_gate_inp.bias"), expert_bias=has("blk.0.ffn_up_exps.bias"))
    window = get("attention.sliding_window")
    pattern = get("attention.sliding_window_pattern")
    if arch == "gpt-oss" and window and pattern is None:  # llama.cpp's gpt-oss: every other layer, from layer 0
        pattern = [i % 2 == 0 for i in range(layers)]
    if window and isinstance(pattern, list) and any(pattern):
        values["sliding_window"] = int(window)
        values["layer_types"] = ["sliding_attention" if p else "full_attention" for p in pattern]
    values.update(fixed)
    try:
        return ModelConfig(**values)
    except (TypeError, ValueError) as e:
        raise GGUFError(f"{path}: {e}") from None


def _eos(meta: dict) -> int | list[int] | None:
    """The end-of-sequence token, plus end-of-turn tokens where the file names different ones."""
    ids = [meta.get(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
    ids = list(dict.fromkeys(i for i in ids if i is not None))
    return None if not ids else ids[0] if len(ids) == 1 else ids


def _stored_dtype(tensors: dict[str, Any]) -> str:
    """The dtype `dtype="auto"` means: float32 for an all-F32 file, float16 for F16 weights, else bfloat16."""
    kinds = {_type_name(t) for t in tensors.values() if len(t.shape) > 1}
    if kinds <= {"F32"}:
        return "float32"
    return "float16" if kinds <= {"F16", "F32"} else "bfloat16"


def _rope_scaling(arch: str, get, tensors: dict, values: dict, path: Path) -> dict | None:
    kind = get("rope.scaling.type")
    factor = get("rope.scaling.factor")
    if "rope_freqs.weight" in tensors:
        return _llama3_rope(tensors["rope_freqs.weight"], values, path)
    if kind in (None, "none") or not factor:
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(factor)}
    if kind == "yarn":
        out = {"rope_type": "yarn", "factor": float(factor)}
        for key, ours in (("original_context_length", "original_max_position_embeddings"),
                          ("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow"),
                          ("yarn_attn_factor", "attention_factor")):
            if get(f"rope.scaling.{key}") is not None:
                out[ours] = get(f"rope.scaling.{key}")
        if arch == "gpt-oss":
            out["truncate"] = False  # gpt-oss's published config: unrounded YaRN correction range
        return out
    raise GGUFError(f"{path}: RoPE scaling type {kind!r} is not supported; acik runs none, linear, yarn and "
                    "llama3 (rope_freqs)")


def _llama3_rope(t, values: dict, path: Path) -> dict:
    """llama.cpp stores Llama 3's RoPE scaling as per-frequency divisors (`rope_freqs`), not its parameters:
    find the parameters (Meta's published ones, factor = the largest divisor) that give exactly these divisors."""
    from acik.model.rope import rope_frequencies

    divisors = torch.from_numpy(np.array(t.data, dtype=np.float32)).reshape(-1)
    factor = float(divisors.max())
    base = ModelConfig(**{k: v for k, v in values.items() if k != "rope_scaling"})
    plain, _ = rope_frequencies(base)
    for original in (8192, 4096, 2048, 16384, 32768, 65536, 131072):
        for low, high in ((1.0, 4.0), (1.0, 2.0), (1.0, 8.0)):
            params = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
                      "original_max_position_embeddings": original}
            base.rope_scaling = params
            ours, _ = rope_frequencies(base)
            if torch.allclose(plain / ours, divisors, rtol=1e-4):
                return params
    raise GGUFError(f"{path}: rope_freqs holds RoPE divisors that match no Llama 3 scaling acik knows (largest "
                    f"{factor:g}); this model's RoPE scaling is not supported")


def generation_defaults(meta: dict) -> dict[str, Any]:
    """`general.sampling.*` as acik's sampling options (temperature, top_k, top_p, min_p, repetition_penalty).
    Keys acik has no option for (mirostat, xtc, penalty_last_n, sequence) are left out."""
    out: dict[str, Any] = {}
    for key, ours in _SAMPLING.items():
        value = meta.get(f"general.sampling.{key}")
        if value is not None:
            out[ours] = int(value) if ours == "top_k" else float(value)
    return out


# ---------------------------------------------------------------------------------------------
# Tensors -> the model
# ---------------------------------------------------------------------------------------------

def acik_name(name: str) -> tuple[str, str] | None:
    """GGUF tensor name -> (acik module name, parameter) or None for names acik has no place for."""
    stem, _, kind = name.rpartition(".")
    if kind not in ("weight", "bias"):
        return None
    if stem in _TOP_NAMES:
        return _TOP_NAMES[stem], kind
    parts = stem.split(".")
    if len(parts) != 3 or parts[0] != "blk" or not parts[1].isdigit():
        return None
    prefix = f"model.layers.{parts[1]}"
    if parts[2] == "attn_sinks":
        return f"{prefix}.self_attn", "sinks"
    if parts[2] in _EXPERTS:
        return f"{prefix}.mlp.experts", parts[2]
    if parts[2] in _BLOCK_NAMES:
        return f"{prefix}.{_BLOCK_NAMES[parts[2]]}", kind
    return None


def holding(type_name: str, role: str, dequantize: bool) -> str:
    """How acik holds a tensor of `type_name` in `role` ("linear", "embedding", "experts", "other"):
    "float", "int4", "int4-requant", "int8", "int8-requant" or "mxfp4"."""
    if dequantize or type_name in _FLOAT or role == "other":
        return "float"
    if role == "experts":
        return "mxfp4" if type_name == "MXFP4" else "float"
    if role == "embedding":  # QuantEmbedding: int8 blocks of 32, which a tied head shares
        return "int8" if type_name == "Q8_0" else "int8-requant"
    if type_name in _EXACT_INT4:
        return "int4"
    if type_name == "MXFP4":
        return "mxfp4"
    if type_name == "Q8_0":
        return "int8"
    return "int4-requant" if _bits(type_name) <= 5.5 else "int8-requant"


def _bits(type_name: str) -> float:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    return 8 * size / block


def _role(module_name: str, param: str, shape: tuple[int, ...]) -> str:
    if module_name == "model.embed_tokens":
        return "embedding"
    if module_name.endswith(".mlp.experts"):
        return "experts" if param != "bias" and len(shape) == 3 else "other"
    if param == "weight" and len(shape) == 2 and not module_name.endswith(".mlp.router"):
        return "linear"
    return "other"


def _float(t, dtype: torch.dtype) -> torch.Tensor:
    """Any tensor the gguf package can dequantize -> float in `dtype`, shape in PyTorch order."""
    from gguf.quants import dequantize

    kind = _type_name(t)
    if kind == "F16" and dtype == torch.float16:
        return gt.to_torch(t.data).reshape(_shape(t))
    try:
        values = dequantize(t.data, t.tensor_type)
    except NotImplementedError:
        raise GGUFError(f"tensor {t.name}: type {kind} cannot be dequantized by the gguf package; acik cannot "
                        "read it") from None
    return gt.to_torch(values.astype(np.float32, copy=False)).reshape(_shape(t)).to(dtype)


def _quantized(t, how: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A 2-D weight -> the buffers of the layer `how` names."""
    kind, (rows, cols) = _type_name(t), _shape(t)
    if how == "int4":
        if kind == "Q4_K":
            packed, scale, zero = gt.q4k_to_int4(t.data, rows, cols)
        else:
            packed, scale, zero = gt.q4_to_int4(t.data, rows, cols, kind)
        return {"weight_packed": packed, "weight_scale": scale, "weight_zero": zero}
    if how == "int4-requant":
        packed, scale, zero = gt.int4_minmax(_float(t, torch.float32))
        return {"weight_packed": packed, "weight_scale": scale, "weight_zero": zero}
    if how in ("int8", "int8-requant"):
        if kind == "Q8_0":
            codes, scale = gt.q8_0_to_int8(t.data, rows, cols)
        else:
            from acik.quant.methods import quantize_int8

            codes, scale = quantize_int8(_float(t, torch.float32), gt.INT8_GROUP)
        return {"weight": codes, "weight_scale": scale}
    if how == "mxfp4":
        blocks, scales = gt.mxfp4_to_acik(t.data, (rows, cols))
        return {"weight_blocks": blocks, "weight_scales": scales}
    return {"weight": _float(t, dtype)}


def _skeleton(linear: nn.Linear, how: str, q4_0: bool) -> nn.Module:
    from acik.quant.linear import Int4Linear, Int8Linear, MXFP4Linear

    n_in, n_out, bias = linear.in_features, linear.out_features, linear.bias is not None
    if how.startswith("int4"):
        # Fractional zero points (Q4_1, Q4_K, min-max) are the int4-hqq layout; Q4_0's integer zero is plain int4.
        return Int4Linear(n_in, n_out, bias, gt.INT4_GROUP, hqq=not q4_0, device="meta")
    if how.startswith("int8"):
        return Int8Linear(n_in, n_out, bias, device="meta", group_size=gt.INT8_GROUP)
    return MXFP4Linear(n_in, n_out, bias, device="meta")


def load_gguf(path: str | Path, *, device: str | torch.device | None = "cpu",
              dtype: str | torch.dtype | None = "auto", dequantize: bool = False) -> GGUFModel:
    """Read a GGUF file into a Transformer (eval mode). Without `dequantize`, weights stay as stored where acik
    runs the type (see the module docstring); with it, every weight is float in `dtype` ("auto": the file's
    float type, bfloat16 for quantized files)."""
    from acik.devices import resolve_device, resolve_dtype
    from acik.model import Transformer
    from acik.quant.embedding import QuantEmbedding

    path = Path(path)
    reader = open_gguf(path)
    meta = metadata(reader)
    arch = architecture(meta, path)
    tensors = {t.name: t for t in reader.tensors}
    config = config_from_gguf(meta, tensors, path)
    device, dtype = resolve_device(device), resolve_dtype(dtype, config.torch_dtype)

    # Where each tensor goes and how it is held, before the skeleton is built (MXFP4 experts change the config).
    plan: dict[str, tuple[str, str, str]] = {}  # gguf name -> (module, parameter, holding)
    for name, t in tensors.items():
        target = acik_name(name)
        if target is None:
            if name == "rope_freqs.weight":
                continue  # read into config.rope_scaling
            raise GGUFError(f"{path}: tensor {name!r} has no place in acik's {arch} model; the file carries "
                            "parts acik does not run")
        module, param = target
        plan[name] = (module, param, holding(_type_name(t), _role(module, param, _shape(t)), dequantize))
    expert_holds = {how for module, param, how in plan.values() if module.endswith(".mlp.experts")
                    and param in _EXPERTS}
    if expert_holds == {"mxfp4"}:
        config.expert_quant = "mxfp4"

    with torch.device("meta"):
        model = Transformer(config)
    q4_0 = {plan[n][0] for n, t in tensors.items() if _type_name(t) == "Q4_0"}
    for name, (module, param, how) in plan.items():
        role = _role(module, param, _shape(tensors[name]))
        if how != "float" and role in ("linear", "embedding"):
            parent, _, attr = module.rpartition(".")
            old = model.get_submodule(module)
            new = QuantEmbedding(old.num_embeddings, old.embedding_dim, gt.INT8_GROUP, dtype, device="meta") \
                if role == "embedding" else _skeleton(old, how, module in q4_0)
            setattr(model.get_submodule(parent), attr, new)

    state: dict[str, torch.Tensor] = {}
    pending: dict[str, dict[str, torch.Tensor]] = {}  # experts: gate and up are stored apart, acik fuses them
    for name, (module, param, how) in plan.items():
        t = tensors[name]
        if param in _EXPERTS:
            _expert(state, pending, t, module, param, how, dtype)
            continue
        if how == "float" or _role(module, param, _shape(t)) not in ("linear", "embedding"):
            values = {param: _float(t, dtype)}
        else:
            values = _quantized(t, how, dtype)
        if arch in PERMUTED and module.endswith((".q_proj", ".k_proj")):
            heads = config.num_attention_heads if module.endswith(".q_proj") else config.num_key_value_heads
            index = gt.unpermute_rows(_shape(t)[0], heads)
            values = {k: v.index_select(0, index).contiguous() for k, v in values.items()}
        for k, v in values.items():
            state[f"{module}.{k}"] = v
    counts = tensor_types(reader)
    del reader, tensors
    _fill(model, config, state, device, path)
    return GGUFModel(model.eval(), config, generation_defaults(meta), counts)


def _fill(model: nn.Module, config: ModelConfig, state: dict[str, torch.Tensor], device: torch.device,
          path: Path) -> None:
    """Put `state` into the meta-device skeleton, checking that every tensor has a place and the right shape."""
    from acik.quant.embedding import QuantEmbedding
    from acik.quant.linear import Int8Linear, QuantLinear

    tied = config.tie_word_embeddings
    expected = {k for k in model.state_dict() if not k.endswith("rotary_emb.inv_freq")}
    if tied:
        expected.discard("lm_head.weight")
    if set(state) != expected:
        extra, missing = sorted(set(state) - expected), sorted(expected - set(state))
        raise GGUFError(f"{path}: tensors do not match a {config.model_type} model of this shape; unexpected "
                        f"{extra[:3]}, missing {missing[:3]}")
    own = dict(model.state_dict())
    for k, v in state.items():
        if tuple(own[k].shape) != tuple(v.shape):
            raise GGUFError(f"{path}: tensor for {k!r} has shape {tuple(v.shape)}, the metadata implies "
                            f"{tuple(own[k].shape)}")
    model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=False, assign=True)
    for m in model.modules():
        if isinstance(m, QuantLinear) and m.bias is not None:
            m.bias.requires_grad_(False)
    if tied and isinstance(model.model.embed_tokens, QuantEmbedding):  # the head reads the same int8 table
        model.lm_head = Int8Linear.tied_to(model.model.embed_tokens)
    elif tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.model.rotary_emb = type(model.model.rotary_emb)(config).to(device)


def _expert(state: dict, pending: dict, t, module: str, param: str, how: str, dtype: torch.dtype) -> None:
    """ffn_{gate,up,down}_exps [E, out, in] (and their biases) -> acik's fused experts.gate_up_proj / down_proj."""
    kind = "bias" if t.name.endswith(".bias") else "weight"
    if how == "mxfp4" and kind == "weight":
        blocks, scales = gt.mxfp4_to_acik(t.data, _shape(t))
        value = {"_blocks": blocks, "_scales": scales}
    else:
        value = {"": _float(t, dtype)}
    suffix = "_bias" if kind == "bias" else ""
    if param == "ffn_down_exps":
        for k, v in value.items():
            state[f"{module}.down_proj{k}{suffix}"] = v
        return
    got = pending.setdefault(f"{module}{suffix}", {})
    got[param] = value
    if len(got) == 2:
        for k in value:
            state[f"{module}.gate_up_proj{k}{suffix}"] = torch.cat([got["ffn_gate_exps"][k], got["ffn_up_exps"][k]],
                                                                   dim=1 if kind == "weight" else -1)
        del pending[f"{module}{suffix}"]


# ---------------------------------------------------------------------------------------------
# acik info
# ---------------------------------------------------------------------------------------------

_HOLDING_TEXT = {
    "float": "float (model dtype)", "int4": "int4 g32, kept packed (exact)",
    "int8-embedding": "int8 blocks of 32, kept packed (exact); a tied head reads it",
    "int4-requant": "re-quantized to int4 g32 at load", "int8": "int8 blocks of 32, kept packed (exact)",
    "int8-requant": "re-quantized to int8 blocks of 32 at load", "mxfp4": "MXFP4, kept packed (exact)",
}


def describe_gguf(path: str | Path) -> list[str]:
    """Lines for `acik info model.gguf`: architecture, and per tensor type its count, bits per weight and how acik
    holds it (as stored; `--dequantize` makes every weight float)."""
    path = Path(path)
    reader = open_gguf(path)
    meta = metadata(reader)
    arch = architecture(meta, path)
    rows: dict[str, dict] = {}
    tied = not any(t.name == "output.weight" for t in reader.tensors)
    for t in reader.tensors:
        target = acik_name(t.name)
        kind = _type_name(t)
        row = rows.setdefault(kind, {"count": 0, "weights": 0, "bytes": 0, "holds": set()})
        row["count"] += 1
        row["weights"] += int(t.n_elements)
        row["bytes"] += int(t.n_bytes)
        if target is not None:
            role = _role(*target, _shape(t))
            how = holding(kind, role, False)
            row["holds"].add(_HOLDING_TEXT["int8-embedding" if role == "embedding" and how == "int8" and tied
                                           else how])
    lines = [f"gguf:          {arch}, {len(reader.tensors)} tensors, {fmt.size(path.stat().st_size)}"]
    for kind, row in sorted(rows.items(), key=lambda kv: -kv[1]["bytes"]):
        bits = 8 * row["bytes"] / max(row["weights"], 1)
        holds = "; ".join(sorted(row["holds"])) or "not used"
        lines.append(f"  {kind:<6} {row['count']:>4} tensors  {bits:5.2f} bits/weight  -> {holds}")
    return lines
