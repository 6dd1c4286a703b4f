"""`protocol.tls.tls_verify`, the one reading of `verify=` that the SDK's clients and the
coordinator's `AdminClient` share: `True`, `False` and an `ssl.SSLContext` pass through; a CA
bundle's path (a PEM file, or a directory of hashed certificates) becomes a context trusting
it, checked by a real TLS handshake over a socket pair; a path that is empty, missing,
unreadable or holds no PEM certificate is a `ValueError` naming it; any other type a
`TypeError`. The CA is made here with `cryptography` (no network, no openssl binary)."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from protocol.tls import tls_verify
from tests._tls import self_signed

LONG = 10.0  # seconds a local handshake may take; it takes milliseconds
CN = "plume-h196-test"  # lower case, one UTF8String: its DER is already OpenSSL's canonical form


def make_ca(tmp: Path) -> tuple[str, str]:
    """A self-signed CA certificate for 127.0.0.1 and its key, as PEM files."""
    return self_signed(tmp, cn=CN, names=("ca.pem", "ca-key.pem"))


def hashed_dir(cert: str, folder: Path) -> str:
    """A directory holding `cert` as `<subject hash>.0`, as `openssl rehash` names it: the
    hash is the first 4 bytes (little-endian) of SHA-1 of the subject's canonical encoding, the
    RDNs' DER without the outer SEQUENCE header (the subject's DER here, CN being lower case)."""
    der = x509.load_pem_x509_certificate(Path(cert).read_bytes()).subject.public_bytes()
    assert der[0] == 0x30 and der[1] < 0x80  # a SEQUENCE with a short-form length
    digest = hashlib.sha1(der[2:]).digest()  # noqa: S324 (OpenSSL's name hash, not security)
    folder.mkdir()
    (folder / f"{int.from_bytes(digest[:4], 'little'):08x}.0").write_bytes(Path(cert).read_bytes())
    return str(folder)


def handshake(client_ctx: ssl.SSLContext, cert: str, key: str) -> None:
    """One TLS handshake for 127.0.0.1 over a socket pair; the client's error if it fails."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    server_sock, client_sock = socket.socketpair()
    server_sock.settimeout(LONG)
    client_sock.settimeout(LONG)

    def serve() -> None:
        try:
            server_ctx.wrap_socket(server_sock, server_side=True).close()
        except (OSError, ValueError):  # the client refused the certificate
            server_sock.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        client_ctx.wrap_socket(client_sock, server_hostname="127.0.0.1").close()
    finally:
        client_sock.close()
        thread.join(LONG)


@pytest.fixture
def ca(tmp_path: Path) -> tuple[str, str]:
    return make_ca(tmp_path)


@pytest.mark.parametrize("verify", [True, False], ids=["True", "False"])
def test_a_bool_passes_through(verify: bool) -> None:
    assert tls_verify(verify) is verify


def test_a_context_passes_through_as_the_same_object() -> None:
    ctx = ssl.create_default_context()
    assert tls_verify(ctx) is ctx


@pytest.mark.parametrize("kind", [str, Path], ids=["str", "Path"])
def test_a_pem_file_becomes_a_context_that_trusts_it(ca: tuple[str, str], kind: type) -> None:
    # Prepare
    cert, key = ca
    # Execute
    ctx = tls_verify(kind(cert))
    # Assert: a verifying context that completes a handshake with the CA's certificate
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    handshake(ctx, cert, key)


def test_a_directory_of_hashed_certificates_becomes_a_context_that_trusts_them(
    ca: tuple[str, str], tmp_path: Path
) -> None:
    # Prepare
    cert, key = ca
    folder = hashed_dir(cert, tmp_path / "certs")
    # Execute
    ctx = tls_verify(folder)
    # Assert: looked up at the handshake (nothing is loaded up front), and trusted
    assert isinstance(ctx, ssl.SSLContext) and ctx.get_ca_certs() == []
    handshake(ctx, cert, key)


def test_a_directory_without_the_ca_is_a_context_that_refuses_at_the_handshake(
    ca: tuple[str, str], tmp_path: Path
) -> None:
    # Prepare
    cert, key = ca
    (tmp_path / "empty").mkdir()
    # Execute
    ctx = tls_verify(tmp_path / "empty")
    # Assert: as the docstring says, the handshake is where it fails
    assert isinstance(ctx, ssl.SSLContext)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(ctx, cert, key)


