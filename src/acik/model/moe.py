"""Mixture of Experts: a linear router picks k experts per token; the experts are SwiGLU MLPs held
as stacked tensors, and tokens are dispatched grouped by expert (sorted, one matmul per expert
or one `torch._grouped_mm` for all of them), never one token at a time.

Layout (acik's own, the same for every family; `acik.formats` maps the stored layouts at the edge):
  router.weight [E, H] (+ router.bias [E])
  experts.gate_up_proj [E, 2I, H]: rows 0..I-1 are the gate, rows I..2I-1 the up projection
  experts.down_proj [E, H, I] (+ experts.gate_up_proj_bias [E, 2I], experts.down_proj_bias [E, H])
With `expert_quant="mxfp4"` the two matrices are held as `*_blocks`/`*_scales` instead.

After each forward the layer keeps what training needs, per layer:
  last_aux_loss  load-balancing loss E * sum_e f_e * P_e (f_e: fraction of tokens routed to e,
                 P_e: mean router probability of e), as in Switch/Mixtral; scalar, differentiable
  last_z_loss    router z-loss mean(logsumexp(logits)^2) (ST-MoE); scalar, differentiable
  last_counts    tokens routed to each expert [E] (long, detached)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from acik.model.mlp import activation
from acik.quant.mxfp4 import GROUP, dequantize_mxfp4


class Experts(nn.Module):
    def __init__(self, config):
        super().__init__()
        E, H, Inter = config.num_experts, config.hidden_size, config.intermediate_size
        self.num_experts, self.intermediate_size = E, Inter
        self.packed = config.expert_quant == "mxfp4"
        self.clamped = config.expert_act == "clamped_swiglu"
        self.limit, self.alpha = config.swiglu_limit, config.swiglu_alpha
        self.act = None if self.clamped else activation(config.hidden_act)
        shapes = {"gate_up_proj": (E, 2 * Inter, H), "down_proj": (E, H, Inter)}
        for name, (e, out, inp) in shapes.items():
            if self.packed:
                if inp % GROUP:
                    raise ValueError(f"MXFP4 experts need the input size of {name} ({inp}) to be a multiple of 32")
                blocks = torch.zeros(e, out, inp // GROUP, GROUP // 2, dtype=torch.uint8)
                scales = torch.zeros(e, out, inp // GROUP, dtype=torch.uint8)
                self.register_parameter(f"{name}_blocks", nn.Parameter(blocks, requires_grad=False))
                self.register_parameter(f"{name}_scales", nn.Parameter(scales, requires_grad=False))
            else:
                self.register_parameter(name, nn.Parameter(torch.empty(e, out, inp)))
            if config.expert_bias:
                self.register_parameter(f"{name}_bias", nn.Parameter(torch.zeros(e, out)))
            else:
                self.register_parameter(f"{name}_bias", None)

    def weight(self, name: str, experts: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """[n, out, in] weights of `experts` (all experts when None); packed experts are dequantised here,
        and only these."""
        if not self.packed:
            w = getattr(self, name)
            return w if experts is None else w[experts]
        blocks, scales = getattr(self, f"{name}_blocks"), getattr(self, f"{name}_scales")
        if experts is not None:
            blocks, scales = blocks[experts], scales[experts]
        return dequantize_mxfp4(blocks, scales, dtype)

    def gated(self, h: torch.Tensor) -> torch.Tensor:
        gate, up = h.chunk(2, dim=-1)
        if self.clamped:  # gpt-oss: clamp both halves, Swish(1.702 g) gate, and an up path shifted by one
            gate = gate.clamp(max=self.limit)
            up = up.clamp(min=-self.limit, max=self.limit)
            return (up + 1) * gate * torch.sigmoid(gate * self.alpha)
        return self.act(gate) * up

    def forward(self, x: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x [N, H]; index, weights [N, k] -> sum_j weights[:, j] * expert_{index[:, j]}(x)."""
        N, k = index.shape
        flat = index.reshape(-1)
        order = flat.argsort(stable=True)  # group the N*k (token, expert) pairs by expert
        token = order // k
        counts = torch.bincount(flat, minlength=self.num_experts)
        # Packed experts: dequantise only the experts that were routed to.
        experts = counts.nonzero().squeeze(-1) if self.packed else None
        group_sizes = counts[experts] if experts is not None else counts
        xs = x[token]
        h = grouped_linear(xs, self.weight("gate_up_proj", experts, x.dtype), group_sizes,
                           self._bias("gate_up_proj", experts))
        h = self.gated(h)
        y = grouped_linear(h, self.weight("down_proj", experts, x.dtype), group_sizes,
                           self._bias("down_proj", experts))
        y = y * weights.reshape(-1)[order, None]
        return torch.zeros_like(x).index_add_(0, token, y.to(x.dtype))

    def _bias(self, name: str, experts: torch.Tensor | None) -> torch.Tensor | None:
        b = getattr(self, f"{name}_bias")
        return b if b is None or experts is None else b[experts]


