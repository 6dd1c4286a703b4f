"""Stop 48, helper-411's review of the operator's command line, findings 7 and 10: the admin
commands' --url and --cacert.

- `--cacert FILE` with an `http://` URL was read and checked, then unused (nothing is verified
  over plain HTTP): now a usage mistake (status 2) saying it needs an https:// URL, before
  the file is read.
- `http://127.0.0.1:99999` was taken and failed only when connecting (as "cannot reach the
  coordinator"); a port outside 1-65535 is now refused first, as the other --url mistakes are
  (status 1, `--url ... is not a valid URL: ...`).
- `HTTP://` was refused as "must start with http:// or https://": a URL's scheme is
  case-insensitive, and now it is taken.
- A query or fragment (`http://h:1?x=1`) was taken as part of the base URL, and every request
  went to `/?x=1/v1/admin/...`: now refused, saying --url is the base URL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.cli import main
from coordinator.service import ServerThread, ServiceConfig
from tests._tls import self_signed

from .test_service_support import ADMIN


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = tmp_path_factory.mktemp("s48-url") / "p.db"
    with ServerThread(ServiceConfig(db_path=str(db), admin_token=ADMIN)) as base:
        yield base


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of `plume coordinator ARGV`."""
    try:
        code = main(["coordinator", *argv])
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    return code, captured.out, captured.err


def _one_error(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"plume coordinator {command}: error: "), err
    return lines[0].split(": error: ", 1)[1]


@pytest.mark.parametrize("cacert", ["exists", "missing"])
def test_cacert_with_an_http_url_is_a_usage_mistake(
    url: str, cacert: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a CA bundle (a certificate-less file would be refused for itself once read)
    pem = self_signed(tmp_path)[0] if cacert == "exists" else str(tmp_path / "nosuch.pem")
    # Execute: a coordinator serving plain HTTP, which the command would reach
    code, out, err = _run(["status", "--url", url, "--admin-token", ADMIN, "--cacert", pem], capsys)
    # Assert: refused before the file is read or a request sent
    said = _one_error(err, "status")
    assert code == 2 and out == ""
    assert said == (
        f"--cacert verifies an HTTPS coordinator's certificate; it needs an https:// --url, got "
        f"{url!r} (drop --cacert, or use the https:// URL `serve --tls-cert` serves)"
    )


@pytest.mark.parametrize("port", ["99999", "0"])
def test_a_port_outside_1_to_65535_is_refused_before_connecting(
    port: str, capsys: pytest.CaptureFixture[str]
) -> None:
    given = f"http://127.0.0.1:{port}"
    code, _, err = _run(["status", "--url", given, "--admin-token", ADMIN], capsys)
    said = _one_error(err, "status")
    assert code == 1  # as the other --url mistakes
    assert (
        said == f"--url {given!r} is not a valid URL: its port {port} is not a TCP port (1-65535)"
    )


@pytest.mark.parametrize("scheme", ["HTTP", "Http"])
def test_an_upper_case_scheme_is_taken(
    url: str, scheme: str, capsys: pytest.CaptureFixture[str]
) -> None:
    given = scheme + url.removeprefix("http")
    code, out, err = _run(["status", "--url", given, "--admin-token", ADMIN], capsys)
    assert code == 0, err
    assert "has no task yet" in err


@pytest.mark.parametrize(("tail", "what"), [("?x=1", "a query (?...)"), ("/#top", "a fragment")])
def test_a_query_or_fragment_in_url_is_refused(
    url: str, tail: str, what: str, capsys: pytest.CaptureFixture[str]
) -> None:
    given = url + tail
    code, out, err = _run(["status", "--url", given, "--admin-token", ADMIN], capsys)
    said = _one_error(err, "status")
    assert code == 1 and out == ""
    assert said.startswith(f"--url {given!r} is not a valid URL: it has {what}"), said
    assert "--url is the coordinator's base URL (scheme, host and port" in said
