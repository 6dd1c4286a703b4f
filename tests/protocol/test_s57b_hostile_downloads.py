"""A device given hostile download bytes (docs/secure-aggregation.md, "What a device refuses":
"Each refusal raises a typed `SecAggError` subclass, and the device sends nothing more").

For each stage download (key directory, share delivery, unmask request) the honest bytes are
mutated, decoded with the device's limit (the plan's node count) and handed to the device's
state machine. Property: either a `SecAggError` (never another exception), after which the
device is still in its stage holding nothing from the refused copy and has released no share,
or an answer, as for a rewrite that still decodes and passes every check (TLS's job)."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from protocol.secagg import (
    KeyDirectory,
    SecAggClient,
    SecAggError,
    ShareDelivery,
    Stage,
    UnmaskRequest,
)

from .test_s49_secagg_refusals import L, N, _Round


@functools.cache
def _honest() -> tuple[_Round, UnmaskRequest]:
    """One honest round driven to its unmask request, every stage's downloads kept (the
    clients are copied before use, so the cached round is never changed)."""
    r = _Round()
    r.advertise()
    r.share_keys()
    return r, r.masked_input()


def _client_at(stage: Stage) -> SecAggClient:
    """A copy of node 0's state machine as it was when `stage`'s download arrived."""
    r, _ = _honest()
    c = copy.deepcopy(r.clients[0])
    state = c.state
    if stage == Stage.SHARE_KEYS:
        state.peer_keys = {}
    if stage != Stage.UNMASK:
        state.held_shares = {}
    state.stage = stage
    return c


def _download(stage: Stage) -> bytes:
    r, req = _honest()
    if stage == Stage.SHARE_KEYS:
        return r.directories[0].to_bytes()
    if stage == Stage.MASKED_INPUT:
        return r.deliveries[0].to_bytes()
    return req.to_bytes()


def _feed(stage: Stage) -> Callable[[SecAggClient, bytes], object]:
    if stage == Stage.SHARE_KEYS:
        return lambda c, b: c.share_keys(KeyDirectory.from_bytes(b, N))
    if stage == Stage.MASKED_INPUT:
        return lambda c, b: c.masked_input(ShareDelivery.from_bytes(b, N), np.zeros(L, np.uint64))
    return lambda c, b: c.unmask(UnmaskRequest.from_bytes(b, N))


@st.composite
def _mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """The honest bytes with a few bytes changed, cut, extended or spliced with a copy of a
    part of themselves (a repeated or moved entry)."""
    out = bytearray(valid)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "cut", "extend", "splice", "u32"]))
        at = draw(st.integers(0, max(0, len(out) - 1)))
        if op == "flip" and out:
            out[at] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del out[at : at + draw(st.integers(1, 80))]
        elif op == "extend":
            out[at:at] = draw(st.binary(min_size=1, max_size=80))
        elif op == "splice":
            size = draw(st.integers(1, 300))
            out[at:at] = out[draw(st.integers(0, len(out))) :][:size]
        else:  # a count, node or length field rewritten
            out[at : at + 4] = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "little")
    return bytes(out)


@pytest.mark.parametrize(
    "stage", [Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK], ids=lambda s: str(s)
)
@settings(max_examples=150)
@given(data=st.data())
def test_a_hostile_download_is_refused_by_type_and_releases_nothing(
    stage: Stage, data: st.DataObject
) -> None:
    # Prepare
    body = data.draw(_mutated(_download(stage)))
    client = _client_at(stage)
    # Execute
    try:
        _feed(stage)(client, body)
    except SecAggError as exc:
        event(type(exc).__name__)
        # Assert: still in the stage, nothing taken from the refused copy, nothing released
        assert client.stage == stage
        assert not client.state.released
        if stage == Stage.SHARE_KEYS:
            assert not client.state.peer_keys
        if stage == Stage.MASKED_INPUT:
            assert not client.state.held_shares
        return
    event("answered")
    assert client.stage != stage


@pytest.mark.parametrize(
    "stage", [Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK], ids=lambda s: str(s)
)
def test_the_honest_download_is_answered(stage: Stage) -> None:
    client = _client_at(stage)
    _feed(stage)(client, _download(stage))
    assert client.stage != stage
