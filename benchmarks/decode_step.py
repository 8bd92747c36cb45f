"""One decode step of acik's model (with the engine's KV cache) against the bare matmul loop, at batch 1
and 8, fp32 and bf16: the least noisy view of "how close to the kernels" on a shared machine.

The bare loops (F.linear over the model's matrices; the same matrices prepacked for oneDNN) and the steps
(the model as loaded; optimized as `LLM.optimize` does) alternate, 12 times each; the table gives the best
times and the ratios of both the best and the median times. All work runs in a thread that follows a
throwaway thread (see benchmarks/decode.py, warm_kernels). `--compile` adds the step compiled with torch.compile (as
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
from acik.engine.openmp import release_openmp_threads
from acik.model.inference import PackedLinear, can_pack, optimize
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
    def copy() -> Transformer:
        model = Transformer(cfg).to(dtype)
        model.load_state_dict(base.state_dict())
        return model.eval()

    model, fast = copy(), copy()
    optimize(fast)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    packed = [PackedLinear(m) for m in linears] if can_pack(linears[0]) else []
    caches = {id(m): KVCache(cfg, 8, 64, 16, dtype=dtype) for m in (model, fast)}

    def forward(ids, pos, m=model):
        return m(ids, positions=pos, cache=caches[id(m)], last_only=True)

    compiled = torch.compile(forward, dynamic=True) if compile else None
    with torch.inference_mode():
        for batch in (1, 8):
            xs = {m.in_features: torch.randn(batch, m.in_features, dtype=dtype) for m in linears}
            ids, pos = torch.zeros(batch, 1, dtype=torch.long), torch.full((batch, 1), 20)

            def bare(xs=xs):
                for m in linears:
                    F.linear(xs[m.in_features], m.weight)

            def bare_packed(xs=xs):
                for m in packed:
                    m(xs[m.in_features])

            def step(fn=forward, m=model, ids=ids, pos=pos, batch=batch):
                caches[id(m)].select(0, batch, pos)
                fn(ids, pos, m)

            fns = {"bare": bare, "bare prepacked": bare_packed if packed else bare, "step": step,
                   "optimized step": lambda: step(m=fast)}
            compile_s = 0.0
            if compiled is not None:
                t0 = time.perf_counter()
                step(compiled)  # compiles (or reuses what an earlier pass compiled)
                compile_s = time.perf_counter() - t0
                fns["compiled step"] = lambda: step(compiled)
            out[(dtype, batch)] = (dict(zip(fns, alternate(list(fns.values())))), compile_s)


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
    release_openmp_threads()  # the jobs run in other threads; this one's idle OpenMP pool would slow them
    out: dict = {}
    compile_s: dict = {}
    for dtype in (torch.float32, torch.bfloat16):
        for target in ({}, out):  # the first pass only creates the kernels (and compiles)
            t = threading.Thread(target=job, args=(cfg, base, dtype, args.compile, target))
            t.start()
            t.join()
            if target is not out:
                compile_s.update({k: v[1] for k, v in target.items()})
    steps = ["step", "optimized step"] + (["compiled step"] if args.compile else [])
    head = ("| dtype | batch | bare ms (F.linear / prepacked) | "
            + " | ".join(f"{s} ms | {s} / bare, best (F.linear / prepacked) | median" for s in steps) + " |")
    if args.compile:
        head += " compile s (first call) |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for (dtype, batch), (times, _) in out.items():
        best = {k: min(ts) for k, ts in times.items()}
        med = {k: statistics.median(ts) for k, ts in times.items()}
        line = (f"| {str(dtype).removeprefix('torch.')} | {batch} | {best['bare'] * 1e3:.1f} / "
                f"{best['bare prepacked'] * 1e3:.1f} |")
        for s in steps:
            line += (f" {best[s] * 1e3:.1f} | {best['bare'] / best[s]:.0%} / {best['bare prepacked'] / best[s]:.0%} | "
                     f"{med['bare'] / med[s]:.0%} / {med['bare prepacked'] / med[s]:.0%} |")
        if args.compile:
            line += f" {compile_s[(dtype, batch)]:.0f} |"
        print(line)


if __name__ == "__main__":
    main()
