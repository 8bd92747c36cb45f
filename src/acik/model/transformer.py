"""One Transformer for every family acik runs. Read top to bottom: Block, then Transformer.

Module names mirror the Hugging Face Llama tree (`model.layers.N.self_attn.q_proj`, ...), so a
Llama-family state dict loads without renaming and LoRA adapters match PEFT's names.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from acik.config import ModelConfig
from acik.model.attention import Attention
from acik.model.mlp import MLP
from acik.model.norms import RMSNorm, make_norm
from acik.model.rope import RotaryEmbedding
from acik.quant.embedding import QuantEmbedding


def make_feedforward(config: ModelConfig, layer_idx: int) -> nn.Module:
    if config.is_moe_layer(layer_idx):
        from acik.model.moe import MoE

        return MoE(config)
    return MLP(config)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.self_attn = Attention(config, layer_idx)
        self.mlp = make_feedforward(config, layer_idx)
        if config.norm_placement == "post":  # OLMo-2: normalise each branch's output
            self.post_attention_layernorm = make_norm(config)
            self.post_feedforward_layernorm = make_norm(config)
        else:
            self.input_layernorm = make_norm(config)
            if not config.parallel_residual or config.parallel_two_norms:
                self.post_attention_layernorm = make_norm(config)

    def forward(self, x: torch.Tensor, cos, sin, positions, cache=None, segment_ids=None, masks=None) -> torch.Tensor:
        c = self.config
        if c.norm_placement == "post":
            x = x + self.post_attention_layernorm(self.self_attn(x, cos, sin, positions, cache, segment_ids, masks))
            return x + self.post_feedforward_layernorm(self.mlp(x))
        h = self.input_layernorm(x)
        if c.parallel_residual:  # Falcon: attention and MLP read the same input, summed
            mlp_in = self.post_attention_layernorm(x) if c.parallel_two_norms else h
            return x + self.self_attn(h, cos, sin, positions, cache, segment_ids, masks) + self.mlp(mlp_in)
        x = x + self.self_attn(h, cos, sin, positions, cache, segment_ids, masks)
        return x + self.mlp(self.post_attention_layernorm(x))


class Body(nn.Module):
    """Embeddings, blocks and the final norm: HF's `model.` prefix."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = make_norm(config)
        self.rotary_emb = RotaryEmbedding(config)


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Body(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=config.lm_head_bias)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        # An int8 head tied to a QuantEmbedding (Int8Linear.tied_to) shares its buffers, which a device move gives
        # each module a copy of: point the head back at the embedding's, so the table stays held once.
        head, embed = self.lm_head, self.model.embed_tokens
        if self.config.tie_word_embeddings and isinstance(embed, QuantEmbedding) and hasattr(head, "weight_scale"):
            head.weight, head.weight_scale, head._kernel = embed.weight, embed.weight_scale, None
        return out

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None, cache=None,
                segment_ids: torch.Tensor | None = None, last_only: bool = False,
                return_hidden: bool = False) -> torch.Tensor:
        """input_ids [B, T] -> logits [B, T, vocab] (or [B, 1, vocab] with `last_only`).

        `positions` [B, T] default to 0..T-1 (after what `cache` already holds); `segment_ids`
        [B, T] keep packed examples from attending to each other; `return_hidden` returns the
        final normalised hidden states instead of logits.
        """
        B, T = input_ids.shape
        if positions is None:
            start = cache.next_position() if cache is not None else 0
            positions = torch.arange(start, start + T, device=input_ids.device).expand(B, T)
        x = self.model.embed_tokens(input_ids)
        cos, sin = self.model.rotary_emb(positions, x.dtype)
        masks: dict = {}  # attention pattern -> mask, built once per forward pass by its first layer
        for layer in self.model.layers:
            x = layer(x, cos, sin, positions, cache, segment_ids, masks)
        x = self.model.norm(x)
        if last_only:
            x = x[:, -1:]
        if return_hidden:
            return x
        logits = self.lm_head(x)
        if self.config.logit_softcap:
            cap = self.config.logit_softcap
            logits = torch.tanh(logits / cap) * cap
        return logits

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype activations flow in (the embedding's output), whatever the weights are stored in: a quantized
        model holds int8 and fp16 tables, a LoRA adapter fp32 matrices."""
        emb = self.model.embed_tokens
        return getattr(emb, "dtype", None) or emb.weight.dtype

    def num_parameters(self) -> int:
        """The model's weights, each counted once (a tied head is the embedding); quantized layers count as the
        float weights they stand for, so a 4-bit model has as many parameters as its float original."""
        counted = {id(p): p.numel() for p in self.parameters()}
        for m in self.modules():
            shape = getattr(m, "dense_shape", None)
            if shape is not None:  # acik.quant's layers: key on their stored table, which a tied head shares
                table = next(iter(m.buffers(recurse=False)), None)
                key = id(m) if table is None or table.is_meta else ("table", table.data_ptr())
                counted[key] = shape[0] * shape[1]
        return sum(counted.values())

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Fresh weights for training from scratch: normal(0, initializer_range) matrices, zero
        biases and sinks, unit norms, and residual output projections scaled by 1/sqrt(2 * layers)
        (GPT-2) so the residual stream's variance does not grow with depth."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        std = self.config.initializer_range
        resid_std = std / math.sqrt(2 * self.config.num_hidden_layers)
        norm_params = {id(p) for m in self.modules() if isinstance(m, (RMSNorm, nn.LayerNorm))
                       for p in m.parameters(recurse=False)}
        for name, p in self.named_parameters():
            if id(p) in norm_params:
                p.fill_(0.0 if name.endswith("bias") else 1.0)
            elif p.ndim == 1 or name.endswith("bias"):
                p.zero_()
            else:
                s = resid_std if ("o_proj" in name or "down_proj" in name) else std
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype) * s)
