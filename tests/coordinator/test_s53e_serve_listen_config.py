"""`plume coordinator serve` names a `host` or `port` that came from its `--config` file by the
file and key when the start cannot listen there, as docs/operations.md says of serve's checks
("name the key too when the value came from the file"). Before, a port in use from the file
said "pick another --port" and an address not of this machine "--host ADDR", options the
command line did not have. An empty `host` (or one with white space) is a usage mistake, status
2 naming the option; before, it failed at the bind as a name that did not resolve, status 1,
which systemd's `Restart=on-failure` retries for ever (an operator's walkthrough, s53e)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.cli import main
from coordinator.service import ServiceConfig

from .test_h113_serve_config import _config, served  # noqa: F401 (served: fixture)

# TEST-NET-1 (RFC 5737): documentation addresses, never assigned to a machine.
NOT_OURS = "192.0.2.1"


@pytest.fixture()
def taken_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def _serve(*flags: str) -> int:
    try:
        return main(["coordinator", "serve", "--log-level", "critical", *flags])
    except SystemExit as exc:  # _fail's exit, and argparse's usage errors
        return int(exc.code or 0)


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1, err
    return err[0]


def test_a_port_in_use_from_the_file_is_named_by_its_key(
    tmp_path: Path,
    taken_port: int,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: the port in the file, nothing on the command line
    monkeypatch.delenv("PLUME_ADMIN_TOKEN", raising=False)
    conf = _config(tmp_path, f'db = "plume.db"\nport = {taken_port}\n')
    # Execute
    code = _serve("--config", str(conf))
    line = _error_line(capsys)
    # Assert: status 1 (retried), the file and key named, no --port it was not given
    assert code == 1
    assert line == (
        f"plume coordinator serve: error: --config {conf}: port = {taken_port}: port "
        f"{taken_port} on 127.0.0.1 is already in use (another coordinator?); stop it or pick "
        "another port"
    )
    assert not (tmp_path / "plume.db").exists()


def test_a_port_in_use_from_the_command_line_keeps_its_flag(
    tmp_path: Path,
    taken_port: int,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: the file has a port, the command line's wins and is the one in use
    monkeypatch.delenv("PLUME_ADMIN_TOKEN", raising=False)
    conf = _config(tmp_path, 'db = "plume.db"\nport = 1\n')
    # Execute
    code = _serve("--config", str(conf), "--port", str(taken_port))
    line = _error_line(capsys)
    # Assert
    assert code == 1
    assert line.endswith("stop it or pick another --port"), line
    assert "--config" not in line


def test_a_host_from_the_file_not_of_this_machine_is_named_by_its_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    monkeypatch.delenv("PLUME_ADMIN_TOKEN", raising=False)
    conf = _config(tmp_path, f'db = "plume.db"\nhost = "{NOT_OURS}"\nport = 0\n')
    # Execute
    code = _serve("--config", str(conf))
    line = _error_line(capsys)
    # Assert
    assert code == 1
    assert line == (
        f"plume coordinator serve: error: --config {conf}: host = '{NOT_OURS}': is not an "
        "address of this machine"
    )
    assert not (tmp_path / "plume.db").exists()


@pytest.mark.parametrize(("host", "what"), [("", "is empty"), (" 127.0.0.1", "has white space")])
def test_an_empty_host_is_a_usage_mistake_naming_the_flag(
    tmp_path: Path,
    host: str,
    what: str,
    capsys: pytest.CaptureFixture[str],
    served: list[tuple[ServiceConfig, str, int, dict]],  # noqa: F811
) -> None:
    # Execute
    code = _serve("--db", str(tmp_path / "plume.db"), "--host", host)
    line = _error_line(capsys)
    # Assert: status 2 (systemd's RestartPreventExitStatus=2), nothing served
    assert code == 2 and served == []
    assert line.startswith(f"plume coordinator serve: error: --host {host!r} {what}"), line


def test_an_empty_host_in_the_file_names_the_file_and_key(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    served: list[tuple[ServiceConfig, str, int, dict]],  # noqa: F811
) -> None:
    # Prepare
    conf = _config(tmp_path, 'db = "plume.db"\nhost = ""\n')
    # Execute
    code = _serve("--config", str(conf))
    line = _error_line(capsys)
    # Assert
    assert code == 2 and served == []
    assert line.startswith(f"plume coordinator serve: error: --config {conf}: host = '': is empty")
