"""The app-directory lock's guard, continued: where `with _Guarded()` may sit (a frame that lets
the with statement's exceptions go on), and giving back the hold of a region that is gone when
freeing that region's frame runs finalizers."""

from __future__ import annotations

import ast
import functools
import os
import sys
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sdk import device_store
from sdk.device_store import DeviceStore

_WAIT_S = 5.0


def _guarded_withs_that_are_caught(source: str) -> list[str]:
    """Each `with _Guarded()` of `source` that sits, in its own function, inside something that
    can catch or swallow an exception of the with statement: a `try` with `except` handlers (or
    a `finally` that returns, breaks or continues) around it, or a `with contextlib.suppress`.
    Such a frame outlives an interrupt at `__exit__`'s entry: its hold would be judged running
    (the region is the frame) and never be freed. As "<function>:<line>"."""
    found: list[str] = []

    def is_guarded(item: ast.withitem) -> bool:
        call = item.context_expr
        return isinstance(call, ast.Call) and (
            (isinstance(call.func, ast.Name) and call.func.id == "_Guarded")
            or (isinstance(call.func, ast.Attribute) and call.func.attr == "_Guarded")
        )

    def is_suppress(item: ast.withitem) -> bool:
        call = item.context_expr
        func = call.func if isinstance(call, ast.Call) else call
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        return name == "suppress"

    def swallows(final: list[ast.stmt]) -> bool:
        return any(
            isinstance(node, ast.Return | ast.Break | ast.Continue)
            for stmt in final
            for node in ast.walk(stmt)
        )

    def visit(node: ast.AST, where: str, catching: bool) -> None:
        """`catching`: whether something of `where`'s frame around `node` catches."""
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            where, catching = node.name, False  # a frame of its own
        elif isinstance(node, ast.Lambda):
            where, catching = "<lambda>", False
        elif isinstance(node, ast.Try | ast.TryStar):
            caught = catching or bool(node.handlers) or swallows(node.finalbody)
            for stmt in node.body:
                visit(stmt, where, caught)
            for part in (node.handlers, node.orelse, node.finalbody):
                for stmt in part:
                    visit(stmt, where, catching)
            return
        elif isinstance(node, ast.With | ast.AsyncWith):
            if catching and any(is_guarded(item) for item in node.items):
                found.append(f"{where}:{node.lineno}")
            if any(is_suppress(item) for item in node.items):
                for stmt in node.body:
                    visit(stmt, where, True)
                return
        for child in ast.iter_child_nodes(node):
            visit(child, where, catching)

    visit(ast.parse(source), "<module>", False)
    return found


def test_the_checker_finds_a_guarded_with_a_frame_catches() -> None:
    # Prepare: each way a frame can catch its with statement's exception, and ways it cannot
    caught = """
def a():
    try:
        with _Guarded():
            pass
    except KeyboardInterrupt:
        pass
def b():
    for _ in range(2):
        try:
            if True:
                with device_store._Guarded():
                    pass
        finally:
            continue
def c():
    with contextlib.suppress(Exception):
        with _Guarded():
            pass
def d():
    try:
        for _ in ():
            with _Guarded():
                pass
    except* ValueError:
        pass
"""
    fine = """
def e():
    try:
        with _Guarded():
            pass
    finally:
        os.close(fd)
def f():
    try:
        pass
    except Exception:
        with _Guarded():
            pass
    try:
        def inner():
            with _Guarded():
                pass
    except Exception:
        pass
    with _Guarded():
        try:
            pass
        except Exception:
            pass
"""

    # Execute / Assert
    assert _guarded_withs_that_are_caught(caught) == ["a:4", "b:12", "c:18", "d:23"]
    assert _guarded_withs_that_are_caught(fine) == []


def test_no_guarded_with_in_device_store_sits_where_its_frame_catches_the_exception() -> None:
    # Prepare
    source = Path(device_store.__file__).read_text(encoding="utf-8")

    # Execute
    found = _guarded_withs_that_are_caught(source)

    # Assert: every `with _Guarded()` ends its region with its frame (and there are some)
    assert found == [], f"`with _Guarded()` inside a try that catches, in {found}"
    assert source.count("with _Guarded():") >= 4
    assert "exception of the with statement" in (device_store._Guarded.__doc__ or "")


@pytest.fixture
def fresh_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[Any, Any]]:
    """The guard's state, fresh for the test (a guard a failing run leaves held stays with it)."""
    monkeypatch.setattr(device_store, "_HOLDS_GUARD", threading.Lock())
    monkeypatch.setattr(device_store, "_GUARD_OWNER", [])
    monkeypatch.setattr(device_store, "_RELEASES", type(device_store._RELEASES)())
    holds: dict[Any, Any] = {}
    monkeypatch.setattr(device_store, "_HOLDS", holds)
    yield holds
    for hold in holds.values():
        if hold.fd >= 0:
            fd, hold.fd = hold.fd, -1
            os.close(fd)


class _Kept:
    """A local of the region whose finalizer opens and closes a store (as a dropped Client's
    store's release, or an app's own finalizer, may)."""


def test_giving_back_a_gone_regions_guard_runs_its_frames_finalizers_after_the_release(
    tmp_path: Path, fresh_guard: dict[Any, Any]
) -> None:
    # Prepare: a region of this thread took the guard and is gone without giving it back (as
    # after an interrupt at `__exit__`'s entry, once the exception was handled): the guard's
    # record holds the last reference to its frame, whose local has a finalizer that opens and
    # closes a store.
    out: list[object] = []

    def finalizer() -> None:
        try:
            DeviceStore(tmp_path / "from-finalizer").close()
            out.append("opened")
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out.append(exc)

    def region() -> None:
        kept = _Kept()
        weakref.finalize(kept, finalizer)
        device_store._take(True, sys._getframe())

    def give_back() -> None:
        region()
        assert device_store._guard_is_mine() and not device_store._held_here()
        # Execute: this thread gives it back (as `_drain`'s `finally` does for it)
        device_store._give()

    thread = threading.Thread(target=give_back, daemon=True)
    thread.start()
    thread.join(_WAIT_S)

    # Assert: the finalizer ran once the guard was free (it did not wait for ever for a guard
    # held with no holder recorded), and the guard is free.
    assert not thread.is_alive(), "the finalizer waits for ever for the guard _give held"
    assert out == ["opened"]
    assert not device_store._HOLDS_GUARD.locked() and device_store._GUARD_OWNER == []
    assert functools.reduce(lambda n, h: n + h.users, fresh_guard.values(), 0) == 0
