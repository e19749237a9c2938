"""API tokens and rate limits of ``pytest-runs serve``, without the server's
dependencies: ``pytest-runs token`` uses them too.

A token is ``prr_`` and 43 random URL-safe characters; the store keeps only its
SHA-256 (a token has 256 bits of entropy, so a plain hash cannot be reversed).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

TOKEN_PREFIX = "prr_"
_TOKEN = re.compile(r"^prr_[A-Za-z0-9_-]{43}$")
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day)\s*$")
_PERIODS = {"second": 1, "minute": 60, "hour": 3600, "day": 86_400}


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def looks_like_token(text: str) -> bool:
    return bool(_TOKEN.match(text))


@dataclass(frozen=True)
class RateLimit:
    """At most ``requests`` per ``period`` seconds for each token (a fixed window)."""

    requests: int
    period: int

    def window_start(self, now: float) -> int:
        return int(now // self.period) * self.period

    def __str__(self) -> str:
        unit = {v: k for k, v in _PERIODS.items()}[self.period]
        return f"{self.requests}/{unit}"


def parse_rate_limit(text: str) -> RateLimit:
    """``600/minute`` (``second``, ``minute``, ``hour`` or ``day``)."""
    match = _RATE.match(text)
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"{text!r} is not a rate like 600/minute")
    return RateLimit(int(match.group(1)), _PERIODS[match.group(2)])
