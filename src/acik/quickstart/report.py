"""The quickstart's report (`report/report.md` with its pictures) and the model cards of its three models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from acik import fmt
from acik.quickstart.recipe import MODEL_STAGES, STAGES, QuickstartRecipe
from acik.train.report import draw_loss, pyplot, read_metrics

BASE = {"pretrain": None, "finetune": "pretrain", "int8": "finetune"}


def _metrics(model_dir: Path) -> list[dict]:
    return read_metrics(model_dir / "report" / "metrics.jsonl")


def plot_losses(inputs: dict[str, Path], out: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    for ax, stage, title in ((axes[0], "pretrain", "Pretraining"), (axes[1], "finetune", "Fine-tuning (answers only)")):
        draw_loss(ax, _metrics(inputs[stage]), title)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_eval(results: dict, out: Path) -> Path:
    plt = pyplot()
    models = results["models"]
    labels = [m["label"] for m in models.values()]
    fig, (ax, tab) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100, gridspec_kw={"width_ratios": [1, 1.3]})
    x = range(len(labels))
    ax.bar([i - 0.27 for i in x], [m["acc"] * 100 for m in models.values()], width=0.27, label="accuracy")
    ax.bar(list(x), [m["acc_norm"] * 100 for m in models.values()], width=0.27, label="length-normalised")
    ax.bar([i + 0.27 for i in x], [m.get("acc_calibrated", 0) * 100 for m in models.values()], width=0.27,
           label="calibrated (PMI)")
    ax.axhline(results["chance"] * 100, color="grey", linestyle="--", linewidth=1, label="chance (25%)")
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("% correct")
    ax.set_ylim(0, 100)
    ax.set_title(f"{results['questions']} held-out questions, 4 choices")
    ax.legend(fontsize=8, loc="upper left")
    tab.axis("off")
    rows = [[m["label"], f"{m['acc']:.1%}", f"{m['acc_norm']:.1%}", _pct(m.get("acc_calibrated")),
             f"{m['val_loss']:.3f}", f"{m['val_perplexity']:.1f}"] for m in models.values()]
    table = tab.table(cellText=rows, colLabels=["model", "accuracy", "acc (norm)", "calibrated", "val loss",
                                                "val ppl"],
                      loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.auto_set_column_width(col=list(range(6)))
    table.scale(1, 1.6)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _manifest(path: Path) -> dict:
    return json.loads((path / "acik.json").read_text())


def _license_lines(card: dict) -> list[str]:
    rows = [f"| {lic['license']} | {lic['documents']} | {lic['bytes']:,} |" for lic in card["licenses"]]
    return ["| license | documents | bytes |", "|---|---:|---:|", *rows]


def write_report(out: Path, inputs: dict[str, Path], r: QuickstartRecipe, results: dict) -> Path:
    plot_losses(inputs, out / "report_loss.png")
    plot_eval(results, out / "report_eval.png")
    card = json.loads((inputs["tokens"] / "data_card.json").read_text())
    models = results["models"]
    lines = [f"# {r.name}: quickstart report", "",
             "A small language model built on this machine from the local Python environment's documentation: "
             "data stage, tokenizer, pretraining, supervised fine-tuning on questions derived from the corpus, "
             "int8 quantization and a held-out evaluation. Every directory of the run has an `acik.json` manifest "
             "(`acik verify DIR`) that records the command rebuilding it (`acik reproduce DIR`).", "",
             "## Held-out evaluation", "",
             f"{results['questions']} questions such as \"What does `textwrap.dedent(text)` do?\" were held out of "
             "fine-tuning. Each is asked as a 4-way multiple choice: its true answer (the first sentences of the "
             "docstring) and the answers of three other held-out questions, scored by the log-likelihood of each "
             "answer after the chat prompt. Chance is 25%. *Length-normalised* divides by the answer's bytes; "
             "*calibrated* subtracts each answer's log-likelihood after a question that names nothing "
             "(\"What does it do?\"), so an answer's own likelihood cannot win: what is left is how much the "
             "name asked about raises it.", "",
             "![evaluation](report_eval.png)", "",
             "| model | directory | accuracy | length-normalised | calibrated | validation loss | "
             "validation perplexity |", "|---|---|---:|---:|---:|---:|---:|"]
    for stage, m in models.items():
        lines.append(f"| {m['label']} | `{stage}/` | {m['acc']:.1%} | {m['acc_norm']:.1%} | "
                     f"{_pct(m.get('acc_calibrated'))} | {m['val_loss']:.3f} | {m['val_perplexity']:.1f} |")
    verdict = ("Fine-tuning improved held-out accuracy" if models["finetune"]["acc"] > models["pretrain"]["acc"]
               else "Fine-tuning did **not** improve held-out accuracy on this run")
    lines += ["", f"{verdict}: {models['pretrain']['acc']:.1%} before, {models['finetune']['acc']:.1%} after "
              f"({models['int8']['acc']:.1%} in int8); calibrated {_pct(models['pretrain'].get('acc_calibrated'))} "
              f"before, {_pct(models['finetune'].get('acc_calibrated'))} after. Validation loss is on the corpus's "
              "held-out documents.", ""]
    lines += _examples(inputs)
    lines += ["## Training", "", "![loss curves](report_loss.png)", ""]
    pre, ft = _manifest(inputs["pretrain"]), _manifest(inputs["finetune"])
    tr, fr = pre.get("training", {}), ft.get("finetune", {})
    lines += [f"- pretraining: {fmt.count(tr.get('steps', 0), 'step')}, {tr.get('tokens_seen', 0):,} tokens, final "
              f"loss {fmt.loss(tr.get('final_loss'))}, validation loss {fmt.loss(tr.get('val_loss'))}",
              f"- fine-tuning ({fr.get('method')}): {fmt.count(fr.get('steps', 0), 'step')} on "
              f"{_count(inputs['qa'] / 'train.jsonl')} question/answer pairs, final loss "
              f"{fmt.loss(fr.get('final_loss'))}, validation loss {fmt.loss(fr.get('val_loss'))}", ""]
    lines += ["## Data", "",
              "Data card: [`data/DATA_CARD.md`](../data/DATA_CARD.md) (with tokens: "
              "[`tokens/DATA_CARD.md`](../tokens/DATA_CARD.md)).", "",
              "| documents in | kept | dropped | quarantined | bytes in | bytes kept | training tokens | "
              "validation tokens |", "|---:|---:|---:|---:|---:|---:|---:|---:|",
              f"| {card['documents_in']:,} | {card['documents_kept']:,} | {sum(card['documents_dropped'].values()):,} "
              f"| {card['documents_quarantined']:,} | {card['bytes_in']:,} | {card['bytes_kept']:,} | "
              f"{card['summary']['tokens_train']:,} | {card['summary']['tokens_val']:,} |", "",
              "Dropped, by rule: " + (", ".join(f"{rule} {n}" for rule, n in sorted(
                  card["documents_dropped"].items(), key=lambda kv: -kv[1])) or "none") + ".", "",
              *_license_lines(card), "",
              "License terms a derived model carries forward: " + _terms(card) + ".", ""]
    root = inputs["eval"].parent
    lines += ["## Stages", "", "Wall and CPU seconds of each stage's last build (this machine may have been "
              "shared with other work).", "",
              "| stage | wall s | CPU s | directory hash | rebuild it with |", "|---|---:|---:|---|---|"]
    for stage in STAGES:
        if stage == "report":
            continue
        m = _manifest(root / stage)
        qs = m.get("quickstart") or {}
        lines.append(f"| {stage} | {qs.get('seconds', 'n/a')} | {qs.get('cpu_seconds', 'n/a')} | "
                     f"`{m['directory_hash'][:16]}` | `acik reproduce {root / stage}` |")
    lines += ["", "## Use it", "", "```bash", f"acik chat {root / 'finetune'}", f"acik serve {root / 'int8'}",
              f"acik eval {root / 'finetune'} --tasks heldout_mc --data-dir {root / 'qa'}", "```", "",
              "In a checkout, `acik` is `.venv/bin/acik` until `source .venv/bin/activate` puts it on the PATH.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _count(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def _terms(card: dict) -> str:
    terms = card.get("license_terms") or {}
    parts = [f"{k.replace('_', '-')}: {', '.join(v)}" for k, v in terms.items() if v]
    return "; ".join(parts) or "none beyond the licenses' notices (no share-alike or non-commercial terms)"


def _examples(inputs: dict[str, Path], n: int = 5) -> list[str]:
    from acik.quickstart.qa import read_jsonl

    mc = {m["name"]: m for m in read_jsonl(inputs["qa"] / "heldout_mc.jsonl")}
    preds = read_jsonl(inputs["eval"] / "predictions.jsonl")[:n]
    lines = ["Examples (the first held-out questions; ✓ where the fine-tuned model's plain log-likelihood choice "
             "is right):", ""]
    for p in preds:
        m = mc[p["name"]]
        mark = "✓" if p["finetune"] == p["gold"] else "✗"
        lines.append(f"- {m['question']} {mark}")
        lines.append(f"  - true answer: {m['continuations'][p['gold']]}")
        if p["finetune"] != p["gold"]:
            lines.append(f"  - fine-tuned model chose: {m['continuations'][p['finetune']]}")
    return lines + [""]


# ---------------------------------------------------------------------------------------------
# Model cards


def write_model_cards(inputs: dict[str, Path], r: QuickstartRecipe, results: dict) -> list[str]:
    """README.md of each model directory: Hub metadata (license, datasets, base model, model-index with the
    held-out results), intended use, limitations, training data and procedure."""
    card = json.loads((inputs["tokens"] / "data_card.json").read_text())
    written = []
    for stage, label in MODEL_STAGES.items():
        d = inputs[stage]
        m = _manifest(d)
        res = results["models"][stage]
        meta: dict[str, Any] = {
            "license": "other",
            "license_name": "mixed-open-source-documentation",
            "license_link": "../data/DATA_CARD.md",
            "library_name": "transformers",
            "pipeline_tag": "text-generation",
            "language": ["en"],
            "tags": ["acik", "quickstart", "llama"] + (["int8"] if stage == "int8" else []),
            "datasets": ["python-env (local: the Python standard library and installed packages' docstrings)"],
        }
        if BASE[stage]:
            meta["base_model"] = f"../{BASE[stage]}"
        meta["model-index"] = [{"name": f"{r.name}-{stage}", "results": [{
            "task": {"type": "multiple-choice", "name": "Multiple choice"},
            "dataset": {"type": "acik-quickstart-heldout-qa", "name": f"quickstart held-out docstring questions "
                        f"({results['questions']}, 4 choices)", "split": "heldout"},
            "metrics": [{"type": "accuracy", "value": round(res["acc"], 4), "name": "accuracy"},
                        {"type": "accuracy", "value": round(res["acc_norm"], 4), "name": "length-normalised accuracy"},
                        *([{"type": "accuracy", "value": round(res["acc_calibrated"], 4),
                            "name": "calibrated accuracy (PMI)"}] if "acc_calibrated" in res else []),
                        {"type": "perplexity", "value": round(res["val_perplexity"], 3),
                         "name": "validation perplexity (corpus)"}]}]}]
        cfg = json.loads((d / "config.json").read_text())
        n_params = _param_count(cfg)
        lines = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip(), "---", "",
                 f"# {r.name}-{stage}: the quickstart's {label} model", "",
                 f"A {n_params / 1e6:.1f}M-parameter Llama-architecture model ({cfg['num_hidden_layers']} layers, "
                 f"hidden size {cfg['hidden_size']}, vocabulary {cfg['vocab_size']}) made by `acik quickstart` on "
                 "one CPU machine from the documentation of the local Python environment.", "",
                 "## Intended use", "",
                 "A demonstration and a test bed: it shows every step from documents to a private chat model and "
                 "lets each artifact be checked (`acik verify`) and rebuilt bit for bit (`acik reproduce`). "
                 + ("It answers questions like \"What does `textwrap.dedent` do?\" in the style of the first "
                    "sentence of a docstring." if stage != "pretrain" else
                    "It continues Python documentation text; it was not trained to follow instructions."), "",
                 "## Limitations and risks", "",
                 "- Tiny and briefly trained: it is wrong most of the time, invents plausible-sounding "
                 "documentation, and must not be relied on for facts about Python or anything else.",
                 "- English Python reference prose only; it knows nothing else and has no safety training.",
                 "- The multiple-choice score measures whether it prefers the true docstring sentence over three "
                 "others, not whether it can write one.", ""]
        if stage == "int8":
            q = m.get("quantization", {})
            skip = q.get("skip", r.quantize.skip) or []
            kept = f"`{', '.join(skip)}` kept in full precision" if skip else "every linear layer quantized"
            lines += [f"- int8 weights (per-channel scales; {kept}): "
                      f"{q.get('bits_per_weight', 8):.2f} bits per quantized weight.", ""]
        lines += ["## Training data", "",
                  f"{card['documents_kept']:,} of {card['documents_in']:,} documents of the Python environment "
                  "(docstrings parsed with `ast`, never imported, plus pydoc topics and package descriptions) "
                  "kept by the data stage; see the data card [`../data/DATA_CARD.md`](../data/DATA_CARD.md) "
                  f"and, tokenized, [`../tokens/DATA_CARD.md`](../tokens/DATA_CARD.md). "
                  f"{card['summary']['tokens_train']:,} training tokens.", "",
                  *_license_lines(card), "",
                  "The weights derive from text under these licenses (mostly PSF-2.0, the Python standard "
                  "library's). License terms carried forward: " + _terms(card) + ". Keep the notices of the "
                  "source licenses when redistributing.", ""]
        if stage != "pretrain":
            lines += [f"Fine-tuning data: {_count(inputs['qa'] / 'train.jsonl'):,} question/answer pairs derived "
                      f"from the same corpus (`../qa/train.jsonl`); {_count(inputs['qa'] / 'heldout.jsonl')} "
                      "questions were held out for evaluation and never trained on (`../qa/heldout.jsonl`).", ""]
        lines += ["## Training procedure", "", _procedure(stage, r), "",
                  "## Evaluation", "",
                  "| metric | value |", "|---|---:|",
                  f"| held-out accuracy ({results['questions']} questions, 4 choices, chance 25%) | {res['acc']:.1%} |",
                  f"| length-normalised accuracy | {res['acc_norm']:.1%} |",
                  f"| calibrated accuracy (answer's log-likelihood minus its likelihood after \"What does it do?\") "
                  f"| {_pct(res.get('acc_calibrated'))} |",
                  f"| validation loss / perplexity on held-out corpus documents | {res['val_loss']:.3f} / "
                  f"{res['val_perplexity']:.1f} |", "",
                  "## Use", "", "```bash", f"acik chat {d}", f"acik serve {d}", "```", "",
                  "```python", "import acik", f"llm = acik.load({str(d)!r})",
                  "print(llm.chat([{'role': 'user', 'content': 'What does `textwrap.dedent` do?'}]))", "```", "",
                  f"Provenance: `acik.json` (command `{' '.join(m['command'])}`, seed {m.get('seed')}, parents by "
                  "hash).", ""]
        (d / "README.md").write_text("\n".join(lines), encoding="utf-8")
        written.append(stage)
    return written


def _param_count(cfg: dict) -> int:
    h, i, v, n = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or h // heads
    per_layer = h * hd * (heads + 2 * kv) + heads * hd * h + 3 * h * i + 2 * h
    return n * per_layer + v * h * (1 if cfg.get("tie_word_embeddings") else 2) + h


def _procedure(stage: str, r: QuickstartRecipe) -> str:
    p, f = r.pretrain, r.finetune
    pre = (f"Pretrained from scratch (`acik train` loop, preset `{p.model}` with {p.model_config or 'no changes'}): "
           f"{p.max_steps} steps of {p.batch_size} sequences x {p.seq_len} tokens, {p.optimizer} lr {p.lr:g} "
           f"({p.schedule}, {p.warmup_steps} warm-up steps), weight decay {p.weight_decay}, seed {r.seed}, float32 "
           "on CPU.")
    if stage == "pretrain":
        return pre
    ft = (f" Then fully fine-tuned (`acik finetune --method full`) on the training questions in the ChatML chat "
          f"format, loss on the answers only: {f'{f.max_steps} steps' if f.max_steps else f'{f.epochs} epochs'}, batch "
          f"{f.batch_size} packed rows of up to {f.max_seq_len} tokens, lr {f.lr:g} ({f.schedule}), seed {r.seed}.")
    if stage == "finetune":
        return pre + ft
    return pre + ft + f" Then quantized with `acik quantize --method {r.quantize.method}`."
