"""Review test of the SDK's secure flow: malformed setup headers from the server."""

from __future__ import annotations

import math
from typing import Any

import httpx
import numpy as np
import pytest

from protocol.messages import Assignment, CodecParams, TensorShape, TrainingParams
from protocol.secagg import SecAggHeader
from sdk.client import ClientError, _Exchange, _secure_flow

SIZE = 36


class _FakeCore:
    """The parts of the client core the flow uses before the first stage upload."""

    bandwidth: dict[int, Any] = {}  # noqa: RUF012

    def round_end(self, a: Any) -> float:
        return math.inf

    def round_start(self, a: Any) -> dict[str, int]:
        return {"up": 0, "down": 0}

    def model_exchange(self, *args: Any) -> _Exchange:
        return _Exchange("GET", "model", 2)

    def apply_model_digest(self, *args: Any, **kwargs: Any) -> tuple[np.ndarray, int, str, bytes]:
        return np.zeros(SIZE, np.float32), 1, "dense", b"\0" * 32

    def secure_setup_exchange(self, round_id: int) -> _Exchange:
        return _Exchange("GET", "setup", round_id)


def _assignment() -> Assignment:
    return Assignment(
        task_id=1, round_id=2, base_version=0, model_name="tiny",
        spec=[TensorShape("w", [4, 8]), TensorShape("b", [4])],
        codec=CodecParams(), training=TrainingParams(), deadline_unix=0.0,
        model_path="/m", upload_path="/u", max_upload_bytes=1 << 20, seed=0, secure=True,
    )  # fmt: skip


@pytest.mark.parametrize(
    "headers",
    [
        {SecAggHeader.NODE: "0"},  # no digest
        {SecAggHeader.DIGEST: "zz" * 32, SecAggHeader.NODE: "0"},  # not hex
        {SecAggHeader.DIGEST: "00" * 32, SecAggHeader.NODE: "first"},  # not a number
    ],
)
def test_malformed_setup_headers_are_a_client_error(headers: dict[str, str]) -> None:
    # Prepare: the flow up to the setup download, then a setup answer with bad headers
    flow = _secure_flow(_FakeCore(), _assignment(), lambda p: (p, 1, 0.0), None, None, None)  # type: ignore[arg-type]
    steps: list[Any] = [next(flow), flow.send(httpx.Response(200))]
    assert [s.path for s in steps] == ["model", "setup"]
    # Execute / Assert: a typed ClientError (was a bare KeyError or ValueError)
    with pytest.raises(ClientError, match="bad_response"):
        flow.send(httpx.Response(200, headers=headers, content=b""))
