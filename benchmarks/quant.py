"""Quantization: quality (perplexity) and speed (batch-1 decode), each method against bf16, in one run.

Quality: the `recipes/small.yaml` model (BPE 8k, trained on wikitext-2's validation split only).
By default the benchmark uses `runs/small/model` when it exists; otherwise it trains that model
once, with the recipe's own commands, into .cache/bench-quant/small (reused on later runs):

    acik tokenizer train --input ../shared/data/wikitext-2/valid.txt --vocab-size 8192 --out CACHE/tokenizer
    acik train --recipe recipes/small.yaml --data ../shared/data/wikitext-2/valid.txt \
        --set tokenizer=CACHE/tokenizer --out CACHE/small

(`--data` pins the training text to valid.txt, so test.txt stays held out whatever the recipe lists.)
`--model DIR` scores another model directory. Perplexity is per token of the model's own BPE
tokenizer (not per byte or word), over ../shared/data/wikitext-2/test.txt (the first --eval-tokens
tokens; 0: all), in non-overlapping windows of --window tokens, for fp32, bf16, every acik method
(with its default skip list: int8 quantizes the head, the others keep it; plus int8 keeping its head when
the head is not tied to the embeddings; small.yaml's is tied, so it is never quantized), and the `hqq` package and
`bitsandbytes` NF4 as peers where they import (their weights are quantized by the package and
dequantized into the same model, which is what their CPU forward computes).

Every quantized model is quantized from the checkpoint's own (fp32) weights; what stays unquantized
(embeddings, norms, a skipped head) is then cast to bf16, like the bf16 baseline it is compared with.

Speed: the 124M-parameter random Llama of benchmarks/decode.py (12 layers, hidden 768, 12 heads,
4 kv heads, vocab 32000, intermediate 2048): batch-1 greedy decode tokens/s through acik's engine,
1 / the median gap between consecutive tokens over --repeats rounds (all models built first, then
measured round-robin so load changes hit every row alike), and the model's bytes in memory. acik's
rows run optimized for inference as `acik generate/chat/serve` run them (`LLM.optimize`: fused
projections, prepacked bf16/fp32 weights, one-kernel RMSNorm); one bf16 row runs as loaded.
for acik fp32/bf16, `transformers` fp32/bf16 `generate`, and every method (defaults first: they are
the headline rows), then the non-default head choices.

    python benchmarks/quant.py [--threads 2] [--new 32] [--repeats 3] [--eval-tokens 0] [--skip-quality] [--skip-speed]
        [--compile]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import acik
from acik.config import preset
from acik.llm import LLM
from acik.model import Transformer
from acik.quant import default_skip, quantization_summary, quantize_model

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ACIK_SHARED_DATA", ROOT.parent / "shared" / "data")) / "wikitext-2"
CACHE = ROOT / ".cache" / "bench-quant"
METHODS = [("int8", None), ("int4", 64), ("int4-hqq", 64), ("nf4", 64), ("mxfp4", None), ("w8a8", None)]
# Non-default head choices (method, group, skip, head), measured after the defaults: int8 keeping its head in
# bf16 (what vLLM needs), int4 with an int8 head (`--head int8`, llama.cpp's choice) and with an int4 one.
VARIANTS = [("int8", None, ["lm_head"], None), ("int4", 64, None, "int8"), ("int4", 64, [], None)]


def label(method: str, group: int | None, skip: list[str] | None = None, head: str | None = None) -> str:
    name = f"acik {method}" + (f"-g{group}" if group else "")
    if head:
        return name + f" (lm_head {head})"
    if skip is None or skip == default_skip(method):
        return name
    if not skip:
        return name + " (lm_head too)"
    return name + (" (lm_head kept)" if skip == ["lm_head"] else f" (--skip {','.join(skip)})")


def quantized(base: torch.nn.Module, method: str, group: int | None, skip: list[str] | None = None,
              head: str | None = None):
    """Quantize a copy of the fp32 `base`, then cast what stays unquantized to bf16 (the quantized
    layers keep their codes and scales as they are). -> (model, seconds spent quantizing)."""
    m = copy.deepcopy(base).float()
    t0 = time.perf_counter()
    quantize_model(m, method, group, skip, head)
    took = time.perf_counter() - t0
    return m.to(torch.bfloat16), took


def model_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen and not (t.ndim == 1 and t.dtype == torch.float32 and t.numel() < 1024):
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


# --- quality -------------------------------------------------------------------------------------

def acik_command(*args: str) -> None:
    """Run `acik ARGS` from the repository root with this checkout's sources."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "acik", *args]
    print("  $ acik " + " ".join(args), flush=True)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def small_model(train_steps: int | None) -> Path:
    """The recipes/small.yaml model: runs/small/model if trained there, else trained once into the cache."""
    runs = [ROOT / "runs" / "small", CACHE / "small"] if train_steps is None else [CACHE / f"small-{train_steps}steps"]
    for run in runs:
        if list((run / "model").glob("*.safetensors")):
            return run / "model"
    run = runs[-1]
    valid = str(DATA / "valid.txt")
    tok = CACHE / "tokenizer"
    print(f"no runs/small/model: training the recipes/small.yaml model once into {run} (about 10 minutes on a "
          "quiet 2-core CPU) ...", flush=True)
    if not (tok / "tokenizer.json").exists():
        acik_command("tokenizer", "train", "--input", valid, "--vocab-size", "8192", "--out", str(tok), "--quiet")
    steps = [] if train_steps is None else ["--max-steps", str(train_steps)]
    acik_command("train", "--recipe", str(ROOT / "recipes" / "small.yaml"), "--data", valid, "--set",
                 f"tokenizer={tok}", "--out", str(run), "--quiet", *steps)
    return run / "model"


