"""s54c: the start time of a process (`process_start`, field 22 of /proc/PID/stat) is read
from a line whose field 2, the command name in parentheses, may hold spaces, parentheses and
any other byte; a line that is not one gives None, never an exception."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mobile_sim._proc import start_from_stat

_COMM = st.binary(max_size=16).filter(lambda b: b"\0" not in b)
_FIELD = st.integers(0, 2**63 - 1)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(pid=st.integers(1, 2**22), comm=_COMM, fields=st.lists(_FIELD, min_size=49, max_size=49))
def test_field_22_whatever_the_command_name(pid: int, comm: bytes, fields: list[int]) -> None:
    # fields[0] stands for field 3 (the state, a letter in a real line), so field 22 is 19
    line = f"{pid} (".encode() + comm + b") R " + b" ".join(b"%d" % f for f in fields[1:])
    assert start_from_stat(line + b"\n") == fields[19]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(raw=st.binary(max_size=300))
def test_anything_else_is_none_or_a_count(raw: bytes) -> None:
    got = start_from_stat(raw)
    assert got is None or (isinstance(got, int) and got >= 0)


def test_short_or_unparenthesised_lines_are_none() -> None:
    assert start_from_stat(b"") is None
    assert start_from_stat(b"12 bash S 1 2 3") is None  # no ")"
    assert start_from_stat(b"12 (bash) S 1 2 3") is None  # too few fields
    assert start_from_stat(b"12 (bash) S" + b" x" * 30) is None  # not a number
