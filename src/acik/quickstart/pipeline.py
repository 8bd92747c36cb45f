"""`acik quickstart`: documents to a private, evaluated, quantized chat model, every step on record.

The run is a chain of stages, each one a directory of the run with its own manifest:

    data -> tokenizer -> tokens -> pretrain -> qa -> finetune -> int8 -> eval -> report

Each stage's manifest records the command that rebuilds that stage alone
(`acik quickstart --stage NAME --out STAGE_DIR --recipe R [--fast] --INPUT DIR ...`), so
`acik reproduce STAGE_DIR` reruns it and `acik reproduce --all` reruns the chain. A rerun of the whole
quickstart skips every stage whose manifest verifies and was made from the same settings and inputs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from acik import fmt
from acik.quickstart.recipe import (
    MODEL_STAGES,
    PACKAGED_RECIPE,
    STAGES,
    QuickstartRecipe,
    load_quickstart_recipe,
    stage_settings,
)
from acik.recipe import to_dict

# ---------------------------------------------------------------------------------------------
# Bookkeeping


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _parent(name: str, path: Path) -> dict:
    from acik.manifest import read_manifest

    return {"role": name, "path": str(path), "directory_hash": read_manifest(path)["directory_hash"]}


def stamp(directory: Path, *, stage: str, command: list[str], settings: dict, inputs: dict[str, Path],
          seconds: float | None = None, cpu_seconds: float | None = None, kind: str | None = None,
          recipe: dict | None = None,
          seed: int | None = None, extra: dict | None = None) -> dict:
    """(Re)write `directory`'s manifest as this quickstart stage's: its command, its inputs as parents, and
    the settings it ran with; keeps what the stage's own writer recorded (kind, recipe, extra facts)."""
    from acik.manifest import canonical_json_hash, read_manifest, write_manifest

    old = read_manifest(directory) if (directory / "acik.json").exists() else {}
    keep = {k: v for k, v in old.items() if k not in {"schema_version", "kind", "directory_hash", "files", "command",
                                                       "cwd", "recipe", "seed", "code_version", "parents",
                                                       "created", "quickstart"}}
    parents = [_parent(n, p) for n, p in inputs.items()]
    parents += [p for p in old.get("parents", []) if p.get("role") not in inputs and p.get("path")
                and Path(p["path"]).resolve() not in {q.resolve() for q in inputs.values()}
                and not str(p["path"]).startswith(str(directory))]
    qs = {"stage": stage, "settings_hash": canonical_json_hash(settings)}
    for key, value in (("seconds", seconds), ("cpu_seconds", cpu_seconds)):
        if value is not None:
            qs[key] = round(value, 2)
        elif (old.get("quickstart") or {}).get(key) is not None:
            qs[key] = old["quickstart"][key]
    return write_manifest(directory, kind=kind or old.get("kind", stage), command=command,
                          recipe=recipe if recipe is not None else old.get("recipe"),
                          seed=seed if seed is not None else old.get("seed"), parents=parents,
                          extra={**keep, **(extra or {}), "quickstart": qs})


def is_done(directory: Path, stage: str, settings: dict, inputs: dict[str, Path]) -> bool:
    """A stage is done when its manifest verifies, it ran with these settings, and its inputs are the ones
    it recorded (same directory hashes)."""
    from acik.manifest import ManifestError, canonical_json_hash, read_manifest, verify

    if not (directory / "acik.json").exists():
        return False
    try:
        manifest = read_manifest(directory)
        problems = [p for p in verify(directory) if "human-facing" not in p]
    except (ManifestError, OSError):
        return False
    qs = manifest.get("quickstart") or {}
    if problems or qs.get("stage") != stage or qs.get("settings_hash") != canonical_json_hash(settings):
        return False
    recorded = {p.get("role"): p.get("directory_hash") for p in manifest.get("parents", [])}
    for name, path in inputs.items():
        if not (path / "acik.json").exists() or recorded.get(name) != read_manifest(path)["directory_hash"]:
            return False
    return True


