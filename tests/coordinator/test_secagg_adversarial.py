"""An adversarial review of the SecAgg+ stage endpoints of a live coordinator (loopback HTTP).

Each test drives five signed devices through a secure round stage by stage, with a malicious
device and a flaky network in between: malformed, oversized, misaddressed, replayed and
out-of-order stage bodies, uploads after a stage or the round closed, and unmask answers that
ask for both of a peer's secrets. Every hostile request must get a 4xx with a reason, store
nothing, and leave the honest devices' round (and its exact mean) intact. Stage deadlines run
on an injected clock, so nothing here waits for a timer.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest

from coordinator.secure import BUNDLE_BYTES
from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.app import create_app
from protocol import auth
from protocol.messages import Assignment, CodecParams
from protocol.names import Reason
from protocol.secagg import (
    AdvertiseKeys,
    KeyDirectory,
    MaskedInput,
    MessageKind,
    ShareKeys,
    ShareKind,
    Stage,
    UnmaskRequest,
    UnmaskResponse,
    WrongAddress,
)
from sdk.client import Client
from sdk.secure import SecureParticipant, SecureSession

from .test_service_support import (
    ADMIN,
    SPEC,
    StageClock,
    admin_get,
    create_task,
    task_config,
)

STAGES = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK)
STAGE_TIMEOUT_S = 100.0  # on the injected clock: a stage closes early only when we advance it
N = 7  # complete graph: degree 6, threshold 4, so two devices may drop


class Device:
    """One registered device, driven by hand: its signing key, session and node index."""

    def __init__(self, url: str, root: Path, name: str) -> None:
        self.client = Client(url, str(root / name))
        self.client.register()
        self.id = self.client.device_id
        self.key = self.client._core.key
        self.participant = SecureParticipant(SPEC.size)
        self.session: SecureSession | None = None
        self.node = -1
        self.delta = np.random.default_rng(int(self.id[:12], 16)).normal(0, 0.05, SPEC.size)
        self.residual_before = self.participant.residual.copy()

    @property
    def sess(self) -> SecureSession:
        assert self.session is not None
        return self.session


class World:
    """A secure task of five devices on a loopback coordinator, with an outsider registered."""

    def __init__(self, url: str, root: Path, app: object, http: httpx.Client) -> None:
        self.http = http
        self.app = app
        cfg = task_config(
            rounds=2, clients_per_round=N, over_selection=1.0, min_reports=3,
            selection_timeout_s=60.0, deadline_s=600.0,
            downlink=CodecParams(topk=1.0, bits=32),
            secure={"coord_fraction": 0.5, "stage_timeout_s": STAGE_TIMEOUT_S},
        )  # fmt: skip
        self.task_id = create_task(http, cfg)
        self.clock = StageClock()
        coordinator = app.state.coordinator  # type: ignore[attr-defined]
        coordinator.runtimes[self.task_id].secure.registry.clock = self.clock
        self.coordinator = coordinator
        devices = [Device(url, root, f"dev{i}") for i in range(N)]
        self.devices = sorted(devices, key=lambda d: d.id)
        self.outsider = Device(url, root, "outsider")
        self.round_id = 0

    # -- requests --------------------------------------------------------------------------

    def signed(
        self,
        dev: Device,
        method: str,
        target: str,
        body: bytes = b"",
        round_id: int | None = None,
    ) -> httpx.Response:
        rid = self.round_id if round_id is None else round_id
        headers = auth.sign_request(
            dev.key, method=method, target=target, round_id=rid, body=body,
            timestamp_ms=int(time.time() * 1000),
        )  # fmt: skip
        hdrs = {str(k): v for k, v in headers.items()}
        if method == "POST":
            hdrs["content-type"] = "application/octet-stream"
        return self.http.request(method, target, content=body or None, headers=hdrs)

    def path(self, stage: str, round_id: int | None = None) -> str:
        rid = self.round_id if round_id is None else round_id
        return f"/v1/secure/rounds/{rid}/stages/{stage}"

    def post(
        self, dev: Device, stage: str, body: bytes, round_id: int | None = None
    ) -> httpx.Response:
        return self.signed(dev, "POST", self.path(stage, round_id), body, round_id)

    def get(self, dev: Device, stage: str) -> httpx.Response:
        return self.signed(dev, "GET", self.path(stage))

    def download(self, dev: Device, stage: Stage, timeout_s: float = 20.0) -> bytes:
        """The download after `stage` (polling while it is open)."""
        give_up = time.monotonic() + timeout_s
        while True:
            r = self.get(dev, stage)
            if r.status_code == 200:
                return bytes(r.content)
            assert r.status_code == 425, r.text
            assert time.monotonic() < give_up, f"{stage} never closed"
            time.sleep(0.02)

    def status(self) -> dict[str, object]:
        out: dict[str, object] = admin_get(self.http, f"/v1/rounds/{self.round_id}")
        return out

    def uploads(self) -> dict[str, int]:
        counts: dict[str, int] = self.status()["measurements"]["stage_uploads"]  # type: ignore[index]
        return dict(counts)

    def wait_stage(self, stage: Stage, timeout_s: float = 20.0) -> None:
        """Wait until the round's current stage is `stage` (the ticker closed the one before)."""
        give_up = time.monotonic() + timeout_s
        while self.status()["measurements"]["stage"] != str(stage):  # type: ignore[index]
            assert time.monotonic() < give_up, f"round never reached {stage}"
            time.sleep(0.02)

    # -- the round -------------------------------------------------------------------------

    def open_round(self) -> dict[str, Assignment]:
        """All five check in until each holds an assignment; every device then joins."""
        answers: dict[str, Assignment] = {}
        give_up = time.monotonic() + 30
        while len(answers) < N:
            for d in self.devices:
                if d.id not in answers:
                    a = d.client.check_in(self.task_id).assignment
                    if a is not None:
                        answers[d.id] = a
            assert time.monotonic() < give_up, "no cohort"
            time.sleep(0.02)
        self.round_id = next(iter(answers.values())).round_id
        for d in self.devices:
            params, _ = d.client.fetch_model(answers[d.id])
            setup = f"/v1/secure/rounds/{self.round_id}/setup"
            r = self.signed(d, "GET", setup)
            assert r.status_code == 200, r.text
            d.node = int(r.headers["x-plume-secagg-node"])
            digest = bytes.fromhex(r.headers["x-plume-secagg-digest"])
            d.session = d.participant.join(r.content, digest, params, d.node)
        self.params0 = params
        return answers

    def masked_input(self, dev: Device, delivery: bytes) -> bytes:
        rng = np.random.default_rng(dev.node)
        dev.residual_before = dev.participant.residual.copy()
        return dev.sess.masked_input(delivery, dev.delta.astype(np.float32), 1, rng)

    def sent(self, dev: Device) -> npt.NDArray[np.float64]:
        """What the device's last masked input stands for: update + old - new residual."""
        u = dev.delta.astype(np.float32) + dev.residual_before
        return u.astype(np.float64) - dev.participant.residual


