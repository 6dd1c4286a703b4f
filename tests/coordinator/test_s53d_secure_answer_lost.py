"""A SIGKILL inside a secure round's publish can overtake the answer to an unmask upload: the
close starts once the last unmask message is taken, while that upload's answer is still on its
way out, and a publish paused at `during_publish` holds the store, which the event loop waits
for at its next write (test_service_secure_restart's `_round_killed_in_publish`). On a loaded
machine that happens by itself; here the coordinator process withholds the answer to the upload
that started the close, so the device always loses it. That device takes part in the next
round after the restart like the others, and the crashed round still counts in epsilon.

Run as a module (`python -m tests.coordinator.test_s53d_secure_answer_lost coordinator serve
...`), this file is that coordinator: `plume`'s CLI with the withholding middleware outside the
app."""

from __future__ import annotations

import asyncio
import contextvars
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sdk.client import CoordinatorUnreachable, SecureRoundReport

from ._secure_service import secure_dp_task, secure_round_of
from .test_service_support import (
    ADMIN,
    admin_get,
    create_task,
    device_client,
    start_logged,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
# Per request (each runs in its own task, with its own copy of the context): set once the
# request's upload started its round's close (`Coordinator.schedule_close`).
_CLOSING: contextvars.ContextVar[dict[str, bool]] = contextvars.ContextVar("s53d_closing")


class _WithholdClosingAnswer:
    """ASGI middleware: the answer to the request that started a round's close never starts
    (it waits until the process is killed); every other request passes through unchanged."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        mark: dict[str, bool] = {}
        _CLOSING.set(mark)

        async def held(message: Any) -> None:
            if message["type"] == "http.response.start" and mark.get("closing"):
                await asyncio.Event().wait()  # never set: the test kills the process
            await send(message)

        await self.app(scope, receive, held)


def _serve_withholding(argv: list[str]) -> int:
    """`plume` with `_WithholdClosingAnswer` outside the app it serves."""
    from coordinator import cli
    from coordinator.service import rounds, server

    schedule = rounds.Coordinator.schedule_close

    def schedule_close(self: rounds.Coordinator, rt: Any) -> None:
        mark = _CLOSING.get(None)
        if mark is not None:
            mark["closing"] = True
        schedule(self, rt)

    rounds.Coordinator.schedule_close = schedule_close  # type: ignore[method-assign]
    config = server.uvicorn_config

    def withholding_config(app: Any, *args: Any, **kwargs: Any) -> Any:
        return config(_WithholdClosingAnswer(app), *args, **kwargs)

    server.uvicorn_config = withholding_config  # type: ignore[assignment]
    return cli.main(argv)


@contextmanager
def _withholding_coordinator(
    db: Path, fault_file: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """This module as a coordinator process on `db`, pausing inside its first publish; (its
    URL, the process), killed on the way out."""
    env = dict(os.environ, PLUME_FAULT_PAUSE_AT="during_publish", PLUME_FAULT_FILE=str(fault_file))
    url, proc = start_logged(
        [
            sys.executable, "-m", __name__, "coordinator", "serve", "--db", str(db),
            "--port", "0", "--admin-token", ADMIN, "--poll", "0.05",
        ],
        db.parent / "withholding.log",
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_a_device_whose_unmask_answer_the_kill_overtook_takes_part_in_the_next_round(
    tmp_path: Path,
) -> None:
    from .test_service_persistence import coordinator
    from .test_service_secure_restart import _round_killed_in_publish

    # Prepare: round 1 of a secure DP task, its publish paused and the process killed there,
    # the answer to the unmask upload that started its close never sent
    db, fault_file = tmp_path / "plume.db", tmp_path / "fault"
    dirs = [str(tmp_path / f"dev{i}") for i in range(3)]
    with _withholding_coordinator(db, fault_file) as (url, proc):
        task_id = create_task(url, secure_dp_task(rounds=2))
        clients = [device_client(url, d, retries=0) for d in dirs]
        for c in clients:
            c.register()
        ends = _round_killed_in_publish(clients, task_id, proc, fault_file)
    for c in clients:
        c.close()
    # Execute: restart on the same database; the same app directories run round 2
    with coordinator(db, None, fault_file) as (url, _proc):
        crashed = admin_get(url, "/v1/rounds/1")
        clients = [device_client(url, d) for d in dirs]
        reports = secure_round_of(clients, task_id)
        done = wait_until(url, f"/v1/admin/tasks/{task_id}", "state", "done")
        round2 = admin_get(url, "/v1/rounds/2")
    # Assert: the device whose upload started the close lost its answer (any other answer the
    # kill overtook is lost the same way: on a loaded machine it can); the rest have receipts
    lost = [e for e in ends if not isinstance(e, SecureRoundReport)]
    assert len(ends) == 3 and lost
    for e in lost:
        assert isinstance(e, CoordinatorUnreachable), repr(e)
        assert e.request is not None
        assert (e.request.method, e.request.url.path) == (
            "POST",
            "/v1/secure/rounds/1/stages/unmask",
        )
    assert all(e.completed for e in ends if isinstance(e, SecureRoundReport))
    # ... round 1 was abandoned at the restart, its release counted (all 3 masked inputs were
    # in: the sum could be unmasked); round 2 ran with all 3 devices and published version 1
    assert crashed["state"] == "abandoned" and "restarted" in crashed["measurements"]["abandoned"]
    assert crashed["measurements"]["dp"]["rounds"] == 1
    assert crashed["measurements"]["dp"]["survivors"] == 3
    assert all(r.completed for r in reports)
    assert round2["state"] == "committed" and round2["reports"] == 3
    assert round2["measurements"]["dp"]["rounds"] == 2
    assert done["version"] == 1 and done["rounds_committed"] == 1


if __name__ == "__main__":
    raise SystemExit(_serve_withholding(sys.argv[1:]))
