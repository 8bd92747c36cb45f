"""Quantization: quality (perplexity) and speed (batch-1 decode), each method against bf16, in one run.

Quality: a small byte-level Llama trained on wikitext-2 (the benchmark trains it once and caches it
under .cache/bench-quant/; pass --model DIR to use another model directory, e.g. the one
`recipes/small.yaml` trains), perplexity per byte token on the first --eval-bytes bytes of
../shared/data/wikitext-2/test.txt for fp32, bf16, every acik method, and the `hqq` package and
`bitsandbytes` NF4 as peers where they import (their weights are quantized by the package and
dequantized into the same model, which is exactly what their CPU forward computes).

Speed: the 124M-parameter random Llama of benchmarks/decode.py (12 layers, hidden 768, 12 heads,
4 kv heads, vocab 32000, intermediate 2048): batch-1 greedy decode tokens/s through acik's engine,
1 / the median gap between consecutive tokens over --repeats runs, and the model's bytes in memory,
for acik fp32/bf16, `transformers` fp32/bf16 `generate`, and every method.

    python benchmarks/quant.py [--threads 2] [--new 32] [--repeats 3] [--skip-quality] [--skip-speed]
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from timing import run_times

import acik
from acik.config import ModelConfig, preset
from acik.llm import LLM
from acik.model import Transformer
from acik.quant import quantization_summary, quantize_model

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ACIK_SHARED_DATA", ROOT.parent / "shared" / "data")) / "wikitext-2"
CACHE = ROOT / ".cache" / "bench-quant"
METHODS = [("int8", None), ("int4", 64), ("int4-hqq", 64), ("nf4", 64), ("mxfp4", None), ("w8a8", None)]


def median_time(fn, repeats: int) -> float:
    return statistics.median(run_times(fn, repeats))


def model_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen and not (t.ndim == 1 and t.dtype == torch.float32 and t.numel() < 1024):
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


# --- quality -------------------------------------------------------------------------------------

def train_small(out: Path, steps: int, seed: int = 0) -> Path:
    """A 4-layer, 128-wide byte-level Llama trained on wikitext-2's validation split (the test split
    is what we score). Written as an acik model directory, so it is a real checkpoint to quantize."""
    from acik.tokenizer import load_tokenizer, save_byte_tokenizer

    tok_dir = save_byte_tokenizer(CACHE / "tokenizer")
    tok = load_tokenizer(tok_dir)
    ids = torch.tensor(tok.encode((DATA / "valid.txt").read_text(encoding="utf-8"), add_special_tokens=False))
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      torch_dtype="float32")
    torch.manual_seed(seed)
    model = Transformer(cfg)
    model.init_weights(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    gen = torch.Generator().manual_seed(seed)
    seq, batch = 128, 8
    t0 = time.perf_counter()
    for step in range(steps):
        lr = 3e-3 * min(1.0, (step + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(ids) - seq - 1, (batch,), generator=gen)
        x = torch.stack([ids[s:s + seq] for s in starts])
        y = torch.stack([ids[s + 1:s + seq + 1] for s in starts])
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == steps - 1:
            print(f"  train step {step:4d}  loss {loss.item():.3f}  {time.perf_counter() - t0:.0f}s", flush=True)
    LLM(model.eval(), cfg, tokenizer_dir=tok_dir).save(out, seed=seed, extra={
        "trained_by": "benchmarks/quant.py", "data": "wikitext-2 valid.txt", "steps": steps,
        "batch_tokens": seq * batch})
    return out


@torch.no_grad()
def perplexity(model: torch.nn.Module, ids: torch.Tensor, window: int) -> float:
    nll, n = 0.0, 0
    for s in range(0, len(ids) - 1, window):
        chunk = ids[s:s + window + 1]
        if len(chunk) < 2:
            break
        logits = model(chunk[None, :-1]).float()
        nll += F.cross_entropy(logits[0], chunk[1:], reduction="sum").item()
        n += len(chunk) - 1
    return math.exp(nll / n)


def dequantized_peer(base: torch.nn.Module, quantize_weight) -> torch.nn.Module:
    """A copy of `base` whose linears (except lm_head) hold a peer library's dequantized weights."""
    model = copy.deepcopy(base)
    for name, m in model.named_modules():
        if type(m) is torch.nn.Linear and name != "lm_head":
            with torch.no_grad():
                m.weight.copy_(quantize_weight(m).to(m.weight.dtype))
    return model


