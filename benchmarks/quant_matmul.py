"""One quantized linear at batch 1 (decode), per layer shape: int8 in blocks of 32 (GGUF's Q8_0 layout, acik's
block kernel) against int8 with one scale per output (acik's blocked int8 kernel) and bf16 (oneDNN's prepacked
linear, as `LLM.optimize` runs dense layers), on SmolLM2-135M's shapes: q/o 576->576, k/v 576->192, gate/up
576->1536, down 1536->576 and the tied head 576->49152.

Each row times the layer's forward on one bf16 token (the dtype acik decodes in) over --repeats rounds of --calls
calls, the rows measured round-robin so that load changes on a shared machine hit every row alike; it prints the
median and the best round (on a loaded machine the best is the closer estimate of the kernel's own speed), the
weight bytes each layout holds and the rate at which they stream at the best time (bytes / time).

    python benchmarks/quant_matmul.py [--threads 2] [--repeats 15] [--calls 100]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from acik.kernels import cpu_matmul
from acik.model.inference import PackedLinear
from acik.quant import Int8Linear

SHAPES = [(576, 576), (576, 192), (576, 1536), (1536, 576), (576, 49152)]  # (in, out)


def layers(n_in: int, n_out: int) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    linear = torch.nn.Linear(n_in, n_out, bias=False)
    linear.weight.data.normal_(0, 0.02)
    per_row = Int8Linear.from_linear(linear)
    per_row.for_inference()  # the kernel's own layout only, as LLM.optimize leaves it
    return {"int8 g32": Int8Linear.from_linear(linear, group_size=32), "int8 per-row": per_row,
            "bf16": PackedLinear(linear.to(torch.bfloat16))}


def held_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--calls", type=int, default=100, help="calls per timing (a tenth of it for the head)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"acik kernels: {cpu_matmul.isa()}, {args.threads} threads, {args.repeats} rounds; torch "
          f"{torch.__version__}")
    print(f"{'in->out':>12}  {'layout':<13} {'median µs':>9} {'best µs':>8} {'GB/s':>6} {'MB held':>8}")
    with torch.inference_mode():
        for n_in, n_out in SHAPES:
            mods = layers(n_in, n_out)
            x = torch.randn(1, 1, n_in).to(torch.bfloat16)
            calls = max(1, args.calls // 10) if n_out > 10000 else args.calls
            times: dict[str, list[float]] = {name: [] for name in mods}
            for m in mods.values():
                for _ in range(3):
                    m(x)  # builds kernel layouts, warms caches
            for _ in range(args.repeats):
                for name, m in mods.items():
                    start = time.perf_counter()
                    for _ in range(calls):
                        m(x)
                    times[name].append((time.perf_counter() - start) / calls)
            for name, m in mods.items():
                t, best = statistics.median(times[name]), min(times[name])
                nbytes = held_bytes(m)
                print(f"{n_in:>5}->{n_out:<6} {name:<13} {t * 1e6:9.1f} {best * 1e6:8.1f} {nbytes / best / 1e9:6.1f} "
                      f"{nbytes / 1e6:8.2f}")


if __name__ == "__main__":
    main()
