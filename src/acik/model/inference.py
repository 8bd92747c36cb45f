"""Rewrite a loaded model for inference only: fused projections and, on CPU, prepacked weights.

A decode step streams every weight once for a token's worth of activations, so its speed is set by how
fast the matmul kernels read weights and by what each call costs. Two rewrites help (measured in
docs/benchmarks.md "Decode"):

- fusion: q/k/v become one `qkv_proj` and gate/up one `gate_up_proj` (4 matmuls a layer instead of 7);
- prepacking (CPU): each weight is reordered once into oneDNN's blocked layout, as torch.compile's
  freezing does; on this project's CPU oneDNN then reads bf16 and fp32 weights 1.2-2x faster than
  `F.linear` does from the plain layout (fp32 `F.linear` goes to MKL). A head tied to the embeddings gets
  its own packed copy (the embedding lookup still needs the plain table).

RMSNorm stays as it is. It was once computed by LayerNorm's single kernel over [x, -x] (fewer operators per
decode step), but LayerNorm's running mean of that row is not exactly zero: with the massive activations real
models carry (SmolLM2-135M's residual stream reaches 25,000 at the first token), the error swamped the small
values and bf16 SmolLM2 answered "What is the capital of France?" with "L'Étoile, la Marseillaise".

Afterwards the model runs forward only: it cannot be trained, saved, cast or given LoRA adapters (saving
and LoRA refuse with an error; load the directory again for those). Outputs equal the plain model's to
float rounding. Under `torch.compile` the prepacked matmul is an opaque operator (`acik::packed_linear`):
inductor cannot lower a prepacked weight itself, and fuses everything around it.
"""

from __future__ import annotations

import torch
from torch import nn

from acik.model.attention import Attention
from acik.model.mlp import MLP


@torch.library.custom_op("acik::packed_linear", mutates_args=())
def packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@packed_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


class PackedLinear(nn.Module):
    """An `nn.Linear` whose weight oneDNN holds in its own blocked layout (CPU, fp32 or bf16)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # The batch-size hint 1 picks the layout for decode; prefill's larger batches run well on it too.
        packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)
        self.packed_weight = nn.Parameter(packed, requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return packed_linear(x, self.packed_weight, self.bias)
        # Eager, the direct call: going through the custom operator costs a few µs more, 85 times a token.
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def can_pack(linear: nn.Module) -> bool:
    if type(linear) is not nn.Linear or linear.weight.device.type != "cpu":
        return False
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    dtype = linear.weight.dtype
    return dtype == torch.float32 or (dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def fuse_linears(layers: list[nn.Module]) -> nn.Module | None:
    """One layer computing `layers`' outputs side by side (concatenated along the last dimension), or
    None where they cannot be fused (LoRA-wrapped, quantized differently, other devices or dtypes)."""
    first = layers[0]
    if all(type(m) is nn.Linear for m in layers):
        weights = [m.weight for m in layers]
        if len({(w.dtype, w.device, w.shape[1]) for w in weights}) != 1:
            return None
        fused = nn.Linear(first.in_features, sum(w.shape[0] for w in weights),
                          bias=any(m.bias is not None for m in layers), device="meta")
        fused.weight = nn.Parameter(torch.cat([w.detach() for w in weights]), requires_grad=False)
        if fused.bias is not None:
            fused.bias = nn.Parameter(torch.cat([
                m.bias.detach() if m.bias is not None else w.new_zeros(w.shape[0]) for m, w in zip(layers, weights)
            ]), requires_grad=False)
        return fused
    concat = getattr(type(first), "concat", None)  # quantized layers that can be fused say how
    return concat(layers) if concat is not None else None


def optimize(model: nn.Module) -> dict[str, int]:
    """Fuse `model`'s projections and prepack its linear weights (on CPU), in place.
    Returns how many of each it changed."""
    done = {"fused": 0, "packed": 0}
    if getattr(model, "inference_only", False):
        return done
    with torch.no_grad():
        for module in list(model.modules()):
            if isinstance(module, Attention):
                fused = fuse_linears([module.q_proj, module.k_proj, module.v_proj])
                if fused is not None:
                    module.qkv_proj = fused
                    del module.q_proj, module.k_proj, module.v_proj
                    done["fused"] += 1
            elif isinstance(module, MLP) and module.gated:
                fused = fuse_linears([module.gate_proj, module.up_proj])
                if fused is not None:
                    module.gate_up_proj = fused
                    del module.gate_proj, module.up_proj
                    done["fused"] += 1
        for module in list(model.modules()):
            adapter = hasattr(module, "lora_A")  # a LoRA wrapper: pack its base layer, not the small adapters it reads
            for name, child in list(module.named_children()):
                if can_pack(child) and not (adapter and name != "base_layer"):
                    setattr(module, name, PackedLinear(child))
                    done["packed"] += 1
        for module in model.modules():
            if hasattr(module, "for_inference"):  # quantized layers that can drop their stored format
                module.for_inference()
        for p in model.parameters():
            p.requires_grad_(False)
    model.inference_only = True
    return done


def refuse_if_optimized(model: nn.Module, action: str) -> None:
    if getattr(model, "inference_only", False):
        raise ValueError(f"cannot {action}: this model was optimized for inference (fused projections, prepacked "
                         "weights); load the model directory again without optimize=True for that")
