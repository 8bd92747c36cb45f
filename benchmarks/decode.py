"""Decode speed of acik's engine against transformers `generate`, the bare-matmul rate and the roofline.

One run, same weights, same threads: a 124M-parameter Llama-architecture model (12 layers, hidden 768,
12 heads, 4 kv heads, vocab 32000, intermediate 2048, random weights), batch-1 greedy decode in fp32 and
bf16; the bare-matmul rate (the model's weight matrices applied to one token's activations in a loop:
the most PyTorch's kernels allow); the read bandwidth (summing a 512 MB tensor) and the tokens/s it
implies when every weight is read once per token; and aggregate tokens/s with 8 concurrent requests.

    python benchmarks/decode.py [--threads 2] [--new 64] [--repeats 5] [--stat median|min] [--compile]

`--compile` adds a row per dtype for `Engine(compile=True)`, with the seconds its first calls spent compiling.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import torch
import torch.nn.functional as F
from timing import run_times

from acik.config import preset
from acik.engine import Engine, Request
from acik.hf import config_to_hf
from acik.llm import LLM
from acik.model.transformer import Transformer

STAT = statistics.median  # --stat min: the best run, a steadier estimate on a shared machine


def median_time(fn, repeats: int) -> float:
    return STAT(run_times(fn, repeats))


def read_bandwidth(repeats: int) -> float:
    x = torch.ones(128 * 1024 * 1024, dtype=torch.float32)  # 512 MB
    t = median_time(lambda: x.sum(), repeats)
    return x.numel() * 4 / t


def bare_matmul_rate(model: Transformer, repeats: int) -> float:
    """Tokens/s if a decode step were nothing but the model's matrix-vector products."""
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    x = {w.shape[1]: torch.randn(1, w.shape[1], dtype=w.dtype) for w in weights}

    def step():
        for w in weights:
            F.linear(x[w.shape[1]], w)

    n = 10
    with torch.inference_mode():
        return n / median_time(lambda: [step() for _ in range(n)], repeats)


def in_thread(fn):
    """fn() in a new thread of its own (see warm_kernels), returning its result."""
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def warm_kernels(model: Transformer, args) -> None:
    """Run every shape the run uses once, in a throwaway thread.

    On this shared 2-core container, while another process keeps a core busy, a thread's OpenMP team can
    get stuck running 5-20x slower than normal: its two threads spin-wait for each other at every
    parallel region and are rarely scheduled together, so each region waits out a scheduler tick (bf16
    matmuls show it most; single-threaded fp32 matrix-vector products do not). Which thread it hits varies;
    the first thread to run parallel work was hit most often. Each measurement therefore runs in a fresh
    thread (the engine's loop has its own), after this throwaway one. On a quiet machine none of this
    matters; OMP_WAIT_POLICY=passive (set before starting Python) also avoids it."""
    def run():
        with torch.inference_mode():
            for b in range(1, args.concurrent + 1):
                model(torch.zeros(b, 1, dtype=torch.long))
            model(torch.zeros(1, args.prompt, dtype=torch.long))

    in_thread(run)


def hf_model(model: Transformer, cfg, dtype: torch.dtype, device: str | torch.device = "cpu"):
    import transformers as tf

    hf_cfg = tf.LlamaConfig(**{k: v for k, v in config_to_hf(cfg).items() if k not in ("architectures",)})
    ref = tf.LlamaForCausalLM(hf_cfg).eval()
    ref.load_state_dict(model.state_dict(), strict=False)
    ref.generation_config.eos_token_id = None
    ref.generation_config.pad_token_id = 0
    return ref.to(device=device, dtype=dtype)