def _refused(r: httpx.Response, status: int, reason: str, starts: str = "") -> str:
    """A 4xx with a JSON reason and a detail (never a 500)."""
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body["reason"] == str(reason) and body["detail"], body
    assert str(body["detail"]).startswith(starts), body
    return str(body["detail"])


def _bad_frame(r: httpx.Response, starts: str = "") -> str:
    return _refused(r, 422, Reason.BAD_FRAME, starts)


@pytest.fixture()
def world(tmp_path: Path) -> Iterator[World]:
    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05, tick_s=0.02
    )
    app = create_app(cfg)
    with ServerThread(cfg, app=app) as url, httpx.Client(base_url=url, timeout=30) as http:
        yield World(url, tmp_path, app, http)


def _with(body: bytes, **changes: Any) -> bytes:
    """A stage message re-encoded with some fields changed (round_id, node, ...)."""
    msg: AdvertiseKeys | ShareKeys | UnmaskResponse
    kind = body[4]
    if kind == MessageKind.ADVERTISE_KEYS:
        msg = AdvertiseKeys.from_bytes(body)
    elif kind == MessageKind.SHARE_KEYS:
        msg = ShareKeys.from_bytes(body, N)
    else:
        msg = UnmaskResponse.from_bytes(body, N)
    return dataclasses.replace(msg, **changes).to_bytes()


