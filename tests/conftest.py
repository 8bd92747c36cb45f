import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))

SHARED_DATA = Path(os.environ.get("ACIK_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared test data not found at {SHARED_DATA} (set ACIK_SHARED_DATA to its location)")
    return SHARED_DATA


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and on a shared machine two threads wait on each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
