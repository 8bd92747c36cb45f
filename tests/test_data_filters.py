"""Golden tests for every filter rule: a document just inside the published threshold passes the rule,
one just outside is dropped by it. The thresholds below are the published ones, written out here on
purpose; if the default recipe changes one, the pair of documents around it stops behaving and the
test fails. Statistics are computed here from how each document is built, not by the code under test.
"""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from acik.data import filters
from acik.data.recipe import load_data_recipe

RECIPE = load_data_recipe(None)  # the packaged data_default.yaml

SYLLABLES = [
    "ba",
    "ke",
    "mi",
    "no",
    "tu",
    "ra",
    "se",
    "li",
    "po",
    "du",
    "ga",
    "fe",
    "ri",
    "vo",
    "zu",
    "ha",
    "je",
    "ki",
    "lo",
    "mu",
]
_WORDS = ["".join(p) for p in itertools.product(SYLLABLES, repeat=3)]  # 8000 distinct 6-letter words


class Words:
    """Hands out distinct words, so nothing repeats unless a test repeats it."""

    def __init__(self):
        self.i = 0

    def take(self, n: int) -> list[str]:
        out = _WORDS[self.i : self.i + n]
        self.i += n
        assert len(out) == n, "ran out of words"
        return out

    def line(self, n: int, end: str = ".") -> str:
        return " ".join(self.take(n)) + end


def boundary(build, stat, threshold: float, greater_fails: bool = True, k_max: int = 5000) -> tuple[int, int]:
    """Largest k whose statistic stays inside the threshold, and the next k, which crosses it."""
    inside = None
    for k in range(k_max):
        s = stat(build(k), k)
        crossed = s > threshold if greater_fails else s < threshold
        if crossed:
            assert inside is not None, "k=0 already crosses the threshold"
            return inside, k
        inside = k
    raise AssertionError("never crossed")


def check_pair(rule_fn, build, stat, threshold, name, greater_fails=True):
    k_in, k_out = boundary(build, stat, threshold, greater_fails)
    assert rule_fn(build(k_in)) != name, f"{name}: document inside the threshold dropped (k={k_in})"
    assert rule_fn(build(k_out)) == name, f"{name}: document outside the threshold kept (k={k_out})"


# --- Gopher repetition -------------------------------------------------------------------------------------


def rep(text):
    return filters.gopher_repetition(text, RECIPE.gopher_repetition)


def test_published_gopher_repetition_defaults():
    g = RECIPE.gopher_repetition
    assert (g.dup_para_frac, g.dup_para_char_frac, g.dup_line_frac, g.dup_line_char_frac) == (
        0.3,
        0.2,
        0.3,
        0.2,
    )
    assert g.top_n_grams == [[2, 0.2], [3, 0.18], [4, 0.16]]
    assert g.dup_n_grams == [[5, 0.15], [6, 0.14], [7, 0.13], [8, 0.12], [9, 0.11], [10, 0.10]]


@pytest.mark.parametrize("sep,unit", [("\n\n", "para"), ("\n", "line")])
def test_duplicate_paragraph_and_line_fraction(sep, unit):
    w = Words()
    uniques = w.take(1000)

    def build(k):  # 1000 items, the last k of them copies of the first
        return sep.join(uniques[: 1000 - k] + [uniques[0]] * k)

    check_pair(rep, build, lambda text, k: k / 1000, 0.3, f"gopher_repetition.dup_{unit}_frac")


@pytest.mark.parametrize("sep,unit", [("\n\n", "para"), ("\n", "line")])
def test_duplicate_paragraph_and_line_characters(sep, unit):
    w = Words()
    big = " ".join(w.take(40))
    uniques = w.take(300)

    def build(k):  # few duplicates by count (k <= 90 of 390), many by characters
        return sep.join([big] + uniques + [big] * k)

    check_pair(
        rep, build, lambda text, k: k * len(big) / len(text), 0.2, f"gopher_repetition.dup_{unit}_char_frac"
    )


@pytest.mark.parametrize("n,threshold", [(2, 0.2), (3, 0.18), (4, 0.16)])
def test_top_ngram_character_fraction(n, threshold):
    w = Words()
    gram = w.take(n)
    filler = w.take(3000)

    def build(k):  # the n-gram k times, each occurrence between distinct words
        words = []
        for i in range(k):
            words += gram + filler[i * 2 : i * 2 + 2]
        return " ".join(words + filler[2 * k : 2 * k + 600])

    check_pair(
        rep,
        build,
        lambda text, k: k * len(" ".join(gram)) / len(text),
        threshold,
        f"gopher_repetition.top_{n}_gram",
    )


@pytest.mark.parametrize("n,threshold", [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)])
def test_duplicated_ngram_character_fraction(n, threshold):
    w = Words()
    block = w.take(n)
    filler = w.take(4000)

    def build(k):  # a block of n distinct words, k times, separated by 6 distinct words
        words = []
        for i in range(k):
            words += block + filler[i * 6 : i * 6 + 6]
        return " ".join(words + filler[6 * k : 6 * k + 1500])

    # Each occurrence after the first is a duplicated n-gram: the block's characters, joined without spaces.
    check_pair(
        rep,
        build,
        lambda text, k: max(k - 1, 0) * len("".join(block)) / len(text),
        threshold,
        f"gopher_repetition.dup_{n}_gram",
    )


