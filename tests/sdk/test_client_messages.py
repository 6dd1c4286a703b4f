"""The wire pieces the client shares with the coordinator (protocol.messages): JSON schemas,
the delta-chain container, wire-byte counting and the one delta-application rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import CodecConfig, ModelSpec, UpdateCodec
from protocol.messages import (
    Assignment,
    CheckInResponse,
    MessageError,
    TaskConfig,
    apply_delta,
    from_json,
    pack_chain,
    request_wire_bytes,
    response_wire_bytes,
    to_json,
    unpack_chain,
)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_chain_roundtrip(frames: list[bytes]) -> None:
    assert unpack_chain(pack_chain(frames), max_frames=8, max_frame_bytes=64) == frames


@settings(max_examples=80, deadline=None)
@given(st.binary(max_size=64))
def test_chain_refuses_garbage_without_crashing(data: bytes) -> None:
    try:
        frames = unpack_chain(data, max_frames=4, max_frame_bytes=32)
    except MessageError:
        return
    assert pack_chain(frames) == data


def test_chain_checks_declared_sizes_before_slicing() -> None:
    good = pack_chain([b"abc", b"de"])
    with pytest.raises(MessageError, match="2 frames exceeds the cap of 1"):
        unpack_chain(good, max_frames=1, max_frame_bytes=10)
    with pytest.raises(MessageError, match="exceeds the cap"):
        unpack_chain(good, max_frames=4, max_frame_bytes=2)
    with pytest.raises(MessageError, match="add up"):
        unpack_chain(good + b"x", max_frames=4, max_frame_bytes=10)
    with pytest.raises(MessageError, match="not a delta chain"):
        unpack_chain(b"XXXX" + good[4:], max_frames=4, max_frame_bytes=10)


def test_from_json_checks_types_and_ignores_unknown_keys() -> None:
    body = {"action": "wait", "retry_after_s": 3, "future_field": [1, 2]}
    parsed = from_json(CheckInResponse, body)
    assert parsed.retry_after_s == 3.0 and parsed.assignment is None
    with pytest.raises(MessageError, match="retry_after_s"):
        from_json(CheckInResponse, {"action": "wait", "retry_after_s": "soon"})
    with pytest.raises(MessageError, match="missing field 'action'"):
        from_json(CheckInResponse, {"retry_after_s": 1})
    with pytest.raises(MessageError, match="expected an integer"):
        from_json(Assignment, {**_assignment_json(), "round_id": True})


def _assignment_json() -> dict[str, object]:
    return {
        "task_id": 1, "round_id": 2, "base_version": 0, "model_name": "m",
        "spec": [{"name": "w", "shape": [2, 3]}], "codec": {"topk": 0.5, "bits": 8},
        "training": {}, "deadline_unix": 1.5, "model_path": "/m", "upload_path": "/u",
        "max_upload_bytes": 100, "seed": 0,
    }  # fmt: skip


def test_task_config_json_roundtrip_keeps_defaults() -> None:
    cfg = from_json(
        TaskConfig,
        {"name": "t", "model_name": "mlp", "spec": [{"name": "w", "shape": [3]}], "rounds": 2,
         "clients_per_round": 4},
    )  # fmt: skip
    assert cfg.over_selection == 1.3 and cfg.codec.topk == 0.01 and cfg.codec.bits == 4
    assert from_json(TaskConfig, to_json(cfg)) == cfg


def test_wire_bytes_follow_http11_framing() -> None:
    headers = [(b"host", b"a"), (b"content-length", b"3")]
    # "POST /x HTTP/1.1\r\n" + "host: a\r\n" + "content-length: 3\r\n" + "\r\n" + body
    assert request_wire_bytes("POST", "/x", headers, 3) == 18 + 9 + 19 + 2 + 3
    # "HTTP/1.1 200 OK\r\n" + header + "\r\n"
    assert response_wire_bytes(200, [(b"a", b"b")], 0) == 17 + 6 + 2


def test_apply_delta_is_exactly_the_decoded_frame_added() -> None:
    spec = ModelSpec.from_shapes([("w", (64,))])
    codec = UpdateCodec(spec, CodecConfig(topk=0.25, bits=4))
    rng = np.random.default_rng(0)
    params = rng.normal(size=64).astype(np.float32)
    params[3] = -0.0
    frame, _ = codec.encode(rng.normal(size=64).astype(np.float32), rng)
    update = codec.decode(frame)
    out = apply_delta(params, update)
    untouched = np.setdiff1d(np.arange(64), update.indices)
    assert np.array_equal(out[untouched].view(np.uint32), params[untouched].view(np.uint32))
    assert np.array_equal(out[update.indices], params[update.indices] + update.values)
    with pytest.raises(MessageError):
        apply_delta(params[:10], update)
