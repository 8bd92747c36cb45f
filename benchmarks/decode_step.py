"""One decode step of acik's model (with the engine's KV cache) against the bare matmul loop, at batch 1
and 8, fp32 and bf16: the least noisy view of "how close to the kernels" on a shared machine.

Best of 8 steps; all work runs in a thread whose kernels were created by an earlier, throwaway thread
(see benchmarks/decode.py, warm_kernels).

    PYTHONPATH=src python benchmarks/decode_step.py [threads]
"""

from __future__ import annotations

import sys
import threading

import torch
import torch.nn.functional as F
from timing import run_times

from acik.config import preset
from acik.engine.cache import KVCache
from acik.model.transformer import Transformer


def best_time(fn, n: int = 8) -> float:
    return min(run_times(fn, n))


def job(cfg, base: Transformer, dtype: torch.dtype, out: dict) -> None:
    model = Transformer(cfg).to(dtype)
    model.load_state_dict(base.state_dict())
    model.eval()
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    cache = KVCache(cfg, 8, 64, 16, dtype=dtype)
    with torch.inference_mode():
        for batch in (1, 8):
            xs = {w.shape[1]: torch.randn(batch, w.shape[1], dtype=dtype) for w in weights}
            ids, pos = torch.zeros(batch, 1, dtype=torch.long), torch.full((batch, 1), 20)

            def bare(xs=xs):
                for w in weights:
                    F.linear(xs[w.shape[1]], w)

            def step(ids=ids, pos=pos, batch=batch):
                cache.select(0, batch, pos)
                model(ids, positions=pos, cache=cache, last_only=True)

            out[(dtype, batch)] = (best_time(bare), best_time(step))


def main() -> None:
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    torch.set_num_threads(threads)
    cfg = preset("124m")
    base = Transformer(cfg)
    base.init_weights(0)
    base.eval()
    out: dict = {}
    for dtype in (torch.float32, torch.bfloat16):
        for target in ({}, out):  # the first pass only creates the kernels
            t = threading.Thread(target=job, args=(cfg, base, dtype, target))
            t.start()
            t.join()
    print(f"| dtype | batch | bare-matmul ms | acik step ms | acik / bare | acik tok/s ({threads} threads) |")
    print("|---|---|---|---|---|---|")
    for (dtype, batch), (bare, step) in out.items():
        print(f"| {str(dtype).removeprefix('torch.')} | {batch} | {bare * 1e3:.1f} | {step * 1e3:.1f} | "
              f"{bare / step:.0%} | {batch / step:.1f} |")


if __name__ == "__main__":
    main()
