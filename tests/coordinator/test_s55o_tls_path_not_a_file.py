"""`serve --tls-cert`/`--tls-key` given a path that exists but is not a file (a folder,
`/dev/null`) says what it is, not "no such file" (stop 55, audit O of docs/operations.md:
"a `--tls-cert`/`--tls-key` that is missing ... exits with status 2", and a folder given where
a file is wanted "is named one"). A missing file still says "no such file"; either way the
exit status is 2 and no database is created. Before: every such path was "no such file",
for a folder that `ls` shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.cli import main


def _serve(*flags: str) -> int:
    try:
        return main(["coordinator", "serve", "--log-level", "critical", *flags])
    except SystemExit as exc:
        return int(exc.code or 0)


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("flag", ["--tls-cert", "--tls-key"])
def test_a_folder_is_named_a_folder(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    flag: str,
) -> None:
    # Prepare: the other file exists, this one is a folder
    monkeypatch.delenv("PLUME_ADMIN_TOKEN", raising=False)
    pem = tmp_path / "other.pem"
    pem.write_text("x")
    folder = tmp_path / "tls"
    folder.mkdir()
    other = "--tls-key" if flag == "--tls-cert" else "--tls-cert"
    db = tmp_path / "plume.db"
    # Execute
    code = _serve("--db", str(db), flag, str(folder), other, str(pem))
    # Assert
    assert code == 2
    assert (
        _error(capsys)
        == f"plume coordinator serve: error: {flag} {folder}: is a folder, not a file"
    )
    assert not db.exists()


def test_a_device_is_not_a_regular_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PLUME_ADMIN_TOKEN", raising=False)
    code = _serve(
        "--db", str(tmp_path / "p.db"), "--tls-cert", "/dev/null", "--tls-key", "/dev/null"
    )
    assert code == 2
    assert _error(capsys) == (
        "plume coordinator serve: error: --tls-cert /dev/null: is not a regular file"
    )


def test_a_missing_file_is_still_no_such_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PLUME_ADMIN_TOKEN", raising=False)
    gone = tmp_path / "gone.pem"
    code = _serve("--db", str(tmp_path / "p.db"), "--tls-cert", str(gone), "--tls-key", str(gone))
    assert code == 2
    assert _error(capsys) == f"plume coordinator serve: error: --tls-cert {gone}: no such file"


def test_the_files_folder_is_named_by_its_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A value from the --config file is named by the file and key, the path looked at added
    monkeypatch.delenv("PLUME_ADMIN_TOKEN", raising=False)
    (tmp_path / "tls").mkdir()
    (tmp_path / "key.pem").write_text("x")
    conf = tmp_path / "coordinator.toml"
    conf.write_text('db = "p.db"\ntls-cert = "tls"\ntls-key = "key.pem"\n')
    conf.chmod(0o600)
    code = _serve("--config", str(conf))
    assert code == 2
    assert _error(capsys) == (
        f"plume coordinator serve: error: --config {conf}: tls-cert = 'tls': is a folder, not "
        f"a file ({tmp_path / 'tls'})"
    )
