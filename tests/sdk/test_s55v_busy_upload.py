"""docs/devices.md on a 5xx at the upload, against a loopback coordinator: "A 429 or 5xx still
answered at the last attempt is raised as that answer's ClientError ..., the attempts named at
the end of detail"; "An exception leaves the app directory consistent: an upload whose answer
never came stays pending and is re-sent by the next participate (its idempotency key makes a
second copy harmless)"; "The next run re-sends an upload left pending before it checks in".
A client middleware (`mods=`) answers every upload attempt 503 in the coordinator's place,
then lets them through: the re-sent upload carries the first one's idempotency key, the round
holds one update from the device, and the next round trains as usual."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

import sdk
from sdk import Client
from tests.coordinator.test_service_support import (
    SoftmaxTrainer,
    admin_get,
    create_task,
    local_data,
    loopback_url,  # noqa: F401  (the fixture `url`)
    poll_until,
    task_config,
)


class _BusyUploads:
    """Answers uploads 503 while `busy`; records every upload's path and idempotency key."""

    def __init__(self) -> None:
        self.busy = True
        self.uploads: list[tuple[str, str]] = []
        self.first: list[str] = []  # the first request of each participate call

    def __call__(
        self, request: httpx.Request, send: Callable[[httpx.Request], httpx.Response]
    ) -> httpx.Response:
        if not self.first or self.first[-1] == "":
            if self.first:
                self.first[-1] = request.url.path
        if request.method == "POST" and request.url.path.endswith("/updates"):
            key = request.headers.get("idempotency-key", "")
            self.uploads.append((request.url.path, key))
            if self.busy:
                return httpx.Response(
                    503, json={"reason": "busy", "detail": "upload buffer full"}, request=request
                )
        return send(request)


def test_an_upload_answered_503_at_every_attempt_stays_pending_and_is_resent_first(
    url: str, tmp_path: Path
) -> None:
    task_id = create_task(url, task_config(rounds=2, clients_per_round=1, deadline_s=60.0))
    app = tmp_path / "app"
    mod = _BusyUploads()
    with Client(url, app, mods=(mod,), backoff_s=0.0) as client:
        client.register()
        with pytest.raises(sdk.ClientError) as caught:
            client.participate(SoftmaxTrainer(), *local_data(6), task_id=task_id)
        assert str(caught.value) == "503 busy: upload buffer full (after 5 attempts)"
        assert len(mod.uploads) == 5
        key = mod.uploads[0][1]
        assert key and {k for _, k in mod.uploads} == {key}
        pending = json.loads((app / "pending.json").read_text())
        assert pending["task_id"] == task_id
        # the coordinator comes back: the next call re-sends before it checks in
        mod.busy = False
        mod.first.append("")
        report = client.participate(SoftmaxTrainer(), *local_data(6), task_id=task_id)
        assert mod.first[-1].endswith("/updates"), mod.first
        assert mod.uploads[5][1] == key  # the same idempotency key
        assert report is not None
        assert not (app / "pending.json").exists()
        # the re-sent upload landed in round 1; this call trained round 2 as usual
        assert (report.round_id, report.resent) == (2, False)
    # The coordinator closes round 2 after answering its upload (test_s66b_fetch_current_before_
    # commit holds that close back): its outcome is read once it has one.
    poll_until(
        lambda: admin_get(url, "/v1/rounds/2")["state"] in ("committed", "abandoned"),
        "round 2 did not close in 30 s",
    )
    rounds = admin_get(url, f"/v1/admin/tasks/{task_id}/rounds")
    assert [(r["round_id"], r["state"], r["reports"]) for r in rounds] == [
        (1, "committed", 1),
        (2, "committed", 1),
    ]