# --- Gopher quality ----------------------------------------------------------------------------------------


def qual(text):
    return filters.gopher_quality(text, RECIPE.gopher_quality)


STOP = "the and "


def test_published_gopher_quality_defaults():
    g = RECIPE.gopher_quality
    assert (g.min_doc_words, g.max_doc_words, g.min_avg_word_length, g.max_avg_word_length) == (
        50,
        100000,
        3,
        10,
    )
    assert (g.max_symbol_word_ratio, g.max_bullet_lines_ratio, g.max_ellipsis_lines_ratio) == (0.1, 0.9, 0.3)
    assert (g.min_alpha_words_ratio, g.min_stop_words) == (0.8, 2)
    assert g.stop_words == ["the", "be", "to", "of", "and", "that", "have", "with"]


def test_min_and_max_doc_words():
    words = Words().take(200)
    # 50 words (2 stop words + 48) pass; 49 do not.
    assert qual(STOP + " ".join(words[:48])) != "gopher_quality.min_doc_words"
    assert qual(STOP + " ".join(words[:47])) == "gopher_quality.min_doc_words"
    assert qual(STOP + "abcde " * 99998) != "gopher_quality.max_doc_words"
    assert qual(STOP + "abcde " * 99999) == "gopher_quality.max_doc_words"


def test_mean_word_length_bounds():
    def short(k):  # 100 words: k of 2 letters, the rest of 4 -> mean 4 - 0.02k
        return " ".join(["ab"] * k + ["abcd"] * (100 - k))

    check_pair(qual, short, lambda t, k: -(4 - 0.02 * k), -3.0, "gopher_quality.min_avg_word_length")

    def long(k):  # 100 words: k of 12 letters, the rest of 8 -> mean 8 + 0.04k
        return " ".join(["abcdefghijkl"] * k + ["abcdefgh"] * (100 - k))

    check_pair(qual, long, lambda t, k: 8 + 0.04 * k, 10.0, "gopher_quality.max_avg_word_length")


def test_hash_and_ellipsis_word_ratios():
    check_pair(
        qual,
        lambda k: " ".join(["#tagged"] * k + ["plainer"] * (100 - k)),
        lambda t, k: k / 100,
        0.1,
        "gopher_quality.hash_word_ratio",
    )
    check_pair(
        qual,
        lambda k: " ".join(["wordy..."] * k + ["plainer"] * (100 - k)),
        lambda t, k: k / 100,
        0.1,
        "gopher_quality.ellipsis_word_ratio",
    )


def test_bullet_and_ellipsis_line_ratios():
    def bullets(k):  # 100 lines of 5 words, k starting with a bullet
        return "\n".join(("- " if i < k else "") + "alpha beta gamma delta epsilon" for i in range(100))

    check_pair(qual, bullets, lambda t, k: k / 100, 0.9, "gopher_quality.bullet_lines_ratio")

    def ellipses(k):  # 100 lines of 10 words, k ending with "..."
        return "\n".join(
            "alpha beta gamma delta epsilon zeta theta iota kappa lambda" + ("..." if i < k else ".")
            for i in range(100)
        )

    check_pair(qual, ellipses, lambda t, k: k / 100, 0.3, "gopher_quality.ellipsis_lines_ratio")


def test_alpha_words_ratio_and_stop_words():
    def numbers(k):  # 100 words, k without any letter
        return " ".join(["12345"] * k + ["abcde"] * (100 - k))

    check_pair(
        qual,
        numbers,
        lambda t, k: (100 - k) / 100,
        0.8,
        "gopher_quality.alpha_words_ratio",
        greater_fails=False,
    )
    words = " ".join(Words().take(60))
    assert qual("the with " + words) is None
    assert qual("the " + words) == "gopher_quality.min_stop_words"


# --- C4 ----------------------------------------------------------------------------------------------------


def c4(text):
    removed = Counter()
    rule, out = filters.c4(text, RECIPE.c4, removed)
    return rule, out, removed


def test_published_c4_defaults():
    c = RECIPE.c4
    assert (c.min_words_per_line, c.max_word_length, c.min_sentences) == (3, 1000, 5)
    assert c.lorem_ipsum and c.curly_bracket and c.drop_javascript_lines and c.drop_policy_lines
    assert c.remove_citations and c.drop_lines_without_terminal_punct


def test_c4_min_sentences():
    w = Words()
    lines = [w.line(6) for _ in range(5)]
    assert c4("\n".join(lines))[0] is None
    assert c4("\n".join(lines[:4]))[0] == "c4.min_sentences"


