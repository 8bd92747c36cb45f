"""Readers: turn inputs into records, and inputs into independent tasks.

A record is a dict with `id`, `source`, `path`, `license`, `metadata` and exactly one of `text`
(ready), `html` (to extract) or `error` (to quarantine: bad JSON, undecodable bytes, no text).
Every record a reader yields is counted as input, so a reader never skips a record silently; it
only skips things that are not documents (WARC request records, folder files of unknown type).
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path

import xxhash

from acik.data.docs import recipe_for_kind
from acik.data.pyenv import PYENV_INPUT, plan_pyenv_tasks, read_pyenv_task
from acik.data.recipe import DataRecipe

TEXT_SUFFIXES = {".txt", ".text", ".md", ".markdown", ".mdx", ".rst"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
WARC_SUFFIXES = {".warc", ".arc"}
PARQUET_SUFFIXES = {".parquet"}
COMPRESSED = {".gz", ".zst"}
KNOWN = TEXT_SUFFIXES | JSONL_SUFFIXES | HTML_SUFFIXES | WARC_SUFFIXES | PARQUET_SUFFIXES

# Folder inputs are grouped into tasks of at most this many files or bytes, so ten thousand small
# files are not ten thousand tasks.
FILES_PER_TASK = 64
BYTES_PER_TASK = 64 << 20


def record_id(path: str, index: int) -> str:
    return xxhash.xxh3_64_hexdigest(f"{path}\0{index}".encode())


def file_kind(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    if suffixes and suffixes[-1] in COMPRESSED:
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last in JSONL_SUFFIXES or (last == ".json" and path.suffix.lower() in COMPRESSED):
        return "jsonl"
    if last in PARQUET_SUFFIXES:
        return "parquet"
    if last in HTML_SUFFIXES:
        return "html"
    if last in WARC_SUFFIXES:
        return "warc"
    if last in TEXT_SUFFIXES:
        return "text"
    return None


def open_bytes(path: Path) -> io.BufferedIOBase:
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")
    if suffix == ".zst":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    return open(path, "rb")


def plan_tasks(
    inputs: list[str], recipe: DataRecipe, license: str | None = None, mode: str = "auto"
) -> list[dict]:
    """Split inputs into independent tasks, in a deterministic order. Each task names the recipe its
    files get (`docs.recipe_for_kind`): in mode "auto" a folder's documents and data sets go to
    different tasks, in input order."""
    tasks: list[dict] = []
    default_license = license or recipe.read.default_license
    for spec in inputs:
        if spec == PYENV_INPUT and not Path(spec).exists():
            tasks.extend({**t, "recipe": recipe_for_kind(None, mode)} for t in plan_pyenv_tasks(recipe.python_env))
            continue
        root = Path(spec)
        if not root.exists():
            raise FileNotFoundError(f"input {spec}: no such file or folder")
        if root.is_file():
            files = [root]
        else:
            files = sorted(
                p
                for p in root.rglob("*")
                if p.is_file()
                and file_kind(p) is not None
                and not any(part.startswith(".") for part in p.relative_to(root).parts)
            )
            if not files:
                raise ValueError(
                    f"input {spec}: no readable files (known types: "
                    f"{', '.join(sorted(KNOWN))}, optionally .gz/.zst)"
                )
        group: list[str] = []
        size = 0
        name = ""
        for f in files:
            this = recipe_for_kind(file_kind(f) or "text", mode)
            if group and this != name:
                tasks.append(_file_task(spec, group, default_license, name))
                group, size = [], 0
            name = this
            group.append(str(f))
            size += f.stat().st_size
            if len(group) >= FILES_PER_TASK or size >= BYTES_PER_TASK:
                tasks.append(_file_task(spec, group, default_license, name))
                group, size = [], 0
        if group:
            tasks.append(_file_task(spec, group, default_license, name))
    seen = set()
    for t in tasks:
        if t["task_id"] in seen:
            raise ValueError(f"input {t['source']} is given twice")
        seen.add(t["task_id"])
    return tasks


def _file_task(source: str, files: list[str], license: str, recipe: str) -> dict:
    task_id = "f-" + xxhash.xxh3_64_hexdigest("\n".join(files).encode())
    return {
        "task_id": task_id,
        "kind": "files",
        "source": source,
        "files": files,
        "license": license,
        "recipe": recipe,
    }


def read_task(task: dict, recipe: DataRecipe) -> Iterator[dict]:
    if task["kind"] == "files":
        for f in task["files"]:
            yield from read_file(Path(f), task["source"], task["license"], recipe)
    else:
        yield from read_pyenv_task(task, recipe.python_env)


def _record(source: str, path: str, index: int, license: str, **fields) -> dict:
    rec = {
        "id": record_id(path, index),
        "source": source,
        "path": path,
        "license": license,
        "metadata": fields.pop("metadata", {}),
    }
    rec.update(fields)
    return rec


def _decode(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def read_file(path: Path, source: str, license: str, recipe: DataRecipe) -> Iterator[dict]:
    kind = file_kind(path) or "text"
    p = str(path)
    if kind == "jsonl":
        yield from _read_jsonl(path, source, license, recipe)
    elif kind == "parquet":
        yield from _read_parquet(path, source, license, recipe)
    elif kind == "warc":
        yield from _read_warc(path, source, license)
    else:
        with open_bytes(path) as f:
            raw = f.read()
        text = _decode(raw)
        key = "html" if kind == "html" else "text"
        if text is None:
            yield _record(source, p, 0, license, error="undecodable bytes (not UTF-8)", bytes=len(raw))
        else:
            yield _record(source, p, 0, license, bytes=len(raw), **{key: text})


def _pick_text(row: dict, keys: list[str]) -> str | None:
    for k in keys:
        v = row.get(k)
        if isinstance(v, str):
            return v
    return None


def _row_record(
    row: object, source: str, p: str, index: int, license: str, recipe: DataRecipe, nbytes: int
) -> dict:
    if not isinstance(row, dict):
        return _record(source, p, index, license, error="bad JSON (row is not an object)", bytes=nbytes)
    text = _pick_text(row, recipe.read.text_keys)
    if text is None:
        return _record(
            source, p, index, license, error=f"no text (none of {recipe.read.text_keys})", bytes=nbytes
        )
    meta = {
        k: v
        for k, v in row.items()
        if k not in recipe.read.text_keys and k != "license" and isinstance(v, (str, int, float, bool))
    }
    row_license = row.get("license") if isinstance(row.get("license"), str) else license
    return _record(source, p, index, row_license, text=text, bytes=nbytes, metadata=meta)


def _read_jsonl(path: Path, source: str, license: str, recipe: DataRecipe) -> Iterator[dict]:
    p = str(path)
    with open_bytes(path) as f:
        index = 0
        for raw in io.BufferedReader(f) if not isinstance(f, io.BufferedReader) else f:
            if not raw.strip():
                continue
            line = _decode(raw)
            if line is None:
                yield _record(
                    source, p, index, license, error="undecodable bytes (not UTF-8)", bytes=len(raw)
                )
            else:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    yield _record(source, p, index, license, error=f"bad JSON ({e.msg})", bytes=len(raw))
                else:
                    yield _row_record(row, source, p, index, license, recipe, len(raw))
            index += 1


def _read_parquet(path: Path, source: str, license: str, recipe: DataRecipe) -> Iterator[dict]:
    import pyarrow.parquet as pq

    p = str(path)
    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            nbytes = sum(len(v.encode()) for v in row.values() if isinstance(v, str))
            yield _row_record(row, source, p, index, license, recipe, nbytes)
            index += 1


def _read_warc(path: Path, source: str, license: str) -> Iterator[dict]:
    from warcio.archiveiterator import ArchiveIterator

    p = str(path)
    index = 0
    with open(path, "rb") as f:
        for rec in ArchiveIterator(f, arc2warc=True):
            # Only captured content is a document; requests, warcinfo, revisits and metadata are not.
            if rec.rec_type not in ("response", "resource"):
                continue
            headers = rec.http_headers if rec.http_headers is not None else rec.rec_headers
            ctype = (headers.get_header("Content-Type") or "").lower()
            url = rec.rec_headers.get_header("WARC-Target-URI") or ""
            meta = {
                "url": url,
                "warc_date": rec.rec_headers.get_header("WARC-Date") or "",
                "content_type": ctype,
            }
            raw = rec.content_stream().read()
            if "html" not in ctype and not ctype.startswith("text/"):
                yield _record(
                    source,
                    p,
                    index,
                    license,
                    error=f"not text (Content-Type {ctype or 'missing'})",
                    bytes=len(raw),
                    metadata=meta,
                )
            else:
                charset = (
                    ctype.split("charset=")[-1].split(";")[0].strip() if "charset=" in ctype else "utf-8"
                )
                try:
                    text = raw.decode(charset)
                except (LookupError, UnicodeDecodeError):
                    text = _decode(raw)
                key = "html" if "html" in ctype else "text"
                if text is None:
                    yield _record(
                        source, p, index, license, error="undecodable bytes", bytes=len(raw), metadata=meta
                    )
                else:
                    yield _record(source, p, index, license, bytes=len(raw), metadata=meta, **{key: text})
            index += 1
