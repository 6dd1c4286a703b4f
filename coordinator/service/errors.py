"""The service's typed HTTP errors (status, `Reason`, sentence) and its Content-Type gate."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, LiteralString

from fastapi import Path as PathParam
from pydantic import BeforeValidator, Field
from pydantic_core import PydanticCustomError

from protocol.names import ContentType, Reason

__all__ = [
    "ApiError",
    "QueryBefore",
    "QueryNumber",
    "QueryVersion",
    "StoreId",
    "media_type",
    "require_media_type",
]

_DECIMAL_ID = re.compile(r"0|[1-9][0-9]*")


def _decimal(code: str, what: LiteralString) -> Callable[[object], object]:
    """A before-validator refusing a string that is not ASCII decimal digits without a leading
    zero: 422 `validation` "`what` is decimal digits with no sign, ... (got '+1')"."""

    def check(value: object) -> object:
        if isinstance(value, str) and not (value.isascii() and _DECIMAL_ID.fullmatch(value)):
            shown = value if len(value) <= 40 else value[:40] + "..."
            raise PydanticCustomError(
                code,
                what
                + " is decimal digits with no sign, space, point or leading zero (got {shown})",
                {"shown": repr(shown)},
            )
        return value

    return check


# A path id as sent: ASCII digits without a leading zero, nothing else. Pydantic's int takes
# `+1`, `1.0`, ` 1` (`%201`), `1_0` or `01` for an id too; one round would answer to several
# paths, and the bandwidth ledger, which reads the id from the path as written, could not tell
# an upload to `/v1/rounds/+1/updates` was round 1's.
_decimal_id = _decimal("decimal_id", "an id in the path")
# A number in the query by the same rule: Pydantic's int took `have=1_0` as 10, and `+1`,
# ` 1`, `01`, `4.0` as the obvious number (helper-341).
_decimal_query = _decimal("decimal_query", "a number in the query")


# SQLite's largest INTEGER (signed 64-bit): an id or version above it names nothing and is
# refused with a 422 rather than overflowing the store's query (a 500).
_STORE_INT_MAX = 2**63 - 1

# Each range sits on the int inside the alias, not on the route's `Path`/`Query` marker: there,
# behind the before-validator, it was checked the same, but the OpenAPI schema carried it as
# `ge`/`le`, keys JSON Schema does not know, instead of `minimum`/`maximum`.
_StoreInt = Annotated[int, Field(ge=0, le=_STORE_INT_MAX)]

# A number in the query, checked as sent: `QueryNumber` goes outside a range, as below (the
# `last` page size is `app.py`'s).
QueryNumber = BeforeValidator(_decimal_query)
# `have`, `version`, `base`: a model version, 0 up.
QueryVersion = Annotated[_StoreInt | None, QueryNumber]
# `before`: a round's sequence number in its task, 1 up.
QueryBefore = Annotated[Annotated[int, Field(ge=1, le=_STORE_INT_MAX)] | None, QueryNumber]

# A task or round id in a URL: decimal digits as above (422 `validation` otherwise), up to
# _STORE_INT_MAX.
StoreId = Annotated[_StoreInt, BeforeValidator(_decimal_id), PathParam()]


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
