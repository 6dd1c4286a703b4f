"""The admin commands' `--timeout SECONDS` has an upper bound, a day, refused as a usage
mistake naming the flag (stop 55, audit O of docs/operations.md: "any number above 0, else
exit status 2").

Before: a `--timeout` past what a socket timeout holds (about 9.2e9 s: `1e10`, `1e300`) passed
the parser's "finite > 0" check, and the first request raised `OverflowError: timestamp out of
range for platform time_t` from `socket.settimeout`, a traceback and exit status 1;
`AdminClient(url, token, timeout=1e10)` raised it at its first request."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.cli import main
from coordinator.service import AdminClient, ServerThread, ServiceConfig

from .test_service_support import ADMIN


def _status(url: str, timeout: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(
            ["coordinator", "status", "--url", url, "--admin-token", ADMIN, "--timeout", timeout]
        )
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


@pytest.fixture()
def url(tmp_path: Path) -> object:
    config = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN)
    with ServerThread(config) as served:
        yield served


@pytest.mark.parametrize("timeout", ["86400.5", "1e10", "9999999999", "1e300"])
def test_a_timeout_past_a_day_is_a_usage_mistake(
    url: str, capsys: pytest.CaptureFixture[str], timeout: str
) -> None:
    code, err = _status(url, timeout, capsys)
    assert code == 2
    assert "Traceback" not in err and "OverflowError" not in err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert line == (
        "plume coordinator status: error: argument --timeout: must be a finite number > 0 and "
        f"at most 86400 (a day), got {timeout}"
    )


@pytest.mark.parametrize("timeout", ["86400", "3600", "0.5"])
def test_a_timeout_up_to_a_day_is_taken(
    url: str, capsys: pytest.CaptureFixture[str], timeout: str
) -> None:
    code, err = _status(url, timeout, capsys)
    assert code == 0 and "has no task yet" in err


def test_the_zero_refusal_the_doc_quotes_is_unchanged(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # "`argument --timeout: must be a finite number > 0, got 0`"
    code, err = _status(url, "0", capsys)
    assert code == 2
    assert "error: argument --timeout: must be a finite number > 0, got 0" in err


def test_admin_client_refuses_such_a_timeout_at_construction(url: str) -> None:
    with pytest.raises(ValueError, match=r"^timeout must be a number of seconds in \(0, 86400\]"):
        AdminClient(url, ADMIN, timeout=1e10)
    with AdminClient(url, ADMIN, timeout=86_400.0) as admin:
        assert admin.tasks() == []
