"""One decode step of acik's model (with the engine's KV cache) against the bare matmul loop, at batch 1
and 8, fp32 and bf16: the least noisy view of "how close to the kernels" on a shared machine.

Best of 8 steps; all work runs in a thread whose kernels were created by an earlier, throwaway thread
(see benchmarks/decode.py, warm_kernels). `--compile` adds the step compiled with torch.compile (as
`Engine(compile=True)` does), and the seconds its first call took to compile.

    PYTHONPATH=src python benchmarks/decode_step.py [threads] [--compile]
"""

from __future__ import annotations

import argparse
import threading
import time

import torch
import torch.nn.functional as F
from timing import run_times

from acik.config import preset
from acik.engine.cache import KVCache
from acik.model.transformer import Transformer


def best_time(fn, n: int = 8) -> float:
    return min(run_times(fn, n))


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

            row = [best_time(bare), best_time(step)]
            if compiled is not None:
                t0 = time.perf_counter()
                step(compiled)  # compiles (or reuses what an earlier pass compiled)
                compile_s = time.perf_counter() - t0
                row += [best_time(lambda: step(compiled)), compile_s]
            out[(dtype, batch)] = row


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
            if target is not out and args.compile:
                compile_s.update({k: v[3] for k, v in target.items()})
    head = f"| dtype | batch | bare-matmul ms | acik step ms | acik / bare | acik tok/s ({args.threads} threads) |"
    if args.compile:
        head += " compiled step ms | compiled / bare | compiled tok/s | compile s (first call) |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for (dtype, batch), row in out.items():
        bare, step = row[:2]
        line = (f"| {str(dtype).removeprefix('torch.')} | {batch} | {bare * 1e3:.1f} | {step * 1e3:.1f} | "
                f"{bare / step:.0%} | {batch / step:.1f} |")
        if args.compile:
            comp = row[2]
            line += f" {comp * 1e3:.1f} | {bare / comp:.0%} | {batch / comp:.1f} | {compile_s[(dtype, batch)]:.0f} |"
        print(line)


if __name__ == "__main__":
    main()