def stage_command(stage: str, out: Path, inputs: dict[str, Path], recipe_path: Path, fast: bool,
                  seed: int | None, overrides: list[str] | None) -> list[str]:
    cmd = ["acik", "quickstart", "--stage", stage, "--out", str(out), "--recipe", str(recipe_path)]
    if fast:
        cmd.append("--fast")
    if seed is not None:
        cmd += ["--seed", str(seed)]
    for o in overrides or []:
        cmd += ["--set", o]
    for name, path in inputs.items():
        cmd += [f"--{name}", str(path)]
    return cmd


def _move_contents(src: Path, dst: Path, skip: set[str] = frozenset({"acik.json"})) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for item in sorted(src.iterdir()):
        if item.name not in skip:
            target = dst / item.name
            if target.is_dir():
                shutil.rmtree(target)
            shutil.move(str(item), str(target))


# ---------------------------------------------------------------------------------------------
# The stages. Each writes `out` and returns facts for its manifest.


def run_data(out: Path, inputs: dict[str, Path], r: QuickstartRecipe, cmd: list[str]) -> dict:
    from acik.data import run as data_run

    # Tokens come later, from the tokenizer trained on these documents (the `tokens` stage).
    recipe = dataclasses.replace(r.data, tokenize=dataclasses.replace(r.data.tokenize, enabled=False))
    summary = data_run(["python-env"], out, recipe=recipe, workers=min(os.cpu_count() or 1, 2), command=cmd)
    _say(f"      {summary['documents_in']} documents read, {summary['documents_kept']} kept, "
         f"{summary['documents_dropped']} dropped, {summary['documents_quarantined']} quarantined")
    return {"recipe": to_dict(recipe), "seed": r.seed}


def run_tokenizer(out: Path, inputs: dict[str, Path], r: QuickstartRecipe, cmd: list[str]) -> dict:
    from acik.tokenizer import train_bpe

    s = r.tokenizer
    train_bpe([inputs["data"] / "documents"], s.vocab_size, out, min_frequency=s.min_frequency,
              show_progress=False, command=cmd, recipe=to_dict(s))
    vocab = json.loads((out / "acik.json").read_text())["training"]["vocab_size"]
    _say(f"      byte-level BPE, {vocab} tokens")
    return {"recipe": to_dict(s)}


def run_tokens(out: Path, inputs: dict[str, Path], r: QuickstartRecipe, cmd: list[str]) -> dict:
    from acik.data.card import read_card, summary, write_card
    from acik.data.shards import tokenize_documents

    data = inputs["data"]
    out.mkdir(parents=True, exist_ok=True)
    for name in ("documents", "ledger.jsonl.zst", "data_card.json"):
        src = data / name
        if src.is_dir():
            shutil.copytree(src, out / name, dirs_exist_ok=True)
        elif src.exists():
            shutil.copy2(src, out / name)
    card = read_card(out)
    card["tokens"] = tokenize_documents(out, inputs["tokenizer"], r.data.tokenize, r.seed)
    card["summary"] = summary(card)
    write_card(out, card)
    s = card["summary"]
    _say(f"      {s['tokens_train']:,} training tokens, {s['tokens_val']:,} validation tokens")
    extra = {"data_card": s, "tokenizer_identity": card["tokens"]["tokenizer_identity"]}
    if card.get("python_env"):
        extra["python_env"] = card["python_env"]
    return {"kind": "data", "recipe": to_dict(r.data), "seed": r.seed, "extra": extra}


def _train_outputs(work: Path, out: Path) -> None:
    """Move a training run's exported model into the stage directory, and its logs under report/ (human-facing:
    timings differ between runs, so they stay outside the directory hash)."""
    _move_contents(work / "model", out)
    (out / "report").mkdir(exist_ok=True)
    for name, new in (("metrics.jsonl", "metrics.jsonl"), ("report_loss.png", "loss.png"),
                      ("report.md", "training.md"), ("summary.json", "summary.json"),
                      ("data_stats.json", "data_stats.json")):
        if (work / name).exists():
            shutil.move(str(work / name), str(out / "report" / new))
    shutil.rmtree(work)


