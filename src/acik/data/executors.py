"""Where the data stage's tasks run: in this process, a local process pool, or on Ray. Each task is
independent (`acik.data.runner.run_task`): it reads its files and writes its results under the work directory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

Task = Callable[[dict, dict, str], dict]  # (task, recipe dict, work directory) -> statistics


def execute(run_task: Task, pending: list[dict], recipe_dicts: dict[str, dict], work: Path, executor: str,
            workers: int) -> None:
    """Run `run_task` on each pending task with the recipe it names (`task["recipe"]`, a key of `recipe_dicts`).
    `run_task` must be a module-level function: process pools and Ray ship it to other processes by name."""
    if not pending:
        return
    jobs = [(t, recipe_dicts[t["recipe"]]) for t in pending]
    if executor == "ray":
        _execute_ray(run_task, jobs, work, workers)
    elif executor != "local":
        raise ValueError(f"executor {executor!r}: expected 'local' or 'ray'")
    elif workers <= 1 or len(pending) == 1:
        for task, recipe_dict in jobs:
            run_task(task, recipe_dict, str(work))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: the parent may hold threads (tokenizers, torch) that fork would copy mid-state.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(pending)), mp_context=ctx) as pool:
            futures = [pool.submit(run_task, t, r, str(work)) for t, r in jobs]
            for f in futures:
                f.result()


def _execute_ray(run_task: Task, jobs: list[tuple[dict, dict]], work: Path, workers: int) -> None:
    try:
        import ray
    except ImportError:
        raise RuntimeError("--executor ray needs Ray: pip install 'acik[ray]'") from None
    started = False
    if not ray.is_initialized():
        src = str(Path(__file__).resolve().parents[2])
        ray.init(
            num_cpus=workers,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": src}},
        )
        started = True
    try:
        remote = ray.remote(run_task)
        ray.get([remote.remote(t, r, str(work)) for t, r in jobs])
    finally:
        if started:
            ray.shutdown()
