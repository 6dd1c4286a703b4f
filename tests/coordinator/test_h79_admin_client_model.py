"""`AdminClient.model` keeps nothing it has not checked: an answer whose snapshot does not
decode under the task's spec, whose digest or version header does not match what it decodes
to, or that is larger than the spec's largest snapshot, is an `AdminError` saying why. Served by
an in-process transport standing in for a damaged or hostile coordinator."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import numpy as np
import pytest

from compression import DecodeLimits, encode_snapshot, model_digest
from coordinator.service import AdminClient, AdminError
from protocol.messages import TaskStatus, to_json

from .test_service_support import SPEC, initial_params, task_config

PARAMS = initial_params()
SNAPSHOT = encode_snapshot(PARAMS, SPEC, "fp32")
DIGEST = model_digest(PARAMS).hex()


def _status() -> dict[str, object]:
    return to_json(TaskStatus(1, "active", 4, 4, 4, None, DIGEST, task_config()))  # type: ignore[no-any-return]


def _client(model: Callable[[httpx.Request], httpx.Response]) -> AdminClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/admin/tasks/1":
            return httpx.Response(200, json=_status())
        assert request.url.path == "/v1/admin/tasks/1/model"
        return model(request)

    return AdminClient("http://coordinator", "t", transport=httpx.MockTransport(handler))


def _model(
    body: bytes = SNAPSHOT, version: str = "4", digest: str = DIGEST, encoding: str = "snapshot"
) -> Callable[[httpx.Request], httpx.Response]:
    headers = {
        "content-type": "application/octet-stream",
        "x-plume-model-version": version,
        "x-plume-model-digest": digest,
        "x-plume-model-encoding": encoding,
    }
    return lambda request: httpx.Response(200, content=body, headers=headers)


def test_a_model_that_checks_out_is_returned_with_its_arrays() -> None:
    with _client(_model()) as admin:
        got = admin.model(1)
    assert (got.version, got.digest, got.snapshot) == (4, DIGEST, SNAPSHOT)
    assert np.array_equal(got.params, PARAMS)
    assert {k: v.shape for k, v in got.arrays().items()} == {"w": (10, 16), "b": (10,)}


@pytest.mark.parametrize(
    ("served", "asked", "says"),
    [
        (_model(digest="0" * 64), None, "is not the digest"),
        (_model(digest="not-hex"), None, "no model digest header"),
        (_model(encoding="delta-chain"), None, "not snapshot"),
        (_model(version="x"), None, "no model version header"),
        (_model(), 3, "not the 3 asked for"),
        (_model(body=SNAPSHOT[:-3]), None, "decoder refuses"),
        # an fp16 snapshot of the model decodes, but not to the model the digest names
        (_model(body=encode_snapshot(PARAMS, SPEC, "fp16")), None, "is not the digest"),
        (_model(body=b"\0" * (DecodeLimits().frame_cap(SPEC) + 1)), None, "cap"),
        (
            lambda request: httpx.Response(200, json={"not": "a model"}),
            None,
            "not a model",
        ),
    ],
)
def test_an_answer_that_does_not_check_out_is_refused_with_the_reason(
    served: Callable[[httpx.Request], httpx.Response], asked: int | None, says: str
) -> None:
    with _client(served) as admin, pytest.raises(AdminError) as refused:
        admin.model(1, asked)
    assert says in refused.value.problem


def test_the_version_asked_for_is_sent_as_the_query() -> None:
    seen: list[str] = []

    def model(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url.query, "ascii"))
        return _model()(request)

    with _client(model) as admin:
        admin.model(1, 4)
    assert seen == ["version=4"]
