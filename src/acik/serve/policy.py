"""Guardrails: a YAML policy with input rules (blocked patterns answered with a refusal) and output
rules (blocked patterns that stop generation, PII redaction). `acik serve` and `acik chat` share it.

    input:
      blocked: ["(?i)\\bbuild a bomb\\b"]
      refusal: "Sorry, I can't help with that."
    output:
      blocked: ["(?i)internal use only"]
      redact: [email, phone, credit_card, ip]   # or: all
      replacement: "[redacted]"

Patterns are Python regular expressions. Output is filtered as it streams: the last `hold` characters
stay back until more text arrives, so a pattern (or a PII item) shorter than that is caught before any
of it reaches the client. A blocked output ends with finish_reason "content_filter".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from acik.recipe import RecipeError, load_recipe

PII_PATTERNS: dict[str, str] = {
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    "credit_card": r"\b(?:\d[ -]?){12,18}\d\b",
    "phone": r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]?\d{3,4}\b",
    "ip": r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b",
}


@dataclass
class InputRules:
    blocked: list[str] = field(default_factory=list)
    refusal: str = "I can't help with that request."


@dataclass
class OutputRules:
    blocked: list[str] = field(default_factory=list)
    redact: list[str] | str = field(default_factory=list)  # PII kinds, or "all"
    replacement: str = "[redacted]"
    hold: int = 64


@dataclass
class PolicyFile:
    input: InputRules = field(default_factory=InputRules)
    output: OutputRules = field(default_factory=OutputRules)


def _compile(patterns: list[str], where: str) -> list[re.Pattern]:
    out = []
    for i, p in enumerate(patterns):
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise RecipeError(f"{where}[{i}]: {p!r} is not a valid regular expression ({e})") from None
    return out


class Policy:
    """Compiled guardrails. `Policy()` allows everything."""

    def __init__(self, rules: PolicyFile | None = None, source: str | None = None):
        rules = rules or PolicyFile()
        self.source = source
        self.refusal = rules.input.refusal
        self.input_blocked = _compile(rules.input.blocked, "policy input.blocked")
        self.output_blocked = _compile(rules.output.blocked, "policy output.blocked")
        kinds = list(PII_PATTERNS) if rules.output.redact == "all" else rules.output.redact
        if isinstance(kinds, str):
            kinds = [kinds]
        unknown = [k for k in kinds if k not in PII_PATTERNS]
        if unknown:
            raise RecipeError(f"policy output.redact: unknown kind {unknown[0]!r}; "
                              f"valid kinds: {', '.join(PII_PATTERNS)} (or 'all')")
        self.redact = [re.compile(PII_PATTERNS[k]) for k in kinds]
        self.replacement = rules.output.replacement
        self.hold = max(0, rules.output.hold)

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        return cls(load_recipe(PolicyFile, path), source=str(path))

    @property
    def active(self) -> bool:
        return bool(self.input_blocked or self.output_blocked or self.redact)

    def check_input(self, texts: Iterable[str]) -> str | None:
        """The refusal message if any text matches an input rule, else None."""
        for text in texts:
            if any(p.search(text) for p in self.input_blocked):
                return self.refusal
        return None

    def redact_text(self, text: str) -> str:
        for p in self.redact:
            text = p.sub(self.replacement, text)
        return text

    def output_filter(self) -> OutputFilter:
        return OutputFilter(self)


class OutputFilter:
    """Streams text through the output rules: `feed(delta)` returns the text safe to show now,
    `finish()` the rest; `blocked` turns True when a blocked pattern appears (nothing after it is shown)."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self.pending = ""  # text received but not yet released
        self.seen = ""  # everything received, for blocked-pattern checks across chunk boundaries
        self.blocked = False

    def _blocked_at(self) -> int | None:
        starts = [m.start() for p in self.policy.output_blocked if (m := p.search(self.seen))]
        return min(starts) if starts else None

    def feed(self, delta: str) -> str:
        if self.blocked or not delta:
            return ""
        if not self.policy.active:
            return delta
        self.seen += delta
        self.pending += delta
        at = self._blocked_at()
        if at is not None:
            # Show what came before the blocked text, nothing from it on.
            self.blocked = True
            released = len(self.seen) - len(self.pending)
            out, self.pending = self.pending[:max(0, at - released)], ""
            return self.policy.redact_text(out)
        cut = len(self.pending) - self.policy.hold
        if cut <= 0:
            return ""
        # Release up to a whitespace boundary outside any PII match, so redaction sees whole items.
        spans = [m.span() for p in self.policy.redact for m in p.finditer(self.pending)]
        while cut > 0 and (not self.pending[cut - 1].isspace() or any(a < cut < b for a, b in spans)):
            cut -= 1
        if cut == 0:
            return ""
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return self.policy.redact_text(out)

    def finish(self) -> str:
        if self.blocked:
            return ""
        out, self.pending = self.pending, ""
        return self.policy.redact_text(out)


def filter_stream(policy: Policy, deltas: Iterable[str]) -> Iterator[tuple[str, bool]]:
    """Run text deltas through `policy`: yields (text, blocked) pairs; after (.., True) stop generating.
    This is the whole contract `acik chat` needs."""
    f = policy.output_filter()
    for delta in deltas:
        out = f.feed(delta)
        if out:
            yield out, False
        if f.blocked:
            yield "", True
            return
    rest = f.finish()
    if rest:
        yield rest, False