def test_hostile_stage_uploads_are_refused_and_the_round_commits_the_exact_mean(
    world: World,
) -> None:
    # Prepare: A is malicious between its honest uploads; D drops before its masked input,
    # E after it (so the server must reconstruct D's mask key and E's self-mask seed); F and
    # G are honest throughout.
    a, b, c, d, e, f, g = world.devices
    world.open_round()
    nothing = dict.fromkeys(map(str, STAGES), 0)
    rid = world.round_id

    # Execute + Assert, advertise-keys: malformed, misaddressed and out-of-order bodies
    adv_a = a.sess.advertise()
    assert world.uploads() == nothing
    _bad_frame(world.post(a, Stage.ADVERTISE_KEYS, adv_a[:-1]), "MalformedMessage")
    _bad_frame(world.post(a, Stage.ADVERTISE_KEYS, adv_a + b"\x00"), "MalformedMessage")
    _bad_frame(world.post(a, Stage.ADVERTISE_KEYS, b""), "MalformedMessage")
    directory = KeyDirectory(rid, ((a.node, b"\x01" * 32, b"\x02" * 32),)).to_bytes()
    _bad_frame(world.post(a, Stage.ADVERTISE_KEYS, directory), "MalformedMessage")
    _bad_frame(
        world.post(a, Stage.ADVERTISE_KEYS, _with(adv_a, round_id=rid + 1)), "ProtocolViolation"
    )
    _bad_frame(world.post(a, Stage.ADVERTISE_KEYS, _with(adv_a, node=b.node)), "ProtocolViolation")
    _bad_frame(world.post(a, Stage.ADVERTISE_KEYS, _with(adv_a, node=N)), "ProtocolViolation")
    low_order = _with(adv_a, enc_public=bytes(32))
    _bad_frame(world.post(a, Stage.ADVERTISE_KEYS, low_order), "KeyAgreementFailed")
    same = _with(adv_a, mask_public=AdvertiseKeys.from_bytes(adv_a).enc_public)
    _bad_frame(world.post(a, Stage.ADVERTISE_KEYS, same), "DuplicateKey")
    _refused(world.post(a, Stage.ADVERTISE_KEYS, b"\x00" * 200_000), 413, Reason.TOO_LARGE)
    early = ShareKeys(rid, a.node, ((b.node, bytes(BUNDLE_BYTES)),)).to_bytes()
    _refused(world.post(a, Stage.SHARE_KEYS, early), 409, Reason.INVALID_STATE, "WrongStage")
    too_soon = UnmaskResponse(rid, a.node, ()).to_bytes()
    _refused(world.post(a, Stage.UNMASK, too_soon), 409, Reason.INVALID_STATE, "WrongStage")
    _refused(world.post(world.outsider, Stage.ADVERTISE_KEYS, adv_a), 403, Reason.NOT_SELECTED)
    _refused(world.get(a, Stage.ADVERTISE_KEYS), 425, Reason.INVALID_STATE)
    assert world.uploads() == nothing
    # A's honest upload; an identical retry is idempotent, a different second one refused
    assert world.post(a, Stage.ADVERTISE_KEYS, adv_a).status_code == 200
    retry = world.post(a, Stage.ADVERTISE_KEYS, adv_a)
    assert retry.status_code == 200 and retry.json()["duplicate"] is True
    other = _with(adv_a, enc_public=b"\x07" * 32, mask_public=b"\x08" * 32)
    _refused(world.post(a, Stage.ADVERTISE_KEYS, other), 409, Reason.DUPLICATE_UPLOAD)
    # B tries to advertise A's keys as its own (key substitution)
    adv_b = b.sess.advertise()
    stolen = _with(adv_a, node=b.node)
    _bad_frame(world.post(b, Stage.ADVERTISE_KEYS, stolen), "DuplicateKey")
    assert world.uploads()[Stage.ADVERTISE_KEYS] == 1
    assert world.post(b, Stage.ADVERTISE_KEYS, adv_b).status_code == 200
    for dev in (c, d, e, f, g):
        assert world.post(dev, Stage.ADVERTISE_KEYS, dev.sess.advertise()).status_code == 200
    world.wait_stage(Stage.SHARE_KEYS)

    # share-keys: misaddressed shares, garbage ciphertexts, replays, out-of-order uploads
    share = {dev.id: dev.sess.share_keys(world.download(dev, Stage.ADVERTISE_KEYS))
             for dev in world.devices}  # fmt: skip
    ska = ShareKeys.from_bytes(share[a.id], N)
    cts = list(ska.ciphertexts)
    outside = [(N + 2, cts[0][1]), *cts[1:]]
    to_self = [(a.node, cts[0][1]), *cts[1:]]
    twice = [cts[0], cts[0], *cts[2:]]
    short = [(cts[0][0], cts[0][1][:-1]), *cts[1:]]
    for bad in (outside, to_self, twice):
        _bad_frame(world.post(a, Stage.SHARE_KEYS, _with(share[a.id], ciphertexts=tuple(bad))),
                   "WrongAddress")  # fmt: skip
    _bad_frame(world.post(a, Stage.SHARE_KEYS, _with(share[a.id], ciphertexts=tuple(short))),
               "MalformedMessage")  # fmt: skip
    # too few bundles: a neighbour without A's shares would refuse to unmask
    _bad_frame(world.post(a, Stage.SHARE_KEYS, _with(share[a.id], ciphertexts=())), "WrongAddr")
    fewer = tuple(cts[:-1])
    _bad_frame(world.post(a, Stage.SHARE_KEYS, _with(share[a.id], ciphertexts=fewer)), "WrongAddr")
    # more bundles than neighbours, or a longer one: past the stage's cap, never read
    many = _with(share[a.id], ciphertexts=tuple(cts) * 2)
    _refused(world.post(a, Stage.SHARE_KEYS, many), 413, Reason.TOO_LARGE)
    huge = _with(share[a.id], ciphertexts=((cts[0][0], b"\x00" * 1025), *cts[1:]))
    _refused(world.post(a, Stage.SHARE_KEYS, huge), 413, Reason.TOO_LARGE)
    _bad_frame(
        world.post(a, Stage.SHARE_KEYS, _with(share[a.id], round_id=rid - 1)), "ProtocolViolation"
    )
    _bad_frame(world.post(a, Stage.SHARE_KEYS, share[b.id]), "ProtocolViolation")  # B's, replayed
    _bad_frame(world.post(a, Stage.SHARE_KEYS, adv_a), "MalformedMessage")  # an earlier stage's
    _refused(world.post(d, Stage.ADVERTISE_KEYS, adv_a), 409, Reason.DUPLICATE_UPLOAD)
    assert world.post(a, Stage.ADVERTISE_KEYS, adv_a).json()["duplicate"] is True
    # a stage not open yet: 409 whatever the body (before stop 46 a malformed one was 422)
    _refused(world.post(a, Stage.MASKED_INPUT, b"PSA1"), 409, Reason.INVALID_STATE, "WrongStage")
    assert world.uploads() == {**nothing, Stage.ADVERTISE_KEYS: N}
    for dev in world.devices:
        assert world.post(dev, Stage.SHARE_KEYS, share[dev.id]).status_code == 200
    world.wait_stage(Stage.MASKED_INPUT)

    # masked-input: wrong shape, truncated, another device's input, then D goes silent
    masked = {dev.id: world.masked_input(dev, world.download(dev, Stage.SHARE_KEYS))
              for dev in (a, b, c, e, f, g)}  # fmt: skip
    mia = MaskedInput.from_bytes(masked[a.id], a.sess.plan.vector_len, a.sess.plan.ring_bits)
    wider = MaskedInput(rid, a.node, mia.length, mia.bits + 1, mia.packed)
    _bad_frame(world.post(a, Stage.MASKED_INPUT, wider.to_bytes()), "MalformedMessage")
    longer = MaskedInput(rid, a.node, mia.length + 1, mia.bits, mia.packed)
    _bad_frame(world.post(a, Stage.MASKED_INPUT, longer.to_bytes()), "MalformedMessage")
    padded = masked[a.id] + b"\x00" * 64
    _refused(world.post(a, Stage.MASKED_INPUT, padded), 413, Reason.TOO_LARGE)
    _bad_frame(world.post(a, Stage.MASKED_INPUT, masked[a.id][:-1]), "MalformedMessage")
    _bad_frame(world.post(a, Stage.MASKED_INPUT, masked[a.id] + b"\x00"), "MalformedMessage")
    forged = MaskedInput(rid, b.node, mia.length, mia.bits, mia.packed).to_bytes()
    _bad_frame(world.post(a, Stage.MASKED_INPUT, forged), "ProtocolViolation")
    _bad_frame(world.post(a, Stage.MASKED_INPUT, masked[b.id]), "ProtocolViolation")
    replay = MaskedInput(rid - 1, a.node, mia.length, mia.bits, mia.packed).to_bytes()
    _bad_frame(world.post(a, Stage.MASKED_INPUT, replay), "ProtocolViolation")
    _refused(world.post(a, Stage.SHARE_KEYS, share[b.id]), 409, Reason.DUPLICATE_UPLOAD)
    for dev in (a, b, c, e, f, g):
        assert world.post(dev, Stage.MASKED_INPUT, masked[dev.id]).status_code == 200
    _refused(world.post(a, Stage.MASKED_INPUT, masked[b.id]), 409, Reason.DUPLICATE_UPLOAD)
    assert world.uploads()[Stage.MASKED_INPUT] == 6
    world.clock.advance(STAGE_TIMEOUT_S)  # the masked-input deadline passes without D
    world.wait_stage(Stage.UNMASK)
    late = world.masked_input(d, world.download(d, Stage.SHARE_KEYS))
    # the stage closed without D: 403, as its download (tests/coordinator/test_s44_late_stage.py)
    _refused(
        world.post(d, Stage.MASKED_INPUT, late), 403, Reason.NOT_SELECTED, "StageClosedWithout"
    )
    _refused(world.get(d, Stage.MASKED_INPUT), 403, Reason.NOT_SELECTED)

    # unmask: both secrets of one peer, the wrong secret, stray and corrupt shares
    requests = {dev.id: world.download(dev, Stage.MASKED_INPUT) for dev in (a, b, c, e, f, g)}
    req = UnmaskRequest.from_bytes(requests[a.id], N)
    assert set(req.alive) == {x.node for x in (a, b, c, e, f, g)} and req.dropped == (d.node,)
    unmask = {dev.id: dev.sess.unmask(requests[dev.id]) for dev in (a, b, c, f, g)}
    ura = UnmaskResponse.from_bytes(unmask[a.id], N)
    held = a.sess.client.state.held_shares
    both_d = (*ura.shares, (d.node, ShareKind.SELF_MASK, held[d.node][1]))
    both_e = (*ura.shares, (e.node, ShareKind.MASK_KEY, held[e.node][0]))
    swapped = tuple(
        (n, ShareKind.MASK_KEY, held[n][0]) if n == e.node else (n, k, s) for n, k, s in ura.shares
    )
    stray = (*ura.shares, (N + 3, ShareKind.SELF_MASK, held[b.node][1]))
    # (A share whose seal is broken, or with another holder's x, is set aside and the rest of
    # the answer kept, since its dealer may have dealt it so: tests/protocol/
    # test_secagg_robust_unmask.py. Here an answer like that would be taken as A's.)
    head, *rest = ura.shares
    oversized = ((head[0], head[1], head[2] + b"\x00" * 512), *rest)
    for shares, why in ((both_d, "ProtocolViolation"), (both_e, "ProtocolViolation"),
                     (swapped, "ProtocolViolation"), (stray, "ProtocolViolation"),
                     (oversized, "MalformedMessage")):  # fmt: skip
        _bad_frame(world.post(a, Stage.UNMASK, _with(unmask[a.id], shares=shares)), why)
    bloated = _with(unmask[a.id], shares=tuple((n, k, s * 3) for n, k, s in ura.shares))
    _refused(world.post(a, Stage.UNMASK, bloated), 413, Reason.TOO_LARGE)
    _bad_frame(world.post(a, Stage.UNMASK, unmask[b.id]), "ProtocolViolation")
    _bad_frame(
        world.post(a, Stage.UNMASK, _with(unmask[a.id], round_id=rid + 1)), "ProtocolViolation"
    )
    dropped = UnmaskResponse(rid, d.node, ()).to_bytes()
    _refused(world.post(d, Stage.UNMASK, dropped), 403, Reason.NOT_SELECTED)
    assert world.uploads()[Stage.UNMASK] == 0
    for dev in (a, b, c, f, g):  # E went silent after its masked input
        assert world.post(dev, Stage.UNMASK, unmask[dev.id]).status_code == 200
    both_later = _with(unmask[a.id], shares=both_d)
    _refused(world.post(a, Stage.UNMASK, both_later), 409, Reason.DUPLICATE_UPLOAD)
    world.clock.advance(STAGE_TIMEOUT_S)  # the unmask deadline passes without E

    # Assert: the round commits the exact mean of all but D, which is listed as dropped
    final = _committed(world)
    meas = final["measurements"]
    assert final["state"] == "committed", final["measurements"]
    assert meas["contributors"] == 6 and meas["dropped"] == [d.id]
    assert "suspect_devices" not in meas
    mean = np.mean([world.sent(dev) for dev in (a, b, c, e, f, g)], axis=0)
    params, version, _ = a.client.fetch_current(world.task_id, SPEC)
    assert version == 1
    np.testing.assert_allclose(params, world.params0 + mean, atol=1e-6)

    # A stage of the committed round, and a replay of it into the next round, are refused
    _refused(world.post(a, Stage.UNMASK, unmask[a.id]), 409, Reason.ROUND_CLOSED)
    first = world.round_id
    world.open_round()
    assert world.round_id != first
    _bad_frame(world.post(a, Stage.ADVERTISE_KEYS, adv_a), "ProtocolViolation")
    _refused(world.post(a, Stage.ADVERTISE_KEYS, adv_a, round_id=first), 409, Reason.ROUND_CLOSED)
    assert world.uploads() == nothing


