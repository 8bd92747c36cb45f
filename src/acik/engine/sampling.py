"""Turning one row of logits into the next token: penalties, temperature, top-k, top-p, min-p.

Everything happens in fp32 on one request's logits [vocab]; each request has its own
`torch.Generator`, so a seed reproduces the same tokens whatever else is in the batch.
"""

from __future__ import annotations

import torch


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
    logits = filter_logits(logits / temperature, top_k, top_p, min_p)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def top_logprobs(logprobs: torch.Tensor, n: int) -> list[tuple[int, float]]:
    if n <= 0:
        return []
    values, ids = torch.topk(logprobs, n)
    return list(zip(ids.tolist(), values.tolist()))
