"""Builds one of acik's C kernels on first use and caches it, per machine.

A kernel is compiled with the C compiler `torch.compile` also needs on CPU (`$CC`, else `cc`), for this CPU
(`-march=native`), and cached under `$XDG_CACHE_HOME/acik/kernels` (~/.cache). It links the OpenMP runtime
torch loaded, so the kernels and torch share one pool of worker threads (two pools on two cores slow every
parallel region down: acik.engine.openmp). Where it cannot be built (no compiler, not Linux x86-64, torch
without OpenMP) or `ACIK_CPU_KERNELS=0`, `load` returns None and the callers use PyTorch's operators.
`ACIK_CPU_KERNEL_MARCH` overrides `-march` (the tests build the AVX2 paths this way).
"""

from __future__ import annotations

import ctypes
import functools
import glob
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).parent
log = logging.getLogger(__name__)


def _openmp_runtime() -> tuple[str, str] | None:
    """(folder, file) of the libgomp bundled with torch, or None where torch uses the system's."""
    here = os.path.join(os.path.dirname(torch.__file__), "lib")
    found = sorted(glob.glob(os.path.join(here, "libgomp*.so*")))
    return (here, os.path.basename(found[0])) if found else None


def _command(source: Path, march: str, out: str) -> list[str]:
    cmd = [os.environ.get("CC", "cc"), "-O3", f"-march={march}", "-fopenmp", "-shared", "-fPIC", str(source),
           "-o", out]
    runtime = _openmp_runtime()
    if runtime is not None:
        cmd += [f"-L{runtime[0]}", f"-l:{runtime[1]}", f"-Wl,-rpath,{runtime[0]}"]
    return cmd


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "acik" / "kernels"


def march() -> str:
    return os.environ.get("ACIK_CPU_KERNEL_MARCH", "native")


def enabled() -> bool:
    return os.environ.get("ACIK_CPU_KERNELS", "1") != "0"


@functools.cache
def compile_library(name: str, march: str) -> ctypes.CDLL | None:
    """`name`.c from this folder built for `march`, loaded; None where it cannot be built (logged)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None
    if "OpenMP" not in torch.__config__.parallel_info():
        return None
    source = HERE / f"{name}.c"
    # One build per source, flags and CPU: -march=native compiles for the machine it runs on (its model and
    # instruction-set flags, not the lines of /proc/cpuinfo that change while it runs, like its clock).
    key = hashlib.sha256()
    key.update(source.read_bytes())
    key.update(" ".join(_command(source, march, "")).encode())
    if march == "native" and os.path.exists("/proc/cpuinfo"):
        first = Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
        key.update("\n".join(line for line in first if line.startswith(("model name", "flags"))).encode())
    prefix = f"{name}-{march}-"
    path = _cache_dir() / f"{prefix}{key.hexdigest()[:16]}.so"
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            folder = str(path.parent)
        except OSError:
            folder = tempfile.mkdtemp(prefix="acik-kernels-")
            path = Path(folder) / path.name
        tmp = tempfile.NamedTemporaryFile(dir=folder, suffix=".so", delete=False).name
        try:
            result = subprocess.run(_command(source, march, tmp), capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as err:
            os.unlink(tmp)
            log.info("acik's %s kernel not built (%s); using PyTorch's operators", name, err)
            return None
        if result.returncode != 0:
            os.unlink(tmp)
            log.info("acik's %s kernel not built; using PyTorch's operators:\n%s", name, result.stderr[-2000:])
            return None
        os.replace(tmp, path)  # atomic: a concurrent build or reader sees a whole file or none
        for stale in path.parent.glob(f"{prefix}*.so"):  # earlier sources' builds for this -march
            if stale != path:
                stale.unlink(missing_ok=True)
    return ctypes.CDLL(str(path))