def hqq_peer(linear: torch.nn.Linear) -> torch.Tensor:
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    cfg = BaseQuantizeConfig(nbits=4, group_size=64, axis=1)
    layer = HQQLinear(copy.deepcopy(linear), quant_config=cfg, compute_dtype=torch.float32, device="cpu")
    return layer.dequantize()


def bnb_peer(linear: torch.nn.Linear) -> torch.Tensor:
    import bitsandbytes.functional as bnbf

    packed, state = bnbf.quantize_4bit(linear.weight.detach().float(), blocksize=64, quant_type="nf4")
    return bnbf.dequantize_4bit(packed, state)


def quality(args) -> list[tuple]:
    model_dir = Path(args.model) if args.model else CACHE / f"small-{args.train_steps}"
    if not (model_dir / "config.json").exists():
        print(f"training the quality model ({args.train_steps} steps) into {model_dir} ...", flush=True)
        train_small(model_dir, args.train_steps)
    base = acik.load(model_dir, dtype="float32")
    text = (DATA / "test.txt").read_text(encoding="utf-8")[:args.eval_bytes]
    ids = torch.tensor(base.tokenizer.encode(text, add_special_tokens=False))
    print(f"quality model {model_dir} ({base.model.num_parameters() / 1e6:.1f}M params), "
          f"{len(ids)} test tokens, window {args.window}", flush=True)
    rows = []

    def add(name, model, note=""):
        t0 = time.perf_counter()
        ppl = perplexity(model, ids, args.window)
        rows.append((name, ppl, note))
        print(f"  {name:<22} ppl {ppl:.4f}  ({time.perf_counter() - t0:.0f}s)", flush=True)

    add("fp32", base.model)
    add("bf16", copy.deepcopy(base.model).to(torch.bfloat16))
    for method, group in METHODS:
        t0 = time.perf_counter()
        q = quantize_model(copy.deepcopy(base.model), method, group)
        s = quantization_summary(q)
        add(f"acik {method}" + (f"-g{group}" if group else ""), q,
            f"{s['bits_per_weight']:.2f} bits/weight, quantized in {time.perf_counter() - t0:.1f}s")
    for name, fn, note in [("hqq package 4-bit g64", hqq_peer, "hqq defaults: optimize, round_zero"),
                           ("bitsandbytes nf4 b64", bnb_peer, "fp32 absmax, no double quant")]:
        try:
            add(name, dequantized_peer(base.model, fn), note)
        except Exception as e:  # a peer that does not install or run on this CPU is reported, not fatal
            rows.append((name, float("nan"), f"unavailable: {type(e).__name__}: {str(e)[:80]}"))
    return rows


# --- speed ---------------------------------------------------------------------------------------

def rate_from_gaps(stamps: list[list[float]]) -> float:
    """Tokens/s from the median gap between consecutive tokens (prefill excluded): on a shared machine
    the median of many per-token times is far steadier than one total time."""
    gaps = [b - a for run in stamps for a, b in zip(run[1:], run[2:])]
    return 1.0 / statistics.median(gaps)


def decode_rate(model: torch.nn.Module, cfg, prompt: list[int], args) -> float:
    from acik.engine import Engine, Request

    engine = Engine(LLM(model, cfg), max_batch_size=1, max_seq_len=len(prompt) + args.new + 8)

    def run() -> list[float]:
        t = [time.perf_counter()]
        for _ in engine.submit(Request(prompt_ids=prompt, max_new_tokens=args.new, temperature=0, ignore_eos=True)):
            t.append(time.perf_counter())
        return t

    try:
        run()  # warm-up
        return rate_from_gaps([run() for _ in range(args.repeats)])
    finally:
        engine.close()


