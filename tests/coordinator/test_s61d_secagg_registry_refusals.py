"""The secure-stage registry and router refuse what they must, and a refusal changes nothing.

Mutation hunt on coordinator/service/_secagg_routes.py (helper s61d): each test here names the
mutation of that file it kills (line, the change) that the suite before it let through.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from coordinator.secure import BUNDLE_BYTES, SecureConfig, SecureCoordinator
from coordinator.service._secagg_routes import _ORDER, SecureRegistry, secagg_router, stage_cap
from protocol.secagg import RoundAborted, Stage, WrongStage
from sdk.secure import SecureParticipant, SecureSession
from tests._clock import Clock

from .test_secure_http import _serve

D = 60
RID = 7


class _Round:
    """A registry with one open round over `n` devices (one SecAgg group unless `group_size`),
    each device's session joined, and a way to run a stage for some of them."""

    def __init__(
        self,
        n: int = 5,
        *,
        timeout_s: float | None = None,
        group_size: int | None = None,
        min_contributors: int = 1,
        config: SecureConfig | None = None,
    ) -> None:
        self.clock = Clock(100.0)
        if config is None:
            config = SecureConfig(coord_fraction=0.2, sketch=False, group_size=group_size, seed=3)
        self.coord = SecureCoordinator(np.zeros(D, np.float32), config)
        self.reg = SecureRegistry(self.coord, self.clock, stage_timeout_s=timeout_s)
        self.devs = [f"dev-{i}" for i in range(n)]
        self.task = self.reg.open_round(self.devs, RID, min_contributors)
        self.sessions: dict[str, SecureSession] = {}
        for d in self.devs:
            plan, digest, node = self.reg.setup(RID, d)
            self.sessions[d] = SecureParticipant(D).join(plan, digest, self.coord.params, node)
        rng = np.random.default_rng(0)
        self.updates = {d: rng.normal(0, 0.01, D).astype(np.float32) for d in self.devs}

    def body(self, stage: Stage, d: str) -> bytes:
        """Device `d`'s upload of `stage`, from the download that precedes it."""
        s = self.sessions[d]
        if stage == Stage.ADVERTISE_KEYS:
            return s.advertise()
        before = {
            Stage.SHARE_KEYS: Stage.ADVERTISE_KEYS,
            Stage.MASKED_INPUT: Stage.SHARE_KEYS,
            Stage.UNMASK: Stage.MASKED_INPUT,
        }[stage]
        got = self.reg.download(RID, before, d)
        assert got is not None, f"{before} is still open for {d}"
        if stage == Stage.SHARE_KEYS:
            return s.share_keys(got)
        if stage == Stage.MASKED_INPUT:
            return s.masked_input(got, self.updates[d], 1, np.random.default_rng(1))
        return s.unmask(got)

    def run(self, stage: Stage, devs: list[str] | None = None) -> None:
        for d in self.devs if devs is None else devs:
            assert self.reg.upload(RID, stage, d, self.body(stage, d))

    def state(self) -> list[object]:
        """What an upload, a stage close or a finish changes, per group and per round."""
        entry = self.reg._rounds[RID]
        groups = [
            (
                frozenset(g.closed),
                g.aborted,
                frozenset(g.expected),
                {s: frozenset(u) for s, u in g.uploaded.items()},
                g.sr.stage,
            )
            for g in entry.groups
        ]
        return [groups, entry.sealed, dict(entry.at_stage), dict(entry.uploads)]


def test_a_finish_refused_for_its_min_contributors_leaves_the_round_open() -> None:
    """Kills _secagg_routes.py:521-522 (the `min_contributors < 1` check -> False / raise ->
    pass): `close_round` raises the same ValueError, but only after `finish` closed every
    unmask stage and sealed the round, which then took no more uploads."""
    # Prepare: the unmask request is out, no device has answered yet
    r = _Round()
    for stage in (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT):
        r.run(stage)
    before = r.state()
    # Execute
    with pytest.raises(ValueError, match="min_contributors must be >= 1, got 0"):
        r.reg.finish(RID, min_contributors=0)
    # Assert: nothing changed; the answers are still taken and the round commits
    assert r.state() == before
    assert r.reg.current_stage(RID) == Stage.UNMASK and r.reg.result(RID) is None
    r.run(Stage.UNMASK)
    out = r.reg.finish(RID)
    assert out.committed and sorted(out.contributors) == r.devs


