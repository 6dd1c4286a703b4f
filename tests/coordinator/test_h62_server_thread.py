"""`ServerThread` closes the store `create_app` opened for it once the server has stopped (or
failed to start); before, every stopped server kept its database connection (and its WAL and
shared-memory files) open until the process ended."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.app import create_app
from coordinator.service.store import Store


def _open_files_under(folder: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            found.append(target)
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_stop_closes_the_store_the_server_opened(tmp_path: Path) -> None:
    # Prepare
    server = ServerThread(ServiceConfig(db_path=str(tmp_path / "plume.db")))
    # Execute
    with server as url:
        assert httpx.get(url + "/healthz").status_code == 200
        held = _open_files_under(tmp_path)
    left = _open_files_under(tmp_path)
    server.stop()  # a second stop is harmless
    # Assert
    assert held, "the running server holds its database open"
    assert left == []


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # uvicorn exits
def test_a_failed_start_closes_the_store(tmp_path: Path) -> None:
    # Prepare: the port is taken
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    server = ServerThread(ServiceConfig(db_path=str(tmp_path / "plume.db")), port=port)
    # Execute
    try:
        with pytest.raises(RuntimeError, match="exited during start-up"):
            server.start()
    finally:
        taken.close()
    # Assert
    assert _open_files_under(tmp_path) == []


def test_a_given_apps_store_is_left_to_its_owner(tmp_path: Path) -> None:
    # Prepare
    store = Store(tmp_path / "plume.db")
    app = create_app(ServiceConfig(db_path=str(tmp_path / "plume.db")), store=store)
    # Execute
    with ServerThread(ServiceConfig(), app=app) as url:
        assert httpx.get(url + "/healthz").status_code == 200
    # Assert: still usable, closed by whoever opened it
    assert store.journal_mode == "wal"
    store.close()
