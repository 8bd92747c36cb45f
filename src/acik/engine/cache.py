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


class KVCache:
    def __init__(self, config: ModelConfig, num_slots: int, max_seq_len: int, chunk: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", whole_ring: bool = False):
        """`whole_ring`: ring layers return all their entries (empty ones masked by position -1) rather than
        only those in use, so that shapes do not change when a ring fills (for a compiled step)."""
        self.num_slots, self.max_seq_len, self.chunk = num_slots, max_seq_len, chunk
        self.whole_ring = whole_ring
        shape = (num_slots, config.num_key_value_heads)
        hd = config.head_dim
        # One capacity per layer: full layers index by position; windowed layers by position % ring.
        self.ring = [config.layer_types[i] == "sliding_attention" for i in range(config.num_hidden_layers)]
        ring_cap = min(max_seq_len, (config.sliding_window or max_seq_len) - 1 + chunk)
        self.caps = [ring_cap if r else max_seq_len for r in self.ring]
        # Each buffer has one entry more than is ever used: a read of all used entries is then never the whole
        # buffer, a case a compiled step would otherwise specialise on (and recompile for at the context's end).
        self.k = [torch.zeros(*shape, cap + 1, hd, dtype=dtype, device=device) for cap in self.caps]
        self.v = [torch.zeros(*shape, cap + 1, hd, dtype=dtype, device=device) for cap in self.caps]
        # Which position each entry holds (-1: empty); shared by all layers of the same kind.
        self.pos_full = torch.full((num_slots, max_seq_len + 1), -1, dtype=torch.long, device=device)
        self.pos_ring = torch.full((num_slots, ring_cap + 1), -1, dtype=torch.long, device=device)
        self.ring_cap = ring_cap
        self.lengths = [0] * num_slots  # next position of each slot (host-side, for slicing)
        self._rows = slice(0, 0)
        self._start = 0  # _rows.start, alone: a compiled step guards on the value of what it reads
        # Set by select(), one per layer kind (index 0: full layers, 1: ring layers): the entries update()
        # writes (slot and entry indices), and the positions of the entries it returns.
        self._write_at: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()
        self._key_pos: tuple[torch.Tensor, ...] = ()

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
        self._rows, self._start = rows, start
        last = positions[:, -1].tolist()
        for i, p in zip(range(start, stop), last):
            if p >= self.max_seq_len:
                raise ValueError(f"position {p} is beyond the cache's max_seq_len {self.max_seq_len}")
            self.lengths[i] = p + 1
        n = max(self.lengths[start:stop])
        ring_idx = positions % self.ring_cap
        self.pos_full[rows].scatter_(1, positions, positions)
        self.pos_ring[rows].scatter_(1, ring_idx, positions)
        # Computed once here rather than in every layer. The number of entries returned (up to the longest
        # row; for a ring, all of it once it has wrapped) is the width of these position tensors, not a
        # Python int, so a compiled decode step sees it as a symbolic size and does not recompile as
        # sequences grow. (A compiled step reads whole rings: while a ring and the full layers return equal
        # counts, the compiler would take them for one size, and recompile when they part.)
        slots = torch.arange(start, stop, device=positions.device)[:, None]
        self._write_at = ((slots, positions), (slots, ring_idx))
        ring_n = self.ring_cap if self.whole_ring else min(n, self.ring_cap)
        self._key_pos = (self.pos_full[rows, :n], self.pos_ring[rows, :ring_n])

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor):
        """Write k, v [B, kv_heads, T, head_dim] into the selected rows; return all keys, values and
        their positions for those rows."""
        ring = self.ring[layer_idx]
        slots, entries = self._write_at[ring]
        # Indexed assignment rather than scatter_: compiled, it is written in place (a scatter into a
        # view of the cache is compiled as a copy of the whole cache), and eager it is as fast.
        self.k[layer_idx][slots, :, entries] = k.transpose(1, 2)
        self.v[layer_idx][slots, :, entries] = v.transpose(1, 2)
        k_pos = self._key_pos[ring]
        B, S = k_pos.shape
        return (self.k[layer_idx].narrow(0, self._start, B)[:, :, :S],
                self.v[layer_idx].narrow(0, self._start, B)[:, :, :S], k_pos)

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
