"""A secure stage download that is not ready (425) says when to poll again in whole seconds,
as RFC 9110 defines `Retry-After` (delay-seconds = 1*DIGIT), and gives the coordinator's
sub-second poll interval (`--poll`) in the body as `retry_after_s`, which the SDK reads
(tests/sdk/test_h165_stage_poll_hint.py).

Before: `Retry-After: 0.25` (the default `--poll`), which a strict HTTP client or proxy may
drop or refuse; the first test failed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from coordinator.service import ServerThread, ServiceConfig
from protocol.names import Reason

from .test_service_secure_security import World, _signed
from .test_service_support import ADMIN

# (--poll, the Retry-After it gives)
POLLS = [(0.25, "1"), (2.5, "3")]


@pytest.fixture(scope="module", params=POLLS, ids=[p for p, _ in POLLS])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[World, float, str]]:
    poll_s, header = request.param
    root = tmp_path_factory.mktemp("stage-retry-after")
    cfg = ServiceConfig(
        db_path=str(root / "plume.db"), admin_token=ADMIN, poll_s=poll_s, tick_s=0.02
    )
    with ServerThread(cfg) as url:
        yield World(url, root), poll_s, header


def test_an_open_stage_is_425_with_whole_seconds_and_the_exact_interval(
    world: tuple[World, float, str],
) -> None:
    # Prepare: the round's first stage is open (no device has sent its keys)
    w, poll_s, header = world
    target = w.path("advertise-keys")
    headers = _signed(w.key_a, "GET", target, w.round_id, b"")
    # Execute
    r = w.http.get(target, headers=headers)
    # Assert: Retry-After is the poll interval rounded up to whole seconds; the body has the
    # interval itself
    assert r.status_code == 425, r.text
    assert re.fullmatch(r"[0-9]+", r.headers["retry-after"]), r.headers["retry-after"]
    assert r.headers["retry-after"] == header
    body = r.json()
    assert body["reason"] == Reason.INVALID_STATE and body["detail"]
    assert body["retry_after_s"] == poll_s
