"""Manifests: every directory acik writes carries `acik.json`, which says what is in it and what made it.

The directory hash covers the content files only: `acik.json` itself and human-facing files (model
and data cards, reports) are listed with their hashes but left out of it, so rewriting a card does
not change a model's identity.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
MANIFEST = "acik.json"
HUMAN_FILES = {"README.md", "DATA_CARD.md"}
HUMAN_PREFIXES = ("report",)
SKIP_DIRS = {"checkpoints", "__pycache__"}


class ManifestError(ValueError):
    pass


def card_license(directory: str | Path) -> str | None:
    """The `license:` of a model directory's card (README.md front matter), or None."""
    import re

    card = Path(directory) / "README.md"
    if not card.is_file():
        return None
    m = re.search(r"^---\n(.*?)\n---", card.read_text(encoding="utf-8", errors="replace"), re.S)
    lic = re.search(r"^license:\s*(\S.*)$", m.group(1), re.M) if m else None
    return lic.group(1).strip().strip("'\"") if lic else None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_human_facing(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return name in HUMAN_FILES or rel.split("/", 1)[0].startswith(HUMAN_PREFIXES)


def list_files(directory: str | Path) -> list[str]:
    """Relative paths (with '/') of the files a manifest covers, sorted."""
    root = Path(directory)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for name in filenames:
            if name.startswith(".") or name.endswith(".tmp"):
                continue
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel != MANIFEST:
                out.append(rel)
    return sorted(out)


def directory_hash(files: dict[str, dict]) -> str:
    h = hashlib.sha256()
    for rel in sorted(files):
        if not is_human_facing(rel):
            h.update(f"{rel}\t{files[rel]['sha256']}\n".encode())
    return h.hexdigest()


def hash_files(directory: str | Path) -> dict[str, dict]:
    root = Path(directory)
    return {
        rel: {"sha256": sha256_file(root / rel), "size": (root / rel).stat().st_size}
        for rel in list_files(root)
    }


def code_version() -> dict[str, Any]:
    from acik.version import __version__

    out: dict[str, Any] = {"acik": __version__}
    src = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=5
        )
        if commit.returncode == 0:
            out["git_commit"] = commit.stdout.strip()
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--", "."], cwd=src, capture_output=True, text=True,
                timeout=5,
            )
            out["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def current_command() -> list[str]:
    """This process's command line as an `acik ...` argument list (what `acik reproduce` reruns)."""
    import sys

    first = Path(sys.argv[0]).name if sys.argv else ""
    if first in ("acik", "__main__.py", "-m"):
        return ["acik", *sys.argv[1:]]
    return list(sys.argv)


def write_manifest(
    directory: str | Path,
    *,
    kind: str,
    command: str | list[str] | None = None,
    recipe: dict | None = None,
    seed: int | None = None,
    parents: list[dict] | None = None,
    extra: dict | None = None,
) -> dict:
    """Hash every file of `directory` and write its `acik.json`. Returns the manifest.

    `parents` are dicts like {"role": "base_model", "path": ..., "directory_hash": ...};
    `extra` holds stage-specific facts (tokenizer identity, data card summary, quantization).
    """
    root = Path(directory)
    files = hash_files(root)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "directory_hash": directory_hash(files),
        "files": files,
        "command": command if command is not None else current_command(),
        "cwd": os.getcwd(),
        "recipe": recipe,
        "seed": seed,
        "code_version": code_version(),
        "parents": parents or [],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if extra:
        manifest.update(extra)
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, root / MANIFEST)
    return manifest


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise ManifestError(f"{path}: no manifest. acik writes one for every directory it makes; "
                            f"create one for a foreign directory with `acik verify --init {directory}`.")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON ({e}).") from e
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ManifestError(f"{path}: schema_version {manifest.get('schema_version')!r} is not "
                            f"{SCHEMA_VERSION}; this acik cannot check it.")
    return manifest


def verify(directory: str | Path) -> list[str]:
    """Recompute every hash; return one line per problem (empty list: the directory is intact)."""
    root = Path(directory)
    manifest = read_manifest(root)
    recorded: dict[str, dict] = manifest["files"]
    present = set(list_files(root))
    problems = []
    for rel in sorted(recorded):
        if rel not in present:
            problems.append(f"missing: {rel}")
            continue
        path = root / rel
        if path.stat().st_size != recorded[rel]["size"] or sha256_file(path) != recorded[rel]["sha256"]:
            note = " (human-facing; not part of the directory hash)" if is_human_facing(rel) else ""
            problems.append(f"changed: {rel}{note}")
    for rel in sorted(present - set(recorded)):
        problems.append(f"extra: {rel}")
    if directory_hash(recorded) != manifest["directory_hash"]:
        problems.append("manifest: the recorded directory_hash does not match its own file list")
    return problems


def canonical_json_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"),
                                     ensure_ascii=False).encode()).hexdigest()


def tokenizer_identity(directory: str | Path) -> str:
    """Identity hash of a tokenizer from its canonical content, so re-saving keeps it.

    Covers the parsed `tokenizer.json` and the special tokens of `tokenizer_config.json`
    (bos/eos/pad/unk and added tokens), not formatting or unrelated config keys.
    """
    root = Path(directory)
    tok_path = root / "tokenizer.json"
    if not tok_path.exists():
        raise ManifestError(f"{tok_path}: missing; a tokenizer directory needs tokenizer.json.")
    tok = json.loads(tok_path.read_text(encoding="utf-8"))
    tok.pop("truncation", None)
    tok.pop("padding", None)
    special: dict[str, Any] = {}
    cfg_path = root / "tokenizer_config.json"
    if cfg_path.exists():
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        for key in ("bos_token", "eos_token", "pad_token", "unk_token", "additional_special_tokens",
                    "extra_special_tokens", "added_tokens_decoder", "chat_template"):
            if cfg.get(key) is not None:
                special[key] = cfg[key]
    return canonical_json_hash({"tokenizer": tok, "special": special})
