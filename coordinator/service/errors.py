"""The service's typed HTTP errors: a status code, a `protocol.names.Reason` and a sentence."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path as PathParam

from protocol.names import Reason

__all__ = ["ApiError", "StoreId"]

# A task or round id in a URL. SQLite's INTEGER is signed 64-bit, so a larger id names nothing:
# it is refused as 422 `validation` here rather than overflowing the store's query (a 500).
StoreId = Annotated[int, PathParam(le=2**63 - 1)]


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