def test_a_sealed_round_refuses_a_close_of_a_group_it_cut_short() -> None:
    """Kills _secagg_routes.py:425 (`if entry.sealed and groups` -> False): a `close_stage`
    after `finish` closed a group cut short at share-keys, so its SecAgg moved on (to the
    masked-input stage) after its round was sealed and its outcome taken."""
    # Prepare: every device advertised; the round's close comes during share-keys
    r = _Round()
    r.run(Stage.ADVERTISE_KEYS)
    r.run(Stage.SHARE_KEYS, r.devs[:3])
    out = r.reg.finish(RID)
    assert not out.committed and out.aborted_groups == 1
    before = r.state()
    # Execute + Assert: refused, nothing changed (the group's SecAgg included)
    with pytest.raises(WrongStage, match=f"secure round {RID} is closed"):
        r.reg.close_stage(RID, Stage.SHARE_KEYS)
    assert r.state() == before
    assert r.task.groups[0].stage == Stage.SHARE_KEYS
    assert r.reg.close_due(RID, 0.0) == 0
    with pytest.raises(WrongStage, match="is closed"):
        r.reg.upload(RID, Stage.SHARE_KEYS, r.devs[3], r.body(Stage.SHARE_KEYS, r.devs[3]))
    assert r.state() == before


def test_a_stage_that_closed_opens_the_next_stage_deadline() -> None:
    """Kills _secagg_routes.py:454 (`if after is not None` -> False): a group whose stage
    closed was never queued again for `close_due`, so the next stage's deadline never came
    and the round waited past it forever."""
    # Prepare: advertise-keys closes on its last upload at t = 100
    r = _Round()
    r.run(Stage.ADVERTISE_KEYS)
    assert r.reg.current_stage(RID) == Stage.SHARE_KEYS
    r.run(Stage.SHARE_KEYS, r.devs[:4])  # one device never shares its keys
    # Execute + Assert: the share-keys deadline is 30 s after it opened
    r.clock.now += 29.0
    assert r.reg.close_due(RID, 30.0) == 0
    r.clock.now += 1.0
    assert r.reg.close_due(RID, 30.0) == 1
    assert r.reg.current_stage(RID) == Stage.MASKED_INPUT
    with pytest.raises(PermissionError, match="no longer in the round"):
        r.reg.download(RID, Stage.SHARE_KEYS, r.devs[4])


def test_the_upload_cap_of_a_stage_without_uploads_is_a_value_error() -> None:
    """Kills _secagg_routes.py:229 (`if stage not in caps` -> False): the stage then fell
    through to a KeyError, which callers read as an unknown round (404)."""
    r = _Round()
    for stage in (Stage.DONE, Stage.ABORTED):
        with pytest.raises(ValueError, match=f"no uploads in stage {stage}"):
            r.reg.upload_cap(RID, stage)
    with pytest.raises(LookupError, match="no secure round 99"):
        r.reg.upload_cap(99, Stage.ADVERTISE_KEYS)


@pytest.fixture
def served() -> Iterator[tuple[_Round, httpx.Client]]:
    r = _Round()
    app = FastAPI()
    app.include_router(secagg_router(r.reg, retry_after_s=0.01))
    with _serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield r, client


def _stage_url(stage: Stage) -> str:
    return f"/v1/secure/rounds/{RID}/stages/{stage}"


def test_an_aborted_group_answers_410_round_closed(served: tuple[_Round, httpx.Client]) -> None:
    """Kills _secagg_routes.py:574 (the `RoundAborted` branch of `_error` -> False): an upload
    or download of an aborted group was a 422 `RoundAborted`, which a device reads as its own
    message refused rather than as the round being over."""
    # Prepare: two of five advertise, the deadline closes the stage: 2 < t = 3, aborted
    r, client = served
    r.run(Stage.ADVERTISE_KEYS, r.devs[:2])
    r.reg.close_stage(RID, Stage.ADVERTISE_KEYS)
    late = r.devs[2]
    body = r.sessions[late].advertise()
    # Execute
    up = client.post(
        _stage_url(Stage.ADVERTISE_KEYS), content=body, headers={"x-plume-device": late}
    )
    down = client.get(_stage_url(Stage.ADVERTISE_KEYS), headers={"x-plume-device": r.devs[0]})
    # Assert
    for resp in (up, down):
        assert resp.status_code == 410, resp.text
        assert resp.json()["reason"] == "round_closed"
        assert "aborted: 2 nodes advertised keys, need 3" in resp.json()["detail"]
    assert r.reg.stage_counts(RID)[Stage.ADVERTISE_KEYS] == 2
    with pytest.raises(RoundAborted):
        r.reg.upload(RID, Stage.ADVERTISE_KEYS, late, body)