def run_pretrain(out: Path, inputs: dict[str, Path], r: QuickstartRecipe, cmd: list[str]) -> dict:
    from acik.train.pretrain import pretrain

    s = dataclasses.replace(r.pretrain, data=str(inputs["tokens"]), tokenizer=None)
    work = out / ".train"  # hidden: outside the manifest; checkpoints there let an interrupted run resume
    result = pretrain(s, work, resume="auto", command=cmd)
    _train_outputs(work, out)
    _say(f"      {fmt.count(result.step, 'step')}, {fmt.count(result.tokens_seen, 'token')}, final loss "
         f"{fmt.loss(result.final_loss)}, validation loss {fmt.loss(result.val_loss)}")
    return {"kind": "model", "recipe": to_dict(s), "seed": r.seed,
            "extra": {"training": {"steps": result.step, "tokens_seen": result.tokens_seen,
                                   "final_loss": result.final_loss, "val_loss": result.val_loss}}}


def chat_prompt(tokenizer) -> Any:
    def render(question: str) -> str:
        return tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
    return render


def run_qa(out: Path, inputs: dict[str, Path], r: QuickstartRecipe, cmd: list[str]) -> dict:
    from acik.data.shards import iter_documents
    from acik.quickstart.qa import derive_pairs, multiple_choice, split_pairs, write_jsonl
    from acik.tokenizer import load_tokenizer

    pairs = derive_pairs(iter_documents(inputs["data"]), r.qa)
    parts = split_pairs(pairs, r.qa, r.seed)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in parts.items():
        write_jsonl(out / f"{name}.jsonl", rows)
    mc = multiple_choice(parts["heldout"], r.seed, chat_prompt(load_tokenizer(inputs["tokenizer"])))
    write_jsonl(out / "heldout_mc.jsonl", mc)
    counts = {k: len(v) for k, v in parts.items()}
    _say(f"      {len(pairs)} question/answer pairs: {counts['train']} to train on, {counts['val']} to validate, "
         f"{counts['heldout']} held out for the multiple-choice evaluation")
    return {"kind": "qa", "recipe": to_dict(r.qa), "seed": r.seed, "extra": {"qa": {"pairs": len(pairs), **counts}}}


def run_finetune(out: Path, inputs: dict[str, Path], r: QuickstartRecipe, cmd: list[str]) -> dict:
    from acik.train.finetune import finetune

    work = out / ".train"
    licenses = sorted({json.loads(line).get("license") or "unknown"
                       for line in (inputs["qa"] / "train.jsonl").read_text().splitlines() if line.strip()})
    recipe = dataclasses.replace(r.finetune, data_license=" AND ".join(licenses))
    finetune(inputs["pretrain"], inputs["qa"] / "train.jsonl", work, val_data=inputs["qa"] / "val.jsonl",
             recipe=recipe, resume="auto", command=cmd)
    summary = json.loads((work / "summary.json").read_text())
    _train_outputs(work, out)
    _say(f"      {fmt.count(summary['steps'], 'step')}, final loss {fmt.loss(summary['final_loss'])}, "
         f"validation loss {fmt.loss(summary['val_loss'])}")
    return {"kind": "model", "recipe": to_dict(recipe), "seed": r.seed,
            "extra": {"finetune": {"method": recipe.method, "steps": summary["steps"],
                                   "final_loss": summary["final_loss"], "val_loss": summary["val_loss"]}}}


def run_int8(out: Path, inputs: dict[str, Path], r: QuickstartRecipe, cmd: list[str]) -> dict:
    from acik.quant.cli import quantize_dir

    s = quantize_dir(inputs["finetune"], out, r.quantize, command=cmd)
    _say(f"      {r.quantize.method}: {s['quantized_weights']:,} weights at {s['bits_per_weight']:.2f} bits; "
         f"model {fmt.size(s['total_bytes'])}")
    return {"kind": "model", "recipe": to_dict(r.quantize)}


