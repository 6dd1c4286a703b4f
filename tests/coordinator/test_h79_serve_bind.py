"""`plume coordinator serve` on a port already in use fails before it touches the database: a
new --db is not created (it was: the store opened, and so created the file, before uvicorn
found the port taken, leaving an empty database behind), and an existing one is not opened
(its tasks were restored, which may write, by a coordinator that never served). A subprocess,
as uvicorn reconfigures the logging of the process it runs in."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.service import ServiceConfig, Store, serve
from protocol.names import TaskState


def _plume() -> list[str]:
    script = Path(sys.executable).with_name("plume")
    return [str(script)] if script.exists() else [sys.executable, "-m", "coordinator.cli"]


@pytest.fixture()
def taken_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def _serve(db: Path, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_plume(), "coordinator", "serve", "--db", str(db), "--port", str(port),
         "--log-level", "critical"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PLUME_DEBUG": ""},
    )  # fmt: skip


def test_a_port_in_use_leaves_no_new_database_behind(tmp_path: Path, taken_port: int) -> None:
    # Execute
    done = _serve(tmp_path / "new.db", taken_port)
    # Assert: the sentence as before, and no file of the database
    assert done.returncode == 1, done.stderr
    assert f"port {taken_port} on 127.0.0.1 is already in use" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_port_in_use_leaves_an_existing_database_as_it_was(
    tmp_path: Path, taken_port: int
) -> None:
    # Prepare: a database holding a task
    db = tmp_path / "old.db"
    store = Store(db)
    store.create_task({"name": "t"}, TaskState.AWAITING_MODEL, 0.0)
    store.close()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    # Execute
    done = _serve(db, taken_port)
    # Assert
    assert done.returncode == 1 and "already in use" in done.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_serve_in_python_says_which_address_it_cannot_listen_on(
    tmp_path: Path, taken_port: int
) -> None:
    # The same check for a caller of coordinator.service.serve: a SystemExit naming the
    # address (as uvicorn's own exit did, with its log line), nothing created.
    with pytest.raises(SystemExit) as exited:
        serve(ServiceConfig(db_path=str(tmp_path / "p.db")), "127.0.0.1", taken_port)
    assert f"127.0.0.1:{taken_port}" in str(exited.value.code)
    assert list(tmp_path.iterdir()) == []


def test_the_address_that_failed_is_named_when_a_host_has_several(
    monkeypatch: pytest.MonkeyPatch, taken_port: int
) -> None:
    # Prepare: a name resolving to ::1 then 127.0.0.1, the second's port taken. The CLI used
    # to re-probe only the first address and blame "the log lines above" (helper-88's review).
    from coordinator._cli import _listen_sentence
    from coordinator.service.server import ListenError, _listen

    real = socket.getaddrinfo

    def dual(host: str, port: int, *args: object, **kwargs: object) -> list[object]:
        found = list(real("localhost", port, *args, **kwargs))  # type: ignore[arg-type]
        v6 = [i for i in found if i[0] == socket.AF_INET6]
        v4 = [i for i in found if i[0] == socket.AF_INET]
        return v6 + v4

    monkeypatch.setattr(socket, "getaddrinfo", dual)
    # Execute
    with pytest.raises(ListenError) as failed:
        _listen("dual.example", taken_port)
    # Assert: the failing address and errno travel with the error, and the CLI's sentence
    assert (failed.value.host, failed.value.port) == ("127.0.0.1", taken_port)
    assert _listen_sentence(failed.value).startswith(
        f"port {taken_port} on 127.0.0.1 is already in use"
    )


def test_serve_logs_the_address_it_listens_on_for_port_0(tmp_path: Path) -> None:
    # uvicorn logs "running on" only when it binds itself; with the sockets bound by serve it
    # said nothing, so `--port 0` never told the operator its port (helper-88's review).
    proc = subprocess.Popen(
        [*_plume(), "coordinator", "serve", "--db", str(tmp_path / "p.db"), "--port", "0",
         "--log-level", "info"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PLUME_DEBUG": ""},
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "Uvicorn running on" in line or len(lines) > 50:
                break
        said = "".join(lines)
        assert "Uvicorn running on http://127.0.0.1:" in said, said
        port = int(said.split("Uvicorn running on http://127.0.0.1:")[1].split()[0])
        assert port > 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
