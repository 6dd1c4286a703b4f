"""An app directory reused against a coordinator whose database was replaced (a new, empty one at
the same URL: round and task ids start again at 1).

The app directory keys its records of accepted uploads (`accepted-<r>.*`) and its pending upload
by round id (and task id), which the new database hands out again for unrelated rounds. Before,
the device asked the new coordinator about round 1 (`awaiting_round`), was assigned the new round
1, and when that round's upload was accepted the old record was taken for an earlier round of the
same id and its content put back into the residual, to be sent to the new task; a pending upload
was re-sent to the new database's round of its id. The one signal that tells the two apart is the
registration: the new database registers the device anew (`created: true`), and a coordinator that
has just registered the device holds none of its uploads. `register()` now sets the records and the
pending upload aside (forgotten as delivered), with a warning naming them. A coordinator restarted
on its own database answers `created: false`, and the records stay.

`serve` starts the coordinators, a restart at the previous one's port (the same address) tried
again while another process holds that port (tests/sdk/test_s54a_incarnation.py uses it too).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig
from sdk import Client
from sdk.client import ClientError
from tests.coordinator.test_service_support import (
    ADMIN,
    SoftmaxTrainer,
    await_assignment,
    create_task,
    local_data,
    task_config,
)

DOC = Path(__file__).parents[2] / "docs" / "devices.md"
DOC_URL = "http://127.0.0.1:8080/"


def _thread(db: Path, port: int) -> ServerThread:
    return ServerThread(
        ServiceConfig(db_path=str(db), admin_token=ADMIN, poll_s=0.05, tick_s=0.02), port=port
    )


class _BindErrors(logging.Handler):
    """The OSErrors uvicorn logs (on `uvicorn.error`) when it cannot bind, before it exits."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errors: list[OSError] = []

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, OSError):
            self.errors.append(record.msg)


def _start(db: Path, port: int) -> tuple[ServerThread | None, str]:
    """(A started coordinator on `db` at `port`, "") or, if its bind failed because another
    socket holds `port`, (None, uvicorn's error). Any other failure to start is raised."""
    thread = _thread(db, port)
    failed = _BindErrors()

    def in_use() -> bool:
        return any(e.errno == errno.EADDRINUSE for e in failed.errors)

    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        # uvicorn's thread ends with SystemExit after it logged the bind's error: the caller
        # says what that means (pytest's hook would fail the test whatever it does)
        if not (args.exc_type is SystemExit and args.thread is thread._thread and in_use()):
            previous(args)

    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addHandler(failed)
    threading.excepthook = hook
    try:
        thread.start()
    except RuntimeError:
        if not in_use():
            raise
        return None, str(failed.errors[-1])
    finally:
        threading.excepthook = previous
        uvicorn_log.removeHandler(failed)
    return thread, ""


# How long `serve` waits for the port of a restart to be free again
REBIND_S = 30.0


@contextlib.contextmanager
def serve(db: Path, port: int = 0) -> Iterator[str]:
    """A loopback coordinator on `db` at `port` (0: one the system picks) while the `with`
    lasts, as its URL. `port` is the previous coordinator's, for a restart at the same address;
    another process on the machine (a parallel test's server, or a connection given that port
    from the ephemeral range) can take it between that coordinator's stop and this bind, which
    then fails with EADDRINUSE: tried again every 0.2 s for up to REBIND_S seconds, then an
    AssertionError that says so. Any other failure to start is raised at once."""
    give_up = time.monotonic() + REBIND_S
    while (started := _start(db, port))[0] is None:
        if port == 0:
            raise AssertionError(f"the coordinator found no free port: {started[1]}")
        if time.monotonic() > give_up:
            raise AssertionError(
                f"the coordinator could not restart at port {port}: another process held it "
                f"through {REBIND_S:g} s of retries ({started[1]})"
            )
        time.sleep(0.2)
    thread = started[0]
    try:
        yield thread.url
    finally:
        thread.stop()


def _task(url: str) -> int:
    with httpx.Client(base_url=url) as http:
        return create_task(
            http, task_config(clients_per_round=1, rounds=3, deadline_s=60.0,
                              selection_timeout_s=0.2),
        )  # fmt: skip


def _offline_uploads(request: httpx.Request, nxt: Callable[..., Any]) -> Any:
    """The network drops every upload (the device keeps it pending); the rest passes."""
    if request.method == "POST" and request.url.path.endswith("/updates"):
        raise httpx.ConnectError("offline")
    return nxt(request)


