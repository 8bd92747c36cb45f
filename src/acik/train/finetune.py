"""`acik finetune`: supervised fine-tuning of a model directory on your own examples, by full
fine-tuning, LoRA or QLoRA (LoRA on a frozen NF4 base). Also `acik lora merge`.

A run directory holds `adapter/` (LoRA, QLoRA: PEFT format) or `model/` (full: a Hugging Face model
directory), `checkpoints/` (resumable: `--resume auto`), `metrics.jsonl`, `report.md` with the loss
curve, and `data_stats.json` (what was kept and what was skipped, and why).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from acik import fmt
from acik.devices import resolve_device, resolve_dtype
from acik.manifest import card_license
from acik.train import sft
from acik.train.lora import ALL_LINEAR, apply_lora, lora_parameters, save_adapter

METHODS = ("lora", "qlora", "full")


@dataclasses.dataclass
class FinetuneRecipe:
    method: str = "lora"  # "lora" | "qlora" | "full"
    # Data
    format: str = "auto"  # "auto" | "messages" | "alpaca" | "prompt-completion"
    prompt_field: str | None = None
    response_field: str | None = None
    system_prompt: str | None = None  # added to records that have no system message
    val_fraction: float = 0.05  # held out of the training data when no val_data is given
    max_seq_len: int = 1024  # tokens per example (and per packed row)
    too_long: str = "drop"  # an example over max_seq_len: "drop" or "truncate" (both counted)
    packing: bool = True  # pack examples into rows (attention kept inside each); False: pad each example
    data_license: str | None = None  # written into the model card
    # Optimisation
    batch_size: int = 8  # rows per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int | None = None  # None: `epochs` passes over the data
    epochs: float = 1.0
    lr: float | None = None  # None: 2e-4 for LoRA/QLoRA, 2e-5 for full fine-tuning
    weight_decay: float = 0.0
    beta2: float = 0.999
    warmup_steps: int = 10
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    # LoRA
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_targets: list[str] = dataclasses.field(default_factory=lambda: [ALL_LINEAR])
    use_rslora: bool = False
    # QLoRA
    quant_block_size: int = 64
    # Run
    device: str = "auto"
    dtype: str = "auto"  # base weights: "auto" (float32; bfloat16 for a LoRA base on GPU), "float32", "bfloat16"
    seed: int = 0
    log_every: int = 10
    eval_every: int = 50  # 0: only at the end
    eval_batches: int = 20
    checkpoint_every: int = 50  # 0: only at the end
    keep_checkpoints: int = 2
    progress: bool = True


class FinetuneError(ValueError):
    pass


def _pick_dtype(name: str, device: torch.device, method: str) -> torch.dtype:
    # Full fine-tuning keeps float32 master weights (bf16 autocast on GPU); a frozen LoRA base can be bf16.
    auto = torch.bfloat16 if device.type == "cuda" and method != "full" else torch.float32
    try:
        return resolve_dtype(name, auto)
    except ValueError as e:
        raise FinetuneError(str(e)) from None


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process: the CUDA allocator's peak on GPU, the peak resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _file_parent(path: Path, role: str) -> dict:
    from acik.manifest import sha256_file

    return {"role": role, "path": str(path), "sha256": sha256_file(path)}


def _model_parent(path: Path) -> dict:
    """The base model as a parent: a directory by its manifest hash, a file (a .gguf) by its sha256."""
    return _dir_parent(path, "base_model") if path.is_dir() else _file_parent(path, "base_model")


def _dir_parent(path: Path, role: str) -> dict:
    from acik.manifest import read_manifest

    try:
        return {"role": role, "path": str(path), "directory_hash": read_manifest(path)["directory_hash"]}
    except (ValueError, OSError, KeyError):
        return {"role": role, "path": str(path), "directory_hash": None}


def quantize_base(model: torch.nn.Module, block_size: int) -> None:
    """QLoRA's frozen base: every linear layer but the output head in NF4 (acik.quant's layers, whose
    backward gives the gradient with respect to the input, which is all LoRA needs)."""
    from acik.quant import quantize_model

    quantize_model(model, "nf4", group_size=block_size, skip=["lm_head"])


# ---------------------------------------------------------------------------------------------
# The training loop call (one place)


def _batch_dict(b: sft.Batch) -> dict[str, torch.Tensor]:
    d = {"input_ids": b.input_ids, "targets": b.targets, "positions": b.positions}
    if b.segment_ids is not None:
        d["segment_ids"] = b.segment_ids
    return d


def _run_loop(model: torch.nn.Module, batches: Callable[[int], list[dict]], val_batches: Callable[[], list[dict]],
              r: FinetuneRecipe, run_dir: Path, device: torch.device, max_steps: int, lr: float,
              trainable: Callable, export: Callable, resume: str | None, report_extra: dict) -> Any:
    from acik.train.distributed import Dist
    from acik.train.loop import TrainSettings, train

    settings = TrainSettings(
        model=None, max_steps=max_steps, seed=r.seed, optimizer="adamw", lr=lr, weight_decay=r.weight_decay,
        beta2=r.beta2, grad_clip=r.grad_clip, schedule=r.schedule, warmup_steps=r.warmup_steps,
        min_lr_ratio=r.min_lr_ratio, device=device.type, log_every=r.log_every, eval_every=r.eval_every,
        eval_batches=r.eval_batches, checkpoint_every=r.checkpoint_every, keep_checkpoints=r.keep_checkpoints,
        progress=r.progress)
    return train(model, batches, settings, run_dir, Dist(device=device), trainable=trainable,
                 val_batches=val_batches, export=export, resume=resume, report_extra=report_extra)


# ---------------------------------------------------------------------------------------------
# The run


def finetune(base: str | Path, data: str | Path, out: str | Path, *, val_data: str | Path | None = None,
             recipe: str | Path | FinetuneRecipe | None = None, overrides: list[str] | None = None,
             resume: str | None = None, command: str | list[str] | None = None, **settings: Any) -> Path:
    """Fine-tune `base` (anything `acik.load` takes: a model directory, a .gguf file, which trains on its
    dequantized weights, or a built-in name) on `data`; returns the output directory (`out/adapter` for
    LoRA/QLoRA, `out/model` for full fine-tuning). `settings` override the recipe (FinetuneRecipe fields)."""
    from acik.loader import load
    from acik.models import resolve
    from acik.recipe import load_recipe, to_dict

    if isinstance(recipe, FinetuneRecipe):
        r = dataclasses.replace(recipe, **{k: v for k, v in settings.items() if v is not None})
    else:
        r = load_recipe(FinetuneRecipe, recipe, overrides, **settings)
    if r.method not in METHODS:
        raise FinetuneError(f"method {r.method!r}: use one of {', '.join(METHODS)}")
    base_ref = resolve(base).model
    base, data, run_dir = base_ref.path, Path(data), Path(out)
    torch.manual_seed(r.seed)
    device = resolve_device(r.device)
    dtype = _pick_dtype(r.dtype, device, r.method)
    if r.method == "full" and dtype != torch.float32 and device.type == "cpu":
        raise FinetuneError("full fine-tuning on CPU needs dtype float32 (AdamW on bf16 weights loses updates)")

    llm = load(base_ref, device=device, dtype=dtype, dequantize=True)
    tok = llm.tokenizer
    pad_id = next(i for i in (tok.pad_token_id, tok.eos_token_id, 0) if i is not None)

    # Data: examples, and what was skipped.
    records = sft.read_records(data)
    if val_data is not None:
        train_records, val_records = records, sft.read_records(val_data)
    else:
        train_records, val_records = sft.split_holdout(records, r.val_fraction)
    common = dict(fmt=r.format, prompt_field=r.prompt_field, response_field=r.response_field,
                  system_prompt=r.system_prompt, max_seq_len=r.max_seq_len, too_long=r.too_long)
    train_set = sft.build_examples(train_records, tok, source=str(data), **common)
    val_set = sft.build_examples(val_records, tok, source=str(val_data or f"{data} (held out)"),
                                 **{**common, "fmt": train_set.format if r.format == "auto" else r.format})
    stream = sft.BatchStream(train_set, batch_size=r.batch_size, seq_len=r.max_seq_len, packed=r.packing,
                             pad_id=pad_id, seed=r.seed)
    max_steps = r.max_steps or max(1, math.ceil(r.epochs * stream.batches_per_epoch / r.grad_accum))
    stats = {"train": dict(train_set.stats), "val": dict(val_set.stats), "format": train_set.format,
             "train_tokens": train_set.num_tokens, "val_tokens": val_set.num_tokens,
             "val_source": str(val_data) if val_data else f"held out of {data} (val_fraction={r.val_fraction})"}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "data_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    _say(r, f"data: {fmt.count(train_set.stats['kept'], 'training example')} "
            f"({fmt.count(train_set.num_tokens, 'token')}), {val_set.stats['kept']} validation; skipped: "
            f"{_skips(train_set.stats) or 'none'}; {fmt.count(max_steps, 'step')}")

    # Model: which parameters train.
    model = llm.model
    if r.method == "qlora":
        quantize_base(model, r.quant_block_size)
    if r.method in ("lora", "qlora"):
        targets = apply_lora(model, r.lora_targets, r.lora_r, r.lora_alpha, r.lora_dropout, r.seed, r.use_rslora)
        model.to(device)

        def trainable(m: torch.nn.Module) -> list:
            return lora_parameters(m)
    else:
        targets = []
        for p in model.parameters():
            p.requires_grad_(True)

        def trainable(m: torch.nn.Module) -> list:
            return list(m.named_parameters())
    n_train = sum(p.numel() for _, p in trainable(model))
    _say(r, f"{r.method}: {n_train:,} trainable parameters of {model.num_parameters():,}"
            + (f" ({len(targets)} LoRA layers)" if targets else ""))

    kill_at = int(os.environ.get("ACIK_TEST_KILL_AT_STEP", "0"))

    def batches(step: int) -> list[dict]:
        # Test hook: die by SIGKILL (no cleanup at all) once the checkpoint before `step` is written.
        if kill_at and step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return [_batch_dict(stream.micro_batch(step * r.grad_accum + j)) for j in range(r.grad_accum)]

    val_list = [_batch_dict(b) for b in sft.eval_batches(val_set, batch_size=r.batch_size, seq_len=r.max_seq_len,
                                                         packed=r.packing, pad_id=pad_id, max_batches=r.eval_batches)]
    lr = r.lr if r.lr is not None else (2e-5 if r.method == "full" else 2e-4)
    parents = [_model_parent(base),
               _file_parent(data, "data")]
    if val_data is not None:
        parents.append(_file_parent(Path(val_data), "val_data"))
    recipe_dict = to_dict(r)
    cmd = command or sys.argv
    out_dir = run_dir / ("model" if r.method == "full" else "adapter")
    model_card_facts = {"base": base, "data": data, "val_data": val_data, "recipe": r, "stats": stats,
                        "trainable": n_train, "total": model.num_parameters(), "lr": lr, "max_steps": max_steps}

    def export(step: int, state: dict | None, name: str) -> None:
        if name != "model":
            return
        if r.method == "full":
            llm.save(out_dir, command=cmd, recipe=recipe_dict, seed=r.seed, parents=parents,
                     extra={"finetune": {"method": "full", "steps": step}})
        else:
            save_adapter(model, out_dir, base_model=base_ref.name or str(base), dropout=r.lora_dropout,
                         use_rslora=r.use_rslora, state=state)

    t0 = time.time()
    result = _run_loop(model, batches, lambda: val_list, r, run_dir, device, max_steps, lr, trainable, export,
                       resume, {"method": r.method, "trainable_parameters": n_train, "recipe": recipe_dict})
    peak = peak_memory_bytes(device)
    summary = {"method": r.method, "steps": result.step, "final_loss": result.final_loss,
               "val_loss": result.val_loss, "tokens_per_s": result.tokens_per_s, "wall_s": time.time() - t0,
               "peak_memory_bytes": peak, "trainable_parameters": n_train, "device": str(device)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_model_card(out_dir, **model_card_facts, summary=summary)
    from acik.manifest import write_manifest

    if r.method != "full":
        write_manifest(out_dir, kind="adapter", command=cmd, recipe=recipe_dict, seed=r.seed, parents=parents,
                       extra={"finetune": {"method": r.method, "steps": result.step}})
    else:  # rewrite: the model card came after LLM.save wrote the manifest
        from acik.manifest import read_manifest

        old = read_manifest(out_dir)
        write_manifest(out_dir, kind="model", command=cmd, recipe=recipe_dict, seed=r.seed, parents=parents,
                       extra={k: old[k] for k in ("finetune", "tokenizer_identity") if k in old})
    _say(r, f"done: {out_dir} (final loss {fmt.loss(result.final_loss)}, validation {fmt.loss(result.val_loss)}, "
            f"peak memory {fmt.size(peak)})")
    return out_dir


def _say(r: FinetuneRecipe, text: str) -> None:
    if r.progress:
        print(text, file=sys.stderr)


def _skips(stats: dict) -> str:
    return ", ".join(f"{k.removeprefix('skipped_')}={v}" for k, v in sorted(stats.items())
                     if k.startswith("skipped_") or k == "truncated")


def write_model_card(out_dir: Path, *, base: Path, data: Path, val_data: Path | None, recipe: FinetuneRecipe,
                     stats: dict, trainable: int, total: int, lr: float, max_steps: int, summary: dict) -> Path:
    """README.md with Hugging Face Hub metadata: base model, data and its license, method, results."""
    r = recipe
    lic = card_license(base)
    data_lic = r.data_license or "not stated (pass --data-license to record it)"
    meta = ["---", f"base_model: {base.name}", f"license: {lic or 'other'}",
            f"library_name: {'peft' if r.method != 'full' else 'transformers'}",
            "tags:", "  - acik", f"  - {r.method}", "  - sft", "---"]
    use = (f"acik.load({str(base)!r}, adapter={str(out_dir)!r})" if r.method != "full"
           else f"acik.load({str(out_dir)!r})")
    tr, va = stats["train"], stats["val"]
    lines = meta + [
        "", f"# {out_dir.parent.name}: {r.method} fine-tune of {base.name}", "",
        f"Fine-tuned with acik (`acik finetune --method {r.method}`) from the base model `{base}`"
        f" (license: {lic or 'see the base model'}).", "",
        "## Data", "",
        f"- training data: `{data}` ({stats['format']} format), {tr.get('kept', 0)} of "
        f"{fmt.count(tr.get('records', 0), 'record')} used, {fmt.count(stats['train_tokens'], 'token')}",
        f"- validation data: {stats['val_source']}, {fmt.count(va.get('kept', 0), 'example')}",
        f"- skipped or cut: {_skips(tr) or 'none'}",
        f"- data license: {data_lic}. Share-alike or non-commercial data terms carry over to this model.", "",
        "## Training", "",
        f"- method: {r.method}" + (f" (r={r.lora_r}, alpha={r.lora_alpha}, dropout={r.lora_dropout}, "
                                   f"targets={', '.join(r.lora_targets)})" if r.method != "full" else ""),
        f"- trainable parameters: {trainable:,} of {total:,}",
        f"- {fmt.count(summary['steps'], 'step')}, lr {lr:g} ({r.schedule}), batch {r.batch_size} x {r.grad_accum} "
        f"{'packed rows' if r.packing else 'examples'} of up to {r.max_seq_len} tokens, seed {r.seed}",
        f"- loss only on the assistant's tokens; final train loss {fmt.loss(summary['final_loss'])}, "
        f"validation loss {fmt.loss(summary['val_loss'])}",
        f"- peak memory {fmt.size(summary['peak_memory_bytes'])} on {summary['device']}", "",
        "## Use", "", "```python", "import acik", "", f"llm = {use}", "```", "",
        "The full recipe, the data's hash and the base model's hash are in `acik.json`.", ""]
    out_dir.mkdir(parents=True, exist_ok=True)
    card = out_dir / "README.md"
    card.write_text("\n".join(lines), encoding="utf-8")
    return card


# ---------------------------------------------------------------------------------------------
# acik lora merge


def merge(base: str | Path, adapter: str | Path, out: str | Path, dtype: str = "auto",
          command: str | list[str] | None = None) -> Path:
    """Fold a LoRA adapter into the base weights and write a plain model directory."""
    from acik.loader import load
    from acik.manifest import write_manifest
    from acik.models import resolve
    from acik.train.lora import find_adapter_dir, merge_lora

    base_ref, out = resolve(base).model, Path(out)
    base = base_ref.path
    adapter_dir = find_adapter_dir(adapter)
    # Merge in float32 so W + BA is not rounded twice, then store in the base's own dtype.
    llm = load(base_ref, dtype="float32", adapter=adapter_dir, dequantize=True)
    n = merge_lora(llm.model)
    llm.model.to(resolve_dtype(dtype, llm.config.torch_dtype))
    parents = [_model_parent(base),
               _dir_parent(adapter_dir, "adapter")]
    llm.path = None  # the base is named in parents already
    llm.save(out, command=command or sys.argv, parents=parents, extra={"merged_lora_layers": n})
    card = adapter_dir / "README.md"
    if card.exists():
        text = card.read_text(encoding="utf-8").replace("library_name: peft", "library_name: transformers")
        (out / "README.md").write_text(text + f"\nThis directory is the adapter `{adapter_dir}` merged into the "
                                              f"base weights ({n} layers) by `acik lora merge`.\n", encoding="utf-8")
        write_manifest(out, kind="model", command=command or sys.argv, parents=parents,
                       extra={"merged_lora_layers": n})
    return out


# ---------------------------------------------------------------------------------------------
# CLI


def _cmd_finetune(args: Any) -> int:
    flags = dict(method=args.method, format=args.format, prompt_field=args.prompt_field,
                 response_field=args.response_field, max_steps=args.max_steps, seed=args.seed, lr=args.lr,
                 max_seq_len=args.max_seq_len, too_long=args.too_long, batch_size=args.batch_size,
                 lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                 lora_targets=args.lora_targets.split(",") if args.lora_targets else None,
                 data_license=args.data_license, device=args.device, dtype=args.dtype,
                 system_prompt=args.system_prompt, grad_accum=args.grad_accum, epochs=args.epochs,
                 val_fraction=args.val_fraction,
                 packing=None if args.packing is None else args.packing == "on")
    out = finetune(args.base, args.data, args.out, val_data=args.val_data, recipe=args.recipe, overrides=args.set,
                   resume=args.resume, **flags)
    print(out)
    return 0


def _cmd_merge(args: Any) -> int:
    print(merge(args.base, args.adapter, args.out, dtype=args.dtype))
    return 0


def add_cli(sub: Any) -> None:
    p = sub.add_parser("finetune", help="fine-tune a model on your own examples (LoRA, QLoRA or full)")
    p.add_argument("base", help="base model directory")
    p.add_argument("--data", required=True, help="training examples (JSONL or a JSON array)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--method", choices=METHODS, default=None, help="default: lora")
    p.add_argument("--val-data", default=None, help="validation examples (default: a held-out split of --data)")
    p.add_argument("--format", choices=sft.FORMATS, default=None, help="default: auto")
    p.add_argument("--prompt-field", default=None, help="the records' prompt field (default: guessed from the data)")
    p.add_argument("--response-field", default=None,
                   help="the records' response field (default: guessed from the data)")
    p.add_argument("--system-prompt", default=None, help="system message for records that have none")
    p.add_argument("--val-fraction", type=float, default=None, help="held-out share without --val-data (0.05)")
    p.add_argument("--recipe", default=None, help="YAML recipe (FinetuneRecipe fields)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe value")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default: --epochs over the data)")
    p.add_argument("--seed", type=int, default=None, help="seed for data order, LoRA init and dropout (default 0)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default 2e-4 for LoRA and QLoRA, 2e-5 for full)")
    p.add_argument("--epochs", type=float, default=None, help="passes over the data when --max-steps is not given")
    p.add_argument("--batch-size", type=int, default=None, help="rows per micro-batch (default 8)")
    p.add_argument("--grad-accum", type=int, default=None, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--max-seq-len", type=int, default=None, help="tokens per example and per packed row (default 1024)")
    p.add_argument("--too-long", choices=["drop", "truncate"], default=None,
                   help="an example over --max-seq-len is dropped or cut (default drop; both are counted)")
    p.add_argument("--packing", choices=["on", "off"], default=None, help="pack examples into rows (default on)")
    p.add_argument("--lora-r", type=int, default=None, help="LoRA rank (default 8)")
    p.add_argument("--lora-alpha", type=float, default=None, help="LoRA updates are scaled by alpha / r (default 16)")
    p.add_argument("--lora-dropout", type=float, default=None, help="dropout on the LoRA branch's input (default 0.05)")
    p.add_argument("--lora-targets", default=None, help="comma-separated module names, or all-linear")
    p.add_argument("--data-license", default=None, help="the training data's license, for the model card")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or mps (default auto: a GPU where there is one)")
    p.add_argument("--dtype", default=None, help="base weights: auto, float32, bfloat16 or float16 (default auto: "
                   "float32, bfloat16 for a LoRA base on a GPU)")
    p.add_argument("--resume", default=None, help="'auto' (newest checkpoint of the run) or a checkpoint folder")
    p.set_defaults(func=_cmd_finetune)

    lora = sub.add_parser("lora", help="LoRA adapter tools")
    lsub = lora.add_subparsers(dest="lora_command", metavar="COMMAND", required=True)
    m = lsub.add_parser("merge", help="fold a LoRA adapter into its base model")
    m.add_argument("base", help="the base model directory the adapter was trained on")
    m.add_argument("adapter", help="adapter directory (or a fine-tuning run directory)")
    m.add_argument("--out", required=True, help="directory to write the merged model to")
    m.add_argument("--dtype", default="auto", help="weights dtype of the merged model (default: the base's)")
    m.set_defaults(func=_cmd_merge)
