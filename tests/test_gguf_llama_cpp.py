"""acik's GGUF exports run in llama.cpp (through llama-cpp-python) as they run in acik: on a fixed 400-token
sequence (a chat prompt, then prose), llama.cpp's top-1 next-token predictions agree with acik's on the same file.
A LoRA adapter exported to GGUF moves llama.cpp's predictions as it moves acik's. Slow, and skipped with the
install command where llama-cpp-python is absent (it builds from source: about 6 minutes on 2 cores)."""

from __future__ import annotations

import json

import pytest
import torch

from acik.formats.gguf_writer import write_gguf
from acik.loader import load

pytestmark = pytest.mark.slow

INSTALL = ("llama-cpp-python is not installed; install it with `pip install -e '.[interop]'` (it builds llama.cpp "
           "from source, about 6 minutes on 2 cores)")
PROSE = ("The Eiffel Tower, completed in 1889 for the World's Fair, stands on the Champ de Mars in Paris. It was the "
         "tallest man-made structure in the world until the Chrysler Building was finished in New York in 1930. "
         "Gustave Eiffel's company designed and built the tower, whose wrought-iron lattice weighs about 7,300 "
         "tonnes. Critics at the time called it an eyesore, but it has become a global cultural icon of France and "
         "one of the most recognisable structures in the world. ")


def llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        pytest.skip(INSTALL)
    return llama_cpp


def sequence(tokenizer, n: int = 400) -> list[int]:
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Tell me about the Eiffel Tower."}])
    ids = tokenizer.encode(chat + PROSE * 8)
    assert len(ids) >= n
    return ids[:n]


def llama_cpp_top1(path, ids: list[int], lora: str | None = None) -> torch.Tensor:
    lib = llama_cpp()
    kwargs = {"lora_path": str(lora)} if lora else {}
    model = lib.Llama(model_path=str(path), n_ctx=len(ids) + 8, n_batch=512, logits_all=True, verbose=False,
                      n_threads=2, seed=0, **kwargs)
    try:
        model.eval(ids)
        return torch.from_numpy(model.scores[: len(ids)].copy()).argmax(-1)
    finally:
        model.close()


def acik_top1(llm, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return llm.model(torch.tensor([ids]))[0].float().argmax(-1)


@pytest.fixture(scope="module")
def smol_exports(tmp_path_factory):
    llama_cpp()
    root = tmp_path_factory.mktemp("smol-llama-cpp")
    src = load("smollm2-135m-instruct", dequantize=True, dtype="float32")
    paths = {}
    for kind in ("f16", "q8_0"):
        paths[kind] = root / f"smol-{kind}.gguf"
        write_gguf(src, paths[kind], kind)
    return dict(root=root, src=src, paths=paths, ids=sequence(src.tokenizer))


@pytest.mark.parametrize("kind,needed", [("f16", 0.98), ("q8_0", 0.93)])
def test_shipped_export_agrees_with_acik_in_llama_cpp(smol_exports, kind, needed):
    path, ids = smol_exports["paths"][kind], smol_exports["ids"]
    ours = acik_top1(load(path, dtype="float32"), ids)
    theirs = llama_cpp_top1(path, ids)
    agree = (ours == theirs).float().mean().item()
    print(f"{kind}: llama.cpp top-1 agrees with acik at {agree:.1%} of {len(ids)} positions")
    assert agree >= needed


def test_llama_cpp_tokenizes_as_acik(smol_exports):
    lib = llama_cpp()
    model = lib.Llama(model_path=str(smol_exports["paths"]["q8_0"]), vocab_only=True, verbose=False)
    tok = smol_exports["src"].tokenizer
    for text in (PROSE, "Numbers 12345 and 3.14, unicode déjà vu, 日本語", "<|im_start|>user\nHi<|im_end|>\n"):
        assert model.tokenize(text.encode(), add_bos=False, special=True) == tok.encode(text), text


def test_lora_adapter_moves_llama_cpp_as_it_moves_acik(smol_exports, tmp_path):
    """A LoRA adapter on the shipped model (random B, large enough to change predictions), exported to GGUF and
    applied by llama.cpp to the f16 base: llama.cpp's top-1 agrees with acik's adapted model, and differs from the
    base's at 5% of positions or more."""
    from acik.cli import main as cli_main
    from acik.train.lora import apply_lora, lora_layers, save_adapter

    base_path, ids = smol_exports["paths"]["f16"], smol_exports["ids"]
    base = load(base_path, dtype="float32")
    apply_lora(base.model, "all-linear", r=8, alpha=16)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in lora_layers(base.model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=gen) * 0.1)
    adapter = save_adapter(base.model, tmp_path / "adapter", base_model=str(base_path))
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base_path)
    out = tmp_path / "adapter.gguf"
    assert cli_main(["convert", str(adapter), "--to", "gguf", "--out", str(out)]) == 0

    adapted = acik_top1(load(adapter, dtype="float32"), ids)
    theirs = llama_cpp_top1(base_path, ids, lora=out)
    plain = llama_cpp_top1(base_path, ids)
    agree = (adapted == theirs).float().mean().item()
    moved = (theirs != plain).float().mean().item()
    ours_moved = (adapted != acik_top1(load(base_path, dtype="float32"), ids)).float().mean().item()
    print(f"LoRA: llama.cpp agrees with acik's adapted model at {agree:.1%}; the adapter changes {moved:.1%} of "
          f"llama.cpp's top-1 and {ours_moved:.1%} of acik's")
    assert agree >= 0.98 and moved >= 0.05