def _first_life(url: str, root: Path, leave_pending: bool) -> int:
    """Round 1 of a task of the coordinator at `url`: delivered (an accepted record left, its
    outcome not asked yet), or with `leave_pending` its upload left pending. The task's id."""
    task_id = _task(url)
    x, y = local_data(1)
    mods = (_offline_uploads,) if leave_pending else ()
    with Client(url, str(root), mods=mods, retries=0, sleep=lambda s: None) as c:
        c.register()
        a = await_assignment(c, task_id)
        if leave_pending:
            with pytest.raises(ClientError):
                c.train_round(a, SoftmaxTrainer(), x, y)
        else:
            c.train_round(a, SoftmaxTrainer(), x, y)
    return task_id


@pytest.mark.parametrize("leave_pending", [False, True])
def test_a_new_database_sets_the_old_uploads_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, leave_pending: bool
) -> None:
    # Prepare: the device's first coordinator, then a new database at the same address
    root = tmp_path / "dev"
    with serve(tmp_path / "first.db") as url:
        old_task = _first_life(url, root, leave_pending)
        port = httpx.URL(url).port
    if leave_pending:
        assert (root / "pending.json").exists()
    else:
        assert (root / "accepted-1.json").exists()
    x, y = local_data(2)
    with serve(tmp_path / "second.db", port) as url2:
        assert url2 == url
        new_task = _task(url2)
        assert new_task == old_task  # ids start again: task 1, round 1
        with Client(url2, str(root), sleep=lambda s: None) as c:
            # Execute
            with caplog.at_level(logging.WARNING, logger="plume.sdk"):
                c.register()
            after_register = sorted(p.name for p in root.glob("accepted-*"))
            pending_after = (root / "pending.json").exists()
            # the device takes part in the new database's round 1 as any new device would
            report = c.participate(SoftmaxTrainer(), x, y, task_id=new_task, max_wait_s=20.0)

    # Assert: set aside at the registration, and said
    assert after_register == [] and not pending_after
    warned = [r.getMessage() for r in caplog.records if r.name == "plume.sdk"]
    assert len(warned) == 1, warned
    what = "pending upload to round 1" if leave_pending else "accepted upload to round 1"
    assert what in warned[0] and "task 1" in warned[0]
    # Since s54a the new database's incarnation tells it (and sets the residual and model
    # aside too: tests/sdk/test_s54a_incarnation.py, which checks the line docs/devices.md
    # shows); `created` alone, against a coordinator before incarnations, says it as before.
    assert "serves another database" in warned[0]
    # the new round ran from the new task's model, not resent (the old pending is gone)
    assert report is not None and report.round_id == 1 and not report.resent
    assert report.receipt.accepted
    # the only record is the new round's, of the frame just sent
    assert sorted(p.name for p in root.glob("accepted-*.json")) == ["accepted-1.json"]


def test_the_same_database_restarted_keeps_the_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: round 1 delivered, then the coordinator restarts on its own database
    root, db = tmp_path / "dev", tmp_path / "plume.db"
    with serve(db) as url:
        _first_life(url, root, leave_pending=False)
        port = httpx.URL(url).port
    with serve(db, port) as url2, Client(url2, str(root), sleep=lambda s: None) as c:
        # Execute
        with caplog.at_level(logging.WARNING, logger="plume.sdk"):
            c.register()
        held = c._core.store.accepted_rounds()
        # the record is settled as before: the restarted coordinator knows the round
        answer = c.check_in()

    # Assert
    assert held == [1]
    assert [r for r in caplog.records if r.name == "plume.sdk"] == []
    assert answer.round_outcome == "committed"
    assert not (root / "accepted-1.json").exists()


def test_a_first_registration_says_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with serve(tmp_path / "plume.db") as url, Client(url, str(tmp_path / "dev")) as c:
        with caplog.at_level(logging.WARNING, logger="plume.sdk"):
            c.register()
    assert [r for r in caplog.records if r.name == "plume.sdk"] == []


def _held() -> socket.socket:
    """A listener on a loopback port, as another process's server would hold it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_a_restart_waits_for_its_port_taken_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The port of the coordinator that stopped, bound by another process in the gap, which
    # lets it go once the restart found it taken
    taken = _held()
    port = taken.getsockname()[1]
    attempts: list[str] = []
    real_start = _start

    def start(db: Path, port: int) -> tuple[ServerThread | None, str]:
        started = real_start(db, port)
        attempts.append(started[1])
        if started[0] is None:
            taken.close()
        return started

    monkeypatch.setattr(sys.modules[__name__], "_start", start)
    with serve(tmp_path / "second.db", port) as url:
        assert url == f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    assert len(attempts) == 2 and "address already in use" in attempts[0], attempts
    assert attempts[1] == ""


def test_a_restart_whose_port_stays_taken_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.modules[__name__], "REBIND_S", 0.5)
    with _held() as taken, pytest.raises(AssertionError) as failed:
        port = taken.getsockname()[1]
        with serve(tmp_path / "second.db", port):
            pass
    assert f"could not restart at port {port}: another process held it through 0.5 s" in str(
        failed.value
    )
    assert "address already in use" in str(failed.value)
