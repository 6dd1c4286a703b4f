"""`AdminClient(verify=...)` reads `verify=` as the SDK's `Client` does (both call
`protocol.tls.tls_verify`): a CA bundle directory is trusted (it failed with
`IsADirectoryError`), and a CA path that is missing, empty, unreadable or holds no PEM
certificate is a `ValueError` naming it, word for word the SDK's (it was a bare
`FileNotFoundError`, a raw `ssl.SSLError`, or, for "", the system's trust store); another
type is a `TypeError` at construction (it was taken, and failed later)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from coordinator.service import AdminClient, ServerThread, ServiceConfig
from sdk import Client
from tests.coordinator.test_service_support import ADMIN
from tests.protocol.test_h196_tls_verify import _der, hashed_dir, make_ca

NOWHERE = "https://127.0.0.1:1"  # never contacted: every case fails or is checked at construction


def _errors(verify: Any, root: Path) -> tuple[BaseException, BaseException]:
    """What AdminClient and the SDK's Client raise at construction for `verify`."""
    with pytest.raises(Exception) as admin:
        AdminClient(NOWHERE, ADMIN, verify=verify).close()
    with pytest.raises(Exception) as sdk:
        Client(NOWHERE, str(root), verify=verify).close()
    return admin.value, sdk.value


def _same(admin: BaseException, sdk: BaseException) -> None:
    assert (type(admin), str(admin)) == (type(sdk), str(sdk))


def test_a_missing_ca_file_is_the_sdks_value_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-ca.pem")
    admin, sdk = _errors(missing, tmp_path / "d")
    assert isinstance(admin, ValueError)
    assert str(admin) == f"verify={missing!r}: no such CA bundle file"
    _same(admin, sdk)


@pytest.mark.parametrize("content", ["key", "der", "empty"])
def test_a_file_with_no_pem_certificate_is_the_sdks_value_error(
    tmp_path: Path, content: str
) -> None:
    # Prepare
    cert, key = make_ca(tmp_path)
    data = {"key": Path(key).read_bytes(), "der": _der(cert), "empty": b""}[content]
    path = tmp_path / f"{content}.pem"
    path.write_bytes(data)
    # Execute
    admin, sdk = _errors(str(path), tmp_path / "d")
    # Assert
    assert isinstance(admin, ValueError)
    assert str(admin).startswith(f"verify={str(path)!r} holds no PEM certificate (")
    _same(admin, sdk)


def test_an_unreadable_ca_file_is_the_sdks_value_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chmod 000 file for a non-root user; PermissionError from ssl itself here (as root)."""
    # Prepare
    cert, _ = make_ca(tmp_path)

    def refuse(**kwargs: Any) -> ssl.SSLContext:
        raise PermissionError(13, "Permission denied", kwargs.get("cafile"))

    monkeypatch.setattr(ssl, "create_default_context", refuse)
    # Execute
    admin, sdk = _errors(cert, tmp_path / "d")
    # Assert
    assert isinstance(admin, ValueError)
    assert str(admin).startswith(f"verify={cert!r}: cannot read the CA bundle: ")
    _same(admin, sdk)


def test_an_empty_path_is_the_sdks_value_error_not_the_system_trust_store(
    tmp_path: Path,
) -> None:
    admin, sdk = _errors("", tmp_path / "d")
    assert isinstance(admin, ValueError) and "is empty" in str(admin)
    _same(admin, sdk)


@pytest.mark.parametrize("verify", [None, 1, b"ca.pem"])
def test_another_type_is_the_sdks_type_error(tmp_path: Path, verify: object) -> None:
    admin, sdk = _errors(verify, tmp_path / "d")
    assert isinstance(admin, TypeError)
    assert str(admin).startswith("verify must be True, False, the path of a CA bundle")
    _same(admin, sdk)


def test_a_ca_directory_is_trusted(tmp_path: Path) -> None:
    # Prepare: an HTTPS coordinator whose self-signed certificate is in a hashed directory
    cert, key = make_ca(tmp_path)
    folder = hashed_dir(cert, tmp_path / "certs")
    config = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN)
    with ServerThread(config, tls_cert=cert, tls_key=key) as url:
        # Execute
        with AdminClient(url, ADMIN, verify=folder) as admin:
            tasks = admin.tasks()
    # Assert
    assert tasks == []


def test_a_directory_without_the_ca_refuses_the_coordinator(tmp_path: Path) -> None:
    """The directory is read at the handshake: one without the CA gives httpx's
    certificate error there, as the SDK's does."""
    import httpx

    # Prepare
    cert, key = make_ca(tmp_path)
    (tmp_path / "empty").mkdir()
    config = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN)
    with ServerThread(config, tls_cert=cert, tls_key=key) as url:
        with AdminClient(url, ADMIN, verify=tmp_path / "empty") as admin:
            # Execute
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                admin.tasks()
