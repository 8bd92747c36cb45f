"""The inference engine against transformers' `generate`, and its batching, sampling and errors."""

import os
import time

import pytest
import torch

import acik
from acik.config import preset
from acik.engine import Engine, Request
from acik.llm import LLM
from acik.model.transformer import Transformer
from acik.tokenizer import save_byte_tokenizer
from hf_models import make_hf_model
from test_moe_parity import CASES as MOE_CASES
from test_parity import CASES

# Every family acik loads: the parity cases of test_parity and test_moe_parity (a new family added there is
# tested here too), with a prompt longer than the sliding windows (5 to 8) and a prefill chunk smaller than it.
CASES = {**CASES, **MOE_CASES}
FAMILIES = list(CASES)
PROMPT_LEN, NEW = 20, 32


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def prompt(n: int = PROMPT_LEN, seed: int = 3, vocab: int = 97) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def greedy(engine: Engine, ids: list[int], n: int = NEW, **kw) -> list[int]:
    h = engine.submit(Request(prompt_ids=ids, max_new_tokens=n, temperature=0, ignore_eos=True, **kw))
    return [ev.token_id for ev in h if ev.token_id is not None]


@pytest.mark.parametrize("name", FAMILIES)
def test_greedy_matches_transformers_generate(name, tmp_path):
    ref = make_hf_model(CASES[name](), tmp_path / "hf")
    ids = prompt()
    ref.generation_config.eos_token_id = None
    ref.generation_config.pad_token_id = 0
    with torch.no_grad():
        out = ref.generate(torch.tensor([ids]), max_new_tokens=NEW, do_sample=False, output_logits=True,
                           return_dict_in_generate=True)
    expected = out.sequences[0, len(ids):].tolist()
    # Compare up to the first near-tie of the reference (a 1e-6 difference may flip it).
    top2 = torch.stack(out.logits)[:, 0].float().topk(2).values
    margins = (top2[:, 0] - top2[:, 1]).tolist()
    n = next((i for i, m in enumerate(margins) if m < 1e-4), NEW) + 1
    for optimize in (False, True):  # as loaded, and with fused projections and prepacked weights
        llm = acik.load(tmp_path / "hf", dtype="float32", optimize=optimize)
        with Engine(llm, max_batch_size=2, prefill_chunk=8) as engine:
            ours = greedy(engine, ids)
        assert ours[:n] == expected[:n], f"{name} (optimize={optimize}): first {n} tokens differ"
    assert n >= 8, f"{name}: the reference has a near-tie after {n} tokens; pick another prompt"


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    """A random 4-layer model with acik's byte tokenizer (vocab 260), sliding window 16 on half the layers."""
    d = tmp_path_factory.mktemp("tok")
    save_byte_tokenizer(d)
    cfg = preset("tiny", max_position_embeddings=128, sliding_window=16,
                 layer_types=["sliding_attention", "full_attention"] * 2, eos_token_id=256)
    model = Transformer(cfg)
    model.init_weights(0)
    with torch.no_grad():  # larger weights than init's, so greedy output is not one repeated token
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(8)
    return LLM(model.eval(), cfg, tokenizer_dir=d)


def test_batch_equals_each_alone(tiny_llm):
    prompts = [prompt(n, seed=n, vocab=256) for n in (3, 40, 9, 21)]
    with Engine(tiny_llm, max_batch_size=4, prefill_chunk=16) as engine:
        handles = [engine.submit(Request(prompt_ids=p, max_new_tokens=24, temperature=0, ignore_eos=True))
                   for p in prompts]
        together = [[ev.token_id for ev in h if ev.token_id is not None] for h in handles]
        alone = [greedy(engine, p, 24) for p in prompts]
        assert engine.stats()["steps"] > 0
    assert together == alone
    assert len({tuple(t) for t in together}) == 4


def test_more_requests_than_slots_and_cancel_frees_slot(tiny_llm):
    with Engine(tiny_llm, max_batch_size=2, prefill_chunk=16) as engine:
        a = engine.submit(Request(prompt_ids=prompt(5, vocab=256), max_new_tokens=None, ignore_eos=True))
        b = engine.submit(Request(prompt_ids=prompt(6, vocab=256), max_new_tokens=None, ignore_eos=True))
        c = engine.submit(Request(prompt_ids=prompt(7, vocab=256), max_new_tokens=5, temperature=0))
        it_a = iter(a)
        next(it_a)
        next(iter(b))
        assert engine.stats()["free_slots"] == 0 and engine.stats()["queued"] == 1
        a.cancel()
        events = list(it_a)
        assert events[-1].finish_reason == "cancelled"
        assert c.text() is not None and c.finish_reason in ("length", "stop")  # got a's slot
        b.cancel()
        list(b)
        for _ in range(200):  # the engine thread retires b at its next step
            if engine.stats()["free_slots"] == 2:
                break
            time.sleep(0.01)
        stats = engine.stats()
        assert (stats["active"], stats["free_slots"], stats["queued"]) == (0, 2, 0)


