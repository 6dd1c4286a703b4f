"""One status line on stderr for the slow steps of a `plume sim` run outside its rounds:
loading the data, building the model, starting pool workers or Ray, writing the plots.

Off unless a caller turns it on with `status_line(True)`; `plume sim` does so under the same
condition as its progress bar (a terminal on stderr, no --no-progress), so a log or a pipe gets
nothing extra. The line is rewritten in place and erased (`clear`) before anything else is
printed: the progress bar, the table, an error.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

__all__ = ["status_line", "say", "clear"]

_stream: TextIO | None = None
_shown = False
_ERASE = "\r\x1b[K"  # back to the line's start, erase to its end


@contextmanager
def status_line(enabled: bool) -> Iterator[None]:
    """Show `say`'s lines on stderr while in this block (if `enabled`); erased at its end."""
    global _stream
    previous = _stream
    _stream = sys.stderr if enabled else None
    try:
        yield
    finally:
        clear()
        _stream = previous


def say(text: str) -> None:
    """Replace the status line with `text...` (nothing when no status line is on)."""
    global _shown
    if _stream is None:
        return
    _stream.write(f"{_ERASE}{text}...")
    _stream.flush()
    _shown = True


def clear() -> None:
    """Erase the status line, if one is showing."""
    global _shown
    if _stream is not None and _shown:
        _stream.write(_ERASE)
        _stream.flush()
    _shown = False