def training_text(model_dir: Path) -> str:
    """What the model's manifest says it was trained on, and whether test.txt was among it."""
    try:
        recipe = json.loads((model_dir / "acik.json").read_text()).get("recipe") or {}
    except (OSError, ValueError):
        return "unknown training data (no acik.json)"
    data = recipe.get("data")
    files = data if isinstance(data, list) else [data]
    names = ", ".join(Path(str(f)).name for f in files if f)
    if any(str(f).endswith("test.txt") for f in files if f):
        return f"trained on {names}: test.txt is NOT held out, perplexities are optimistic"
    return f"trained on {names} (test.txt held out)"


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
    model_dir = Path(args.model) if args.model else small_model(args.train_steps)
    base = acik.load(model_dir, dtype="float32")
    ids = base.tokenizer.encode((DATA / "test.txt").read_text(encoding="utf-8"), add_special_tokens=False)
    ids = torch.tensor(ids[:args.eval_tokens] if args.eval_tokens else ids)
    print(f"quality model {model_dir} ({base.model.num_parameters() / 1e6:.1f}M params, vocab "
          f"{base.config.vocab_size}), {training_text(model_dir)}", flush=True)
    print(f"perplexity per BPE token over {len(ids):,} tokens of wikitext-2 test.txt, windows of {args.window}",
          flush=True)
    rows = []

    def add(name, model, note=""):
        t0 = time.perf_counter()
        ppl = perplexity(model, ids, args.window)
        rows.append((name, ppl, note))
        print(f"  {name:<26} ppl {ppl:.4f}  ({time.perf_counter() - t0:.0f}s)  {note}", flush=True)

    add("fp32", base.model)
    add("bf16", copy.deepcopy(base.model).to(torch.bfloat16))
    # A head tied to the embeddings is never quantized, so the head variants only differ when it is untied.
    variants = [] if base.config.tie_word_embeddings else [v for v in VARIANTS if v[0] == "int8"]
    for method, group, skip, head in [(m, g, None, None) for m, g in METHODS] + variants:
        if method not in args.methods:
            continue
        q, took = quantized(base.model, method, group, skip, head)
        s = quantization_summary(q)
        add(label(method, group, skip, head), q, f"{s['bits_per_weight']:.2f} bits/weight, quantized in {took:.1f}s")
    for name, fn, note in [("hqq package 4-bit g64", hqq_peer, "hqq defaults (optimize, early stop)"),
                           ("bitsandbytes nf4 b64", bnb_peer, "fp32 absmax, no double quant")]:
        try:
            add(name, dequantized_peer(base.model, fn).to(torch.bfloat16), note)
        except Exception as e:  # a peer that does not install or run on this CPU is reported, not fatal
            rows.append((name, float("nan"), f"unavailable: {type(e).__name__}: {str(e)[:80]}"))
    return rows


# --- speed ---------------------------------------------------------------------------------------

