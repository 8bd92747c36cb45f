"""Elastic experts: one MoE checkpoint for heavy and light use.

- `acik moe-shrink DIR --experts K --calib FILE --out DIR2` runs a calibration text through the
  model, counts how often each layer routes to each expert, and keeps each layer's K most used
  experts (router rows and expert tensors dropped together), so DIR2 is a smaller directory of the
  same family that transformers loads.
- `load(DIR, active_experts=k)` changes how many experts each token uses at inference.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from acik.manifest import sha256_file
from acik.model.moe import MoE, moe_layers


@dataclass
class ShrinkRecipe:
    experts: int = 0  # experts to keep per MoE layer
    calib: str = ""  # calibration text file (UTF-8)
    max_tokens: int = 65536  # calibration tokens used at most
    seq_len: int = 512  # tokens per forward pass
    active_experts: int | None = None  # top-k of the result; default: the source's, capped at `experts`
    dtype: str = "auto"


def calibration_ids(llm, text: str) -> list[int]:
    """Token ids of `text` with the model's own tokenizer; acik's byte-level tokenizer only stands in
    when the model has none and its vocabulary is exactly that tokenizer's (260 ids)."""
    path = llm.path
    if llm.tokenizer_dir is not None:
        return llm.tokenizer.encode(text, add_special_tokens=False)
    from acik.tokenizer import SPECIAL_TOKENS

    byte_vocab = 256 + len(SPECIAL_TOKENS)
    if llm.config.vocab_size != byte_vocab:
        raise ValueError(f"{path}: no tokenizer.json, and the vocabulary ({llm.config.vocab_size} tokens) is not "
                         f"acik's byte-level one ({byte_vocab}), so the calibration text cannot be tokenized; "
                         "copy the model's tokenizer.json into the directory")
    return list(text.encode("utf-8"))


@torch.no_grad()
def expert_counts(model: torch.nn.Module, ids: list[int], seq_len: int = 512) -> list[torch.Tensor]:
    """Tokens routed to each expert, per MoE layer, over `ids` run in windows of `seq_len`."""
    layers = moe_layers(model)
    totals = [torch.zeros(m.num_experts, dtype=torch.long) for m in layers]
    device = next(model.parameters()).device
    for start in range(0, len(ids), seq_len):
        chunk = torch.tensor(ids[start:start + seq_len], device=device)[None]
        model(chunk, last_only=True)
        for total, m in zip(totals, layers, strict=True):
            total += m.last_counts.cpu()
    return totals


def keep_experts(layer: MoE, keep: torch.Tensor) -> None:
    """Keep only the experts `keep` (indices, in order) in `layer`: router rows and expert tensors together."""
    with torch.no_grad():
        for module in (layer.router, layer.experts):
            for name, p in list(module.named_parameters(recurse=False)):
                setattr(module, name, torch.nn.Parameter(p[keep.to(p.device)].clone(), requires_grad=p.requires_grad))
    layer.num_experts = layer.experts.num_experts = len(keep)
    layer.router.out_features = len(keep)


def shrink(llm, experts: int, ids: list[int], seq_len: int = 512, active_experts: int | None = None) -> dict:
    """Shrink `llm` in place to `experts` per MoE layer, ranked by routing counts on `ids`.
    Returns what was kept, per layer, for the manifest."""
    cfg = llm.config
    if not cfg.num_experts:
        raise ValueError(f"{llm.path}: not a Mixture-of-Experts model (no experts to shrink)")
    if not 0 < experts <= cfg.num_experts:
        raise ValueError(f"--experts {experts}: must be in 1..{cfg.num_experts} (the experts per MoE layer)")
    if not ids:
        raise ValueError("the calibration text is empty; give a few thousand tokens of representative text")
    counts = expert_counts(llm.model, ids, seq_len)
    kept = {}
    for layer, count in zip(moe_layers(llm.model), counts, strict=True):
        # Most used first; ties go to the lower index. Kept experts stay in their original order.
        order = sorted(range(len(count)), key=lambda e: (-int(count[e]), e))[:experts]
        keep = torch.tensor(sorted(order))
        keep_experts(layer, keep)
        kept[len(kept)] = {"kept": keep.tolist(), "counts": count.tolist()}
    k = active_experts if active_experts is not None else min(cfg.num_experts_per_tok, experts)
    if not 0 < k <= experts:
        raise ValueError(f"--active-experts {k}: must be in 1..{experts}")
    cfg.num_experts, cfg.num_experts_per_tok = experts, k
    return kept


def _cmd_shrink(args: argparse.Namespace) -> int:
    from acik.loader import load
    from acik.recipe import load_recipe, to_dict

    recipe = load_recipe(ShrinkRecipe, args.recipe, args.set, experts=args.experts, calib=args.calib,
                         max_tokens=args.max_tokens, seq_len=args.seq_len, active_experts=args.active_experts,
                         dtype=args.dtype)
    if not recipe.calib:
        raise ValueError("moe-shrink needs a calibration text: --calib FILE")
    calib = Path(recipe.calib)
    if not calib.is_file():
        raise FileNotFoundError(f"{calib}: calibration text not found")
    llm = load(args.dir, dtype=recipe.dtype)
    ids = calibration_ids(llm, calib.read_text(encoding="utf-8"))[:recipe.max_tokens]
    before = llm.config.num_experts
    kept = shrink(llm, recipe.experts, ids, recipe.seq_len, recipe.active_experts)
    out = llm.save(args.out, command=sys.argv, recipe=to_dict(recipe),
                   parents=[{"role": "calibration", "path": str(calib), "sha256": sha256_file(calib)}],
                   extra={"moe_shrink": {"experts_before": before, "calibration_tokens": len(ids), "layers": kept}})
    print(f"kept {recipe.experts} of {before} experts per layer (top-{llm.config.num_experts_per_tok}) "
          f"from {len(ids):,} calibration tokens -> {out}")
    return 0


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("moe-shrink", help="keep each MoE layer's most used experts (elastic experts)")
    p.add_argument("dir", help="source model directory (a Mixture-of-Experts family)")
    p.add_argument("--experts", type=int, help="experts to keep per layer")
    p.add_argument("--calib", help="calibration text file (UTF-8) used to rank the experts")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--active-experts", type=int, help="experts per token in the result (default: unchanged, "
                   "capped at --experts)")
    p.add_argument("--max-tokens", type=int, help="calibration tokens used at most (default 65536)")
    p.add_argument("--seq-len", type=int, help="tokens per forward pass (default 512)")
    p.add_argument("--dtype", help="dtype to load and save in (default: the checkpoint's)")
    p.add_argument("--recipe", help="YAML recipe (keys of ShrinkRecipe); flags override it")
    p.add_argument("--set", action="append", help="override a recipe key: --set key=value")
    p.set_defaults(func=_cmd_shrink)
