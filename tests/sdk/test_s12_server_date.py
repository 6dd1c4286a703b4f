"""The coordinator sends a `Date` header (counted by its ledger like any other header), so a
device whose clock runs minutes fast still completes a secure round of a live coordinator: its
deadline is read against the coordinator's clock (helper-66's 93865ec), which needs that header.
Before, the service turned uvicorn's `date` off and sent none, and such a device gave up every
stage at once ("the round's deadline passed")."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx

from protocol.names import Path as Route
from sdk import Client
from sdk.client import SecureRoundReport

from .test_client_secure import ShiftTrainer, _data, _in_threads, server  # noqa: F401

FAST_S = 120.0  # inside the default 300 s signature window, far past the round's 30 s deadline


def test_every_answer_carries_the_coordinator_date(server: tuple[str, int]) -> None:  # noqa: F811
    # Execute: an answer of the app and one of the wire middleware's own refusals (413)
    url, _ = server
    ok = httpx.get(f"{url}{Route.HEALTHZ}")
    big = httpx.post(f"{url}/v1/checkin", content=b"{" + b" " * (1 << 20) + b"}")
    # Assert: each has one IMF-fixdate `date` within a few seconds of this clock
    assert ok.status_code == 200
    for r in (ok, big):
        dates = r.headers.get_list("date")
        assert len(dates) == 1, (r.status_code, dates)
        assert dates[0].endswith(" GMT")
        assert abs(parsedate_to_datetime(dates[0]).timestamp() - time.time()) < 5.0
    assert big.status_code == 413


def test_devices_with_fast_clocks_complete_a_secure_round(
    server: tuple[str, int],  # noqa: F811
    tmp_path: Path,
) -> None:
    # Prepare: three devices whose clocks run two minutes fast
    url, task_id = server
    clients = [
        Client(url, str(tmp_path / f"d{i}"), clock=lambda: time.time() + FAST_S) for i in range(3)
    ]
    for c in clients:
        c.register()
    x, y = _data()
    # Execute
    reports = _in_threads(
        [lambda c=c: c.participate(ShiftTrainer(0.01), x, y, task_id=task_id) for c in clients]
    )
    # Assert: every device took part in every stage
    for r in reports:
        assert isinstance(r, SecureRoundReport), r
        assert r.completed, r.detail
        assert r.stages == ["advertise-keys", "share-keys", "masked-input", "unmask"]
