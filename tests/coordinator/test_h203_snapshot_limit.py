"""A per-device limit on whole-model snapshots per model version (helper-202's F4: one device
pulled 735 snapshots in 4 s), which the SDK's own downloads never reach, and the control
traffic by route. A loopback coordinator and real SDK devices."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig

from .test_h203_delta_bounded import _get  # a model GET signed by the device, round 0
from .test_service_support import (
    ADMIN,
    SPEC,
    SoftmaxTrainer,
    await_assignment,
    create_task,
    device_client,
    local_data,
    task_config,
    wait_until,
)

AUTH = {"authorization": f"Bearer {ADMIN}"}


def _serve(tmp: Path, **over: int) -> ServerThread:
    cfg = ServiceConfig(
        db_path=str(tmp / "plume.db"), admin_token=ADMIN, poll_s=0.02, tick_s=0.02, **over
    )
    return ServerThread(cfg)


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[httpx.Client, str]]:
    with _serve(tmp_path) as url, httpx.Client(base_url=url, timeout=30) as http:
        yield http, url


def test_a_device_past_the_default_limit_gets_429_with_retry_after(
    served: tuple[httpx.Client, str], tmp_path: Path
) -> None:
    http, url = served
    task = create_task(http, task_config(rounds=3))
    a, b = (device_client(url, str(tmp_path / n)) for n in ("a", "b"))
    for c in (a, b):
        c.register()
    for _ in range(16):  # the default, ServiceConfig.snapshots_per_version
        r = _get(http, a, task, {"format": "snapshot"})
        assert r.status_code == 200, r.text
    r = _get(http, a, task, {"format": "snapshot"})
    assert r.status_code == 429, r.status_code
    assert r.json()["reason"] == "rate_limited"
    assert "have=" in r.json()["detail"]
    assert 1 <= int(r.headers["retry-after"]) <= 3600
    # auto without have= would be a snapshot: refused too; with have= (nothing new): served
    assert _get(http, a, task, {"format": "auto"}).status_code == 429
    r = _get(http, a, task, {"format": "auto", "have": "0"})
    assert r.status_code == 200 and r.headers["x-plume-model-encoding"] == "delta-chain"
    # Another device is not limited by this one
    assert _get(http, b, task, {"format": "snapshot"}).status_code == 200
    # The refusals are control traffic, counted by route
    text = http.get("/metrics").text
    m = re.search(r"^plume_model_snapshots_rate_limited_total (\S+)$", text, re.M)
    assert m is not None and float(m.group(1)) == 2
    m = re.search(
        r'^plume_control_wire_bytes_by_route_total\{direction="down",'
        r'route="/v1/tasks/\{task_id\}/model"\} (\S+)$',
        text,
        re.M,
    )
    assert m is not None and float(m.group(1)) > 17 * SPEC.dense_bytes / 2


def test_the_count_starts_again_at_the_next_version(tmp_path: Path) -> None:
    with _serve(tmp_path, snapshots_per_version=2) as url, httpx.Client(base_url=url) as http:
        task = create_task(http, task_config(rounds=1, clients_per_round=1))
        a, b = (device_client(url, str(tmp_path / n)) for n in ("a", "b"))
        for c in (a, b):
            c.register()
        for _ in range(2):
            assert _get(http, a, task, {"format": "snapshot"}).status_code == 200
        assert _get(http, a, task, {"format": "snapshot"}).status_code == 429
        # Device b runs the round (its own first snapshot): version 1 is published
        b.train_round(await_assignment(b, task), SoftmaxTrainer(), *local_data(1))
        wait_until(http, f"/v1/admin/tasks/{task}", "version", 1)
        r = _get(http, a, task, {"format": "snapshot"})
        assert r.status_code == 200 and r.headers["x-plume-model-version"] == "1"


def test_the_sdks_own_downloads_never_reach_the_default_limit(
    served: tuple[httpx.Client, str], tmp_path: Path
) -> None:
    http, url = served
    task = create_task(http, task_config(rounds=3))
    clients = [device_client(url, str(tmp_path / f"d{i}")) for i in range(2)]
    for c in clients:
        c.register()
    # fetch_current many times at one version: one snapshot, then have= (nothing new)
    for _ in range(30):
        _, version, _ = clients[0].fetch_current(task, SPEC)
        assert version == 0

    def run(i: int) -> None:
        for _ in range(3):
            a = await_assignment(clients[i], task)
            clients[i].train_round(a, SoftmaxTrainer(), *local_data(i))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_until(http, f"/v1/admin/tasks/{task}", "state", "done")
    text = http.get("/metrics").text
    assert re.search(r"^plume_model_snapshots_rate_limited_total 0\.0$", text, re.M)


def test_the_limit_is_checked(tmp_path: Path) -> None:
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="snapshots_per_version"):
            ServiceConfig(db_path=str(tmp_path / "x.db"), snapshots_per_version=bad)  # type: ignore[arg-type]
    assert ServiceConfig(snapshots_per_version=0).snapshots_per_version == 0
