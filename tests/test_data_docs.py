"""A person's own documents through the data stage: the docs recipe keeps them (issue 18's 33-file trial,
generated), web inputs keep the web rules, a low-yield run says what to relax, empty input is an error."""

from __future__ import annotations

import io
import json
import random
import re
import textwrap
from pathlib import Path

import pytest
import zstandard

from acik import cli
from acik.data import runner

TOPICS = [
    "the garden shed", "a river survey", "the library move", "our build server", "the spring concert",
    "a bicycle repair", "the kitchen renovation", "a field trip", "the bakery ledger", "a sailing course",
    "the choir schedule", "a beekeeping season", "the attic inventory", "a chess club", "the village archive",
]
WORDS = (
    "careful notes describe how each part fits together and why the order of the steps matters when "
    "something goes wrong late in the evening while the team still waits for a clear answer about the "
    "weather the budget the tools the volunteers the deadline the printer the neighbours and the long "
    "list of small chores that nobody wrote down before this document existed"
).split()
VERBS = ["checked", "rebuilt", "measured", "painted", "counted", "moved", "cleaned", "tested", "labelled"]
NOUNS = ["shelves", "cables", "boxes", "tables", "pipes", "lamps", "ropes", "tiles", "frames", "crates"]


def _sentence(rng: random.Random) -> str:
    words = rng.sample(WORDS, rng.randint(6, 11))
    return (
        f"{rng.choice(['We', 'They', 'Ana', 'The crew', 'Our guide', 'Kemal'])} {rng.choice(VERBS)} the "
        f"{rng.randint(2, 90)} {rng.choice(NOUNS)} because {' '.join(words)}."
    )


def _paragraph(rng: random.Random) -> str:
    return " ".join(_sentence(rng) for _ in range(rng.randint(3, 6)))


