"""Turning one row of logits into the next token: penalties, temperature, top-k, top-p, min-p.

Everything happens in fp32 on one request's logits [vocab]; each request has its own
`torch.Generator`, so a seed reproduces the same tokens whatever else is in the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch


def check_sampling(options: Mapping[str, Any], spell: Callable[[str], str] = str) -> None:
    """Raise ValueError for a sampling setting out of range. The engine checks every request with this, and
    `acik chat`/`acik generate` check their settings with it before loading the model; `spell` names a key
    as the caller's surface does (`--top-p` on the command line). Only the keys present are checked."""
    def need(key: str, ok: Callable[[Any], bool], rule: str) -> None:
        if key in options and not ok(options[key]):
            raise ValueError(f"{spell(key)} must be {rule}, got {options[key]!r}")

    need("max_new_tokens", lambda v: v is None or v >= 0, ">= 0")
    need("temperature", lambda v: v >= 0, ">= 0 (0: greedy)")
    need("top_p", lambda v: 0 < v <= 1, "in (0, 1]")
    need("top_k", lambda v: v >= 0, ">= 0 (0: off)")
    need("min_p", lambda v: 0 <= v <= 1, "in [0, 1]")
    need("repetition_penalty", lambda v: v > 0, "> 0 (1: off)")
    need("frequency_penalty", lambda v: -2 <= v <= 2, "in [-2, 2]")
    need("presence_penalty", lambda v: -2 <= v <= 2, "in [-2, 2]")
    need("top_logprobs", lambda v: 0 <= v <= 20, "in [0, 20]")
    if not all(isinstance(s, str) and s for s in options.get("stop") or []):
        raise ValueError(f"{spell('stop')} strings must be non-empty strings")
    if options.get("max_new_tokens") == 0 and not options.get("prompt_logprobs"):
        fix = "; set prompt_logprobs=True to score the prompt" if "prompt_logprobs" in options else ""
        raise ValueError(f"{spell('max_new_tokens')}=0 generates nothing{fix}")


def apply_penalties(logits: torch.Tensor, counts: torch.Tensor | None, seen: torch.Tensor | None,
                    repetition: float, frequency: float, presence: float) -> torch.Tensor:
    """`counts`: how often each id was generated so far (OpenAI frequency/presence penalties);
    `seen`: ids in the prompt or the output (repetition penalty, as in transformers/CTRL)."""
    if repetition != 1.0 and seen is not None:
        picked = logits[seen]
        logits[seen] = torch.where(picked > 0, picked / repetition, picked * repetition)
    if counts is not None and (frequency or presence):
        logits -= frequency * counts + presence * (counts > 0).float()
    return logits


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    """Mask (set to -inf) what top-k, top-p (nucleus) and min-p exclude, on temperature-scaled logits."""
    if top_k and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if min_p > 0.0:
        probs = torch.softmax(logits, dim=-1)
        logits = logits.masked_fill(probs < min_p * probs.max(), float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        # Drop a token when the tokens before it already reach top_p; the most likely always stays.
        drop = (cum - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop[0] = False
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return logits


def sample(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, min_p: float,
           generator: torch.Generator | None) -> int:
    """One token id from fp32 logits [vocab] (already penalised). temperature 0 is greedy."""
    if temperature == 0.0:
        return int(torch.argmax(logits))
    # Shift so the best logit is 0 before dividing: a tiny temperature then gives -inf for the
    # others instead of inf - inf = NaN, and sampling degrades gracefully to greedy.
    logits = filter_logits((logits - logits.max()) / temperature, top_k, top_p, min_p)
    probs = torch.softmax(logits, dim=-1)
    if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0.0:
        return int(torch.argmax(torch.nan_to_num(logits, nan=float("-inf"))))
    return int(torch.multinomial(probs, 1, generator=generator))


def top_logprobs(logprobs: torch.Tensor, n: int) -> list[tuple[int, float]]:
    if n <= 0:
        return []
    values, ids = torch.topk(logprobs, n)
    return list(zip(ids.tolist(), values.tolist()))