def engine_rates(model: Transformer, cfg, prompt: list[int], args, compile: bool) -> tuple[float, float, float]:
    """Batch-1 decode tok/s, aggregate tok/s with `args.concurrent` requests, and the seconds spent compiling
    (0 in eager mode: the first calls of a compiled engine compile its batch-1 and batch-N graphs)."""
    engine = Engine(LLM(model, cfg), max_batch_size=args.concurrent, max_seq_len=args.prompt + args.new + 8,
                    compile=compile)

    def run(n: int, copies: int = 1) -> None:
        handles = [engine.submit(Request(prompt_ids=prompt, max_new_tokens=n, temperature=0, ignore_eos=True))
                   for _ in range(copies)]
        for h in handles:
            for _ in h:
                pass

    t0 = time.perf_counter()
    run(2)
    run(2, args.concurrent)
    first_calls = time.perf_counter() - t0
    # Decode rate: (time for n tokens - time for 1 token) / (n - 1), so prefill does not count.
    t_first = median_time(lambda: run(1), args.repeats)
    ours = (args.new - 1) / (median_time(lambda: run(args.new), args.repeats) - t_first)
    concurrent = args.concurrent * args.new / median_time(lambda: run(args.new, args.concurrent),
                                                          max(1, args.repeats // 2))
    compile_s = 0.0
    if compile:  # what the first calls took beyond the same calls once compiled
        t0 = time.perf_counter()
        run(2)
        run(2, args.concurrent)
        compile_s = first_calls - (time.perf_counter() - t0)
    engine.close()
    return ours, concurrent, compile_s


def measure(name: str, base: Transformer, cfg, prompt: list[int], args, bw: float) -> list[tuple]:
    dtype = getattr(torch, name)
    model = Transformer(cfg).to(dtype)
    model.load_state_dict(base.state_dict())
    model.eval()
    warm_kernels(model, args)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    roofline = bw / weight_bytes
    bare = in_thread(lambda: bare_matmul_rate(model, args.repeats))
    runs = [(name, *engine_rates(model, cfg, prompt, args, compile=False))]
    if args.compile:
        runs.append((f"{name}, compiled", *engine_rates(model, cfg, prompt, args, compile=True)))
    theirs = float("nan")
    if not args.no_hf:
        ref = hf_model(model, cfg, dtype)
        ids = torch.tensor([prompt])

        def hf(n: int) -> None:
            with torch.no_grad():
                ref.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)

        theirs = in_thread(lambda: (args.new - 1) / (median_time(lambda: hf(args.new), args.repeats)
                                                     - median_time(lambda: hf(1), args.repeats)))
    return [(label, ours, theirs, bare, roofline, concurrent, compile_s)
            for label, ours, concurrent, compile_s in runs]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new", type=int, default=64, help="new tokens per request")
    ap.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--concurrent", type=int, default=8)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--compile", action="store_true", help="add rows for Engine(compile=True)")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers")
    ap.add_argument("--stat", choices=["median", "min"], default="median")
    args = ap.parse_args()
    global STAT
    STAT = min if args.stat == "min" else statistics.median
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = preset("124m")
    base = Transformer(cfg)
    base.init_weights(0)
    base.eval()
    prompt = torch.randint(0, cfg.vocab_size, (args.prompt,)).tolist()
    bw = read_bandwidth(args.repeats)
    print(f"124M Llama ({base.num_parameters() / 1e6:.1f}M params), {args.threads} threads, "
          f"prompt {args.prompt}, {args.new} new tokens, {args.stat} of {args.repeats}")
    print(f"read bandwidth (sum of 512 MB fp32): {bw / 1e9:.1f} GB/s")
    rows = [row for name in args.dtypes.split(",") for row in measure(name, base, cfg, prompt, args, bw)]
    print()
    print(f"| dtype | acik tok/s | transformers tok/s | acik / transformers | bare-matmul tok/s | acik / bare "
          f"| transformers / bare | roofline tok/s | {args.concurrent} concurrent: aggregate tok/s (× single) "
          f"| compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, ours, theirs, bare, roofline, conc, compile_s in rows:
        print(f"| {name} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f}× | {bare:.1f} | {ours / bare:.0%} "
              f"| {theirs / bare:.0%} | {roofline:.1f} | {conc:.1f} ({conc / ours:.1f}×) | {compile_s:.0f} |")


if __name__ == "__main__":
    # Measurements run off the main thread, as the engine does (see warm_kernels).
    worker = threading.Thread(target=main)
    worker.start()
    worker.join()
