"""Release a thread's OpenMP worker threads, so that the engine's thread decodes at full speed.

PyTorch's CPU kernels run their parallel regions on OpenMP teams, one pool of worker threads per thread
that has ever run one. GNU OpenMP (libgomp, which Linux wheels of PyTorch ship) counts every pool alive in
the process; once those threads outnumber the cores, every team stops spinning between parallel regions
and sleeps instead, and a decode step's hundred-odd regions each pay a wake-up. On this project's 2-core
machine a model loaded on the main thread and decoded on the engine's thread ran 1.3-2x slower than the
same steps with only one pool alive (docs/benchmarks.md "Decode").

OpenMP 5's `omp_pause_resource_all` frees the calling thread's pool (the next parallel region makes a new
one, in microseconds). The engine calls it for the thread that submits a request, and for its own thread
before it goes idle. Where the runtime lacks it (or is not found), this does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os

OMP_PAUSE_HARD = 2


@functools.cache
def _pause():
    import torch

    if "OpenMP" not in torch.__config__.parallel_info():
        return None
    # The runtime torch loaded: the copy its wheel bundles, or the system's.
    here = os.path.join(os.path.dirname(torch.__file__), "lib")
    candidates = sorted(glob.glob(os.path.join(here, "libgomp*.so*")) + glob.glob(os.path.join(here, "libomp*")))
    candidates += ["libgomp.so.1", "libomp.so"]
    for name in candidates:
        try:
            return ctypes.CDLL(name).omp_pause_resource_all
        except (OSError, AttributeError):
            continue
    return None


def release_openmp_threads() -> None:
    """Free the calling thread's OpenMP worker threads (no-op where unsupported, or inside a parallel region)."""
    pause = _pause()
    if pause is not None:
        pause(OMP_PAUSE_HARD)
