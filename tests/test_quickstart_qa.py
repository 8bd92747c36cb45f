"""Question/answer derivation for the quickstart: parsing, answers, deterministic split, multiple choice."""

from __future__ import annotations

import random

import pytest

from acik.quickstart.qa import QASettings, first_sentences, multiple_choice, pairs_of_module, split_pairs

SOURCE = '''
"""A module."""

def dedent(text):
    """Remove any common leading whitespace from every line in `text`.

    This can be used to make triple-quoted strings line up.
    """

def _private(x):
    """Never asked about, it is private to the module."""

class Wrapper:
    """Object for wrapping and filling text in paragraphs."""

    def wrap(self, text, width=70):
        """wrap(text : string) -> [string]

        Reformat the single paragraph in 'text' so it fits in lines. Tabs are expanded. Then more.
        """

    @staticmethod
    def helper(a, b=1):
        """Short."""
'''


def test_pairs_of_module():
    pairs = list(pairs_of_module(SOURCE, "textwrap", QASettings()))
    assert [p["question"] for p in pairs] == [
        "What does `textwrap.dedent(text)` do?",
        "What is `textwrap.Wrapper`?",
        "What does `textwrap.Wrapper.wrap(text, width=70)` do?",
    ]
    assert pairs[0]["answer"] == "Remove any common leading whitespace from every line in `text`."
    # The signature line of the docstring is skipped; at most two sentences are kept.
    assert pairs[2]["answer"] == "Reformat the single paragraph in 'text' so it fits in lines. Tabs are expanded."


def test_first_sentences_rejects_unsuitable_docstrings():
    s = QASettings()
    assert first_sentences("Short.", s) is None
    assert first_sentences("+ a list item that is not a sentence at all.", s) is None
    assert first_sentences("x" * 300 + ".", s) is None


def _pairs(n: int) -> list[dict]:
    return [{"name": f"m.f{i}", "question": f"What does `m.f{i}` do?", "answer": f"Answer number {i} is here."}
            for i in range(n)]


def test_split_is_a_function_of_seed_and_name():
    s = QASettings(heldout=50, val=10)
    pairs = _pairs(400)
    a = split_pairs(pairs, s, seed=0)
    shuffled = pairs[:]
    random.Random(1).shuffle(shuffled)
    b = split_pairs(shuffled, s, seed=0)
    assert {p["name"] for p in a["heldout"]} == {p["name"] for p in b["heldout"]}
    assert len(a["heldout"]) == 50 and len(a["val"]) == 10 and len(a["train"]) == 340
    names = [{p["name"] for p in a[k]} for k in ("heldout", "val", "train")]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert {p["name"] for p in split_pairs(pairs, s, seed=1)["heldout"]} != names[0]
    with pytest.raises(ValueError, match="too few"):
        split_pairs(_pairs(100), s, seed=0)


def test_multiple_choice_items():
    held = _pairs(30)
    items = multiple_choice(held, seed=0, prompt=lambda q: f"Q: {q}\nA:")
    assert items == multiple_choice(held, seed=0, prompt=lambda q: f"Q: {q}\nA:")
    for p, item in zip(held, items):
        assert len(item["continuations"]) == 4 == len(set(item["continuations"]))
        assert item["continuations"][item["gold"]] == p["answer"]
        assert item["context"] == f"Q: {p['question']}\nA:"
    assert len({item["gold"] for item in items}) > 1
