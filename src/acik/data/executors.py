"""Where the data stage's tasks run: in this process, a local process pool, or on Ray. Each task is
independent (`runner.run_task`): it reads its files and writes its results under the work directory."""

from __future__ import annotations

from pathlib import Path


def execute(pending: list[dict], recipe_dicts: dict[str, dict], work: Path, executor: str, workers: int) -> None:
    """Run each pending task with the recipe it names (`task["recipe"]`, a key of `recipe_dicts`)."""
    if not pending:
        return
    from acik.data.runner import run_task

    jobs = [(t, recipe_dicts[t["recipe"]]) for t in pending]
    if executor == "ray":
        _execute_ray(jobs, work, workers)
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


def _execute_ray(jobs: list[tuple[dict, dict]], work: Path, workers: int) -> None:
    from acik.data.runner import run_task

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
