"""A secure setup (`SecureRegistry.setup`, the plan download) is refused as the device's
advertise-keys upload would be, instead of serving a plan for a round it cannot join (s65c).

Before, `setup` served the plan to any device of the round: one whose group had aborted, one
whose group the round's close cut short, one whose advertise-keys stage had closed without it.
The device then trained and was refused only at its first upload (410 or 403). And unlike an
upload, a setup after its group's stage deadline did not close that stage first, so its answer
hung on whether the orchestrator's `close_due` had run yet. Now `setup` closes a stage whose
deadline passed (with the registry's stage timeout, as `upload` does) and then refuses with
`RoundAborted` / `GroupCutShort` (410 `round_closed` over HTTP) or `StageClosedWithout` (403
`not_selected`). A device still able to join, or one that advertised its keys, gets the plan as
before.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from fastapi import FastAPI

from coordinator.service._secagg_routes import (
    GroupCutShort,
    SecureRegistry,
    StageClosedWithout,
    secagg_router,
)
from protocol.secagg import RoundAborted, Stage

from .test_s61d_secagg_registry_refusals import RID, _Round
from .test_s63a_sealed_cut_group import _sealed
from .test_secure_http import _serve

SETUP = f"/v1/secure/rounds/{RID}/setup"
SHORT = "2 nodes advertised keys, need 3"  # a group of five whose advertise-keys got two


@contextmanager
def _client(reg: SecureRegistry) -> Iterator[httpx.Client]:
    app = FastAPI()
    app.include_router(secagg_router(reg, retry_after_s=0.01))
    with _serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def _two_groups() -> tuple[_Round, list[str], list[str]]:
    """Round 7 in two groups of five, running: A advertised and is in share-keys; B's
    advertise-keys got two keys and closed at its idle time, so B aborted."""
    r = _Round(10, group_size=5)
    a, b = (list(ids) for ids in r.task.members)
    r.run(Stage.ADVERTISE_KEYS, a + b[:2])
    r.clock.now += 10.0
    assert r.reg.close_due(RID, 1000.0, idle_s=5.0) == 1
    assert r.reg.abort_reasons(RID) == [f"group 2 of 2: {SHORT}"]
    assert r.reg.current_stage(RID) == Stage.SHARE_KEYS
    return r, a, b


def test_a_setup_of_an_aborted_group_is_refused_with_its_abort() -> None:
    """Fails before the fix: both devices of B got the plan (200), one that had advertised
    and one that had not."""
    # Prepare
    r, a, b = _two_groups()
    before = r.state()
    # Execute + Assert: refused with the group's abort, whether or not the device advertised
    for d in (b[0], b[4]):
        with pytest.raises(RoundAborted, match=f"^{SHORT}$"):
            r.reg.setup(RID, d)
        # the same refusal its upload gets (refused before its body is read)
        with pytest.raises(RoundAborted, match=f"^{SHORT}$"):
            r.reg.upload(RID, Stage.ADVERTISE_KEYS, d, b"keys")
    assert r.state() == before
    # The running group's devices still get their plan, unchanged
    plan, digest, node = r.reg.setup(RID, a[0])
    assert (plan, digest, node) == (r.task.groups[0].plan.to_bytes(), r.task.groups[0].digest, 0)
    assert r.state() == before


@pytest.mark.parametrize("cut", [Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT])
def test_a_setup_of_a_cut_short_group_is_refused_as_its_upload_is(cut: Stage) -> None:
    """Fails before the fix: B's devices got the plan of a round already sealed."""
    # Prepare: `_sealed`: A completed, B cut short in `cut`, C aborted (two keys of five)
    s = _sealed(cut)
    before = s.r.state()
    why = f"secure round {RID} is closed: cut short in stage {cut}"
    # Execute + Assert
    for d in (s.b[0], s.b[4]):
        with pytest.raises(GroupCutShort, match=why):
            s.r.reg.setup(RID, d)
    with pytest.raises(RoundAborted, match=f"^{SHORT}$"):
        s.r.reg.setup(RID, s.c[0])
    # A completed: a device of it that advertised still reads its plan
    assert s.r.reg.setup(RID, s.a[1])[2] == 1
    assert s.r.state() == before


