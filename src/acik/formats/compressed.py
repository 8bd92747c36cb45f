"""Quantized model directories: how each method's buffers are written to safetensors and
described in `config.json`'s `quantization_config`, and how they are read back.

- int8, w8a8, int4: compressed-tensors (`quant_method: compressed-tensors`), the format
  llm-compressor writes and transformers and vLLM read: `int-quantized` (int8 `weight`, `weight_scale`
  [out, 1]) and `pack-quantized` (4-bit codes packed eight to an int32 along the input,
  `weight_scale` and `weight_zero_point` per group, zero points packed along the output).
- mxfp4: gpt-oss's tensor layout (`weight_blocks`, `weight_scales`) with `quant_method: mxfp4`.
  transformers only applies its MXFP4 loader to gpt-oss experts, so these dense-model files load
  in acik (and are byte-for-byte the format other MXFP4 readers decode).
- int4-hqq (fractional zero points, which compressed-tensors' integer zero points cannot hold) and
  nf4 (bitsandbytes keeps its quantization state in a layout of its own): acik's layout,
  `quant_method: acik`, our buffer names.
Every `quantization_config` we write also carries an `acik` entry (method, group size, skip list, the head's
method where it differs) so acik rebuilds exactly the layers it wrote. An int8 head under a 4-bit method is a
second compressed-tensors config group targeting `lm_head` by name (compressed-tensors and transformers match
exact names before class names), packed like the body so the directory keeps one format (`pack-quantized` at
8 bits: four codes to an int32, as q + 128). transformers 5.24 cannot read it (its dequantizing reader applies
the first group's scheme to every dense layer); acik does. In acik's and the MXFP4 layouts the head is stored as
int8 layers are.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from acik.formats import CheckpointError
from acik.formats.hf import iter_checkpoint, save_pretrained, weight_files
from acik.quant import METHODS, QuantizationError, check_method, targets
from acik.quant.linear import Int4Linear, Int8Linear, MXFP4Linear, NF4Linear, QuantLinear

COMPRESSED_TENSORS = ("int8", "w8a8", "int4")


# --- compressed-tensors packing ----------------------------------------------------------------

def pack_int32(nibble_bytes: torch.Tensor) -> torch.Tensor:
    """Our nibble bytes [out, in/2] (even element low) are compressed-tensors' int32 words [out, in/8]
    read little-endian: element i sits at bits 4 * (i % 8) of word i // 8, stored as code = q + 8."""
    return nibble_bytes.contiguous().view(torch.int32) if nibble_bytes.shape[-1] % 4 == 0 else None


