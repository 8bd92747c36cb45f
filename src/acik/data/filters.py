"""Quality rules from Gopher (Rae et al. 2021), C4 (Raffel et al. 2020) and FineWeb (Penedo et al. 2024).

Each check is a named rule, `<family>.<check>`, whose threshold lives in the recipe; the statistics
follow the published definitions as datatrove implements them, so thresholds mean the same thing.
A filter returns the rule that dropped the document, or None and the (possibly edited) text.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

# Characters that end a sentence in the scripts a pretraining corpus usually holds.
TERMINAL_PUNCT = (
    ".",
    "!",
    "?",
    '"',
    "'",
    "\u201d",
    "\u2019",
    "\u3002",
    "\uff01",
    "\uff1f",
    "\u0964",
    "\u061f",
    "\u06d4",
    "\uff0e",
    "\u2026",
    "\u203c",
    "\u2049",
    "\u0589",
    "\u1362",
    "\u104b",
)
C4_END_PUNCT = (".", "?", "!", '"', "'")
ELLIPSIS = ("...", "\u2026")
POLICY_SUBSTRINGS = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)
CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
PARAGRAPHS = re.compile(r"\n{2,}")
LINES = re.compile(r"\n+")
SENTENCE_END = re.compile(r"[.!?\u3002\uff01\uff1f\u0964]+(?=\s|$)")
_MULT = np.uint64(0x9E3779B97F4A7C15)
PUNCT_CHARS = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\u2026\u201c\u201d\u2018\u2019\u3002\uff01\uff1f")


def words_of(text: str) -> list[str]:
    return text.split()


def find_duplicates(items: list[str]) -> tuple[int, int]:
    """(number of repeated items, characters in them), counting every occurrence after the first."""
    seen: set[str] = set()
    n = chars = 0
    for x in items:
        if x in seen:
            n += 1
            chars += len(x)
        else:
            seen.add(x)
    return n, chars


class _Grams:
    """Word n-grams of one document as 64-bit keys, so counting repeats needs no string joins.

    Keys are a polynomial over per-document word ids; character lengths come from prefix sums of
    word lengths. Equal n-grams get equal keys; unequal ones collide with negligible probability.
    """

    def __init__(self, words: list[str]):
        vocab: dict[str, int] = {}
        self.ids = np.array([vocab.setdefault(w, len(vocab)) for w in words], dtype=np.uint64)
        self.cum = np.concatenate([[0], np.cumsum([len(w) for w in words])]).astype(np.int64)
        self.n_words = len(words)

    def keys(self, n: int) -> np.ndarray:
        m = self.n_words - n + 1
        if m <= 0:
            return np.zeros(0, dtype=np.uint64)
        out = np.zeros(m, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for j in range(n):
                out = out * _MULT + self.ids[j : j + m] + np.uint64(1)
        return out

    def chars(self, n: int) -> np.ndarray:
        """Characters of each n-gram's words (without the spaces between them)."""
        return self.cum[n:] - self.cum[: self.n_words - n + 1]


def top_ngram_chars(grams: _Grams, n: int) -> int:
    """Characters covered by the most frequent word n-gram: its length (words joined by single spaces)
    times its count; among equally frequent n-grams, the one that occurs first."""
    keys = grams.keys(n)
    if keys.size == 0:
        return 0
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    best = counts.max()
    i = int(first[counts == best].min())
    return (int(grams.chars(n)[i]) + n - 1) * int(best)


def duplicated_ngram_chars(grams: _Grams, n: int) -> int:
    """Characters in n-grams seen before, skipping past a repeat so overlaps are not counted twice.
    (n-grams are compared word by word; datatrove compares them joined without spaces.)"""
    keys = grams.keys(n)
    if keys.size == 0 or np.unique(keys).size == keys.size:
        return 0
    chars_of = grams.chars(n)
    keys_list = keys.tolist()
    seen: set[int] = set()
    chars = i = 0
    while i < len(keys_list):
        k = keys_list[i]
        if k in seen:
            chars += int(chars_of[i])
            i += n
        else:
            seen.add(k)
            i += 1
    return chars


def gopher_repetition(text: str, cfg) -> str | None:
    n_chars = len(text) or 1
    paragraphs = PARAGRAPHS.split(text.strip())
    dup, dup_chars = find_duplicates(paragraphs)
    if dup / len(paragraphs) > cfg.dup_para_frac:
        return "gopher_repetition.dup_para_frac"
    if dup_chars / n_chars > cfg.dup_para_char_frac:
        return "gopher_repetition.dup_para_char_frac"
    lines = LINES.split(text)
    dup, dup_chars = find_duplicates(lines)
    if dup / len(lines) > cfg.dup_line_frac:
        return "gopher_repetition.dup_line_frac"
    if dup_chars / n_chars > cfg.dup_line_char_frac:
        return "gopher_repetition.dup_line_char_frac"
    grams = _Grams(words_of(text))
    for n, frac in cfg.top_n_grams:
        if top_ngram_chars(grams, int(n)) / n_chars > frac:
            return f"gopher_repetition.top_{int(n)}_gram"
    for n, frac in cfg.dup_n_grams:
        if duplicated_ngram_chars(grams, int(n)) / n_chars > frac:
            return f"gopher_repetition.dup_{int(n)}_gram"
    return None


