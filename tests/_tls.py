"""A self-signed certificate for the TLS tests, made with `cryptography` (no network, no
openssl binary): one EC P-256 key, valid from 5 minutes ago for a day, a CA (BasicConstraints
ca=True) so that the certificate itself is the bundle a client trusts. Every call makes a new
key and writes new files under the folder it is given; nothing is shared between tests."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(
    tmp: Path,
    *,
    cn: str = "plume-test",
    localhost: bool = True,
    names: tuple[str, str] = ("cert.pem", "key.pem"),
) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (and `localhost` unless `localhost=False`) with
    common name `cn`, and its key, written as PEM to `tmp / names[0]` and `tmp / names[1]`:
    their paths as strings."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    hosts: list[x509.GeneralName] = [x509.DNSName("localhost")] if localhost else []
    hosts.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / names[0], tmp / names[1]
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)
