"""Property tests of the SecAgg+ stage decoders and of the server's stage intake on hostile bytes.

Every decoder must either return a message that re-encodes to exactly the bytes it was given,
or refuse with `MalformedMessage`; it must check each declared count and length before it
allocates, so the memory it takes is bounded by the bytes it received (never by what a header
declares). `SecureRound.receive` must refuse any body that is not a legal upload of the stage
with a `SecAggError` and change nothing.
"""

from __future__ import annotations

import copy
import struct
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.secure import BUNDLE_BYTES, SecureConfig, SecureCoordinator, SecureRound
from protocol.secagg import (
    AdvertiseKeys,
    KeyDirectory,
    MalformedMessage,
    MaskedInput,
    MessageKind,
    SecAggError,
    SecurePlan,
    ShareDelivery,
    ShareKeys,
    ShareKind,
    Stage,
    UnmaskRequest,
    UnmaskResponse,
)
from sdk.secure import SecureParticipant, SecureSession

N = 5
LENGTH, BITS = 40, 9  # a masked input of 40 elements at 9 bits
HEAD = struct.Struct("<4sBQ")

DECODERS: dict[MessageKind, Callable[[bytes], Any]] = {
    MessageKind.ADVERTISE_KEYS: AdvertiseKeys.from_bytes,
    MessageKind.KEY_DIRECTORY: lambda b: KeyDirectory.from_bytes(b, N),
    MessageKind.SHARE_KEYS: lambda b: ShareKeys.from_bytes(b, N),
    MessageKind.SHARE_DELIVERY: lambda b: ShareDelivery.from_bytes(b, N),
    MessageKind.MASKED_INPUT: lambda b: MaskedInput.from_bytes(b, LENGTH, BITS),
    MessageKind.UNMASK_REQUEST: lambda b: UnmaskRequest.from_bytes(b, N),
    MessageKind.UNMASK_RESPONSE: lambda b: UnmaskResponse.from_bytes(b, N),
}

VALID: dict[MessageKind, bytes] = {
    MessageKind.ADVERTISE_KEYS: AdvertiseKeys(7, 1, b"\x01" * 32, b"\x02" * 32).to_bytes(),
    MessageKind.KEY_DIRECTORY: KeyDirectory(
        7, ((0, b"\x01" * 32, b"\x02" * 32), (2, b"\x03" * 32, b"\x04" * 32))
    ).to_bytes(),
    MessageKind.SHARE_KEYS: ShareKeys(7, 1, ((0, b"\x05" * 198), (2, b"\x06" * 198))).to_bytes(),
    MessageKind.SHARE_DELIVERY: ShareDelivery(7, ((0, b"\x05" * 198),)).to_bytes(),
    MessageKind.MASKED_INPUT: MaskedInput(7, 1, LENGTH, BITS, b"\x09" * 45).to_bytes(),
    MessageKind.UNMASK_REQUEST: UnmaskRequest(7, (0, 1, 3), (2,)).to_bytes(),
    MessageKind.UNMASK_RESPONSE: UnmaskResponse(
        7, 1, ((0, ShareKind.SELF_MASK, b"\x07" * 79), (2, ShareKind.MASK_KEY, b"\x08" * 79))
    ).to_bytes(),
}

u32 = st.one_of(st.integers(0, 8), st.just(N), st.just(N + 1), st.integers(0, 2**32 - 1))


def _declared(kind: MessageKind) -> st.SearchStrategy[bytes]:
    """A header of `kind`, then u32 fields that declare counts and lengths (often huge), then a
    few bytes: what the decoder reads must be bounded by these bytes, not by the fields."""
    return st.builds(
        lambda rid, fields, tail: (
            HEAD.pack(b"PSA1", int(kind), rid)
            + b"".join(struct.pack("<I", f) for f in fields)
            + tail
        ),
        st.integers(0, 2**64 - 1),
        st.lists(u32, max_size=6),
        st.binary(max_size=64),
    )


def _mutated(valid: bytes) -> st.SearchStrategy[bytes]:
    flip = st.tuples(st.integers(0, len(valid) - 1), st.integers(1, 255)).map(
        lambda iv: valid[: iv[0]] + bytes([valid[iv[0]] ^ iv[1]]) + valid[iv[0] + 1 :]
    )
    return st.one_of(
        flip,
        st.integers(0, len(valid) - 1).map(lambda n: valid[:n]),
        st.binary(min_size=1, max_size=32).map(lambda tail: valid + tail),
        st.binary(max_size=300),
    )


