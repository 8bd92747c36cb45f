"""The same task function on Ray (a one-CPU local cluster) gives the same bytes as the process pool."""

from __future__ import annotations

import pytest

from acik.data import runner
from acik.manifest import read_manifest

pytest.importorskip("ray")


@pytest.mark.slow
def test_ray_executor_matches_local(tmp_path):
    from test_data_run import _all_bytes, write_corpus

    inputs = []
    for i in range(3):
        path = tmp_path / "in" / f"part{i}.jsonl"
        path.parent.mkdir(exist_ok=True)
        write_corpus(path, 20, seed=i, corrupt_every=10)
        inputs.append(str(path))
    ray_out = tmp_path / "ray" / "data"
    local_out = tmp_path / "local" / "data"
    summary = runner.run(inputs, ray_out, executor="ray", workers=1)
    assert summary["tasks_run"] == 3 and summary["documents_quarantined"] == 6
    runner.run(inputs, local_out, executor="local", workers=1)
    a, b = _all_bytes(ray_out), _all_bytes(local_out)
    assert a == b
    assert read_manifest(ray_out)["directory_hash"] == read_manifest(local_out)["directory_hash"]