def run_eval(out: Path, inputs: dict[str, Path], r: QuickstartRecipe, cmd: list[str]) -> dict:
    from acik.data.shards import load_tokens
    from acik.eval.harness import score_multiple_choice
    from acik.eval.scoring import loglikelihoods, perplexity
    from acik.loader import load
    from acik.quickstart.qa import read_jsonl

    mc = read_jsonl(inputs["qa"] / "heldout_mc.jsonl")
    docs = [{"contexts": [m["context"]] * len(m["continuations"]), "continuations": m["continuations"],
             "gold": m["gold"]} for m in mc]
    val_ids = [int(t) for t in load_tokens(inputs["tokens"], "val")]
    results: dict[str, Any] = {"questions": len(docs), "chance": 1 / 4, "models": {}}
    predictions = []
    for stage, label in MODEL_STAGES.items():
        llm = load(inputs[stage], dtype="float32", optimize=True)  # scoring only runs forward

        def scorer(pairs, model=llm.model):
            return loglikelihoods(model, pairs, batch_size=r.eval.batch_size)

        scored = score_multiple_choice(docs, llm.tokenizer, scorer)
        calibrated = calibrated_accuracy(docs, scored["loglikelihoods"], llm.tokenizer, scorer)
        nll, ppl, count = perplexity(llm.model, val_ids)
        results["models"][stage] = {"label": label, "acc": scored["acc"], "acc_norm": scored["acc_norm"],
                                    "acc_calibrated": calibrated, "n": scored["n"], "val_loss": nll,
                                    "val_perplexity": ppl, "val_tokens": count}
        predictions.append([max(range(len(lls)), key=lls.__getitem__) for lls in scored["loglikelihoods"]])
        _say(f"      {label}: held-out accuracy {scored['acc']:.1%} (length-normalised {scored['acc_norm']:.1%}, "
             f"calibrated {calibrated:.1%}), validation loss {fmt.loss(nll)}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = [{"name": m["name"], "gold": m["gold"], **{s: p[i] for s, p in zip(MODEL_STAGES, predictions)}}
            for i, m in enumerate(mc)]
    from acik.quickstart.qa import write_jsonl

    write_jsonl(out / "predictions.jsonl", rows)
    return {"kind": "eval", "recipe": to_dict(r.eval), "extra": {"results": results["models"]}}


NEUTRAL_QUESTION = "What does it do?"


def calibrated_accuracy(docs: list[dict], lls: list[list[float]], tokenizer, scorer) -> float:
    """Accuracy when each answer's log-likelihood after its question is measured against its log-likelihood
    after a question that names nothing ("What does it do?"): the pointwise mutual information of question and
    answer (Holtzman et al. 2021). It removes the answers' prior (short, common phrasing wins otherwise), so
    it measures whether the model ties the answer to the name it was asked about."""
    neutral = chat_prompt(tokenizer)(NEUTRAL_QUESTION)
    answers = sorted({a for d in docs for a in d["continuations"]})
    context = tokenizer.encode(neutral, add_special_tokens=True)
    prior = dict(zip(answers, (ll for ll, _ in scorer([(context, tokenizer.encode(a, add_special_tokens=False))
                                                       for a in answers]))))
    correct = 0
    for d, row in zip(docs, lls):
        pmi = [ll - prior[a] for ll, a in zip(row, d["continuations"])]
        correct += int(max(range(len(pmi)), key=pmi.__getitem__) == d["gold"])
    return correct / max(len(docs), 1)


def run_report(out: Path, inputs: dict[str, Path], r: QuickstartRecipe, cmd: list[str]) -> dict:
    from acik.quickstart.report import write_model_cards, write_report

    out.mkdir(parents=True, exist_ok=True)
    results = json.loads((inputs["eval"] / "results.json").read_text())
    path = write_report(out, inputs, r, results)
    for stage in write_model_cards(inputs, r, results):
        m = json.loads((inputs[stage] / "acik.json").read_text())
        # The cards are human-facing (outside the directory hash): refresh the file list only.
        stamp(inputs[stage], stage=stage, command=m["command"], settings=stage_settings(r, stage),
              inputs={n: Path(p["path"]) for n in STAGES[stage]
                      for p in m["parents"] if p.get("role") == n})
    (out / "summary.json").write_text(json.dumps({"results": results["models"], "questions": results["questions"]},
                                                 indent=2, sort_keys=True) + "\n")
    _say(f"      {path}")
    return {"kind": "report"}


