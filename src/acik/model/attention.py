"""Attention: projections, QK-norm, RoPE, and one mask function per attention pattern.

A mask function takes query positions [B, T] and key positions [B, S] and returns a boolean
[B, T, S] (True: may attend). Negative key positions mark empty cache slots. Adding a pattern is
one function here plus its name in `MASKS`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from acik.kernels import cpu_training
from acik.model.norms import make_norm
from acik.model.rope import apply_rope


def causal_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, config) -> torch.Tensor:
    q, k = q_pos[:, :, None], k_pos[:, None, :]
    return (k <= q) & (k >= 0)


def sliding_window_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, config) -> torch.Tensor:
    # A query sees itself and the sliding_window - 1 keys before it.
    return causal_mask(q_pos, k_pos, config) & (k_pos[:, None, :] > q_pos[:, :, None] - config.sliding_window)


def block_sparse_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, config) -> torch.Tensor:
    # "Sparse Transformer" strided pattern over blocks: each query block sees its own and the
    # previous block (local), plus every block_stride-th block before it (strided summary blocks).
    qb, kb = q_pos[:, :, None] // config.block_size, k_pos[:, None, :] // config.block_size
    local = qb - kb <= 1
    strided = (kb % config.block_stride) == config.block_stride - 1
    return causal_mask(q_pos, k_pos, config) & (local | strided)


MASKS = {
    "full_attention": causal_mask,
    "sliding_attention": sliding_window_mask,
    "block_sparse_attention": block_sparse_mask,
}


def first_keys(positions: torch.Tensor, segment_ids: torch.Tensor | None, config,
               layer_type: str) -> torch.Tensor | None | bool:
    """The same mask as index ranges, for acik's CPU attention kernel: the first key (row index) each query sees,
    the last being itself. None for plain causal attention; False where the mask is not such a range (then the
    layer builds the mask). Ranges hold where each packed example is one contiguous run of its segment id, as
    acik.train.sft packs them, and positions step by one inside a run (segment 0, packing's padding, is exempt:
    it carries no loss and no other token attends to it)."""
    if layer_type not in ("full_attention", "sliding_attention"):
        return False
    window = config.sliding_window if layer_type == "sliding_attention" else None
    if segment_ids is None and window is None:
        return None
    B, T = positions.shape
    new_run = torch.zeros(B, T, dtype=torch.bool, device=positions.device)
    new_run[:, 0] = True
    steps = positions.diff(dim=1) == 1
    if segment_ids is not None:
        new_run[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
        distinct = 1 + (segment_ids.sort(dim=1).values.diff(dim=1) != 0).sum(1)
        if not torch.equal(distinct, new_run.sum(1)):  # an id in two runs
            return False
        steps |= new_run[:, 1:] | (segment_ids[:, 1:] == 0)
    if not bool(steps.all()):
        return False
    index = torch.arange(T, device=positions.device)
    first = torch.where(new_run, index, 0).cummax(dim=1).values
    return first if window is None else torch.maximum(first, index - window + 1)


class Attention(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.config = config
        self.n_heads, self.n_kv, self.head_dim = config.num_attention_heads, config.num_key_value_heads, \
            config.head_dim
        self.layer_type = config.layer_types[layer_idx]
        self.mask_fn = MASKS[self.layer_type]
        self.is_causal_only = self.layer_type == "full_attention"
        self.scale = config.attention_scale or 1.0 / math.sqrt(self.head_dim)
        hidden, q_dim, kv_dim = config.hidden_size, self.n_heads * self.head_dim, self.n_kv * self.head_dim
        self.q_proj = nn.Linear(hidden, q_dim, bias=config.q_bias)
        self.k_proj = nn.Linear(hidden, kv_dim, bias=config.k_bias)
        self.v_proj = nn.Linear(hidden, kv_dim, bias=config.v_bias)
        self.o_proj = nn.Linear(q_dim, hidden, bias=config.o_bias)
        self.qkv_sizes = (q_dim, kv_dim, kv_dim)
        self.qkv_proj: nn.Module | None = None  # q, k and v in one matmul, set by acik.model.inference.optimize
        if config.qk_norm == "head":
            self.q_norm, self.k_norm = make_norm(config, self.head_dim), make_norm(config, self.head_dim)
        elif config.qk_norm == "full":
            self.q_norm, self.k_norm = make_norm(config, q_dim), make_norm(config, kv_dim)
        if config.attention_sinks:
            self.sinks = nn.Parameter(torch.zeros(self.n_heads))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                cache=None, segment_ids: torch.Tensor | None = None, masks: dict | None = None) -> torch.Tensor:
        """`masks`: shared by the layers of one forward pass; the first layer of each attention pattern
        stores its mask (and its `first_keys`) there and the others reuse it (every layer of a pattern sees the
        same keys)."""
        B, T, _ = x.shape
        if self.qkv_proj is not None:
            q, k, v = self.qkv_proj(x).split(self.qkv_sizes, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.config.qk_norm == "full":  # OLMo-2: normalise the whole projection
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, T, self.n_heads, self.head_dim)
        k = k.view(B, T, self.n_kv, self.head_dim)
        v = v.view(B, T, self.n_kv, self.head_dim)
        if self.config.qk_norm == "head":  # Qwen3: per head, before RoPE
            q, k = self.q_norm(q), self.k_norm(k)
        masks = {} if masks is None else masks
        if (cache is None and not self.config.attention_sinks and torch.is_grad_enabled()
                and cpu_training.supports(q, self.head_dim)):
            # Training on a CPU: acik's kernel, on the [B, T, heads, D] layout the projections produce, with
            # RoPE applied inside it when it rotates whole heads.
            key = ("first_keys", self.layer_type)
            if key not in masks:
                masks[key] = first_keys(positions, segment_ids, self.config, self.layer_type)
            if masks[key] is not False:
                if cos.shape[-1] == self.head_dim:
                    out = cpu_training.causal_attention(q, k, v, self.scale, cos[:, 0], sin[:, 0], masks[key])
                else:
                    q, k = apply_rope(q.transpose(1, 2), cos, sin), apply_rope(k.transpose(1, 2), cos, sin)
                    out = cpu_training.causal_attention(q.transpose(1, 2), k.transpose(1, 2), v, self.scale,
                                                        first_key=masks[key])
                return self.o_proj(out.reshape(B, T, self.n_heads * self.head_dim))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        k_pos = positions
        if cache is not None:
            k, v, k_pos = cache.update(self.layer_idx, k, v, positions)
        if cache is None and segment_ids is None and self.is_causal_only and not self.config.attention_sinks:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale,
                                                 enable_gqa=self.n_kv != self.n_heads)
        else:
            if self.layer_type not in masks:
                masks[self.layer_type] = self.mask(positions, k_pos, segment_ids)
            out = self._attend(q, k, v, masks[self.layer_type])
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))

    def mask(self, q_pos: torch.Tensor, k_pos: torch.Tensor, segment_ids: torch.Tensor | None) -> torch.Tensor | None:
        """[B, 1, T, S] boolean (True: may attend), or None when every query may see every key."""
        mask = self.mask_fn(q_pos, k_pos, self.config)
        if segment_ids is not None:  # packed sequences: attend only within the same example
            mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
        # The usual batch-1 decode step (one query, a cache with no holes or window edge) needs no mask, and
        # attention without one is cheaper. Compiled code keeps the mask: a data-dependent branch would split
        # its graph.
        if not torch.compiler.is_compiling() and bool(mask.all()):
            return None
        return mask[:, None]

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.config.attention_sinks:
            return self._attend_with_sinks(q, k, v, mask)
        gqa = self.n_kv != self.n_heads
        if q.shape[2] == 1 and q.device.type == "cpu":
            # One query (a decode step): PyTorch's CPU flash kernel handles a single query row slowly in bf16
            # (on this project's CPU, 4-10x slower than in fp32 from 128 keys on), so attend in fp32.
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, scale=self.scale,
                                                 enable_gqa=gqa)
            return out.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=gqa)

    def _attend_with_sinks(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           mask: torch.Tensor | None) -> torch.Tensor:
        """One learned logit per head joins the softmax as an extra column, then is dropped, so a head can put
        weight on "nothing". In fp32; the query heads that share a key head are stacked as rows of one matrix
        product, so keys are never repeated."""
        (B, H, T, D), dtype = q.shape, q.dtype
        G, r = self.n_kv, self.n_heads // self.n_kv
        q, k, v = q.float(), k.float(), v.float()
        scores = (q.reshape(B, G, r * T, D) @ k.transpose(-1, -2)).view(B, G, r, T, -1) * self.scale
        if mask is not None:  # [B, 1, T, S] -> [B, 1, 1, T, S]
            scores = scores.masked_fill(~mask[:, :, None], float("-inf"))
        sink = self.sinks.float().view(1, G, r, 1, 1).expand(B, G, r, T, 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
        out = probs.reshape(B, G, r * T, -1) @ v
        return out.view(B, H, T, D).to(dtype)