def test_seed_reproduces_sampling(tiny_llm):
    with Engine(tiny_llm, max_batch_size=2) as engine:
        def run(seed):
            return engine.submit(Request(prompt_ids=prompt(8, vocab=256), max_new_tokens=24, temperature=1.0,
                                         top_p=0.9, top_k=50, seed=seed, ignore_eos=True)).text()
        first = run(1)
        assert run(1) == first
        assert run(2) != first


def test_stop_strings_do_not_leak(tiny_llm):
    with Engine(tiny_llm, max_batch_size=2) as engine:
        ids = prompt(8, vocab=256)
        full = engine.submit(Request(prompt_ids=ids, max_new_tokens=40, temperature=0, ignore_eos=True))
        events = list(full)
        text = "".join(ev.text for ev in events)
        assert text == tiny_llm.tokenizer.decode(full.token_ids, skip_special_tokens=True)
        stop = text[10:13]
        h = engine.submit(Request(prompt_ids=ids, max_new_tokens=40, temperature=0, ignore_eos=True, stop=[stop]))
        pieces = [ev.text for ev in h]
        assert "".join(pieces) == text[:text.index(stop)]
        assert h.finish_reason == "stop"
        h = engine.submit(Request(prompt_ids=ids, max_new_tokens=40, temperature=0, ignore_eos=True, stop=stop))
        assert h.text() == text[:text.index(stop)]  # one string is a list of one
        # A stop token id ends it too, without its text.
        tok = full.token_ids[5]
        h = engine.submit(Request(prompt_ids=ids, max_new_tokens=40, temperature=0, stop_token_ids=[tok]))
        before = full.token_ids[:full.token_ids.index(tok)]
        assert h.text() == tiny_llm.tokenizer.decode(before, skip_special_tokens=True)
        assert h.finish_reason == "stop"


def test_logprobs_and_scoring_match_the_model(tiny_llm):
    ids = prompt(30, vocab=256)
    with torch.no_grad():
        ref = torch.log_softmax(tiny_llm.model(torch.tensor([ids])).float()[0], -1)
    with Engine(tiny_llm, max_batch_size=2, prefill_chunk=8) as engine:
        h = engine.submit(Request(prompt_ids=ids, max_new_tokens=0, prompt_logprobs=True))
        events = list(h)
        assert [ev.token_id for ev in events] == [None] and events[-1].finish_reason == "length"
        expected = [None] + ref[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].tolist()
        assert h.prompt_logprobs[0] is None
        assert torch.allclose(torch.tensor(h.prompt_logprobs[1:]), torch.tensor(expected[1:]), atol=1e-4)
        assert h.prompt_top_logprobs is None  # only asked for with top_logprobs
        h = engine.submit(Request(prompt_ids=ids, max_new_tokens=0, prompt_logprobs=True, top_logprobs=2))
        list(h)
        assert h.prompt_top_logprobs[0] is None and len(h.prompt_top_logprobs) == len(ids)
        got = torch.tensor([[lp for _, lp in top] for top in h.prompt_top_logprobs[1:]])
        assert torch.allclose(got, ref[:-1].topk(2).values, atol=1e-4)
        h = engine.submit(Request(prompt_ids=ids, max_new_tokens=1, temperature=0, logprobs=True, top_logprobs=3))
        ev = next(iter(h))
        top = ref[-1].topk(3)
        assert ev.token_id == int(top.indices[0])
        assert abs(ev.logprob - float(top.values[0])) < 1e-4
        assert [t for t, _ in ev.top_logprobs] == top.indices.tolist()


@pytest.mark.parametrize("bad,message", [
    (dict(prompt_ids=list(range(200))), "context"),
    (dict(prompt_ids=[]), "empty"),
    (dict(prompt_ids=[1, 999]), "token ids"),
    (dict(prompt_ids=[1], max_new_tokens=-1), "max_new_tokens"),
    (dict(prompt_ids=[1], temperature=-0.5), "temperature"),
    (dict(prompt_ids=[1], top_p=0.0), "top_p"),
    (dict(prompt_ids=[1], top_p=1.5), "top_p"),
    (dict(prompt_ids=[1], top_k=-1), "top_k"),
    (dict(prompt_ids=[1], min_p=2.0), "min_p"),
    (dict(prompt_ids=[1], repetition_penalty=0.0), "repetition_penalty"),
    (dict(prompt_ids=[1], max_new_tokens=0), "prompt_logprobs"),
])
def test_bad_requests_are_clear_errors(tiny_llm, bad, message):
    engine = Engine(tiny_llm, max_batch_size=1)
    with pytest.raises(ValueError, match=message):
        engine.submit(Request(**bad))


def test_truncate_keeps_the_end(tiny_llm):
    with Engine(tiny_llm, max_batch_size=1) as engine:
        ids = prompt(300, vocab=256)
        h = engine.submit(Request(prompt_ids=ids, max_new_tokens=4, temperature=0, truncate=True))
        list(h)
        assert h.prompt_tokens == len(h.request.prompt_ids) < 128 and len(ids) == 300
        assert h.request.prompt_ids == ids[-len(h.request.prompt_ids):]


