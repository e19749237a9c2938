"""How run data is written for people: id lists, one rule for every message."""

from __future__ import annotations

from collections.abc import Sequence


def summarize(items: Sequence[object], limit: int = 5) -> str:
    """The first ``limit`` items, escaped, and a count of the rest: ``a, b, c (+4 more)``."""
    shown = ", ".join(escape(str(item)) for item in items[:limit])
    rest = len(items) - limit
    return f"{shown} (+{rest} more)" if rest > 0 else shown


#: C0 and C1 control characters and DEL; a terminal acts on them.
_CONTROL = {
    **{code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))},
    0x09: "\\t",
    0x0A: "\\n",
    0x0D: "\\r",
    0x1B: "\\e",
    # Line and paragraph separators, and the bidirectional overrides that make a
    # terminal show text in another order than it is.
    **{
        code: f"\\u{code:04x}"
        for code in (0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
    },
}
_CONTROL_KEEPING_LINES = {code: text for code, text in _CONTROL.items() if code not in (0x09, 0x0A)}


def escape(text: str) -> str:
    """``text`` safe to print on one line: control characters (``\\e[2J`` clears a
    screen) shown as escapes."""
    if text.isprintable():
        return text
    return text.translate(_CONTROL)


def escape_block(text: str) -> str:
    """Like :func:`escape`, keeping line breaks and tabs (failure texts)."""
    if text.isprintable():
        return text
    return text.translate(_CONTROL_KEEPING_LINES)
