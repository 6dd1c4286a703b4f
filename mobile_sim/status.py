"""One status line on stderr for the slow steps of a `plume sim` run outside its rounds:
loading the data, building the model, starting pool workers or Ray, writing the plots.

Off unless a caller turns it on with `status_line(True)`; `plume sim` does so under the same
condition as its progress bar (a terminal on stderr, no --no-progress), so a log or a pipe gets
nothing extra. The line is rewritten in place and erased (`clear`) before anything else is
printed: the progress bar, the table, an error.

One step is long enough to look like a hang in a log too: starting a pool's or Ray's workers
(tens of seconds on a loaded machine). `note` says it as a status line on a terminal and, under
`status_line(False, notes=True)` (`plume sim` without a terminal, no --no-progress), as one
plain line on stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

__all__ = ["status_line", "say", "note", "clear"]

_stream: TextIO | None = None
_notes: TextIO | None = None  # where `note` prints its plain lines, without a status line
_shown = False
_ERASE = "\r\x1b[K"  # back to the line's start, erase to its end


@contextmanager
def status_line(enabled: bool, notes: bool = False) -> Iterator[None]:
    """Show `say`'s lines on stderr while in this block (if `enabled`); erased at its end.
    `notes` (without `enabled`): `note`'s texts are plain lines on stderr instead."""
    global _stream, _notes
    previous = _stream, _notes
    _stream = sys.stderr if enabled else None
    _notes = sys.stderr if notes and not enabled else None
    try:
        yield
    finally:
        clear()
        _stream, _notes = previous


def note(text: str, prog: str = "plume sim") -> None:
    """A slow step worth a line in a log too: `say(text)` on a terminal; a plain line
    `prog: text...` where `status_line` turned notes on; else nothing."""
    if _stream is not None:
        say(text)
    elif _notes is not None:
        _notes.write(f"{prog}: {text}...\n")
        _notes.flush()


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
