"""A `base_url` with a path the coordinator does not serve (`http://host:8080/api`, or a proxy
that does not route `/v1/...`) gave `ClientError: 404 not_found: Not Found`, naming neither the
URL asked for nor what to check. The refusal of an endpoint that does not exist now names both;
a 404 the coordinator gives with its own reason (`unknown_task`, ...) is unchanged."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from sdk import Client, ClientError


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(404, json={"reason": "not_found", "detail": "Not Found"}),  # the coordinator
        httpx.Response(404, text="<html>404 page not found</html>"),  # a proxy's page
    ],
)
def test_no_such_endpoint_names_the_url_and_base_url(
    tmp_path: Path, answer: httpx.Response
) -> None:
    transport = httpx.MockTransport(lambda request: answer)
    with Client("http://coord:8080/api", str(tmp_path), transport=transport) as client:
        with pytest.raises(ClientError) as info:
            client.register()
    err = info.value
    assert err.status == 404
    assert err.detail.endswith(
        " (POST http://coord:8080/api/v1/devices: no such endpoint; is base_url the "
        "coordinator's address?)"
    )


def test_a_404_with_a_plume_reason_is_unchanged(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"reason": "unknown_task", "detail": "no task 7"})

    with Client("http://coord", str(tmp_path), transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(ClientError) as info:
            client.check_in(7)
    assert str(info.value) == "404 unknown_task: no task 7"
