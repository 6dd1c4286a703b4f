"""bench/_common.py's `stop_serve` stops a coordinator gracefully also where the benchmark was
started with SIGINT ignored (`nohup python bench/coordinator_ingest.py &` in a script): such a
coordinator keeps SIGINT ignored (83ec989), so a SIGINT left it running until `stop_serve`'s
20 s kill (status -9, its database not closed).

Its `start_serve` starts the coordinator on `--port 0` and reads the port it got. Before, it gave
the coordinator a port found free and closed, which another process could bind between the two
(a parallel test's server, on CI's shared machine)."""

from __future__ import annotations

import importlib.util
import signal
import socket
import sqlite3
from pathlib import Path
from types import ModuleType

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _common() -> ModuleType:
    spec = importlib.util.spec_from_file_location("s54_bench_common", ROOT / "bench" / "_common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stop_serve_stops_a_coordinator_started_with_sigint_ignored(tmp_path: Path) -> None:
    common = _common()
    db = tmp_path / "coord.db"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the child inherits SIG_IGN
    try:
        _url, proc = common.start_serve(db, "t" * 32, poll_s=0.05)
    finally:
        signal.signal(signal.SIGINT, previous)
    common.stop_serve(proc)
    # A graceful stop exits 0; the kill after 20 s would be -9.
    assert proc.returncode == 0, proc.returncode
    # Closed cleanly: the WAL was checkpointed into the database file.
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_start_serve_does_not_use_a_port_taken_after_it_was_found_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    common = _common()
    with socket.socket() as taken:
        # The race, made certain: the port `free_port` finds is bound by another socket
        # before the coordinator starts (it exited "address already in use")
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        held = taken.getsockname()[1]
        monkeypatch.setattr(common, "free_port", lambda: held)
        url, proc = common.start_serve(tmp_path / "coord.db", "t" * 32, poll_s=0.05)
        try:
            port = int(url.rsplit(":", 1)[1])
            assert url == f"http://127.0.0.1:{port}" and port != held
            assert port == common.listening_port(proc.pid)
            assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        finally:
            common.stop_serve(proc)
    assert proc.returncode == 0, proc.returncode
