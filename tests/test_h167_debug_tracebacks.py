"""PLUME_DEBUG=1 shows the traceback of every error `plume` would end with one line. Before,
`plume sim`'s handlers for a missing data folder (DataError) and for an unreachable
coordinator, and create-task's, status's and serve's handlers, printed their line whatever
PLUME_DEBUG said; only the handlers that checked it themselves (sim's ValueError) raised.

The traceback comes before the same line, and the exit status is the same as without
PLUME_DEBUG (a first version raised the exception instead: the handler's sentence was lost and
a usage error's status 2 became 1, which a service manager would retry)."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.cli import main
from mobile_sim.data import DataError

_SIM = ["sim", "--rounds", "1", "--clients", "4", "--per-round", "2", "--no-progress"]
_CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens on the loopback


@pytest.mark.parametrize("debug", ["1", None])
def test_sim_data_error(
    debug: str | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare: no data folder
    monkeypatch.setenv("PLUME_DATA", str(tmp_path / "nonexistent"))
    if debug is None:
        monkeypatch.delenv("PLUME_DEBUG", raising=False)
        # Execute + Assert: one line, status 1
        assert main([*_SIM, "--out", str(tmp_path / "out")]) == 1
        assert capsys.readouterr().err.startswith("plume sim: error: ")
    else:
        monkeypatch.setenv("PLUME_DEBUG", debug)
        # Execute + Assert: the DataError's traceback, then the same line and status
        assert main([*_SIM, "--out", str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and f"{DataError.__module__}" in err
        assert err.rstrip().splitlines()[-1].startswith("plume sim: error: "), err
    assert not (tmp_path / "out").exists()  # the --out made for the run is removed either way


@pytest.mark.parametrize(
    "argv",
    [
        [*_SIM, "--transport", "http", "--coordinator", _CLOSED],
        ["coordinator", "create-task", "--model", "synthetic_lr", "--url", _CLOSED],
        ["coordinator", "status", "--url", _CLOSED],
    ],
    ids=["sim --coordinator", "create-task", "status"],
)
def test_unreachable_coordinator(
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare
    monkeypatch.setenv("PLUME_ADMIN_TOKEN", "t" * 32)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PLUME_DEBUG", raising=False)
    # Execute + Assert: one line without PLUME_DEBUG ...
    assert main(argv) == 1
    assert ": error: " in capsys.readouterr().err
    # ... and httpx's error's traceback before the same line and status with it
    monkeypatch.setenv("PLUME_DEBUG", "1")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "httpx" in err, err
    assert ": error: " in err.rstrip().splitlines()[-1], err


def test_serve_store_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a --db that is not a database
    db = tmp_path / "plume.db"
    db.write_bytes(b"not a database" * 100)
    argv = ["coordinator", "serve", "--db", str(db), "--admin-token", "t" * 32]
    monkeypatch.delenv("PLUME_DEBUG", raising=False)
    # Execute + Assert: one line and status 1 without PLUME_DEBUG, a traceback with it
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 1
    assert "plume coordinator serve: error: " in capsys.readouterr().err
    monkeypatch.setenv("PLUME_DEBUG", "1")
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err, err
    assert "plume coordinator serve: error: " in err.rstrip().splitlines()[-1], err


def test_a_usage_error_keeps_status_2_and_its_line_under_debug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a TLS file that holds no PEM (a usage error, status 2, which the documented
    # systemd unit does not restart), PLUME_DEBUG on
    junk = tmp_path / "junk.pem"
    junk.write_text("not a PEM file\n")
    monkeypatch.setenv("PLUME_DEBUG", "1")
    argv = ["coordinator", "serve", "--db", str(tmp_path / "x.db"), "--port", "0",
            "--tls-cert", str(junk), "--tls-key", str(junk)]  # fmt: skip
    # Execute
    with pytest.raises(SystemExit) as exited:
        main(argv)
    # Assert: ssl's traceback, then the same line naming the file, and status 2 still
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "SSLError" in err, err
    assert f"--tls-cert {junk} holds no PEM certificate" in err.rstrip().splitlines()[-1], err