# q8_0 on the tiny random model: 0.90, not the shipped model's 0.93. Its top-2 logits are close (median gap 0.4 at
# logit std 2), and llama.cpp's q8_0 path quantizes activations to 8 bits where acik's does not, so near-ties flip:
# measured 92.5%, 92.2% and 94.5% for seeds 0, 1, 2 (the shipped model: 99.8%).
@pytest.mark.parametrize("kind,needed", [("f16", 0.98), ("q8_0", 0.90)])
def test_tiny_llama_export_agrees_with_acik_in_llama_cpp(tmp_path, kind, needed):
    """A tiny random Llama with a tokenizer `acik tokenizer` trains (pre-tokenizer `smaug-bpe`): llama.cpp tokenizes
    as acik does and predicts as acik does on the same file."""
    import transformers as tf

    from acik.tokenizer import load_tokenizer, train_bpe
    from hf_models import make_hf_model

    lib = llama_cpp()
    (tmp_path / "text.txt").write_text((PROSE + "\n") * 20 + "Numbers 12345 and 3.14, unicode déjà vu\n" * 5)
    train_bpe([tmp_path / "text.txt"], 400, tmp_path / "hf", manifest=False, show_progress=False)
    vocab = load_tokenizer(tmp_path / "hf").vocab_size
    make_hf_model(tf.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                 tie_word_embeddings=False), tmp_path / "hf")
    src = load(tmp_path / "hf", dtype="float32")
    out = tmp_path / f"tiny-{kind}.gguf"
    assert write_gguf(src, out, kind)["pre_tokenizer"] == "smaug-bpe"
    vocab_only = lib.Llama(model_path=str(out), vocab_only=True, verbose=False)
    for text in (PROSE, "Numbers 12345 and 3.14, unicode déjà vu", "<|im_start|>user\nHi<|im_end|>\n"):
        assert vocab_only.tokenize(text.encode(), add_bos=False, special=True) == src.tokenizer.encode(text), text
    ids = sequence(src.tokenizer)
    agree = (acik_top1(load(out, dtype="float32"), ids) == llama_cpp_top1(out, ids)).float().mean().item()
    print(f"tiny {kind}: llama.cpp top-1 agrees with acik at {agree:.1%} of {len(ids)} positions")
    assert agree >= needed
