"""Question/answer pairs derived from the quickstart corpus, deterministically and without importing code.

For every kept document of the Python environment corpus, the module's source is parsed with `ast` (never
imported) and each public function, method and class with a docstring becomes a question — "What does
`textwrap.dedent` do?" — answered by the first sentence(s) of its docstring. Only answers that appear in the
kept document's text are used, so every answer is something the model could have read in pretraining.

The split is a pure function of (seed, name): each pair's key is the xxh3 hash of `seed:name`; the lowest
keys are held out for evaluation, the next ones validate the fine-tuning, the rest train it.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import xxhash

_SIGNATURE = re.compile(r"^[\w.]+\s*\(.*\)|->|^\w+\s*:")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(`'\"])")


@dataclass
class QASettings:
    heldout: int = 300  # questions held out of fine-tuning, asked as 4-way multiple choice
    val: int = 64  # questions that measure the fine-tuning's validation loss (also never trained on)
    max_sentences: int = 2
    min_answer_chars: int = 24
    max_answer_chars: int = 200
    classes: bool = True  # also "What is `module.Class`?"
    signatures: bool = True  # "What does `textwrap.dedent(text)` do?": the parameters give the question hooks
    max_train: int | None = None  # cap on training pairs (null: all)


def source_path(doc: dict) -> Path | None:
    """The source file a python-env document was parsed from, or None for other documents."""
    path = doc.get("path", "")
    if not path.startswith("python-env:") or "module" not in doc.get("metadata", {}):
        return None
    package, rel = path.removeprefix("python-env:").split("/", 1)
    if package == "stdlib":
        from acik.data.pyenv import stdlib_dir

        return stdlib_dir() / rel
    try:
        return Path(md.distribution(package).locate_file(rel))
    except md.PackageNotFoundError:
        return None


def first_sentences(doc: str, s: QASettings) -> str | None:
    """The docstring's first prose paragraph, cut to at most `max_sentences` sentences; None if unsuitable."""
    for para in re.split(r"\n\s*\n", doc.strip()):
        lines = [line.strip() for line in para.strip().splitlines()]
        if not lines or _SIGNATURE.search(lines[0]):
            continue  # a signature line like "wrap(text : string) -> [string]", or a "Key: value" field
        text = " ".join(" ".join(lines).split())
        answer = ""
        for sentence in _SENTENCE_END.split(text)[: s.max_sentences]:
            candidate = f"{answer} {sentence}".strip()
            if len(candidate) > s.max_answer_chars:
                break
            answer = candidate
        if (len(answer) < s.min_answer_chars or len(answer.split()) < 4 or answer[-1] not in ".!?"
                or not (answer[0].isalnum() or answer[0] in "`'\"*(")):
            return None
        return answer
    return None


def _arguments(node: ast.FunctionDef | ast.AsyncFunctionDef, method: bool) -> str:
    """The parameters as written in the source, without a method's `self`/`cls`: names like `path` or `encoding`
    are what a docstring's first sentence often talks about."""
    args = node.args
    static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in node.decorator_list)
    if method and not static and (args.posonlyargs or args.args):
        # `self` never has a default, so the defaults still line up with the last parameters.
        args = ast.arguments(posonlyargs=args.posonlyargs[1:], args=args.args[0 if args.posonlyargs else 1:],
                             vararg=args.vararg, kwonlyargs=args.kwonlyargs, kw_defaults=args.kw_defaults,
                             kwarg=args.kwarg, defaults=args.defaults)
    try:
        return ast.unparse(args)
    except Exception:  # noqa: BLE001 - exotic syntax: the name alone still reads well
        return "..."


def _public(name: str) -> bool:
    return not name.startswith("_")


def pairs_of_module(source: str, module: str, s: QASettings) -> Iterator[dict]:
    tree = ast.parse(source)

    def visit(body: list[ast.stmt], prefix: str) -> Iterator[dict]:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _public(node.name):
                doc = ast.get_docstring(node)
                answer = first_sentences(doc, s) if doc else None
                if answer:
                    name = f"{module}.{prefix}{node.name}"
                    call = f"{name}({_arguments(node, method=bool(prefix))})" if s.signatures else name
                    yield {"name": name, "question": f"What does `{call}` do?", "answer": answer}
            elif isinstance(node, ast.ClassDef) and _public(node.name):
                doc = ast.get_docstring(node)
                answer = first_sentences(doc, s) if doc and s.classes else None
                if answer:
                    name = f"{module}.{prefix}{node.name}"
                    yield {"name": name, "question": f"What is `{name}`?", "answer": answer}
                yield from visit(node.body, f"{prefix}{node.name}.")

    yield from visit(tree.body, "")


def derive_pairs(documents: Iterator[dict], s: QASettings) -> list[dict]:
    """Every usable (question, answer) pair of the kept documents, in document order, unique by name and
    by answer (a second function with the same answer would make multiple choice ambiguous)."""
    pairs, names, answers = [], set(), set()
    for doc in documents:
        module = doc.get("metadata", {}).get("module")
        path = source_path(doc)
        if not module or path is None or not path.exists() or any(p.startswith("_") for p in module.split(".")):
            continue
        try:
            found = list(pairs_of_module(path.read_text(encoding="utf-8"), module, s))
        except (SyntaxError, ValueError, UnicodeDecodeError):
            continue
        text = " ".join(doc["text"].split())
        for p in found:
            key = p["answer"].lower()
            if p["name"] in names or key in answers or p["answer"] not in text:
                continue
            names.add(p["name"])
            answers.add(key)
            pairs.append({**p, "source": doc["path"], "license": doc.get("license")})
    return pairs


def split_pairs(pairs: list[dict], s: QASettings, seed: int) -> dict[str, list[dict]]:
    def key(p: dict) -> int:
        return xxhash.xxh3_64_intdigest(f"{seed}:{p['name']}".encode())

    ranked = sorted(pairs, key=key)
    if len(ranked) < s.heldout + s.val + 100:
        raise ValueError(f"the corpus gave {len(pairs)} question/answer pairs, too few for {s.heldout} held-out and "
                         f"{s.val} validation questions plus training; add modules to data.python_env or lower "
                         "qa.heldout")
    train = ranked[s.heldout + s.val:]
    if s.max_train:
        train = train[: s.max_train]
    order = {p["name"]: i for i, p in enumerate(pairs)}  # files keep corpus order: easier to read
    return {name: sorted(part, key=lambda p: order[p["name"]])
            for name, part in (("heldout", ranked[: s.heldout]), ("val", ranked[s.heldout: s.heldout + s.val]),
                               ("train", train))}


def multiple_choice(heldout: list[dict], seed: int, prompt) -> list[dict]:
    """Each held-out question with its answer and three answers of other held-out questions, the gold
    position and distractors drawn from a generator seeded by (seed, name). `prompt(question)` renders the
    context the answers are scored after (the chat template, as the fine-tuned model is asked)."""
    out = []
    for i, p in enumerate(heldout):
        rng = random.Random(f"{seed}:{p['name']}")
        others = rng.sample([j for j in range(len(heldout)) if j != i], 3)
        choices = [heldout[j]["answer"] for j in others]
        gold = rng.randrange(4)
        choices.insert(gold, p["answer"])
        out.append({"name": p["name"], "question": p["question"], "context": prompt(p["question"]),
                    "continuations": choices, "gold": gold})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows),
                    encoding="utf-8")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
