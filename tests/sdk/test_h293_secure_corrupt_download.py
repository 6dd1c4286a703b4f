"""A secure round's download whose body does not decode or check (a body-rewriting proxy, a bit
error) is fetched again once, at once, as a corrupt delta chain of the model download is asked
for again (`sdk.client._download_flow`), and the round goes on; corrupt again, the round ends for the
device with that `SecAggError`, as before. Before, the first corrupt setup plan or stage message
(key directory, share delivery, unmask request) ended the device's round."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from coordinator.service import ServerThread, ServiceConfig
from protocol.secagg import SecAggError, Stage
from sdk import AsyncClient, Client
from sdk.client import SecureRoundReport
from tests.coordinator.test_service_support import StageClock
from tests.sdk.test_client_hostile_server import STAGE_TIMEOUT_S, SecureTask
from tests.sdk.test_client_secure import ADMIN, SPEC, ShiftTrainer, _data, _task

# Where each download's corruption lands: byte 0 is the message's magic (the plan's, or "PSA1"
# of a stage message: `MalformedMessage`); the share delivery's last byte is in an AES-GCM tag
# (the bundle does not decrypt: `WrongAddress`).
CORRUPT_AT = {
    "setup": 0,
    "advertise-keys": 0,
    "share-keys": -1,
    "masked-input": 0,
}
NEXT_UPLOAD = {
    "setup": "advertise-keys",
    "advertise-keys": "share-keys",
    "share-keys": "masked-input",
    "masked-input": "unmask",
}
# The stage a victim whose every answer of a download is corrupt leaves open: the two others
# uploaded it and wait for it to close, so the test times it out (`SecureTask.expire`). None:
# the victim fails at the unmask request, and the others return once they sent their unmask
# shares, without waiting for that stage to close.
LEFT_OPEN = {
    "setup": Stage.ADVERTISE_KEYS,
    "advertise-keys": Stage.SHARE_KEYS,
    "share-keys": Stage.MASKED_INPUT,
    "masked-input": None,
}


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[SecureTask]:
    """A coordinator with a secure task (3 devices a round) and its initial model; the task's
    stages are timed by a `StageClock` (set before any device checks in, so before the round
    opens) under a 60 s timeout: a stage every device uploads closes once all did, however
    slow the machine, and one a device leaves open closes when the test expires it."""
    from compression import encode_snapshot

    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05, tick_s=0.02
    )
    served = ServerThread(cfg)
    with served as url:
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN}"}) as http:
            task = _task(rounds=1, stage_timeout_s=STAGE_TIMEOUT_S)
            task_id = int(http.post("/v1/admin/tasks", json=task).json()["task_id"])
            snap = encode_snapshot(np.zeros(SPEC.size, np.float32), SPEC, "fp32")
            octet = {"content-type": "application/octet-stream"}
            assert http.put(
                f"/v1/admin/tasks/{task_id}/model", content=snap, headers=octet
            ).is_success
            coordinator = served.app.state.coordinator
            clock = StageClock()
            coordinator.runtimes[task_id].secure.registry.clock = clock
            yield SecureTask(url, task_id, coordinator, clock)


class _Corrupter:
    """Flips one byte of the first `times` 200 answers of one secure download ("setup" or a
    stage's download), and notes every secure request (method, last path part, status)."""

    def __init__(self, download: str, times: int) -> None:
        self.download = download
        self.times = times
        self.seen: list[tuple[str, str, int]] = []

    def __call__(self, request: httpx.Request, response: httpx.Response) -> httpx.Response:
        path = request.url.path
        if "/v1/secure/" not in path:
            return response
        self.seen.append((request.method, path.rsplit("/", 1)[1], response.status_code))
        if not (
            request.method == "GET"
            and path.endswith("/" + self.download)
            and response.status_code == 200
            and self.times > 0
        ):
            return response
        self.times -= 1
        body = bytearray(response.content)
        body[CORRUPT_AT[self.download]] ^= 0xFF
        return httpx.Response(200, headers=response.headers, content=bytes(body), request=request)

    def sync_mod(self, request: httpx.Request, nxt: Callable[..., Any]) -> httpx.Response:
        return self(request, nxt(request))

    async def async_mod(self, request: httpx.Request, nxt: Callable[..., Any]) -> httpx.Response:
        return self(request, await nxt(request))

    def gets(self) -> int:
        """The answers of the download that carried it (200; not a 425 while it was open)."""
        return self.seen.count(("GET", self.download, 200))


def _round(
    task: SecureTask,
    root: Path,
    corrupter: _Corrupter,
    asynchronous: bool,
    left_open: Stage | None = None,
) -> list[Any]:
    """One secure round of three devices; device 0's requests pass `corrupter`. Each device's
    report, or the exception its participate raised. `left_open`: a stage device 0 will not
    upload, timed out once device 0's thread ended and the two others uploaded it."""
    url, task_id = task.url, task.task_id
    x, y = _data()
    out: list[Any] = [None] * 3

    def plain(i: int) -> None:
        with Client(url, str(root / f"d{i}")) as client:
            client.register()
            out[i] = client.participate(ShiftTrainer(0.01 * (i + 1)), x, y, task_id=task_id)

    def victim() -> None:
        if asynchronous:

            async def go() -> Any:
                async with AsyncClient(
                    url, str(root / "d0"), mods=(corrupter.async_mod,)
                ) as client:
                    await client.register()
                    return await client.participate(ShiftTrainer(0.01), x, y, task_id=task_id)

            out[0] = asyncio.run(go())
        else:
            with Client(url, str(root / "d0"), mods=(corrupter.sync_mod,)) as client:
                client.register()
                out[0] = client.participate(ShiftTrainer(0.01), x, y, task_id=task_id)

    def run(i: int) -> None:
        try:
            victim() if i == 0 else plain(i)
        except BaseException as exc:  # returned to the test
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        if left_open is not None:
            task.expire(left_open, 2, silent=threads[:1])
    finally:
        for t in threads:
            t.join(90)
    assert not any(t.is_alive() for t in threads)
    return out


def _committed(url: str, round_id: int) -> bool:
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN}"}) as http:
        for _ in range(300):
            if http.get(f"/v1/rounds/{round_id}").json()["state"] == "committed":
                return True
            time.sleep(0.02)
        return False