def grouped_linear(x: torch.Tensor, w: torch.Tensor, sizes: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Rows of `x` come in consecutive groups of `sizes[g]`; group g is multiplied by w[g] [out, in] (+ bias[g])."""
    if _grouped_mm_ok(x, w):
        return grouped_mm_linear(x, w, sizes, bias)
    # Portable path: one matmul per expert that received tokens (a loop over experts, not tokens).
    outs = []
    for g, chunk in enumerate(x.split(sizes.tolist())):
        if chunk.shape[0]:
            outs.append(F.linear(chunk, w[g], None if bias is None else bias[g]))
    return torch.cat(outs) if outs else x.new_zeros(0, w.shape[1])


def grouped_mm_linear(x: torch.Tensor, w: torch.Tensor, sizes: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
    """`grouped_linear` as one fused kernel call: group g is rows offsets[g-1]:offsets[g]."""
    offsets = sizes.cumsum(0).to(torch.int32)
    y = torch._grouped_mm(x, w.transpose(1, 2), offs=offsets)
    return y if bias is None else add_group_bias(y, bias, sizes)


def add_group_bias(y: torch.Tensor, bias: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """y [N, out] + each row's expert bias. Added in fp32: the backward then sums each expert's bias
    gradient over its rows in fp32 (in bf16 that sum lost a digit on the H100: 2.7e-2 relative error
    against 2.9e-3 for F.linear's own bias gradient)."""
    rows = bias.float().repeat_interleave(sizes, dim=0, output_size=y.shape[0])
    return (y.float() + rows).to(y.dtype)


def _grouped_mm_ok(x: torch.Tensor, w: torch.Tensor) -> bool:
    # torch._grouped_mm is the fused kernel on recent NVIDIA GPUs (bf16, 16-byte aligned strides);
    # its CPU version lacks a reliable backward, so CPU takes the per-expert path.
    return (hasattr(torch, "_grouped_mm") and x.is_cuda and x.dtype == torch.bfloat16 and w.dtype == x.dtype
            and x.shape[-1] % 8 == 0 and w.shape[1] % 8 == 0 and torch.cuda.get_device_capability(x.device) >= (9, 0))


class MoE(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.num_experts = config.num_experts
        self.router = nn.Linear(config.hidden_size, config.num_experts, bias=config.router_bias)
        self.experts = Experts(config)
        self.last_aux_loss: torch.Tensor | None = None
        self.last_z_loss: torch.Tensor | None = None
        self.last_counts: torch.Tensor | None = None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, H] -> (router logits [N, E], expert index [N, k], expert weights [N, k])."""
        c = self.config
        k = c.num_experts_per_tok  # read per call, so `active_experts` can change it after loading
        logits = self.router(x)
        if c.router_order == "softmax_topk":  # Mixtral: probabilities over all experts, then the top k
            weights, index = torch.softmax(logits.float(), dim=-1).topk(k, dim=-1)
            if c.router_renormalize:
                weights = weights / weights.sum(dim=-1, keepdim=True)
        else:  # gpt-oss: the top k logits, then a softmax over just those
            top, index = logits.topk(k, dim=-1)
            weights = torch.softmax(top, dim=-1)
        return logits, index, weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits, index, weights = self.route(x)
        self._record(logits, index)
        return self.experts(x, index, weights).view(shape)

    def _record(self, logits: torch.Tensor, index: torch.Tensor) -> None:
        counts = torch.bincount(index.reshape(-1), minlength=self.num_experts)
        probs = torch.softmax(logits.float(), dim=-1)
        fraction = counts.to(probs.dtype) / logits.shape[0]
        self.last_counts = counts.detach()
        self.last_aux_loss = self.num_experts * (fraction * probs.mean(dim=0)).sum()
        self.last_z_loss = torch.logsumexp(logits.float(), dim=-1).pow(2).mean()


def moe_layers(model: nn.Module) -> list[MoE]:
    return [m for m in model.modules() if isinstance(m, MoE)]


def router_losses(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(load-balancing loss, z-loss) of the last forward, each averaged over the model's MoE layers;
    the training loss adds `router_aux_loss_coef * aux + router_z_loss_coef * z`."""
    layers = [m for m in moe_layers(model) if m.last_aux_loss is not None]
    if not layers:
        zero = torch.zeros(())
        return zero, zero
    aux = torch.stack([m.last_aux_loss for m in layers]).mean()
    z = torch.stack([m.last_z_loss for m in layers]).mean()
    return aux, z
