"""Training benchmarks on this CPU, acik against transformers in the same run.

(a) Validation loss on tinyshakespeare (byte level) after a fixed wall-clock budget: acik's
    `recipes/tinyshakespeare.yaml` against transformers' GPT2LMHeadModel in a plain PyTorch loop with
    nanoGPT's published CPU settings (4 layers, 4 heads, 128 wide, context 64, batch 12, lr 1e-3,
    AdamW beta2 0.99, warmup 100 then cosine to 1e-4, no dropout). nanoGPT's published figure for its
    2000-iteration CPU run is 1.88 (char level; the text is ASCII, so bytes are characters).
    Both get the same budget; the step count of each is set from its own measured step time, so each
    finishes its learning-rate schedule in about the budget (neither run is cut short; the table shows the
    seconds each took). Both are scored on the same validation windows.
(b) Training tokens/s (forward, backward, AdamW step) of one Llama-architecture config in acik and in
    transformers' LlamaForCausalLM, both in a plain loop, median of several alternating runs; in fp32 and
    under bf16 autocast, each side against the other at the same precision.
(c) With --moe-run RUN (a run of recipes/small-moe.yaml): the elastic-experts table, validation
    perplexity and forward tokens/s with all experts, the most used half (acik moe-shrink), and top-1.

    python benchmarks/train.py [--budget 180] [--threads 2] [--compile] [--fp32-only] [--skip-a] [--skip-b]
                               [--moe-run RUN]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
SHARED = Path(os.environ.get("ACIK_SHARED_DATA", REPO.parent / "shared" / "data"))
TEXT = SHARED / "tinyshakespeare.txt"


def val_windows(val: np.ndarray, seq_len: int = 64, n: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    offs = torch.randint(0, len(val) - seq_len - 1, (n,), generator=g).tolist()
    rows = torch.from_numpy(np.stack([val[o:o + seq_len + 1].astype(np.int64) for o in offs]))
    return rows[:, :-1], rows[:, 1:]


@torch.no_grad()
def val_loss(logits_fn, x: torch.Tensor, y: torch.Tensor) -> float:
    total = 0.0
    for i in range(0, len(x), 50):
        logits = logits_fn(x[i:i + 50]).float()
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[i:i + 50].reshape(-1), reduction="sum").item()
    return total / y.numel()


def nanogpt_lr(step: int, max_steps: int, lr: float = 1e-3, min_lr: float = 1e-4, warmup: int = 100) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    ratio = min((step - warmup) / max(max_steps - warmup, 1), 1.0)
    return min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (lr - min_lr)


def gpt2_run(train: np.ndarray, steps: int, seed: int = 1337):
    """nanoGPT's CPU settings on transformers' GPT-2, plain loop. Returns (model, steps done, seconds)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=260, n_positions=64, n_embd=128, n_layer=4, n_head=4, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    step = 0
    step_times = []
    while step < steps:
        t_step = time.perf_counter()
        offs = torch.randint(0, len(train) - 65, (12,), generator=g).tolist()
        rows = torch.from_numpy(np.stack([train[o:o + 65].astype(np.int64) for o in offs]))
        for group in opt.param_groups:
            group["lr"] = nanogpt_lr(step, steps)
        logits = model(rows[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        step_times.append(time.perf_counter() - t_step)
    return model.eval(), step, time.perf_counter() - t0, step_times


def acik_run(steps: int, run_dir: Path, log_every: int = 50):
    import acik
    from acik.recipe import load_recipe
    from acik.train.loop import TrainSettings
    from acik.train.pretrain import pretrain

    s = load_recipe(TrainSettings, REPO / "recipes" / "tinyshakespeare.yaml", data=str(TEXT), max_steps=steps,
                    progress=False)
    s.checkpoint_every, s.eval_every, s.log_every = 0, 0, log_every
    t0 = time.perf_counter()
    result = pretrain(s, run_dir, command=["benchmarks/train.py"])
    return acik.load(run_dir / "model").model.eval(), result.step, time.perf_counter() - t0, s


def bench_a(budget: float) -> list[tuple]:
    from acik.train.data import load_data

    data = load_data(TEXT)  # byte level, last 10% held out: the same split both models train and score on
    x, y = val_windows(data.val)
    with tempfile.TemporaryDirectory() as tmp:
        # Calibrate: steps each side can do in the budget. acik's fixed costs (data loading, export,
        # report) come out of its budget; its step time comes from its own metrics log.
        # Per-step times are medians over short windows, so a burst of load during calibration does not
        # shrink the step count (the runs would then finish far inside the budget).
        _, n, secs, s = acik_run(100, Path(tmp) / "cal", log_every=5)
        import json

        log = [json.loads(line) for line in (Path(tmp) / "cal" / "metrics.jsonl").read_text().splitlines()]
        walls = sorted((r["step"], r["wall_s"]) for r in log if r["kind"] == "train" and r["step"] >= 5)
        step_s = statistics.median((w1 - w0) / (s1 - s0) for (s0, w0), (s1, w1) in zip(walls, walls[1:]))
        fixed = max(secs - walls[-1][1], 0.0)  # data loading, export, report
        acik_steps = int((budget - fixed) / step_s * 0.97)
        gpt_step_s = statistics.median(gpt2_run(data.train, 100)[3][5:])
        gpt_steps = int(budget / gpt_step_s * 0.97)
        print(f"calibrated: acik {acik_steps} steps ({step_s * 1e3:.0f} ms/step), GPT-2 {gpt_steps} steps "
              f"({gpt_step_s * 1e3:.0f} ms/step) in {budget:.0f} s", file=sys.stderr)
        model, done, secs_a, s = acik_run(acik_steps, Path(tmp) / "run")
        loss_a = val_loss(lambda t: model(t), x, y)
        # Neither run is cut at the budget: each finishes its calibrated steps and learning-rate schedule, and
        # the table shows the seconds each took.
        gpt, done_g, secs_g, _ = gpt2_run(data.train, gpt_steps)
        loss_g = val_loss(lambda t: gpt(t).logits, x, y)
    return [("acik (recipes/tinyshakespeare.yaml)", done, f"{secs_a:.0f}", s.batch_size, s.seq_len, f"{loss_a:.3f}"),
            ("transformers GPT2LMHeadModel, nanoGPT CPU settings", done_g, f"{secs_g:.0f}", 12, 64, f"{loss_g:.3f}"),
            ("nanoGPT published (2000 iters, its own CPU)", 2000, "~180", 12, 64, "1.88")]


def throughput(cfg, batch: int, seq: int, steps: int, repeats: int, with_compile: bool = False,
               device: str | torch.device = "cpu", bf16_autocast: bool = False) -> dict[str, float]:
    """Training tokens/s (forward, backward, clip, optimizer step) of `cfg` in acik's Transformer with its
    fused AdamW and in transformers' LlamaForCausalLM with AdamW, both in the same plain loop; medians of
    `repeats` alternating runs of `steps` timed steps after two warm-up steps. Keys: acik, hf (and
    acik_compiled with `with_compile`)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from acik.formats.hf import config_to_hf
    from acik.model import Transformer
    from acik.train.loop import token_losses
    from acik.train.optim import build_optimizers

    device = torch.device(device)
    tokens = torch.randint(0, min(cfg.vocab_size, 256), (steps + 5, batch, seq + 1),
                           generator=torch.Generator().manual_seed(0)).to(device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16_autocast else contextlib.nullcontext

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def acik_model(compiled: bool):
        torch.manual_seed(0)
        model = Transformer(cfg)
        model.init_weights(0)
        model.to(device)
        forward = torch.compile(model) if compiled else model  # what the loop does with `compile: true`
        (opt,) = build_optimizers(list(model.named_parameters()), optimizer="adamw", lr=1e-3, weight_decay=0.1,
                                  betas=(0.9, 0.95), eps=1e-8)
        return timed(lambda b: token_losses(forward(b[:, :-1]), b[:, 1:]) / b[:, 1:].numel(), model, opt)

    def run_hf() -> float:
        torch.manual_seed(0)
        hf_cfg = LlamaConfig(**{k: v for k, v in config_to_hf(cfg).items() if k not in ("architectures",)})
        model = LlamaForCausalLM(hf_cfg).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
        return timed(lambda b: F.cross_entropy(model(b[:, :-1]).logits.float().reshape(-1, cfg.vocab_size),
                                               b[:, 1:].reshape(-1)), model, opt)

    def timed(loss_fn, model, opt) -> float:
        model.train()
        for i in range(steps + 2):
            if i == 2:  # two warm-up steps
                sync()
                t0 = time.perf_counter()
            with autocast():
                loss = loss_fn(tokens[i])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        sync()
        return steps * batch * seq / (time.perf_counter() - t0)

    ours, compiled, theirs = [], [], []
    for _ in range(repeats):
        ours.append(acik_model(False))
        theirs.append(run_hf())
        if with_compile:
            compiled.append(acik_model(True))
    out = {"acik": statistics.median(ours), "hf": statistics.median(theirs)}
    if compiled:
        out["acik_compiled"] = statistics.median(compiled)
    return out


def bench_b(steps: int, repeats: int, with_compile: bool, with_bf16: bool = False, device: str = "cpu") -> list[tuple]:
    from acik.config import ModelConfig
    from acik.model import Transformer

    cfg = ModelConfig(vocab_size=260, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256,
                      tie_word_embeddings=True)
    batch, seq = 16, 256
    n = f"{sum(p.numel() for p in Transformer(cfg).parameters()) / 1e6:.1f}M"
    rows = []
    for bf16 in (False, True) if with_bf16 else (False,):
        res = throughput(cfg, batch, seq, steps, repeats, with_compile, device=device, bf16_autocast=bf16)
        h, tag = res["hf"], " (bf16 autocast)" if bf16 else ""
        rows.append((f"acik Transformer + fused AdamW{tag}", n, f"{batch}x{seq}", f"{res['acik']:,.0f}",
                     f"{res['acik'] / h:.2f}x"))
        if "acik_compiled" in res:
            c = res["acik_compiled"]
            rows.append((f"acik, `compile: true`{tag}", n, f"{batch}x{seq}", f"{c:,.0f}", f"{c / h:.2f}x"))
        rows.append((f"transformers LlamaForCausalLM + AdamW{tag}", n, f"{batch}x{seq}", f"{h:,.0f}", "1.00x"))
    return rows


def bench_moe(run_dir: Path, repeats: int = 3) -> list[tuple]:
    """Elastic experts on a model trained by recipes/small-moe.yaml: validation perplexity and forward
    tokens/s with all experts, half of them (acik moe-shrink, calibrated on training text), and top-1."""
    import json

    import acik
    from acik.moe_tools import shrink
    from acik.train.data import load_data

    recipe = json.loads((run_dir / "model" / "acik.json").read_text())["recipe"]
    data = load_data(recipe["data"], recipe["tokenizer"], recipe["val_fraction"])
    seq = recipe["seq_len"]
    x, y = val_windows(data.val, seq, 32)
    calib = data.train[:32768].astype(np.int64).tolist()

    def measure(llm) -> tuple[str, str]:
        model = llm.model.eval()
        loss = val_loss(lambda t: model(t), x, y)
        times = []
        with torch.no_grad():
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(x[:8])
                times.append(time.perf_counter() - t0)
        return f"{math.exp(loss):.2f}", f"{8 * seq / statistics.median(times):,.0f}"

    rows = []
    full = acik.load(run_dir / "model")
    e, k = full.config.num_experts, full.config.num_experts_per_tok
    rows.append((f"all {e} experts, top-{k}", *measure(full)))
    half = acik.load(run_dir / "model")
    shrink(half, e // 2, calib, seq)
    rows.append((f"{e // 2} most used experts (moe-shrink), top-{half.config.num_experts_per_tok}", *measure(half)))
    top1 = acik.load(run_dir / "model")
    top1.config.num_experts_per_tok = 1
    rows.append((f"all {e} experts, top-1", *measure(top1)))
    return rows


def table(header: tuple, rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=float, default=180.0, help="wall-clock seconds per model in (a)")
    p.add_argument("--steps", type=int, default=8, help="timed steps per run in (b)")
    p.add_argument("--repeats", type=int, default=3, help="alternating runs per side in (b)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also time acik with torch.compile in (b)")
    p.add_argument("--fp32-only", action="store_true", help="(b) without the bf16 autocast rows")
    p.add_argument("--device", default="cpu", help="where (b) runs: cpu (default) or cuda")
    p.add_argument("--skip-a", action="store_true")
    p.add_argument("--skip-b", action="store_true")
    p.add_argument("--moe-run", help="(c) elastic-experts table for a run of recipes/small-moe.yaml")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads")
    if not args.skip_a:
        if not TEXT.exists():
            sys.exit(f"{TEXT} is missing (set ACIK_SHARED_DATA to the shared data folder)")
        print(f"\n(a) tinyshakespeare validation loss (nats/byte) after {args.budget:.0f} s of training\n")
        print(table(("trainer", "steps", "seconds", "batch", "context", "val loss"), bench_a(args.budget)))
    if not args.skip_b:
        print("\n(b) training throughput, same Llama config (median of alternating runs)\n")
        rows = bench_b(args.steps, args.repeats, args.compile, not args.fp32_only, args.device)
        print(table(("trainer", "params", "batch", "tokens/s", "vs transformers"), rows))
    if args.moe_run:
        print("\n(c) elastic experts: validation perplexity and forward tokens/s\n")
        print(table(("experts", "val perplexity", "tokens/s"), bench_moe(Path(args.moe_run))))


if __name__ == "__main__":
    main()