def _committed(world: World, timeout_s: float = 20.0) -> dict[str, Any]:
    """The round's final record, once its publish has run."""
    give_up = time.monotonic() + timeout_s
    while True:
        out: dict[str, Any] = admin_get(world.http, f"/v1/rounds/{world.round_id}")
        if out["state"] in ("committed", "abandoned"):
            return out
        assert time.monotonic() < give_up, out
        time.sleep(0.02)


def _stage(world: World, devs: list[Device], stage: Stage, bodies: dict[str, bytes]) -> None:
    """Honest uploads of `stage` by `devs`."""
    for dev in devs:
        r = world.post(dev, stage, bodies[dev.id])
        assert r.status_code == 200, r.text


def _honest_until_unmask(world: World, devs: list[Device]) -> dict[str, bytes]:
    """`devs` run the first three stages honestly (the rest of the cohort is silent); the
    masked-input stage closes at its deadline if someone is missing. Returns the unmask
    requests."""
    _stage(world, devs, Stage.ADVERTISE_KEYS, {d.id: d.sess.advertise() for d in devs})
    if len(devs) < N:
        world.clock.advance(STAGE_TIMEOUT_S)
    world.wait_stage(Stage.SHARE_KEYS)
    shares = {d.id: d.sess.share_keys(world.download(d, Stage.ADVERTISE_KEYS)) for d in devs}
    _stage(world, devs, Stage.SHARE_KEYS, shares)
    world.wait_stage(Stage.MASKED_INPUT)
    masked = {d.id: world.masked_input(d, world.download(d, Stage.SHARE_KEYS)) for d in devs}
    _stage(world, devs, Stage.MASKED_INPUT, masked)
    if len(devs) < N:
        world.clock.advance(STAGE_TIMEOUT_S)
    world.wait_stage(Stage.UNMASK)
    return {d.id: world.download(d, Stage.MASKED_INPUT) for d in devs}


