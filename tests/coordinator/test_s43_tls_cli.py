"""`plume coordinator serve`'s TLS files and the admin commands' TLS and --url errors.

- A certificate outside its validity dates (expired, or not valid yet) is refused at the
  start, one line naming the file and its dates, status 2, before the database is opened;
  before, serve started and every client's handshake failed.
- An encrypted --tls-key's passphrase is asked once (getpass, at a terminal) and given to
  uvicorn too; before, OpenSSL asked for it and uvicorn asked again after the database was
  opened. A wrong one is said to be wrong (it was "is encrypted"); with stdin not a terminal
  nothing is asked and the line says the key is encrypted.
- A TLS file that came from the --config file is named by its key there, as a missing one is.
- An admin command's certificate failure says why: a host the certificate does not name, its
  dates, or a CA not trusted (only that one is mended by --cacert; each was "pass the CA with
  --cacert", even with --cacert given).
- A --url httpx cannot parse (`http://h:abc`, `http://[::1`) is one line, status 1 as the
  other --url mistakes; it was httpx's InvalidURL traceback.
"""

from __future__ import annotations

import datetime as dt
import io
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from coordinator._cli import _tls_error
from coordinator.cli import main
from tests.coordinator.test_service_support import ADMIN
from tests.test_cli_ux import _one_error_line

SERVE = "plume coordinator serve"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
DAY = dt.timedelta(days=1)


def _pair(
    folder: Path,
    *,
    start: dt.datetime = NOW - DAY,
    end: dt.datetime = NOW + DAY,
    dns: tuple[str, ...] = ("localhost",),
    ips: tuple[str, ...] = ("127.0.0.1",),
    passphrase: bytes | None = None,
) -> tuple[str, str]:
    """A self-signed certificate valid from `start` to `end` for the names given, and its key
    (encrypted with `passphrase` if given), as PEM files in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plume-s43")])
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    encryption: serialization.KeySerializationEncryption = (
        serialization.NoEncryption()
        if passphrase is None
        else serialization.BestAvailableEncryption(passphrase)
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    return str(cert_path), str(key_path)


def _run(argv: list[str]) -> int:
    """`plume ARGV`'s exit status, whether it returns it or exits with it."""
    try:
        return int(main(argv) or 0)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """`coordinator.service.serve` replaced by a recorder of its keyword arguments."""
    import coordinator.service as service

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(service, "serve", lambda config, *a, **kw: calls.append(kw))
    return calls


