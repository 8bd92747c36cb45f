"""`acik eval`: perplexity / bits-per-byte and log-likelihood multiple choice.

Multiple-choice files are JSONL in the layout of `../shared/data/eval`: `{query, choices, gold}`
(the continuation " " + choice is scored after the query) or, for partial scoring (WinoGrande),
`{context_options, continuation, gold}` (the same continuation after each context), or already in
scoring form, `{context, continuations, gold}` (each continuation scored verbatim after the context, as
the quickstart's held-out questions are).
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path
from typing import Any

from acik import fmt
from acik.eval.scoring import api_loglikelihoods, loglikelihoods, perplexity

MC_TASKS = ("arc_easy", "arc_challenge", "piqa", "boolq", "copa", "commonsense_qa", "winogrande")


def default_data_dir() -> Path | None:
    for candidate in (os.environ.get("ACIK_EVAL_DATA"), "../shared/data/eval",
                      Path(__file__).resolve().parents[3].parent / "shared" / "data" / "eval"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def load_task(name: str, data_dir: str | Path | None = None) -> list[dict]:
    """Documents as {"contexts": [...], "continuations": [...], "gold": int}."""
    folder = Path(data_dir) if data_dir else default_data_dir()
    if folder is None:
        raise FileNotFoundError("no evaluation data folder; pass --data-dir (e.g. ../shared/data/eval) "
                                "or set ACIK_EVAL_DATA")
    path = folder / f"{name}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such task file; tasks found there: "
                                f"{', '.join(sorted(p.stem for p in folder.glob('*.jsonl'))) or 'none'}")
    docs = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if "continuations" in rec:  # already in scoring form: one context, continuations scored verbatim
                continuations = list(rec["continuations"])
                contexts = [rec["context"]] * len(continuations)
            elif "context_options" in rec:
                contexts = list(rec["context_options"])
                continuations = [" " + rec["continuation"]] * len(contexts)
            else:
                continuations = [" " + c for c in rec["choices"]]
                contexts = [rec["query"]] * len(continuations)
            docs.append({"contexts": contexts, "continuations": continuations, "gold": int(rec["gold"])})
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{line_no}: not a multiple-choice record ({e})") from None
    return docs


def _fewshot_prefix(docs: list[dict], index: int, shots: int, rng: random.Random) -> str:
    if shots <= 0:
        return ""
    pool = [i for i in range(len(docs)) if i != index]
    chosen = rng.sample(pool, min(shots, len(pool)))
    parts = [docs[i]["contexts"][docs[i]["gold"]] + docs[i]["continuations"][docs[i]["gold"]] for i in chosen]
    return "\n\n".join(parts) + "\n\n"


def score_multiple_choice(docs: list[dict], tokenizer, scorer, shots: int = 0, seed: int = 0) -> dict[str, Any]:
    """Accuracy and length-normalised accuracy (log-likelihood per byte of the continuation)."""
    rng = random.Random(seed)
    pairs, owners = [], []
    for d, doc in enumerate(docs):
        prefix = _fewshot_prefix(docs, d, shots, rng)
        for ctx, cont in zip(doc["contexts"], doc["continuations"]):
            pairs.append((tokenizer.encode(prefix + ctx, add_special_tokens=True),
                          tokenizer.encode(cont, add_special_tokens=False)))
            owners.append(d)
    scores = scorer(pairs)
    correct = correct_norm = 0
    per_doc: list[list[float]] = [[] for _ in docs]
    for (ll, _), d in zip(scores, owners):
        per_doc[d].append(ll)
    for doc, lls in zip(docs, per_doc):
        lengths = [max(len(c.encode("utf-8")), 1) for c in doc["continuations"]]
        correct += int(max(range(len(lls)), key=lambda i: lls[i]) == doc["gold"])
        correct_norm += int(max(range(len(lls)), key=lambda i: lls[i] / lengths[i]) == doc["gold"])
    n = max(len(docs), 1)
    return {"acc": correct / n, "acc_norm": correct_norm / n, "n": len(docs), "loglikelihoods": per_doc}


def _text_for_ppl(text: str | Path) -> str:
    path = Path(text)
    if (path / "data_card.json").exists():  # a data directory: its validation documents
        from acik.data.shards import iter_documents, read_sidecar, split_of
        from acik.manifest import read_manifest

        fraction, seed = read_sidecar(path)["val_fraction"], read_manifest(path).get("seed") or 0
        return "\n\n".join(doc["text"] for doc in iter_documents(path)
                             if split_of(doc["text"], fraction, seed) == "val")
    return path.read_text(encoding="utf-8")


def evaluate(model_dir: str | Path | None = None, tasks: list[str] = ("ppl",), *, llm=None,
             data_dir: str | Path | None = None, text: str | Path | None = None, limit: int | None = None,
             seed: int = 0, shots: int = 0, api: str | None = None, model_name: str | None = None,
             api_key: str | None = None, tokenizer_dir: str | Path | None = None,
             batch_size: int = 8, progress: bool = False) -> dict[str, Any]:
    """Run `tasks` on a model directory (or a loaded `llm`, or a server at `api`); returns a results dict.
    `progress` shows a bar per task on stderr (tokens scored, tokens/s, time left)."""
    from acik.loader import load
    from acik.models import tokenizer_source
    from acik.tokenizer import load_tokenizer

    if llm is None and api is None:
        llm = load(model_dir, dtype="float32", optimize=True)  # scoring only runs forward
    bar = None  # the current task's progress bar, if `progress`

    def tick(n_tokens: int) -> None:
        if bar is not None:
            bar.update(n_tokens)

    def open_bar(total: int) -> None:
        nonlocal bar
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, desc=task, unit="tok", unit_scale=True, dynamic_ncols=True, file=sys.stderr)

    def close_bar() -> None:
        nonlocal bar
        if bar is not None:
            bar.close()
            bar = None

    if api is not None:
        tokenizer = load_tokenizer(tokenizer_source(tokenizer_dir or model_dir))

        def scorer(pairs):
            open_bar(sum(len(c) + len(x) for c, x in pairs))
            return api_loglikelihoods(api, model_name or "default", pairs, api_key, progress=tick)
    else:
        tokenizer = llm.tokenizer

        def scorer(pairs):
            open_bar(sum(len(c) + len(x) for c, x in pairs))
            return loglikelihoods(llm.model, pairs, batch_size=batch_size, progress=tick)

    results: dict[str, Any] = {"model": str(model_dir or api), "seed": seed, "shots": shots, "tasks": {}}
    for task in tasks:
        if task == "ppl":
            if text is None:
                raise ValueError("the ppl task needs --text FILE (a text file or a data directory)")
            if llm is None:
                raise ValueError("ppl over --api is not supported; run it on the model directory")
            raw = _text_for_ppl(text)
            ids = tokenizer.encode(raw, add_special_tokens=False)
            if limit:
                ids = ids[:limit]
            open_bar(len(ids))
            nll, ppl, count = perplexity(llm.model, ids, progress=tick)
            close_bar()
            n_bytes = len(tokenizer.decode(ids).encode("utf-8"))
            results["tasks"]["ppl"] = {"nll": nll, "perplexity": ppl, "tokens": count,
                                       "bits_per_byte": nll * count / (n_bytes * 0.6931471805599453)}
        elif task in MC_TASKS or (data_dir and (Path(data_dir) / f"{task}.jsonl").exists()):
            docs = load_task(task, data_dir)[: limit or None]
            scored = score_multiple_choice(docs, tokenizer, scorer, shots=shots, seed=seed)
            close_bar()
            scored.pop("loglikelihoods")
            results["tasks"][task] = scored
        else:
            raise ValueError(f"unknown task {task!r}; tasks: ppl, {', '.join(MC_TASKS)}")
    return results


def format_table(results: dict[str, Any]) -> str:
    rows = ["| task | metric | value | n |", "| --- | --- | --- | --- |"]
    for task, r in results["tasks"].items():
        if task == "ppl":
            rows.append(f"| ppl | perplexity | {r['perplexity']:.3f} | {fmt.count(r['tokens'], 'token')} |")
            rows.append(f"| ppl | bits per byte | {r['bits_per_byte']:.4f} | |")
        else:
            rows.append(f"| {task} | acc | {r['acc']:.4f} | {r['n']} |")
            rows.append(f"| {task} | acc_norm | {r['acc_norm']:.4f} | {r['n']} |")
    return "\n".join(rows)


def _cmd_eval(args) -> int:
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.api is None and args.dir is None:
        raise ValueError("give a model directory, or --api URL --model NAME")
    results = evaluate(args.dir, tasks, data_dir=args.data_dir, text=args.text, limit=args.limit, seed=args.seed,
                       shots=args.shots, api=args.api, model_name=args.model, api_key=args.api_key,
                       tokenizer_dir=args.tokenizer, batch_size=args.batch_size, progress=not args.quiet)
    print(format_table(results))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.output}")
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("eval", help="perplexity and multiple-choice evaluation")
    p.add_argument("dir", nargs="?", help="model directory (omit with --api)")
    p.add_argument("--tasks", default="ppl", help=f"comma-separated: ppl, {', '.join(MC_TASKS)}")
    p.add_argument("--data-dir", help="folder of multiple-choice JSONL files (default: ../shared/data/eval)")
    p.add_argument("--text", help="text file or data directory for ppl")
    p.add_argument("--limit", type=int, help="first N documents per task (ppl: first N tokens)")
    p.add_argument("--seed", type=int, default=0, help="seed that picks the few-shot examples (default 0)")
    p.add_argument("--shots", type=int, default=0, help="solved examples put before each question (default 0)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="sequences scored per forward pass; a question's choices share one pass over its context "
                   "(default 8)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars on stderr")
    p.add_argument("--api", help="an OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", help="model name at --api")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"),
                   help="API key for --api (default: $OPENAI_API_KEY)")
    p.add_argument("--tokenizer", help="tokenizer directory for --api (default: the model directory)")
    p.add_argument("--output", help="write the results as JSON here")
    p.set_defaults(func=_cmd_eval)
