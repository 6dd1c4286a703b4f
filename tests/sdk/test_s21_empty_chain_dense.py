"""`Client.bandwidth` counts no dense bytes for a model download answered with the empty chain
(`have=` the current version), as the coordinator's ledger has since 1e252e0; a download that
brings a model (a chain to a newer version, a snapshot) still counts the model's dense bytes."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from protocol.names import Header, ModelEncoding
from sdk.client import Client, _Exchange

DENSE = 4_000


def _download(client: Client, have: str | None, version: str, encoding: str) -> int:
    params = {"format": "auto", "dtype": "fp32", **({"have": have} if have is not None else {})}
    ex = _Exchange("GET", "/v1/tasks/1/model", 7, params=params, dense_down_on_ok=DENSE,
                   count_payload_down=True)  # fmt: skip
    request = httpx.Request("GET", "http://coordinator.test/v1/tasks/1/model", params=params)
    response = httpx.Response(
        200,
        headers={
            "x-plume-ledger-round": "7",
            Header.MODEL_ENCODING: encoding,
            Header.MODEL_VERSION: version,
        },
        content=b"\x00" * 8,
        request=request,
    )
    client.bandwidth.clear()
    client._core.account(request, response, ex)
    return client.bandwidth[7]["down"]["dense_bytes"]


@pytest.mark.parametrize(
    ("have", "version", "encoding", "dense"),
    [
        ("3", "3", ModelEncoding.DELTA_CHAIN, 0),  # the empty chain: nothing new was sent
        ("3", "4", ModelEncoding.DELTA_CHAIN, DENSE),  # a chain to a newer version
        ("3", "4", ModelEncoding.SNAPSHOT, DENSE),  # the coordinator chose the snapshot
        (None, "3", ModelEncoding.SNAPSHOT, DENSE),  # no model held
    ],
)
def test_dense_bytes_follow_whether_a_model_came(
    tmp_path: Path, have: str | None, version: str, encoding: str, dense: int
) -> None:
    # Prepare
    client = Client("http://coordinator.test", str(tmp_path / "app"))
    try:
        # Execute
        got = _download(client, have, version, encoding)
    finally:
        client.close()
    # Assert
    assert got == dense
