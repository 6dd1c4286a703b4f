"""A `serve` that fails to start (or stops) in-process gives back the database it took: the
`<db>.lock` advisory lock and the SQLite connection, so a later serve on the same database
is not refused as "another coordinator (pid <this process>)"."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from coordinator import cli
from coordinator.service import ServiceConfig, Store, serve
from coordinator.service.store import StoreError

from .test_service_support import ADMIN


def test_a_serve_whose_port_is_taken_releases_the_database_lock(tmp_path: Path) -> None:
    # Prepare: a port something already listens on
    db = tmp_path / "plume.db"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        # Execute
        with pytest.raises(SystemExit):
            serve(ServiceConfig(db_path=str(db)), "127.0.0.1", port, log_level="critical")
    # Assert: the same process (or a retry on another port) can take the database again
    again = Store(db, exclusive=True)
    again.close()


def test_a_serve_whose_tls_files_do_not_load_releases_the_database_lock(tmp_path: Path) -> None:
    # Prepare: files that exist (the CLI's check passes) but are no PEM certificate and key
    db = tmp_path / "plume.db"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("not a certificate\n")
    key.write_text("not a key\n")
    # Execute
    with pytest.raises(ssl.SSLError):
        serve(
            ServiceConfig(db_path=str(db)),
            "127.0.0.1",
            0,
            tls_cert=str(cert),
            tls_key=str(key),
            log_level="critical",
        )
    # Assert
    Store(db, exclusive=True).close()


def test_the_cli_serve_retried_in_one_process_is_not_told_it_serves_the_database_already(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    db = tmp_path / "plume.db"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("not a certificate\n")
    key.write_text("not a key\n")
    args = ["coordinator", "serve", "--db", str(db), "--port", "0", "--admin-token", ADMIN]
    args += ["--log-level", "critical", "--tls-cert", str(cert), "--tls-key", str(key)]
    for _ in range(2):
        # Execute
        with pytest.raises(SystemExit):
            cli.main(args)
        # Assert: each attempt names the TLS files, never a coordinator holding the database
        err = capsys.readouterr().err
        assert "cannot load --tls-cert/--tls-key" in err, err
        assert "another coordinator" not in err


def test_a_store_refused_as_held_is_still_refused_while_a_serve_holds_it(tmp_path: Path) -> None:
    # The release above must not weaken the lock: an open exclusive store still refuses one.
    db = tmp_path / "plume.db"
    first = Store(db, exclusive=True)
    try:
        with pytest.raises(StoreError, match="another coordinator"):
            serve(ServiceConfig(db_path=str(db)), "127.0.0.1", 0, log_level="critical")
    finally:
        first.close()