def hf_rate(model: Transformer, cfg, dtype: torch.dtype, prompt: list[int], args) -> float:
    import transformers as tf
    from transformers.generation.streamers import BaseStreamer

    from acik.hf import config_to_hf

    hf_cfg = tf.LlamaConfig(**{k: v for k, v in config_to_hf(cfg).items() if k != "architectures"})
    ref = tf.LlamaForCausalLM(hf_cfg).eval()
    ref.load_state_dict(model.state_dict(), strict=False)
    ref.generation_config.eos_token_id = None
    ref.generation_config.pad_token_id = 0
    ref = ref.to(dtype)
    ids = torch.tensor([prompt])

    class Stamps(BaseStreamer):  # the first put() is the prompt, then one per new token
        def __init__(self):
            self.t = []

        def put(self, value):
            self.t.append(time.perf_counter())

        def end(self):
            pass

    def run() -> list[float]:
        s = Stamps()
        with torch.no_grad():
            ref.generate(ids, max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False, streamer=s)
        return s.t

    run()
    return rate_from_gaps([run() for _ in range(args.repeats)])


def speed(args) -> list[tuple]:
    torch.manual_seed(0)
    cfg = preset("124m")
    base = Transformer(cfg)
    base.init_weights(0)
    base.eval()
    prompt = torch.randint(0, cfg.vocab_size, (16,)).tolist()
    print(f"speed model: 124M Llama ({base.num_parameters() / 1e6:.1f}M params), prompt 16, {args.new} new tokens",
          flush=True)
    rows = []

    def add(name, rate, nbytes, note=""):
        rows.append((name, rate, nbytes, note))
        print(f"  {name:<34} {rate:7.1f} tok/s  {nbytes / 2**20:7.1f} MiB  {note}", flush=True)

    for dtype in (torch.float32, torch.bfloat16):
        m = copy.deepcopy(base).to(dtype)
        add(f"acik {str(dtype)[6:]}", decode_rate(m, cfg, prompt, args), model_bytes(m))
    if not args.no_hf:
        for dtype in (torch.float32, torch.bfloat16):
            add(f"transformers {str(dtype)[6:]}", hf_rate(base, cfg, dtype, prompt, args),
                model_bytes(copy.deepcopy(base).to(dtype)))
    for method, group in METHODS:
        for skip, dtype in ((["lm_head"], torch.float32), ([], torch.float32)):
            if method not in ("int8", "int4") and not skip:
                continue  # int4-hqq runs the int4 kernel; nf4/mxfp4/w8a8 gain nothing at batch 1
            m = copy.deepcopy(base).to(dtype)
            t0 = time.perf_counter()
            quantize_model(m, method, group, skip=skip)
            took = time.perf_counter() - t0
            label = f"acik {method}" + (f"-g{group}" if group else "") + (" (lm_head too)" if not skip else "")
            s = quantization_summary(m)
            add(label, decode_rate(m, cfg, prompt, args), model_bytes(m),
                f"{s['bits_per_weight']:.2f} bits/weight in quantized layers; quantized in {took:.1f}s")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new", type=int, default=32, help="new tokens per decode run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", help="model directory for the quality half (default: train and cache one)")
    ap.add_argument("--train-steps", type=int, default=200)
    ap.add_argument("--eval-bytes", type=int, default=40000)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers in the speed half")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats}", flush=True)
    q_rows = [] if args.skip_quality else quality(args)
    s_rows = [] if args.skip_speed else speed(args)
    if q_rows:
        bf16 = next(p for n, p, _ in q_rows if n == "bf16")
        print("\n| weights | perplexity | vs bf16 | notes |\n|---|---|---|---|")
        for name, ppl, note in q_rows:
            print(f"| {name} | {ppl:.4f} | {100 * (ppl / bf16 - 1):+.2f}% | {note} |")
    if s_rows:
        rate = {n: r for n, r, _, _ in s_rows}
        bf16, hf_bf16 = rate["acik bfloat16"], rate.get("transformers bfloat16", float("nan"))
        print("\n| weights | decode tok/s | × acik bf16 | × transformers bf16 | MiB in memory | notes |")
        print("|---|---|---|---|---|---|")
        for name, r, nbytes, note in s_rows:
            print(f"| {name} | {r:.1f} | {r / bf16:.2f}× | {r / hf_bf16:.2f}× | {nbytes / 2**20:.1f} | {note} |")


if __name__ == "__main__":
    main()
