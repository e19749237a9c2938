"""How run data is written for people: id lists, one rule for every message."""

from __future__ import annotations

from collections.abc import Sequence


def summarize(items: Sequence[object], limit: int = 5) -> str:
    """The first ``limit`` items and a count of the rest: ``a, b, c (+4 more)``."""
    shown = ", ".join(str(item) for item in items[:limit])
    rest = len(items) - limit
    return f"{shown} (+{rest} more)" if rest > 0 else shown
