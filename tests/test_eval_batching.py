"""`acik eval`'s batched scoring (shared contexts, the head on scored rows only) gives the scores of one
sequence at a time, runs each shared context once, and shows a progress bar per task."""

import json
import random

import pytest
import torch

from acik.cli import main
from acik.config import preset
from acik.eval.scoring import loglikelihoods, perplexity
from acik.llm import LLM
from acik.model.inference import optimize
from acik.model.transformer import Transformer
from acik.tokenizer import save_byte_tokenizer


@pytest.fixture(scope="module")
def model():
    m = Transformer(preset("tiny", max_position_embeddings=64))
    m.init_weights(0)
    return m.eval()


def _pairs(seed: int = 0) -> list[tuple[list[int], list[int]]]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(12):  # questions with 1, 2 or 4 choices after one context; some one-token choices
        ctx = [rng.randrange(260) for _ in range(rng.randint(1, 40))]
        for _ in range(rng.choice([1, 2, 4])):
            pairs.append((ctx, [rng.randrange(260) for _ in range(rng.choice([1, 3, 6]))]))
    pairs.append(([rng.randrange(260) for _ in range(90)], [1, 2, 3]))  # longer than the context: cut
    pairs.append(([rng.randrange(260) for _ in range(90)], [4, 5]))
    return pairs


@torch.no_grad()
def _reference(m, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """One pair, one plain forward pass, the whole vocabulary's log-softmax at every position."""
    full = (context + continuation)[-(m.config.max_position_embeddings + 1):]
    n = min(len(continuation), len(full) - 1)
    lp = torch.log_softmax(m(torch.tensor([full[:-1]])).float()[0], -1)[len(full) - 1 - n:]
    target = torch.tensor(full[len(full) - n:])
    return lp.gather(-1, target[:, None]).sum().item(), bool((lp.argmax(-1) == target).all())


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_batched_scores_equal_one_pair_at_a_time(model, batch_size):
    pairs = _pairs()
    ref = [_reference(model, c, x) for c, x in pairs]
    got = loglikelihoods(model, pairs, batch_size=batch_size)
    assert max(abs(a[0] - b[0]) for a, b in zip(ref, got)) < 1e-5
    assert [a[1] for a in ref] == [b[1] for b in got]


def test_optimized_model_scores_the_same(model):
    fast = Transformer(model.config)
    fast.load_state_dict(model.state_dict())
    optimize(fast.eval())
    pairs = _pairs(1)
    ref = loglikelihoods(model, pairs, batch_size=8, share_contexts=False)
    got = loglikelihoods(fast, pairs, batch_size=8)
    assert max(abs(a[0] - b[0]) for a, b in zip(ref, got)) < 1e-5


def test_a_shared_context_runs_once(model):
    seen = []
    hook = model.model.embed_tokens.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape))
    try:
        ctx = list(range(1, 41))
        pairs = [(ctx, [50 + i, 60 + i]) for i in range(4)]
        loglikelihoods(model, pairs, batch_size=8)
        shared = sum(b * t for b, t in seen)
        seen.clear()
        loglikelihoods(model, pairs, batch_size=8, share_contexts=False)
        unshared = sum(b * t for b, t in seen)
    finally:
        hook.remove()
    assert shared == 40 + 4 * 1 and unshared == 4 * 41  # token positions through the model


def test_perplexity_equals_the_plain_cross_entropy(model):
    ids = [random.Random(2).randrange(260) for _ in range(150)]
    nll, _, count = perplexity(model, ids, window=64)
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(ids) - 1, 64):
            chunk = torch.tensor([ids[i:i + 65]])
            logits = model(chunk[:, :-1]).float()
            total += torch.nn.functional.cross_entropy(logits[0], chunk[0, 1:], reduction="sum").item()
    assert count == 149 and abs(nll - total / count) < 1e-5


def test_eval_shows_a_progress_bar_per_task(model, tmp_path, capsys):
    d = tmp_path / "model"
    save_byte_tokenizer(d)
    LLM(model, model.config, tokenizer_dir=d).save(d, command="test")
    data = tmp_path / "eval"
    data.mkdir()
    rows = [{"query": f"Question {i}: which?", "choices": ["alpha", "beta", "gamma"], "gold": i % 3} for i in range(6)]
    (data / "mytask.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["eval", str(d), "--tasks", "mytask", "--data-dir", str(data)]) == 0
    captured = capsys.readouterr()
    assert "mytask" in captured.err and "tok/s" in captured.err and "100%" in captured.err
    assert "| mytask | acc |" in captured.out
    assert main(["eval", str(d), "--tasks", "mytask", "--data-dir", str(data), "--quiet"]) == 0
    assert "tok/s" not in capsys.readouterr().err


def test_a_model_with_an_8bit_embedding_scores_shared_contexts(model):
    """A GGUF model's Q8_0 embedding is an int8 table: the shared contexts' cache takes the model's compute dtype
    (it took the table's and failed)."""
    from acik.quant.embedding import QuantEmbedding

    q = Transformer(model.config)
    q.load_state_dict(model.state_dict())
    q.model.embed_tokens = QuantEmbedding.from_embedding(q.model.embed_tokens, 32)
    q.eval()
    pairs = _pairs(2)
    ref = loglikelihoods(q, pairs, batch_size=8, share_contexts=False)
    got = loglikelihoods(q, pairs, batch_size=8, share_contexts=True)
    assert max(abs(a[0] - b[0]) for a, b in zip(ref, got)) < 1e-5
