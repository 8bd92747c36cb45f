"""Log-likelihood scoring: the one primitive behind perplexity and multiple-choice evaluation.

A scorer maps (context ids, continuation ids) pairs to (sum of the continuation's log-probabilities,
whether it is the greedy continuation). `loglikelihoods` runs an acik model; `api_loglikelihoods`
asks any OpenAI-compatible server through `/v1/completions` with `echo` and `logprobs`, sending token
ids, so both see exactly the same tokens.
"""

from __future__ import annotations

import json
import math
import urllib.request

import torch

Pair = tuple[list[int], list[int]]


@torch.no_grad()
def loglikelihoods(model: torch.nn.Module, pairs: list[Pair], batch_size: int = 8,
                   max_length: int | None = None) -> list[tuple[float, bool]]:
    """Sum of log p(continuation | context) for each pair, batched with right padding.

    Contexts longer than `max_length` (the model's context) are cut from the left, as evaluators do.
    """
    max_length = max_length or model.config.max_position_embeddings
    device = next(model.parameters()).device
    results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
    # Longest first, so padding is small within a batch; results go back in input order.
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        seqs, spans = [], []
        for i in idx:
            context, continuation = pairs[i]
            if not continuation:
                raise ValueError("a continuation must have at least one token")
            full = (context + continuation)[-(max_length + 1):]
            n_cont = min(len(continuation), len(full) - 1)
            seqs.append(full[:-1])
            spans.append((len(full) - 1 - n_cont, len(full) - 1, full[-n_cont:]))
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, :len(s)] = torch.tensor(s)
        logprobs = torch.log_softmax(model(ids.to(device)).float(), dim=-1).cpu()
        for row, (i, (a, b, target)) in enumerate(zip(idx, spans)):
            lp = logprobs[row, a:b]
            tgt = torch.tensor(target)
            total = lp.gather(-1, tgt[:, None]).sum().item()
            greedy = bool((lp.argmax(-1) == tgt).all())
            results[i] = (total, greedy)
    return results


def api_loglikelihoods(base_url: str, model_name: str, pairs: list[Pair], api_key: str | None = None,
                       timeout: float = 600.0) -> list[tuple[float, bool]]:
    """The same scores from an OpenAI-compatible server (lm-evaluation-harness's request shape)."""
    out = []
    url = base_url.rstrip("/") + "/completions"
    for context, continuation in pairs:
        body = {"model": model_name, "prompt": context + continuation, "echo": True, "max_tokens": 0,
                "logprobs": 1, "temperature": 0.0}
        req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {api_key}"} if api_key else {})})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            choice = json.loads(resp.read())["choices"][0]["logprobs"]
        n = len(continuation)
        token_lps = choice["token_logprobs"][-n:]
        tops = choice.get("top_logprobs") or [None] * len(choice["token_logprobs"])
        greedy = all(top is not None and max(top.values()) <= lp + 1e-6
                     for top, lp in zip(tops[-n:], token_lps))
        out.append((float(sum(token_lps)), greedy))
    return out


def perplexity(model: torch.nn.Module, ids: list[int], window: int | None = None,
               batch_size: int = 4) -> tuple[float, float, int]:
    """Mean negative log-likelihood (nats/token), perplexity and tokens scored, over non-overlapping
    windows of the model's context (each window's first token is scored with no context but the
    previous window's last token)."""
    window = window or model.config.max_position_embeddings
    device = next(model.parameters()).device
    chunks = [ids[i:i + window + 1] for i in range(0, max(len(ids) - 1, 1), window)]
    chunks = [c for c in chunks if len(c) > 1]
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(chunks), batch_size):
            batch = chunks[start:start + batch_size]
            width = max(len(c) for c in batch) - 1
            x = torch.zeros(len(batch), width, dtype=torch.long)
            y = torch.full((len(batch), width), -100, dtype=torch.long)
            for row, c in enumerate(batch):
                x[row, :len(c) - 1] = torch.tensor(c[:-1])
                y[row, :len(c) - 1] = torch.tensor(c[1:])
            logits = model(x.to(device)).float().cpu()
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                                     ignore_index=-100, reduction="sum")
            total += loss.item()
            count += int((y != -100).sum())
    nll = total / max(count, 1)
    return nll, math.exp(nll), count