def _pack_rows(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes [out, G] -> int32 [ceil(out/8), G], packed along the output dimension."""
    from acik.quant.methods import pack_nibbles

    out = codes.shape[0]
    pad = (-out) % 8
    t = torch.cat([codes, torch.zeros(pad, codes.shape[1], dtype=torch.uint8)]) if pad else codes
    return pack_nibbles(t.t().contiguous()).view(torch.int32).t().contiguous()


def _unpack_rows(packed: torch.Tensor, out: int) -> torch.Tensor:
    from acik.quant.methods import unpack_nibbles

    return unpack_nibbles(packed.t().contiguous().view(torch.uint8)).t()[:out].contiguous()


_INT8_WEIGHTS = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel", "group_size": None,
                 "dynamic": False, "observer": "minmax"}


def _ct_config(method: str, group_size: int | None, ignore: list[str], head: str | None = None) -> dict:
    if method == "int4":
        weights = {"num_bits": 4, "type": "int", "symmetric": False, "strategy": "group", "group_size": group_size,
                   "dynamic": False, "observer": "minmax"}
    else:
        weights = dict(_INT8_WEIGHTS)
        if group_size:  # int8 in blocks (GGUF Q8_0 at 32): compressed-tensors' group strategy, symmetric
            weights.update(strategy="group", group_size=group_size)
    activations = None
    if method == "w8a8":
        activations = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token", "group_size": None,
                       "dynamic": True, "observer": None}
    fmt = "pack-quantized" if method == "int4" else "int-quantized"
    groups = {"group_0": {"targets": ["Linear"], "weights": weights, "format": fmt,
                          "input_activations": activations, "output_activations": None}}
    if head:  # int8 (the only other head method), in the body's format
        groups["group_1"] = {"targets": ["lm_head"], "weights": dict(_INT8_WEIGHTS), "format": fmt,
                             "input_activations": None, "output_activations": None}
    return {"quant_method": "compressed-tensors", "format": fmt,
            "quantization_status": "compressed", "config_groups": groups, "ignore": ignore}


def quantization_config(model: nn.Module) -> dict:
    info = model.quantization
    method = info["method"]
    quantized = {n for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    ignore = sorted(n for n, m in model.named_modules() if type(m) is nn.Linear and n not in quantized)
    head = info.get("head")
    acik = {"method": method, "group_size": info["group_size"], "skip": info["skip"], "head": head}
    if method in COMPRESSED_TENSORS:
        return {**_ct_config(method, info["group_size"], ignore, head), "acik": acik}
    if method == "mxfp4":
        return {"quant_method": "mxfp4", "modules_to_not_convert": ignore, "acik": acik}
    return {"quant_method": "acik", "ignore": ignore, "acik": acik}


def saved_tensors(name: str, layer: QuantLinear, packed: bool = False) -> dict[str, torch.Tensor]:
    """One quantized layer as the tensors its format stores (names prefixed with `name.`). `packed`: an int8 layer
    in a pack-quantized directory (an int4 model's head), four codes to an int32 as q + 128."""
    if isinstance(layer, Int8Linear) and packed:
        codes = (layer.weight.to(torch.int16) + 128).to(torch.uint8)
        out = {"weight_packed": codes.contiguous().view(torch.int32),
               "weight_scale": layer.weight_scale.float()[:, None],
               "weight_shape": torch.tensor([layer.out_features, layer.in_features])}
    elif isinstance(layer, Int8Linear):
        out = {"weight": layer.weight, "weight_scale": layer.weight_scale.reshape(layer.out_features, -1)}
    elif isinstance(layer, Int4Linear) and layer.method == "int4":
        out = {"weight_packed": pack_int32(layer.weight_packed), "weight_scale": layer.weight_scale,
               "weight_zero_point": _pack_rows(layer.weight_zero.to(torch.uint8)),
               "weight_shape": torch.tensor([layer.out_features, layer.in_features])}
    else:
        out = dict(layer.named_buffers(recurse=False))
    if layer.bias is not None:
        out["bias"] = layer.bias
    return {f"{name}.{k}": v for k, v in out.items()}


def buffers_from_saved(layer: QuantLinear, saved: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `saved_tensors` for one layer (names without the layer prefix)."""
    if isinstance(layer, Int8Linear):
        weight = saved["weight"] if "weight" in saved else \
            (saved["weight_packed"].contiguous().view(torch.uint8).to(torch.int16) - 128).to(torch.int8)
        scale = layer.weight_scale  # [out] fp32 per channel, [out, in / group] fp16 in blocks
        return {"weight": weight, "weight_scale": saved["weight_scale"].to(scale.dtype).reshape(scale.shape)}
    if isinstance(layer, Int4Linear) and layer.method == "int4":
        if saved["weight_packed"].dtype != torch.int32:
            raise QuantizationError(f"weight_packed is {saved['weight_packed'].dtype}; pack-quantized stores int32")
        zero = _unpack_rows(saved["weight_zero_point"], layer.out_features)
        return {"weight_packed": saved["weight_packed"].contiguous().view(torch.uint8),
                "weight_scale": saved["weight_scale"].half(), "weight_zero": zero.half()}
    return {k: saved[k] for k in dict(layer.named_buffers(recurse=False))}


class _Tensors:
    """What `save_pretrained` needs from a model: its state dict and a parameter dtype."""

    def __init__(self, tensors: dict[str, torch.Tensor], dtype: torch.dtype):
        self.tensors, self.dtype = tensors, dtype

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.tensors

    def parameters(self):
        yield torch.empty(0, dtype=self.dtype)


def save_quantized(model: nn.Module, config, out_dir: str | Path, *, tokenizer_dir=None,
                   generation_config: dict | None = None) -> Path:
    """Write a quantized model as a Hugging Face directory (the caller writes the manifest)."""
    quant = {id(m) for m in model.modules() if isinstance(m, QuantLinear)}
    pack = model.quantization["method"] == "int4"  # pack-quantized: an int8 head is packed too
    tensors: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if id(module) in quant:
            tensors.update(saved_tensors(name, module, packed=pack))
    inside = tuple(f"{n}." for n, m in model.named_modules() if id(m) in quant)
    tensors.update({k: v for k, v in model.state_dict().items() if not k.startswith(inside)})
    dtype = model.model.embed_tokens.weight.dtype
    out = save_pretrained(_Tensors(tensors, dtype), config, out_dir, tokenizer_dir=tokenizer_dir,
                             generation_config=generation_config)
    cfg_path = out / "config.json"
    hf_cfg = json.loads(cfg_path.read_text())
    hf_cfg["quantization_config"] = quantization_config(model)
    cfg_path.write_text(json.dumps(hf_cfg, indent=2) + "\n")
    return out


def read_quantization(directory: str | Path) -> dict | None:
    """config.json's `quantization_config`, or None for an unquantized directory."""
    path = Path(directory) / "config.json"
    return json.loads(path.read_text()).get("quantization_config") if path.exists() else None


def is_acik_quantized(qc: dict | None) -> bool:
    """True for quantized linears acik reads (its own output, compressed-tensors); gpt-oss's MXFP4
    experts are read by `acik.formats.hf` instead."""
    return bool(qc) and ("acik" in qc or qc.get("quant_method") == "compressed-tensors")


def _is_int8_channel(weights: dict | None) -> bool:
    w = weights or {}
    return w.get("num_bits") == 8 and bool(w.get("symmetric")) and w.get("strategy") == "channel"


def _method_of(qc: dict, where: str) -> tuple[str, int | None, list[str], str | None]:
    """(method, group size, skip list, head method where it differs) from a quantization_config acik wrote, or
    from a plain compressed-tensors one (int8 per channel, w8a8, int4 asymmetric group-wise, optionally with an
    int8 group for `lm_head`)."""
    if "acik" in qc:
        a = qc["acik"]
        if a.get("method") not in METHODS:
            raise QuantizationError(f"{where}: quantization_config.acik.method {a.get('method')!r} is not one of "
                                    f"{', '.join(METHODS)}")
        if a.get("head") not in (None, "int8"):
            raise QuantizationError(f"{where}: quantization_config.acik.head {a.get('head')!r} is not int8")
        return a["method"], a.get("group_size"), list(a.get("skip") or []), a.get("head")
    groups = list(qc.get("config_groups", {}).values()) if qc.get("quant_method") == "compressed-tensors" else []
    head = None
    if len(groups) == 2 and groups[1].get("targets") == ["lm_head"] and _is_int8_channel(groups[1].get("weights")):
        groups, head = groups[:1], "int8"
    if len(groups) == 1:
        group = groups[0]
        w, act = group.get("weights") or {}, group.get("input_activations")
        skip = [s for s in qc.get("ignore", []) if not s.startswith("re:")]
        if _is_int8_channel(w) and not head:
            return ("w8a8" if act else "int8"), None, skip, None
        if (w.get("num_bits") == 4 and not w.get("symmetric") and w.get("strategy") == "group"
                and group.get("format", qc.get("format")) == "pack-quantized"):
            return "int4", w.get("group_size"), skip, head
    raise QuantizationError(f"{where}: quantization_config {json.dumps(qc)[:200]} is not a layout acik reads; "
                            "it reads what `acik quantize` writes and compressed-tensors int8/w8a8/int4 (asymmetric "
                            "group-wise)")


def _skeleton(linear: nn.Linear, method: str, group_size: int | None) -> QuantLinear:
    n_in, n_out, bias = linear.in_features, linear.out_features, linear.bias is not None
    if method in ("int8", "w8a8"):
        return Int8Linear(n_in, n_out, bias, activations=method == "w8a8", device="meta", group_size=group_size)
    if method in ("int4", "int4-hqq"):
        return Int4Linear(n_in, n_out, bias, group_size, hqq=method == "int4-hqq", device="meta")
    if method == "nf4":
        return NF4Linear(n_in, n_out, bias, group_size, device="meta")
    return MXFP4Linear(n_in, n_out, bias, device="meta")


def load_quantized(directory: str | Path, config, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Build the Transformer with quantized layers where the directory has them and fill it."""
    from acik.model import Transformer

    directory = Path(directory)
    where = str(directory / "config.json")
    method, group_size, skip, head = _method_of(read_quantization(directory), where)
    group_size = check_method(method, group_size)
    with torch.device("meta"):
        model = Transformer(config)
    names = targets(model, skip)
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        own = (head, None) if name == "lm_head" and head else (method, group_size)
        setattr(parent, attr, _skeleton(getattr(parent, attr), *own))
    files = weight_files(directory)
    saved = dict(iter_checkpoint(files))
    state: dict[str, torch.Tensor] = {}
    for name in names:
        layer = model.get_submodule(name)
        prefix = f"{name}."
        mine = {k[len(prefix):]: saved.pop(k) for k in [k for k in saved if k.startswith(prefix)]}
        try:
            state.update({prefix + k: v for k, v in buffers_from_saved(layer, mine).items()})
        except KeyError as e:
            raise CheckpointError(f"{directory}: {name} lacks tensor {e}; the weights do not match the "
                                     f"quantization_config ({method})") from None
        if "bias" in mine:
            state[prefix + "bias"] = mine["bias"].to(dtype)
    state.update({k: (v.to(dtype) if v.is_floating_point() else v) for k, v in saved.items()
                  if not k.endswith("rotary_emb.inv_freq")})
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    expected = set(model.state_dict()) - ({"lm_head.weight"} if config.tie_word_embeddings else set())
    expected = {k for k in expected if not k.endswith("rotary_emb.inv_freq")}
    if set(state) != expected:
        extra, missing = sorted(set(state) - expected), sorted(expected - set(state))
        raise CheckpointError(f"{directory}: tensors do not match the quantized model ({method}); "
                                 f"unexpected {extra[:3]}, missing {missing[:3]}")
    for k, v in state.items():
        want = model.get_parameter(k) if k in dict(model.named_parameters()) else model.get_buffer(k)
        if tuple(want.shape) != tuple(v.shape):
            raise CheckpointError(f"{directory}: tensor {k!r} has shape {tuple(v.shape)}, expected "
                                     f"{tuple(want.shape)}")
    # Copies, not views into the file's buffer: the packed kernels read with aligned vector loads
    # and crash on a tensor at an unaligned offset.
    model.load_state_dict({k: v.to(device, copy=True) for k, v in state.items()}, strict=False, assign=True)
    for m in model.modules():
        if isinstance(m, QuantLinear) and m.bias is not None:
            m.bias.requires_grad_(False)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.model.rotary_emb = type(model.model.rotary_emb)(config).to(device)
    model.quantization = {"method": method, "group_size": group_size, "skip": skip,
                          "head": head if "lm_head" in names else None}
    return model.eval()
