"""`acik --help`: commands in pipeline order, and every command, flag and argument explained."""

from __future__ import annotations

import argparse

from acik.cli import build_parser

PIPELINE = ["quickstart", "data", "tokenizer", "train", "finetune", "quantize", "eval", "generate", "chat", "serve"]
TOOLS = ["info", "verify", "reproduce"]


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def _walk(parser: argparse.ArgumentParser, path: str):
    """(command path, parser) for `parser` and every sub-command below it."""
    yield path, parser
    sub = _subparsers(parser)
    if sub is not None:
        for name, child in sub.choices.items():
            yield from _walk(child, f"{path} {name}")


def test_every_command_flag_and_argument_has_help():
    missing = []
    for path, parser in _walk(build_parser(), "acik"):
        sub = _subparsers(parser)
        if sub is not None:
            described = {a.dest for a in sub._choices_actions if a.help}
            missing += [f"{path} {name} (the command)" for name in sub.choices if name not in described]
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            if action.help == argparse.SUPPRESS:
                continue  # deliberately hidden
            if not (action.help or "").strip():
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, "no help text: " + ", ".join(missing)


def test_commands_are_listed_in_pipeline_order_then_tools():
    names = list(_subparsers(build_parser()).choices)
    positions = [names.index(n) for n in PIPELINE + TOOLS]
    assert positions == sorted(positions), names
    assert max(names.index(n) for n in PIPELINE) < min(names.index(n) for n in TOOLS), names
    text = build_parser().format_help()
    assert text.index(" data ") < text.index(" train ") < text.index(" chat ") < text.index(" info ")
