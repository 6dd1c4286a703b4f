"""The service's typed HTTP errors: a status code, a `protocol.names.Reason` and a sentence."""

from __future__ import annotations

from protocol.names import Reason

__all__ = ["ApiError"]


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
