"""One decode step of acik's model (with the engine's KV cache) against the bare matmul loop, at batch 1
and 8, fp32 and bf16: the least noisy view of "how close to the kernels" on a shared machine.

The bare loop and the step alternate, 12 times each; the table gives the best times and the ratios of
both the best and the median times. All work runs in a thread that follows a throwaway thread (see
benchmarks/decode.py, warm_kernels). `--compile` adds the step compiled with torch.compile (as
`Engine(compile=True)` does), and the seconds its first call took to compile.

    PYTHONPATH=src python benchmarks/decode_step.py [threads] [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import torch
import torch.nn.functional as F

from acik.config import preset
from acik.engine.cache import KVCache
from acik.model.transformer import Transformer


def alternate(fns: list, n: int = 12) -> list[list[float]]:
    """Seconds of n calls of each of `fns`, in turn (after one untimed call of each)."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(n):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return times


def job(cfg, base: Transformer, dtype: torch.dtype, compile: bool, out: dict) -> None:
    model = Transformer(cfg).to(dtype)
    model.load_state_dict(base.state_dict())
    model.eval()
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    cache = KVCache(cfg, 8, 64, 16, dtype=dtype)

    def forward(ids, pos):
        return model(ids, positions=pos, cache=cache, last_only=True)

    compiled = torch.compile(forward, dynamic=True) if compile else None
    with torch.inference_mode():
        for batch in (1, 8):
            xs = {w.shape[1]: torch.randn(batch, w.shape[1], dtype=dtype) for w in weights}
            ids, pos = torch.zeros(batch, 1, dtype=torch.long), torch.full((batch, 1), 20)

            def bare(xs=xs):
                for w in weights:
                    F.linear(xs[w.shape[1]], w)

            def step(fn=forward, ids=ids, pos=pos, batch=batch):
                cache.select(0, batch, pos)
                fn(ids, pos)

            fns = [bare, step]
            compile_s = 0.0
            if compiled is not None:
                t0 = time.perf_counter()
                step(compiled)  # compiles (or reuses what an earlier pass compiled)
                compile_s = time.perf_counter() - t0
                fns.append(lambda: step(compiled))
            out[(dtype, batch)] = (alternate(fns), compile_s)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("threads", nargs="?", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time the torch.compile'd step")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = preset("124m")
    base = Transformer(cfg)
    base.init_weights(0)
    base.eval()
    out: dict = {}
    compile_s: dict = {}
    for dtype in (torch.float32, torch.bfloat16):
        for target in ({}, out):  # the first pass only creates the kernels (and compiles)
            t = threading.Thread(target=job, args=(cfg, base, dtype, args.compile, target))
            t.start()
            t.join()
            if target is not out:
                compile_s.update({k: v[1] for k, v in target.items()})
    head = (f"| dtype | batch | bare-matmul ms | acik step ms | acik / bare (best) | acik / bare (median) "
            f"| acik tok/s ({args.threads} threads) |")
    if args.compile:
        head += " compiled step ms | compiled / bare (best) | compiled / bare (median) | compile s (first call) |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for (dtype, batch), (times, _) in out.items():
        best = [min(ts) for ts in times]
        med = [statistics.median(ts) for ts in times]
        line = (f"| {str(dtype).removeprefix('torch.')} | {batch} | {best[0] * 1e3:.1f} | {best[1] * 1e3:.1f} | "
                f"{best[0] / best[1]:.0%} | {med[0] / med[1]:.0%} | {batch / best[1]:.1f} |")
        if args.compile:
            line += (f" {best[2] * 1e3:.1f} | {best[0] / best[2]:.0%} | {med[0] / med[2]:.0%} | "
                     f"{compile_s[(dtype, batch)]:.0f} |")
        print(line)

if __name__ == "__main__":
    main()
