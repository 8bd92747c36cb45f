"""MoE layer forward time: acik's grouped dispatch against transformers' Mixtral block, same weights.

Prints a table of median milliseconds per forward (CPU, fp32) and the max |difference| of outputs.
Usage: python benchmarks/moe_dispatch.py [--tokens 2048] [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def median_ms(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    import transformers as tf
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    from acik.config import ModelConfig
    from acik.model.moe import MoE

    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    H, Inter, E, k = 512, 1024, 8, 2
    hf_cfg = tf.MixtralConfig(hidden_size=H, intermediate_size=Inter, num_local_experts=E, num_experts_per_tok=k)
    hf_cfg._experts_implementation = "eager"
    ref = MixtralSparseMoeBlock(hf_cfg).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.05)
    cfg = ModelConfig(hidden_size=H, intermediate_size=Inter, num_attention_heads=8, num_experts=E,
                      num_experts_per_tok=k)
    ours = MoE(cfg).eval()
    with torch.no_grad():
        ours.router.weight.copy_(ref.gate.weight)
        ours.experts.gate_up_proj.copy_(ref.experts.gate_up_proj)
        ours.experts.down_proj.copy_(ref.experts.down_proj)
    packed_cfg = ModelConfig(**{**cfg.to_dict(), "expert_quant": "mxfp4"})
    packed = MoE(packed_cfg).eval()
    from acik.quant.mxfp4 import quantize_mxfp4

    with torch.no_grad():
        packed.router.weight.copy_(ref.gate.weight)
        for name in ("gate_up_proj", "down_proj"):
            blocks, scales = quantize_mxfp4(getattr(ours.experts, name))
            getattr(packed.experts, f"{name}_blocks").copy_(blocks)
            getattr(packed.experts, f"{name}_scales").copy_(scales)
    x = torch.randn(1, args.tokens, H)
    with torch.no_grad():
        expected = ref(x)
        rows = [("transformers, eager experts", median_ms(lambda: ref(x), args.runs), 0.0)]
        hf_cfg._experts_implementation = "grouped_mm"  # transformers' default where torch has it
        rows += [("transformers, grouped_mm experts", median_ms(lambda: ref(x), args.runs),
                  (ref(x) - expected).abs().max().item()),
                ("acik MoE (grouped by expert)", median_ms(lambda: ours(x), args.runs),
                 (ours(x) - expected).abs().max().item()),
                ("acik MoE, packed MXFP4 experts", median_ms(lambda: packed(x), args.runs),
                 (packed(x) - expected).abs().max().item())]  # MXFP4 rounding of the weights
    print(f"MoE forward, {args.tokens} tokens, hidden {H}, expert size {Inter}, {E} experts top-{k}, "
          f"fp32 CPU, {args.threads} threads, median of {args.runs}")
    print(f"{'implementation':<36} {'ms':>9} {'max |Δ| vs transformers eager':>30}")
    for name, ms, diff in rows:
        print(f"{name:<36} {ms:>9.1f} {diff:>30.2e}")


if __name__ == "__main__":
    main()
