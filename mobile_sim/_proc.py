"""Naming one process across pid reuse: its pid with its start time (`process_start`)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["process_start", "start_from_stat"]


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
