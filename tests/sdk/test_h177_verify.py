"""`verify=` takes `True`, `False`, an `ssl.SSLContext` or the path of a CA bundle; a path is
read into a context by the SDK at construction, so httpx 0.28's `verify=<str>`
DeprecationWarning never fires (pyproject's filterwarnings ignores DeprecationWarning, so the
tests below turn it into an error themselves), and a path that is missing or holds no
certificate is a `ValueError` naming it, before the app directory is made (httpx's was a bare
`FileNotFoundError` naming nothing). `plume coordinator ... --cacert` hands the admin client a
context too (helper-174's review)."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path
from typing import Any

import pytest

from coordinator.cli import main
from coordinator.service import ServerThread, ServiceConfig
from sdk import AsyncClient, Client
from tests.coordinator.test_service_support import ADMIN

from .test_h102_cancel_write import _self_signed
from .test_h177_tls_certificate import _TlsServer, tls  # noqa: F401 (tls: a fixture)

MODES = pytest.mark.parametrize("asynchronous", [False, True], ids=["Client", "AsyncClient"])


def _check_in(base: str, root: Path, asynchronous: bool, verify: Any) -> Any:
    """One check-in with `verify`, DeprecationWarning raised as an error throughout."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        if not asynchronous:
            with Client(base, str(root), verify=verify, retries=0) as client:
                return client.check_in(1)

        async def run() -> Any:
            async with AsyncClient(base, str(root), verify=verify, retries=0) as client:
                return await client.check_in(1)

        return asyncio.run(run())


@MODES
@pytest.mark.parametrize("kind", [str, Path], ids=["str", "Path"])
def test_a_ca_bundle_path_is_trusted_without_a_deprecation_warning(
    tls: tuple[_TlsServer, str],  # noqa: F811
    tmp_path: Path,
    asynchronous: bool,
    kind: type,
) -> None:
    # Prepare
    server, cert = tls
    # Execute
    answer = _check_in(f"https://127.0.0.1:{server.port}", tmp_path / "d", asynchronous, kind(cert))
    # Assert
    assert answer.action == "wait"


@MODES
def test_a_missing_ca_bundle_is_a_value_error_naming_it_before_the_app_dir(
    tmp_path: Path, asynchronous: bool
) -> None:
    # Prepare
    missing = str(tmp_path / "no-such-ca.pem")
    # Execute
    with pytest.raises(ValueError) as info:
        _check_in("https://127.0.0.1:1", tmp_path / "d", asynchronous, missing)
    # Assert
    assert f"verify={missing!r}: no such CA bundle file" in str(info.value)
    assert not (tmp_path / "d").exists()


@MODES
def test_a_file_with_no_certificate_is_a_value_error_naming_it(
    tmp_path: Path, asynchronous: bool
) -> None:
    # Prepare: the key given where the certificate goes
    _, key = _self_signed(tmp_path)
    # Execute
    with pytest.raises(ValueError) as info:
        _check_in("https://127.0.0.1:1", tmp_path / "d", asynchronous, key)
    # Assert
    assert f"verify={key!r} holds no PEM certificate" in str(info.value)


@MODES
def test_verify_of_another_type_is_a_type_error(tmp_path: Path, asynchronous: bool) -> None:
    with pytest.raises(TypeError, match="verify must be True, False, the path"):
        _check_in("https://127.0.0.1:1", tmp_path / "d", asynchronous, 1)


def test_cacert_reaches_the_admin_client_without_a_deprecation_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: an HTTPS coordinator with a self-signed certificate
    cert, key = _self_signed(tmp_path)
    config = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN)
    with ServerThread(config, tls_cert=cert, tls_key=key) as url, warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        # Execute
        code = main(
            ["coordinator", "status", "--admin-token", ADMIN, "--url", url, "--cacert", cert]
        )
    # Assert
    assert code == 0, capsys.readouterr().err
