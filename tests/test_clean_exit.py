"""Scripts that load a model, generate or chat, and end, exit with code 0: the engine's thread is stopped and
joined at exit, not torn down inside a PyTorch call while Python finalizes (which aborted about one run in three
with "terminate called without an active exception", exit code 134). And `LLM.close()` / `with acik.load(...)`."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import acik

SRC = Path(__file__).resolve().parents[1] / "src"

SCRIPT = """
import sys

import acik

llm = acik.load(sys.argv[1], optimize=sys.argv[2] == "optimize")
if sys.argv[3] == "chat":
    reply = llm.chat([{"role": "user", "content": "Hello there"}], max_new_tokens=8, temperature=0)
elif sys.argv[3] == "stream":
    reply = "".join(llm.generate("Once upon a time", max_new_tokens=8, temperature=0, stream=True))
else:
    reply = llm.generate("Once upon a time", max_new_tokens=8, temperature=0)
print("reply:", repr(reply))
"""


@pytest.fixture(scope="module")
def model_dir(tiny_chat_model_dir):
    return tiny_chat_model_dir


def test_twenty_scripts_exit_cleanly(model_dir, tmp_path):
    """Twenty runs, two at a time: with and without optimize=True, generate, streamed generate and chat; the
    script ends right after its last reply, with no close() (the case that aborted)."""
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    kinds = ["generate", "chat", "generate", "chat", "stream"]
    runs = [("optimize" if i % 2 else "plain", kinds[i % len(kinds)]) for i in range(20)]

    def run(args: tuple[str, str]) -> tuple[tuple[str, str], subprocess.CompletedProcess]:
        cmd = [sys.executable, str(script), str(model_dir), *args]
        # The plain runs take one thread each (two run at once, and OpenMP's spinning on shared cores costs
        # seconds); the optimized ones keep PyTorch's default pool, as a user's script does.
        threads = {"OMP_NUM_THREADS": "1"} if args[0] == "plain" else {}
        return args, subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**env, **threads},
                                    cwd=tmp_path)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, runs))
    failed = [f"{args}: exit code {r.returncode}: {r.stderr.strip()[-300:]}" for args, r in results
              if r.returncode != 0 or "terminate called" in r.stderr or "reply: '" not in r.stdout]
    assert not failed, f"{len(failed)} of {len(runs)} runs did not exit cleanly:\n" + "\n".join(failed)


def test_close_stops_the_engine_and_with_closes_it(model_dir):
    """`with acik.load(...) as llm:` stops the engine's thread at the end of the block; close() is idempotent;
    the model stays loaded and a later generate starts a new engine that answers the same."""
    with acik.load(model_dir) as llm:
        first = llm.generate("Hi", max_new_tokens=4, temperature=0)
        engine = llm.engine()
        assert engine._thread.is_alive()
    assert engine.closed and not engine._thread.is_alive()
    llm.close()
    assert llm.generate("Hi", max_new_tokens=4, temperature=0) == first
    second = llm.engine()
    assert second is not engine and not second.closed
    llm.close()
    llm.close()
    assert second.closed and not second._thread.is_alive()
