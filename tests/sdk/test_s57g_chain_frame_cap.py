"""docs/devices.md: "every frame of a delta chain at most the model's size plus 64 KiB, checked
from the chain's declared lengths before any is sliced", held against the client (the cap it
gives the chain's reader), not only against `unpack_chain` itself."""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import httpx
import numpy as np
import pytest

from compression import model_digest
from protocol.messages import pack_chain
from protocol.names import ModelEncoding
from sdk import Client
from sdk.client import ModelIntegrityError
from sdk.device_store import DeviceStore

from .test_client import SPEC, _assignment
from .test_review_downlink import _model_response, _serve, _snapshot_of

HELD = np.linspace(-1, 1, SPEC.size, dtype=np.float32)
FRAME_CAP = SPEC.dense_bytes + 64 * 1024  # the model's size plus 64 KiB


def _chain(body: bytes) -> httpx.Response:
    return _model_response(body, ModelEncoding.DELTA_CHAIN, model_digest(HELD).hex(), "4")


def _refusal(root: Path, body: bytes) -> ModelIntegrityError:
    """The client's refusal of the delta chain `body` as task 1's download (held at version
    3); the round and `fetch_current` hide it behind the snapshot they then ask for."""
    DeviceStore(root).save_model(1, HELD, 3, model_digest(HELD).hex(), True)
    with Client("http://coord", str(root), transport=httpx.MockTransport(_serve([]))) as c:
        with pytest.raises(ModelIntegrityError) as info:
            c._core.apply_model(1, SPEC, _chain(body))
    assert DeviceStore(root).load_model(1, SPEC.size) is None  # forgotten
    return info.value


def test_a_chain_frame_one_byte_over_the_cap_is_refused_for_its_size(tmp_path: Path) -> None:
    # Prepare: a chain of one frame of the model's size plus 64 KiB plus one byte (the body is
    # all there: well under the answer's cap of the model's size plus 1 MiB)
    over = pack_chain([bytes(FRAME_CAP + 1)])
    at = pack_chain([bytes(FRAME_CAP)])
    # Execute
    refused = _refusal(tmp_path / "over", over)
    other = _refusal(tmp_path / "at", at)
    # Assert: refused for the frame's size; a frame at the cap is read and refused for what it
    # holds, not for its size
    assert refused.reason == "bad_model"
    assert f"a chain frame exceeds the cap of {FRAME_CAP} bytes" in refused.detail
    assert other.reason == "bad_model" and "exceeds the cap" not in other.detail


def test_a_frame_declared_past_the_cap_is_refused_before_the_body_is_sliced(
    tmp_path: Path,
) -> None:
    # Prepare: a chain whose length table declares a 4 GiB frame, with 10 bytes after it
    real = pack_chain([bytes(10)])
    body = real[:8] + struct.pack("<I", 2**32 - 1) + real[12:]
    # Execute
    refused = _refusal(tmp_path, body)
    # Assert: the declared length is what is refused (not the body's sum, checked after it)
    assert f"a chain frame exceeds the cap of {FRAME_CAP} bytes" in refused.detail


@pytest.mark.parametrize("via", ["fetch_current", "fetch_model"])
def test_an_over_cap_chain_is_asked_for_again_as_a_snapshot(tmp_path: Path, via: str) -> None:
    # Prepare: task 1 held at version 3; the server answers the chain asked for with one
    # whose frame is over the cap, then the snapshot asked for with the real model (its layout
    # known to be SPEC's, so fetch_current asks from it too)
    store = DeviceStore(tmp_path)
    store.save_model(1, HELD, 3, model_digest(HELD).hex(), True, SPEC.fingerprint)
    new = HELD + np.float32(0.5)
    haves: list[str | None] = []
    replies = [_chain(pack_chain([bytes(FRAME_CAP + 1)])), _snapshot_of(new, 4)]
    transport = httpx.MockTransport(_serve(replies, haves))
    # Execute
    with Client("http://coord", str(tmp_path), transport=transport, retries=0) as c:
        if via == "fetch_current":
            got = c.fetch_current(1, SPEC)[0]
        else:  # a round's download: base_version 4, so the held version 3 is a chain's base
            got = c.fetch_model(dataclasses.replace(_assignment(), base_version=4))[0]
    # Assert: the chain (with have=3) refused, the snapshot (no have=) taken and held
    assert haves == ["3", None]
    assert np.array_equal(got, new)
    held = DeviceStore(tmp_path).load_model(1, SPEC.size)
    assert held is not None and held[1] == 4
