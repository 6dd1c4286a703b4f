"""TLS trust shared by the HTTP clients: the `verify=` of the SDK's `Client` and `AsyncClient`
and of the coordinator's `AdminClient`, made into what httpx takes."""

from __future__ import annotations

import os
import ssl

__all__ = [
    "CERT_HAS_EXPIRED",
    "NAME_MISMATCH",
    "OUT_OF_DATE",
    "certificate_failure",
    "tls_verify",
]

# OpenSSL's X509_V_ERR_* codes (`ssl.SSLCertVerificationError.verify_code`) for a certificate
# that does not name the host, and for one out of its validity dates: the SDK and the admin
# commands say what to change by them.
NAME_MISMATCH = frozenset({62, 64})  # HOSTNAME_MISMATCH, IP_ADDRESS_MISMATCH
CERT_HAS_EXPIRED = 10
OUT_OF_DATE = frozenset({9, CERT_HAS_EXPIRED})  # CERT_NOT_YET_VALID, CERT_HAS_EXPIRED


def certificate_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The `ssl.SSLCertVerificationError` behind `exc` (httpx's `ConnectError` from httpcore's,
    from OpenSSL's), or None: any other failure, an SSL one included."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def tls_verify(
    verify: bool | str | os.PathLike[str] | ssl.SSLContext, *, name: str = "verify"
) -> bool | ssl.SSLContext:
    """`verify` as httpx takes it without a warning: `True`, `False` or an `ssl.SSLContext` as
    given; the path of a CA bundle (a PEM file, or a directory of hashed certificates, as httpx
    read it) as a context trusting it, made here, since httpx 0.28 deprecates `verify=<str>`.
    A file is read now; a directory's certificates are looked up at each handshake, so one
    holding none fails then, as an untrusted certificate.

    `ValueError` naming the path (as `name=path`) for one that is empty, missing, unreadable or
    holds no PEM certificate (httpx's was a bare `FileNotFoundError` naming nothing, and an
    empty string quietly meant the system's trust store); `TypeError` for anything else.
    `name` is what the caller calls the value in those messages (a CLI flag, say)."""
    if isinstance(verify, bool | ssl.SSLContext):
        return verify
    if not isinstance(verify, str | os.PathLike):
        raise TypeError(
            f"{name} must be True, False, the path of a CA bundle or an ssl.SSLContext, not "
            f"{type(verify).__name__}"
        )
    path = os.fspath(verify)
    if not path:  # ssl's cafile="" loads the default trust store, as if no path were given
        raise ValueError(
            f"{name}={path!r} is empty: give the path of a CA bundle, or True to trust the "
            "default CAs"
        )
    try:
        if os.path.isdir(path):
            return ssl.create_default_context(capath=path)
        return ssl.create_default_context(cafile=path)
    except FileNotFoundError:
        raise ValueError(f"{name}={path!r}: no such CA bundle file") from None
    except ssl.SSLError as exc:  # read, but no PEM certificate in it
        raise ValueError(
            f"{name}={path!r} holds no PEM certificate ({exc}): give the CA that signed the "
            "coordinator's certificate (for a self-signed one, that certificate itself)"
        ) from exc
    except ValueError as exc:  # a NUL in the path
        raise ValueError(f"{name}={path!r} is not a usable path: {exc}") from None
    except OSError as exc:  # PermissionError, NotADirectoryError, EIO, ...
        raise ValueError(f"{name}={path!r}: cannot read the CA bundle: {exc}") from exc
