"""`acik reproduce`: rerun the command recorded in a directory's manifest and compare the bits.

A stage's manifest records its `acik ...` command line and working directory. Reproducing reruns
that command with the output path swapped for a fresh one; with `--all` it first rebuilds every
recorded parent that acik made, oldest first, and points later commands at the rebuilt parents.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from acik.manifest import read_manifest


@dataclass
class StageResult:
    original: Path
    rebuilt: Path
    identical: bool
    differences: list[str] = field(default_factory=list)
    code_changed: bool = False


def _command(manifest: dict, directory: Path) -> list[str]:
    cmd = manifest.get("command")
    if not isinstance(cmd, list) or not cmd or cmd[0] != "acik":
        raise ValueError(f"{directory}: its manifest records no `acik ...` command ({cmd!r}), so acik cannot "
                         "rerun what made it")
    return cmd


def _substitute(cmd: list[str], cwd: Path, mapping: dict[Path, Path]) -> list[str]:
    out = []
    for arg in cmd:
        prefix, value = ("", arg)
        if arg.startswith("--") and "=" in arg:
            prefix, value = arg.split("=", 1)[0] + "=", arg.split("=", 1)[1]
        resolved = (cwd / value).resolve() if value and not value.startswith("-") else None
        out.append(prefix + str(mapping[resolved]) if resolved in mapping else arg)
    return out


def compare(original: Path, rebuilt: Path) -> tuple[bool, list[str]]:
    a, b = read_manifest(original), read_manifest(rebuilt)
    if a["directory_hash"] == b["directory_hash"]:
        return True, []
    from acik.manifest import is_human_facing

    diffs = []
    for rel in sorted(set(a["files"]) | set(b["files"])):
        if is_human_facing(rel):
            continue
        if rel not in b["files"]:
            diffs.append(f"missing in rebuild: {rel}")
        elif rel not in a["files"]:
            diffs.append(f"only in rebuild: {rel}")
        elif a["files"][rel]["sha256"] != b["files"][rel]["sha256"]:
            diffs.append(f"differs: {rel}")
    return False, diffs


def _chain(directory: Path) -> list[Path]:
    """`directory` and its acik-made ancestors, oldest first."""
    seen: list[Path] = []

    def visit(d: Path) -> None:
        d = d.resolve()
        if d in seen or not (d / "acik.json").exists():
            return
        manifest = read_manifest(d)
        if not isinstance(manifest.get("command"), list):
            return
        for parent in manifest.get("parents", []):
            if parent.get("path"):
                visit(Path(manifest.get("cwd", ".")) / parent["path"])
        seen.append(d)

    visit(directory)
    return seen


def reproduce(directory: str | Path, out: str | Path | None = None, all_stages: bool = False,
              quiet: bool = False) -> list[StageResult]:
    directory = Path(directory).resolve()
    out_root = Path(out).resolve() if out else directory.parent / f"{directory.name}.reproduced"
    stages = _chain(directory) if all_stages else [directory]
    mapping: dict[Path, Path] = {}
    results = []
    for stage in stages:
        manifest = read_manifest(stage)
        cwd = Path(manifest.get("cwd") or ".")
        target = out_root if stage == directory else out_root.parent / f"{out_root.name}.{stage.name}"
        mapping[stage] = target
        cmd = _substitute(_command(manifest, stage), cwd, mapping)
        if str(target) not in cmd and not any(a.endswith("=" + str(target)) for a in cmd):
            raise ValueError(f"{stage}: its recorded command {manifest['command']} does not name the "
                             "directory it wrote, so acik cannot redirect the rerun")
        if not quiet:
            print(f"rerunning: {' '.join(cmd)}", flush=True)
        done = subprocess.run([sys.executable, "-m", "acik", *cmd[1:]], cwd=cwd if cwd.exists() else None)
        if done.returncode != 0:
            raise RuntimeError(f"rerun of {stage} failed with exit code {done.returncode}")
        identical, diffs = compare(stage, target)
        code_changed = (read_manifest(target)["code_version"].get("git_commit")
                        != manifest["code_version"].get("git_commit"))
        results.append(StageResult(stage, target, identical, diffs, code_changed))
    return results


def _cmd_reproduce(args) -> int:
    results = reproduce(args.dir, args.out, args.all)
    ok = True
    for r in results:
        verdict = "identical bits" if r.identical else "DIFFERENT"
        print(f"{r.original} -> {r.rebuilt}: {verdict}")
        for d in r.differences:
            print(f"  {d}")
        if r.code_changed:
            print("  note: the code version differs from the one recorded")
        ok &= r.identical
    return 0 if ok else 1


def add_cli(sub) -> None:
    p = sub.add_parser("reproduce", help="rerun what made a directory and check the result is bit-identical")
    p.add_argument("dir", help="a directory acik wrote (its acik.json records the command that made it)")
    p.add_argument("--out", help="where to write the rebuild (default: DIR.reproduced)")
    p.add_argument("--all", action="store_true", help="rebuild the whole chain from the first recorded input")
    p.set_defaults(func=_cmd_reproduce)
