"""A coordinator URL with a user name or password before its host (`http://u:p@host:8080`) is
refused before any request, naming what is wrong, and without echoing the password (stop 55,
audit O of docs/operations.md: the admin commands' `--url` is "the coordinator's base URL").

Before: httpx took the URL's credentials and sent them as `Authorization: Basic ...` in place
of the admin token's `Authorization: Bearer ...`, so every admin request was refused, and the
command said "the coordinator refused the admin token (admin endpoints need Authorization:
Bearer; 401 bad_admin_token); pass the token `plume coordinator serve` was started with" of a
token that was right and never sent. `AdminClient(url, token)` did the same in Python."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator._cli import checked_url
from coordinator.cli import main
from coordinator.service import AdminClient, ServerThread, ServiceConfig

from .test_service_support import ADMIN


def _status(url: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(["coordinator", "status", "--url", url, "--admin-token", ADMIN])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("userinfo", ["admin:s3cret@", "admin@", "admin:@", ":s3cret@"])
def test_status_refuses_a_url_with_credentials_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], userinfo: str
) -> None:
    # Prepare: a coordinator that would answer the right token
    config = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN)
    with ServerThread(config) as url:
        given = url.replace("http://", f"http://{userinfo}")
        # Execute
        code, out, err = _status(given, capsys)
    # Assert: exit status 1 as the other --url refusals ("the connection settings checked
    # before any request"), one line saying what the credentials would do, no password
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("plume coordinator status: error: --url '"), lines
    assert "is not a valid URL: it has a user name or password before its host" in lines[0]
    assert "Authorization: Basic" in lines[0]
    assert "s3cret" not in err
    assert "refused the admin token" not in err


def test_the_same_url_without_credentials_is_served(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN)
    with ServerThread(config) as url:
        code, out, err = _status(url, capsys)
    assert code == 0 and "has no task yet" in err


def test_checked_url_names_the_flag_and_hides_the_password() -> None:
    # `plume sim --coordinator` checks its URL with the same function, in the same words
    with pytest.raises(ValueError) as refused:
        checked_url("http://admin:s3cret@127.0.0.1:8080", "--coordinator")
    text = str(refused.value)
    assert text.startswith("--coordinator 'http://admin:***@127.0.0.1:8080' is not a valid URL")
    assert "s3cret" not in text
    assert checked_url("HTTP://127.0.0.1:8080") == "http://127.0.0.1:8080"


def test_admin_client_refuses_a_base_url_with_credentials() -> None:
    with pytest.raises(ValueError, match="user name or password") as refused:
        AdminClient("http://admin:s3cret@127.0.0.1:8080", ADMIN)
    assert "s3cret" not in str(refused.value)