def _model(world: World) -> tuple[npt.NDArray[np.float32], int]:
    params, version, _ = world.devices[0].client.fetch_current(world.task_id, SPEC)
    return params, version


def test_more_drops_than_the_threshold_abort_cleanly_and_the_next_round_commits(
    world: World,
) -> None:
    # Prepare: every device sends its masked input, then four of seven go silent, leaving
    # three unmask answers where each secret needs t = 4 shares
    world.open_round()
    params0, _ = _model(world)
    requests = _honest_until_unmask(world, world.devices)
    answering = world.devices[:3]
    for dev in answering:
        assert world.post(dev, Stage.UNMASK, dev.sess.unmask(requests[dev.id])).status_code == 200
    # Execute: the unmask deadline passes
    world.clock.advance(STAGE_TIMEOUT_S)
    failed = _committed(world)
    # Assert: the round is reported failed, with why; nothing was published
    assert failed["state"] == "abandoned" and failed["version_after"] is None
    assert failed["measurements"]["aborted_groups"] == 1
    assert "fewer than t=4 shares" in failed["measurements"]["abort_reasons"][0]
    params, version = _model(world)
    assert version == 0
    np.testing.assert_array_equal(params, params0)
    late = world.post(world.devices[4], Stage.UNMASK, b"PSA1")
    _refused(late, 409, Reason.ROUND_CLOSED)
    # The abandoned round's inputs go back into each device's residual, as the SDK's client
    # settles them (a participant refuses a new input while one is unsettled)
    for dev in world.devices:
        dev.participant.return_sent()
    # Execute: the next round, with every device honest
    world.open_round()
    requests = _honest_until_unmask(world, world.devices)
    _stage(world, world.devices, Stage.UNMASK,
           {d.id: d.sess.unmask(requests[d.id]) for d in world.devices})  # fmt: skip
    final = _committed(world)
    # Assert: it commits the exact mean of what the seven devices sent this round
    assert final["state"] == "committed", final["measurements"]
    mean = np.mean([world.sent(d) for d in world.devices], axis=0)
    params, version = _model(world)
    assert version == 1
    np.testing.assert_allclose(params, params0 + mean, atol=1e-6)