def test_an_oversized_upload_is_413_whether_or_not_it_declares_its_length(
    served: tuple[_Round, httpx.Client],
) -> None:
    """Kills _secagg_routes.py:590 (`if size > cap` -> False): a chunked upload, which
    declares no length, was read whole however large; and :585/:586 (the declared-length
    check -> False / its raise -> pass): a body declaring more than the cap was read up to
    the cap before the refusal instead of not at all."""
    # Prepare
    r, client = served
    cap = r.reg.upload_cap(RID, Stage.ADVERTISE_KEYS)
    dev = {"x-plume-device": r.devs[0]}

    def chunks() -> Iterator[bytes]:
        for _ in range(4):
            yield b"\x00" * cap

    # Execute
    declared = client.post(
        _stage_url(Stage.ADVERTISE_KEYS), content=b"\x00" * (cap + 1), headers=dev
    )
    chunked = client.post(_stage_url(Stage.ADVERTISE_KEYS), content=chunks(), headers=dev)
    # Assert
    assert declared.status_code == 413 and declared.json()["reason"] == "too_large"
    assert declared.json()["detail"] == f"upload declares {cap + 1} bytes, the cap is {cap}"
    assert chunked.status_code == 413 and chunked.json()["reason"] == "too_large"
    assert chunked.json()["detail"] == f"upload above the {cap}-byte cap"
    assert r.reg.stage_counts(RID)[Stage.ADVERTISE_KEYS] == 0
    # A real advertisement, under the cap, is still taken
    ok = client.post(
        _stage_url(Stage.ADVERTISE_KEYS), content=r.sessions[r.devs[0]].advertise(), headers=dev
    )
    assert ok.status_code == 204 and r.reg.stage_counts(RID)[Stage.ADVERTISE_KEYS] == 1


def test_the_result_of_an_open_round_says_open(served: tuple[_Round, httpx.Client]) -> None:
    """Kills _secagg_routes.py:652 (`if out is None` -> False): the result of a round not
    finished yet was a 500 (no outcome to read) instead of its state."""
    r, client = served
    resp = client.get(f"/v1/secure/rounds/{RID}/result")
    assert resp.status_code == 200 and resp.json() == {"round_id": RID, "state": "open"}
    unknown = client.get("/v1/secure/rounds/99/result")
    assert unknown.status_code == 404 and unknown.json()["reason"] == "unknown_round"


def test_only_an_open_advertise_stage_of_a_running_round_is_joinable() -> None:
    """Kills _secagg_routes.py:244 (`if entry is None or g is None or entry.sealed` -> False):
    an unknown round or device raised instead of answering False, and a round sealed while a
    group was still taking advertisements told that group's devices to train for it; and
    :247 (`if grp.stage != Stage.ADVERTISE_KEYS or ...` -> False): a device was told to train
    for a round whose advertise-keys stage had closed, which refuses every later stage to it."""
    # Prepare: two rounds, one past advertise-keys, one sealed during it
    past = _Round()
    assert all(past.reg.joinable(RID, d) for d in past.devs)
    past.run(Stage.ADVERTISE_KEYS, past.devs[:4])
    assert past.reg.joinable(RID, past.devs[4])
    past.reg.close_stage(RID, Stage.ADVERTISE_KEYS)
    sealed = _Round()
    sealed.run(Stage.ADVERTISE_KEYS, sealed.devs[:2])
    assert not sealed.reg.finish(RID).committed
    # Execute + Assert
    assert past.reg.current_stage(RID) == Stage.SHARE_KEYS
    assert not any(past.reg.joinable(RID, d) for d in past.devs)
    assert sealed.reg.current_stage(RID) is None
    assert not any(sealed.reg.joinable(RID, d) for d in sealed.devs)
    assert not past.reg.joinable(99, past.devs[0])
    assert not past.reg.joinable(RID, "dev-x")


