from pathlib import Path

import pytest
import torch

import real_inputs

torch.set_num_threads(min(2, torch.get_num_threads()))



@pytest.fixture
def shared_data() -> Path:
    return real_inputs.shared_data()


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


@pytest.fixture(scope="module")
def quant_base_dir(tmp_path_factory) -> Path:
    """A small random float32 model directory (hidden 128, 2 layers) to quantize."""
    from acik.config import ModelConfig
    from acik.llm import LLM
    from acik.model import Transformer

    cfg = ModelConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, torch_dtype="float32")
    torch.manual_seed(0)
    model = Transformer(cfg)
    model.init_weights(0)
    path = tmp_path_factory.mktemp("quant") / "base"
    LLM(model, cfg).save(path)
    return path
