"""Naming one process across pid reuse: its pid with its start time (`process_start`)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["process_start", "running", "start_from_stat"]


def process_start(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (Linux: field 22 of
    /proc/PID/stat), or None where that cannot be read (no such process, no /proc). With the
    pid, it names one process: a pid is reused by later processes, its start time is not."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except (OSError, ValueError):
        return None
    return start_from_stat(raw)


def start_from_stat(raw: bytes) -> int | None:
    """Field 22 (starttime) of a /proc/PID/stat line, or None if `raw` is not such a line.
    Field 2 is the command name in parentheses, which may hold spaces and ")": the fields
    after it are counted from the last ")", field 3 first."""
    try:
        value = int(raw[raw.rindex(b")") + 1 :].split()[22 - 3])
    except (ValueError, IndexError):
        return None
    return value if value >= 0 else None


def running(pid: int, start: int | None) -> bool | None:
    """Whether process `pid` runs: True when a process has that pid and, where `start` is given
    and this system tells (`process_start`), it started then; False when it is surely gone (no
    such pid, or the pid now names a process started at another time: reused); None when that
    cannot be told (an error other than "no such process", a pid out of range). Another
    user's process of that pid counts as there (its start time tells)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except (OSError, OverflowError):
        return None
    if start is not None:
        now = process_start(pid)
        if now is not None and now != start:
            return False
    return True