def write_markdown_folder(root: Path, n: int = 30, seed: int = 0) -> list[Path]:
    """`n` distinct markdown documents: prose hard-wrapped at 72 columns, headings, wrapped lists and
    code blocks with curly brackets; what a folder of notes looks like."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        topic = rng.choice(TOPICS)
        name = f"{rng.choice(NOUNS)}_{i}"
        parts = [f"# Notes on {topic} ({i})", "", textwrap.fill(_paragraph(rng), 72), ""]
        for section in range(rng.randint(2, 3)):
            parts += [f"## Part {section + 1}: {rng.choice(VERBS)} {rng.choice(NOUNS)}", ""]
            parts += [textwrap.fill(_paragraph(rng), 72), ""]
            items = [textwrap.fill(_sentence(rng), 72, initial_indent="- ", subsequent_indent="  ")
                     for _ in range(rng.randint(2, 4))]
            parts += items + [""]
            parts += [
                "```python",
                f"def {name}_{section}(items):",
                f"    totals = {{}}  # {rng.choice(VERBS)} per {rng.choice(NOUNS)}",
                "    for key, value in items:",
                f"        totals[key] = totals.get(key, 0) + value * {rng.randint(2, 9)}",
                f'    label = f"{{len(totals)}} totals for {rng.choice(TOPICS)}."',
                "    return {k: v for k, v in totals.items() if v}",
                "```",
                "",
                textwrap.fill(_paragraph(rng), 72),
                "",
            ]
        path = root / f"note-{i:02d}.md"
        path.write_text("\n".join(parts), encoding="utf-8")
        paths.append(path)
    return paths


def _documents(out: Path) -> list[dict]:
    rows = []
    for p in sorted((out / "documents").glob("*.jsonl.zst")):
        data = zstandard.ZstdDecompressor().stream_reader(open(p, "rb")).read().decode()
        rows += [json.loads(line) for line in data.splitlines() if line]
    return rows


def _warc(path: Path, html: str) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=False)
        headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.0")
        writer.write_record(
            writer.create_warc_record(
                "http://example.org/", "response", payload=io.BytesIO(html.encode()), http_headers=headers
            )
        )


def test_a_folder_of_markdown_keeps_its_documents_and_web_inputs_keep_web_rules(tmp_path):
    folder = tmp_path / "notes"
    paths = write_markdown_folder(folder)
    # A data set and a crawl beside the notes: each file gets the recipe of its kind.
    code_rows = [
        {"text": _paragraph(random.Random(i)) + "\n" + _paragraph(random.Random(9 + i)) + "\nUse `{}` for a dict."}
        for i in range(3)
    ]
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in code_rows))
    page = "".join(f"<p>{_paragraph(random.Random(50 + i))}</p>" for i in range(4))
    _warc(folder / "crawl.warc", f"<html><body><article>{page}</article></body></html>")

    out = tmp_path / "data"
    summary = runner.run([str(folder)], out, workers=1)
    card = json.loads((out / "data_card.json").read_text())
    bytes_md = sum(p.stat().st_size for p in paths)
    kept = [d for d in _documents(out) if d["path"].endswith(".md")]
    assert len(kept) >= 0.9 * len(paths), card["documents_dropped"]
    assert sum(d["bytes"] for d in kept) >= 0.8 * bytes_md, card.get("bytes_removed")
    assert card["sources"][0]["recipes"] == {"docs": 30, "web": 4}  # 30 notes; 3 rows and 1 page
    assert summary["recipes"] == {"docs": 30, "web": 4} and summary["low_yield"] is None
    # The web rules still run on the data set: C4 drops its rows for their curly brackets.
    assert card["documents_dropped"] == {"c4.curly_bracket": 3}
    assert [d["metadata"]["url"] for d in _documents(out) if d["path"].endswith(".warc")] == ["http://example.org/"]
    assert set(card["recipes"]) == {"web", "docs"} and card["recipes"]["docs"]["c4"]["enabled"] is False

    # Wrapped paragraphs became one line each; code blocks are kept byte for byte.
    source = paths[0].read_text()
    text = next(d["text"] for d in kept if d["path"] == str(paths[0]))
    block = source[source.index("```python") : source.index("```\n", source.index("```python") + 3) + 3]
    assert "{k: v for k, v in totals.items() if v}" in block and block in text
    first_para = source.split("\n\n")[1]
    assert "\n" in first_para and first_para.replace("\n", " ") in text.split("\n")
    item = next(x for x in source.split("\n\n")[3].split("\n- ") if "\n" in x)
    assert " ".join(line.strip() for line in item.splitlines()) in text
    md = (out / "DATA_CARD.md").read_text()
    assert "docs (30), web (4)" in md and "unwrap.enabled=true" in md

    # --recipe docs: the data set gets the docs rules too.
    rows = tmp_path / "rows.jsonl"
    rows.write_text((folder / "rows.jsonl").read_text())
    s = runner.run([str(rows)], tmp_path / "rows", recipe="docs", workers=1)
    assert s["documents_kept"] == 3 and s["recipes"] == {"docs": 3}


def test_low_yield_run_says_which_rules_to_relax(tmp_path, capsys):
    folder = tmp_path / "notes"
    write_markdown_folder(folder, n=6, seed=3)
    out = tmp_path / "web"
    rc = cli.main(["data", "run", "-i", str(folder), "-o", str(out), "--recipe", "web", "--workers", "1"])
    err = capsys.readouterr().err
    card = json.loads((out / "data_card.json").read_text())
    assert card["bytes_kept"] < 0.5 * card["bytes_in"]
    hint = card["summary"]["low_yield"]
    assert hint and hint["rules"][0]["bytes"] >= hint["rules"][-1]["bytes"] > 0
    relax = {r["rule"]: r["relax"] for r in hint["rules"]}
    assert "c4.curly_bracket" in relax or "c4.no_terminal_punct" in relax, relax
    for rule, how in relax.items():
        assert how in err and rule in err
    assert "--set c4.curly_bracket=false" in err or "--set c4.drop_lines_without_terminal_punct=false" in err
    assert "--recipe docs" in err
    # Sizes for people: KB under a MB.
    assert re.search(r"; \d+(\.\d+)? KB in, \d+(\.\d+)? K?B kept \(\d+%\)", err), err
    kept = int(re.search(r"K?B kept \((\d+)%\)", err).group(1))
    assert rc == (1 if kept == 0 else 0)  # 1 only when nothing at all was kept


def test_empty_input_is_an_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.md").write_text("")
    (empty / "b.jsonl").write_text("")
    assert cli.main(["data", "run", "-i", str(empty), "-o", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err
    assert "no text to read (2 files, all empty)" in err
    assert not (tmp_path / "out").exists()


def test_tokenize_takes_set_and_the_directory_keeps_its_tokenizer(tmp_path, capsys):
    folder = tmp_path / "notes"
    write_markdown_folder(folder, n=8, seed=5)
    out = tmp_path / "data"
    assert cli.main(["data", "run", "-i", str(folder), "-o", str(out), "--workers", "1",
                     "--set", "tokenize.val_fraction=0"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["tokens_val"] == 0 and first["documents_kept"] == 8
    assert cli.main(["data", "tokenize", str(out), "--set", "tokenize.val_fraction=0.5"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["tokens_val"] > 0 and again["tokens_train"] + again["tokens_val"] == first["tokens_train"]
    assert again["tokenizer_identity"] == first["tokenizer_identity"]
    assert cli.main(["data", "tokenize", str(out), "--set", "c4.enabled=false"]) == 2
    assert "rerun `acik data run`" in capsys.readouterr().err


def test_a_too_small_validation_split_names_the_setting():
    from acik.train.data import DataError, sample_offsets

    with pytest.raises(DataError, match="validation split has 10 tokens.*val_fraction"):
        sample_offsets(10, 64, 2, 0, 0, stream="val")


@pytest.mark.parametrize(
    "source, expected",
    [
        # A wrapped paragraph and a wrapped list item each become one line.
        ("One two\nthree four.\n\n- item one\n  continues here\n- item two\n",
         "One two three four.\n\n- item one continues here\n- item two"),
        # Fenced and indented code, tables and headings keep their lines.
        ("# Title\nText\nwraps.\n\n```\nif x {\n  y()\n}\n```\n\n    indented\n    code\n\n| a | b |\n|---|---|\n"
         "| 1 | 2 |",
         "# Title\nText wraps.\n\n```\nif x {\n  y()\n}\n```\n\n    indented\n    code\n\n| a | b |\n|---|---|\n"
         "| 1 | 2 |"),
        # reST: underlined titles, literal blocks after `::` and directive bodies stay as written.
        ("Title\n=====\n\nSee this\nexample::\n\n   a = 1\n   b = 2\n\n.. code-block:: python\n\n   x = {}\n   y = x\n",
         "Title\n=====\n\nSee this example::\n\n   a = 1\n   b = 2\n\n.. code-block:: python\n\n   x = {}\n   y = x"),
        # Front matter stays; a markdown hard break (two spaces) is kept.
        ("---\ntitle: x\ntags: y\n---\nline one  \nline two\n", "---\ntitle: x\ntags: y\n---\nline one  \nline two"),
    ],
)
def test_unwrap(source, expected):
    from acik.data import docs

    assert docs.unwrap(source) == expected
