"""The training loop: one function, `train`, that any stage (pretraining, SFT, LoRA) drives.

The caller brings the model, a function from step number to this process's micro-batches, and
optionally its own loss and trainable-parameter set; `train` does everything else: wrapping for
DDP/FSDP, optimizers and schedule, gradient accumulation, clipping, validation, progress, metrics,
atomic checkpoints with exact resume, exports and the report. `pretrain` is its first user.

A batch is a dict of tensors with `input_ids` [B, T] and `targets` [B, T] (the next token of each
position; -100 = no loss there), optionally `positions` and `segment_ids` (packed examples).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from acik import fmt
from acik.kernels import cpu_training
from acik.train import checkpoint as ckpt
from acik.train.distributed import Dist, all_reduce_sum, barrier, unwrap, wrap
from acik.train.interrupt import StopSignals, TrainingInterrupted, stop_agreed
from acik.train.optim import build_optimizers, set_lr
from acik.train.report import Metrics, flops_per_token, peak_flops, write_report
from acik.train.schedule import lr_factor

IGNORE = -100


@dataclass
class TrainSettings:
    """Everything a pretraining recipe can say. The loop-only fields (optimizer to report) are also
    what `train` reads when a fine-tuning stage drives it."""

    # Model: a named preset (acik.config.PRESETS) and/or explicit ModelConfig fields that override it.
    model: str | None = "tiny"
    model_config: dict[str, Any] = field(default_factory=dict)
    # Data: a data directory from `acik data`, or a UTF-8 text file (byte-level unless `tokenizer`).
    data: str | list[str] | None = None  # a list: several text files, each with its own held-out tail
    tokenizer: str | None = None  # tokenizer directory; a data directory brings its own
    val_fraction: float = 0.1  # raw text only: the tail held out for validation
    seq_len: int = 256
    batch_size: int = 32  # global: sequences per optimizer step, over all processes
    micro_batch_size: int | None = None  # per process per forward; None: batch_size / processes
    max_steps: int = 1000
    seed: int = 1337

    optimizer: str = "adamw"  # "adamw" | "muon" (Muon for hidden matrices, AdamW for the rest)
    lr: float = 1e-3
    muon_lr: float | None = None  # None: same as lr (Muon's update is rescaled to AdamW's RMS)
    muon_momentum: float = 0.95
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0 disables
    schedule: str = "cosine"  # "cosine" | "wsd" | "constant"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2  # wsd: the share of steps spent decaying
    z_loss: float = 0.0  # weight of mean(logsumexp(logits)^2) (PaLM); keeps logits from drifting
    aux_loss_weight: float = 1.0  # multiplier of the MoE router losses (coefficients in model_config)

    device: str = "auto"  # "auto" | "cpu" | "cuda"
    dtype: str = "float32"  # parameter dtype: "float32" | "bfloat16"
    autocast: bool | None = None  # bf16 autocast; None: on for GPU, off for CPU
    compile: bool = False
    activation_checkpointing: bool = False
    parallel: str = "ddp"  # with torchrun: "ddp" | "fsdp"

    log_every: int = 10
    eval_every: int = 200  # 0: only at the end
    eval_batches: int = 8  # validation batches of batch_size sequences
    checkpoint_every: int = 500  # 0: only at the end
    keep_checkpoints: int = 3
    export_every: int = 0  # also export RUN_DIR/model-step_N every this many steps; 0: only at the end
    progress: bool = True


@dataclass
class TrainResult:
    step: int
    tokens_seen: int
    final_loss: float | None
    val_loss: float | None
    wall_s: float
    tokens_per_s: float


Batch = dict[str, torch.Tensor]
# loss_fn(model, batch) -> (sum of per-token losses, extra scalar loss to average over micro-batches)
LossFn = Callable[[nn.Module, Batch], tuple[torch.Tensor, torch.Tensor]]


def moe_aux_loss(model: nn.Module) -> torch.Tensor | float:
    """The MoE router losses of the last forward: `router_aux_loss_coef` * load-balancing loss +
    `router_z_loss_coef` * router z-loss, each averaged over the MoE layers (every module with a
    `last_aux_loss`, see acik.model.moe); 0 for dense models."""
    layers = [m for m in model.modules() if getattr(m, "last_aux_loss", None) is not None]
    if not layers:
        return 0.0
    c = layers[0].config
    total = c.router_aux_loss_coef * torch.stack([m.last_aux_loss for m in layers]).mean()
    z = [m.last_z_loss for m in layers if getattr(m, "last_z_loss", None) is not None]
    if z and c.router_z_loss_coef:
        total = total + c.router_z_loss_coef * torch.stack(z).mean()
    return total


def token_losses(logits: torch.Tensor, targets: torch.Tensor, z_loss: float = 0.0) -> torch.Tensor:
    """Sum over target positions (targets != -100) of cross-entropy plus z_loss * logsumexp^2."""
    logits, targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    if torch.is_grad_enabled() and cpu_training.supports(logits):
        return cpu_training.cross_entropy(logits, targets, z_loss, IGNORE).sum()  # training on a CPU: fused
    logits = logits.float()
    loss = F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum")
    if z_loss:
        valid = targets != IGNORE
        loss = loss + z_loss * torch.logsumexp(logits[valid], dim=-1).pow(2).sum()
    return loss


def causal_lm_loss(z_loss: float = 0.0, aux_loss_weight: float = 1.0) -> LossFn:
    def loss_fn(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(batch["input_ids"], positions=batch.get("positions"), segment_ids=batch.get("segment_ids"))
        aux = moe_aux_loss(model) * aux_loss_weight
        return token_losses(logits, batch["targets"], z_loss), torch.as_tensor(aux, dtype=torch.float32)
    return loss_fn


def _to(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _autocast(s: TrainSettings, device: torch.device):
    on = s.autocast if s.autocast is not None else device.type == "cuda"
    return torch.autocast(device.type, dtype=torch.bfloat16) if on else contextlib.nullcontext()


def _no_sync(model: nn.Module, last: bool):
    # DDP: all-reduce gradients only on the last micro-batch of a step.
    if not last and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[Batch], s: TrainSettings, d: Dist) -> float:
    """Mean validation cross-entropy per target token over every process's batches."""
    model.eval()
    total = torch.zeros(2, dtype=torch.float64)
    for b in batches:
        b = _to(b, d.device)
        with _autocast(s, d.device):
            logits = model(b["input_ids"], positions=b.get("positions"), segment_ids=b.get("segment_ids"))
        total += torch.tensor([token_losses(logits, b["targets"]).item(), (b["targets"] != IGNORE).sum().item()],
                              dtype=torch.float64)
    model.train()
    total = all_reduce_sum(total, d)
    return (total[0] / total[1].clamp(min=1)).item()


