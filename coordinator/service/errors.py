"""The service's typed HTTP errors (status, `Reason`, sentence) and its Content-Type gate."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path as PathParam

from protocol.names import ContentType, Reason

__all__ = ["ApiError", "StoreId", "media_type", "require_media_type"]

# A task or round id in a URL. SQLite's INTEGER is signed 64-bit, so an id outside it names
# nothing: it is refused as 422 `validation` here rather than overflowing the store's query (a
# 500), above 2^63 - 1 and below -2^63 alike.
StoreId = Annotated[int, PathParam(ge=-(2**63), le=2**63 - 1)]


class ApiError(Exception):
    """Raised anywhere in a request; rendered as `{"reason": ..., "detail": ...}` with `status`."""

    def __init__(
        self, status: int, reason: Reason, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {reason}: {detail}")
        self.status = status
        self.reason = reason
        self.detail = detail
        self.headers = headers or {}


def media_type(content_type: str | None) -> str:
    """The `type/subtype` of a Content-Type value, lower case, parameters dropped ("" if none)."""
    if content_type is None:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def require_media_type(content_type: str | None, expected: ContentType) -> None:
    """Refuse (415 `unsupported_media_type`) a body not labelled `expected`.

    Case-blind, parameters (`; charset=...`) ignored. For JSON, `application/<x>+json` also
    passes, as FastAPI itself parses those. Called before a byte of the body is decoded.
    """
    got = media_type(content_type)
    want = media_type(expected)
    if got == want:
        return
    if expected == ContentType.JSON and got.startswith("application/") and got.endswith("+json"):
        return
    shown = repr(content_type[:80]) if content_type is not None else "none"
    raise ApiError(
        415,
        Reason.UNSUPPORTED_MEDIA_TYPE,
        f"this route takes Content-Type: {want} (got {shown})",
    )
