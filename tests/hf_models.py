"""Tiny random Hugging Face models for parity tests, built with transformers itself."""

from __future__ import annotations

from pathlib import Path

import torch


def rerandomize(model: torch.nn.Module, seed: int = 0) -> None:
    """transformers zero-inits biases and sets norms to 1, which hides bugs: draw every parameter anew
    (normal std 0.25 for weights and biases, 1 ± 0.3 for norm weights)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower() or "ln_" in name or name.endswith(("layernorm.weight",)):
                if name.endswith("weight"):
                    p.copy_(1 + (torch.rand(p.shape, generator=gen) * 2 - 1) * 0.3)
                    continue
            p.copy_(torch.randn(p.shape, generator=gen) * 0.25)


def make_hf_model(config, path: Path, seed: int = 0):
    """Build a transformers causal LM from `config`, re-randomise it, save it to `path`; return it."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").float().eval()
    rerandomize(model, seed)
    model.save_pretrained(path)
    return model


def hf_logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids).logits.float()
