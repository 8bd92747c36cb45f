"""The dense feed-forward block: gated (SwiGLU) or plain (GELU) MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from acik.kernels import cpu_training

ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; acik supports {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        h, i, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gated = config.mlp_type == "gated"
        if self.gated:
            self.gate_proj = nn.Linear(h, i, bias=bias)
        self.up_proj = nn.Linear(h, i, bias=bias)
        self.down_proj = nn.Linear(i, h, bias=bias)
        self.act = activation(config.hidden_act)
        self.gate_up_proj: nn.Module | None = None  # gate and up in one matmul, set by acik.model.inference.optimize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            return self.down_proj(self.act(gate) * up)
        if self.gated:
            gate, up = self.gate_proj(x), self.up_proj(x)
            if self.act is F.silu and torch.is_grad_enabled() and cpu_training.supports(gate):
                return self.down_proj(cpu_training.swiglu(gate, up))  # training on a CPU: one pass each way
            return self.down_proj(self.act(gate) * up)
        return self.down_proj(self.act(self.up_proj(x)))
