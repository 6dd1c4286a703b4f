"""`plume coordinator serve` with --tls-cert/--tls-key that do not load (serve loads them before
it opens the database): a file that holds no PEM certificate or key, a key of another
certificate, or an encrypted key is a usage error
(status 2, which the documented systemd unit does not retry) naming the file at fault. Before,
each exited 1 with ssl's "[SSL] PEM lib (_ssl.c:3905)", which names neither file. The same for an --host written as an IP address that is none (999.1.1.1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from coordinator._cli import _tls_error
from coordinator.cli import main

from ..test_cli_ux import _one_error_line
from .test_service_tls import _self_signed

_PROG = "plume coordinator serve"


@pytest.fixture
def pem(tmp_path: Path) -> dict[str, str]:
    """A certificate and its key, another pair's key, an encrypted key and a non-PEM file."""
    cert, key = _self_signed(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, other_key = _self_signed(other)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    junk = tmp_path / "junk.pem"
    junk.write_text("not a PEM file\n")
    return {
        "cert": cert,
        "key": key,
        "other_key": other_key,
        "encrypted": str(encrypted),
        "junk": str(junk),
    }


@pytest.mark.parametrize(
    ("cert", "key", "expected"),
    [
        ("junk", "key", "--tls-cert {junk} holds no PEM certificate"),
        ("key", "key", "--tls-cert {key} holds no PEM certificate"),
        ("cert", "junk", "--tls-key {junk} holds no PEM private key"),
        ("cert", "other_key", "--tls-key {other_key} is not the private key of the certificate"),
    ],
)
def test_a_tls_file_that_cannot_serve_is_a_usage_error_naming_it(
    cert: str,
    key: str,
    expected: str,
    pem: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare
    db = tmp_path / "x.db"
    # Execute: the real serve, on a free port of the loopback
    with pytest.raises(SystemExit) as exited:
        main(["coordinator", "serve", "--db", str(db), "--port", "0", "--tls-cert", pem[cert],
              "--tls-key", pem[key]])  # fmt: skip
    # Assert: status 2, one line naming the file, and no database made
    assert exited.value.code == 2
    assert expected.format(**pem) in _one_error_line(capsys.readouterr().err, _PROG)
    assert not db.exists()


def test_an_encrypted_key_is_named(pem: dict[str, str]) -> None:
    # serve's own load would ask a terminal for the passphrase; the diagnosis never asks
    assert _tls_error(pem["cert"], pem["encrypted"]) == (
        f"--tls-key {pem['encrypted']} is encrypted (it asks for a passphrase); give serve an "
        f"unencrypted key (e.g. `openssl pkey -in {pem['encrypted']} -out KEY`, readable by "
        "this user alone)"
    )
    assert _tls_error(pem["cert"], pem["key"]) is None


def test_a_host_name_and_shorthand_addresses_reach_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: serve replaced by a recorder
    import coordinator.service as service

    seen: list[tuple[object, ...]] = []
    monkeypatch.setattr(service, "serve", lambda config, *a, **kw: seen.append(a))
    # Execute: names and the resolver's shorthand addresses are the resolver's to judge
    for host in ("localhost", "127.1", "::1", "fe80::1%lo"):
        assert main(["coordinator", "serve", "--db", str(tmp_path / "x.db"), "--host", host]) == 0
    # Assert
    assert [a[0] for a in seen] == ["localhost", "127.1", "::1", "fe80::1%lo"]


def test_an_encrypted_key_with_no_terminal_is_a_usage_error_naming_it(
    pem: dict[str, str], tmp_path: Path
) -> None:
    # As under systemd: no controlling terminal and no stdin, so OpenSSL's passphrase prompt
    # reads end-of-file and serve's own load fails with a bare OSError (EINVAL). Before, that
    # was status 1 ("[Errno 22] Invalid argument"), which the documented unit retries forever.
    # Prepare
    db = tmp_path / "x.db"
    argv = ["coordinator", "serve", "--db", str(db), "--port", "0",
            "--tls-cert", pem["cert"], "--tls-key", pem["encrypted"]]  # fmt: skip
    # Execute: the real serve in a new session (no terminal), stdin closed
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from coordinator.cli import main; raise SystemExit(main({argv!r}))",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        start_new_session=True,
        timeout=120,
    )
    # Assert: status 2, the last line names the encrypted key, no database made
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert (
        last.startswith(f"{_PROG}: error: ")
        and f"--tls-key {pem['encrypted']} is encrypted" in last
    )
    assert not db.exists()