def test_a_dealer_of_undecryptable_bundles_aborts_its_group_and_nothing_else(
    world: World,
) -> None:
    # Prepare: A sends bundles of the legal length that no neighbour can decrypt; the server
    # cannot tell (it has no key), so it relays them
    a, *others = world.devices
    world.open_round()
    params0, _ = _model(world)
    _stage(world, world.devices, Stage.ADVERTISE_KEYS,
           {d.id: d.sess.advertise() for d in world.devices})  # fmt: skip
    world.wait_stage(Stage.SHARE_KEYS)
    shares = {
        d.id: d.sess.share_keys(world.download(d, Stage.ADVERTISE_KEYS)) for d in world.devices
    }
    honest_a = ShareKeys.from_bytes(shares[a.id], N)
    garbage = tuple((dest, bytes(len(ct))) for dest, ct in honest_a.ciphertexts)
    shares[a.id] = dataclasses.replace(honest_a, ciphertexts=garbage).to_bytes()
    _stage(world, world.devices, Stage.SHARE_KEYS, shares)
    world.wait_stage(Stage.MASKED_INPUT)
    # Execute: each honest neighbour refuses A's bundle, and with it the round
    for dev in others:
        with pytest.raises(WrongAddress, match="does not decrypt"):
            world.masked_input(dev, world.download(dev, Stage.SHARE_KEYS))
    delivery = world.download(a, Stage.SHARE_KEYS)
    assert world.post(a, Stage.MASKED_INPUT, world.masked_input(a, delivery)).status_code == 200
    world.clock.advance(STAGE_TIMEOUT_S)
    failed = _committed(world)
    # Assert: a clean abort (one masked input, nothing unmasked); the model is untouched
    assert failed["state"] == "abandoned"
    assert failed["measurements"]["abort_reasons"] == ["1 masked inputs, need 4"]
    params, version = _model(world)
    assert version == 0
    np.testing.assert_array_equal(params, params0)


