"""Documents as opposed to web pages: which recipe each input gets, unwrapping hard-wrapped text, and
the summary's advice when a run keeps little of its input.

Web-crawl rules (C4, FineWeb) are right for web crawls and wrong for a person's own documents: C4's
terminal-punctuation rule deletes every hard-wrapped line and its curly-bracket rule every file with
code. So the input kind decides, file by file: loose text, markdown, reST and HTML files get the
built-in `docs` recipe, WARC/ARC files and JSONL/Parquet data sets the `web` recipe, unless `--recipe`
names one recipe for every input.
"""

from __future__ import annotations

import re
from pathlib import Path

from acik import fmt
from acik.data.recipe import DEFAULT_RECIPE, DOCS_RECIPE, DataRecipe, load_data_recipe

BUILTIN = {"web": DEFAULT_RECIPE, "docs": DOCS_RECIPE}
# sources.file_kind values that are loose documents; everything else (jsonl, parquet, warc, the Python
# environment) is a data set or a crawl.
DOCUMENT_KINDS = {"text", "html"}


def resolve_recipes(
    recipe: str | Path | DataRecipe | None, overrides: list[str] | None
) -> tuple[str, dict[str, DataRecipe]]:
    """(mode, {name: recipe}) for a run. Mode "auto" (recipe None or "auto") holds both built-ins and
    picks one per file; otherwise the one recipe named applies to every input. `overrides` apply to
    every recipe in play."""
    if recipe is None or recipe == "auto":
        return "auto", {name: load_data_recipe(path, overrides) for name, path in BUILTIN.items()}
    if isinstance(recipe, DataRecipe):
        return "custom", {"custom": load_data_recipe(recipe, overrides)}
    if str(recipe) in BUILTIN:  # the names win over files of the same name (a checkout has a docs/ folder)
        return str(recipe), {str(recipe): load_data_recipe(BUILTIN[str(recipe)], overrides)}
    return str(recipe), {str(recipe): load_data_recipe(recipe, overrides)}


def recipe_for_kind(kind: str | None, mode: str) -> str:
    """The recipe name a file of this `sources.file_kind` gets in `mode`."""
    if mode != "auto":
        return mode
    return "docs" if kind in DOCUMENT_KINDS else "web"


def check_tokenize_overrides(overrides: list[str] | None) -> None:
    """`acik data tokenize --set` takes the settings that re-tokenizing uses, and refuses the rest."""
    from acik.recipe import RecipeError, parse_override

    for text in overrides or []:
        path, _ = parse_override(text)
        if path[0] not in ("tokenize", "seed"):
            raise RecipeError(
                f"--set {text}: `acik data tokenize` only re-splits and re-tokenizes the kept documents "
                "(keys tokenize.* and seed); to change which documents are kept, rerun `acik data run` with it"
            )


# --- unwrapping --------------------------------------------------------------------------------

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}#{1,6}(\s|$)")
UNDERLINE = re.compile(r"^\s*([=\-~^\"'`#*+_:.<>])\1{2,}\s*$")  # setext/reST underlines, rules, grid edges
LIST_ITEM = re.compile(r"^(\s*)(?:[-*+\u2022]|\d{1,9}[.)]|#\.)\s+")
TABLE_SEP = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)+\|?\s*$")
# Lines that are blocks of their own: quotes and doctests, HTML, reST directives and fields, tables,
# math, link definitions, footnotes.
BLOCK = re.compile(r"^\s*(?:>|<|\.\. |:[\w -]+:|\||\+[-=+]|\$\$|\[\^?[^\]]+\]:)")
DIRECTIVE = re.compile(r"^\s*\.\. [\w:-]+::")


def _indent(line: str) -> int:
    return len(line.expandtabs(4)) - len(line.expandtabs(4).lstrip())