RUNNERS = {"data": run_data, "tokenizer": run_tokenizer, "tokens": run_tokens, "pretrain": run_pretrain,
           "qa": run_qa, "finetune": run_finetune, "int8": run_int8, "eval": run_eval, "report": run_report}


def pick_threads() -> int:
    """Threads for torch: OMP_NUM_THREADS if set, else the cores other work leaves idle (at least one).
    Spinning OpenMP threads on cores that are already busy slow a run down several times over; the
    results do not depend on the thread count (checked by the reproduce tests)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = int(os.getloadavg()[0] + 0.5)
    except OSError:
        busy = 0
    return max(1, min(cores, cores - busy))


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the data stage's worker pool)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_stage(stage: str, out: Path, inputs: dict[str, Path], r: QuickstartRecipe, cmd: list[str]) -> float:
    """Build one stage from scratch into `out` and stamp its manifest; returns the seconds it took."""
    missing = [n for n in STAGES[stage] if n not in inputs]
    if missing:
        raise ValueError(f"--stage {stage} needs --{' --'.join(missing)} (the directories of those stages)")
    for name, path in inputs.items():
        if not (path / "acik.json").exists():
            raise FileNotFoundError(f"--{name} {path}: not a finished {name} stage (no acik.json); run it first")
    if out.exists():  # start clean, but keep a training stage's resumable checkpoints (.train/)
        for item in out.iterdir():
            if item.name != ".train":
                shutil.rmtree(item) if item.is_dir() else item.unlink()
    t0, c0 = time.perf_counter(), _cpu_seconds()
    facts = RUNNERS[stage](out, inputs, r, cmd)
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    stamp(out, stage=stage, command=cmd, settings=stage_settings(r, stage), inputs=inputs, seconds=seconds,
          cpu_seconds=cpu, kind=facts.get("kind"), recipe=facts.get("recipe"), seed=facts.get("seed"),
          extra=facts.get("extra"))
    return seconds


def run(out: str | Path = "runs/quickstart", *, fast: bool = False, recipe: str | Path | None = None,
        seed: int | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Run every stage into `out`, skipping the finished ones; returns the evaluation results."""
    import torch

    torch.set_num_threads(pick_threads())
    root = Path(out).resolve()
    recipe_path = Path(recipe).resolve() if recipe else PACKAGED_RECIPE
    r = load_quickstart_recipe(recipe_path, fast=fast, seed=seed, overrides=overrides)
    root.mkdir(parents=True, exist_ok=True)
    _say(f"acik quickstart{' --fast' if fast else ''}: {root} (recipe {recipe_path}, seed {r.seed})")
    t_start = time.perf_counter()
    timings = {}
    for i, stage in enumerate(STAGES, 1):
        d = root / stage
        inputs = {n: root / n for n in STAGES[stage]}
        settings = stage_settings(r, stage)
        if is_done(d, stage, settings, inputs):
            _say(f"[{i}/{len(STAGES)}] {stage}: already done ({d}), skipped")
            timings[stage] = None
            continue
        _say(f"[{i}/{len(STAGES)}] {stage}: {_DESCRIBE[stage]}")
        cmd = stage_command(stage, d, inputs, recipe_path, fast, seed, overrides)
        timings[stage] = run_stage(stage, d, inputs, r, cmd)
        _say(f"      done in {timings[stage]:.1f} s")
    total = time.perf_counter() - t_start
    results = json.loads((root / "eval" / "results.json").read_text())
    _say(closing_message(root, results, total, timings))
    return {"out": str(root), "seconds": total, "timings": timings, **results}


_DESCRIBE = {
    "data": "reading the local Python environment's documentation, filtering, deduplicating, data card",
    "tokenizer": "training a byte-level BPE tokenizer on the kept documents",
    "tokens": "tokenizing the kept documents with it",
    "pretrain": "pretraining a small model from scratch",
    "qa": "deriving question/answer pairs from the corpus; holding some out",
    "finetune": "fine-tuning on the training questions",
    "int8": "quantizing the fine-tuned model to int8",
    "eval": "asking the held-out questions as multiple choice (pretrained, fine-tuned, int8)",
    "report": "writing the report and the model cards",
}