def train(model: nn.Module, batches: Callable[[int], list[Batch]], settings: TrainSettings, run_dir: str | Path,
          d: Dist, *, loss_fn: LossFn | None = None,
          trainable: Callable[[nn.Module], list[tuple[str, nn.Parameter]]] | None = None,
          val_batches: Callable[[], list[Batch]] | None = None,
          export: Callable[[int, dict[str, torch.Tensor], str], None] | None = None,
          resume: str | None = None, report_extra: dict | None = None) -> TrainResult:
    """Train `model` for `settings.max_steps` optimizer steps.

    - `batches(step)` returns this process's micro-batches of optimizer step `step` (their count is
      the gradient accumulation); it must be a pure function of `step` for exact resume.
    - `loss_fn(model, batch)` -> (summed per-token loss, extra loss): the summed loss is divided by the
      number of target tokens in the whole step over all processes, so every token weighs the same
      however the tokens fall into micro-batches; the extra loss (e.g. MoE aux) is averaged over
      micro-batches. Default: causal LM cross-entropy + z-loss + MoE aux losses.
    - `trainable(model)` -> named parameters to optimize (default: all with requires_grad); it gets
      the wrapped model's inner module.
    - `export(step, full_state_dict, name)` is called on rank 0 at `export_every` and at the end
      (name "model" at the end, "model-step_N" before).
    - `resume`: None (start fresh), "auto" (newest valid checkpoint in RUN_DIR/checkpoints, if any)
      or a checkpoint folder.
    """
    s = settings
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    loss_fn = loss_fn or causal_lm_loss(s.z_loss, s.aux_loss_weight)
    inner = model
    model = wrap(model, d, s.parallel, s.activation_checkpointing)
    named = trainable(inner) if trainable else list(inner.named_parameters())
    optimizers = build_optimizers(named, optimizer=s.optimizer, lr=s.lr, weight_decay=s.weight_decay,
                                  betas=(s.beta1, s.beta2), eps=s.eps, muon_lr=s.muon_lr,
                                  muon_momentum=s.muon_momentum, sharded=d.enabled and s.parallel == "fsdp")
    params = [p for opt in optimizers for g in opt.param_groups for p in g["params"]]
    step, tokens_seen = 0, 0
    resume_from = None
    if resume == "auto":
        resume_from = ckpt.latest_valid(ckpt_dir)
        if resume_from is None and d.is_main:
            print("no checkpoint found, starting from step 0", file=sys.stderr)
    elif resume:
        resume_from = Path(resume)
        problem = ckpt.check(resume_from)
        if problem:
            raise ValueError(f"--resume {resume}: {problem}")
    if resume_from is not None:
        state = ckpt.load(resume_from, model, optimizers)
        step, tokens_seen = int(state["step"]), int(state["tokens_seen"])
        if d.is_main:
            print(f"resuming from step {step} ({resume_from})", file=sys.stderr)
    if s.compile and d.device.type == "cpu":
        cpu_training.library()  # build the CPU kernels before tracing, not inside it
    forward_model = torch.compile(model) if s.compile else model

    metrics = Metrics(run_dir / "metrics.jsonl", resume_step=step if resume_from else None) if d.is_main else None
    n_params = unwrap(inner).num_parameters() if hasattr(unwrap(inner), "num_parameters") else sum(
        p.numel() for p in inner.parameters())
    cfg = getattr(inner, "config", None)
    peak = peak_flops(torch.cuda.get_device_name(d.device)) if d.device.type == "cuda" else None

    bar = None
    if d.is_main and s.progress:
        from tqdm import tqdm

        bar = tqdm(total=s.max_steps, initial=step, unit="step", dynamic_ncols=True, file=sys.stderr)

    last_saved = step if resume_from is not None else None

    def save_checkpoint(at: int) -> None:
        nonlocal last_saved
        model_sd, optim_sds = ckpt.gather(model, optimizers)
        if d.is_main:
            ckpt.save(ckpt_dir, at, model_sd, optim_sds, {"tokens_seen": tokens_seen, "world_size": d.world_size},
                      s.keep_checkpoints)
        barrier(d)
        last_saved = at

    def do_export(at: int, name: str) -> None:
        if export is None:
            return
        sd = ckpt.full_model_state(model)
        if d.is_main:
            export(at, sd, name)
        barrier(d)

    start_wall = time.perf_counter()
    window_t, window_tokens = time.perf_counter(), 0
    last_loss = None
    last_val = None
    model.train()
    # Ctrl-C / SIGTERM: finish the step, agree on it across processes, checkpoint, then stop.
    with StopSignals(announce=d.is_main) as stop:
        while step < s.max_steps:
            lr = set_lr(optimizers, lr_factor(step, s.max_steps, s.warmup_steps, s.schedule, s.min_lr_ratio,
                                              s.decay_fraction))
            micro = [_to(b, d.device) for b in batches(step)]
            counts = torch.tensor([sum(int((b["targets"] != IGNORE).sum()) for b in micro),
                                   sum(b["input_ids"].numel() for b in micro)], dtype=torch.float64)
            n_targets, n_inputs = all_reduce_sum(counts, d).tolist()
            # On the model's device: a CPU accumulator cannot take a GPU loss in place.
            step_loss = torch.zeros((), dtype=torch.float64, device=d.device)
            for i, b in enumerate(micro):
                with _no_sync(model, i == len(micro) - 1), _autocast(s, d.device):
                    loss_sum, extra = loss_fn(forward_model, b)
                    # DDP/FSDP average gradients over processes, hence the world_size factor: the result
                    # is the gradient of (all tokens' loss) / (all target tokens).
                    loss = loss_sum * (d.world_size / max(n_targets, 1)) + extra / len(micro)
                    loss.backward()
                step_loss += loss_sum.detach().double()
            if s.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
            for opt in optimizers:
                opt.step()
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += int(n_inputs)
            window_tokens += int(n_inputs)

            if step % s.log_every == 0 or step == s.max_steps or step == 1:
                last_loss = all_reduce_sum(step_loss, d).item() / max(n_targets, 1)
                now = time.perf_counter()
                tps = window_tokens / max(now - window_t, 1e-9)
                window_t, window_tokens = now, 0
                if metrics:
                    rec = {"kind": "train", "step": step, "loss": last_loss, "lr": lr, "tokens_seen": tokens_seen,
                           "tokens_per_s": tps, "wall_s": now - start_wall}
                    if peak and cfg is not None:
                        rec["mfu"] = tps * flops_per_token(n_params, cfg.num_hidden_layers,
                                                           micro[0]["input_ids"].shape[1],
                                                           cfg.hidden_size) / (peak * d.world_size)
                    metrics.log(rec)
                if bar:
                    bar.set_postfix(loss=fmt.loss(last_loss), lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}", refresh=False)
            if val_batches is not None and ((s.eval_every and step % s.eval_every == 0) or step == s.max_steps):
                last_val = evaluate(forward_model, val_batches(), s, d)
                if metrics:
                    metrics.log({"kind": "val", "step": step, "val_loss": last_val, "tokens_seen": tokens_seen})
                if bar:
                    bar.write(f"step {step}: validation loss {fmt.loss(last_val)}")
            if (s.checkpoint_every and step % s.checkpoint_every == 0) or step == s.max_steps:
                save_checkpoint(step)
            if s.export_every and step % s.export_every == 0 and step != s.max_steps:
                do_export(step, f"model-step_{step}")
            if bar:
                bar.update(1)
            signum = stop_agreed(stop, d)
            if signum:
                if bar:
                    bar.close()
                if last_saved != step:
                    save_checkpoint(step)
                raise TrainingInterrupted(signum, step, ckpt_dir / f"{ckpt.PREFIX}{step:08d}", d.is_main)
    if bar:
        bar.close()
    wall = time.perf_counter() - start_wall
    do_export(step, "model")
    result = TrainResult(step, tokens_seen, last_loss, last_val, wall, 0.0)
    if metrics is not None:
        from acik.train.report import read_metrics

        recs = [r for r in read_metrics(metrics.path) if r.get("kind") == "train"]
        tps = [r["tokens_per_s"] for r in recs[1:]] or [r["tokens_per_s"] for r in recs]
        result.tokens_per_s = sum(tps) / len(tps) if tps else 0.0
        mfus = [r["mfu"] for r in recs if "mfu" in r]
        write_report(run_dir, {"steps": step, "tokens_seen": tokens_seen, "wall_s": wall,
                               "tokens_per_s": result.tokens_per_s, "parameters": n_params,
                               "world_size": d.world_size, "device": str(d.device), "final_loss": last_loss,
                               "mfu": sum(mfus) / len(mfus) if mfus else None, **(report_extra or {})})
    if last_loss is not None and not math.isfinite(last_loss):
        raise RuntimeError(f"training diverged: loss {fmt.loss(last_loss)} at step {step}; lower lr or raise "
                           "warmup_steps")
    return result
