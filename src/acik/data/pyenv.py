"""The local Python environment as a corpus: acik's embedded default, present wherever Python is.

Docstrings are read by parsing source files with `ast`, never by importing them (importing runs
code). `pydoc` topics come from the stdlib's `pydoc_data/topics.py`, also parsed, not imported.
Package descriptions, versions and licenses come from `importlib.metadata`. The content depends on
the installed versions, which every document carries and the data card records.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import platform
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import xxhash

from acik.data.licenses import package_license

PYENV_INPUT = "python-env"
STDLIB_LICENSE = "PSF-2.0"


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def stdlib_files(cfg) -> list[str]:
    """Relative paths of the stdlib source files to read, sorted."""
    root = stdlib_dir()
    exclude = set(cfg.stdlib_exclude)
    wanted = set(cfg.stdlib_modules) if cfg.stdlib_modules is not None else None
    out = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        top = rel.parts[0].removesuffix(".py")
        if wanted is not None and top not in wanted:
            continue
        if wanted is None and (top.startswith("_") or top in exclude):
            continue
        if any(part in exclude or part.startswith(".") for part in rel.parts[1:-1]):
            continue
        if "site-packages" in rel.parts or "dist-packages" in rel.parts:
            continue
        out.append(rel.as_posix())
    if wanted is not None:
        found = {f.split("/")[0].removesuffix(".py") for f in out}
        missing = sorted(wanted - found)
        if missing:
            raise ValueError(f"python_env.stdlib_modules: {missing} not found in {root}")
    return sorted(out)


def _distribution(name: str) -> md.Distribution:
    try:
        return md.distribution(name)
    except md.PackageNotFoundError:
        raise ValueError(
            f"python_env.packages: {name!r} is not installed in this environment "
            f"({platform.python_version()}); remove it from the recipe or install it"
        ) from None


def package_files(dist: md.Distribution, cfg) -> list[str]:
    files = sorted(
        str(f)
        for f in (dist.files or [])
        if str(f).endswith(".py")
        and not any(p in ("tests", "test", "testing") for p in Path(str(f)).parts)
        and ".." not in Path(str(f)).parts
    )
    if cfg.max_files_per_package is not None:
        files = files[: cfg.max_files_per_package]
    return files


def plan_pyenv_tasks(cfg) -> list[dict]:
    tasks = []
    if cfg.stdlib:
        files = stdlib_files(cfg)
        for i in range(0, len(files), cfg.files_per_task):
            chunk = files[i : i + cfg.files_per_task]
            tasks.append(
                {
                    "task_id": "py-stdlib-" + xxhash.xxh3_64_hexdigest("\n".join(chunk).encode()),
                    "kind": "pyenv-stdlib",
                    "source": f"{PYENV_INPUT}:stdlib",
                    "files": chunk,
                    "license": STDLIB_LICENSE,
                }
            )
    if cfg.pydoc_topics:
        tasks.append(
            {
                "task_id": "py-topics",
                "kind": "pyenv-topics",
                "source": f"{PYENV_INPUT}:pydoc-topics",
                "files": [],
                "license": STDLIB_LICENSE,
            }
        )
    for name in sorted(set(cfg.packages)):
        dist = _distribution(name)
        files = package_files(dist, cfg)
        for i in range(0, max(len(files), 1), cfg.files_per_task):
            chunk = files[i : i + cfg.files_per_task]
            tasks.append(
                {
                    "task_id": f"py-pkg-{name}-{i // cfg.files_per_task}",
                    "kind": "pyenv-package",
                    "source": f"{PYENV_INPUT}:{name}",
                    "package": name,
                    "files": chunk,
                    "with_description": i == 0,
                    "license": package_license(dist.metadata),
                }
            )
    return tasks


def environment_facts(cfg) -> dict:
    """What the python-env corpus depends on, for the data card and manifest."""
    facts = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "stdlib": str(stdlib_dir()) if cfg.stdlib else None,
        "packages": {},
    }
    for name in sorted(set(cfg.packages)):
        dist = _distribution(name)
        facts["packages"][name] = {"version": dist.version, "license": package_license(dist.metadata)}
    return facts


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    try:
        args = ast.unparse(node.args)
    except Exception:  # noqa: BLE001 - unparse of exotic syntax; the name alone still reads well
        args = "..."
    return f"{node.name}({args})"


def _public(name: str) -> bool:
    return not name.startswith("_") or (name.startswith("__") and name.endswith("__") and name != "__init__")


def module_text(source: str, modname: str) -> str:
    """The docstrings of a module, its public classes, functions and methods, as one document."""
    tree = ast.parse(source)
    parts = []
    doc = ast.get_docstring(tree)
    if doc:
        parts.append(f"Module {modname}\n\n{doc}")

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _public(node.name):
                d = ast.get_docstring(node)
                if d:
                    parts.append(f"{prefix}{_signature(node)}\n\n{d}")
            elif isinstance(node, ast.ClassDef) and _public(node.name):
                d = ast.get_docstring(node)
                if d:
                    parts.append(f"class {prefix}{node.name}\n\n{d}")
                visit(node.body, f"{prefix}{node.name}.")

    visit(tree.body, "")
    return "\n\n".join(parts)


def _rec(source: str, path: str, license: str, meta: dict, **fields) -> dict:
    return {
        "id": xxhash.xxh3_64_hexdigest(f"{path}\0{0}".encode()),
        "source": source,
        "path": path,
        "license": license,
        "metadata": meta,
        **fields,
    }


def _read_source(
    path: Path, rel: str, source: str, modname: str, license: str, meta: dict, min_chars: int
) -> Iterator[dict]:
    raw = path.read_bytes()
    try:
        text = module_text(raw.decode("utf-8"), modname)
    except UnicodeDecodeError:
        yield _rec(source, rel, license, meta, error="undecodable bytes (not UTF-8)", bytes=len(raw))
        return
    except (SyntaxError, ValueError) as e:
        yield _rec(
            source, rel, license, meta, error=f"unparsable source ({type(e).__name__})", bytes=len(raw)
        )
        return
    # A file without docstrings holds no document; it is not an input record.
    if len(text) >= max(min_chars, 1):
        yield _rec(source, rel, license, {**meta, "module": modname}, text=text, bytes=len(raw))


def read_pyenv_task(task: dict, cfg) -> Iterator[dict]:
    pyver = platform.python_version()
    if task["kind"] == "pyenv-stdlib":
        root = stdlib_dir()
        meta = {"package": "python-stdlib", "version": pyver}
        for rel in task["files"]:
            yield from _read_source(
                root / rel,
                f"python-env:stdlib/{rel}",
                task["source"],
                _module_name(Path(rel)),
                task["license"],
                meta,
                cfg.min_chars,
            )
    elif task["kind"] == "pyenv-topics":
        path = stdlib_dir() / "pydoc_data" / "topics.py"
        topics = _literal_topics(path)
        meta = {"package": "python-stdlib", "version": pyver}
        for name in sorted(topics):
            text = topics[name].strip()
            if text:
                yield _rec(
                    task["source"],
                    f"python-env:pydoc-topics/{name}",
                    task["license"],
                    {**meta, "topic": name},
                    text=text,
                    bytes=len(text.encode()),
                )
    else:
        dist = _distribution(task["package"])
        meta = {"package": task["package"], "version": dist.version}
        if task.get("with_description"):
            desc = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
            summary = dist.metadata.get("Summary") or ""
            text = f"{task['package']} {dist.version}: {summary}\n\n{desc}".strip()
            yield _rec(
                task["source"],
                f"python-env:{task['package']}/METADATA",
                task["license"],
                meta,
                text=text,
                bytes=len(text.encode()),
            )
        for rel in task["files"]:
            path = Path(dist.locate_file(rel))
            if not path.exists():
                continue
            modname = _module_name(Path(rel))
            yield from _read_source(
                path,
                f"python-env:{task['package']}/{rel}",
                task["source"],
                modname,
                task["license"],
                meta,
                cfg.min_chars,
            )


def _literal_topics(path: Path) -> dict[str, str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "topics" for t in node.targets):
            value = ast.literal_eval(node.value)
            if isinstance(value, dict):
                return {str(k): str(v) for k, v in value.items()}
    raise ValueError(f"{path}: no `topics = {{...}}` literal found")
