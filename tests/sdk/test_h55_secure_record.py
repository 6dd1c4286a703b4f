"""A SecAgg+ round whose record of the masked input cannot be built (the lossless frame of what
the input stands for fails to encode; not expected with finite values, forced here). Before,
the client saved the residual the input leaves without a record and sent the input: an input
then refused, an aborted round or an abandoned one had no record to return, so what the input
stood for was lost from error feedback. Now the input is not sent and the residual stays the
one from before the round, as for a device that dropped out there."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import sdk.client as client_module
from compression import CodecError, ErrorFeedback, UpdateCodec
from protocol.secagg import Stage
from sdk import Client
from sdk.client import SecureRoundReport
from sdk.device_store import DeviceStore
from tests.coordinator.test_service_support import await_assignment

from .test_client_abandoned_round import (
    SECURE_SPEC,
    _driven_secure_task,
    _expire_stage,
    _residual,
)
from .test_client_abandoned_round import url as url  # noqa: F401  (the loopback fixture)

OLD = 0.3  # device 0's residual before the round


class _NoFrame(UpdateCodec):
    """A codec whose encode fails in device 0's thread, as the record frame's would on values
    it cannot hold."""

    def encode(self, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == "victim":
            raise CodecError("forced: no frame")
        return super().encode(*args, **kwargs)


def test_a_masked_input_whose_record_cannot_be_built_is_not_sent(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: device 0 carries residual OLD; its network path refuses the masked input (the
    # round's deadline passed), and the record of the input cannot be built
    # Every device takes part in advertise-keys and share-keys, which close once all have
    # uploaded; a wall-clock stage timeout (1 s, later 2.5 s) let a loaded machine close one
    # before the victim's upload (a flake). Stages time out on the test's clock instead: the
    # masked-input stage, which the victim skips, once the other two sent theirs
    task_id, clock = _driven_secure_task(url)
    root = tmp_path / "d0"
    ef = ErrorFeedback(SECURE_SPEC.size)
    ef.residual = np.full(SECURE_SPEC.size, OLD, np.float32)
    DeviceStore(root).save_residual(ef, task_id)
    masked: list[int] = []

    def refuse(request: httpx.Request, nxt: Callable[..., Any]) -> Any:
        if request.method == "POST" and request.url.path.endswith("/masked-input"):
            masked.append(1)
            closed = {"reason": "round_closed", "detail": "the deadline passed"}
            return httpx.Response(409, json=closed, request=request)
        return nxt(request)

    victim = Client(url, str(root), mods=(refuse,))
    clients = [victim] + [Client(url, str(tmp_path / f"o{i}")) for i in range(2)]
    for c in clients:
        c.register()
    monkeypatch.setattr(client_module, "UpdateCodec", _NoFrame)
    delta = np.full(SECURE_SPEC.size, 0.2, np.float32)
    out: list[Any] = [None] * 3

    def run(i: int) -> None:
        try:
            a = await_assignment(clients[i], task_id)
            out[i] = clients[i].secure_round(a, lambda p: (delta, 8, 0.0))
        except Exception as exc:  # noqa: BLE001 - reported to the test
            out[i] = exc

    # Execute
    names = ["victim", "o0", "o1"]
    threads = [threading.Thread(target=run, args=(i,), name=names[i]) for i in range(3)]
    for t in threads:
        t.start()
    _expire_stage(url, task_id, clock, Stage.MASKED_INPUT, 2, silent=threads[:1])
    for t in threads:
        t.join(60)
    for c in clients:
        c.close()

    # Assert: device 0 stopped before its masked input, which it never sent; its residual is
    # OLD, on disk and in memory, and no record waits. Before, it sent the input with only
    # the residual the input left saved: refused, its content was gone (residual != OLD)
    report = out[0]
    assert isinstance(report, SecureRoundReport), report
    assert report.stages == ["advertise-keys", "share-keys"] and not report.completed
    assert "record" in report.detail
    assert masked == []
    np.testing.assert_array_equal(_residual(root, SECURE_SPEC.size, task_id), np.float32(OLD))
    part = victim._core.secure_participant(SECURE_SPEC.size, task_id)
    np.testing.assert_array_equal(part.residual, np.float32(OLD))
    assert part.unsettled is None
    assert DeviceStore(root).load_accepted() is None
