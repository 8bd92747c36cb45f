"""`acik quantize DIR --method METHOD --out DIR2`: write a quantized model directory."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from acik import fmt


@dataclass
class QuantizeRecipe:
    method: str = "int8"
    group_size: int | None = None  # None: the method's default (64 for int4/int4-hqq/nf4, 32 for mxfp4, per channel
    # for int8; int8 with 32: llama.cpp's Q8_0 blocks)
    skip: list[str] | None = None  # None: the method's default (acik.quant.default_skip)
    head: str | None = None  # "int8": the output head at 8 bits whatever the method; None/"same": the method
    dtype: str = "auto"  # the dtype of what stays unquantized (embeddings, norms, skipped layers)


def quantize_dir(src: str | Path, out: str | Path, recipe: QuantizeRecipe, command=None) -> dict:
    """Load `src`, quantize it as `recipe` says, save to `out` with a manifest; return a summary."""
    from acik.loader import load
    from acik.quant import check_method, head_method, quantization_summary
    from acik.recipe import to_dict

    check_method(recipe.method, recipe.group_size)  # fail before loading anything
    head_method(recipe.method, recipe.head)
    if Path(out).resolve() == Path(src).resolve():
        raise ValueError(f"--out {out} is the source directory; write the quantized model somewhere else")
    start = time.perf_counter()
    llm = load(src, dtype=recipe.dtype, quantize=recipe.method, group_size=recipe.group_size, skip=recipe.skip,
                    head=recipe.head)
    seconds = time.perf_counter() - start
    summary = quantization_summary(llm.model)
    parents = []
    if not (Path(src) / "acik.json").exists():  # acik's own directories are recorded by LLM.save
        from acik.manifest import directory_hash, hash_files

        parents.append({"role": "source", "path": str(src), "directory_hash": directory_hash(hash_files(src))})
    llm.save(out, command=command or sys.argv, recipe=to_dict(recipe), parents=parents,
             extra={"quantization": {**llm.model.quantization, **summary}})
    return {**summary, "seconds": seconds}


def _cmd_quantize(args: argparse.Namespace) -> int:
    from acik.recipe import load_recipe

    skip = None if args.skip is None else [s for s in args.skip.split(",") if s]
    recipe = load_recipe(QuantizeRecipe, args.recipe, args.set, method=args.method, group_size=args.group_size,
                         skip=skip, head=args.head, dtype=args.dtype)
    s = quantize_dir(args.dir, args.out, recipe)
    print(f"{args.out}: {recipe.method}, {s['quantized_weights']:,} weights at {s['bits_per_weight']:.2f} bits "
          f"({fmt.size(s['quantized_bytes'])}); model {fmt.size(s['total_bytes'])}; "
          f"quantized in {s['seconds']:.1f} s")
    return 0


def add_cli(subparsers) -> None:
    from acik.quant import METHODS

    p = subparsers.add_parser("quantize", help="quantize a model directory (int8, int4, int4-hqq, nf4, mxfp4, w8a8)")
    p.add_argument("dir", help="source model directory (unquantized)")
    p.add_argument("--out", required=True, help="where to write the quantized model directory")
    p.add_argument("--method", help=f"one of {', '.join(METHODS)} (default int8)")
    p.add_argument("--group-size", type=int, help="inputs per scale for int4/int4-hqq/nf4 (default 64); for int8, "
                        "32/64/128/256 gives one scale per block of inputs (32: llama.cpp's Q8_0) instead of one "
                        "per output channel")
    p.add_argument("--skip", help="comma-separated module names to leave unquantized (default: lm_head, the output "
                        "head, except for int8, which quantizes it; --skip '' quantizes every linear layer; "
                        "--skip lm_head keeps an int8 directory loadable by vLLM)")
    p.add_argument("--head", choices=["int8", "same"], help="quantize the output head with int8 whatever the "
                        "--method (llama.cpp's choice for 4-bit types: faster than a bf16 head, near its quality), "
                        "or with the same method as the rest")
    p.add_argument("--dtype", help="dtype of the unquantized parts (default: the model's)")
    p.add_argument("--recipe", help="YAML recipe with the same keys")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe key")
    p.set_defaults(func=_cmd_quantize)
