"""A static KV cache: preallocated once, one row ("slot") per sequence, written in place.

Full-attention layers keep `max_seq_len` entries per slot, indexed by position. Sliding-window
layers keep a ring buffer of `window - 1 + chunk` entries (position modulo that size): a query needs
its window - 1 predecessors, and a prefill chunk of up to `chunk` tokens must not overwrite keys that
the chunk's earliest query still needs; the memory of a long chat with Mistral or gpt-oss stays bounded.

The model's attention calls `update(layer_idx, k, v, positions)` and gets every key the current rows
hold, with their positions (-1 for empty entries); masks are computed from positions, so a ring buffer
simply reports which position each entry holds. The engine chooses the rows of a forward pass with
`select(start, stop, positions)`: a contiguous range, so that reading the cache is a view, not a copy.
"""

from __future__ import annotations

import torch

from acik.config import ModelConfig


def _bits(t: torch.Tensor) -> torch.Tensor:
    """`t`'s bits as integers of the same size: on CPU, scatter_ of bf16/fp16 runs several times slower
    than scatter_ of int16 (5x at 8 rows), and a cache write is only a copy."""
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


class KVCache:
    def __init__(self, config: ModelConfig, num_slots: int, max_seq_len: int, chunk: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        self.num_slots, self.max_seq_len, self.chunk = num_slots, max_seq_len, chunk
        shape = (num_slots, config.num_key_value_heads)
        hd = config.head_dim
        self._kv_shape = (config.num_key_value_heads, hd)
        # One capacity per layer: full layers index by position; windowed layers by position % ring.
        self.ring = [config.layer_types[i] == "sliding_attention" for i in range(config.num_hidden_layers)]
        ring_cap = min(max_seq_len, (config.sliding_window or max_seq_len) - 1 + chunk)
        self.caps = [ring_cap if r else max_seq_len for r in self.ring]
        self.k = [torch.zeros(*shape, cap, hd, dtype=dtype, device=device) for cap in self.caps]
        self.v = [torch.zeros(*shape, cap, hd, dtype=dtype, device=device) for cap in self.caps]
        # Which position each entry holds (-1: empty); shared by all layers of the same kind.
        self.pos_full = torch.full((num_slots, max_seq_len), -1, dtype=torch.long, device=device)
        self.pos_ring = torch.full((num_slots, ring_cap), -1, dtype=torch.long, device=device)
        self.ring_cap = ring_cap
        self.lengths = [0] * num_slots  # next position of each slot (host-side, for slicing)
        self._rows = slice(0, 0)
        self._idx_full = self._idx_ring = None
        self._len = 0

    def reset(self, slot: int) -> None:
        self.pos_full[slot].fill_(-1)
        self.pos_ring[slot].fill_(-1)
        self.lengths[slot] = 0

    def select(self, start: int, stop: int, positions: torch.Tensor) -> None:
        """Make rows start..stop the ones the next forward pass writes at `positions` [stop-start, T]."""
        if positions.shape[1] > self.chunk:
            raise ValueError(f"a forward pass of {positions.shape[1]} tokens exceeds the cache's chunk "
                             f"size {self.chunk}")
        rows = slice(start, stop)
        self._rows = rows
        last = positions[:, -1].tolist()
        for i, p in zip(range(start, stop), last):
            if p >= self.max_seq_len:
                raise ValueError(f"position {p} is beyond the cache's max_seq_len {self.max_seq_len}")
            self.lengths[i] = p + 1
        self._len = max(self.lengths[start:stop])
        ring_idx = positions % self.ring_cap
        self.pos_full[rows].scatter_(1, positions, positions)
        self.pos_ring[rows].scatter_(1, ring_idx, positions)
        # Where update() writes k and v [B, kv_heads, T, head_dim]: expanded here once, not in every layer.
        (B, T), (H, D) = positions.shape, self._kv_shape
        self._idx_full = positions[:, None, :, None].expand(B, H, T, D)
        self._idx_ring = ring_idx[:, None, :, None].expand(B, H, T, D)

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor):
        """Write k, v [B, kv_heads, T, head_dim] into the selected rows; return all keys, values and
        their positions for those rows."""
        ring = self.ring[layer_idx]
        idx = self._idx_ring if ring else self._idx_full
        kb, vb = self.k[layer_idx][self._rows], self.v[layer_idx][self._rows]
        _bits(kb).scatter_(2, idx, _bits(k))
        _bits(vb).scatter_(2, idx, _bits(v))
        if ring:
            n = min(self._len, self.ring_cap)
            return kb[:, :, :n], vb[:, :, :n], self.pos_ring[self._rows, :n]
        n = self._len
        return kb[:, :, :n], vb[:, :, :n], self.pos_full[self._rows, :n]

    def next_position(self) -> int:
        return self.lengths[self._rows.start] if self._rows.stop > self._rows.start else 0

    def move(self, src: int, dst: int) -> None:
        """Copy slot `src` into slot `dst` (keeping the active rows contiguous when one finishes)."""
        n = self.lengths[src]
        for layer in range(len(self.k)):
            m = min(n, self.caps[layer])
            self.k[layer][dst, :, :m].copy_(self.k[layer][src, :, :m])
            self.v[layer][dst, :, :m].copy_(self.v[layer][src, :, :m])
        self.pos_full[dst].copy_(self.pos_full[src])
        self.pos_ring[dst].copy_(self.pos_ring[src])
        self.lengths[dst] = n

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)