def test_c4_line_filters():
    w = Words()
    base = [w.line(6) for _ in range(5)]
    three, two = w.line(3), w.line(2)
    word1000, word1001 = "a" * 1000, "a" * 1001
    doc = "\n".join(
        base
        + [
            three,
            two,
            f"{word1000} ok then.",
            f"{word1001} ok then.",
            "no end here",
            "trailing dots here...",
            "enable javascript to see this.",
            "read our privacy policy now.",
        ]
    )
    rule, text, removed = c4(doc + "\nA citation here[12].")
    assert rule is None
    assert three in text and two not in text and word1000 in text and word1001 not in text
    assert "A citation here." in text
    assert removed == Counter(
        {
            "c4.min_words_per_line": 1,
            "c4.max_word_length": 1,
            "c4.no_terminal_punct": 2,
            "c4.javascript": 1,
            "c4.policy": 1,
        }
    )


def test_c4_lorem_ipsum_and_curly_bracket():
    w = Words()
    base = "\n".join(w.line(6) for _ in range(6))
    assert c4(base + "\nLorem ipsum dolor sit amet.")[0] == "c4.lorem_ipsum"
    assert c4(base + "\nThe value is {x} here.")[0] == "c4.curly_bracket"


# --- FineWeb -----------------------------------------------------------------------------------------------


def fw(text):
    return filters.fineweb(text, RECIPE.fineweb)


def test_published_fineweb_defaults():
    f = RECIPE.fineweb
    assert (f.min_line_punct_ratio, f.max_short_line_ratio, f.short_line_length) == (0.12, 0.67, 30)
    assert (f.max_dup_line_char_ratio, f.max_newline_ratio) == (0.01, 0.3)


def test_fineweb_line_punct_ratio():
    w = Words()
    lines = [w.line(6, end="") for _ in range(100)]

    def build(k):  # 100 long lines, 100-k of them ending with a period
        return "\n".join(ln + ("." if i >= k else "") for i, ln in enumerate(lines))

    check_pair(fw, build, lambda t, k: (100 - k) / 100, 0.12, "fineweb.line_punct_ratio", greater_fails=False)


def test_fineweb_short_line_ratio_and_length():
    w = Words()
    long_lines = [w.line(6) for _ in range(100)]  # 6 * 6 + 5 + 1 = 42 characters

    shorts = [" ".join(w.take(4)) + "ab." for _ in range(100)]  # exactly 30 characters

    def build(k):  # k short lines, the rest long
        return "\n".join(shorts[:k] + long_lines[k:])

    assert len(build(1).split("\n")[0]) == 30
    check_pair(fw, build, lambda t, k: k / 100, 0.67, "fineweb.short_line_ratio")
    # Lines of 31 characters are not short.
    text = "\n".join([" ".join(w.take(4)) + "abc." for _ in range(80)] + long_lines[:20])
    assert len(text.split("\n")[0]) == 31
    assert fw(text) is None


def test_fineweb_duplicate_line_characters():
    w = Words()
    lines = [w.line(7) for _ in range(100)]

    def build(k):  # one line repeated once, k characters of it
        dup = "x" * k + "."
        return "\n".join(lines + [dup, dup])

    check_pair(
        fw, build, lambda t, k: (k + 1) / len(t.replace("\n", "")), 0.01, "fineweb.dup_line_char_ratio"
    )


def test_fineweb_newline_ratio():
    w = Words()
    rows = [w.take(4) for _ in range(100)]

    def build(k):  # 100 lines: k of 3 long words, the rest of 4; 99 newlines
        return "\n".join(" ".join(row[:3] if i < k else row) + "xxxxxxxxxxxx." for i, row in enumerate(rows))

    check_pair(fw, build, lambda t, k: 99 / (400 - k), 0.3, "fineweb.newline_ratio")
    assert fw("") == "fineweb.empty"


# --- switches ----------------------------------------------------------------------------------------------


def test_other_rules_published_defaults():
    r = RECIPE
    assert r.langid.keep == ["en"] and r.langid.min_confidence == 0.65
    assert (r.dedup.ngram, r.dedup.bands, r.dedup.rows, r.dedup.threshold) == (5, 14, 8, 0.7)
    assert r.decontamination.ngram == 13
    assert r.read.max_doc_chars == 2_000_000


def test_ngram_statistics_match_the_string_definitions():
    """The hashed n-gram counting agrees with the plain definition (strings, Counter) on random texts."""
    import random

    def top_ref(words, n):
        grams = Counter(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
        if not grams:
            return 0
        gram, count = grams.most_common(1)[0]
        return len(gram) * count

    def dup_ref(words, n):
        seen, chars, i = set(), 0, 0
        while i < len(words) - n + 1:
            gram = tuple(words[i : i + n])
            if gram in seen:
                chars += len("".join(gram))
                i += n
            else:
                seen.add(gram)
                i += 1
        return chars

    rng = random.Random(0)
    for _ in range(500):
        vocab = [
            "".join(rng.choice("abc") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(2, 12))
        ]
        words = [rng.choice(vocab) for _ in range(rng.randint(0, 80))]
        grams = filters._Grams(words)
        for n in range(2, 11):
            assert filters.top_ngram_chars(grams, n) == top_ref(words, n)
            assert filters.duplicated_ngram_chars(grams, n) == dup_ref(words, n)