def test_a_missing_file_is_a_value_error_naming_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-ca.pem")
    with pytest.raises(ValueError) as info:
        tls_verify(missing)
    assert str(info.value) == f"verify={missing!r}: no such CA bundle file"


def _der(cert: str) -> bytes:
    return x509.load_pem_x509_certificate(Path(cert).read_bytes()).public_bytes(
        serialization.Encoding.DER
    )


@pytest.mark.parametrize("content", ["empty", "text", "key", "der"])
def test_a_file_with_no_pem_certificate_is_a_value_error_naming_it(
    ca: tuple[str, str], tmp_path: Path, content: str
) -> None:
    # Prepare
    cert, key = ca
    data = {
        "empty": b"",
        "text": b"not a certificate\n",
        "key": Path(key).read_bytes(),  # the key given where the certificate goes
        "der": _der(cert),  # the certificate, but not PEM
    }[content]
    path = tmp_path / f"{content}.pem"
    path.write_bytes(data)
    # Execute
    with pytest.raises(ValueError) as info:
        tls_verify(str(path))
    # Assert
    assert str(info.value).startswith(f"verify={str(path)!r} holds no PEM certificate (")
    assert "give the CA that signed the coordinator's certificate" in str(info.value)


def test_an_unreadable_file_is_a_value_error_naming_it(
    ca: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a chmod 000 file gives a non-root user (root reads it anyway): ssl's
    PermissionError, made here by ssl.create_default_context itself."""
    # Prepare
    cert, _ = ca

    def refuse(**kwargs: Any) -> ssl.SSLContext:
        raise PermissionError(13, "Permission denied", kwargs.get("cafile"))

    monkeypatch.setattr(ssl, "create_default_context", refuse)
    # Execute
    with pytest.raises(ValueError) as info:
        tls_verify(cert)
    # Assert
    assert str(info.value).startswith(f"verify={cert!r}: cannot read the CA bundle: ")
    assert "Permission denied" in str(info.value)
    assert isinstance(info.value.__cause__, PermissionError)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file")
def test_a_chmod_000_file_is_a_value_error_naming_it(ca: tuple[str, str]) -> None:
    cert, _ = ca
    os.chmod(cert, 0)
    try:
        with pytest.raises(ValueError, match="cannot read the CA bundle"):
            tls_verify(cert)
    finally:
        os.chmod(cert, 0o600)


def test_a_path_through_a_file_is_a_value_error_naming_it(ca: tuple[str, str]) -> None:
    bad = os.path.join(ca[0], "ca.pem")  # ENOTDIR: the "directory" is the PEM file
    with pytest.raises(ValueError) as info:
        tls_verify(bad)
    assert str(info.value).startswith(f"verify={bad!r}: cannot read the CA bundle: ")


def test_an_empty_path_is_a_value_error_not_the_default_trust_store() -> None:
    # ssl.create_default_context(cafile="") would load the system's CAs, as if none were given
    with pytest.raises(ValueError, match=r"verify='' is empty: give the path of a CA bundle"):
        tls_verify("")


def test_a_path_with_a_nul_is_a_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match=r"verify='ca\\x00.pem' is not a usable path"):
        tls_verify("ca\x00.pem")


@pytest.mark.parametrize("verify", [None, 1, 0, 1.5, b"ca.pem", ["ca.pem"]])
def test_another_type_is_a_type_error(verify: object) -> None:
    with pytest.raises(TypeError) as info:
        tls_verify(verify)  # type: ignore[arg-type]
    assert str(info.value) == (
        "verify must be True, False, the path of a CA bundle or an ssl.SSLContext, not "
        f"{type(verify).__name__}"
    )


def test_name_is_what_the_messages_call_the_value(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-ca.pem")
    with pytest.raises(ValueError, match=r"^--cacert='.*no-such-ca\.pem': no such CA bundle"):
        tls_verify(missing, name="--cacert")
    with pytest.raises(TypeError, match=r"^--cacert must be True, False"):
        tls_verify(1, name="--cacert")  # type: ignore[arg-type]


def test_the_sdk_client_uses_the_shared_helper() -> None:
    import sdk.client

    assert vars(sdk.client)["_tls_verify"] is tls_verify
