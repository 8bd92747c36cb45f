"""Personal data: e-mail addresses, IP addresses and phone numbers become placeholders, and are counted."""

from __future__ import annotations

import ipaddress
import re
from collections import Counter

EMAIL_PLACEHOLDER = "<EMAIL>"
IP_PLACEHOLDER = "<IP_ADDRESS>"
PHONE_PLACEHOLDER = "<PHONE>"

EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.]|\.\d)")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{1,4}(?![\w:])")
# International or national numbers written with separators: +1 (555) 123-4567, 030 1234 5678.
PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}(?![\w-])"
)

# Addresses that identify no one (loopback, documentation, private ranges) stay as they are.
_KEEP_IPS = ("127.", "0.0.0.0", "255.255.255.255")


def _ip_repl(counts: Counter):
    def repl(m: re.Match) -> str:
        s = m.group(0)
        try:
            ip = ipaddress.ip_address(s)
        except ValueError:
            return s
        if s.startswith(_KEEP_IPS) or ip.is_private or ip.is_loopback or ip.is_unspecified:
            return s
        counts["ip"] += 1
        return IP_PLACEHOLDER

    return repl


def _phone_repl(counts: Counter):
    def repl(m: re.Match) -> str:
        s = m.group(0)
        digits = sum(c.isdigit() for c in s)
        # Dates, versions and ranges also have digit groups; a phone number has 9-15 digits and
        # either a leading + or (area code), or at least two separators of the same kind.
        seps = [c for c in s if c in " .-"]
        looks_like = s.startswith("+") or "(" in s or (len(seps) >= 2 and len(set(seps)) == 1)
        if not 9 <= digits <= 15 or not looks_like or re.fullmatch(r"\d{4}-\d{2}-\d{2}", s):
            return s
        counts["phone"] += 1
        return PHONE_PLACEHOLDER

    return repl


def scrub(text: str, cfg, counts: Counter | None = None) -> tuple[str, Counter]:
    """Replace PII in `text` by placeholders; `counts` gains one per replacement by kind."""
    counts = Counter() if counts is None else counts
    if cfg.email:
        text, n = EMAIL.subn(EMAIL_PLACEHOLDER, text)
        counts["email"] += n
    if cfg.ip:
        text = IPV4.sub(_ip_repl(counts), text)
        text = IPV6.sub(_ip_repl(counts), text)
    if cfg.phone:
        text = PHONE.sub(_phone_repl(counts), text)
    return text, counts
