"""Decode speed of acik's engine against transformers `generate`, the bare-matmul rate and the roofline.

One run, same weights, same threads: a 124M-parameter Llama-architecture model (12 layers, hidden 768,
12 heads, 4 kv heads, vocab 32000, intermediate 2048, random weights), batch-1 greedy decode in fp32 and
bf16; the bare-matmul rate (the model's weight matrices applied to one token's activations in a loop:
the most PyTorch's kernels allow), with `F.linear` and with the same matrices prepacked for oneDNN (the
kernel an optimized acik model uses); the read bandwidth (summing a 512 MB tensor) and the tokens/s it
implies when every weight is read once per token; and aggregate tokens/s with 8 concurrent requests.

The contenders are timed in turn within each repeat (acik, transformers, the bare loop, acik again, ...),
so that a machine whose speed drifts over minutes (a shared one) moves all of them alike.

    python benchmarks/decode.py [--threads 2] [--new 64] [--repeats 5] [--stat median|min] [--compile]

acik runs as loaded (`acik.load(dir)`) and optimized for inference (`acik.load(dir, optimize=True)`, what
`acik generate/chat/serve` do: fused projections, prepacked weights). `--compile` adds a row per dtype for
`Engine(compile=True)` on an optimized model (what `--compile` does), with the seconds its
first calls spent compiling.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections import defaultdict

import torch
import torch.nn.functional as F

from acik.config import preset
from acik.engine import Engine, Request
from acik.formats.hf import config_to_hf
from acik.llm import LLM
from acik.model.inference import PackedLinear, can_pack
from acik.model.transformer import Transformer

STAT = statistics.median  # --stat min: the best run, a steadier estimate on a shared machine


def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def read_bandwidth(repeats: int) -> float:
    x = torch.ones(128 * 1024 * 1024, dtype=torch.float32)  # 512 MB
    x.sum()
    return x.numel() * 4 / STAT([seconds(x.sum) for _ in range(repeats)])


def bare_steps(model: Transformer, n: int, packed: bool = False):
    """n decode steps that are nothing but the model's matrix-vector products (`packed`: the same matrices
    in oneDNN's layout, as acik.model.inference.PackedLinear holds them)."""
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    x = {w.shape[1]: torch.randn(1, w.shape[1], dtype=w.dtype) for w in weights}
    layers = [PackedLinear(m) if packed else m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not packed:
        layers = [lambda x, w=w: F.linear(x, w) for w in weights]

    def run():
        with torch.inference_mode():
            for _ in range(n):
                for w, layer in zip(weights, layers):
                    layer(x[w.shape[1]])

    return run


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
    the first thread to run parallel work was hit most often. The measurements therefore run in a fresh
    thread (the engine's loop has its own), after this throwaway one. OMP_WAIT_POLICY=passive (set before
    starting Python) also avoids it."""
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


def engine_runner(engine: Engine, prompt: list[int]):
    def run(n: int, copies: int = 1) -> None:
        handles = [engine.submit(Request(prompt_ids=prompt, max_new_tokens=n, temperature=0, ignore_eos=True))
                   for _ in range(copies)]
        for h in handles:
            for _ in h:
                pass

    return run


def copy_of(base: Transformer, cfg, dtype: torch.dtype) -> Transformer:
    model = Transformer(cfg).to(dtype)
    model.load_state_dict(base.state_dict())
    return model.eval()


def measure(name: str, base: Transformer, cfg, prompt: list[int], args, bw: float) -> list[tuple]:
    dtype = getattr(torch, name)
    model = copy_of(base, cfg, dtype)
    warm_kernels(model, args)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    roofline = bw / weight_bytes
    labels = [name, f"{name}, optimized"] + ([f"{name}, compiled"] if args.compile else [])

    def llm(label: str) -> LLM:
        if label == name:
            return LLM(model, cfg)
        out = LLM(copy_of(base, cfg, dtype), cfg)
        out.optimize()
        warm_kernels(out.model, args)
        return out

    engines = {label: Engine(llm(label), max_batch_size=args.concurrent, max_seq_len=args.prompt + args.new + 8,
                             compile=label.endswith("compiled"))
               for label in labels}
    runs = {label: engine_runner(engine, prompt) for label, engine in engines.items()}
    # First calls: a compiled engine compiles its batch-1 and batch-N graphs here.
    def first_calls(run) -> float:
        return seconds(lambda: (run(2), run(2, args.concurrent)))

    first = {label: first_calls(run) for label, run in runs.items()}
    compile_s = {label: first[label] - first_calls(run) if label.endswith("compiled") else 0.0
                 for label, run in runs.items()}

    # Each contender's time for `args.new` tokens and for 1, per repeat, in turn.
    t: dict = defaultdict(list)
    bare10 = bare_steps(model, 10)
    packed10 = bare_steps(model, 10, packed=True) if can_pack(model.lm_head) else None
    ids = torch.tensor([prompt])
    ref = None if args.no_hf else hf_model(model, cfg, dtype)

    def hf(n: int) -> None:
        with torch.no_grad():
            ref.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    bare10()
    if ref is not None:
        hf(2)
    for _ in range(args.repeats):
        for label, run in runs.items():
            t[label, 1].append(seconds(lambda run=run: run(1)))
            t[label, args.new].append(seconds(lambda run=run: run(args.new)))
            t[label, "concurrent"].append(seconds(lambda run=run: run(args.new, args.concurrent)))
        if ref is not None:
            t["hf", 1].append(seconds(lambda: hf(1)))
            t["hf", args.new].append(seconds(lambda: hf(args.new)))
        t["bare", 10].append(seconds(bare10))
        if packed10 is not None:
            t["packed", 10].append(seconds(packed10))
    for engine in engines.values():
        engine.close()

    def rate(who: str) -> float:  # (time for n tokens - time for 1 token) / (n - 1): prefill does not count
        if (who, 1) not in t:
            return float("nan")
        return (args.new - 1) / (STAT(t[who, args.new]) - STAT(t[who, 1]))

    bare = 10 / STAT(t["bare", 10])
    packed = 10 / STAT(t["packed", 10]) if packed10 is not None else float("nan")
    theirs = rate("hf")
    return [(label, rate(label), theirs, bare, packed, roofline,
             args.concurrent * args.new / STAT(t[label, "concurrent"]), compile_s[label]) for label in labels]


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
    print(f"| acik | tok/s | transformers tok/s | acik / transformers | bare-matmul tok/s (F.linear / prepacked) "
          f"| acik / bare (F.linear / prepacked) | transformers / bare (F.linear) | roofline tok/s "
          f"| {args.concurrent} concurrent: aggregate tok/s (× single) | compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, ours, theirs, bare, packed, roofline, conc, compile_s in rows:
        print(f"| {name} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f}× | {bare:.1f} / {packed:.1f} "
              f"| {ours / bare:.0%} / {ours / packed:.0%} | {theirs / bare:.0%} | {roofline:.1f} "
              f"| {conc:.1f} ({conc / ours:.1f}×) | {compile_s:.0f} |")


if __name__ == "__main__":
    # Measurements run off the main thread, as the engine does (see warm_kernels).
    worker = threading.Thread(target=main)
    worker.start()
    worker.join()
