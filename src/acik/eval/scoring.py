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
from collections.abc import Callable

import torch

Pair = tuple[list[int], list[int]]


Progress = Callable[[int], None]  # called with the number of tokens just scored


def _logprobs(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """fp32 log-probabilities from final hidden states: the model's head, on only the rows asked for (the
    head and the softmax over a 49k vocabulary cost as much as a small model's body, for every position)."""
    logits = model.lm_head(hidden)
    cap = model.config.logit_softcap
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.log_softmax(logits.float(), dim=-1)


def _pad(rows: list[list[int]], device) -> torch.Tensor:
    ids = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return ids.to(device)


def _score(lp: torch.Tensor, target: list[int]) -> tuple[float, bool]:
    tgt = torch.tensor(target)
    return lp.gather(-1, tgt[:, None]).sum().item(), bool((lp.argmax(-1) == tgt).all())


def _score_plain(model, pairs: list[Pair], idx: list[int], max_length: int, device) -> list[tuple[float, bool]]:
    """Each pair as one row, right-padded; contexts longer than `max_length` lose their start."""
    seqs, spans = [], []
    for i in idx:
        context, continuation = pairs[i]
        full = (context + continuation)[-(max_length + 1):]
        n_cont = min(len(continuation), len(full) - 1)
        seqs.append(full[:-1])
        spans.append((len(full) - 1 - n_cont, full[len(full) - n_cont:]))
    hidden = model(_pad(seqs, device), return_hidden=True)
    rows = torch.cat([torch.arange(a, a + len(t)) for a, t in spans])
    owner = torch.cat([torch.full((len(t),), r) for r, (_, t) in enumerate(spans)])
    lp = _logprobs(model, hidden[owner.to(device), rows.to(device)]).cpu()
    out, at = [], 0
    for _, target in spans:
        out.append(_score(lp[at:at + len(target)], target))
        at += len(target)
    return out


def _score_shared(model, pairs: list[Pair], groups: list[list[int]], device) -> list[tuple[float, bool]]:
    """Pairs that share a context (a question's choices): the context runs once into a KV cache, which is
    copied to one cache slot per choice; the choices then run together after it. The first token of each
    choice is scored from the context's last position, so one-token choices (yes/no) need no second pass."""
    from acik.engine.cache import KVCache

    contexts = [pairs[g[0]][0] for g in groups]
    members = [i for g in groups for i in g]
    owner = [k for k, g in enumerate(groups) for _ in g]
    tails = [pairs[i][1][:-1] for i in members]  # inputs after the context; the last token is only a target
    n_ctx, n_tail = max(len(c) for c in contexts), max(len(t) for t in tails)
    dtype = model.compute_dtype  # not the embedding table's: a quantized one is int8
    cache = KVCache(model.config, len(groups) + len(members), n_ctx + max(n_tail, 1), max(n_ctx, n_tail, 1),
                    dtype=dtype, device=device)
    positions = torch.arange(n_ctx, device=device).expand(len(groups), n_ctx)
    cache.select(0, len(groups), positions)
    hidden = model(_pad(contexts, device), positions=positions, cache=cache, return_hidden=True)
    last = torch.tensor([len(c) - 1 for c in contexts], device=device)
    first = _logprobs(model, hidden[torch.arange(len(groups), device=device), last]).cpu()
    rest = None
    if n_tail:
        base = len(groups)
        for j, k in enumerate(owner):
            cache.move(k, base + j)
        positions = (torch.tensor([len(contexts[k]) for k in owner], device=device)[:, None]
                     + torch.arange(n_tail, device=device))
        cache.select(base, base + len(members), positions)
        hidden = model(_pad([t or [0] for t in tails], device), positions=positions, cache=cache,
                       return_hidden=True)
        rows = torch.cat([torch.arange(len(t)) for t in tails]).to(device)
        who = torch.cat([torch.full((len(t),), j) for j, t in enumerate(tails)]).to(device)
        rest = _logprobs(model, hidden[who, rows]).cpu()
    out, at = [], 0
    for i, k in zip(members, owner):
        continuation = pairs[i][1]
        n = len(continuation) - 1
        lp = first[k:k + 1] if rest is None or n == 0 else torch.cat([first[k:k + 1], rest[at:at + n]])
        at += n
        out.append(_score(lp, continuation))
    return out


@torch.no_grad()
def loglikelihoods(model: torch.nn.Module, pairs: list[Pair], batch_size: int = 8,
                   max_length: int | None = None, progress: Progress | None = None,
                   share_contexts: bool = True) -> list[tuple[float, bool]]:
    """Sum of log p(continuation | context) for each pair, and whether the continuation is the greedy one.

    Contexts longer than `max_length` (the model's context) are cut from the left, as evaluators do.
    `batch_size` pairs run per forward pass. With `share_contexts`, pairs with the same context (the
    choices of one question) compute it once (see `_score_shared`); the scores equal the unshared ones
    to float rounding. `progress` is told the tokens of each batch as it finishes.
    """
    max_length = max_length or model.config.max_position_embeddings
    device = next(model.parameters()).device
    for _, continuation in pairs:
        if not continuation:
            raise ValueError("a continuation must have at least one token")
    results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
    by_context: dict[tuple[int, ...], list[int]] = {}
    for i, (context, _) in enumerate(pairs):
        by_context.setdefault(tuple(context), []).append(i)
    shared, plain = [], []
    can_share = share_contexts and hasattr(model, "lm_head") and hasattr(model, "model")
    for context, idx in by_context.items():
        fits = all(len(context) + len(pairs[i][1]) <= max_length for i in idx)
        # Two passes (context, then choices) cost more per position than one: share only when the context
        # positions saved outnumber the choices' (measured: PIQA's short goals and long solutions ran
        # 0.9x shared, ARC 1.6x, BoolQ 2.6x; docs/evaluation.md).
        pays = (len(idx) - 1) * len(context) >= sum(len(pairs[i][1]) for i in idx)
        if can_share and len(idx) > 1 and context and fits and pays and len(idx) <= batch_size:
            shared.append(idx)
        else:
            plain.extend(idx)

    def done(idx: list[int]) -> None:
        if progress is not None:
            progress(sum(len(pairs[i][0]) + len(pairs[i][1]) for i in idx))

    # Longest first, so padding is small within a batch; results go back in input order.
    shared.sort(key=lambda g: -len(pairs[g[0]][0]))
    batch: list[list[int]] = []
    for g in [*shared, None]:
        if batch and (g is None or sum(map(len, batch)) + len(g) > batch_size):
            for i, r in zip([i for b in batch for i in b], _score_shared(model, pairs, batch, device)):
                results[i] = r
            done([i for b in batch for i in b])
            batch = []
        if g is not None:
            batch.append(g)
    plain.sort(key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    for start in range(0, len(plain), batch_size):
        idx = plain[start:start + batch_size]
        for i, r in zip(idx, _score_plain(model, pairs, idx, max_length, device)):
            results[i] = r
        done(idx)
    return results


def api_loglikelihoods(base_url: str, model_name: str, pairs: list[Pair], api_key: str | None = None,
                       timeout: float = 600.0, progress: Progress | None = None) -> list[tuple[float, bool]]:
    """The same scores from an OpenAI-compatible server (lm-evaluation-harness's request shape). `progress` is
    told each pair's tokens as its answer arrives."""
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
        if progress is not None:
            progress(len(context) + len(continuation))
    return out


def perplexity(model: torch.nn.Module, ids: list[int], window: int | None = None,
               batch_size: int = 4, progress: Progress | None = None) -> tuple[float, float, int]:
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
            hidden = model(x.to(device), return_hidden=True)
            keep = (y != -100).reshape(-1)
            hidden, y = hidden.reshape(-1, hidden.shape[-1])[keep.to(device)], y.reshape(-1)[keep]
            # The head in slices of rows: full logits of 4 windows of 8k tokens over a 49k vocabulary are 6 GB.
            for a in range(0, len(y), 1024):
                lp = _logprobs(model, hidden[a:a + 1024]).cpu()
                total -= lp.gather(-1, y[a:a + 1024, None]).sum().item()
            count += len(y)
            if progress is not None:
                progress(len(y))
    nll = total / max(count, 1)
    return nll, math.exp(nll), count