def test_a_device_that_missed_a_stage_is_refused_before_its_body_is_read() -> None:
    """Kills _secagg_routes.py:395 (`if device_id not in grp.expected` -> False): a device
    out of the stage's set had its body decoded by SecAgg, and was refused as a malformed
    message (422) instead of as not selected (403)."""
    # Prepare: dev-4 misses advertise-keys (its deadline)
    r = _Round()
    r.run(Stage.ADVERTISE_KEYS, r.devs[:4])
    r.reg.close_stage(RID, Stage.ADVERTISE_KEYS)
    before = r.state()
    # Execute + Assert: whatever it sends, and a copy of a neighbour's upload alike
    for body in (b"junk", r.body(Stage.SHARE_KEYS, r.devs[0])):
        with pytest.raises(PermissionError, match="dev-4 is no longer in stage share-keys"):
            r.reg.upload(RID, Stage.SHARE_KEYS, r.devs[4], body)
    assert r.state() == before


def test_an_upload_of_exactly_the_cap_is_read(served: tuple[_Round, httpx.Client]) -> None:
    """Kills _secagg_routes.py:585 and :590 (`> cap` -> `>= cap`): a body of exactly the cap
    is legal, declared or chunked; it reaches the decoder (here refused as malformed, 422)."""
    r, client = served
    cap = r.reg.upload_cap(RID, Stage.ADVERTISE_KEYS)
    dev = {"x-plume-device": r.devs[0]}

    def chunked() -> Iterator[bytes]:
        yield b"\x00" * (cap - 1)
        yield b"\x00"

    for content in (b"\x00" * cap, chunked()):
        resp = client.post(_stage_url(Stage.ADVERTISE_KEYS), content=content, headers=dev)
        assert resp.status_code == 422 and resp.json()["reason"] == "MalformedMessage"
    assert r.reg.stage_counts(RID)[Stage.ADVERTISE_KEYS] == 0


@pytest.mark.timeout(20)
def test_the_idle_deadline_is_due_at_its_instant_at_a_tick_as_at_an_upload() -> None:
    """Kills _secagg_routes.py:326 (`now >= grp.last_upload + idle_s` -> `>`): at the instant
    of the idle deadline the tick's queue re-pushed the group at the same key forever (the
    tick never returned), while an upload at that instant already counted it due."""
    # Prepare: four of five advertise at t = 100; stage timeout far away
    r = _Round()
    r.run(Stage.ADVERTISE_KEYS, r.devs[:4])
    # Execute: exactly idle_s after the latest upload
    r.clock.now += 2.0
    closed = r.reg.close_due(RID, 1000.0, 2.0)
    # Assert
    assert closed == 1 and r.reg.current_stage(RID) == Stage.SHARE_KEYS


def test_an_advertise_stage_past_its_timeout_is_not_joinable_before_any_tick() -> None:
    """Kills _secagg_routes.py:249 (`self.stage_timeout_s is None` -> `is not None`): with a
    stage timeout a device was told to join a stage already past its deadline (its upload is
    then refused), and without one `joinable` raised."""
    timed = _Round(timeout_s=10.0)
    timed.clock.now += 9.5
    assert timed.reg.joinable(RID, timed.devs[0])
    timed.clock.now += 0.5
    assert not timed.reg.joinable(RID, timed.devs[0])
    assert timed.reg.current_stage(RID) == Stage.ADVERTISE_KEYS  # nothing closed it yet
    untimed = _Round()
    untimed.clock.now += 1e6
    assert untimed.reg.joinable(RID, untimed.devs[0])


def test_each_stage_deadline_counts_from_that_stage_opening() -> None:
    """Kills _secagg_routes.py:317 (`epoch == grp.epoch and ...` -> `or`): the deadline entry
    of a stage that had already closed was taken as the current stage's, which then closed
    `timeout_s` after the previous stage opened instead of after it opened itself."""
    # Prepare: advertise-keys opens at t = 100 and closes on its last upload at t = 120
    r = _Round()
    r.clock.now += 20.0
    r.run(Stage.ADVERTISE_KEYS)
    r.run(Stage.SHARE_KEYS, r.devs[:4])
    # Execute + Assert: share-keys is not due 30 s after advertise-keys opened, but 30 s after
    # it opened itself
    r.clock.now = 130.0
    assert r.reg.close_due(RID, 30.0) == 0
    assert r.reg.current_stage(RID) == Stage.SHARE_KEYS
    r.clock.now = 150.0
    assert r.reg.close_due(RID, 30.0) == 1
    assert r.reg.current_stage(RID) == Stage.MASKED_INPUT