def closing_message(root: Path, results: dict, total: float, timings: dict) -> str:
    m = results["models"]
    lines = ["", f"Done in {total:.0f} s. Held-out questions ({results['questions']}, 4 choices, chance 25%):"]
    for stage in MODEL_STAGES:
        r = m[stage]
        calibrated = f"   calibrated {r['acc_calibrated']:6.1%}" if "acc_calibrated" in r else ""
        lines.append(f"  {r['label']:<18} accuracy {r['acc']:6.1%}{calibrated}   validation loss "
                     f"{fmt.loss(r['val_loss'])}")
    if m["finetune"]["acc"] <= m["pretrain"]["acc"]:
        lines.append("  note: fine-tuning did not beat the pretrained model on this run")
    from acik.invocation import acik_command, shell_path

    # Commands as they run when pasted here: `.venv/bin/acik` until the venv is activated.
    acik, at = acik_command(), shell_path
    lines += [
        "",
        f"Report:        {at(root / 'report' / 'report.md')}",
        f"Chat with it:  {acik} chat {at(root / 'finetune')}      "
        f"(or the int8 model: {acik} chat {at(root / 'int8')})",
        f"Serve it:      {acik} serve {at(root / 'int8')}      "
        "(OpenAI API at http://127.0.0.1:8000/v1, chat page at /)",
        f"Check it:      {acik} verify {at(root)}/*/   and   {acik} reproduce {at(root / 'pretrain')}",
    ]
    activate = Path(acik).parent / "activate"
    if acik.endswith("/acik") and activate.is_file():
        lines.append(f"(plain `acik` works after `source {shell_path(activate)}`: see README.md)")
    return "\n".join(lines)


def _cmd_quickstart(args) -> int:
    if args.stage:
        import torch

        torch.set_num_threads(pick_threads())
        if not args.out:
            raise ValueError("--stage needs --out: the stage's own directory")
        recipe_path = Path(args.recipe).resolve() if args.recipe else PACKAGED_RECIPE
        r = load_quickstart_recipe(recipe_path, fast=args.fast, seed=args.seed, overrides=args.set)
        inputs = {n: Path(getattr(args, n)).resolve() for n in STAGES if getattr(args, n, None)}
        out = Path(args.out).resolve()
        cmd = stage_command(args.stage, out, {n: inputs[n] for n in STAGES[args.stage] if n in inputs}, recipe_path,
                            args.fast, args.seed, args.set)
        _say(f"acik quickstart --stage {args.stage}: {_DESCRIBE[args.stage]}")
        seconds = run_stage(args.stage, out, {n: inputs[n] for n in STAGES[args.stage] if n in inputs}, r, cmd)
        _say(f"done in {seconds:.1f} s: {out}")
        return 0
    run(args.out or "runs/quickstart", fast=args.fast, recipe=args.recipe, seed=args.seed, overrides=args.set)
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("quickstart", help="build, fine-tune, quantize and evaluate a model from local data",
                       description="Build a small model end to end from the local Python environment's "
                                   "documentation: data, tokenizer, pretraining, fine-tuning on derived "
                                   "questions, int8, evaluation and a report. A rerun skips finished stages.")
    p.add_argument("--out", help="run directory (default runs/quickstart); with --stage, that stage's directory")
    p.add_argument("--fast", action="store_true", help="a smaller run (about a minute), for tests")
    p.add_argument("--recipe", help="YAML recipe (default: the packaged quickstart.yaml)")
    p.add_argument("--seed", type=int, help="the run's seed (overrides the recipe)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a recipe key, e.g. pretrain.max_steps=50")
    g = p.add_argument_group("one stage (what each stage's manifest records, for acik reproduce)")
    g.add_argument("--stage", choices=list(STAGES), help="run only this stage into --out")
    for name in STAGES:
        g.add_argument(f"--{name}", metavar="DIR", help=f"the {name} stage's directory (an input)")
    p.set_defaults(func=_cmd_quickstart)
