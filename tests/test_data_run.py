"""The data stage end to end: conservation, ledger, documents, token shards, card, manifest, resume."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zstandard

from acik import cli
from acik.data import runner, shards
from acik.data.recipe import DataRecipe, PythonEnvSource, load_data_recipe
from acik.manifest import read_manifest, tokenizer_identity, verify

SRC = Path(__file__).resolve().parents[1] / "src"

SUBJ = [
    "the farmer",
    "a young teacher",
    "the old sailor",
    "my neighbour",
    "the council",
    "a small child",
    "the doctor",
    "our guide",
    "the baker",
    "a tired student",
    "the engineer",
    "her brother",
    "the mayor",
    "a quiet painter",
    "the musician",
    "his grandmother",
    "the pilot",
    "a curious reporter",
]
VERB = [
    "carried",
    "painted",
    "repaired",
    "described",
    "found",
    "borrowed",
    "studied",
    "cleaned",
    "measured",
    "sold",
    "photographed",
    "admired",
    "ordered",
    "explained",
    "wrapped",
    "delivered",
    "opened",
    "returned",
]
ADJ = [
    "heavy",
    "bright",
    "wooden",
    "ancient",
    "fragile",
    "enormous",
    "simple",
    "golden",
    "narrow",
    "noisy",
    "careful",
    "strange",
    "gentle",
    "broken",
    "familiar",
    "distant",
    "useful",
    "rare",
]
NOUN = [
    "basket",
    "bridge",
    "letter",
    "garden",
    "window",
    "engine",
    "map",
    "violin",
    "lantern",
    "ladder",
    "carpet",
    "clock",
    "boat",
    "recipe",
    "painting",
    "fence",
    "kettle",
    "notebook",
    "harbour",
    "mirror",
]
TAIL = [
    "before noon",
    "in the rain",
    "with great care",
    "for the festival",
    "after the storm",
    "near the river",
    "at the market",
    "during the winter",
    "without a word",
    "on the long road home",
    "for the whole village",
    "with some help from friends",
    "in the early evening",
    "by the old mill",
]


def sentence(rng: random.Random) -> str:
    return (
        f"{rng.choice(SUBJ).capitalize()} {rng.choice(VERB)} the {rng.choice(ADJ)} {rng.choice(NOUN)} "
        f"{rng.choice(TAIL)}."
    )


def english_doc(rng: random.Random) -> str:
    """Plain English prose that passes the web quality rules."""
    return "\n".join(
        " ".join(sentence(rng) for _ in range(rng.randint(4, 7))) for _ in range(rng.randint(3, 5))
    )


def write_corpus(path: Path, n: int, seed: int = 0, corrupt_every: int = 0) -> dict:
    """JSONL with `n` records; every `corrupt_every`-th is broken in one of three ways. Returns counts."""
    rng = random.Random(seed)
    counts = {"corrupt": 0}
    with open(path, "wb") as f:
        for i in range(n):
            if corrupt_every and i % corrupt_every == corrupt_every - 1:
                kind = counts["corrupt"] % 3
                counts["corrupt"] += 1
                f.write(
                    [
                        b'{"text": "unterminated\n',
                        b'{"text": "bad \xff\xfe bytes"}\n',
                        b'{"title": "no text field"}\n',
                    ][kind]
                )
                continue
            f.write(
                (
                    json.dumps({"text": english_doc(rng), "url": f"https://example.org/{seed}/{i}"}) + "\n"
                ).encode()
            )
    return counts


def read_zst_jsonl(path: Path) -> list[dict]:
    data = zstandard.ZstdDecompressor().stream_reader(open(path, "rb")).read().decode()
    return [json.loads(line) for line in data.splitlines() if line]


def test_end_to_end_with_one_percent_corrupt_records(tmp_path):
    corpus = tmp_path / "in"
    corpus.mkdir()
    counts = write_corpus(corpus / "web.jsonl", 1000, corrupt_every=100)
    rng = random.Random(7)
    base = english_doc(rng)
    extra = [
        {"text": base},  # kept
        {"text": "  " + base.replace(". ", ".  ") + "\n"},  # exact duplicate (normalised)
        {"text": base.replace("the", "a", 1)},  # near duplicate
        {"text": "Der schnelle braune Fuchs springt über den faulen Hund. " * 20},  # German
        {"text": english_doc(rng) + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit."},
        {"text": english_doc(rng), "license": "CC-BY-NC-4.0"},
        {
            "text": english_doc(rng) + "\nWrite to someone@example.com for more details about it.",
            "license": "CC-BY-SA-4.0",
        },
    ]
    (corpus / "extra.jsonl").write_text("".join(json.dumps(r) + "\n" for r in extra))
    out = tmp_path / "data"
    summary = runner.run([str(corpus)], out, recipe=None, workers=1, overrides=["write_dropped=true"])
    card = json.loads((out / "data_card.json").read_text())

    # Conservation: every record in exactly one place.
    assert card["documents_in"] == 1007 == summary["documents_in"]
    assert card["documents_quarantined"] == counts["corrupt"] == 10
    assert sum(card["quarantined"].values()) == 10
    assert card["documents_in"] == card["documents_kept"] + sum(card["documents_dropped"].values()) + 10
    dropped = card["documents_dropped"]
    for rule in ("dedup.exact", "dedup.near", "langid.language", "c4.lorem_ipsum", "licenses.not_allowed"):
        assert dropped.get(rule, 0) >= 1, (rule, dropped)

    ledger = read_zst_jsonl(out / "ledger.jsonl.zst")
    assert len(ledger) == 1007 and len({r["id"] for r in ledger}) == 1007
    outcomes = {o: sum(r["outcome"] == o for r in ledger) for o in ("kept", "dropped", "quarantined")}
    assert outcomes == {"kept": card["documents_kept"], "dropped": sum(dropped.values()), "quarantined": 10}
    dup = [r for r in ledger if r.get("rule") == "dedup.exact"]
    assert dup and all(r["duplicate_of"] for r in dup)

    docs = [d for p in sorted((out / "documents").glob("*.jsonl.zst")) for d in read_zst_jsonl(p)]
    assert len(docs) == card["documents_kept"]
    assert all({"text", "id", "source", "license", "path", "language", "metadata"} <= set(d) for d in docs)
    assert {d["id"] for d in docs} == {r["id"] for r in ledger if r["outcome"] == "kept"}
    pii_doc = next(d for d in docs if d["license"] == "CC-BY-SA-4.0")
    assert "someone@example.com" not in pii_doc["text"] and "<EMAIL>" in pii_doc["text"]
    assert card["pii"]["email"] == 1
    assert card["license_terms"]["share_alike"] == ["CC-BY-SA-4.0"]
    dropped_rows = read_zst_jsonl(out / "dropped" / "part-00000.jsonl.zst")
    assert len(dropped_rows) == sum(dropped.values()) and all(r["rule"] and r["text"] for r in dropped_rows)

    # Token shards: byte-level tokenizer, every document ends with <|endoftext|>.
    side = shards.read_sidecar(out)
    assert side["tokenizer_identity"] == tokenizer_identity(out / "tokenizer") and side["vocab_size"] == 260
    assert side["dtype"] == "uint16"
    eos = side["eos_id"]
    by_split: dict[str, list[str]] = {"train": [], "val": []}
    for d in docs:
        by_split[shards.split_of(d["text"], 0.01)].append(d["text"])
    assert len(by_split["val"]) >= 1
    assert [d["text"] for d in shards.read_documents(out, "val")] == by_split["val"]
    assert len(list(shards.read_documents(out))) == len(docs)
    for split, texts in by_split.items():
        toks = shards.load_tokens(out, split)
        assert len(toks) == side["splits"][split]["tokens"]
        assert int((toks == eos).sum()) == len(texts) == side["splits"][split]["documents"]
        offsets = shards.load_document_offsets(out, split)
        first = bytes(toks[offsets[0] : offsets[1] - 1].astype(np.uint8)) if len(offsets) > 1 else None
        if first is not None:
            assert first.decode() == texts[0]

    # Card and manifest.
    md = (out / "DATA_CARD.md").read_text()
    assert md.startswith("---\n") and "## Composition" in md and "## Preprocessing and cleaning" in md
    assert "c4.lorem_ipsum" in md
    manifest = read_manifest(out)
    assert manifest["kind"] == "data" and manifest["tokenizer_identity"] == side["tokenizer_identity"]
    assert verify(out) == []
    assert not (out / runner.WORK).exists()


def test_conservation_check_fails_when_a_record_is_lost(tmp_path, monkeypatch):
    corpus = tmp_path / "c.jsonl"
    write_corpus(corpus, 20)
    real = runner.process_record
    calls = {"n": 0}

    def leaky(rec, recipe, ctx):  # forgets the fifth record: neither kept, dropped nor quarantined
        calls["n"] += 1
        return None if calls["n"] == 5 else real(rec, recipe, ctx)

    monkeypatch.setattr(runner, "process_record", leaky)
    with pytest.raises(runner.ConservationError, match="20 records in"):
        runner.run([str(corpus)], tmp_path / "out", workers=1)
    with pytest.raises(runner.ConservationError):
        runner.check_conservation(
            {
                "documents_in": 10,
                "documents_kept": 5,
                "documents_dropped": {"x": 3},
                "documents_quarantined": 1,
            }
        )


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "acik.json"
    }


def test_sigkill_then_rerun_gives_the_same_bytes(tmp_path):
    inputs = []
    for i in range(8):
        path = tmp_path / "in" / f"part{i}.jsonl"
        path.parent.mkdir(exist_ok=True)
        write_corpus(path, 30, seed=i)
        inputs.append(str(path))
    killed = tmp_path / "killed" / "data"
    cmd = [
        sys.executable,
        "-m",
        "acik",
        "data",
        "run",
        "--workers",
        "1",
        "--out",
        str(killed),
        "--input",
        *inputs,
    ]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tasks = killed / runner.WORK / "tasks"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if tasks.exists() and len(list(tasks.glob("f-*.stats.json"))) >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    finished = len(list(tasks.glob("f-*.stats.json")))
    assert 2 <= finished < 8

    resumed = runner.run(inputs, killed, workers=1)
    assert resumed["tasks_run"] == 8 - finished
    clean = tmp_path / "clean" / "data"
    runner.run(inputs, clean, workers=2)
    a, b = _all_bytes(killed), _all_bytes(clean)
    assert sorted(a) == sorted(b)
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]
    assert read_manifest(killed)["directory_hash"] == read_manifest(clean)["directory_hash"]


def test_cli_run_retokenize_and_recipe_errors(tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    write_corpus(corpus, 40)
    out = tmp_path / "data"
    assert (
        cli.main(
            [
                "data",
                "run",
                "--input",
                str(corpus),
                "--out",
                str(out),
                "--workers",
                "1",
                "--set",
                "tokenize.val_fraction=0.2",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["documents_kept"] == 40 and summary["tokens_val"] > 0
    before = {
        p: b for p, b in _all_bytes(out).items() if p.startswith("documents/") or p == "ledger.jsonl.zst"
    }

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    rng = random.Random(1)
    tok.train_from_iterator([english_doc(rng) for _ in range(50)], trainer)
    tok_dir = tmp_path / "bpe"
    tok_dir.mkdir()
    tok.save(str(tok_dir / "tokenizer.json"))

    assert cli.main(["data", "tokenize", str(out), "--tokenizer", str(tok_dir)]) == 0
    side = shards.read_sidecar(out)
    assert side["tokenizer_identity"] == tokenizer_identity(tok_dir) and side["vocab_size"] == 400
    docs = [d for p in sorted((out / "documents").glob("*.jsonl.zst")) for d in read_zst_jsonl(p)]
    train = [d["text"] for d in docs if shards.split_of(d["text"], 0.2) == "train"]
    toks = shards.load_tokens(out, "train")
    offsets = shards.load_document_offsets(out, "train")
    assert tok.decode(toks[offsets[0] : offsets[1] - 1].tolist()) == train[0]
    assert toks[offsets[1] - 1] == tok.token_to_id("<|endoftext|>")
    after = {p: b for p, b in _all_bytes(out).items() if p in before}
    assert after == before, "re-tokenizing must leave the kept documents and the ledger alone"
    card = json.loads((out / "data_card.json").read_text())
    assert card["tokens"]["tokenizer_identity"] == side["tokenizer_identity"]
    assert verify(out) == []

    assert (
        cli.main(
            [
                "data",
                "run",
                "--input",
                str(corpus),
                "--out",
                str(tmp_path / "x"),
                "--set",
                "c4.min_sentence=3",
            ]
        )
        == 2
    )
    assert "unknown key 'min_sentence'" in capsys.readouterr().err
    assert cli.main(["data", "run", "--input", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_python_env_with_the_docstring_recipe(tmp_path):
    recipe_path = Path(__file__).resolve().parents[1] / "recipes" / "data_python_env.yaml"
    recipe = load_data_recipe(
        recipe_path,
        [
            "python_env.stdlib_modules=[json, textwrap, argparse]",
            "python_env.packages=[]",
            "python_env.pydoc_topics=false",
        ],
    )
    summary = runner.run(["python-env"], tmp_path / "py", recipe=recipe, workers=1)
    card = json.loads((tmp_path / "py" / "data_card.json").read_text())
    assert summary["documents_kept"] >= 3
    assert card["python_env"]["python"] == __import__("platform").python_version()
    assert [x["license"] for x in card["licenses"]] == ["PSF-2.0"]
    docs = [d for p in sorted((tmp_path / "py" / "documents").glob("*.jsonl.zst")) for d in read_zst_jsonl(p)]
    assert any(d["path"] == "python-env:stdlib/textwrap.py" for d in docs)


def test_default_recipe_is_the_dataclass_defaults():
    import dataclasses

    assert dataclasses.asdict(load_data_recipe(None)) == dataclasses.asdict(DataRecipe())
    assert PythonEnvSource().stdlib is True


def test_warc_folder_end_to_end(tmp_path):
    root = Path(os.environ.get("ACIK_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    if not (root / "warc").exists():
        pytest.skip(f"{root / 'warc'} not found (set ACIK_SHARED_DATA)")
    off = [f"{f}.enabled=false" for f in ("gopher_repetition", "gopher_quality", "c4", "fineweb")]
    summary = runner.run(
        [str(root / "warc")],
        tmp_path / "w",
        workers=1,
        license="Apache-2.0",
        overrides=off + ["dedup.exact=false", "dedup.near=false"],
    )
    assert summary["documents_in"] == 5 and summary["documents_kept"] == 5
    docs = [d for p in sorted((tmp_path / "w" / "documents").glob("*.jsonl.zst")) for d in read_zst_jsonl(p)]
    assert {d["metadata"]["url"] for d in docs} == {"http://example.com/", "http://www.iana.org/"}
    assert all(d["license"] == "Apache-2.0" and d["language"] == "en" for d in docs)
    assert all("<html" not in d["text"].lower() for d in docs)
