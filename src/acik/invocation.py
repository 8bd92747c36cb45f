"""How to type an acik command so that it runs as printed, from the directory the user is in.

After `make quickstart` the `acik` script lives in `.venv/bin/`, which is not on the PATH until the
virtual environment is activated; a hint that says `acik chat ...` would then fail as typed. Hints
print the command the way this process was started instead, and plain `acik` only when that is what
the shell would find.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path


def shell_path(path: str | Path) -> str:
    """`path` relative to the current directory when it lies below it, else absolute; quoted for a shell."""
    p = Path(path).absolute()
    try:
        rel = p.relative_to(Path.cwd())
        text = str(rel)
    except ValueError:
        text = str(p)
    return shlex.quote(text)


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def acik_command() -> str:
    """The words that start this acik again: `acik` if the shell finds this one on the PATH, else its path
    (e.g. `.venv/bin/acik`), else `PYTHON -m acik`."""
    on_path = shutil.which("acik")
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    script = Path(argv0) if Path(argv0).name == "acik" and Path(argv0).is_file() else None
    if script is None:  # `python -m acik` or the Python API: the script next to this interpreter, if any
        sibling = Path(sys.executable).parent / "acik"
        script = sibling if sibling.is_file() else None
    if script is None:
        return "acik" if on_path else f"{shell_path(sys.executable)} -m acik"
    if on_path and _same_file(on_path, script):
        return "acik"
    text = shell_path(script)
    return text if "/" in text else f"./{text}"  # a bare name would be looked up on the PATH