def unwrap(text: str) -> str:
    """Join hard-wrapped lines into one line per paragraph or list item. Fenced and indented code,
    reST literal blocks and directives, front matter, tables, headings, quotes and HTML keep their
    lines byte for byte; blank lines stay where they are."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    if lines and lines[0].strip() in ("---", "+++"):  # front matter, kept as written
        end = next((j for j in range(1, len(lines)) if lines[j].strip() == lines[0].strip()), None)
        if end is not None:
            out, i = lines[: end + 1], end + 1
    prev = "blank"  # what the last line was: blank, prose, list, block, code
    para_indent = 0  # where the current paragraph's text starts
    list_indent = 0  # where the current list item's text starts (0: not in a list)
    fence = ""  # the open fence's marker
    literal_over = -1  # a reST literal block or directive: lines indented more than this are verbatim
    in_table = False
    hard_break = False
    for line in lines[i:]:
        if fence:
            out.append(line)
            if line.strip().startswith(fence) and not line.strip().strip(fence[0]):
                fence, prev = "", "block"
            continue
        m = FENCE.match(line)
        if m:
            fence, prev, literal_over = m.group(1), "block", -1
            out.append(line)
            continue
        if not line.strip():
            out.append("")
            prev = "code" if prev == "code" else "blank"
            in_table = False
            continue
        ind = _indent(line)
        if literal_over >= 0:
            if ind > literal_over:
                out.append(line)
                prev = "code"
                continue
            literal_over = -1
        if prev in ("blank", "code") and ind >= list_indent + 4 and (prev == "code" or out):
            out.append(line)  # an indented code block
            prev = "code"
            continue
        stripped = line.strip()
        if ind < list_indent and prev in ("blank", "code"):
            list_indent = 0  # a paragraph back at the margin ends the list
        if TABLE_SEP.match(line) or (in_table and "|" in line):
            in_table = True
            out.append(line)
            prev = "block"
            continue
        if HEADING.match(line) or UNDERLINE.match(line) or BLOCK.match(line):
            out.append(line)
            prev = "block"
            if DIRECTIVE.match(line):
                literal_over = ind
            continue
        item = LIST_ITEM.match(line)
        if item:
            out.append(line.rstrip())
            prev, list_indent, para_indent = "list", item.end(), item.end()
        elif prev in ("prose", "list") and not hard_break and ind <= para_indent + 3:
            out[-1] = out[-1] + " " + stripped
        else:
            out.append(line.rstrip())
            prev, para_indent = "prose", ind if not list_indent else max(ind, list_indent)
        hard_break = line.endswith(("  ", "\\"))  # markdown: the next line starts a new line
        if hard_break:
            out[-1] = out[-1].rstrip() + line[len(line.rstrip()):]
        if stripped.endswith("::"):  # reST: the indented block after this paragraph is literal
            literal_over = ind
    return "\n".join(out).strip("\n")


# --- the summary -------------------------------------------------------------------------------

# How to relax each rule: the setting to change and a value that switches it off or loosens it.
RELAX = {
    "read.max_doc_chars": "read.max_doc_chars=10000000",
    "extract.no_main_text": "extract.favor_precision=false",
    "licenses.not_allowed": "licenses.enabled=false (or --license NAME for files that do not say)",
    "langid.language": "langid.keep=null",
    "langid.min_confidence": "langid.min_confidence=0.3",
    "c4.no_terminal_punct": "c4.drop_lines_without_terminal_punct=false",
    "c4.min_words_per_line": "c4.min_words_per_line=0",
    "c4.max_word_length": "c4.max_word_length=0",
    "c4.javascript": "c4.drop_javascript_lines=false",
    "c4.policy": "c4.drop_policy_lines=false",
    "c4.lorem_ipsum": "c4.lorem_ipsum=false",
    "c4.curly_bracket": "c4.curly_bracket=false",
    "c4.min_sentences": "c4.min_sentences=1",
    "fineweb.empty": "fineweb.enabled=false",
    "fineweb.line_punct_ratio": "fineweb.min_line_punct_ratio=0",
    "fineweb.short_line_ratio": "fineweb.max_short_line_ratio=1",
    "fineweb.dup_line_char_ratio": "fineweb.max_dup_line_char_ratio=0.2",
    "fineweb.newline_ratio": "fineweb.max_newline_ratio=1",
    "gopher_quality.min_doc_words": "gopher_quality.min_doc_words=10",
    "gopher_quality.max_doc_words": "gopher_quality.max_doc_words=1000000",
    "gopher_quality.min_avg_word_length": "gopher_quality.min_avg_word_length=2",
    "gopher_quality.max_avg_word_length": "gopher_quality.max_avg_word_length=15",
    "gopher_quality.hash_word_ratio": "gopher_quality.max_symbol_word_ratio=0.5",
    "gopher_quality.ellipsis_word_ratio": "gopher_quality.max_symbol_word_ratio=0.5",
    "gopher_quality.bullet_lines_ratio": "gopher_quality.max_bullet_lines_ratio=1",
    "gopher_quality.ellipsis_lines_ratio": "gopher_quality.max_ellipsis_lines_ratio=1",
    "gopher_quality.alpha_words_ratio": "gopher_quality.min_alpha_words_ratio=0.5",
    "gopher_quality.min_stop_words": "gopher_quality.min_stop_words=0",
    "decontamination.eval_ngram": "decontamination.enabled=false",
    "dedup.exact": "dedup.exact=false",
    "dedup.near": "dedup.threshold=0.9",
    "gopher_repetition.dup_para_frac": "gopher_repetition.dup_para_frac=0.6",
    "gopher_repetition.dup_para_char_frac": "gopher_repetition.dup_para_char_frac=0.5",
    "gopher_repetition.dup_line_frac": "gopher_repetition.dup_line_frac=0.7",
    "gopher_repetition.dup_line_char_frac": "gopher_repetition.dup_line_char_frac=0.5",
}
LOW_YIELD = 0.5  # below this fraction of input bytes kept, the summary says what removed the rest


def _relax(rule: str) -> str:
    if rule in RELAX:
        return "--set " + RELAX[rule]
    family, _, name = rule.partition(".")
    if family == "gopher_repetition":  # the n-gram rules: thresholds are lists, so switch the family off
        key = "top_n_grams" if name.startswith("top") else "dup_n_grams"
        return f"--set gopher_repetition.enabled=false (or raise gopher_repetition.{key} in a recipe)"
    return f"--set {family}.enabled=false"


def low_yield(card: dict) -> dict | None:
    """The rules that removed the most bytes and how to relax each, when a run kept under half of
    its input bytes; None otherwise."""
    if not card["bytes_in"] or card["bytes_kept"] >= LOW_YIELD * card["bytes_in"]:
        return None
    removed = card.get("bytes_removed", {})
    top = sorted(removed.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    rules = [
        {
            "rule": rule,
            "bytes": n,
            "documents": card["documents_dropped"].get(rule, 0),
            "lines": card["lines_removed"].get(rule, 0),
            "relax": _relax(rule),
        }
        for rule, n in top
    ]
    web_docs = sum(
        n for s in card["sources"] for name, n in s.get("recipes", {}).items() if name != "docs"
    )
    return {
        "kept_fraction": round(card["bytes_kept"] / card["bytes_in"], 4),
        "rules": rules,
        "suggest_docs_recipe": bool(web_docs),
    }


def _count(n: int, noun: str) -> str:
    return fmt.count(n, noun) if n else ""


def hint_text(hint: dict) -> str:
    lines = [f"kept {hint['kept_fraction']:.0%} of the input bytes; the rules that removed the most:"]
    for r in hint["rules"]:
        what = ", ".join(
            x for x in (_count(r["documents"], "document"), _count(r["lines"], "line")) if x
        )
        lines.append(f"  {r['rule']}: {fmt.size(r['bytes'])}{f' ({what})' if what else ''}; relax: {r['relax']}")
    if hint["suggest_docs_recipe"]:
        lines.append("  if these are documents rather than web pages: --recipe docs")
    return "\n".join(lines)


def summary_text(summary: dict) -> str:
    """The run's summary as a few lines for people (the CLI prints the JSON summary to stdout)."""
    bytes_in, bytes_kept = summary.get("bytes_in", 0), summary.get("bytes_kept", 0)
    share = f" ({bytes_kept / bytes_in:.0%})" if bytes_in else ""
    recipes = ", ".join(f"{name} for {fmt.count(n, 'document')}" for name, n in summary.get("recipes", {}).items())
    lines = [
        f"data: {fmt.count(summary['documents_in'], 'document')} read, {summary['documents_kept']:,} kept, "
        f"{summary['documents_dropped']} dropped, {summary['documents_quarantined']} quarantined; "
        f"{fmt.size(bytes_in)} in, {fmt.size(bytes_kept)} kept{share}",
    ]
    if recipes:
        lines.append(f"  recipes: {recipes}")
    if summary.get("tokens_train") or summary.get("tokens_val"):
        lines.append(f"  tokens: {summary['tokens_train']:,} train, {summary['tokens_val']:,} validation")
        if not summary.get("tokens_val"):
            # Whole documents go to validation, so a handful of documents needs a large fraction.
            frac = round(min(0.5, max(0.1, 3 / max(1, summary["documents_kept"]))), 2)
            lines.append(
                "  no validation tokens (too few documents for tokenize.val_fraction); training needs some: "
                f"acik data tokenize {summary.get('out') or 'DATA_DIR'} --set tokenize.val_fraction={frac}"
            )
    if summary.get("out"):
        lines.append(f"  written to {summary['out']} (what was removed and why: {summary['out']}/DATA_CARD.md)")
    if summary.get("low_yield"):
        lines.append(hint_text(summary["low_yield"]))
    return "\n".join(lines)
