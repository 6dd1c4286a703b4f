"""Every bound of the SDK is measured on CLOCK_BOOTTIME where the platform has it.

time.monotonic (CLOCK_MONOTONIC on Linux) stops while the device is suspended, so a phone that
slept through its wait found `max_wait_s`, a round's deadline or a response's budget as far
off as before it slept: it went on checking in, or polling a round that had ended, for as long
as it had slept. The SDK now reads one clock, `sdk.client._tick`, which is CLOCK_BOOTTIME where
the platform has it (it counts the sleep), else time.monotonic. A suspend is simulated here
by a CLOCK_BOOTTIME (time.clock_gettime, patched) that jumps while the device "sleeps"."""

from __future__ import annotations

import ast
import asyncio
import json
import time
import types
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest

import sdk
import sdk.client as client_mod
from protocol.secagg import Stage
from sdk import AsyncClient, Client

from .test_client import SPEC
from .test_h61_inflight import secure_task
from .test_h64_secure_deadline import LIMIT, Stalling

BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)
needs_boottime = pytest.mark.skipif(BOOTTIME is None, reason="no CLOCK_BOOTTIME here")


class Suspends:
    """A device that is suspended for `seconds` each time it sleeps: CLOCK_BOOTTIME and the
    wall clock jump by that much, CLOCK_MONOTONIC does not move."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
        assert BOOTTIME is not None
        self.seconds = seconds
        self.slept = 0.0
        self.sleeps = 0
        real = time.clock_gettime

        def clock_gettime(clock_id: int) -> float:
            return real(clock_id) + (self.slept if clock_id == BOOTTIME else 0.0)

        monkeypatch.setattr(time, "clock_gettime", clock_gettime)

        async def asleep(seconds: float) -> None:
            self.sleep(seconds)
            await asyncio.sleep(0)

        patched = types.SimpleNamespace(**{**vars(asyncio), "sleep": asleep})
        monkeypatch.setattr(client_mod, "asyncio", patched)

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.slept += self.seconds

    def wall(self) -> float:
        return time.time() + self.slept


class Waiting:
    """A coordinator whose check-ins answer "wait 100 s", then 404 after `limit` of them."""

    def __init__(self, limit: int = 3) -> None:
        self.limit = limit
        self.check_ins = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/checkin", request.url.path
        self.check_ins += 1
        if self.check_ins > self.limit:
            return httpx.Response(404, json={"reason": "not_found", "detail": "enough"})
        body = {"action": "wait", "retry_after_s": 100.0}
        return httpx.Response(200, content=json.dumps(body).encode())


class _Trainer:
    def train(self, *args: object, **kw: object) -> object:
        raise AssertionError("never assigned")


@needs_boottime
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_max_wait_s_counts_the_time_the_device_slept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    # Prepare: told to wait 100 s, the device is suspended 700 s in that wait; max_wait_s 600
    device = Suspends(monkeypatch, 700.0)
    handler = Waiting()
    x, y = np.zeros((1, 4), np.float32), np.zeros(1, np.int64)

    # Execute
    if kind == "sync":
        with Client(
            "http://c", str(tmp_path), transport=httpx.MockTransport(handler),
            sleep=device.sleep, clock=device.wall,
        ) as c:  # fmt: skip
            got = c.participate(_Trainer(), x, y, max_wait_s=600.0)  # type: ignore[arg-type]
    else:

        async def go() -> object:
            async with AsyncClient(
                "http://c", str(tmp_path), transport=httpx.MockTransport(handler),
                clock=device.wall,
            ) as c:  # fmt: skip
                return await c.participate(_Trainer(), x, y, max_wait_s=600.0)  # type: ignore[arg-type]

        got = asyncio.run(go())

    # Assert: the wait is over once it wakes; no second check-in. Before, the 700 s asleep
    # did not count: it checked in again (until the 404 raised ClientError)
    assert got is None
    assert handler.check_ins == 1 and device.sleeps == 1


@needs_boottime
def test_a_secure_round_deadline_counts_the_time_the_device_slept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the round is due in 60 s; its advertise-keys poll is answered 503 for ever, and
    # each wait before a retry suspends the device 30 s
    device = Suspends(monkeypatch, 30.0)
    handler = Stalling("GET", f"/stages/{Stage.ADVERTISE_KEYS}")
    a = replace(secure_task(1, 101), deadline_unix=device.wall() + 60.0)
    delta = np.full(SPEC.size, 0.05, np.float32)

    # Execute
    with Client(
        "http://c", str(tmp_path), transport=httpx.MockTransport(handler), retries=1000,
        sleep=device.sleep, clock=device.wall,
    ) as c:  # fmt: skip
        report = c.secure_round(a, lambda p: (delta, 8, 0.0))

    # Assert: given up after the waits that reach the deadline. Before, the sleeps did not
    # count: it polled on (LIMIT 503s, then the 404 raised ClientError)
    assert not report.completed
    assert "deadline" in report.detail, report.detail
    assert handler.stalled <= 2 < LIMIT


# -- the clock itself ---------------------------------------------------------------------------


@needs_boottime
def test_the_clock_is_clock_boottime_where_there_is_one() -> None:
    assert BOOTTIME is not None
    before = time.clock_gettime(BOOTTIME)
    tick = client_mod._tick()
    after = time.clock_gettime(BOOTTIME)
    assert before <= tick <= after


def test_without_clock_boottime_the_clock_is_time_monotonic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(time, "CLOCK_BOOTTIME", raising=False)
    assert client_mod._boot_clock() is time.monotonic


@needs_boottime
def test_a_refused_clock_boottime_falls_back_to_time_monotonic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A kernel or sandbox that refuses the clock id (EINVAL) at the first read
    def refuse(clock_id: int) -> float:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(time, "clock_gettime", refuse)
    assert client_mod._boot_clock() is time.monotonic


# -- what reads a clock: every module a device runs, found from the package -------------------

# Modules of the package that no device runs: `plume export`'s command line and the ONNX
# exporter run on a workstation (the export's elapsed-time display reads time.monotonic). A
# device module that imports one of them fails `test_no_device_module_imports_a_workstation_one`.
NOT_ON_A_DEVICE = {
    "sdk._cli": "plume export's command line (a workstation tool)",
    "sdk.onnx_export": "writes the training artifacts, on a workstation",
}
# Reads of a clock that stops while the device sleeps, each meant: the clock's own fallback,
# and the wait for another thread's garbage collection (`DeviceStore.claim`), which stops while
# the device sleeps as that collection does; on CLOCK_BOOTTIME a suspend in that wait would end
# it at once, and the claim would be refused (AppDirInUse) with the collection unfinished.
STOPS_ASLEEP_ON_PURPOSE = {
    ("sdk.client", "_boot_clock"),
    ("sdk.device_store", "_collect"),
}
# time's clocks that do not count a suspend on Linux (CLOCK_MONOTONIC underneath).
_STOPS_ASLEEP = frozenset({"monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns"})
_SDK = Path(sdk.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(_SDK.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sdk_modules() -> dict[str, Path]:
    """Every module of the package, from its files (nothing imported: sdk.ort imports
    onnxruntime), so a module added later is scanned without a change here."""
    return {_module_name(path): path for path in sorted(_SDK.rglob("*.py"))}


def _device_modules() -> dict[str, Path]:
    return {m: p for m, p in _sdk_modules().items() if m not in NOT_ON_A_DEVICE}


def _stops_asleep_reads(source: str) -> list[tuple[str, int]]:
    """(the enclosing function's dotted name, "" at module level; line) of each use of a
    clock that stops while the device sleeps: `time.monotonic` (called or passed on, as
    `clock=time.monotonic`), under any name `time` is imported as, and `from time import
    monotonic`. Comments and strings are not code: read from the syntax tree."""
    tree = ast.parse(source)
    # The names `time` is bound to, wherever the import stands (a function's own import too).
    aliases = {
        a.asname or a.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for a in node.names
        if a.name == "time"
    }
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, where: tuple[str, ...]) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            where = (*where, node.name)
        if isinstance(node, ast.ImportFrom) and node.module == "time" and not node.level:
            if any(a.name in _STOPS_ASLEEP for a in node.names):
                found.append((".".join(where), node.lineno))
        elif (
            isinstance(node, ast.Attribute)
            and node.attr in _STOPS_ASLEEP
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            found.append((".".join(where), node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child, where)

    visit(tree, ())
    return found


def _sdk_imports(module: str, path: Path) -> set[str]:
    """The package's modules `module` imports, at its top or inside a function."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            names = [f"{base}.{a.name}" for a in node.names]
            out.update(n for n in [base, *names] if n == "sdk" or n.startswith("sdk."))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "sdk")
    return out


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("import time\nt = time.monotonic()\n", [("", 2)]),
        # a default is counted to its function: the clock it bounds by
        ("import time\ndef f(clock=time.monotonic): pass\n", [("f", 2)]),
        ("import time as t\nclass C:\n    def f(self): return t.perf_counter_ns()\n", [("C.f", 3)]),
        ("from time import monotonic as m\n", [("", 1)]),
        ("def f():\n    return time.monotonic()\nimport time\n", [("f", 2)]),
        ("def f():\n    import time\n    return time.monotonic()\n", [("f", 3)]),
        ("import time\n# time.monotonic() in a comment\n'time.monotonic()'\n", []),
        ("import time\nloop_time = time.clock_gettime(time.CLOCK_BOOTTIME)\n", []),
        ("class X:\n    monotonic = 1\nX.monotonic\n", []),
    ],
)
def test_the_scan_finds_every_spelling_of_a_clock_that_stops_asleep(
    source: str, found: list[tuple[str, int]]
) -> None:
    assert _stops_asleep_reads(source) == found


