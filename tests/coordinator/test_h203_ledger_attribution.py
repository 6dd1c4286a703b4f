"""Which round's ledger a signed exchange counts in (helper-202's F1): only a round the device
was selected for, that is open or closed at most `LEDGER_GRACE_S` ago, that the URL names (when
it names a round) and that belongs to the URL's task (when it names a task). Anything else is
control traffic: a device of an old round cannot charge later traffic, another task's model
downloads above all, to that round. A loopback coordinator and real SDK devices."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig
from coordinator.service import rounds as rounds_mod
from sdk.client import Client

from .test_service_support import (
    ADMIN,
    SoftmaxTrainer,
    await_assignment,
    create_task,
    device_client,
    local_data,
    send_signed,
    task_config,
    wait_until,
)

AUTH = {"authorization": f"Bearer {ADMIN}"}
LEDGER = "x-plume-ledger-round"


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[httpx.Client, str]]:
    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.02, tick_s=0.02
    )
    with ServerThread(cfg) as url, httpx.Client(base_url=url, timeout=30) as http:
        yield http, url


def _totals(http: httpx.Client, rid: int) -> Any:
    r = http.get(f"/v1/rounds/{rid}/bandwidth", headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()["totals"]


def _finished_task(http: httpx.Client, url: str, tmp: Path) -> tuple[int, list[Client], int]:
    """A one-round task both devices took part in, done: (task id, devices, its round id)."""
    task = create_task(http, task_config(rounds=1, name="A"))
    clients = [device_client(url, str(tmp / f"d{i}")) for i in range(2)]
    for c in clients:
        c.register()
    got: dict[int, int] = {}

    def run(i: int) -> None:
        a = await_assignment(clients[i], task)
        clients[i].train_round(a, SoftmaxTrainer(), *local_data(i))
        got[i] = a.round_id

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got.values())) == 1
    wait_until(http, f"/v1/admin/tasks/{task}", "state", "done")
    return task, clients, got[0]


def test_another_tasks_model_download_is_not_charged_to_an_old_round(
    served: tuple[httpx.Client, str], tmp_path: Path
) -> None:
    http, url = served
    _, clients, rid = _finished_task(http, url, tmp_path)
    before = _totals(http, rid)
    other = create_task(http, task_config(rounds=5, name="B"))
    for _ in range(5):
        r = send_signed(http, clients[0], "GET", f"/v1/tasks/{other}/model", rid)
        assert r.status_code == 200, r.text
        assert LEDGER not in r.headers  # control traffic
    assert _totals(http, rid) == before


def test_a_closed_rounds_ledger_stops_growing_after_the_grace(
    served: tuple[httpx.Client, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    http, url = served
    task, clients, rid = _finished_task(http, url, tmp_path)
    # Within the grace (60 s by default) the round's own device still counts in it: the
    # exchanges an SDK makes as a round ends.
    r = send_signed(http, clients[0], "GET", f"/v1/rounds/{rid}", rid)
    assert r.status_code == 200, r.text
    assert r.headers.get(LEDGER) == str(rid)
    monkeypatch.setattr(rounds_mod, "LEDGER_GRACE_S", 0.0, raising=False)
    before = _totals(http, rid)
    for path in (f"/v1/tasks/{task}/model", f"/v1/rounds/{rid}"):
        r = send_signed(http, clients[0], "GET", path, rid)
        assert r.status_code == 200, r.text
        assert LEDGER not in r.headers
    assert _totals(http, rid) == before


def test_a_status_read_of_another_round_is_not_charged_to_the_signed_one(
    served: tuple[httpx.Client, str], tmp_path: Path
) -> None:
    http, url = served
    task, clients, rid = _finished_task(http, url, tmp_path)
    other = create_task(http, task_config(rounds=1, name="B"))
    peer = threading.Thread(
        target=lambda: clients[1].train_round(
            await_assignment(clients[1], other), SoftmaxTrainer(), *local_data(1)
        )
    )
    peer.start()
    a = await_assignment(clients[0], other)  # an open round of task B, device 0 in it
    # The peer's own download and upload count in that round: let them land first (under
    # load they came between the two readings, a full make test's failure).
    peer.join()
    before = _totals(http, a.round_id)
    r = send_signed(http, clients[0], "GET", f"/v1/rounds/{rid}", a.round_id)
    assert r.status_code == 200, r.text
    assert LEDGER not in r.headers
    # Task A's model, signed with task B's open round: not B's traffic either.
    r = send_signed(http, clients[0], "GET", f"/v1/tasks/{task}/model", a.round_id)
    assert r.status_code == 200, r.text
    assert LEDGER not in r.headers
    assert _totals(http, a.round_id) == before
    # The round's own model, signed with it: counted in it.
    r = send_signed(http, clients[0], "GET", f"/v1/tasks/{other}/model", a.round_id)
    assert r.headers.get(LEDGER) == str(a.round_id)
    clients[0].train_round(a, SoftmaxTrainer(), *local_data(0))


def test_an_upload_refused_as_round_mismatch_is_control_traffic(
    served: tuple[httpx.Client, str], tmp_path: Path
) -> None:
    http, url = served
    _, clients, rid = _finished_task(http, url, tmp_path)
    before = _totals(http, rid)
    r = send_signed(
        http,
        clients[0],
        "POST",
        f"/v1/rounds/{rid + 1000}/updates",
        rid,
        body=b"x" * 100,
        headers={"content-type": "application/octet-stream", "idempotency-key": "k1"},
    )
    assert r.status_code == 403, r.text
    assert r.json()["reason"] == "round_mismatch"
    assert LEDGER not in r.headers
    assert _totals(http, rid) == before


def test_an_empty_chain_adds_no_dense_bytes(
    served: tuple[httpx.Client, str], tmp_path: Path
) -> None:
    # helper-202's F2: have=<current version> is answered with an 8-byte empty chain; it
    # carries no model, so the round's dense baseline must not grow by a model per request
    http, url = served
    task, clients, rid = _finished_task(http, url, tmp_path)
    version = http.get(f"/v1/admin/tasks/{task}", headers=AUTH).json()["version"]

    def down() -> Any:
        rows = http.get(f"/v1/rounds/{rid}/bandwidth", headers=AUTH).json()["rows"]
        (row,) = [
            r for r in rows if r["device_id"] == clients[0].device_id and r["direction"] == "down"
        ]
        return row

    before = down()
    for _ in range(5):
        r = send_signed(
            http, clients[0], "GET", f"/v1/tasks/{task}/model", rid, params={"have": str(version)}
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-plume-model-encoding"] == "delta-chain" and len(r.content) == 8
        assert r.headers.get(LEDGER) == str(rid)  # within the grace after the close
    after = down()
    assert after["requests"] == before["requests"] + 5
    assert after["payload_bytes"] == before["payload_bytes"] + 5 * 8
    assert after["dense_bytes"] == before["dense_bytes"]
