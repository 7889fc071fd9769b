"""Quoting text that came from a file, a key or a path in an error message: the one place
every such fragment is cut short and made printable, so an error stays one readable line
whatever bytes the input holds (a zip member name of raw bytes, a 1 MB key, a path with a
newline in it)."""

from __future__ import annotations

from ..errors import printable  # the one escaping, used by the error classes themselves too

MAX_MESSAGE = 400  # characters of an error message; longer ones are clipped
MAX_NAME = 80  # characters of a name (a key, a member) quoted in a message
MAX_PATH = 160  # characters of a path quoted in a message (its head and its tail are kept)
MAX_QUOTE = 120  # characters of another library's message, which may quote a file's raw bytes

__all__ = ["printable", "clip", "brief", "shown", "shown_path", "MAX_MESSAGE", "MAX_NAME", "MAX_PATH", "MAX_QUOTE"]


def clip(text: object, limit: int = MAX_MESSAGE) -> str:
    """`text` printable and cut to `limit` characters, with a note of how much was left out."""
    text = printable(str(text))
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def brief(value: object, depth: int = 0) -> str:
    """A short rendering of a value from a file, made here, never through its own repr():
    a pickle can build values whose repr() is astronomically long."""
    if isinstance(value, str):
        return repr(value[:MAX_NAME] + ("..." if len(value) > MAX_NAME else ""))
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if value is None or isinstance(value, (bool, float)):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 256 else f"<integer of {value.bit_length()} bits>"
    if isinstance(value, (tuple, list)):
        open_, close = ("(", ")") if isinstance(value, tuple) else ("[", "]")
        if depth >= 2:
            return f"{open_}...{close}"
        items = [brief(v, depth + 1) for v in value[:8]] + (["..."] if len(value) > 8 else [])
        return open_ + ", ".join(items) + ("," if len(value) == 1 and open_ == "(" else "") + close
    return f"<{type(value).__name__}>"


def shown(name: object) -> str:
    """A name from a file, quoted for a message: printable and at most MAX_NAME characters."""
    text = name if isinstance(name, str) else brief(name)
    if len(text) > MAX_NAME:
        text = f"{text[:MAX_NAME]}...({len(text)} characters)"
    return repr(text) if not text.isprintable() else f"'{text}'"


def shown_path(path: object) -> str:
    """A path for a message, unquoted: printable, and at most MAX_PATH characters (the
    middle of a longer one left out: its start says where, its end which file)."""
    import os

    try:
        text = os.fsdecode(path) if isinstance(path, (bytes, os.PathLike)) else str(path)
    except (TypeError, ValueError):
        text = brief(path)
    text = printable(text)
    if len(text) <= MAX_PATH:
        return text
    head, tail = MAX_PATH // 3, MAX_PATH * 2 // 3 - 20
    return f"{text[:head]}...({len(text) - head - tail} characters)...{text[-tail:]}"