def test_the_router_resolves_a_registry_callable_per_request() -> None:
    """Kills _secagg_routes.py:607 (`not isinstance(registry, SecureRegistry)` -> `isinstance`):
    a zero-argument callable given as the registry was used as the registry itself, and every
    request failed."""
    # Prepare: the router asks `current` for the registry at each request
    first, second = _Round(), _Round()
    current = [first.reg]
    app = FastAPI()
    app.include_router(secagg_router(lambda: current[0], retry_after_s=0.01))
    url = _stage_url(Stage.ADVERTISE_KEYS)
    with _serve(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        # Execute
        a = client.post(
            url,
            content=first.body(Stage.ADVERTISE_KEYS, "dev-0"),
            headers={"x-plume-device": "dev-0"},
        )
        current[0] = second.reg
        b = client.post(
            url,
            content=second.body(Stage.ADVERTISE_KEYS, "dev-1"),
            headers={"x-plume-device": "dev-1"},
        )
    # Assert
    assert (a.status_code, b.status_code) == (204, 204)
    assert first.reg.stage_counts(RID)[Stage.ADVERTISE_KEYS] == 1
    assert second.reg.stage_counts(RID)[Stage.ADVERTISE_KEYS] == 1
    assert first.reg._rounds[RID].groups[0].uploaded[Stage.ADVERTISE_KEYS] == {"dev-0"}


def test_an_upload_inside_the_idle_time_holds_off_the_tick() -> None:
    """Kills _secagg_routes.py:326 (`if now >= grp.last_upload + idle_s` -> True): a tick
    closed a stage idle_s after an older upload although a later one came within idle_s."""
    # Prepare: three advertise at t = 100, a fourth at t = 101.5 (idle time 2 s)
    r = _Round()
    r.run(Stage.ADVERTISE_KEYS, r.devs[:3])
    r.clock.now += 1.5
    r.run(Stage.ADVERTISE_KEYS, r.devs[3:4])
    # Execute + Assert: due at 103.5, not at 102
    r.clock.now = 102.0
    assert r.reg.close_due(RID, 1000.0, 2.0) == 0
    assert r.reg.joinable(RID, r.devs[4])
    r.clock.now = 103.5
    assert r.reg.close_due(RID, 1000.0, 2.0) == 1
    assert r.reg.current_stage(RID) == Stage.SHARE_KEYS


def test_each_stage_is_capped_by_its_own_largest_message(
    served: tuple[_Round, httpx.Client],
) -> None:
    """Kills _secagg_routes.py:77 (`if stage == Stage.SHARE_KEYS` -> True): the masked-input
    and unmask stages took the share-keys cap, which lets a masked-input body many times its
    one legal length be read (here 888 bytes against 74); and :81 (`if stage == Stage.UNMASK`
    -> True): a stage without uploads got the unmask cap instead of a ValueError."""
    # Prepare
    r, client = served
    plan = r.task.groups[0].plan
    k = plan.degree
    caps = {s: r.reg.upload_cap(RID, s) for s in _ORDER}
    # Assert: each stage's cap from its own message
    assert caps == {
        Stage.ADVERTISE_KEYS: 64 + 4 + 64,
        Stage.SHARE_KEYS: 64 + k * (8 + BUNDLE_BYTES),
        Stage.MASKED_INPUT: 64 + math.ceil(plan.vector_len * plan.ring_bits / 8),
        Stage.UNMASK: 64 + k * (9 + BUNDLE_BYTES),
    }
    assert caps[Stage.MASKED_INPUT] < caps[Stage.SHARE_KEYS]
    with pytest.raises(ValueError, match="no uploads in stage done"):
        stage_cap([plan], Stage.DONE)
    # Execute + Assert: a masked-input body one byte above its cap is not read
    dev = {"x-plume-device": r.devs[0]}
    body = b"\x00" * (caps[Stage.MASKED_INPUT] + 1)
    resp = client.post(_stage_url(Stage.MASKED_INPUT), content=body, headers=dev)
    assert resp.status_code == 413 and resp.json()["reason"] == "too_large"
