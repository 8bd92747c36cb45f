"""The data card: `data_card.json` (facts, generated from the ledger and task statistics) and
`DATA_CARD.md` (the same facts for people, in the sections of *Datasheets for Datasets*, with a
Hugging Face dataset-card YAML header)."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import yaml

from acik.data.licenses import license_terms

FAMILIES = (
    "read",
    "unwrap",
    "extract",
    "licenses",
    "langid",
    "gopher_repetition",
    "gopher_quality",
    "c4",
    "fineweb",
    "pii",
    "decontamination",
    "dedup",
)


def build_card(
    recipe,
    tasks: list[dict],
    task_stats: list[dict],
    kept_stats: dict,
    tokens: dict | None,
    recipes: dict | None = None,
) -> dict:
    """The card's facts. `recipe` gives the run-wide settings; `recipes` (name -> DataRecipe) every
    recipe a task used, when files got different ones (default: `recipe` alone, as "custom")."""
    recipes = recipes or {"custom": recipe}
    dropped: Counter = Counter()
    bytes_removed: Counter = Counter(kept_stats.get("dedup_bytes", {}))
    quarantined: Counter = Counter()
    lines_removed: Counter = Counter()
    pii_counts: Counter = Counter()
    examples: dict[str, list[str]] = {}
    sources: dict[str, dict] = {}
    for s in task_stats:
        dropped.update(s["dropped"])
        quarantined.update(s["quarantined"])
        lines_removed.update(s["lines_removed"])
        pii_counts.update(s["pii"])
        bytes_removed.update(s.get("bytes_removed", {}))
        for rule, ex in s["examples"].items():
            room = recipe.examples_per_rule - len(examples.setdefault(rule, []))
            examples[rule].extend(ex[: max(room, 0)])
        src = sources.setdefault(
            s["source"],
            {
                "source": s["source"],
                "documents_in": 0,
                "bytes_in": 0,
                "documents_kept": 0,
                "bytes_kept": 0,
                "licenses": Counter(),
                "recipes": Counter(),  # recipe name -> documents in that got it
            },
        )
        src["recipes"][s.get("recipe", "custom")] += s["records_in"]
        src["documents_in"] += s["records_in"]
        src["bytes_in"] += s["bytes_in"]
    dd = kept_stats["dedup"]
    for rule in ("dedup.exact", "dedup.near"):
        key = "exact_dropped" if rule == "dedup.exact" else "near_dropped"
        if dd.get(key):
            dropped[rule] += dd[key]
    for rule, ex in kept_stats["dedup_examples"].items():
        examples[rule] = ex
    licenses: dict[str, dict] = {}
    languages: Counter = Counter()
    for k in kept_stats["kept"]:
        src = sources[k["source"]]
        src["documents_kept"] += 1
        src["bytes_kept"] += k["bytes"]
        src["licenses"][k["license"]] += 1
        lic = licenses.setdefault(
            k["license"], {"license": k["license"], "documents": 0, "bytes": 0, **license_terms(k["license"])}
        )
        lic["documents"] += 1
        lic["bytes"] += k["bytes"]
        languages[k["language"]] += 1
    for src in sources.values():
        src["licenses"] = dict(sorted(src["licenses"].items()))
        src["recipes"] = dict(sorted(src["recipes"].items()))
    recipe_dict = dataclasses.asdict(recipe)
    rules = {}
    for fam in FAMILIES:
        settings = recipe_dict[fam]
        rules[fam] = {
            "settings": settings,
            "dropped": {r: c for r, c in sorted(dropped.items()) if r.split(".")[0] == fam},
        }
    card = {
        "documents_in": sum(s["records_in"] for s in task_stats),
        "documents_kept": len(kept_stats["kept"]),
        "documents_dropped": dict(sorted(dropped.items())),
        "documents_quarantined": sum(quarantined.values()),
        "quarantined": dict(sorted(quarantined.items())),
        "bytes_in": sum(s["bytes_in"] for s in task_stats),
        "bytes_kept": sum(k["bytes"] for k in kept_stats["kept"]),
        "inputs": list(recipe.inputs),
        "sources": [sources[k] for k in sorted(sources)],
        "licenses": [licenses[k] for k in sorted(licenses)],
        "license_terms": {
            "share_alike": sorted(k for k, v in licenses.items() if v["share_alike"]),
            "non_commercial": sorted(k for k, v in licenses.items() if v["non_commercial"]),
            "attribution": sorted(k for k, v in licenses.items() if v["attribution"]),
        },
        "rules": rules,
        # Each recipe used, with its per-document settings; `rules` above holds the first one's.
        "recipes": {
            name: {fam: dataclasses.asdict(r)[fam] for fam in FAMILIES if fam != "dedup"}
            for name, r in recipes.items()
            if any(name in s["recipes"] for s in sources.values())
        },
        "bytes_removed": dict(sorted(bytes_removed.items())),
        "lines_removed": dict(sorted(lines_removed.items())),
        "pii": dict(sorted(pii_counts.items())),
        "dedup": dd,
        "languages": dict(sorted(languages.items(), key=lambda kv: (-kv[1], kv[0]))),
        "examples": {k: examples[k] for k in sorted(examples)},
        "tokens": tokens,
        "python_env": None,
    }
    if any(t["kind"].startswith("pyenv") for t in tasks):
        from acik.data.pyenv import environment_facts

        card["python_env"] = environment_facts(recipe.python_env)
    card["summary"] = summary(card)
    return card


def summary(card: dict) -> dict:
    from acik.data.docs import low_yield

    tok = card.get("tokens") or {}
    splits = tok.get("splits", {})
    recipes: Counter = Counter()
    for s in card["sources"]:
        recipes.update(s.get("recipes", {}))
    return {
        "documents_in": card["documents_in"],
        "documents_kept": card["documents_kept"],
        "documents_dropped": sum(card["documents_dropped"].values()),
        "documents_quarantined": card["documents_quarantined"],
        "bytes_in": card["bytes_in"],
        "bytes_kept": card["bytes_kept"],
        "recipes": dict(sorted(recipes.items())),
        "tokens_train": splits.get("train", {}).get("tokens", 0),
        "tokens_val": splits.get("val", {}).get("tokens", 0),
        "tokenizer_identity": tok.get("tokenizer_identity"),
        "low_yield": low_yield(card),
    }


def write_card(data_dir: str | Path, card: dict) -> None:
    root = Path(data_dir)
    (root / "data_card.json").write_text(
        json.dumps(card, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (root / "DATA_CARD.md").write_text(render_markdown(card, root.name), encoding="utf-8")


def read_card(data_dir: str | Path) -> dict:
    path = Path(data_dir) / "data_card.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not a data directory (run `acik data run` to make one)")
    return json.loads(path.read_text(encoding="utf-8"))


def _hf_license(card: dict) -> str:
    names = [lic["license"] for lic in card["licenses"]]
    if len(names) == 1 and names[0] not in ("unknown", "public-domain"):
        return names[0].lower()
    return "other"


def _size_category(n: int) -> str:
    for limit, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
    ):
        if n < limit:
            return label
    return "n>10M"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(card: dict, name: str = "dataset") -> str:
    meta = {
        "license": _hf_license(card),
        "language": [lang for lang in card["languages"] if lang != "und"] or ["und"],
        "pretty_name": name,
        "size_categories": [_size_category(card["documents_kept"])],
        "task_categories": ["text-generation"],
        "tags": ["acik", "pretraining"],
    }
    tok = card.get("tokens") or {}
    out = [
        "---",
        yaml.safe_dump(meta, sort_keys=True).strip(),
        "---",
        "",
        f"# Data card: {name}",
        "",
        "Generated by `acik data` from the ledger of every input document. Facts in machine-readable form: "
        "`data_card.json`; every document's fate: `ledger.jsonl.zst`.",
        "",
        _table(
            ["documents in", "kept", "dropped", "quarantined", "bytes in", "bytes kept"],
            [
                [
                    card["documents_in"],
                    card["documents_kept"],
                    sum(card["documents_dropped"].values()),
                    card["documents_quarantined"],
                    card["bytes_in"],
                    card["bytes_kept"],
                ]
            ],
        ),
        "",
    ]

    out += [
        "## Motivation",
        "",
        "A pretraining corpus whose every document can be traced to its source, license and the rules "
        "it passed. Inputs: " + ", ".join(f"`{i}`" for i in card["inputs"]) + ".",
        "",
    ]

    out += [
        "## Composition",
        "",
        "### Sources",
        "",
        _table(
            ["source", "recipe", "licenses (kept docs)", "docs in", "docs kept", "bytes in", "bytes kept"],
            [
                [
                    s["source"],
                    ", ".join(f"{k} ({v})" for k, v in s.get("recipes", {}).items()) or "-",
                    ", ".join(f"{k}: {v}" for k, v in s["licenses"].items()) or "-",
                    s["documents_in"],
                    s["documents_kept"],
                    s["bytes_in"],
                    s["bytes_kept"],
                ]
                for s in card["sources"]
            ],
        ),
        "",
        "### Licenses of kept documents",
        "",
        _table(
            ["license", "documents", "bytes", "share-alike", "non-commercial", "attribution"],
            [
                [
                    x["license"],
                    x["documents"],
                    x["bytes"],
                    x["share_alike"],
                    x["non_commercial"],
                    x["attribution"],
                ]
                for x in card["licenses"]
            ],
        ),
        "",
    ]
    terms = card["license_terms"]
    if terms["share_alike"] or terms["non_commercial"]:
        out += [
            "**Terms carried forward** to anything trained on this data: "
            + (f"share-alike ({', '.join(terms['share_alike'])}); " if terms["share_alike"] else "")
            + (f"non-commercial ({', '.join(terms['non_commercial'])})." if terms["non_commercial"] else ""),
            "",
        ]
    out += [
        "### Languages (kept documents)",
        "",
        _table(["language", "documents"], list(card["languages"].items())),
        "",
    ]
    if tok:
        out += [
            "### Tokens",
            "",
            f"Tokenizer identity `{tok['tokenizer_identity']}`, vocabulary "
            f"{tok['vocab_size']}, dtype {tok['dtype']}, validation fraction {tok['val_fraction']}.",
            "",
            _table(
                ["split", "documents", "tokens", "shards"],
                [[s, v["documents"], v["tokens"], len(v["shards"])] for s, v in tok["splits"].items()],
            ),
            "",
        ]
    if card.get("python_env"):
        env = card["python_env"]
        out += [
            "### Python environment",
            "",
            f"Python {env['python']} ({env['implementation']}); packages: "
            + (
                ", ".join(f"{k} {v['version']} ({v['license']})" for k, v in env["packages"].items())
                or "none"
            )
            + ". The content of this source depends on these versions.",
            "",
        ]

    out += [
        "## Collection process",
        "",
        "Documents were read from the inputs above: text files, JSONL, Parquet, HTML, WARC/ARC and the "
        "local Python environment (docstrings parsed from source files, never imported). "
        "Records that could not be read are quarantined, not dropped:",
        "",
        _table(["error", "records"], list(card["quarantined"].items()) or [["(none)", 0]]),
        "",
    ]

    out += [
        "## Preprocessing and cleaning",
        "",
        "Each rule, its settings from the recipe, and the documents it removed (in the order the "
        "steps run; a document is counted under the first rule that removed it).",
        "",
    ]
    names = list(card.get("recipes", {}))
    if len(names) > 1:
        out += [
            f"Settings below are the `{names[0]}` recipe's; documents of sources marked otherwise above "
            "got these instead:",
            "",
        ]
        first = card["recipes"][names[0]]
        for name in names[1:]:
            diff = [
                f"{fam}.{k}={json.dumps(v)}"
                for fam, settings in card["recipes"][name].items()
                for k, v in settings.items()
                if first.get(fam, {}).get(k) != v and k != "inputs"
            ]
            out += [f"- `{name}`: " + (", ".join(diff) or "the same settings"), ""]
    if card.get("summary", {}).get("low_yield"):
        from acik.data.docs import hint_text

        out += ["**Most of the input was removed:**", "", "```", hint_text(card["summary"]["low_yield"]), "```", ""]
    for fam, info in card["rules"].items():
        settings = ", ".join(f"{k}={json.dumps(v)}" for k, v in info["settings"].items())
        out += [f"### {fam}", "", f"Settings: {settings}", ""]
        if info["dropped"]:
            out += [_table(["rule", "documents removed"], list(info["dropped"].items())), ""]
        else:
            out += ["Removed no documents.", ""]
    if card["lines_removed"]:
        out += [
            "C4 line filters removed lines (not documents):",
            "",
            _table(["rule", "lines removed"], list(card["lines_removed"].items())),
            "",
        ]
    pii = card["pii"]
    out += [
        f"PII replaced by placeholders: {pii.get('email', 0)} e-mail addresses, {pii.get('ip', 0)} IP "
        f"addresses, {pii.get('phone', 0)} phone numbers, in {pii.get('documents_changed', 0)} documents.",
        "",
    ]
    dd = card["dedup"]
    out += [
        f"Deduplication: {dd.get('exact_dropped', 0)} exact duplicates and {dd.get('near_dropped', 0)} "
        f"near duplicates removed; {dd.get('clusters', 0)} near-duplicate clusters (largest "
        f"{dd.get('largest_cluster', 1)}), {dd.get('candidate_pairs', 0)} candidate pairs checked, "
        f"{dd.get('confirmed_pairs', 0)} confirmed.",
        "",
    ]
    if card["examples"]:
        out += ["### Examples of removed documents", "", "The first few, truncated, with PII scrubbed.", ""]
        for rule, exs in card["examples"].items():
            out += [f"- **{rule}**"] + [f"  - `{e[:200].replace('`', ' ')}`" for e in exs]
        out += [""]

    out += [
        "## Uses",
        "",
        "Language-model pretraining and evaluation of data pipelines. Evaluation sets named in "
        "the recipe were used for decontamination: "
        + (", ".join(f"`{e}`" for e in card["rules"]["decontamination"]["settings"]["eval_sets"]) or "none")
        + ".",
        "",
        "## Distribution",
        "",
        "Redistribution follows the licenses above; share-alike terms apply to "
        "derived datasets and should be named in model cards.",
        "",
        "## Maintenance",
        "",
        "Rebuild with `acik reproduce` from the manifest (`acik.json`), which records "
        "the command, recipe, code version and tokenizer.",
        "",
    ]
    return "\n".join(out)