def test_uploads_after_the_round_deadline_are_refused_and_the_round_is_abandoned(
    world: World,
) -> None:
    # Prepare: the round reaches the masked-input stage; half the devices have uploaded
    world.open_round()
    params0, _ = _model(world)
    devs = world.devices
    _stage(world, devs, Stage.ADVERTISE_KEYS, {d.id: d.sess.advertise() for d in devs})
    world.wait_stage(Stage.SHARE_KEYS)
    shares = {d.id: d.sess.share_keys(world.download(d, Stage.ADVERTISE_KEYS)) for d in devs}
    _stage(world, devs, Stage.SHARE_KEYS, shares)
    world.wait_stage(Stage.MASKED_INPUT)
    masked = {d.id: world.masked_input(d, world.download(d, Stage.SHARE_KEYS)) for d in devs}
    _stage(world, devs[:4], Stage.MASKED_INPUT, masked)
    # A lost answer: the device retries the identical upload, which is idempotent
    retry = world.post(devs[0], Stage.MASKED_INPUT, masked[devs[0].id])
    assert retry.status_code == 200 and retry.json()["duplicate"] is True
    assert world.uploads()[Stage.MASKED_INPUT] == 4
    # Execute: the round's own deadline passes (the coordinator's clock jumps past it)
    real = world.coordinator.clock
    world.coordinator.clock = lambda: real() + 3600.0
    late = world.post(devs[5], Stage.MASKED_INPUT, masked[devs[5].id])
    failed = _committed(world)
    # Assert: the late upload is refused with a reason, the round abandoned, the model intact
    _refused(late, 409, Reason.ROUND_CLOSED)
    assert failed["state"] == "abandoned" and failed["version_after"] is None
    assert failed["measurements"]["abort_reasons"] == ["group stopped in stage masked-input"]
    _refused(world.post(devs[6], Stage.MASKED_INPUT, masked[devs[6].id]), 409, Reason.ROUND_CLOSED)
    _refused(world.get(devs[0], Stage.MASKED_INPUT), 409, Reason.ROUND_CLOSED)
    params, version = _model(world)
    assert version == 0
    np.testing.assert_array_equal(params, params0)
