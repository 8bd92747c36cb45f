"""The data stage, end to end: tasks (read, extract, license, language, quality, PII, decontamination,
signatures) run independently; then one pass deduplicates, stores, tokenizes and writes the card.

Every input record ends in exactly one of kept, dropped (with its rule) or quarantined (with its
error), and `in = kept + dropped + quarantined` is checked per task and for the whole run.

Task results live in DATA_DIR/.work until the run finishes; a task whose result file exists is
not run again, so a killed run resumes. Outputs contain no timestamps and are written in input
order, so a rerun gives the same bytes (only acik.json records when it was made).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import zstandard

from acik import fmt
from acik.data import decontam, dedup, docs, filters, langid, pii
from acik.data.executors import execute as _execute
from acik.data.extract import html_to_text
from acik.data.licenses import allowed, normalize_license
from acik.data.recipe import DataRecipe, PIIConfig, load_data_recipe
from acik.data.sources import read_task
from acik.recipe import from_dict

WORK = ".work"
EXAMPLE_CHARS = 300


class ConservationError(RuntimeError):
    """Some input record was neither kept, dropped nor quarantined (or was counted twice)."""


# --- small file helpers -------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class _JsonlZst:
    """Deterministic zstd-compressed JSONL writer (single-threaded compressor, fixed level)."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self._raw = open(self.tmp, "wb")
        self._z = zstandard.ZstdCompressor(level=3).stream_writer(self._raw, closefd=False)
        self.count = 0

    def write(self, row: dict) -> None:
        self._z.write((json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
        self.count += 1

    def close(self) -> None:
        self._z.close()
        self._raw.close()
        os.replace(self.tmp, self.path)


def read_jsonl_zst(path: Path):
    with open(path, "rb") as f:
        data = zstandard.ZstdDecompressor().stream_reader(f).read()
    for line in data.decode("utf-8").splitlines():
        if line:
            yield json.loads(line)


# --- one task -----------------------------------------------------------------------------------


def _ledger_row(rec: dict, outcome: str, **why) -> dict:
    return {
        "id": rec["id"],
        "source": rec["source"],
        "path": rec["path"],
        "outcome": outcome,
        "bytes": rec.get("bytes", 0),
        **why,
    }


def process_record(rec: dict, recipe: DataRecipe, ctx: dict) -> tuple[str, dict]:
    """One record through the per-document steps: ('kept', doc) | ('dropped', row) | ('quarantined', row)."""
    if "error" in rec:
        return "quarantined", _ledger_row(rec, "quarantined", error=rec["error"])
    if "html" in rec:
        text = html_to_text(rec["html"], recipe.extract) if recipe.extract.enabled else rec["html"]
        if not text.strip():
            return "dropped", _ledger_row(rec, "dropped", rule="extract.no_main_text")
    else:
        text = rec["text"]
        if not text.strip():
            return "quarantined", _ledger_row(rec, "quarantined", error="no text (empty)")
        if recipe.unwrap.enabled:
            text = docs.unwrap(text)
    if len(text) > recipe.read.max_doc_chars:
        return "dropped", _ledger_row(rec, "dropped", rule="read.max_doc_chars", text=text)
    license = normalize_license(rec.get("license"))
    if recipe.licenses.enabled and not allowed(license, recipe.licenses.allow):
        return "dropped", _ledger_row(rec, "dropped", rule="licenses.not_allowed", license=license, text=text)
    lang, lang_score = "und", 0.0
    line_bytes: Counter = Counter()  # bytes cut by line rules: counted only if the document is kept
    if recipe.langid.enabled:
        rule, lang, lang_score = langid.check(text, recipe.langid)
        if rule:
            return "dropped", _ledger_row(rec, "dropped", rule=rule, language=lang, text=text)
    for family, check in (
        ("gopher_repetition", filters.gopher_repetition),
        ("gopher_quality", filters.gopher_quality),
    ):
        cfg = getattr(recipe, family)
        if cfg.enabled and (rule := check(text, cfg)):
            return "dropped", _ledger_row(rec, "dropped", rule=rule, text=text)
    if recipe.c4.enabled:
        rule, text = filters.c4(text, recipe.c4, ctx["lines_removed"], line_bytes)
        if rule:
            return "dropped", _ledger_row(rec, "dropped", rule=rule, text=text)
    if recipe.fineweb.enabled and (rule := filters.fineweb(text, recipe.fineweb)):
        return "dropped", _ledger_row(rec, "dropped", rule=rule, text=text)
    if recipe.pii.enabled:
        before = sum(ctx["pii"].values())
        text, _ = pii.scrub(text, recipe.pii, ctx["pii"])
        ctx["pii"]["documents_changed"] += sum(ctx["pii"].values()) != before
    if recipe.decontamination.enabled and decontam.contaminated(
        text, ctx["eval_index"], recipe.decontamination.ngram
    ):
        return "dropped", _ledger_row(rec, "dropped", rule="decontamination.eval_ngram", text=text)
    ctx["line_bytes"].update(line_bytes)
    doc = {
        "id": rec["id"],
        "text": text,
        "source": rec["source"],
        "path": rec["path"],
        "license": license,
        "language": lang,
        "language_score": round(lang_score, 4),
        "metadata": rec.get("metadata", {}),
        "bytes": len(text.encode("utf-8")),
    }
    return "kept", doc


def run_task(task: dict, recipe_dict: dict, work_dir: str) -> dict:
    """Run one task and write its results under `work_dir`; returns its statistics. Pure function of
    (task, recipe, input bytes): Ray or a process pool can run it anywhere that sees the files."""
    recipe = from_dict(DataRecipe, recipe_dict)
    work = Path(work_dir)
    tdir = work / "tasks"
    tid = task["task_id"]
    eval_path = work / "decontam.npy"
    ctx = {
        "lines_removed": Counter(),
        "line_bytes": Counter(),
        "pii": Counter(),
        "eval_index": np.load(eval_path) if eval_path.exists() else np.zeros(0, np.uint64),
    }
    perms = dedup.permutations(recipe.dedup.bands * recipe.dedup.rows, recipe.dedup.seed)
    docs = _JsonlZst(tdir / f"{tid}.docs.jsonl.zst")
    ledger = _JsonlZst(tdir / f"{tid}.ledger.jsonl.zst")
    dropped_out = _JsonlZst(tdir / f"{tid}.dropped.jsonl.zst") if recipe.write_dropped else None
    stats = {
        "task_id": tid,
        "source": task["source"],
        "license": task["license"],
        "recipe": task.get("recipe", "custom"),
        "records_in": 0,
        "bytes_in": 0,
        "kept": 0,
        "dropped": Counter(),
        "quarantined": Counter(),
        "bytes_removed": Counter(),  # rule -> input bytes of the documents it dropped, or of the lines it cut
        "examples": {},
    }
    signatures, hashes = [], []
    for rec in read_task(task, recipe):
        # Counted here, apart from the outcome bookkeeping, so the conservation check can catch a
        # record that an outcome path forgets.
        stats["records_in"] += 1
        stats["bytes_in"] += rec.get("bytes", 0)
        result = process_record(rec, recipe, ctx)
        if result is None:  # a lost record; check_task below reports it with the counts
            continue
        outcome, row = result
        if outcome == "kept":
            docs.write(row)
            hashes.append(dedup.exact_hash(row["text"]))
            signatures.append(
                dedup.minhash(row["text"], recipe.dedup, perms)
                if recipe.dedup.near
                else np.zeros(0, np.uint32)
            )
            stats["kept"] += 1
            continue
        text = row.pop("text", None)
        key = row.get("rule") or row.get("error")
        stats["dropped" if outcome == "dropped" else "quarantined"][key] += 1
        ledger.write(row)
        if outcome == "dropped":
            stats["bytes_removed"][key] += row["bytes"]
            examples = stats["examples"].setdefault(key, [])
            if text and len(examples) < recipe.examples_per_rule:
                examples.append(_example(text, recipe))
            if dropped_out is not None:
                dropped_out.write({**row, "text": text})
    docs.close()
    ledger.close()
    if dropped_out is not None:
        dropped_out.close()
    k = recipe.dedup.bands * recipe.dedup.rows if recipe.dedup.near else 0
    sig = np.stack(signatures) if signatures else np.zeros((0, k), np.uint32)
    with open(tdir / f"{tid}.sig.npy.tmp", "wb") as f:
        np.save(f, sig)
    os.replace(tdir / f"{tid}.sig.npy.tmp", tdir / f"{tid}.sig.npy")
    _write_atomic(tdir / f"{tid}.hashes.json", json.dumps(hashes).encode())
    stats["lines_removed"] = dict(sorted(ctx["lines_removed"].items()))
    stats["bytes_removed"] = dict(sorted((stats["bytes_removed"] + ctx["line_bytes"]).items()))
    stats["pii"] = dict(sorted(ctx["pii"].items()))
    stats["dropped"] = dict(sorted(stats["dropped"].items()))
    stats["quarantined"] = dict(sorted(stats["quarantined"].items()))
    check_task(stats)
    # Written last: its presence marks the task finished.
    _write_atomic(tdir / f"{tid}.stats.json", (json.dumps(stats, indent=1, sort_keys=True) + "\n").encode())
    return stats


def _example(text: str, recipe: DataRecipe) -> str:
    short = " ".join(text[:EXAMPLE_CHARS].split())
    short, _ = pii.scrub(short, PIIConfig())  # the card is public even when the corpus keeps PII
    return short + ("…" if len(text) > EXAMPLE_CHARS else "")


def check_task(stats: dict) -> None:
    out = stats["kept"] + sum(stats["dropped"].values()) + sum(stats["quarantined"].values())
    if out != stats["records_in"]:
        raise ConservationError(
            f"task {stats['task_id']} ({stats['source']}): {stats['records_in']} records in, but "
            f"{stats['kept']} kept + {sum(stats['dropped'].values())} dropped + "
            f"{sum(stats['quarantined'].values())} quarantined = {out}"
        )


def check_conservation(card: dict) -> None:
    """`documents_in == documents_kept + sum(documents_dropped) + documents_quarantined`, or raise."""
    dropped = sum(card["documents_dropped"].values())
    total = card["documents_kept"] + dropped + card["documents_quarantined"]
    if total != card["documents_in"]:
        raise ConservationError(
            f"conservation check failed: {card['documents_in']} documents in, but {card['documents_kept']} "
            f"kept + {dropped} dropped + {card['documents_quarantined']} quarantined = {total}"
        )


# --- the whole run ------------------------------------------------------------------------------


def _fingerprint(tasks: list[dict], recipe_dicts: dict[str, dict]) -> str:
    """What earlier task results depend on: plan, recipes, and the input and eval files' sizes and times."""
    from acik.manifest import canonical_json_hash

    paths = [f for t in tasks if t["kind"] == "files" for f in t["files"]]
    paths += sorted({e for r in recipe_dicts.values() for e in r["decontamination"]["eval_sets"]})
    files = []
    for f in paths:
        st = Path(f).stat() if Path(f).exists() else None
        files.append([f, st.st_size if st else None, st.st_mtime_ns if st else None])
    return canonical_json_hash({"tasks": tasks, "recipe": recipe_dicts, "files": files})


def _prepare_work(out: Path, tasks: list[dict], recipe: DataRecipe, recipe_dicts: dict[str, dict]) -> Path:
    work = out / WORK
    plan = {"fingerprint": _fingerprint(tasks, recipe_dicts)}
    plan_path = work / "plan.json"
    if plan_path.exists() and json.loads(plan_path.read_text()) != plan:
        shutil.rmtree(work)  # inputs or recipe changed: earlier task results do not apply
    (work / "tasks").mkdir(parents=True, exist_ok=True)
    _write_atomic(plan_path, json.dumps(plan).encode())
    eval_path = work / "decontam.npy"
    if recipe.decontamination.enabled and recipe.decontamination.eval_sets and not eval_path.exists():
        index = decontam.build_index(recipe.decontamination.eval_sets, recipe.decontamination.ngram)
        with open(work / "decontam.npy.tmp", "wb") as f:
            np.save(f, index)
        os.replace(work / "decontam.npy.tmp", eval_path)
    return work


def run(
    inputs: list[str] | str | None,
    out_dir: str | Path,
    recipe: str | Path | DataRecipe | None = None,
    tokenizer: str | Path | None = None,
    executor: str = "local",
    workers: int | None = None,
    overrides: list[str] | None = None,
    license: str | None = None,
    command: str | list | None = None,
) -> dict:
    """Run the data stage on `inputs` (paths, or "python-env") into `out_dir`; returns the data card summary.

    `recipe` is None (each file gets the built-in recipe for its kind: `docs` for loose text, markdown,
    reST and HTML files, `web` for everything else), "docs" or "web" (that built-in for every input),
    a YAML path or a DataRecipe (for every input); `tokenizer` a tokenizer directory (None: acik's
    byte-level tokenizer); `executor` "local" (process pool) or "ray".
    """
    from acik.data.card import build_card, write_card
    from acik.data.sources import plan_tasks

    mode, recipes = docs.resolve_recipes(recipe, overrides)
    recipe = next(iter(recipes.values()))
    inputs = [inputs] if isinstance(inputs, str) else list(inputs or [])
    inputs = inputs or list(recipe.inputs)
    if not inputs:
        raise ValueError(
            "no inputs: pass --input PATH (files, folders, or python-env) or list them under "
            "`inputs:` in the recipe"
        )
    tasks = plan_tasks(inputs, recipe, license, mode)
    used = {t["recipe"] for t in tasks}
    # Run-wide settings (dedup, tokenize, seed) come from the first recipe in use: web's when any
    # input got it, docs' when every input is a document.
    recipes = {name: dataclasses.replace(r, inputs=inputs) for name, r in recipes.items() if name in used}
    recipe = next(iter(recipes.values()))
    recipe_dicts = {name: dataclasses.asdict(r) for name, r in recipes.items()}
    recipe_dict = recipe_dicts[next(iter(recipes))]
    workers = workers or min(os.cpu_count() or 1, 8)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    work = _prepare_work(out, tasks, recipe, recipe_dicts)
    pending = [t for t in tasks if not (work / "tasks" / f"{t['task_id']}.stats.json").exists()]
    _execute(run_task, pending, recipe_dicts, work, executor, workers)

    task_stats = [json.loads((work / "tasks" / f"{t['task_id']}.stats.json").read_text()) for t in tasks]
    for s in task_stats:
        check_task(s)
    if not any(s["bytes_in"] for s in task_stats):
        shutil.rmtree(work)
        if not any(out.iterdir()):
            out.rmdir()
        n_files = sum(len(t.get("files", [])) for t in tasks)
        raise ValueError(
            f"input {', '.join(inputs)}: no text to read ({fmt.count(n_files, 'file')}, all empty); "
            "give files or folders that hold text"
        )
    kept_stats = _dedup_and_store(out, work, tasks, recipe)
    from acik.data.shards import tokenize_documents

    tokens = None
    if recipe.tokenize.enabled:
        tokens = tokenize_documents(out, tokenizer, recipe.tokenize, recipe.seed)
    else:  # shards from an earlier run into this directory would not match these documents
        for name in ("tokens", "tokenizer"):
            shutil.rmtree(out / name, ignore_errors=True)
    card = build_card(recipe, tasks, task_stats, kept_stats, tokens, recipes)
    check_conservation(card)
    if kept_stats["ledger_rows"] != card["documents_in"]:
        raise ConservationError(
            f"ledger has {kept_stats['ledger_rows']} rows for {card['documents_in']} input documents"
        )
    write_card(out, card)
    _write_manifest(out, recipe_dict, recipe, card, tokenizer, command, recipe_dicts if len(recipes) > 1 else None)
    shutil.rmtree(work)
    return {**card["summary"], "out": str(out), "tasks": len(tasks), "tasks_run": len(pending)}


def _dedup_and_store(out: Path, work: Path, tasks: list[dict], recipe: DataRecipe) -> dict:
    """Cluster survivors across tasks, then write documents/, ledger and dropped/ in input order."""
    tdir = work / "tasks"
    hashes: list[str] = []
    sigs = []
    for t in tasks:
        hashes.extend(json.loads((tdir / f"{t['task_id']}.hashes.json").read_text()))
        sigs.append(np.load(tdir / f"{t['task_id']}.sig.npy"))
    n = len(hashes)
    drop: dict[int, tuple[str, int]] = {}
    if recipe.dedup.exact:
        first: dict[str, int] = {}
        for i, h in enumerate(hashes):
            if h in first:
                drop[i] = ("dedup.exact", first[h])
            else:
                first[h] = i
    near_stats: dict = {}
    if recipe.dedup.near and n:
        alive = np.array([i for i in range(n) if i not in drop], dtype=np.int64)
        all_sigs = np.concatenate(sigs) if sigs else np.zeros((0, 0), np.uint32)
        near, near_stats = dedup.near_duplicates(all_sigs[alive], recipe.dedup)
        for j, root in near.items():
            drop[int(alive[j])] = ("dedup.near", int(alive[root]))
    for name in ("documents", "dropped"):
        if (out / name).exists():
            shutil.rmtree(out / name)
    (out / "documents").mkdir()
    if recipe.write_dropped:
        (out / "dropped").mkdir()
    ids: list[str] = []
    survivor_ids: list[str] = []
    kept = []
    ledger = _JsonlZst(out / "ledger.jsonl.zst")
    docs_w: _JsonlZst | None = None
    dropped_w = _JsonlZst(out / "dropped" / "part-00000.jsonl.zst") if recipe.write_dropped else None
    dedup_examples: dict[str, list[str]] = {}
    dedup_bytes: Counter = Counter()
    part = 0
    i = 0
    for t in tasks:
        tid = t["task_id"]
        for row in read_jsonl_zst(tdir / f"{tid}.ledger.jsonl.zst"):
            ledger.write(row)
            ids.append(row["id"])
        if recipe.write_dropped:
            for row in read_jsonl_zst(tdir / f"{tid}.dropped.jsonl.zst"):
                dropped_w.write(row)
        for doc in read_jsonl_zst(tdir / f"{tid}.docs.jsonl.zst"):
            ids.append(doc["id"])
            survivor_ids.append(doc["id"])
            if i in drop:
                rule, keeper = drop[i]
                # The kept document comes earlier in input order, so its id is already known.
                row = {
                    "id": doc["id"],
                    "source": doc["source"],
                    "path": doc["path"],
                    "outcome": "dropped",
                    "rule": rule,
                    "duplicate_of": survivor_ids[keeper],
                    "bytes": doc["bytes"],
                }
                ledger.write(row)
                dedup_bytes[rule] += doc["bytes"]
                if len(dedup_examples.setdefault(rule, [])) < recipe.examples_per_rule:
                    dedup_examples[rule].append(_example(doc["text"], recipe))
                if dropped_w is not None:
                    dropped_w.write({**row, "text": doc["text"]})
            else:
                if docs_w is None or docs_w.count >= recipe.documents_per_file:
                    if docs_w is not None:
                        docs_w.close()
                    docs_w = _JsonlZst(out / "documents" / f"part-{part:05d}.jsonl.zst")
                    part += 1
                ledger.write(
                    {
                        "id": doc["id"],
                        "source": doc["source"],
                        "path": doc["path"],
                        "outcome": "kept",
                        "bytes": doc["bytes"],
                    }
                )
                docs_w.write(doc)
                kept.append(
                    {
                        "source": doc["source"],
                        "license": doc["license"],
                        "language": doc["language"],
                        "bytes": doc["bytes"],
                    }
                )
            i += 1
    if docs_w is not None:
        docs_w.close()
    ledger.close()
    if dropped_w is not None:
        dropped_w.close()
    if len(set(ids)) != len(ids):
        dup = next(x for x, c in Counter(ids).items() if c > 1)
        raise ConservationError(f"document id {dup} appears more than once in the ledger")
    dedup_counts = Counter(rule for rule, _ in drop.values())
    return {
        "kept": kept,
        "ledger_rows": len(ids),
        "dedup": {
            "exact_dropped": dedup_counts["dedup.exact"],
            "near_dropped": dedup_counts["dedup.near"],
            **near_stats,
        },
        "dedup_examples": dedup_examples,
        "dedup_bytes": dict(dedup_bytes),
    }


def _write_manifest(
    out: Path, recipe_dict: dict, recipe: DataRecipe, card: dict, tokenizer, command, recipes: dict | None = None
) -> None:
    from acik.manifest import read_manifest, write_manifest

    parents = []
    tok = card.get("tokens")
    if tok:
        parent = {"role": "tokenizer"}
        if tokenizer and (Path(tokenizer) / "acik.json").exists():
            parent["directory_hash"] = read_manifest(tokenizer)["directory_hash"]
        parents.append(
            {
                **parent,
                "path": str(tokenizer) if tokenizer else "acik:byte-level",
                "tokenizer_identity": tok["tokenizer_identity"],
            }
        )
    extra = {"data_card": card["summary"], "tokenizer_identity": tok["tokenizer_identity"] if tok else None}
    if card.get("python_env"):
        extra["python_env"] = card["python_env"]
    if recipes:  # files got different recipes (the card's sources say which); `recipe` holds the first
        extra["recipes"] = recipes
    write_manifest(
        out, kind="data", command=command, recipe=recipe_dict, seed=recipe.seed, parents=parents, extra=extra
    )


def retokenize(
    data_dir: str | Path,
    tokenizer: str | Path | None = None,
    command: str | list | None = None,
    overrides: list[str] | None = None,
) -> dict:
    """Rewrite DATA_DIR/tokens with another tokenizer (None: the one DATA_DIR has); kept documents and the
    ledger stay as they are. `overrides` (`tokenize.*` and `seed` only) change how tokens are split and sharded."""
    from acik.data.card import read_card, summary, write_card
    from acik.data.shards import tokenize_documents
    from acik.manifest import read_manifest

    root = Path(data_dir)
    card = read_card(root)
    manifest = read_manifest(root)
    docs.check_tokenize_overrides(overrides)
    recipe = load_data_recipe(from_dict(DataRecipe, manifest["recipe"]), overrides)
    recipe_dict = dataclasses.asdict(recipe)
    if tokenizer is None:  # keep the directory's tokenizer, named as the manifest names it when it still exists
        prev = next((p["path"] for p in manifest.get("parents", []) if p.get("role") == "tokenizer"), None)
        if prev and prev != "acik:byte-level":
            tokenizer = prev if (Path(prev) / "tokenizer.json").exists() else root / "tokenizer"
    card["tokens"] = tokenize_documents(root, tokenizer, recipe.tokenize, recipe.seed)
    card["summary"] = summary(card)
    check_conservation(card)
    write_card(root, card)
    _write_manifest(
        root, recipe_dict, recipe, card, tokenizer, command or manifest.get("command"), manifest.get("recipes")
    )
    return card["summary"]
