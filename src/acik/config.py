"""`ModelConfig`: every architecture acik runs is one set of these values.

Families (Llama, Mistral, Qwen, OLMo, ...) differ only in the values; the model code never asks
which family it is. `acik.formats.hf` translates Hugging Face `config.json` files to and from this.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelConfig:
    vocab_size: int = 32000
    hidden_size: int = 768
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_key_value_heads: int | None = None  # None: same as attention heads (MHA); 1: MQA
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    max_position_embeddings: int = 2048

    # Normalisation. rmsnorm_cast "before": cast to the input dtype, then multiply by the weight
    # (Llama); "after": multiply in fp32, then cast (OLMo-2, gpt-oss).
    norm_type: str = "rmsnorm"  # "rmsnorm" | "layernorm"
    norm_eps: float = 1e-5
    norm_bias: bool = False  # LayerNorm bias
    rmsnorm_cast: str = "before"
    # "pre": x + f(norm(x)) (most models); "post": x + norm(f(x)) (OLMo-2).
    norm_placement: str = "pre"
    # Falcon: attention and MLP both read the same normalised input and are added together.
    parallel_residual: bool = False
    # Falcon-40B style: separate norms for the attention and MLP branches of a parallel block.
    parallel_two_norms: bool = False
    # QK-norm: None, "head" (per head over head_dim, before RoPE: Qwen3) or "full" (over the whole
    # projection before the reshape: OLMo-2).
    qk_norm: str | None = None

    # Biases per projection.
    q_bias: bool = False
    k_bias: bool = False
    v_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    lm_head_bias: bool = False

    # MLP: "gated" is down(act(gate(x)) * up(x)) (SwiGLU with silu); "plain" is down(act(up(x))).
    mlp_type: str = "gated"
    hidden_act: str = "silu"  # "silu" | "gelu" (exact) | "gelu_tanh" | "relu"

    # RoPE. rope_scaling is None or a dict with "rope_type" in default/linear/llama3/yarn and
    # that type's parameters, spelled as in Hugging Face configs.
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    partial_rotary_factor: float = 1.0

    # Attention pattern per layer: "full_attention", "sliding_attention" (window `sliding_window`:
    # a query sees itself and the window-1 keys before it) or "block_sparse_attention".
    layer_types: list[str] | None = None
    sliding_window: int | None = None
    # Block-sparse ("Sparse Transformer" strided): local window plus every `block_stride`-th block.
    block_size: int = 64
    block_stride: int = 4
    attention_sinks: bool = False  # gpt-oss: one learned logit per head as an extra softmax column
    attention_scale: float | None = None  # None: 1/sqrt(head_dim)

    # Mixture of Experts (0 experts: a dense MLP in every layer).
    num_experts: int = 0
    num_experts_per_tok: int = 2
    moe_layers: list[int] | None = None  # None: every layer is MoE when num_experts > 0
    router_bias: bool = False
    expert_bias: bool = False  # biases on the experts' projections (gpt-oss)
    # "softmax_topk": softmax over all experts, top-k, renormalise (Mixtral); "topk_softmax": top-k
    # of the raw logits, softmax over the chosen (gpt-oss).
    router_order: str = "softmax_topk"
    router_renormalize: bool = True
    expert_act: str = "swiglu"  # "swiglu" | "clamped_swiglu" (gpt-oss)
    swiglu_limit: float = 7.0
    swiglu_alpha: float = 1.702
    router_aux_loss_coef: float = 0.0
    router_z_loss_coef: float = 0.0
    # How the experts' weights are held in memory: None (dense, in the model dtype) or "mxfp4"
    # (packed 4.25-bit blocks, dequantised per forward for the experts that tokens were routed to).
    expert_quant: str | None = None

    tie_word_embeddings: bool = False
    logit_softcap: float | None = None
    initializer_range: float = 0.02

    # Identity, carried for saving and `acik info`; never read by the model code.
    model_type: str = "llama"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    torch_dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict)  # HF keys acik does not interpret

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.layer_types is None:
            kind = "sliding_attention" if self.sliding_window else "full_attention"
            self.layer_types = [kind] * self.num_hidden_layers
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"invalid model config: {msg}")

        need(self.num_attention_heads % self.num_key_value_heads == 0,
             f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
             f"num_key_value_heads ({self.num_key_value_heads})")
        need(len(self.layer_types) == self.num_hidden_layers,
             f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers")
        known = {"full_attention", "sliding_attention", "block_sparse_attention"}
        for t in self.layer_types:
            need(t in known, f"unknown layer type {t!r}; known: {sorted(known)}")
        need("sliding_attention" not in self.layer_types or bool(self.sliding_window),
             "sliding_attention layers need sliding_window")
        need(self.norm_type in ("rmsnorm", "layernorm"), f"norm_type {self.norm_type!r}")
        need(self.rmsnorm_cast in ("before", "after"), f"rmsnorm_cast {self.rmsnorm_cast!r}")
        need(self.norm_placement in ("pre", "post"), f"norm_placement {self.norm_placement!r}")
        need(self.qk_norm in (None, "head", "full"), f"qk_norm {self.qk_norm!r}")
        need(self.mlp_type in ("gated", "plain"), f"mlp_type {self.mlp_type!r}")
        need(self.router_order in ("softmax_topk", "topk_softmax"), f"router_order {self.router_order!r}")
        need(self.expert_act in ("swiglu", "clamped_swiglu"), f"expert_act {self.expert_act!r}")
        need(self.expert_quant in (None, "mxfp4"), f"expert_quant {self.expert_quant!r}")
        if self.num_experts:
            need(0 < self.num_experts_per_tok <= self.num_experts,
                 f"num_experts_per_tok ({self.num_experts_per_tok}) must be in 1..num_experts "
                 f"({self.num_experts})")

    def is_moe_layer(self, i: int) -> bool:
        return self.num_experts > 0 and (self.moe_layers is None or i in self.moe_layers)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        from acik.recipe import from_dict

        return from_dict(cls, data, where="model config")


# Named presets for models trained with acik (HF-compatible Llama-architecture shapes).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=260, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                 tie_word_embeddings=True),
    "small": dict(vocab_size=8192, hidden_size=256, intermediate_size=768, num_hidden_layers=8,
                  num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
                  tie_word_embeddings=True),
    "124m": dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                 num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=2048),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})