def test_nothing_a_device_runs_reads_a_clock_that_stops_while_it_sleeps() -> None:
    # One clock for every bound (`sdk.client._tick`): a direct time.monotonic would stop while
    # the phone sleeps. Before, only sdk.client and sdk.secure were read, for the text
    # "time.monotonic()"; every module of the package is now, but the workstation ones.
    modules = _device_modules()
    assert {"sdk", "sdk.client", "sdk.secure", "sdk.device_store", "sdk.ort._runtime"} <= set(
        modules
    )
    seen: set[tuple[str, str]] = set()
    stray: list[str] = []
    for module, path in modules.items():
        for where, line in _stops_asleep_reads(path.read_text()):
            # Anywhere inside a function read on purpose (its nested functions too).
            meant = next(
                (k for k in STOPS_ASLEEP_ON_PURPOSE if k[0] == module and
                 (where == k[1] or where.startswith(k[1] + "."))),
                None,
            )  # fmt: skip
            if meant is None:
                stray.append(f"{path.relative_to(_SDK.parent)}:{line} ({where or 'module'})")
            else:
                seen.add(meant)
    assert not stray, "read sdk.client._tick instead: " + ", ".join(stray)
    # Each exception still reads such a clock (else it is stale: drop it).
    assert seen == STOPS_ASLEEP_ON_PURPOSE


def test_no_device_module_imports_a_workstation_one() -> None:
    # What the scan leaves out must stay off devices: no module it reads imports one.
    modules = _sdk_modules()
    assert set(NOT_ON_A_DEVICE) <= set(modules), "a workstation module is gone: drop it"
    imports = {
        module: sorted(_sdk_imports(module, path) & set(NOT_ON_A_DEVICE))
        for module, path in _device_modules().items()
    }
    assert not {m: i for m, i in imports.items() if i}
