"""Data stage throughput: documents per second per core, acik against datatrove's FineWeb chain.

The fixed corpus is built from the shared data (speeches, Wikipedia articles, grade-school maths, with
5% exact duplicates) and written once as JSONL. Every contender reads the same file on one core:

- acik full chain: read, license, language ID, Gopher repetition + quality, C4, FineWeb, PII,
  exact + MinHash dedup, store, byte-level tokenization, ledger, data card, manifest.
- acik filters only: the same rules as datatrove's chain (language ID, PII, dedup, tokenization off).
- datatrove FineWeb chain: JsonlReader -> GopherRepetition -> GopherQuality -> C4Quality ->
  FineWebQuality -> JsonlWriter (its URL filter, trafilatura and fastText language filter left out:
  the input is already text and the language model would be downloaded).

Run:  python benchmarks/data.py [--repeats 3]
Needs datatrove (and spacy, its English word splitter): pip install 'acik[bench]'.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def shared_data() -> Path:
    root = Path(os.environ.get("ACIK_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    if not root.exists():
        raise SystemExit(f"shared data not found at {root} (set ACIK_SHARED_DATA)")
    return root


def build_corpus(path: Path) -> int:
    root = shared_data()
    docs: list[str] = []
    for name in ("inaugural", "state_union"):
        with zipfile.ZipFile(root / "nltk_data" / "corpora" / f"{name}.zip") as z:
            for member in sorted(z.namelist()):
                if not member.endswith(".txt"):
                    continue
                text = z.read(member).decode("utf-8", errors="replace")
                chunk: list[str] = []
                for para in text.split("\n\n"):
                    chunk.append(para.strip())
                    if sum(map(len, chunk)) > 2500:
                        docs.append("\n".join(chunk))
                        chunk = []
                if chunk:
                    docs.append("\n".join(chunk))
    for split in ("valid", "test"):
        article: list[str] = []
        for line in (root / "wikitext-2" / f"{split}.txt").read_text(encoding="utf-8").splitlines():
            if line.startswith(" = ") and not line.startswith(" = = ") and article:
                docs.append("\n".join(article))
                article = []
            if line.strip():
                article.append(line.strip())
        if article:
            docs.append("\n".join(article))
    for line in (root / "gsm8k" / "train.jsonl").read_text(encoding="utf-8").splitlines()[:3000]:
        row = json.loads(line)
        docs.append(row["question"] + "\n" + row["answer"])
    docs += [docs[i] for i in range(0, len(docs), 20)]  # 5% exact duplicates
    with open(path, "w", encoding="utf-8") as f:
        for i, text in enumerate(docs):
            f.write(json.dumps({"text": text, "id": str(i)}) + "\n")
    return len(docs)


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def run_acik(corpus: Path, out: Path, overrides: list[str]) -> int:
    from acik.data.runner import run

    shutil.rmtree(out, ignore_errors=True)
    return run([str(corpus)], out, workers=1, overrides=overrides)["documents_kept"]


def run_datatrove(corpus: Path, out: Path) -> int:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    shutil.rmtree(out, ignore_errors=True)
    pipeline = [
        JsonlReader(str(corpus.parent), glob_pattern=corpus.name),
        GopherRepetitionFilter(),
        GopherQualityFilter(),
        C4QualityFilter(filter_no_terminal_punct=False),  # as in FineWeb's own pipeline
        FineWebQualityFilter(),
        JsonlWriter(str(out / "kept"), compression=None),
    ]
    LocalPipelineExecutor(
        pipeline=pipeline, tasks=1, workers=1, logging_dir=str(out / "logs"), skip_completed=False
    ).run()
    return sum(len(p.read_text().splitlines()) for p in (out / "kept").glob("*.jsonl"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one core: tokenizers' thread pool too
    import logging

    logging.disable(logging.WARNING)
    try:
        from loguru import logger

        logger.remove()
    except ImportError:
        pass
    tmp = Path(tempfile.mkdtemp(prefix="acik-bench-data-"))
    corpus = tmp / "corpus.jsonl"
    n = build_corpus(corpus)
    fineweb_c4 = ["c4.drop_lines_without_terminal_punct=false"]  # as FineWeb configures C4
    filters_only = fineweb_c4 + [
        "langid.enabled=false",
        "pii.enabled=false",
        "dedup.exact=false",
        "dedup.near=false",
        "tokenize.enabled=false",
    ]
    contenders = {
        "acik full chain": lambda: run_acik(corpus, tmp / "acik-full", fineweb_c4),
        "acik filters only": lambda: run_acik(corpus, tmp / "acik-filters", filters_only),
    }
    try:
        import datatrove  # noqa: F401

        contenders["datatrove FineWeb chain"] = lambda: run_datatrove(corpus, tmp / "datatrove")
    except ImportError:
        print("datatrove not installed: pip install 'acik[bench]'", file=sys.stderr)
    kept: dict[str, int] = {}
    walls: dict[str, list[float]] = {k: [] for k in contenders}
    cpus: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(args.repeats):
        for name, fn in contenders.items():
            result: dict = {}
            wall, cpu = timed(lambda fn=fn, result=result: result.setdefault("kept", fn()))
            kept[name] = result["kept"]
            walls[name].append(wall)
            cpus[name].append(cpu)
    print(
        f"corpus: {n} documents, {corpus.stat().st_size / 1e6:.1f} MB; one worker; "
        f"median of {args.repeats} runs"
    )
    print("| chain | docs kept | wall s | docs/s (wall) | CPU s | docs per CPU-second |")
    print("|---|---|---|---|---|---|")
    for name in contenders:
        w, c = statistics.median(walls[name]), statistics.median(cpus[name])
        print(f"| {name} | {kept[name]} | {w:.2f} | {n / w:.0f} | {c:.2f} | {n / c:.0f} |")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
