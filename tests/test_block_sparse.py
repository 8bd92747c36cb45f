"""Block-sparse ("Sparse Transformer") attention against a dense reference with the same mask."""

import math

import torch

import acik
from acik.config import ModelConfig
from acik.llm import LLM
from acik.model import Transformer
from acik.model.attention import Attention


def allowed(i: int, j: int, block: int, stride: int) -> bool:
    """The pattern, spelled out: causal; own or previous block (local); or a stride-th "summary" block."""
    return j <= i and (i // block - j // block <= 1 or (j // block) % stride == stride - 1)


def config(**kw) -> ModelConfig:
    return ModelConfig(**{**dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                 num_attention_heads=4, num_key_value_heads=2, block_size=4, block_stride=3,
                                 layer_types=["block_sparse_attention", "full_attention", "block_sparse_attention"]),
                          **kw})


def test_block_sparse_matches_dense_reference():
    torch.manual_seed(0)
    cfg = config()
    attn = Attention(cfg, 0)
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.3)
    B, T = 2, 29
    x = torch.randn(B, T, cfg.hidden_size)
    pos = torch.arange(T).expand(B, T)
    cos = torch.ones(B, 1, T, cfg.head_dim)  # RotaryEmbedding's layout: [B, 1 (heads), T, rot_dim]
    sin = torch.zeros(B, 1, T, cfg.head_dim)  # no rotation: the reference need not re-implement RoPE
    out = attn(x, cos, sin, pos)

    mask = torch.tensor([[allowed(i, j, 4, 3) for j in range(T)] for i in range(T)])
    assert not mask.all() and mask.diagonal().all()
    q = attn.q_proj(x).view(B, T, 4, 8).transpose(1, 2)
    k = attn.k_proj(x).view(B, T, 2, 8).transpose(1, 2).repeat_interleave(2, dim=1)
    v = attn.v_proj(x).view(B, T, 2, 8).transpose(1, 2).repeat_interleave(2, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(8)
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    expected = attn.o_proj((probs @ v).transpose(1, 2).reshape(B, T, 32))
    assert torch.allclose(out, expected, atol=1e-5)
    dense = Attention(config(layer_types=["full_attention"] * 3), 0)
    dense.load_state_dict(attn.state_dict())
    assert not torch.allclose(dense(x, cos, sin, pos), out, atol=1e-3)  # the sparsity is real


def test_block_sparse_layers_survive_save_and_load(tmp_path):
    cfg = config()
    model = Transformer(cfg)
    model.init_weights(seed=0)
    LLM(model, cfg).save(tmp_path / "m")
    back = acik.load(tmp_path / "m", dtype="float32")
    assert back.config.layer_types == cfg.layer_types
    assert (back.config.block_size, back.config.block_stride) == (4, 3)
    x = torch.randint(0, 64, (1, 30))
    with torch.no_grad():
        assert torch.equal(back.model(x), model(x))
