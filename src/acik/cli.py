"""The `acik` command. Each stage adds its subcommands with one `add_cli(subparsers)` function
in its own module; this file only wires them together and turns errors into clear messages."""

from __future__ import annotations

import argparse
import os
import sys
import traceback


def _cmd_verify(args: argparse.Namespace) -> int:
    from acik.manifest import read_manifest, verify

    status = 0
    for directory in args.dirs:
        problems = verify(directory)
        failures = [p for p in problems if "human-facing" not in p]
        for p in problems:
            print(f"{directory}: {p}")
        if failures:
            status = 1
        else:
            print(f"{directory}: OK ({read_manifest(directory)['directory_hash'][:16]})")
    return status


def _cmd_info(args: argparse.Namespace) -> int:
    from acik.info import describe

    print(describe(args.dir))
    return 0


class _HelpFormatter(argparse.HelpFormatter):
    """argparse measures sub-command names without their 2-column indent, so the longest ones
    ("quickstart") push their help onto the next line; count the indent."""

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction) and action.help is not argparse.SUPPRESS:
            longest = max((len(name) for name in action.choices), default=0)
            self._action_max_length = max(self._action_max_length, longest + self._current_indent + 2)


def build_parser() -> argparse.ArgumentParser:
    from acik.version import __version__

    parser = argparse.ArgumentParser(prog="acik", description="A fully open LLM stack.", formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"acik {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # argparse lists commands in the order they are added: the pipeline's order, then the tools.
    for module in _STAGE_MODULES:
        add_cli = _add_tools if module == "acik.cli" else __import__(module, fromlist=["add_cli"]).add_cli
        add_cli(sub)
    return parser


def _add_tools(sub) -> None:
    p = sub.add_parser("info", help="describe a model: its family, size, layers and how its weights are stored")
    p.add_argument("dir", metavar="MODEL", help="a model directory, .gguf file, LoRA adapter or built-in name")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("verify", help="check a directory against its acik.json manifest")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="directories acik wrote (each holds an acik.json)")
    p.set_defaults(func=_cmd_verify)


# Modules that define `add_cli(subparsers)`, in the order `acik --help` lists their commands: the
# whole pipeline in one command, then each stage in pipeline order, then tools ("acik.cli": info, verify).
_STAGE_MODULES: list[str] = [
    "acik.quickstart",  # quickstart
    "acik.data.cli",  # data
    "acik.tokenizer",  # tokenizer
    "acik.train.pretrain",  # train
    "acik.train.finetune",  # finetune, lora
    "acik.quant.cli",  # quantize
    "acik.convert",  # convert
    "acik.eval.harness",  # eval
    "acik.engine.cli",  # generate, chat
    "acik.serve",  # serve
    "acik.cli",  # info, verify
    "acik.models",  # models, pull
    "acik.reproduce",  # reproduce
    "acik.moe_tools",  # moe-shrink
]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as e:
        from acik.train.interrupt import TrainingInterrupted

        if not isinstance(e, TrainingInterrupted):
            print("interrupted", file=sys.stderr)
            return 130
        if e.announce:  # under torchrun, rank 0 speaks for all processes
            # quickstart has no --resume: it always continues from its own checkpoints
            how = "with --resume auto" if hasattr(args, "resume") else "again"
            print(f"acik {args.command}: {e}; to continue, run the same command {how}", file=sys.stderr)
        return e.exit_code
    except (ValueError, OSError, KeyError, RuntimeError) as e:
        if os.environ.get("ACIK_DEBUG"):
            traceback.print_exc()
        print(f"acik {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
