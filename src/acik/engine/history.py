"""Fitting a conversation into the model's context: the one place that decides which turns a chat keeps.

The terminal chat, the server's `"truncation": "auto"` and `LLM.chat(..., truncation="auto")` all call
`fit_conversation`. It keeps the leading system (and developer) messages, then drops whole turns from the
oldest (a turn: a user message and the assistant and tool messages that answer it) until the rendered
prompt plus a reply budget fits. The newest turn is never dropped: if it cannot fit even alone, that is
a `ContextOverflow`, which callers phrase with a hint that fits their surface.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

HEAD_ROLES = ("system", "developer")


class ContextOverflow(ValueError):
    """The newest message (with the system prompt) does not fit the context, however many turns are dropped."""

    def __init__(self, tokens: int, context: int):
        self.tokens = tokens
        self.context = context
        super().__init__(f"the message comes to {tokens} tokens with the chat template (and the system prompt, if "
                         f"any), but the model's context holds {context}")


@dataclass
class Fitted:
    messages: list[dict]  # what the model sees
    prompt_ids: list[int]  # `messages`, rendered and tokenized
    dropped_turns: int = 0
    dropped_messages: int = 0


def reply_budget(context: int, max_new_tokens: int | None) -> int:
    """Tokens kept free for the reply: what was asked for, but at most half the context (a long history
    should not leave a short model no room; a reply that needs more stops at the context's end)."""
    want = context // 4 if max_new_tokens is None else max_new_tokens
    return max(1, min(want, context // 2))


def split_turns(messages: list[dict]) -> tuple[list[dict], list[list[dict]]]:
    """(leading system/developer messages, turns); each turn starts at a user message."""
    i = 0
    while i < len(messages) and messages[i].get("role") in HEAD_ROLES:
        i += 1
    turns: list[list[dict]] = []
    for m in messages[i:]:
        if m.get("role") == "user" or not turns:
            turns.append([m])
        else:
            turns[-1].append(m)
    return messages[:i], turns


def fit_conversation(messages: list[dict], encode: Callable[[list[dict]], list[int]], context: int,
                     reserve: int) -> Fitted:
    """The newest part of `messages` whose prompt (`encode(messages)`: rendered with the chat template and
    tokenized) leaves `reserve` tokens of `context` for the reply.

    If the newest turn fits only without the full reserve, it is sent alone with whatever room is left;
    if it does not fit at all (at least one token must be generated), `ContextOverflow`.
    """
    ids = encode(messages)
    limit = context - reserve
    if len(ids) <= limit:
        return Fitted(list(messages), ids)
    head, turns = split_turns(messages)

    def attempt(drop: int) -> tuple[list[dict], list[int]]:
        kept = head + [m for t in turns[drop:] for m in t]
        return kept, encode(kept)

    # Fewer dropped turns means a longer prompt, so the smallest drop that fits is found by bisection:
    # a few template renders instead of one per turn.
    lo, hi, best = 1, len(turns) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        kept, kept_ids = attempt(mid)
        if len(kept_ids) <= limit:
            best, hi = (mid, kept, kept_ids), mid - 1
        else:
            lo = mid + 1
    if best is None:  # the newest turn alone leaves less than the reserve: send it if anything fits
        drop = max(len(turns) - 1, 0)
        kept, kept_ids = attempt(drop) if drop else (list(messages), ids)
        if len(kept_ids) >= context:
            raise ContextOverflow(len(kept_ids), context)
        best = (drop, kept, kept_ids)
    drop, kept, kept_ids = best
    return Fitted(kept, kept_ids, dropped_turns=drop, dropped_messages=len(messages) - len(kept))


def overflow_notice(context: int) -> str:
    """What a chat says, once, when it first drops turns."""
    return (f"(the conversation no longer fits the model's context of {context} tokens: the oldest turns are "
            f"left out of what the model sees from now on; the system prompt stays)")
