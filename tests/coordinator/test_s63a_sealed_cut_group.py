"""A group that the round's close cut short gets a definitive refusal, not 425 for ever (s63a).

`SecureRegistry.finish` closes the unmask stage and seals the round; a group still at an
earlier stage then (its stage still open, waiting for a device) is left as it was, and counts
as aborted in the outcome. Its devices' requests were answered as though the stage were still
open: a poll of that stage's download was 425 (retry) until the round was discarded, though
nothing would ever be served to it, so the loopback device (`sdk.secure.HttpSecureDevice`)
polled until its own timeout; an upload was 409 `WrongStage`, and a byte-for-byte retry of an
accepted upload 204. Now such a group answers every stage upload and download as an aborted
group does: 410 `round_closed`, the detail naming the round and the stage it was cut short in.

The round's other groups keep their answers: one that completed serves its downloads and takes
an idempotent retry as before, one that aborted still names its own abort.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import pytest
from fastapi import FastAPI

from coordinator.service._secagg_routes import _ORDER, secagg_router
from protocol.secagg import RoundAborted, Stage, WrongStage
from sdk.secure import HttpSecureDevice, SecureParticipant

from .test_s61d_secagg_registry_refusals import RID, D, _Round
from .test_secure_http import _serve

_DOWNLOADS = _ORDER[:-1]  # the stages a download follows


@dataclass
class _Sealed:
    """Round 7 in three groups of five, sealed by `finish`: A completed every stage, B was
    cut short in `cut` (three of its five uploaded that stage), C aborted at advertise-keys
    (two keys, the threshold is three)."""

    r: _Round
    cut: Stage
    a: list[str]
    b: list[str]
    c: list[str]
    bodies: dict[tuple[Stage, str], bytes] = field(default_factory=dict)
    served: dict[tuple[Stage, str], bytes] = field(default_factory=dict)  # A's downloads

    def send(self, stage: Stage, devs: list[str]) -> None:
        for d in devs:
            self.bodies[stage, d] = body = self.r.body(stage, d)
            assert self.r.reg.upload(RID, stage, d, body)


def _sealed(cut: Stage) -> _Sealed:
    r = _Round(15, group_size=5)
    a, b, c = (list(ids) for ids in r.task.members)
    s = _Sealed(r, cut, a, b, c)
    s.send(Stage.ADVERTISE_KEYS, a + c[:2])  # at t = 100; A's stage closes with its fifth
    r.clock.now += 10.0
    for stage in _ORDER[: _ORDER.index(cut)]:
        s.send(stage, b)  # each closes with B's fifth upload
    s.send(cut, b[:3])
    assert r.reg.close_due(RID, 1000.0, idle_s=5.0) == 1  # C: idle since t = 100, aborted
    assert r.reg.abort_reasons(RID) == ["group 3 of 3: 2 nodes advertised keys, need 3"]
    for stage in _ORDER[1:]:
        s.send(stage, a)
    # Before the close B's stage is open: its poll is a 425 (None), and must stay so
    assert r.reg.download(RID, cut, b[0]) is None
    # The bytes B's fourth device would send in that stage, computed while it still could
    s.bodies[cut, b[3]] = r.body(cut, b[3])
    s.served = {(st, d): r.reg.download(RID, st, d) or b"" for st in _DOWNLOADS for d in a}
    out = r.reg.finish(RID)
    assert out.committed and sorted(out.contributors) == sorted(a)
    assert out.aborted_groups == 2
    return s


@contextmanager
def _client(s: _Sealed) -> Iterator[httpx.Client]:
    app = FastAPI()
    app.include_router(secagg_router(s.r.reg, retry_after_s=0.01))
    with _serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def _url(stage: Stage) -> str:
    return f"/v1/secure/rounds/{RID}/stages/{stage}"


def _as(dev: str) -> dict[str, str]:
    return {"x-plume-device": dev}


CUT_STAGES = pytest.mark.parametrize("cut", _DOWNLOADS, ids=[str(s) for s in _DOWNLOADS])


@CUT_STAGES
def test_a_cut_short_group_s_downloads_are_410_naming_the_round_and_stage(cut: Stage) -> None:
    """Fails before the fix: the poll of the stage B was cut short in (and of every stage
    after it) was 425 with a Retry-After, for as long as the round was held."""
    # Prepare
    s = _sealed(cut)
    why = f"secure round {RID} is closed: cut short in stage {cut}"
    with _client(s) as client:
        # Execute: a device that uploaded the stage, and one that did not, poll each download
        answers = {
            (stage, d): client.get(_url(stage), headers=_as(d))
            for stage in _DOWNLOADS
            for d in (s.b[0], s.b[4])
        }
    # Assert
    for (stage, d), resp in answers.items():
        assert resp.status_code == 410, (stage, d, resp.status_code, resp.text)
        assert resp.json()["reason"] == "round_closed"
        assert why in resp.json()["detail"], resp.json()
    with pytest.raises(RoundAborted, match=why):
        s.r.reg.download(RID, cut, s.b[0])


@CUT_STAGES
def test_a_cut_short_group_s_uploads_are_410_and_change_nothing(cut: Stage) -> None:
    """Fails before the fix: B's next upload of its stage was 409 `WrongStage` (a reason the
    main API does not use), and a retry of an accepted upload was taken as a duplicate (204)
    for a group whose sum the round had already counted out."""
    # Prepare
    s = _sealed(cut)
    before = s.r.state()
    counts = s.r.reg.stage_counts(RID)
    sends = [
        (cut, s.b[3], s.bodies[cut, s.b[3]]),  # its first upload of the stage
        (cut, s.b[0], s.bodies[cut, s.b[0]]),  # a byte-for-byte retry of an accepted one
        (cut, s.b[0], b"other bytes"),  # different bytes for a stage it sent
        (Stage.UNMASK, s.b[1], b"junk"),  # a stage the group never reached
    ]
    with _client(s) as client:
        # Execute
        answers = [client.post(_url(st), content=body, headers=_as(d)) for st, d, body in sends]
    # Assert: 410 round_closed naming round and stage; the round is as it was
    for (st, d, _), resp in zip(sends, answers, strict=True):
        assert resp.status_code == 410, (st, d, resp.status_code, resp.text)
        assert resp.json()["reason"] == "round_closed"
        assert f"secure round {RID} is closed: cut short in stage {cut}" in resp.json()["detail"]
    assert s.r.state() == before and s.r.reg.stage_counts(RID) == counts
    # Still a WrongStage for the registry's callers (the stage is closed to the device)
    with pytest.raises(WrongStage, match=f"secure round {RID} is closed"):
        s.r.reg.upload(RID, cut, s.b[3], s.bodies[cut, s.b[3]])
    assert s.r.state() == before


def test_the_loopback_device_stops_at_once_with_round_aborted() -> None:
    """Fails before the fix: `HttpSecureDevice.download` polled the 425s until its timeout
    and returned None (a device left behind, its masked input unsettled) instead of raising
    `RoundAborted`, which `run_round` answers by returning the sent input to the residual."""
    # Prepare: B cut short in masked-input; b[0] sent its masked input
    s = _sealed(Stage.MASKED_INPUT)
    with _client(s) as client:
        device = HttpSecureDevice(client, s.b[0], SecureParticipant(D), poll_s=0.01)
        t0 = time.monotonic()
        # Execute + Assert
        with pytest.raises(RoundAborted, match="cut short in stage masked-input"):
            device.download(RID, Stage.MASKED_INPUT, timeout_s=3.0)
        assert time.monotonic() - t0 < 2.0  # one answer, not polls until the timeout


@CUT_STAGES
def test_the_completed_and_the_aborted_groups_keep_their_answers(cut: Stage) -> None:
    """Passes before the fix too: it pins that the refusal above is the cut-short group's
    alone. A (completed) serves its downloads as before the close and takes a retry of its
    unmask answer as a duplicate; C (aborted) names its own abort; a device of no group is
    not selected."""
    # Prepare
    s = _sealed(cut)
    before = s.r.state()
    a0 = s.a[0]
    with _client(s) as client:
        # Execute
        downloads = {
            (st, d): client.get(_url(st), headers=_as(d)) for st in _DOWNLOADS for d in s.a
        }
        retry = client.post(_url(Stage.UNMASK), content=s.bodies[Stage.UNMASK, a0], headers=_as(a0))
        other = client.post(_url(Stage.UNMASK), content=b"other bytes", headers=_as(a0))
        aborted = [
            client.get(_url(Stage.ADVERTISE_KEYS), headers=_as(s.c[0])),
            client.post(
                _url(Stage.ADVERTISE_KEYS),
                content=s.r.sessions[s.c[4]].advertise(),
                headers=_as(s.c[4]),
            ),
        ]
        stranger = client.get(_url(cut), headers=_as("dev-x"))
    # Assert
    for key, resp in downloads.items():
        assert resp.status_code == 200, (key, resp.text)
        assert resp.content == s.served[key] != b""
    assert retry.status_code == 204, retry.text
    assert other.status_code == 409 and other.json()["reason"] == "DuplicateStageUpload"
    for resp in aborted:
        assert resp.status_code == 410 and resp.json()["reason"] == "round_closed"
        assert resp.json()["detail"] == "aborted: 2 nodes advertised keys, need 3"
    assert stranger.status_code == 403 and stranger.json()["reason"] == "not_selected"
    assert s.r.state() == before
