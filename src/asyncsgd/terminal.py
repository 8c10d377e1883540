"""The terminal's transient status line: shown while the command loads or prepares (PyTorch, the
task), replaced by the next output, and erased before an error, so that bad input stays one line
on stderr. On a terminal only: written to a file or a pipe it would be a line of its own."""

from __future__ import annotations

import sys

_showing = False  # a transient line is on the terminal (the next output replaces it)


def transient(text: str) -> None:
    """Show `[asyncsgd] text` until the next output (on a terminal; nothing elsewhere)."""
    global _showing
    if sys.stderr.isatty():
        print(f"\r\x1b[K[asyncsgd] {text}", end="", file=sys.stderr, flush=True)
        _showing = True


def erase() -> None:
    """Remove the transient line, if one is showing (before an error, or a line of its own)."""
    global _showing
    if _showing:
        print("\r\x1b[K", end="", file=sys.stderr, flush=True)
        _showing = False
