"""Fine-tuning benchmark: peak memory and tokens/s of full fine-tuning, LoRA and QLoRA on one base, against
transformers (+ peft for LoRA) training the same base on the same batches; then a GSM8K check that LoRA
fine-tuning lowers the validation loss on gsm8k/test.jsonl.

Each configuration runs in its own process, so its peak resident memory (CPU) or the CUDA allocator's peak
(GPU) is its own. tokens/s is the median over the timed steps (the first two are warm-up).

    python benchmarks/finetune.py --base runs/small/model            # table for docs/benchmarks.md
    python benchmarks/finetune.py --base runs/small/model --gsm8k-steps 200
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ACIK_SHARED_DATA", ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(ROOT / "src"))


def _peak_bytes(device: str) -> int:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_acik(method: str, a: argparse.Namespace) -> dict:
    from acik.train.finetune import finetune

    with tempfile.TemporaryDirectory() as tmp:
        finetune(a.base, a.data, Path(tmp) / "run", method=method, max_steps=a.steps, batch_size=a.batch_size,
                 max_seq_len=a.seq_len, packing=False, lr=1e-4 if method == "full" else 2e-4, warmup_steps=1,
                 log_every=1, eval_every=0, eval_batches=1, checkpoint_every=0, lora_r=8, lora_alpha=16,
                 lora_dropout=0.0, quant_block_size=64, val_fraction=0.01, progress=False, seed=0)
        recs = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        summary = json.loads((Path(tmp) / "run" / "summary.json").read_text())
    tps = [r["tokens_per_s"] for r in recs if r["kind"] == "train"][2:]
    return {"tokens_per_s": statistics.median(tps), "peak_bytes": summary["peak_memory_bytes"],
            "trainable": summary["trainable_parameters"]}


def run_transformers(method: str, a: argparse.Namespace) -> dict:
    """The peer: transformers (and peft for LoRA) on the same padded batches, with a plain AdamW loop."""
    import torch
    import torch.nn.functional as F
    import transformers as tf

    from acik.tokenizer import load_tokenizer
    from acik.train import sft

    tok = load_tokenizer(a.base)
    records = sft.split_holdout(sft.read_records(a.data), 0.01)[0]
    data = sft.build_examples(records, tok, max_seq_len=a.seq_len)
    stream = sft.BatchStream(data, batch_size=a.batch_size, seq_len=a.seq_len, packed=False,
                             pad_id=tok.pad_token_id, seed=0)
    model = tf.AutoModelForCausalLM.from_pretrained(a.base, dtype=torch.float32, attn_implementation="sdpa")
    if method == "lora":
        import peft

        model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                           target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4 if method == "full" else 2e-4, weight_decay=0.0)
    tps = []
    for step in range(a.steps):
        b = stream.micro_batch(step)
        t = time.perf_counter()
        logits = model(input_ids=b.input_ids).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), b.targets.flatten(), ignore_index=sft.IGNORE)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tps.append(b.input_ids.numel() / (time.perf_counter() - t))
    return {"tokens_per_s": statistics.median(tps[2:]), "peak_bytes": _peak_bytes("cpu"),
            "trainable": sum(p.numel() for p in params)}


CONFIGS = {
    "acik full": lambda a: run_acik("full", a),
    "transformers full": lambda a: run_transformers("full", a),
    "acik LoRA": lambda a: run_acik("lora", a),
    "peft LoRA": lambda a: run_transformers("lora", a),
    "acik QLoRA (NF4)": lambda a: run_acik("qlora", a),
}


def gsm8k_check(a: argparse.Namespace) -> dict:
    """LoRA on gsm8k/train.jsonl: validation loss on gsm8k/test.jsonl before and after."""
    import torch

    import acik
    from acik.train import sft
    from acik.train.finetune import finetune

    test = SHARED / "gsm8k" / "test.jsonl"
    llm = acik.load(a.base, dtype="float32")
    val = sft.build_examples(sft.read_records(test), llm.tokenizer, max_seq_len=a.seq_len)
    batches = list(sft.eval_batches(val, batch_size=8, seq_len=a.seq_len, packed=True,
                                    pad_id=llm.tokenizer.pad_token_id, max_batches=a.gsm8k_eval_batches))
    total = count = 0.0
    with torch.no_grad():
        for b in batches:
            logits = llm.model(b.input_ids, positions=b.positions, segment_ids=b.segment_ids)
            total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), b.targets.flatten(),
                                                       ignore_index=sft.IGNORE, reduction="sum").item()
            count += b.num_targets
    before = total / count
    with tempfile.TemporaryDirectory() as tmp:
        t = time.time()
        finetune(a.base, SHARED / "gsm8k" / "train.jsonl", Path(tmp) / "run", val_data=test, method="lora",
                 max_steps=a.gsm8k_steps, batch_size=8, max_seq_len=a.seq_len, lr=1e-3, warmup_steps=10,
                 eval_every=max(a.gsm8k_steps // 4, 1), eval_batches=a.gsm8k_eval_batches,
                 checkpoint_every=0, log_every=10, progress=False, seed=0)
        vals = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["step"], r["val_loss"]) for r in vals if r["kind"] == "val"]
    return {"before": before, "curve": curve, "wall_s": time.time() - t}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default=str(ROOT / "runs" / "small" / "model"))
    p.add_argument("--data", default=str(SHARED / "gsm8k" / "train.jsonl"))
    p.add_argument("--steps", type=int, default=12, help="optimizer steps per configuration")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--only", default=None, help=argparse.SUPPRESS)  # one configuration, in a child process
    p.add_argument("--gsm8k-steps", type=int, default=0, help="also run the GSM8K check for this many steps")
    p.add_argument("--gsm8k-eval-batches", type=int, default=10)
    p.add_argument("--skip-table", action="store_true")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds over the configurations")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    if a.only:
        print(json.dumps(CONFIGS[a.only](a)))
        return
    if not a.skip_table:
        runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
        # Rounds visit every configuration in turn, so a change in machine load hits all rows alike.
        for _ in range(a.rounds):
            for name in CONFIGS:
                cmd = [sys.executable, __file__, "--only", name, "--base", a.base, "--data", a.data, "--steps",
                       str(a.steps), "--batch-size", str(a.batch_size), "--seq-len", str(a.seq_len),
                       "--threads", str(a.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode:
                    print(out.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"{name} failed")
                runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
        rows = {name: {"trainable": r[0]["trainable"],
                       "tokens_per_s": statistics.median(x["tokens_per_s"] for x in r),
                       "peak_bytes": statistics.median(x["peak_bytes"] for x in r)} for name, r in runs.items()}
        print(f"base {a.base}; {a.steps} steps of {a.batch_size} x {a.seq_len} padded tokens (GSM8K train), "
              f"{a.threads} threads, median of {a.rounds} alternating rounds\n")
        print("| configuration | trainable params | tokens/s (median) | peak memory (RSS) |")
        print("|---|---:|---:|---:|")
        for name, r in rows.items():
            print(f"| {name} | {r['trainable']:,} | {r['tokens_per_s']:,.0f} | {r['peak_bytes'] / 2**20:,.0f} MiB |")
    if a.gsm8k_steps:
        g = gsm8k_check(a)
        print(f"\nGSM8K LoRA, {a.gsm8k_steps} steps ({g['wall_s']:.0f} s): validation loss on test.jsonl "
              f"(first {a.gsm8k_eval_batches} batches) {g['before']:.4f} before -> "
              + ", ".join(f"{v:.4f} at step {s}" for s, v in g["curve"]))


if __name__ == "__main__":
    main()