def test_a_setup_after_the_advertise_deadline_closes_the_stage_first() -> None:
    """Fails before the fix: 30 s after advertise-keys opened (the stage timeout), with no
    `close_due` run yet, the device that never advertised got the plan, and the stage stayed
    open until the orchestrator's next tick; its upload just after was refused."""
    # Prepare: one group of five, a 30 s stage timeout; four advertised at t = 100
    r = _Round(5, timeout_s=30.0)
    twin = _Round(5, timeout_s=30.0)  # the same round, its stage closed by `close_due`
    for x in (r, twin):
        x.run(Stage.ADVERTISE_KEYS, x.devs[:4])
    r.clock.now += 29.0
    # Before the deadline the late device can still join: its plan, nothing closed
    assert r.reg.setup(RID, r.devs[4])[2] == 4
    assert r.reg.current_stage(RID) == Stage.ADVERTISE_KEYS
    r.clock.now += 1.0
    twin.clock.now += 30.0
    assert twin.reg.close_due(RID, 30.0) == 1
    # Execute + Assert: the setup closes the stage and is refused as the upload would be
    with pytest.raises(StageClosedWithout, match=f"closed without device {r.devs[4]}"):
        r.reg.setup(RID, r.devs[4])
    assert r.reg.current_stage(RID) == Stage.SHARE_KEYS
    assert r.state() == twin.state()
    # The same refusal once the orchestrator closed the stage first
    with pytest.raises(StageClosedWithout, match=f"closed without device {twin.devs[4]}"):
        twin.reg.setup(RID, twin.devs[4])
    with pytest.raises(StageClosedWithout):
        r.reg.upload(RID, Stage.ADVERTISE_KEYS, r.devs[4], r.body(Stage.ADVERTISE_KEYS, r.devs[4]))
    # A device that advertised reads the same plan as before the close
    assert r.reg.setup(RID, r.devs[0]) == twin.reg.setup(RID, twin.devs[0])
    assert r.state() == twin.state()


def test_a_setup_after_the_deadline_of_a_short_stage_gets_the_abort() -> None:
    """Fails before the fix: with two keys of five at the deadline, the setup got the plan of
    a group whose close (at the next tick) was certain to abort it."""
    # Prepare
    r = _Round(5, timeout_s=30.0)
    r.run(Stage.ADVERTISE_KEYS, r.devs[:2])
    r.clock.now += 30.0
    # Execute + Assert
    with pytest.raises(RoundAborted, match=f"^{SHORT}$"):
        r.reg.setup(RID, r.devs[3])
    assert r.reg.abort_reasons(RID) == [SHORT] and r.reg.ready(RID)


def test_without_a_stage_timeout_setup_closes_nothing() -> None:
    """Passes before the fix too: a registry without its own stage timeout leaves every close
    to its orchestrator (`close_stage`, `close_due`), for a setup as for an upload."""
    # Prepare
    r = _Round(5)
    r.run(Stage.ADVERTISE_KEYS, r.devs[:2])
    r.clock.now += 10_000.0
    before = r.state()
    # Execute + Assert
    assert r.reg.setup(RID, r.devs[3])[2] == 3
    assert r.state() == before


def test_the_router_answers_the_setup_refusals_as_its_uploads() -> None:
    """Fails before the fix: each of these setups was 200 with the plan."""
    # Prepare: B aborted (two groups); a second round whose advertise-keys passed its deadline
    r, _a, b = _two_groups()
    late = _Round(5, timeout_s=30.0)
    late.run(Stage.ADVERTISE_KEYS, late.devs[:4])
    late.clock.now += 30.0
    # Execute
    with _client(r.reg) as client:
        aborted = client.get(SETUP, headers={"x-plume-device": b[4]})
    with _client(late.reg) as client:
        closed = client.get(SETUP, headers={"x-plume-device": late.devs[4]})
        joined = client.get(SETUP, headers={"x-plume-device": late.devs[0]})
    # Assert
    assert aborted.status_code == 410, aborted.text
    assert aborted.json() == {"reason": "round_closed", "detail": f"aborted: {SHORT}"}
    assert closed.status_code == 403, closed.text
    assert closed.json()["reason"] == "not_selected"
    assert f"closed without device {late.devs[4]}" in closed.json()["detail"]
    assert joined.status_code == 200 and joined.content == late.task.groups[0].plan.to_bytes()
