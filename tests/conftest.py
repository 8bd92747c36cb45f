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


@pytest.fixture(scope="module")
def tiny_chat_model_dir(tmp_path_factory) -> Path:
    """A tiny random model with acik's byte tokenizer (eos = <|endoftext|>), saved as a model directory."""
    from acik.config import preset
    from acik.llm import LLM
    from acik.model import Transformer
    from acik.tokenizer import save_byte_tokenizer

    d = tmp_path_factory.mktemp("model")
    save_byte_tokenizer(d)
    cfg = preset("tiny", max_position_embeddings=256, eos_token_id=256)
    model = Transformer(cfg)
    model.init_weights(0)
    LLM(model, cfg, tokenizer_dir=d).save(d, command="test")
    return d
