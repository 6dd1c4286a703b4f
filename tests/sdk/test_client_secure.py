"""The SDK in secure rounds of a live coordinator: `participate` on a secure task, the residual
kept across an app restart, and the (model, plan) digest check that refuses a tampered round."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest

from compression import ModelSpec
from coordinator.service import ServerThread, ServiceConfig
from protocol.messages import (
    Assignment,
    CodecParams,
    TaskConfig,
    TensorShape,
    TrainingParams,
    to_json,
)
from protocol.secagg import ModelMismatch
from sdk import Client, TrainResult
from sdk.client import SecureRoundReport

ADMIN = "sdk-secure-admin"
SPEC = ModelSpec.from_shapes([("w", (4, 8)), ("b", (4,))])


class ShiftTrainer:
    """A stand-in local step: every parameter moves by `step` (no torch needed)."""

    def __init__(self, step: float) -> None:
        self.step = step

    def train(
        self,
        params: npt.NDArray[np.float32],
        x: npt.NDArray[np.float32],
        y: npt.NDArray[np.int64],
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        rng: np.random.Generator,
    ) -> TrainResult:
        return TrainResult((params + np.float32(self.step)).astype(np.float32), len(x), 0.5)


def _task(rounds: int, stage_timeout_s: float = 60.0) -> dict[str, object]:
    """The secure task of three devices. Its stages close early once every device uploaded;
    the 60 s timeout only bounds a slow machine. A test that needs a stage to time out steps
    the registry's clock (`tests.coordinator.test_service_support.expire_stage`)."""
    return to_json(
        TaskConfig(
            name="sdk-secure", model_name="tiny",
            spec=[TensorShape(e.name, list(e.shape)) for e in SPEC.entries],
            rounds=rounds, clients_per_round=3, over_selection=1.0, min_reports=3,
            selection_timeout_s=60.0, deadline_s=30.0, downlink=CodecParams(topk=1.0, bits=32),
            training=TrainingParams(1, 8, 0.1), retry_after_s=0.2,
            secure={"coord_fraction": 0.5, "stage_timeout_s": stage_timeout_s},
        )
    )  # fmt: skip


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A coordinator with `_task(rounds=2)`, its stage timeout 60 s: no test of this fixture
    means a stage to time out, so every stage closes early, however slow the machine."""
    from compression import encode_snapshot

    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05, tick_s=0.02
    )
    with ServerThread(cfg) as url:
        auth = {"authorization": f"Bearer {ADMIN}"}
        with httpx.Client(base_url=url, headers=auth) as http:
            task = _task(rounds=2, stage_timeout_s=60.0)
            task_id = int(http.post("/v1/admin/tasks", json=task).json()["task_id"])
            snap = encode_snapshot(np.zeros(SPEC.size, np.float32), SPEC, "fp32")
            octet = {"content-type": "application/octet-stream"}
            r = http.put(f"/v1/admin/tasks/{task_id}/model", content=snap, headers=octet)
            assert r.status_code == 200
            yield url, task_id


def _data() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((8, 8), np.float32), np.zeros(8, np.int64)


def _in_threads(fns: list[Callable[[], object]]) -> list[object]:
    out: list[object] = [None] * len(fns)

    def run(i: int) -> None:
        out[i] = fns[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_participate_runs_a_secure_round_and_keeps_the_residual(
    server: tuple[str, int], tmp_path: Path
) -> None:
    # Prepare
    url, task_id = server
    clients = [Client(url, str(tmp_path / f"d{i}")) for i in range(3)]
    for c in clients:
        c.register()
    x, y = _data()
    # Execute: one round through the ordinary participate() call
    reports = _in_threads(
        [
            lambda c=c, i=i: c.participate(ShiftTrainer(0.01 * (i + 1)), x, y, task_id=task_id)
            for i, c in enumerate(clients)
        ]
    )
    # Assert: a full secure participation per device, and what was not sent is kept
    assert all(isinstance(r, SecureRoundReport) and r.completed for r in reports)
    r0 = reports[0]
    assert isinstance(r0, SecureRoundReport)
    assert r0.stages == ["advertise-keys", "share-keys", "masked-input", "unmask"]
    assert r0.receipt.accepted and r0.receipt.payload_bytes > 0 and r0.num_examples == 8
    residual = clients[0]._core.secure_participant(SPEC.size, task_id).residual.copy()
    assert np.count_nonzero(residual) > 0  # coordinates outside S_r wait for later rounds
    # The plain-round entry points refuse a secure assignment, and vice versa
    a = Assignment(
        task_id, 1, 0, "tiny", [], CodecParams(), TrainingParams(), 0.0, "", "", 0, 0, True
    )
    with pytest.raises(ValueError, match="secure"):
        clients[0].train_round(a, ShiftTrainer(0.0), x, y)
    a.secure = False
    with pytest.raises(ValueError, match="not a secure"):
        clients[0].secure_round(a, lambda p: (p, 1, 0.0))
    clients[0].close()  # the app restarts (one client per app_dir in a process)
    restarted = Client(url, str(tmp_path / "d0"))
    np.testing.assert_array_equal(
        restarted._core.secure_participant(SPEC.size, task_id).residual, residual
    )
    restarted.close()


def test_async_clients_run_a_secure_round_counted_like_the_ledger(
    server: tuple[str, int], tmp_path: Path
) -> None:
    # Prepare
    import asyncio

    from sdk import AsyncClient

    url, task_id = server
    x, y = _data()

    async def fleet() -> tuple[list[Any], dict[str, Any]]:
        clients = [AsyncClient(url, str(tmp_path / f"a{i}")) for i in range(3)]
        try:
            await asyncio.gather(*(c.register() for c in clients))
            reports = await asyncio.gather(
                *(c.participate(ShiftTrainer(0.01), x, y, task_id=task_id) for c in clients)
            )
            return list(reports), {c.device_id: c.bandwidth for c in clients}
        finally:
            await asyncio.gather(*(c.aclose() for c in clients))

    # Execute
    reports, counted = asyncio.run(fleet())
    # Assert: three full participations, and each device's own byte counts are the ledger's
    assert all(isinstance(r, SecureRoundReport) and r.completed for r in reports)
    round_id = reports[0].round_id
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN}"}) as http:
        give_up = time.monotonic() + 30
        while http.get(f"/v1/rounds/{round_id}").json()["state"] != "committed":
            assert time.monotonic() < give_up, "the secure round never committed"
            time.sleep(0.02)
        rows = http.get(f"/v1/rounds/{round_id}/bandwidth").json()["rows"]
        assert {row["device_id"] for row in rows} == set(counted)
        for row in rows:
            cell = counted[row["device_id"]][round_id][row["direction"]]
            assert row["wire_bytes"] == cell["wire_bytes"]
            assert row["payload_bytes"] == cell["payload_bytes"]


def test_a_tampered_round_digest_is_refused_before_any_stage_upload(
    server: tuple[str, int], tmp_path: Path
) -> None:
    # Prepare: device 0's network path rewrites the setup digest (a model-inconsistency attack)
    url, task_id = server
    sent: list[str] = []

    def tamper(request: httpx.Request, nxt: Callable[[httpx.Request], httpx.Response]):  # type: ignore[no-untyped-def]
        sent.append(f"{request.method} {request.url.path}")
        response = nxt(request)
        if request.url.path.endswith("/setup"):
            response.read()
            response.headers["x-plume-secagg-digest"] = "00" * 32
        return response

    victim = Client(url, str(tmp_path / "victim"), mods=(tamper,))
    others = [Client(url, str(tmp_path / f"o{i}")) for i in range(2)]
    for c in [victim, *others]:
        c.register()

    def assignment(c: Client) -> Assignment:
        while True:
            answer = c.check_in(task_id)
            if answer.assignment is not None:
                return answer.assignment
            time.sleep(0.02)

    assignments = _in_threads([lambda c=c: assignment(c) for c in [victim, *others]])
    a = assignments[0]
    assert isinstance(a, Assignment) and a.secure
    # Execute + Assert
    with pytest.raises(ModelMismatch):
        victim.secure_round(a, lambda p: (np.zeros_like(p), 1, 0.0))
    assert not any("/stages/" in s for s in sent)
    assert sent[-1].endswith("/setup")


def test_docs_secure_example_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The secure-task example in docs/http-api.md, executed verbatim in a scratch folder."""
    import re

    doc = (Path(__file__).parents[2] / "docs" / "http-api.md").read_text()
    block = re.search(r"### Example\n\n.*?```python\n(.*?)```", doc, re.S)
    assert block is not None
    monkeypatch.chdir(tmp_path)
    printed: list[str] = []
    names = {"__name__": "docs_example", "print": lambda *a: printed.append(" ".join(map(str, a)))}
    exec(compile(block.group(1), "http-api.md", "exec"), names)
    assert printed == [str([(True, "unmask")] * 3)]
    assert (tmp_path / "secure.db").exists() and (tmp_path / "secure-app-0").is_dir()