# --- 1: a certificate outside its dates -----------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "words"),
    [
        (NOW - 10 * DAY, NOW - DAY, "the certificate has expired"),
        (NOW + DAY, NOW + 10 * DAY, "the certificate is not valid yet"),
    ],
)
def test_a_certificate_outside_its_dates_is_refused_at_the_start(
    start: dt.datetime,
    end: dt.datetime,
    words: str,
    tmp_path: Path,
    served: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare
    cert, key = _pair(tmp_path / "tls", start=start, end=end)
    db = tmp_path / "x.db"
    # Execute
    code = _run(["coordinator", "serve", "--db", str(db), "--tls-cert", cert, "--tls-key", key])
    # Assert: status 2, one line naming the file and its dates; serve never called
    line = _one_error_line(capsys.readouterr().err, SERVE)
    assert code == 2
    assert f"--tls-cert {cert}: {words}" in line
    shown = "%Y-%m-%d %H:%M:%S UTC"
    assert f"valid from {start.strftime(shown)} to {end.strftime(shown)}" in line
    assert served == [] and not db.exists()


def test_a_certificate_valid_now_reaches_serve(
    tmp_path: Path, served: list[dict[str, Any]]
) -> None:
    cert, key = _pair(tmp_path / "tls")
    assert _run(["coordinator", "serve", "--db", str(tmp_path / "x.db"), "--tls-cert", cert,
                 "--tls-key", key]) == 0  # fmt: skip
    assert [kw["tls_cert"] for kw in served] == [cert]


# --- 2: an encrypted key's passphrase ------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_an_encrypted_key_is_asked_for_once_and_uvicorn_gets_the_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a terminal; getpass records whether the database existed when it asked; the
    # server's run loads uvicorn's configuration (its TLS context) and returns at once
    import getpass

    from coordinator.service import server

    cert, key = _pair(tmp_path / "tls", passphrase=b"secret")
    db = tmp_path / "x.db"
    asked: list[bool] = []

    def fake_getpass(prompt: str = "") -> str:
        asked.append(db.exists())
        return "secret"

    loaded: list[object] = []

    def fake_run(self: Any, sockets: Any = None) -> None:
        self.config.load()  # uvicorn's own load of the pair: it must not ask again
        loaded.append(self.config.ssl)

    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    monkeypatch.setattr("sys.stdin", _Terminal())
    monkeypatch.setattr(server._Server, "run", fake_run)
    # Execute
    code = _run(["coordinator", "serve", "--db", str(db), "--port", "0", "--tls-cert", cert,
                 "--tls-key", key])  # fmt: skip
    # Assert: asked once, before the database was made; uvicorn's TLS context loaded
    assert code == 0
    assert asked == [False]
    assert len(loaded) == 1 and isinstance(loaded[0], ssl.SSLContext)


def test_a_wrong_passphrase_is_said_to_be_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    import getpass

    cert, key = _pair(tmp_path / "tls", passphrase=b"secret")
    db = tmp_path / "x.db"
    asked: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        asked.append(prompt)
        return "nope"

    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    monkeypatch.setattr("sys.stdin", _Terminal())
    # Execute
    code = _run(["coordinator", "serve", "--db", str(db), "--port", "0", "--tls-cert", cert,
                 "--tls-key", key])  # fmt: skip
    # Assert: asked once; one line naming the key and the wrong passphrase; no database
    line = _one_error_line(capsys.readouterr().err, SERVE)
    assert code == 2
    assert asked == [f"passphrase of --tls-key {key}: "]
    assert f"--tls-key {key} is encrypted and the passphrase typed does not decrypt it: " \
        "wrong passphrase" in line  # fmt: skip
    assert not db.exists()
    # The diagnosis alone: a wrong passphrase, the right one, none
    assert "wrong passphrase" in (_tls_error(cert, key, "nope") or "")
    assert _tls_error(cert, key, "secret") is None
    assert "is encrypted (it asks for a passphrase)" in (_tls_error(cert, key) or "")


def test_an_encrypted_key_without_a_terminal_asks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: stdin is not a terminal; getpass must not be called
    import getpass

    cert, key = _pair(tmp_path / "tls", passphrase=b"secret")
    db = tmp_path / "x.db"
    asked: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        asked.append(prompt)
        return "secret"

    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    monkeypatch.setattr("sys.stdin", io.StringIO())
    # Execute
    code = _run(["coordinator", "serve", "--db", str(db), "--port", "0", "--tls-cert", cert,
                 "--tls-key", key])  # fmt: skip
    # Assert
    line = _one_error_line(capsys.readouterr().err, SERVE)
    assert code == 2 and asked == []
    assert f"--tls-key {key} is encrypted (it asks for a passphrase) and stdin is not a " \
        "terminal to type it at" in line  # fmt: skip
    assert not db.exists()


# --- 6: TLS files from the --config file are named by their key ------------------------------


def test_tls_load_errors_name_the_config_files_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the key of another certificate, both named in the file, relative to it
    _pair(tmp_path / "a")
    _pair(tmp_path / "b")
    conf = tmp_path / "coordinator.toml"
    conf.write_text('db = "x.db"\nport = 0\ntls-cert = "a/cert.pem"\ntls_key = "b/key.pem"\n')
    # Execute: the real serve (the pair does not load, so it never listens)
    code = _run(["coordinator", "serve", "--config", str(conf)])
    # Assert: the keys and the files looked at, no flag
    line = _one_error_line(capsys.readouterr().err, SERVE)
    assert code == 2
    assert (
        f"tls_key = 'b/key.pem' in --config {conf} ({tmp_path / 'b' / 'key.pem'}) is not the "
        f"private key of the certificate in tls-cert = 'a/cert.pem' in --config {conf} "
        f"({tmp_path / 'a' / 'cert.pem'})"
    ) in line
    assert "--tls-" not in line
    assert not (tmp_path / "x.db").exists()


def test_an_expired_certificate_from_the_config_file_is_named_by_its_key(
    tmp_path: Path, served: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    _pair(tmp_path / "a", start=NOW - 10 * DAY, end=NOW - DAY)
    conf = tmp_path / "coordinator.toml"
    conf.write_text('db = "x.db"\ntls-cert = "a/cert.pem"\ntls-key = "a/key.pem"\n')
    assert _run(["coordinator", "serve", "--config", str(conf)]) == 2
    line = _one_error_line(capsys.readouterr().err, SERVE)
    assert f"tls-cert = 'a/cert.pem' in --config {conf} (" in line
    assert "the certificate has expired" in line and "--tls-" not in line
    assert served == []


# --- 3: why an admin command refused the coordinator's certificate ---------------------------


@contextmanager
def _tls_listener(cert: str, key: str) -> Iterator[int]:
    """A loopback port whose every connection gets a TLS handshake with `cert` (nothing more:
    the admin commands here fail in the handshake)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conn.settimeout(5)
            try:
                context.wrap_socket(conn, server_side=True).close()
            except (OSError, ValueError):  # the client refused the certificate
                conn.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def _status(url: str, *extra: str) -> int:
    return _run(["coordinator", "status", "--url", url, "--admin-token", ADMIN, *extra])


@pytest.mark.parametrize(
    ("pair", "host", "cacert", "expected", "unexpected"),
    [
        # The certificate names 127.0.0.1 only; the URL says localhost
        ({"dns": ()}, "localhost", True, "use a URL whose host the certificate names", "--cacert"),
        # It names localhost only; the URL says 127.0.0.1
        ({"ips": ()}, "127.0.0.1", True, "use a URL whose host the certificate names", "--cacert"),
        (
            {"start": NOW - 10 * DAY, "end": NOW - DAY},
            "127.0.0.1",
            True,
            "a certificate that has expired",
            "--cacert PEM",
        ),
        (
            {"start": NOW + DAY, "end": NOW + 10 * DAY},
            "127.0.0.1",
            True,
            "a certificate that is not valid yet",
            "--cacert PEM",
        ),
        # No --cacert: a self-signed certificate this machine does not trust
        ({}, "127.0.0.1", False, "does not trust", "use a URL whose host"),
    ],
)
def test_a_refused_certificate_is_told_by_why(
    pair: dict[str, Any],
    host: str,
    cacert: bool,
    expected: str,
    unexpected: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare
    cert, key = _pair(tmp_path / "tls", **pair)
    with _tls_listener(cert, key) as port:
        # Execute
        url = f"https://{host}:{port}"
        code = _status(url, *(["--cacert", cert] if cacert else []))
    # Assert: status 1, one line saying what to do about this failure
    line = _one_error_line(capsys.readouterr().err, "plume coordinator status")
    assert code == 1
    assert "CERTIFICATE_VERIFY_FAILED" in line
    assert expected in line and unexpected not in line
    if not cacert:
        assert "pass the CA that signed it with --cacert PEM" in line
    if "URL whose host" in expected:
        assert f"does not name {host}" in line


# --- 5: a --url httpx cannot parse ----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://h:abc", "Invalid port: 'abc'"),
        ("http://[::1", "an IPv6 address goes in brackets, both of them"),
        ("http://", "it names no host"),
    ],
)
@pytest.mark.parametrize("command", [["status"], ["pause", "--task", "1"], ["stop", "--task", "1"]])
def test_a_malformed_url_is_one_line(
    url: str, why: str, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = _run(["coordinator", *command, "--url", url, "--admin-token", ADMIN])
    # Assert: status 1 as the other --url mistakes (no scheme), one line naming the flag
    line = _one_error_line(capsys.readouterr().err, f"plume coordinator {command[0]}")
    assert code == 1
    assert f"--url {url!r} is not a valid URL: " in line and why in line
