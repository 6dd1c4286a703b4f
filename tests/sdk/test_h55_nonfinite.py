"""A SecAgg+ round whose update is not finite (a diverged local step), or whose update plus the
residual overflows: the device must refuse it as the plain path does (`ValueError`), send no
masked input, and keep its residual. Before, NaN was cast to an arbitrary quantization level and
sent (a silently wrong contribution to the sum), and the residual kept for the next rounds was
NaN: every later round of the task sent garbage on those coordinates. Also an update of the
wrong shape, which `SecureSession.masked_input` broadcast over the residual."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest

from compression import ErrorFeedback
from protocol.secagg import Stage
from sdk import Client
from sdk.device_store import DeviceStore
from tests.coordinator.test_service_support import await_assignment

from .test_client_abandoned_round import (
    SECURE_SPEC,
    _driven_secure_task,
    _expire_stage,
    _residual,
)
from .test_client_abandoned_round import url as url  # noqa: F401  (the loopback fixture)

BIG = np.float32(3e38)  # finite; two of them overflow float32


def _update(kind: str) -> npt.NDArray[np.float32]:
    d = np.full(SECURE_SPEC.size, 0.2, np.float32)
    if kind == "nan":
        d[0] = np.nan
    elif kind == "inf":
        d[3] = -np.inf
    elif kind == "overflow":
        d[:] = BIG
    elif kind == "short":
        d = d[:1]
    return d


# Each kind's refusal: a non-finite update before any stage (`Client.secure_round`), a finite
# one overflowing with the residual at the masked input (`SecureSession`), a short one before
# any stage.
_REASON = {
    "nan": r"update contains NaN or Inf",
    "inf": r"update contains NaN or Inf",
    "overflow": r"update plus residual contains NaN or Inf",
    "short": rf"update of shape \(1,\), model has {SECURE_SPEC.size} scalars",
}


@pytest.mark.parametrize("kind", ["nan", "inf", "overflow", "short"])
def test_a_secure_round_refuses_an_update_that_is_not_finite(
    url: str, tmp_path: Path, kind: str
) -> None:
    # Prepare: device 0 holds a residual (BIG with "overflow": delta + residual is inf) and
    # trains to a non-finite update; its mod counts its masked-input uploads. Stages time out
    # on the test's clock: with "overflow" device 0 takes part in advertise-keys and
    # share-keys (which close once all three uploaded); with the other kinds it refuses
    # before any stage
    task_id, clock = _driven_secure_task(url)
    root = tmp_path / "d0"
    old = np.full(SECURE_SPEC.size, BIG if kind == "overflow" else 0.3, np.float32)
    ef = ErrorFeedback(SECURE_SPEC.size)
    ef.residual = old.copy()
    DeviceStore(root).save_residual(ef, task_id)
    masked: list[int] = []

    def count(request: httpx.Request, nxt: Callable[..., Any]) -> Any:
        if request.method == "POST" and request.url.path.endswith("/masked-input"):
            masked.append(1)
        return nxt(request)

    victim = Client(url, str(root), mods=(count,))
    clients = [victim] + [Client(url, str(tmp_path / f"o{i}")) for i in range(2)]
    for c in clients:
        c.register()
    out: list[Any] = [None] * 3

    def run(i: int) -> None:
        delta = _update(kind) if i == 0 else _update("")
        try:
            a = await_assignment(clients[i], task_id)
            out[i] = clients[i].secure_round(a, lambda p: (delta, 8, 0.0))
        except Exception as exc:  # noqa: BLE001 - reported to the test
            out[i] = exc

    # Execute
    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    # The first stage device 0 skips times out once the other two uploaded it
    skipped = Stage.MASKED_INPUT if kind == "overflow" else Stage.ADVERTISE_KEYS
    _expire_stage(url, task_id, clock, skipped, 2, silent=threads[:1])
    for t in threads:
        t.join(60)
    for c in clients:
        c.close()

    # Assert: refused with a ValueError naming it; no masked input sent; the residual is the
    # one from before the round, in memory and on disk, and finite; no record
    assert isinstance(out[0], ValueError), out[0]
    assert re.fullmatch(_REASON[kind], str(out[0])), out[0]
    assert masked == []
    np.testing.assert_array_equal(_residual(root, SECURE_SPEC.size, task_id), old)
    part = victim._core.secure_participant(SECURE_SPEC.size, task_id)
    np.testing.assert_array_equal(part.residual, old)
    assert part.unsettled is None
    assert DeviceStore(root).load_accepted() is None