def _decode_bounded(decode: Callable[[bytes], Any], data: bytes) -> Any:
    """Decode under tracemalloc; the peak must stay within a small multiple of the input."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        try:
            out = decode(data)
        finally:
            peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 16_384 + 8 * len(data), (peak, len(data))
    return out


@pytest.mark.parametrize("kind", list(DECODERS), ids=lambda k: k.name.lower())
@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_property_decoders_refuse_or_round_trip_within_bounded_memory(
    kind: MessageKind, data: st.DataObject
) -> None:
    # Prepare: a hostile body for this decoder
    body = data.draw(st.one_of(_declared(kind), _mutated(VALID[kind])))
    # Execute
    try:
        msg = _decode_bounded(DECODERS[kind], body)
    except MalformedMessage:
        return
    # Assert: anything accepted is canonical (it re-encodes to the very same bytes)
    assert msg.to_bytes() == body


@pytest.mark.parametrize("kind", list(DECODERS), ids=lambda k: k.name.lower())
def test_valid_messages_round_trip(kind: MessageKind) -> None:
    assert DECODERS[kind](VALID[kind]).to_bytes() == VALID[kind]


def test_a_huge_declared_count_is_refused_before_it_is_read() -> None:
    # Prepare: every count-bearing message declaring 2^32 - 1 entries in a 17-byte body
    for kind in (MessageKind.KEY_DIRECTORY, MessageKind.SHARE_DELIVERY):
        body = HEAD.pack(b"PSA1", int(kind), 1) + struct.pack("<I", 2**32 - 1)
        # Execute + Assert
        with pytest.raises(MalformedMessage, match="entries, limit 5"):
            _decode_bounded(DECODERS[kind], body)
    for kind in (MessageKind.SHARE_KEYS, MessageKind.UNMASK_RESPONSE):
        body = HEAD.pack(b"PSA1", int(kind), 1) + struct.pack("<II", 0, 2**32 - 1)
        with pytest.raises(MalformedMessage, match="entries, limit 5"):
            _decode_bounded(DECODERS[kind], body)
    blob = HEAD.pack(b"PSA1", MessageKind.SHARE_KEYS, 1) + struct.pack("<IIII", 0, 1, 0, 2**31)
    with pytest.raises(MalformedMessage, match="limit 1024"):
        _decode_bounded(DECODERS[MessageKind.SHARE_KEYS], blob)
    shape = MaskedInput(1, 0, 2**32 - 1, 64, b"").to_bytes()
    with pytest.raises(MalformedMessage, match="round expects 40 x 9"):
        _decode_bounded(DECODERS[MessageKind.MASKED_INPUT], shape)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_property_plan_decoder_bounded_by_the_device_model_size(data: st.DataObject) -> None:
    # Prepare: a real plan's bytes, mutated; the device holds a model of 3,000 values
    coord = SecureCoordinator(np.zeros(3000, np.float32), SecureConfig(coord_fraction=0.1))
    valid = coord.open_round([f"d{i}" for i in range(N)], 1).groups[0].plan.to_bytes()
    body = data.draw(_mutated(valid))
    # Execute: bounded by the device's own model size (k <= d), never by what the plan says
    try:
        tracemalloc.start()
        tracemalloc.reset_peak()
        try:
            plan = SecurePlan.from_bytes(body, 3000)
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    except SecAggError:
        return
    # Assert
    assert peak <= 1_000_000 and plan.to_bytes() == body


# -- the server's intake: SecureRound.receive ---------------------------------------------


def _round_at(stage: Stage) -> tuple[SecureRound, dict[str, SecureSession], dict[str, bytes]]:
    """An in-process secure round of five devices, driven honestly up to `stage` (open), with
    each device's honest upload of that stage."""
    d = 300
    coord = SecureCoordinator(np.zeros(d, np.float32), SecureConfig(coord_fraction=0.2))
    devs = [f"dev-{i}" for i in range(N)]
    sr = coord.open_round(devs, 3).groups[0]
    sessions = {
        dev: SecureParticipant(d).join(sr.plan_bytes, sr.digest, coord.params, sr.node_of(dev))
        for dev in devs
    }
    rng = np.random.default_rng(0)
    bodies = {dev: s.advertise() for dev, s in sessions.items()}
    for next_stage in (Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK):
        if stage == sr.stage:
            break
        for dev, body in bodies.items():
            sr.receive(sr.stage, dev, body)
        down = sr.close(sr.stage)
        if next_stage == Stage.SHARE_KEYS:
            bodies = {dev: sessions[dev].share_keys(down[dev]) for dev in devs}
        elif next_stage == Stage.MASKED_INPUT:
            ups = {dev: rng.normal(0, 0.01, d).astype(np.float32) for dev in devs}
            bodies = {dev: sessions[dev].masked_input(down[dev], ups[dev], 1, rng) for dev in devs}
        else:
            bodies = {dev: sessions[dev].unmask(down[dev]) for dev in devs}
    return sr, sessions, bodies


