"""The decode step's fast paths against plain references: masks built once per forward, attention without a
mask when every key is visible, the written-out one-query attention, the cache's scatter, RMSNorm and RoPE."""

import pytest
import torch

from acik.config import ModelConfig
from acik.engine.cache import KVCache
from acik.model.norms import RMSNorm
from acik.model.rope import apply_rope
from acik.model.transformer import Transformer

MIXED = dict(vocab_size=61, hidden_size=48, intermediate_size=64, num_hidden_layers=5, num_attention_heads=6,
             num_key_value_heads=2, sliding_window=5, block_size=4, block_stride=2,
             layer_types=["sliding_attention", "full_attention", "block_sparse_attention", "sliding_attention",
                          "full_attention"])


def model(**kw) -> Transformer:
    m = Transformer(ModelConfig(**{**MIXED, **kw}))
    m.init_weights(seed=0)
    with torch.no_grad():  # make sinks and norms matter
        for name, p in m.named_parameters():
            if name.endswith("sinks") or "norm" in name:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.5)
    return m.eval()


@pytest.mark.parametrize("sinks, whole_ring", [(False, False), (True, False), (False, True)])
def test_cached_batch_of_different_lengths_matches_each_sequence_alone(sinks, whole_ring):
    """Three sequences of different lengths decode together through the ring-buffered cache (windowed layers),
    with prefill chunks smaller than the window; every step's logits equal a cache-free forward of that
    sequence alone, whose masks come straight from positions (no memo, no cache, no explicit attention)."""
    torch.manual_seed(0)
    m = model(attention_sinks=sinks)
    lengths, new = [3, 9, 6], 6
    seqs = [torch.randint(0, 61, (n + new,)) for n in lengths]
    cache = KVCache(m.config, num_slots=3, max_seq_len=32, chunk=4, whole_ring=whole_ring)
    got = [[] for _ in seqs]
    with torch.no_grad():
        for row, (s, n) in enumerate(zip(seqs, lengths)):  # prefill each row alone, in chunks of up to 4
            for start in range(0, n, 4):
                pos = torch.arange(start, min(start + 4, n))[None]
                cache.select(row, row + 1, pos)
                m(s[pos], positions=pos, cache=cache)
        for step in range(new):  # then decode all rows together, each at its own position
            pos = torch.tensor([[n + step] for n in lengths])
            ids = torch.stack([s[p] for s, p in zip(seqs, pos)])
            cache.select(0, 3, pos)
            logits = m(ids, positions=pos, cache=cache, last_only=True)
            for row in range(3):
                got[row].append(logits[row, -1])
        for s, n, rows in zip(seqs, lengths, got):
            want = m(s[None])[0, n:n + new]
            assert torch.allclose(torch.stack(rows), want, atol=1e-5), "cached decode differs from a plain forward"


def test_masks_are_built_once_per_pattern_per_forward(monkeypatch):
    m = model()
    calls = []
    for layer in m.model.layers:
        original = layer.self_attn.mask
        monkeypatch.setattr(layer.self_attn, "mask", lambda *a, _o=original, _t=layer.self_attn.layer_type:
                            calls.append(_t) or _o(*a))
    with torch.no_grad():
        m(torch.randint(0, 61, (2, 7)), segment_ids=torch.tensor([[0, 0, 0, 1, 1, 1, 1]] * 2))
    assert sorted(calls) == ["block_sparse_attention", "full_attention", "sliding_attention"]


def test_decode_with_every_key_visible_skips_the_mask():
    m = model(layer_types=["full_attention"] * 5)
    cache = KVCache(m.config, num_slots=1, max_seq_len=16, chunk=8)
    with torch.no_grad():
        cache.select(0, 1, torch.arange(6)[None])
        m(torch.randint(0, 61, (1, 6)), positions=torch.arange(6)[None], cache=cache)
        attn = m.model.layers[0].self_attn
        pos = torch.tensor([[6]])
        cache.select(0, 1, pos)
        k, v, k_pos = cache.update(0, torch.zeros(1, 2, 1, 8), torch.zeros(1, 2, 1, 8), pos)
        assert attn.mask(pos, k_pos, None) is None  # one query, no holes: no mask
        assert attn.mask(torch.arange(7)[None], k_pos, None) is not None  # causal prefill