def gopher_quality(text: str, cfg) -> str | None:
    words = words_of(text)
    n_words = len(words) or 1
    content = [w for w in words if any(c not in PUNCT_CHARS for c in w)]
    if len(content) < cfg.min_doc_words:
        return "gopher_quality.min_doc_words"
    if len(content) > cfg.max_doc_words:
        return "gopher_quality.max_doc_words"
    mean_len = sum(len(w) for w in content) / len(content)
    if mean_len < cfg.min_avg_word_length:
        return "gopher_quality.min_avg_word_length"
    if mean_len > cfg.max_avg_word_length:
        return "gopher_quality.max_avg_word_length"
    if text.count("#") / n_words > cfg.max_symbol_word_ratio:
        return "gopher_quality.hash_word_ratio"
    if (text.count("...") + text.count("\u2026")) / n_words > cfg.max_symbol_word_ratio:
        return "gopher_quality.ellipsis_word_ratio"
    lines = text.splitlines() or [""]
    bullets = sum(ln.lstrip().startswith(("\u2022", "-")) for ln in lines)
    if bullets / len(lines) > cfg.max_bullet_lines_ratio:
        return "gopher_quality.bullet_lines_ratio"
    ellipsis_end = sum(ln.rstrip().endswith(ELLIPSIS) for ln in lines)
    if ellipsis_end / len(lines) > cfg.max_ellipsis_lines_ratio:
        return "gopher_quality.ellipsis_lines_ratio"
    if sum(any(c.isalpha() for c in w) for w in words) / n_words < cfg.min_alpha_words_ratio:
        return "gopher_quality.alpha_words_ratio"
    stop = set(cfg.stop_words)
    if sum(w in stop for w in words) < cfg.min_stop_words:
        return "gopher_quality.min_stop_words"
    return None


def c4(
    text: str, cfg, lines_removed: Counter, bytes_removed: Counter | None = None
) -> tuple[str | None, str]:
    """C4's line filters (which edit the text) and document filters. Returns (rule or None, text).
    Each removed line is counted in `lines_removed`, and its UTF-8 bytes in `bytes_removed`."""
    kept = []
    sentences = 0
    removed: list[tuple[str, str]] = []

    def remove(rule: str, line: str) -> None:
        lines_removed[rule] += 1
        removed.append((rule, line))

    for line in text.splitlines():
        line = line.strip()
        words = line.split()
        if cfg.max_word_length > 0 and any(len(w) > cfg.max_word_length for w in words):
            remove("c4.max_word_length", line)
            continue
        if cfg.remove_citations:
            line = CITATION.sub("", line)
        if cfg.drop_lines_without_terminal_punct and (
            not line.endswith(C4_END_PUNCT) or line.endswith(ELLIPSIS)
        ):
            remove("c4.no_terminal_punct", line)
            continue
        if len(words) < cfg.min_words_per_line:
            remove("c4.min_words_per_line", line)
            continue
        low = line.lower()
        if cfg.lorem_ipsum and "lorem ipsum" in low:
            return "c4.lorem_ipsum", text
        if cfg.drop_javascript_lines and "javascript" in low:
            remove("c4.javascript", line)
            continue
        if cfg.curly_bracket and "{" in line:
            return "c4.curly_bracket", text
        if cfg.drop_policy_lines and any(p in low for p in POLICY_SUBSTRINGS):
            remove("c4.policy", line)
            continue
        sentences += max(1, len(SENTENCE_END.findall(line)))
        kept.append(line)
    if sentences < cfg.min_sentences:
        return "c4.min_sentences", text
    if bytes_removed is not None:  # only for a kept document: a dropped one's bytes count under its rule
        for rule, line in removed:
            bytes_removed[rule] += len(line.encode("utf-8")) + 1
    return None, "\n".join(kept).strip()


def fineweb(text: str, cfg) -> str | None:
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if not lines:
        return "fineweb.empty"
    if sum(ln.endswith(TERMINAL_PUNCT) for ln in lines) / len(lines) < cfg.min_line_punct_ratio:
        return "fineweb.line_punct_ratio"
    if sum(len(ln) <= cfg.short_line_length for ln in lines) / len(lines) > cfg.max_short_line_ratio:
        return "fineweb.short_line_ratio"
    if find_duplicates(lines)[1] / max(1, len(text.replace("\n", ""))) > cfg.max_dup_line_char_ratio:
        return "fineweb.dup_line_char_ratio"
    if text.count("\n") / max(1, len(words_of(text))) > cfg.max_newline_ratio:
        return "fineweb.newline_ratio"
    return None


def thresholds(recipe) -> dict[str, dict]:
    """Each filter family with its switch and thresholds, for the data card."""
    from dataclasses import asdict

    return {
        name: asdict(getattr(recipe, name))
        for name in ("gopher_repetition", "gopher_quality", "c4", "fineweb")
    }
