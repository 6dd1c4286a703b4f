"""/metrics shows the upload budget's state (helper-301's operator-visibility item on 6f17421).

Before, an operator saw a full upload budget only in the `WARNING: an upload was refused 503
busy` line (at most one every 5 s) and in `plume_http_requests_total{status="503"}`, mixed with
the other 503s; nothing showed the bodies waiting for room or the reservations given back by
bodies behind their pace. Now `plume_upload_buffer_*` gauges give the budget, the bodies being
read, the bytes they hold and reserve, and the waiting bodies and their first parts; two
counters give the bodies refused 503 busy and the reservations reclaimed.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from coordinator.service.auth import BodyBudget
from coordinator.service.metrics import Metrics
from protocol.names import Reason
from tests._clock import Clock

from .test_h294_overload_resend import _answer, _frames, _round, _wait

__all__: list[str] = []

NAMES = (
    "limit_bytes",
    "bodies",
    "held_bytes",
    "reserved_bytes",
    "waiting_bodies",
    "waiting_bytes",
    "refused_total",
    "reclaimed_total",
)


def _parse(text: str) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("plume_upload_buffer_"):
                out[sample.name.removeprefix("plume_upload_buffer_")] = sample.value
    return out


def _scrape(http: httpx.Client) -> dict[str, float]:
    return _parse(http.get("/metrics").text)


def _local(metrics: Metrics) -> dict[str, float]:
    from prometheus_client import generate_latest

    return _parse(generate_latest(metrics.registry).decode())


def test_the_gauges_and_counters_follow_the_budget() -> None:
    # Prepare
    metrics = Metrics()
    fresh = _local(metrics)
    clock = Clock()
    budget = BodyBudget(1000, pace_s=10.0, clock=clock)
    metrics.upload_buffer.budget = budget

    # Execute: a body on pace, a staller, a waiting body; the staller falls behind and gives
    # its room to a newcomer; a waiting body is refused
    body = budget.open(400)
    assert budget.arrive(body, 300) is True  # held 300, reserved 100
    staller = budget.open(500)
    assert budget.arrive(staller, 5) is True  # held 5, reserved 495; behind its pace at 0.1 s
    waiter = budget.open(600)
    assert budget.arrive(waiter, 7) is None
    during = _local(metrics)
    clock.now = 1.0
    newcomer = budget.open(300)
    assert budget.arrive(newcomer, 10) is True  # the staller gives 495 back
    budget.refuse_waiting(waiter)  # 300 + 100 + 5 + 300 + 600 > 1000: no room came
    after = _local(metrics)
    for b in (body, staller, waiter, newcomer):
        budget.close(b)
    end = _local(metrics)

    # Assert
    assert sorted(fresh) == sorted(NAMES)
    assert all(v == 0 for v in fresh.values()), fresh
    assert during == {
        "limit_bytes": 1000,
        "bodies": 2,
        "held_bytes": 305,
        "reserved_bytes": 595,
        "waiting_bodies": 1,
        "waiting_bytes": 7,
        "refused_total": 0,
        "reclaimed_total": 0,
    }
    assert after == {
        "limit_bytes": 1000,
        "bodies": 3,
        "held_bytes": 315,
        "reserved_bytes": 390,
        "waiting_bodies": 0,
        "waiting_bytes": 0,
        "refused_total": 1,
        "reclaimed_total": 1,
    }
    assert end == {
        **dict.fromkeys(NAMES, 0.0),
        "limit_bytes": 1000,
        "refused_total": 1,
        "reclaimed_total": 1,
    }


def test_a_real_coordinator_exports_its_budget(tmp_path: Path) -> None:
    """Loopback, raw sockets: a body half in, a body waiting for it, both accepted; a staller
    whose reservation a newcomer takes; a waiting body refused 503 busy."""
    frames = _frames(3)
    size = len(frames[0])
    limit = size + len(frames[1]) // 2
    with _round(tmp_path, budget=limit, devices=3) as rnd:
        http, budget, keys = rnd.http, rnd.budget, rnd.keys
        fresh = _scrape(http)
        # A body half in; a second waits for its room (up to 30 s here)
        budget.wait_s = 30.0
        first = rnd.open(rnd.headers(keys[0], frames[0]), frames[0][: size // 2])
        _wait(lambda: budget.held == size // 2, "half the body in")
        second = rnd.open(rnd.headers(keys[1], frames[1]), frames[1][:8])
        _wait(lambda: budget.waiting == 1, "the second body waiting")
        waiting = _scrape(http)
        first.sendall(frames[0][size // 2 :])
        first_answer = _answer(first)
        _wait(lambda: budget.waiting == 0, "the second body let in")
        second.sendall(frames[1][8:])
        second_answer = _answer(second)
        # A staller (one byte of its declared length) falls behind its pace (the default body
        # timeout's, 120 s for the whole body: one byte is behind after 120 / size s) and a
        # newcomer that needs its room takes it
        staller = rnd.open(rnd.headers(keys[0], frames[0]), frames[0][:1])
        _wait(lambda: budget.bodies == 1, "the staller in")
        _wait(lambda: (budget.next_check() or 1e300) < time.monotonic(), "the staller behind")
        newcomer = rnd.open(rnd.headers(keys[2], frames[2]), frames[2])
        newcomer_answer = _answer(newcomer)
        staller.close()
        _wait(lambda: budget.bodies == 0, "the staller gone")
        # A body on pace holds the room past a waiting body's wait (0.3 s now): refused
        budget.wait_s = 0.3
        holder = rnd.open(rnd.headers(keys[0], frames[0]), frames[0][:-1])
        _wait(lambda: budget.held == size - 1, "the holder in")
        late = rnd.open(rnd.headers(keys[1], frames[1]), frames[1][:8])
        late_answer = _answer(late)
        holder.sendall(frames[0][-1:])
        _answer(holder)
        for sock in (first, second, newcomer, late, holder):
            sock.close()
        _wait(lambda: budget.bodies == 0, "the budget emptied")
        end = _scrape(http)

    assert fresh == {**dict.fromkeys(NAMES, 0.0), "limit_bytes": limit}
    assert waiting["bodies"] == 1 and waiting["held_bytes"] == size // 2
    assert waiting["reserved_bytes"] == size - size // 2
    assert waiting["waiting_bodies"] == 1 and waiting["waiting_bytes"] == 8
    assert first_answer is not None and first_answer[0] == 200, first_answer
    assert second_answer is not None and second_answer[0] == 200, second_answer
    assert newcomer_answer is not None and newcomer_answer[0] == 200, newcomer_answer
    assert late_answer is not None and late_answer[0] == 503, late_answer
    assert late_answer[1]["reason"] == str(Reason.BUSY)
    assert end == {
        **dict.fromkeys(NAMES, 0.0),
        "limit_bytes": limit,
        "refused_total": 1,
        "reclaimed_total": 1,
    }