def rate_from_gaps(stamps: list[list[float]]) -> float:
    """Tokens/s from the median gap between consecutive tokens (prefill excluded): on a shared machine
    the median of many per-token times is far steadier than one total time."""
    gaps = [b - a for run in stamps for a, b in zip(run[1:], run[2:])]
    return 1.0 / statistics.median(gaps)


def acik_runner(model: torch.nn.Module, cfg, prompt: list[int], args, optimize: bool = True, compile: bool = False):
    """-> (run, close): `run()` decodes once through acik's engine and returns the time stamps
    (submit, then one per token). `optimize`: as `acik generate/chat/serve` run it (fused projections,
    prepacked weights: LLM.optimize); `compile`: `Engine(compile=True)`, what `--compile` adds."""
    from acik.engine import Engine, Request

    llm = LLM(model, cfg)
    if optimize:
        llm.optimize()
    engine = Engine(llm, max_batch_size=1, max_seq_len=len(prompt) + args.new + 8, compile=compile)

    def run() -> list[float]:
        t = [time.perf_counter()]
        for _ in engine.submit(Request(prompt_ids=prompt, max_new_tokens=args.new, temperature=0, ignore_eos=True)):
            t.append(time.perf_counter())
        return t

    return run, engine.close


def hf_runner(model: Transformer, cfg, dtype: torch.dtype, prompt: list[int], args):
    """-> (run, close) for `transformers`' `generate` on the same weights (the first stamp is the prompt)."""
    import transformers as tf
    from transformers.generation.streamers import BaseStreamer

    from acik.formats.hf import config_to_hf

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

    return run, lambda: None


