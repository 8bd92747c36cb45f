"""Pretraining from a recipe: `acik train --recipe R --out RUN_DIR`, the first user of `acik.train.loop.train`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from acik import fmt
from acik.config import ModelConfig
from acik.recipe import load_recipe, to_dict
from acik.train.data import TokenData, load_data, rank_micro_batches, windows
from acik.train.distributed import Dist, setup, teardown
from acik.train.loop import TrainResult, TrainSettings, train


class TrainError(ValueError):
    pass


def model_config(s: TrainSettings, vocab_size: int) -> ModelConfig:
    """The recipe's preset with its explicit fields on top; the vocabulary follows the tokenizer
    unless the recipe sets it (it may be larger, e.g. padded to a multiple of 64, never smaller)."""
    fields = dict(s.model_config)
    if s.model:
        from acik.config import PRESETS

        if s.model not in PRESETS:
            raise TrainError(f"recipe key 'model': unknown preset {s.model!r}; known: {', '.join(PRESETS)}")
        base = dict(PRESETS[s.model])
    else:
        base = {}
    explicit_vocab = fields.get("vocab_size")
    if explicit_vocab is not None and explicit_vocab < vocab_size:
        raise TrainError(f"model_config.vocab_size {explicit_vocab} is smaller than the tokenizer's "
                         f"{vocab_size} tokens")
    fields.setdefault("vocab_size", vocab_size)
    cfg = ModelConfig.from_dict({**base, **fields})
    if cfg.max_position_embeddings < s.seq_len:
        raise TrainError(f"seq_len {s.seq_len} exceeds the model's max_position_embeddings "
                         f"{cfg.max_position_embeddings}; lower seq_len or raise model_config.max_position_embeddings")
    return cfg


def check_batch(s: TrainSettings, world: int) -> int:
    """The per-process micro-batch size, or an error that says how to fix the batch settings."""
    if s.batch_size % world:
        raise TrainError(f"batch_size {s.batch_size} does not divide by the {world} processes: every process takes "
                         f"an equal share of each global batch; use a multiple of {world} (e.g. "
                         f"{(s.batch_size // world + 1) * world}) or run a different number of processes")
    per_rank = s.batch_size // world
    micro = s.micro_batch_size or per_rank
    if per_rank % micro:
        raise TrainError(f"micro_batch_size {micro} does not divide the per-process batch {per_rank} "
                         f"(batch_size {s.batch_size} / {world} processes); gradient accumulation needs whole "
                         "micro-batches")
    return micro


def val_set(data: TokenData, s: TrainSettings, d: Dist, micro: int) -> list[dict]:
    """Fixed validation windows (the same every evaluation), split over processes like training."""
    from acik.train.data import sample_offsets

    per_rank = s.batch_size // d.world_size
    out = []
    for i in range(s.eval_batches):
        offsets = sample_offsets(len(data.val), s.seq_len, s.batch_size, s.seed, i, stream="val")
        mine = offsets[d.rank * per_rank:(d.rank + 1) * per_rank]
        out += [windows(data.val, mine[j:j + micro], s.seq_len) for j in range(0, per_rank, micro)]
    return out


def pretrain(settings: TrainSettings, run_dir: str | Path, *, resume: str | None = None,
             command: list[str] | None = None) -> TrainResult:
    """Train a model from scratch as `settings` says; the result is exported to RUN_DIR/model."""
    from acik.manifest import write_manifest
    from acik.model import Transformer

    s = settings
    run_dir = Path(run_dir)
    if not s.data:
        raise TrainError("no training data: give --data PATH (a data directory or a text file) or set 'data' "
                         "in the recipe")
    d = setup(s.device)
    try:
        micro = check_batch(s, d.world_size)
        data = load_data(s.data, s.tokenizer, s.val_fraction)
        cfg = model_config(s, data.vocab_size)
        if cfg.num_experts:
            try:
                import acik.model.moe  # noqa: F401
            except ImportError:
                raise TrainError("this recipe's model has experts (num_experts > 0), but this acik has no MoE "
                                 "layer (acik.model.moe); install an acik with MoE support") from None
        torch.manual_seed(s.seed)
        model = Transformer(cfg)
        model.init_weights(s.seed)
        model.to(device=d.device)
        for p in model.parameters():  # parameters only: buffers such as RoPE frequencies stay fp32
            p.data = p.data.to(getattr(torch, s.dtype))
        run_dir.mkdir(parents=True, exist_ok=True)
        tok_dir = data.tokenizer_dir
        if tok_dir is None:
            from acik.tokenizer import save_byte_tokenizer

            tok_dir = run_dir / "tokenizer"
            if d.is_main:
                save_byte_tokenizer(tok_dir)
        recipe = to_dict(s)
        cmd = command or sys.argv

        def batches(step: int) -> list[dict]:
            return rank_micro_batches(data.train, s.seq_len, s.batch_size, micro, s.seed, step, d.rank, d.world_size)

        val = val_set(data, s, d, micro)

        def export(step: int, state: dict[str, torch.Tensor], name: str) -> None:
            from acik.llm import LLM

            out_model = Transformer(cfg)
            out_model.load_state_dict(state)
            LLM(out_model, cfg, tokenizer_dir=tok_dir).save(
                run_dir / name, command=cmd, recipe=recipe, seed=s.seed, parents=data.parents,
                extra={"training": {"step": step, "tokens_seen": step * s.batch_size * s.seq_len}})

        result = train(model, batches, s, run_dir, d, val_batches=lambda: val, export=export, resume=resume,
                       report_extra={"recipe": recipe})
        if d.is_main:
            write_manifest(run_dir, kind="train_run", command=cmd, recipe=recipe, seed=s.seed, parents=data.parents,
                           extra={"training": {"steps": result.step, "tokens_seen": result.tokens_seen}})
        return result
    finally:
        teardown()


def _cmd_train(args: argparse.Namespace) -> int:
    if args.emit_k8s:
        from acik.train.k8s import emit

        if not args.recipe:
            raise TrainError("--emit-k8s needs --recipe: the job runs that recipe")
        written = emit(args.recipe, args.out, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                       image=args.image, kind=args.k8s_kind, data=args.data, overrides=args.set or [])
        for p in written:
            print(p)
        return 0
    settings = load_recipe(TrainSettings, args.recipe, args.set, data=args.data, max_steps=args.max_steps,
                           seed=args.seed, progress=False if args.quiet else None)
    result = pretrain(settings, args.out, resume=args.resume, command=["acik", *map(str, sys.argv[1:])])
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained {fmt.count(result.step, 'step')}, {fmt.count(result.tokens_seen, 'token')} in "
              f"{result.wall_s:.1f} s; final loss {fmt.loss(result.final_loss)}, validation loss "
              f"{fmt.loss(result.val_loss)}; model: {Path(args.out) / 'model'}")
    return 0


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("train", help="pretrain a model from a recipe (torchrun for several processes)",
                              description="Pretrain a model. Several processes: torchrun --nproc-per-node N "
                                          "-m acik train ...")
    p.add_argument("--recipe", help="YAML recipe (keys: see acik.train.loop.TrainSettings)")
    p.add_argument("--out", required=True, help="run directory (checkpoints/, metrics.jsonl, report.md, model/)")
    p.add_argument("--data", help="data directory or UTF-8 text file (overrides the recipe)")
    p.add_argument("--max-steps", type=int, help="optimizer steps (overrides the recipe)")
    p.add_argument("--seed", type=int, help="seed (overrides the recipe)")
    p.add_argument("--resume", help="'auto': continue from the newest valid checkpoint in RUN_DIR, if any; "
                                    "or a checkpoint folder")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe key (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    k = p.add_argument_group("Kubernetes")
    k.add_argument("--emit-k8s", action="store_true", help="write a Kubeflow TrainJob + Dockerfile to --out")
    k.add_argument("--nodes", type=int, default=1, help="machines the job runs on (default 1)")
    k.add_argument("--gpus-per-node", type=int, default=8, help="processes (GPUs) per machine (default 8)")
    k.add_argument("--image", default="ghcr.io/acik/acik-train:latest", help="container image the job runs")
    k.add_argument("--k8s-kind", choices=["TrainJob", "PyTorchJob"], default="TrainJob",
                   help="TrainJob (Kubeflow Trainer) or PyTorchJob (Kubeflow Training Operator); default TrainJob")
    p.set_defaults(func=_cmd_train)
