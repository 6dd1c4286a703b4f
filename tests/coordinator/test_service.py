"""The coordinator service end to end on a loopback uvicorn server, driven by the SDK client."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from coordinator.service import ServerThread
from protocol.messages import RoundStatus, from_json
from sdk.client import Client, ClientError, RoundReport

from .test_service_support import (
    ADMIN,
    SPEC,
    SoftmaxTrainer,
    admin_get,
    await_assignment,
    create_task,
    device_client,
    local_data,
    serve_fast,
    task_config,
    wait_until,
)

served = pytest.fixture(serve_fast, name="served")


@pytest.fixture()
def server(served: ServerThread) -> str:
    return served.url


def _participate_all(
    url: str, app_root: Path, n: int, rounds: int, task_id: int
) -> tuple[list[Client], list[RoundReport]]:
    clients = [device_client(url, str(app_root / f"dev{i}")) for i in range(n)]
    for c in clients:
        c.register()
    reports: list[RoundReport] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        x, y = local_data(i)
        for _ in range(rounds):
            r = clients[i].participate(SoftmaxTrainer(), x, y, task_id=task_id, max_wait_s=15)
            if r is not None:
                with lock:
                    reports.append(r)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return clients, reports


def test_rounds_commit_and_devices_hold_bit_identical_models(server: str, tmp_path: Path) -> None:
    # Prepare
    with httpx.Client(base_url=server) as http:
        task_id = create_task(http)
        # Execute
        clients, reports = _participate_all(server, tmp_path, n=2, rounds=3, task_id=task_id)
        status = wait_until(http, f"/v1/admin/tasks/{task_id}", "state", "done")
        # Assert: 3 committed rounds of 2 reports; later rounds used delta chains
        assert status["state"] == "done" and status["version"] == 3
        assert status["rounds_committed"] == 3
        rounds = [
            from_json(RoundStatus, r) for r in admin_get(http, f"/v1/admin/tasks/{task_id}/rounds")
        ]
        assert [r.state for r in rounds] == ["committed"] * 3
        assert all(r.reports == 2 and r.measurements["total_weight"] == 80.0 for r in rounds)
        assert {r.download_encoding for r in reports if r.model_version > 0} == {"delta-chain"}
        # Every device reconstructs the server's model bit for bit from the delta chain
        for c in clients:
            params, version, encoding = c.fetch_current(task_id, SPEC)
            assert version == 3 and encoding == "delta-chain"
            assert c._core.store.state()["model_digest"] == status["model_digest"]


def test_ledger_reconciles_with_sdk_counts(server: str, tmp_path: Path) -> None:
    # Prepare
    with httpx.Client(base_url=server) as http:
        task_id = create_task(http, task_config(rounds=2))
        # Execute
        clients, _ = _participate_all(server, tmp_path, n=2, rounds=2, task_id=task_id)
        wait_until(http, f"/v1/admin/tasks/{task_id}", "state", "done")
        # Assert: per round and direction, payload and wire bytes agree exactly
        for round_id in (1, 2):
            server_side = admin_get(http, f"/v1/rounds/{round_id}/bandwidth")
            sdk_side: dict[str, int] = {}
            for c in clients:
                for direction, cell in c.bandwidth.get(round_id, {}).items():
                    for k, v in cell.items():
                        sdk_side[f"{direction}_{k}"] = sdk_side.get(f"{direction}_{k}", 0) + v
            # (the accepted figures are the coordinator's own: the SDK counts exchanges)
            accepted = ("up_accepted_payload_bytes", "up_accepted_updates")
            assert {k: v for k, v in server_side["totals"].items() if k not in accepted} == sdk_side
            assert server_side["totals"]["up_accepted_updates"] == 2
            # (nothing was refused: every upload body counted in the round was accepted)
            assert (
                server_side["totals"]["up_accepted_payload_bytes"]
                == server_side["totals"]["up_payload_bytes"]
            )
            assert server_side["totals"]["up_payload_bytes"] > 0
            assert (
                server_side["totals"]["up_wire_bytes"] > server_side["totals"]["up_payload_bytes"]
            )
            assert server_side["totals"]["up_dense_bytes"] == 2 * SPEC.dense_bytes
            csv = http.get(
                f"/v1/rounds/{round_id}/bandwidth?format=csv",
                headers={"authorization": f"Bearer {ADMIN}"},
            )
            assert csv.headers["content-type"].startswith("text/csv")
            assert csv.text.splitlines()[0].startswith("round_id,device_id,direction")
            assert len(csv.text.splitlines()) == 1 + 4  # 2 devices x up/down
        metrics = http.get("/metrics").text
        assert 'plume_bytes_total{direction="up",kind="wire"}' in metrics
        assert "plume_updates_accepted_total 4.0" in metrics


def test_a_device_reads_only_its_own_ledger_rows(server: str, tmp_path: Path) -> None:
    # Prepare: a round with two reporting devices
    from protocol import auth

    with httpx.Client(base_url=server) as http:
        task_id = create_task(http, task_config(rounds=1))
        clients, _ = _participate_all(server, tmp_path, n=2, rounds=1, task_id=task_id)
        wait_until(http, f"/v1/admin/tasks/{task_id}", "state", "done")
        everyone = admin_get(http, "/v1/rounds/1/bandwidth")
        me = clients[0]

        def as_device(query: str) -> httpx.Response:
            target = f"/v1/rounds/1/bandwidth{query}"
            headers = auth.sign_request(
                me._core.key, method="GET", target=target, round_id=0, body=b"",
                timestamp_ms=int(time.time() * 1000),
            )  # fmt: skip
            return http.get(target, headers={str(k): v for k, v in headers.items()})

        # Execute
        mine, csv = as_device(""), as_device("?format=csv")
        # Assert: the admin sees both devices; a device its own rows and their totals only (another
        # device's upload size depends on its data), in JSON and CSV alike
        assert {r["device_id"] for r in everyone["rows"]} == {c.device_id for c in clients}
        assert mine.status_code == 200, mine.text
        body = mine.json()
        assert {r["device_id"] for r in body["rows"]} == {me.device_id}
        own = [r for r in everyone["rows"] if r["device_id"] == me.device_id]
        assert body["rows"] == own
        assert body["totals"]["up_payload_bytes"] == sum(
            r["payload_bytes"] for r in own if r["direction"] == "up"
        )
        assert body["totals"]["up_payload_bytes"] < everyone["totals"]["up_payload_bytes"]
        assert [line.split(",")[1] for line in csv.text.splitlines()[1:]] == [me.device_id] * 2


def test_a_device_reads_round_measurements_that_name_no_other_device(
    server: str, tmp_path: Path
) -> None:
    # Prepare: an anomaly-screened round with two reporting devices (its measurements hold
    # each device's update norm and cosine, keyed by device id)
    from protocol import auth

    with httpx.Client(base_url=server) as http:
        task_id = create_task(http, task_config(rounds=1, aggregator="anomaly+fedavg"))
        clients, _ = _participate_all(server, tmp_path, n=2, rounds=1, task_id=task_id)
        wait_until(http, f"/v1/admin/tasks/{task_id}", "state", "done")
        me, other = clients[0], clients[1]

        def as_device(target: str) -> httpx.Response:
            headers = auth.sign_request(
                me._core.key, method="GET", target=target, round_id=1, body=b"",
                timestamp_ms=int(time.time() * 1000),
            )  # fmt: skip
            return http.get(target, headers={str(k): v for k, v in headers.items()})

        # Execute
        everyone = admin_get(http, "/v1/rounds/1")["measurements"]
        mine = as_device("/v1/rounds/1")
        # Assert: the admin reads both devices' norms; the device its own and nothing naming the
        # other (another device's update norm depends on its data), the round's figures intact
        assert set(everyone["norms"]) == {me.device_id, other.device_id}
        assert mine.status_code == 200, mine.text
        meas = mine.json()["measurements"]
        assert other.device_id not in mine.text
        assert meas["norms"] == {me.device_id: everyone["norms"][me.device_id]}
        assert meas["cosines"] == {me.device_id: everyone["cosines"][me.device_id]}
        assert mine.json()["reports"] == 2


def test_over_selection_then_stragglers_get_409(server: str, tmp_path: Path) -> None:
    # Prepare: 2 reports wanted, 3 selected (over-selection 1.5)
    with httpx.Client(base_url=server) as http:
        task_id = create_task(http, task_config(rounds=1, over_selection=1.5))
        clients = [device_client(server, str(tmp_path / f"d{i}")) for i in range(3)]
        for c in clients:
            c.register()
        assignments = []
        deadline = time.monotonic() + 10
        while len(assignments) < 3 and time.monotonic() < deadline:
            for c in clients:
                if any(a[0] is c for a in assignments):
                    continue
                ans = c.check_in(task_id)
                if ans.assignment is not None:
                    assignments.append((c, ans.assignment))
            time.sleep(0.02)
        assert len(assignments) == 3
        # Execute: all three train; the first two uploads are kept, the third is a straggler
        results = []
        for i, (c, a) in enumerate(assignments):
            x, y = local_data(i)
            try:
                results.append(c.train_round(a, SoftmaxTrainer(), x, y).receipt.reports)
            except ClientError as exc:
                results.append(exc.reason)
        # Assert
        assert results == [1, 2, "round_closed"]
        status = wait_until(http, f"/v1/rounds/{assignments[0][1].round_id}", "state", "committed")
        assert status["state"] == "committed" and status["reports"] == 2 and status["selected"] == 3


def test_deadline_below_min_reports_abandons_and_keeps_model(
    served: ServerThread, tmp_path: Path
) -> None:
    # Prepare
    server = served.url
    with httpx.Client(base_url=server) as http:
        cfg = task_config(rounds=1, clients_per_round=2, min_reports=2, deadline_s=30.0)
        task_id = create_task(http, cfg)
        before = admin_get(http, f"/v1/admin/tasks/{task_id}")["model_digest"]
        clients = [device_client(server, str(tmp_path / f"d{i}")) for i in range(2)]
        for c in clients:
            c.register()
        answers = [c.check_in(task_id) for c in clients]
        answers = [
            a if a.assignment else c.check_in(task_id)
            for a, c in zip(answers, clients, strict=True)
        ]
        assert all(a.assignment is not None for a in answers)
        # Execute: only one device reports before the deadline
        x, y = local_data(0)
        a0 = answers[0].assignment
        assert a0 is not None
        clients[0].train_round(a0, SoftmaxTrainer(), x, y)
        # ... then the deadline passes on the coordinator's clock (its ticker abandons the round
        # there), without waiting it out
        coordinator = served.app.state.coordinator
        real_clock = coordinator.clock
        coordinator.clock = lambda: real_clock() + cfg.deadline_s
        status = wait_until(http, f"/v1/rounds/{a0.round_id}", "state", "abandoned")
        # Assert
        task = admin_get(http, f"/v1/admin/tasks/{task_id}")
        assert status["state"] == "abandoned" and status["reports"] == 1
        assert task["version"] == 0 and task["model_digest"] == before
        a1 = answers[1].assignment
        assert a1 is not None
        with pytest.raises(ClientError) as err:
            clients[1].train_round(a1, SoftmaxTrainer(), *local_data(1))
        assert err.value.status == 409 and err.value.reason == "round_closed"


def test_idempotent_retry_is_counted_once(server: str, tmp_path: Path) -> None:
    # Prepare
    with httpx.Client(base_url=server) as http:
        task_id = create_task(
            http, task_config(rounds=1, clients_per_round=2, selection_timeout_s=0.2)
        )
        client = device_client(server, str(tmp_path / "d0"))
        client.register()
        a = await_assignment(client, task_id)  # the round opens for it alone at the 0.2 s timeout
        params, _ = client.fetch_model(a)
        pending = client._core.encode(a, SPEC, params, params + 0.01, 40)
        # Execute: the same pending upload sent twice (a retry after a lost response)
        first = client.upload(pending, SPEC)
        second = client.upload(pending, SPEC)
        # Assert
        assert (first.duplicate, first.reports) == (False, 1)
        assert (second.duplicate, second.reports) == (True, 1)
        assert admin_get(http, f"/v1/rounds/{a.round_id}")["reports"] == 1


def test_pause_resume_and_ops_endpoints(server: str, tmp_path: Path) -> None:
    with httpx.Client(base_url=server) as http:
        task_id = create_task(http)
        auth = {"authorization": f"Bearer {ADMIN}"}
        assert (
            http.post(f"/v1/admin/tasks/{task_id}/pause", headers=auth).json()["state"] == "paused"
        )
        client = device_client(server, str(tmp_path / "d0"))
        client.register()
        ans = client.check_in(task_id)
        assert ans.action == "wait" and ans.assignment is None and ans.retry_after_s > 0
        assert (
            http.post(f"/v1/admin/tasks/{task_id}/resume", headers=auth).json()["state"] == "active"
        )
        assert http.post(f"/v1/admin/tasks/{task_id}/resume", headers=auth).status_code == 200
        health = http.get("/healthz").json()
        assert health["ok"] is True and health["journal_mode"] == "wal"
        spec = http.get("/openapi.json").json()
        assert "/v1/rounds/{round_id}/updates" in spec["paths"]
        assert http.get("/v1/admin/tasks/999", headers=auth).json()["reason"] == "unknown_task"


def test_model_download_formats(server: str, tmp_path: Path) -> None:
    # Prepare: a registered device and a task at version 0
    from compression import decode_snapshot, model_digest
    from protocol import auth

    with httpx.Client(base_url=server) as http:
        task_id = create_task(http)
        client = device_client(server, str(tmp_path / "d0"))
        client.register()
        key = client._core.key

        def get(query: str) -> httpx.Response:
            target = f"/v1/tasks/{task_id}/model?{query}"
            headers = auth.sign_request(
                key, method="GET", target=target, round_id=0, body=b"",
                timestamp_ms=int(time.time() * 1000),
            )  # fmt: skip
            return http.get(target, headers={str(k): v for k, v in headers.items()})

        # Execute
        fp32 = get("format=snapshot&dtype=fp32")
        fp16 = get("format=snapshot&dtype=fp16")
        empty_chain = get("format=delta&have=0")
        too_new = get("format=delta&have=5")
        bad_dtype = get("format=snapshot&dtype=fp8")
        # Assert: fp32 is exact and matches the digest; fp16 is half the size and flagged inexact
        params = decode_snapshot(fp32.content, SPEC)
        assert fp32.headers["x-plume-model-exact"] == "1"
        assert model_digest(params).hex() == fp32.headers["x-plume-model-digest"]
        assert fp16.headers["x-plume-model-exact"] == "0"
        assert len(fp16.content) < 0.75 * len(fp32.content)
        decode_snapshot(fp16.content, SPEC)  # verifies its own embedded digest
        assert empty_chain.headers["x-plume-model-encoding"] == "delta-chain"
        assert empty_chain.content[:4] == b"PLCH"
        assert too_new.status_code == 409 and too_new.json()["reason"] == "unknown_version"
        assert bad_dtype.status_code == 422


def test_own_view_leaves_out_every_entry_naming_another_device_of_the_round() -> None:
    from coordinator.service.rounds import _own_view

    # Prepare: a secure round's measurements (ids in lists), a screen's (ids as keys and
    # values), nested, and an id from outside the round (not a device of it: kept)
    cohort = frozenset({"me", "a", "b"})
    meas = {
        "secure": True,
        "contributors": ["a", "me"],
        "dropped": ["b"],
        "suspect_devices": ["a", "b"],
        "inner": {"dropped": {"a": 0.9, "me": 0.1}, "worst": "b", "kept": 2},
        "dp": {"epsilon": 1.5, "rounds": 3},
        "note": "x",
    }
    # Execute
    view = _own_view(meas, cohort, "me")
    # Assert
    assert view == {
        "secure": True,
        "contributors": ["me"],
        "dropped": [],
        "suspect_devices": [],
        "inner": {"dropped": {"me": 0.1}, "kept": 2},
        "dp": {"epsilon": 1.5, "rounds": 3},
        "note": "x",
    }