OPEN_STAGES = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK)
# One round open at each stage, built on first use and rebuilt after it accepts an upload.
ROUNDS: dict[Stage, tuple[SecureRound, dict[str, SecureSession], dict[str, bytes]]] = {}


def _state(sr: SecureRound) -> Any:
    st_ = sr.server.state
    return copy.deepcopy(
        (
            st_.stage, st_.keys, st_.outbox, st_.senders, st_.contributors, st_.responders,
            st_.shares, None if st_.masked_sum is None else st_.masked_sum.tobytes(),
            dict(sr.bytes_up),
        )
    )  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_property_refused_uploads_leave_the_round_unchanged(data: st.DataObject) -> None:
    # Prepare: a round open at some stage, a device, and a body that is not its honest upload
    stage = data.draw(st.sampled_from(OPEN_STAGES))
    if stage not in ROUNDS:
        ROUNDS[stage] = _round_at(stage)
    sr, _, bodies = ROUNDS[stage]
    dev = data.draw(st.sampled_from(sorted(bodies)))
    honest = bodies[dev]
    body = data.draw(_mutated(honest).filter(lambda b: b != honest))
    as_stage = data.draw(st.sampled_from([stage, *OPEN_STAGES]))
    before = _state(sr)
    # Execute
    try:
        sr.receive(as_stage, dev, body)
    except SecAggError:
        # Assert: refused with a typed error, nothing stored
        assert _state(sr) == before
        return
    # A mutation the server cannot tell from an honest upload (e.g. other bytes inside a
    # ciphertext or a masked vector) was accepted: it must be the same kind of message, of
    # the same layout, from the same node, and undo-able only by a fresh round.
    assert as_stage == stage and len(body) == len(honest)
    del ROUNDS[stage]


def test_share_keys_bundles_must_cover_every_live_neighbour_at_the_legal_length() -> None:
    # Prepare
    sr, _, bodies = _round_at(Stage.SHARE_KEYS)
    dev = sorted(bodies)[0]
    honest = ShareKeys.from_bytes(bodies[dev], N)
    cts = honest.ciphertexts
    cases = {
        "bytes, not 198": ((cts[0][0], cts[0][1] + b"\x00"), *cts[1:]),
        "it must send one to each": cts[1:],
        "must send one to each": (*cts, cts[0]),
    }
    for why, bad in cases.items():
        before = _state(sr)
        # Execute + Assert
        with pytest.raises(SecAggError, match=why):
            sr.receive(Stage.SHARE_KEYS, dev, ShareKeys(3, honest.node, bad).to_bytes())
        assert _state(sr) == before
    assert len(cts[0][1]) == BUNDLE_BYTES
    sr.receive(Stage.SHARE_KEYS, dev, bodies[dev])


def test_grouped_mode_refuses_shares_addressed_outside_the_senders_group() -> None:
    # Prepare: seven devices in groups of three and four; a device of the smaller group
    coord = SecureCoordinator(
        np.zeros(300, np.float32), SecureConfig(coord_fraction=0.2, group_size=3)
    )
    task = coord.open_round([f"dev-{i}" for i in range(7)], 5)
    small = min(task.groups, key=lambda g: g.plan.num_nodes)
    assert small.plan.num_nodes == 3
    parts = {d: SecureParticipant(300) for d in small.device_ids}
    sessions = {
        d: parts[d].join(small.plan_bytes, small.digest, coord.params, small.node_of(d))
        for d in small.device_ids
    }
    for d, s in sessions.items():
        small.receive(Stage.ADVERTISE_KEYS, d, s.advertise())
    directories = small.close(Stage.ADVERTISE_KEYS)
    dev = small.device_ids[0]
    honest = ShareKeys.from_bytes(sessions[dev].share_keys(directories[dev]), 3)
    # Execute + Assert: node 3 exists only in the other group; the upload is refused whole
    (first, ct), *rest = honest.ciphertexts
    for outside in (3, 2**32 - 1):
        bad = ShareKeys(5, honest.node, ((outside, ct), *rest)).to_bytes()
        before = _state(small)
        with pytest.raises(SecAggError, match="must send one to each"):
            small.receive(Stage.SHARE_KEYS, dev, bad)
        assert _state(small) == before
    other = max(task.groups, key=lambda g: g.plan.num_nodes).device_ids[0]
    with pytest.raises(SecAggError, match="not in this secure round"):
        small.receive(Stage.SHARE_KEYS, other, honest.to_bytes())