@pytest.mark.parametrize("download", list(CORRUPT_AT))
def test_a_corrupt_secure_download_is_fetched_again_and_the_round_completes(
    server: SecureTask, tmp_path: Path, download: str
) -> None:
    # Prepare: the victim's first answer of `download` comes with one byte flipped
    corrupter = _Corrupter(download, times=1)
    # Execute
    reports = _round(server, tmp_path, corrupter, asynchronous=False)
    # Assert: every device completed the round, which committed; the victim asked for that
    # download twice (the corrupt answer, then the good one) and went on
    assert all(isinstance(r, SecureRoundReport) and r.completed for r in reports), reports
    assert corrupter.times == 0 and corrupter.gets() == 2
    assert reports[0].stages == ["advertise-keys", "share-keys", "masked-input", "unmask"]
    assert _committed(server.url, reports[0].round_id)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["Client", "AsyncClient"])
def test_an_async_client_fetches_a_corrupt_share_delivery_again_too(
    server: SecureTask, tmp_path: Path, asynchronous: bool
) -> None:
    # Prepare
    corrupter = _Corrupter("share-keys", times=1)
    # Execute
    reports = _round(server, tmp_path, corrupter, asynchronous=asynchronous)
    # Assert
    assert all(isinstance(r, SecureRoundReport) and r.completed for r in reports), reports
    assert corrupter.gets() == 2
    assert _committed(server.url, reports[0].round_id)


@pytest.mark.parametrize("download", list(CORRUPT_AT))
def test_a_download_corrupt_every_time_ends_the_round_for_the_device_after_one_more_fetch(
    server: SecureTask, tmp_path: Path, download: str
) -> None:
    # Prepare: every answer of `download` to the victim is corrupt; the stage it then leaves
    # open is timed out once the others uploaded it
    corrupter = _Corrupter(download, times=10**6)
    # Execute
    reports = _round(server, tmp_path, corrupter, asynchronous=False, left_open=LEFT_OPEN[download])
    # Assert: the victim's participate raised the protocol's refusal after exactly two
    # answers of that download, and sent nothing for the stage that needed it
    assert isinstance(reports[0], SecAggError), reports[0]
    assert corrupter.gets() == 2
    assert not any(m == "POST" and p == NEXT_UPLOAD[download] for m, p, _ in corrupter.seen)
    assert all(not isinstance(r, BaseException) for r in reports[1:]), reports
