"""`acik data run` and `acik data tokenize`."""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_run(args: argparse.Namespace) -> int:
    from acik.data.docs import summary_text
    from acik.data.runner import run

    inputs = [p for group in (args.input or []) for p in group]
    summary = run(
        inputs,
        args.out,
        recipe=args.recipe,
        tokenizer=args.tokenizer,
        executor=args.executor,
        workers=args.workers,
        overrides=_overrides(args),
        license=args.license,
        command=["acik", *sys.argv[1:]],
    )
    print(json.dumps(summary, indent=2))
    # The JSON above is for scripts; this is for the person at the terminal.
    print(summary_text(summary), file=sys.stderr)
    if not summary["documents_kept"]:
        print(f"error: no document was kept; {args.out}/DATA_CARD.md says which rules removed them", file=sys.stderr)
        return 1
    return 0


def _overrides(args: argparse.Namespace) -> list[str]:
    out = list(args.set or [])
    if args.write_dropped:
        out.append("write_dropped=true")
    return out


def _cmd_tokenize(args: argparse.Namespace) -> int:
    from acik.data.docs import summary_text
    from acik.data.runner import retokenize

    summary = retokenize(args.dir, args.tokenizer, command=["acik", *sys.argv[1:]], overrides=args.set)
    print(json.dumps(summary, indent=2))
    print(summary_text({**summary, "out": args.dir, "low_yield": None}), file=sys.stderr)
    return 0


def add_cli(subparsers) -> None:
    data = subparsers.add_parser(
        "data", help="build a filtered, deduplicated, tokenized corpus with a data card"
    )
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("run", help="read, extract, filter, deduplicate, store and tokenize documents")
    p.add_argument(
        "--input",
        "-i",
        nargs="+",
        action="append",
        metavar="PATH",
        help="files or folders (text, JSONL[.gz/.zst], Parquet, HTML, WARC/ARC), or python-env "
        "for the local Python environment's documentation",
    )
    p.add_argument("--out", "-o", required=True, help="data directory to write")
    p.add_argument(
        "--recipe",
        help="docs, web, or a YAML recipe, for every input (default: each file by its kind: text, markdown, "
        "reST and HTML files get the built-in docs recipe, WARC/ARC, JSONL and Parquet the web recipe)",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set langid.keep=null --set c4.enabled=false",
    )
    p.add_argument("--tokenizer", help="tokenizer directory (default: acik's byte-level tokenizer)")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: processes on this machine; ray: tasks on a Ray cluster (default local)")
    p.add_argument("--workers", type=int, help="parallel tasks (default: CPU count, at most 8)")
    p.add_argument(
        "--license",
        help="license of input files that do not name one (default: the recipe's read.default_license)",
    )
    p.add_argument("--write-dropped", action="store_true", help="write dropped documents to DIR/dropped/")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "tokenize", help="re-tokenize a data directory's kept documents with another tokenizer"
    )
    p.add_argument("dir", help="data directory written by `acik data run`")
    p.add_argument("--tokenizer", help="tokenizer directory (default: the one DIR has, to re-split with --set)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a tokenize setting of the run's recipe, e.g. --set tokenize.val_fraction=0.1 (keys: "
        "tokenize.*, seed)",
    )
    p.set_defaults(func=_cmd_tokenize)
