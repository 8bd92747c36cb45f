"""Builds one of acik's C kernels on first use and caches it, per machine.

A kernel is compiled with the C compiler `torch.compile` also needs on CPU (`$CC`, else `cc`), for this CPU
(`-march=native`), and cached under `$XDG_CACHE_HOME/acik/kernels` (~/.cache). It links the OpenMP runtime
torch loaded, so the kernels and torch share one pool of worker threads (two pools on two cores slow every
parallel region down: acik.engine.openmp). Where it is not meant to run (not Linux x86-64, torch without
OpenMP) or `ACIK_CPU_KERNELS=0`, `compile_library` returns None and the callers use PyTorch's operators. Where
it should run but cannot be built (its source missing from an install, no compiler, a compile error), it says
so once with a `KernelUnavailableWarning` and returns None: slower, never a crash.
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
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).parent
log = logging.getLogger(__name__)


class KernelUnavailableWarning(RuntimeWarning):
    """One of acik's C kernels could not be built here; PyTorch's (slower) operators run instead."""


def _unavailable(name: str, why: str) -> None:
    warnings.warn(f"acik's {name} kernel is unavailable ({why}); using PyTorch's operators instead, which is "
                  "slower. Set ACIK_CPU_KERNELS=0 to choose that and silence this warning.",
                  KernelUnavailableWarning, stacklevel=3)


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
    try:
        code = source.read_bytes()
    except OSError as err:  # an install that left the C sources out of its package data
        _unavailable(name, f"its source {source} cannot be read: {err.strerror or err}")
        return None
    # One build per source, flags and CPU: -march=native compiles for the machine it runs on (its model and
    # instruction-set flags, not the lines of /proc/cpuinfo that change while it runs, like its clock).
    key = hashlib.sha256()
    key.update(code)
    key.update(" ".join(_command(Path(source.name), march, "")).encode())  # not its folder: installs share builds
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
        except (OSError, subprocess.TimeoutExpired) as err:  # no compiler ($CC), or a hung one
            os.unlink(tmp)
            _unavailable(name, f"the C compiler could not run: {err}; install one (gcc) or set $CC")
            return None
        if result.returncode != 0:
            os.unlink(tmp)
            log.debug("acik's %s kernel build failed:\n%s", name, result.stderr[-2000:])
            _unavailable(name, f"{_command(source, march, tmp)[0]} failed to compile {source.name}: "
                               f"{result.stderr.strip()[-300:] or f'exit code {result.returncode}'}")
            return None
        os.replace(tmp, path)  # atomic: a concurrent build or reader sees a whole file or none
        for stale in path.parent.glob(f"{prefix}*.so"):  # earlier sources' builds for this -march
            if stale != path:
                stale.unlink(missing_ok=True)
    try:
        return ctypes.CDLL(str(path))
    except OSError as err:  # a damaged cache entry, or the OpenMP runtime it links has moved
        _unavailable(name, f"{path} does not load: {err}; delete it to rebuild")
        return None
