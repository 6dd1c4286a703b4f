"""`plume coordinator serve --log-level` governs the coordinator's own log lines
(`plume.coordinator`), as its help and docs/operations.md say. Before, nothing configured that
logger in the serve process: its INFO lines (a round opened, frames pruned, a task loaded
again) were never shown at any level, and its warnings and errors reached stderr through
Python's last-resort handler, bare (no level) and even under `--log-level critical`.
A subprocess, as an operator runs it (uvicorn reconfigures the logging of its process)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.service import AdminClient, ServerThread, ServiceConfig
from protocol.messages import TaskConfig, TensorShape
from tests.coordinator.test_service_support import ServeProcess
from tests.test_h74_operator import _plume

ADMIN = "s3cret-h113"
# A dp task accounted over a population of 50 devices: a coordinator whose pool holds fewer
# (--max-checkin-rate x --pool-ttl / 2) warns at start that it may never open a round.
DP_TASK = TaskConfig(
    name="dp", model_name="tiny", spec=[TensorShape("w", [10])], rounds=1, clients_per_round=2,
    over_selection=1.0, aggregator="dp:clip=1,z=1,population=50,sample=2,denom=2+fedavg",
    codec={"topk": 1.0, "bits": 32, "error_feedback": False},
)  # fmt: skip
SHORT_POOL = ["--max-checkin-rate", "1", "--pool-ttl", "1"]


@pytest.fixture(scope="module")
def dp_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database holding DP_TASK, made by an in-process coordinator."""
    db = tmp_path_factory.mktemp("h113log") / "dp.db"
    with (
        ServerThread(ServiceConfig(db_path=str(db), admin_token=ADMIN)) as url,
        AdminClient(url, ADMIN) as admin,
    ):
        assert admin.create_task(DP_TASK, np.zeros(10, np.float32)) == 1
    return db


def _serve_then_stop(
    db: Path, *flags: str, stdout: bool = False, both: bool = False, logged: bool = True
) -> Any:
    """stderr (or stdout, where uvicorn's access log goes) of `plume coordinator serve` on
    `db` with `flags`, stopped by SIGTERM once up; `both`: (stdout, stderr). `logged=False`:
    `flags` set a log level that hides uvicorn's `Uvicorn running on` line."""
    cmd = [*_plume(), "coordinator", "serve", "--db", str(db), "--port", "0", *flags]
    env = {**os.environ, "PLUME_ADMIN_TOKEN": ADMIN, "PLUME_DEBUG": ""}
    with ServeProcess(cmd, env=env) as proc:
        try:
            proc.healthy_url(logged=logged)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    return (out, err) if both else out if stdout else err


def test_the_coordinators_lines_are_shown_at_info_with_their_level(dp_db: Path) -> None:
    out, err_text = _serve_then_stop(dp_db, *SHORT_POOL, both=True)
    err = err_text.splitlines()
    # uvicorn's access log (on by default): the start's health probes, on stdout
    assert '"GET /healthz HTTP/1.1" 200' in out, out
    # A warning, prefixed as uvicorn's lines are
    warnings = [line for line in err if "may never open a round" in line]
    assert len(warnings) == 1, err
    assert warnings[0].startswith("WARNING:  task 1 may never open a round: "), err
    # An INFO line: which version serves which database (the absolute path; after an upgrade,
    # the log says which version ran when) and what it loaded from it
    from importlib.metadata import version

    assert (
        f"INFO:     plume {version('plume-fl')} (database schema 5) serving the database "
        f"{dp_db.resolve()}: 1 task loaded, 0 refused"
    ) in err, err


def test_log_level_error_silences_the_coordinators_warnings_and_info(dp_db: Path) -> None:
    err = _serve_then_stop(dp_db, *SHORT_POOL, "--log-level", "error", logged=False)
    assert "may never open a round" not in err, err
    assert "serving the database" not in err, err


def test_a_new_database_is_announced_only_when_it_is_created(tmp_path: Path) -> None:
    # A port in use: serve stops before the database is opened, so nothing says it is started
    # (before: "note: ... does not exist; starting a new database", then the port's error)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [*_plume(), "coordinator", "serve", "--db", str(tmp_path / "new.db"),
             "--port", str(port)],
            capture_output=True, text=True, timeout=120, check=False,
            env={**os.environ, "PLUME_ADMIN_TOKEN": ADMIN, "PLUME_DEBUG": ""},
        )  # fmt: skip
    assert done.returncode == 1 and "already in use" in done.stderr, done.stderr
    assert "new database" not in done.stderr and not (tmp_path / "new.db").exists()
    # A start that creates it says so, with the absolute path
    err = _serve_then_stop(tmp_path / "new.db").splitlines()
    assert f"INFO:     creating a new database at {tmp_path / 'new.db'}" in err, err


def test_access_log_off_keeps_the_coordinators_lines_but_not_one_per_request(
    dp_db: Path,
) -> None:
    # uvicorn's access log writes a line per request: at a fleet's check-in rate, most of the
    # log.
    # (The default, on, is checked with the INFO lines above.) Off: no line on stdout.
    assert _serve_then_stop(dp_db, "--access-log", "off", stdout=True) == ""