def test_context_full_finishes_with_length(tiny_llm):
    with Engine(tiny_llm, max_batch_size=1, max_seq_len=32) as engine:
        h = engine.submit(Request(prompt_ids=prompt(20, vocab=256), max_new_tokens=None, ignore_eos=True))
        list(h)
        assert h.finish_reason == "length" and h.completion_tokens == 12


def test_penalties_change_sampling(tiny_llm):
    ids = prompt(8, vocab=256)
    with Engine(tiny_llm, max_batch_size=1) as engine:
        plain = greedy(engine, ids, 40)
        rep = greedy(engine, ids, 40, repetition_penalty=5.0)
        freq = greedy(engine, ids, 40, frequency_penalty=2.0, presence_penalty=2.0)
    assert len(set(rep)) >= len(set(plain)) and rep != plain
    assert len(set(freq)) >= len(set(plain)) and freq != plain


def test_llm_generate_api(tiny_llm):
    text = tiny_llm.generate("Once upon a time", max_new_tokens=12, temperature=0, ignore_eos=True)
    assert isinstance(text, str) and text
    ids = tiny_llm.tokenizer.encode("Once upon a time")
    new = tiny_llm.generate(ids, max_new_tokens=12, temperature=0, ignore_eos=True)
    assert len(new) == 12 and tiny_llm.tokenizer.decode(new) == text
    batch = tiny_llm.generate(["Once upon a time", "Hello"], max_new_tokens=12, temperature=0, ignore_eos=True)
    assert batch[0] == text and isinstance(batch[1], str)
    assert "".join(tiny_llm.generate("Once upon a time", max_new_tokens=12, temperature=0, ignore_eos=True,
                                     stream=True)) == text
    reply = tiny_llm.chat([{"role": "user", "content": "Hi"}], max_new_tokens=8, temperature=0)
    assert isinstance(reply, str)
    with pytest.raises(TypeError, match="unknown generation option"):
        tiny_llm.generate("x", max_tokens=3)


def test_ring_buffer_is_bounded():
    cfg = preset("tiny", sliding_window=7, layer_types=["sliding_attention", "full_attention"] * 2)
    engine = Engine(LLM(Transformer(cfg), cfg), max_batch_size=3, max_seq_len=256, prefill_chunk=8)
    assert engine.cache.caps == [7 - 1 + 8, 256] * 2
    assert engine.cache.k[0].shape == (3, 2, 14 + 1, 32)  # + 1: see KVCache.__init__


def test_extreme_sampling_settings_never_kill_the_engine():
    """A tiny temperature or a huge penalty once produced NaN probabilities; now it degrades to greedy."""
    from acik.engine.sampling import apply_penalties, sample

    logits = torch.tensor([1.0, 3.0, 2.0, -1.0])
    assert sample(logits.clone(), 1e-45, 0, 1.0, 0.0, torch.Generator().manual_seed(0)) == 1
    penalised = apply_penalties(logits.clone(), None, torch.tensor([0, 2]), 1e-30, 0.0, 0.0)
    assert sample(penalised, 0.7, 0, 0.9, 0.0, torch.Generator().manual_seed(0)) in range(4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_sampling_and_penalties_run_on_a_gpu_model(tiny_llm):
    """Each request's generator and penalty counts are CPU tensors, so a GPU model's logits come to the
    host before sampling (a CUDA tensor with a CPU generator or CPU counts raised in the engine thread)."""
    import copy

    llm = LLM(copy.deepcopy(tiny_llm.model).cuda(), tiny_llm.config, tokenizer_dir=tiny_llm.tokenizer_dir)
    ids = prompt(8, vocab=256)
    with Engine(llm, max_batch_size=2) as engine:
        def run(seed):
            h = engine.submit(Request(prompt_ids=ids, max_new_tokens=16, temperature=0.8, top_p=0.9, top_k=50,
                                      seed=seed, repetition_penalty=1.2, frequency_penalty=0.5,
                                      presence_penalty=0.5, ignore_eos=True))
            list(h)
            return h.token_ids
        first = run(1)
        assert run(1) == first and len(first) == 16


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through Linux's /proc")
def test_release_openmp_threads_frees_this_threads_workers():
    """The engine's fix for slow decode when another thread keeps an OpenMP pool (acik.engine.openmp): after a
    parallel region the calling thread owns worker threads; released, they are gone."""
    from acik.engine.openmp import _pause, release_openmp_threads

    if _pause() is None:
        pytest.skip("this PyTorch build's OpenMP runtime has no omp_pause_resource_all")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        release_openmp_threads()  # start from no pool, whatever earlier tests left
        torch.ones(1 << 22).sum()  # large enough to run as a parallel region on 2 threads: one worker
        before = len(os.listdir("/proc/self/task"))
        release_openmp_threads()
        assert len(os.listdir("/proc/self/task")) == before - 1
    finally:
        torch.set_num_threads(threads)