@pytest.mark.parametrize("sinks", [False, True])
@pytest.mark.parametrize("T", [1, 4])
def test_attention_paths_match_a_spelled_out_reference(sinks, T):
    """bf16 inputs, grouped heads, a mask with holes: every path of _attend (one-query fp32, SDPA, sinks) against
    softmax(q k^T) v written out in fp64 with repeated keys."""
    m = model(layer_types=["full_attention"] * 5, attention_sinks=sinks)
    attn = m.model.layers[0].self_attn
    g = torch.Generator().manual_seed(1)
    q = torch.randn(3, 6, T, 8, generator=g).bfloat16()
    k, v = torch.randn(3, 2, 11, 8, generator=g).bfloat16(), torch.randn(3, 2, 11, 8, generator=g).bfloat16()
    allowed = torch.rand(3, 1, T, 11, generator=g) > 0.3
    allowed[..., 0] = True
    for mask in (allowed, None):
        out = attn._attend(q, k, v, mask)
        scores = (q.double() @ k.double().repeat_interleave(3, 1).transpose(-1, -2)) * attn.scale
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        if sinks:
            sink = attn.sinks.detach().double().view(1, 6, 1, 1).expand(3, 6, T, 1)
            probs = torch.softmax(torch.cat([scores, sink], -1), -1)[..., :-1]
        else:
            probs = torch.softmax(scores, -1)
        want = probs @ v.double().repeat_interleave(3, 1)
        assert out.dtype == torch.bfloat16
        assert torch.allclose(out.double(), want, atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_cache_writes_are_exact(dtype):
    cfg = ModelConfig(**MIXED)
    cache = KVCache(cfg, num_slots=3, max_seq_len=16, chunk=4, dtype=dtype)
    pos = torch.tensor([[2, 3], [7, 8]])
    cache.select(1, 3, pos)
    k, v = torch.randn(2, 2, 2, 8).to(dtype), torch.randn(2, 2, 2, 8).to(dtype)
    ks, vs, k_pos = cache.update(1, k, v, pos)  # a full-attention layer
    assert torch.equal(ks[0, :, 2:4], k[0]) and torch.equal(vs[1, :, 7:9], v[1])
    assert k_pos[0].tolist()[:4] == [-1, -1, 2, 3]
    assert not cache.k[1][0].any()  # the unselected row is untouched


@pytest.mark.parametrize("cast", ["before", "after"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_rmsnorm_is_bit_identical_to_the_spelled_out_form(cast, dtype):
    norm = RMSNorm(96, eps=1e-5, cast=cast).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(96) * 0.5 + 1)
    x = (torch.randn(3, 5, 96) * 4).to(dtype)
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)
    want = norm.weight * h.to(dtype) if cast == "before" else (norm.weight * h).to(dtype)
    with torch.no_grad():  # inference; training on a CPU runs acik's fused kernel (tests/test_cpu_training_kernels.py)
        assert torch.equal(norm(x), want)


@pytest.mark.parametrize("rot", [16, 8])  # full and partial rotary
def test_rope_matches_rotate_half(rot):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 4, 16, generator=g)
    angle = torch.randn(2, 4, rot // 2, generator=g)
    cos, sin = torch.cat((angle.cos(), angle.cos()), -1), torch.cat((angle.sin(), angle.sin()), -1)
    xr = x[..., :rot]
    rotated = torch.cat((-xr[..., rot // 2:], xr[..., :rot // 2]), -1)
    want = torch.cat((xr * cos[:, None] + rotated * sin[:, None], x[..., rot:]), -1)
    signed = torch.cat((-angle.sin(), angle.sin()), -1)  # RotaryEmbedding's sign-folded sin
    assert torch.allclose(apply_rope(x, cos[:, None], signed[:, None]), want, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("optimize", [False, True])
def test_compiled_engine_matches_eager_without_recompiling(optimize):
    """Engine(compile=True): the same greedy tokens as eager for a batch of different lengths through sliding and
    full layers, with two graphs in all (batch 1, and any larger batch), however long the sequences grow; also on
    an optimized model, whose prepacked matmuls the compiled graph calls as an opaque operator."""
    from acik.engine import Engine, Request
    from acik.llm import LLM

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # reset() keeps them, and the other parametrization compiled too
    m = model(num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"])
    with torch.no_grad():  # larger weights, so greedy output is not one repeated token
        for p in m.parameters():
            if p.ndim == 2:
                p.mul_(8)
    llm = LLM(m, m.config)
    if optimize:
        llm.optimize()
    prompts = [torch.randint(0, 61, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in (3, 11, 6)]

    def run(engine):
        one = [ev.token_id for ev in engine.submit(Request(prompt_ids=prompts[0], max_new_tokens=12, temperature=0,
                                                           ignore_eos=True)) if ev.token_id is not None]
        handles = [engine.submit(Request(prompt_ids=p, max_new_tokens=12, temperature=0, ignore_eos=True))
                   for p in prompts]
        return [one] + [[ev.token_id for ev in h if ev.token_id is not None] for h in handles]

    with Engine(llm, max_batch_size=3, max_seq_len=32, prefill_chunk=4) as eager:
        want = run(eager)
    with Engine(llm, max_batch_size=3, max_seq_len=32, prefill_chunk=4, compile=True) as compiled:
        got = run(compiled)
    assert got == want
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kw", [{}, dict(q_bias=True, k_bias=True, v_bias=True, mlp_bias=True),
                                dict(qk_norm="full", rmsnorm_cast="after"), dict(qk_norm="head")])
def test_optimized_model_matches_the_plain_one(dtype, kw):
    """acik.model.inference.optimize (fused q/k/v and gate/up, prepacked CPU weights) changes nothing but
    rounding: a prefill and cached decode steps give the plain model's logits."""
    from acik.model.inference import PackedLinear, optimize

    plain = model(**kw).to(dtype)
    fast = model(**kw).to(dtype)
    done = optimize(fast)
    assert done["fused"] == 2 * MIXED["num_hidden_layers"]
    packed = sum(isinstance(m, PackedLinear) for m in fast.modules())
    assert packed == done["packed"] and (packed == 0 or packed == 4 * MIXED["num_hidden_layers"] + 1)
    ids = torch.randint(0, 61, (2, 9), generator=torch.Generator().manual_seed(1))
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    caches = [KVCache(m.config, num_slots=2, max_seq_len=16, chunk=9, dtype=dtype) for m in (plain, fast)]
    with torch.no_grad():
        for t in range(6):
            step = ids if t == 0 else (ids[:, :1] + t) % 61
            pos = torch.arange(9).expand(2, 9) if t == 0 else torch.full((2, 1), 8 + t)
            for c in caches:
                c.select(0, 2, pos)
            ref, got = (m(step, positions=pos, cache=c).float() for m, c in zip((plain, fast), caches))
            torch.testing.assert_close(got, ref, atol=tol * ref.abs().max().item(), rtol=0)


def test_optimized_model_refuses_training_uses(tmp_path):
    from acik.llm import LLM
    from acik.train.lora import apply_lora

    m = model()
    llm = LLM(m, m.config)
    llm.optimize()
    assert all(not p.requires_grad for p in m.parameters())
    with pytest.raises(ValueError, match="optimized for inference"):
        llm.save(tmp_path / "out")
    with pytest.raises(ValueError, match="optimized for inference"):
        apply_lora(m, "all-linear")


def test_optimized_model_with_lora_adapters_matches():
    """A LoRA-wrapped model (served with an adapter) optimizes too: its base layers are packed, its adapters are left
    as they are, and the logits do not change."""
    import copy

    from acik.model.inference import PackedLinear, optimize
    from acik.train.lora import apply_lora

    plain = model()
    apply_lora(plain, "all-linear", r=4)
    with torch.no_grad():
        for name, p in plain.named_parameters():
            if "lora_B" in name:
                p.normal_(generator=torch.Generator().manual_seed(len(name)))
    fast = copy.deepcopy(plain)
    optimize(fast)
    wrapped = [m for m in fast.modules() if hasattr(m, "lora_A")]
    assert wrapped and all(type(m.lora_A) is torch.nn.Linear for m in wrapped)
    assert any(isinstance(m.base_layer, PackedLinear) for m in wrapped) == can_pack_here()
    ids = torch.randint(0, 61, (2, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(fast(ids), plain(ids), atol=1e-4, rtol=0)


def can_pack_here() -> bool:
    from acik.model.inference import can_pack

    return can_pack(torch.nn.Linear(4, 4))
