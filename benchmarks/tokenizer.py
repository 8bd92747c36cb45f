"""Tokenizer throughput: acik against plain `tokenizers` and `tiktoken`, same text, same merges, one run.

Training: `acik.tokenizer.train_bpe` (reading, training, renumbering, writing, manifest) against the bare
`tokenizers` BPE trainer with the same pre-tokeniser and vocabulary size.
Encoding: the trained tokenizer through acik, through `tokenizers` directly, and through a
`tiktoken.Encoding` built from the same ranks (tiktoken's published encodings are downloaded at run
time, so we build ours): one long string, and a batch of documents (lines).

    python benchmarks/tokenizer.py [--repeats 5] [--vocab-size 8192]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from acik.tokenizer import (  # noqa: E402
    GPT4_SPLIT_PATTERN,
    SPECIAL_TOKENS,
    bytes_to_unicode,
    load_tokenizer,
    train_bpe,
)


def shared_data() -> Path:
    return Path(os.environ.get("ACIK_SHARED_DATA") or ROOT.parent / "shared" / "data")


def median_time(fn, repeats: int) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds (all threads) of `repeats` calls. CPU time is the
    steadier figure on a shared machine; wall time is what a user waits."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def train_plain_tokenizers(texts: list[str], vocab_size: int):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT4_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(SPECIAL_TOKENS), min_frequency=2,
                                  show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def tiktoken_encoding(tok_dir: Path):
    """A tiktoken Encoding with the trained tokenizer's ranks (acik's ids are the ranks)."""
    import json

    import tiktoken

    inverse = {c: b for b, c in bytes_to_unicode().items()}
    data = json.loads((tok_dir / "tokenizer.json").read_text(encoding="utf-8"))
    ranks = {bytes(inverse[c] for c in token): i for token, i in data["model"]["vocab"].items()}
    specials = {t["content"]: t["id"] for t in data["added_tokens"]}
    return tiktoken.Encoding(name="acik-trained", pat_str=GPT4_SPLIT_PATTERN, mergeable_ranks=ranks,
                             special_tokens=specials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--vocab-size", type=int, default=8192)
    args = parser.parse_args()
    data = shared_data()
    train_files = [data / "tinyshakespeare.txt", data / "wikitext-2" / "valid.txt"]
    train_texts = [p.read_text(encoding="utf-8") for p in train_files]
    train_mb = sum(len(t.encode()) for t in train_texts) / 1e6
    text = (data / "wikitext-2" / "test.txt").read_text(encoding="utf-8")
    docs = [line for line in text.splitlines(keepends=True) if line.strip()]
    mb = len(text.encode()) / 1e6
    docs_mb = sum(len(d.encode()) for d in docs) / 1e6

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tok"
        t_acik = median_time(lambda: train_bpe(train_files, args.vocab_size, out, show_progress=False),
                             args.repeats)
        t_plain = median_time(lambda: train_plain_tokenizers(train_texts, args.vocab_size), args.repeats)
        rows.append(("train", "acik train_bpe", train_mb, t_acik))
        rows.append(("train", "tokenizers BpeTrainer", train_mb, t_plain))

        tok = load_tokenizer(out)
        backend = tok.backend
        enc = tiktoken_encoding(out)
        ours = tok.encode(text)
        same_long = enc.encode_ordinary(text) == ours
        batch_ours = tok.encode_batch(docs)
        batch_tt = enc.encode_ordinary_batch(docs, num_threads=2)
        agree = sum(a == b for a, b in zip(batch_ours, batch_tt)) / len(docs)

        cases = [
            ("encode 1 string", "acik", lambda: tok.encode(text), mb),
            ("encode 1 string", "tokenizers", lambda: backend.encode(text), mb),
            ("encode 1 string", "tiktoken", lambda: enc.encode_ordinary(text), mb),
            ("encode batch", "acik encode_batch", lambda: tok.encode_batch(docs), docs_mb),
            ("encode batch", "tokenizers encode_batch_fast",
             lambda: backend.encode_batch_fast(docs), docs_mb),
            ("encode batch", "tiktoken encode_ordinary_batch",
             lambda: enc.encode_ordinary_batch(docs, num_threads=2), docs_mb),
        ]
        for task, who, fn, size in cases:
            rows.append((task, who, size, median_time(fn, args.repeats)))

    print(f"training text: {train_mb:.2f} MB (tinyshakespeare + wikitext-2 valid), vocab {args.vocab_size}")
    print(f"encoding text: wikitext-2 test, {mb:.2f} MB ({len(docs)} non-empty lines for the batch)")
    print(f"median of {args.repeats} runs; {os.cpu_count()} CPU(s); load average {os.getloadavg()[0]:.1f}\n")
    print("| task | implementation | MB/s (wall) | MB per CPU-second |")
    print("|---|---|---:|---:|")
    for task, who, size, (wall, cpu) in rows:
        print(f"| {task} | {who} | {size / wall:.2f} | {size / cpu:.2f} |")
    print(f"\ntiktoken ids == acik ids: whole text {same_long}; per line {agree:.2%}")


if __name__ == "__main__":
    main()
