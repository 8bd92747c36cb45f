"""An int8 token embedding in blocks (GGUF's Q8_0 `token_embd`), which a tied output head shares.

A model whose embedding file holds 8-bit codes should not widen the whole table to float to look up a few rows:
at SmolLM2-135M's 49,152 x 576 that is 28 MB as stored against 113 MB in fp32. `QuantEmbedding` keeps the codes
and one fp16 scale per block of inputs and dequantizes only the rows it looks up. Where the model ties its head
to the embedding, `Int8Linear.tied_to(embedding)` is the head over the same two tensors (acik's int8 block kernel
reads them as stored), so the table is held once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from acik.quant import methods


class QuantEmbedding(nn.Module):
    """`weight` int8 [num_embeddings, embedding_dim] and `weight_scale` fp16 [num_embeddings, embedding_dim /
    group_size], row i = weight[i] * its blocks' scales. Looked-up rows come back in `dtype`, which follows the
    model's casts (`model.to(torch.bfloat16)`) while the codes and scales keep theirs. The module has no
    parameters: the table is frozen (LoRA and fine-tuning train around it)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, group_size: int = 32,
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        if group_size < 1 or embedding_dim % group_size:
            raise ValueError(f"embedding_dim {embedding_dim} is not divisible by the block size {group_size}")
        self.num_embeddings, self.embedding_dim, self.group_size, self.dtype = (num_embeddings, embedding_dim,
                                                                                 group_size, dtype)
        self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(num_embeddings, embedding_dim // group_size,
                                                        dtype=torch.float16, device=device))

    @property
    def dense_shape(self) -> tuple[int, int]:
        """The float table this one stands for (`Transformer.num_parameters` counts it)."""
        return self.num_embeddings, self.embedding_dim

    @classmethod
    def from_blocks(cls, codes: torch.Tensor, scales: torch.Tensor,
                    dtype: torch.dtype = torch.float32) -> QuantEmbedding:
        """From block-quantized rows as stored, e.g. GGUF's Q8_0 `token_embd`: `codes` int8 [vocab, dim],
        `scales` [vocab, dim / group] (fp16 as Q8_0's `d`; other float dtypes are rounded to fp16), looked-up
        rows returned in `dtype`. The tensors are kept, not copied, where they already have these dtypes and
        are contiguous. Tie a head to it with `Int8Linear.tied_to(embedding)`."""
        if codes.dtype != torch.int8 or codes.dim() != 2 or scales.dim() != 2 or scales.shape[0] != codes.shape[0] \
                or scales.shape[1] < 1 or codes.shape[1] % scales.shape[1]:
            raise ValueError(f"QuantEmbedding.from_blocks takes int8 codes [vocab, dim] and scales [vocab, dim / "
                             f"group]; got codes {codes.dtype} {tuple(codes.shape)}, scales {tuple(scales.shape)}")
        vocab, dim = codes.shape
        emb = cls(vocab, dim, dim // scales.shape[1], dtype, device="meta")
        emb.weight, emb.weight_scale = codes.contiguous(), scales.to(torch.float16).contiguous()
        return emb

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, group_size: int = 32) -> QuantEmbedding:
        """Quantize a float embedding to int8 blocks of `group_size` (as llama.cpp's Q8_0 at 32)."""
        codes, scales = methods.quantize_int8(embedding.weight, group_size)
        return cls.from_blocks(codes, scales, embedding.weight.dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        codes = F.embedding(ids, self.weight)  # [..., dim] int8: only the looked-up rows
        scales = F.embedding(ids, self.weight_scale)
        rows = codes.unflatten(-1, (scales.shape[-1], self.group_size)).to(torch.float32)
        return (rows * scales.float().unsqueeze(-1)).flatten(-2).to(self.dtype)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The whole table [num_embeddings, embedding_dim] in `dtype` (for export; lookups never need it)."""
        return methods.dequantize_int8(self.weight, self.weight_scale, dtype)

    def _apply(self, fn, recurse=True):
        # Casts change the dtype of what lookups return, never the stored codes and scales; device moves move them.
        self.dtype = fn(torch.empty(0, dtype=self.dtype)).dtype
        for name, buf in self._buffers.items():
            if buf is not None:
                moved = fn(buf)
                self._buffers[name] = moved if moved.dtype == buf.dtype else buf.to(moved.device)
        return self

    @property
    def weight_bytes(self) -> int:
        return self.weight.numel() + self.weight_scale.numel() * self.weight_scale.element_size()

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, int8 blocks of {self.group_size}, "
                f"dtype={self.dtype}")