def speed(args) -> list[tuple]:
    """Every model is built first, then measured round-robin (one decode of each per round, after a
    warm-up round), so a change in machine load hits all rows alike and the ratios stay fair."""
    torch.manual_seed(0)
    cfg = preset("124m")
    base = Transformer(cfg)
    base.init_weights(0)
    base.eval()
    prompt = torch.randint(0, cfg.vocab_size, (16,)).tolist()
    print(f"speed model: 124M Llama ({base.num_parameters() / 1e6:.1f}M params), prompt 16, {args.new} new tokens, "
          f"{args.repeats} rounds", flush=True)
    entries = []  # (name, (run, close), bytes, note)
    for dtype in (torch.float32, torch.bfloat16):
        m = copy.deepcopy(base).to(dtype)
        entries.append((f"acik {str(dtype)[6:]}", acik_runner(m, cfg, prompt, args), model_bytes(m), ""))
    m = copy.deepcopy(base).to(torch.bfloat16)
    entries.append(("acik bfloat16, not optimized", acik_runner(m, cfg, prompt, args, optimize=False), model_bytes(m),
                    "as `acik.load(dir)` gives it"))
    if not args.no_hf:
        for dtype in (torch.float32, torch.bfloat16):
            entries.append((f"transformers {str(dtype)[6:]}", hf_runner(base, cfg, dtype, prompt, args),
                            model_bytes(copy.deepcopy(base).to(dtype)), "`generate`, same weights"))
    for method, group, skip, head in [(m, g, None, None) for m, g in METHODS] + VARIANTS:
        if method not in args.methods:
            continue
        m, took = quantized(base, method, group, skip, head)
        s = quantization_summary(m)
        entries.append((label(method, group, skip, head), acik_runner(m, cfg, prompt, args), model_bytes(m),
                        f"{s['bits_per_weight']:.2f} bits/weight in quantized layers; quantized in {took:.1f}s"))
        print(f"  built {entries[-1][0]}: {entries[-1][3]}", flush=True)
    if args.compile:  # the headline rows again through a compiled engine (compiled in the warm-up round)
        for method, group, skip, head in [(None, None, None, None), ("int8", None, None, None),
                                          ("int4", 64, None, None), ("int4", 64, None, "int8"), ("int4", 64, [], None)]:
            if method and method not in args.methods:
                continue
            if method:
                m, _ = quantized(base, method, group, skip, head)
            else:
                m = copy.deepcopy(base).to(torch.bfloat16)
            name = (label(method, group, skip, head) if method else "acik bfloat16") + ", compiled"
            entries.append((name, acik_runner(m, cfg, prompt, args, compile=True), model_bytes(m), "`--compile`"))
    stamps: dict[str, list[list[float]]] = {name: [] for name, *_ in entries}
    try:
        for round_ in range(args.repeats + 1):  # round 0 warms up
            t0 = time.perf_counter()
            for name, (run, _), _, _ in entries:
                t = run()
                if round_:
                    stamps[name].append(t)
            print(f"  round {round_}{' (warm-up)' if not round_ else ''}: {time.perf_counter() - t0:.0f}s", flush=True)
    finally:
        for _, (_, close), _, _ in entries:
            close()
    rows = []
    for name, _, nbytes, note in entries:
        rows.append((name, rate_from_gaps(stamps[name]), nbytes, note))
        print(f"  {name:<34} {rows[-1][1]:7.1f} tok/s  {nbytes / 2**20:7.1f} MiB  {note}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new", type=int, default=32, help="new tokens per decode run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", help="model directory for the quality half (default: runs/small/model, or the "
                                    "recipes/small.yaml model trained once into .cache/bench-quant/small)")
    ap.add_argument("--train-steps", type=int, help="train the cached model for this many steps instead of the "
                                                    "recipe's (a smoke test of the training route)")
    ap.add_argument("--eval-tokens", type=int, default=0, help="score the first N test tokens (default 0: all)")
    ap.add_argument("--window", type=int, default=256, help="tokens per perplexity window (the recipe's seq_len)")
    ap.add_argument("--methods", default=",".join(m for m, _ in METHODS),
                    help="comma-separated acik methods to measure (default: all)")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers in the speed half")
    ap.add_argument("--compile", action="store_true",
                    help="add rows for a compiled engine (bf16, int8, int4, int4 with its head), as --compile runs")
    args = ap.parse_args()
    args.methods = args.methods.split(",")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.repeats} rounds; load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    q_rows = [] if args.skip_quality else quality(args)
    s_rows = [] if args.skip_speed else speed(args)
    print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    verdicts = []
    if q_rows:
        ppl = {n: p for n, p, _ in q_rows}
        bf16 = ppl["bf16"]
        print("\n| weights | perplexity | vs bf16 | notes |\n|---|---|---|---|")
        for name, p, note in q_rows:
            print(f"| {name} | {p:.4f} | {100 * (p / bf16 - 1):+.2f}% | {note} |")
        nan = float("nan")
        verdicts += [("int8 perplexity within 0.2% of bf16", ppl.get("acik int8", nan) <= 1.002 * bf16),
                     ("int4-hqq perplexity within 3% of bf16", ppl.get("acik int4-hqq-g64", nan) <= 1.03 * bf16),
                     ("int4-hqq perplexity better than int4",
                      ppl.get("acik int4-hqq-g64", nan) < ppl.get("acik int4-g64", nan))]
    if s_rows:
        rate = {n: r for n, r, _, _ in s_rows}
        bf16, hf_bf16 = rate["acik bfloat16"], rate.get("transformers bfloat16", float("nan"))
        print("\n| weights | decode tok/s | × acik bf16 | × transformers bf16 | MiB in memory | notes |")
        print("|---|---|---|---|---|---|")
        for name, r, nbytes, note in s_rows:
            print(f"| {name} | {r:.1f} | {r / bf16:.2f}× | {r / hf_bf16:.2f}× | {nbytes / 2**20:.1f} | {note} |")
        int8, int4 = rate.get("acik int8", float("nan")), rate.get("acik int4-g64", float("nan"))
        verdicts += [("int8 decode >= 2x acik bf16", int8 >= 2 * bf16),
                     ("int8 decode >= 3x transformers bf16", int8 >= 3 * hf_bf16),
                     ("int4 decode >= 4x transformers bf16", int4 >= 4 * hf_bf16)]
    if verdicts:
        print("\n" + "\n".join(f"- {'met' if ok else 'MISSED'}: {what} (default settings)" for what, ok in verdicts))
    bf16_compiled = rate.get("acik bfloat16, compiled", float("nan")) if s_rows else float("nan")
    for name, r, _, _ in s_rows:
        if name.endswith("compiled"):
            print(f"- {name}: {r / bf16:.2f}x acik bf16 (eager), {r / bf16_compiled:.2f}x acik bf16 compiled, "
                  f"{r / hf_bf16:.2f}x transformers bf16")

if __name__ == "__main__":
    main()
