"""The update encoders refuse (ValueError naming both sizes) a frame above their own
`DecodeLimits.frame_cap`, which their decoder refuses at step 1, as `encode_snapshot` does;
before, `UpdateCodec(spec, CodecConfig(topk=1.0, bits=32), DecodeLimits(max_frame_bytes=CAP))`
wrote a 3,802-byte frame for d = 1000. A refused encode changes no error-feedback state."""

from __future__ import annotations

import re

import numpy as np
import pytest

from compression import (
    CodecConfig,
    DecodeLimits,
    ErrorFeedback,
    ModelSpec,
    SizeLimitExceeded,
    UpdateCodec,
)
from compression._batch import feedback_step_many
from sdk.device import UpdateEncoder

D = 1000
SPEC = ModelSpec.from_shapes([("w", (D,))])
DENSE = CodecConfig(topk=1.0, bits=32)
SPARSE = CodecConfig(topk=0.5, bits=8, block=64)  # ~750-byte frames here
CAP = 600  # below every frame of DENSE and SPARSE for these updates


def _updates(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)


def _refusal(total: int, cap: int) -> str:
    return re.escape(f"update frame of {total} bytes is above the cap of {cap} bytes")


@pytest.mark.parametrize("config", [DENSE, SPARSE])
def test_encode_and_roundtrip_refuse_a_frame_above_the_codec_cap(config: CodecConfig) -> None:
    # Prepare: the frame the default limits allow, and a codec capped below it.
    u = _updates(1)[0]
    frame, _ = UpdateCodec(SPEC, config).encode(u, np.random.default_rng(1))
    tight = UpdateCodec(SPEC, config, DecodeLimits(max_frame_bytes=CAP))
    assert len(frame) > CAP
    with pytest.raises(SizeLimitExceeded):  # its own decoder refuses those bytes
        tight.decode(frame)
    # Execute / Assert: the encoder refuses to write it, naming both sizes.
    with pytest.raises(ValueError, match=_refusal(len(frame), CAP)):
        tight.encode(u, np.random.default_rng(1))
    with pytest.raises(ValueError, match=_refusal(len(frame), CAP)):
        tight.roundtrip(u, np.random.default_rng(1))


def test_a_frame_exactly_at_the_cap_is_written_and_decoded() -> None:
    # Prepare
    u = _updates(1)[0]
    frame, _ = UpdateCodec(SPEC, SPARSE).encode(u, np.random.default_rng(1), weight=3.0)
    at = UpdateCodec(SPEC, SPARSE, DecodeLimits(max_frame_bytes=len(frame)))
    below = UpdateCodec(SPEC, SPARSE, DecodeLimits(max_frame_bytes=len(frame) - 1))
    # Execute / Assert: the same bytes at the cap (the limits change nothing else), decoded.
    got, _ = at.encode(u, np.random.default_rng(1), weight=3.0)
    assert got == frame and at.decode_frame(got).weight == 3.0
    assert at.encode_many(u[None], [np.random.default_rng(1)], [3.0]) == [frame]
    with pytest.raises(ValueError, match=_refusal(len(frame), len(frame) - 1)):
        below.encode(u, np.random.default_rng(1), weight=3.0)


@pytest.mark.parametrize(
    "config", [DENSE, SPARSE, CodecConfig(topk=0.5, bits=8, scope="per_tensor")]
)
def test_the_batch_encoders_refuse_as_the_single_one(config: CodecConfig) -> None:
    # Prepare: rows for the batch path and (row 1: an exact zero among the kept values) the
    # single encoder's path; per_tensor runs every row through the single encoder.
    arr = _updates(3)
    arr[1, np.argmax(np.abs(arr[1]))] = 0.0
    tight = UpdateCodec(SPEC, config, DecodeLimits(max_frame_bytes=CAP))
    # Execute / Assert
    for call in (tight.encode_many, tight.roundtrip_many):
        with pytest.raises(ValueError, match=f"is above the cap of {CAP} bytes"):
            call(arr, [np.random.default_rng(i) for i in range(3)], [1.0] * 3)


def test_the_batch_path_refuses_a_row_it_encodes_itself() -> None:
    # Prepare: every row on the vectorised path (no exact zeros), only one above the cap.
    config = CodecConfig(topk=0.1, bits=8, block=64)
    arr = np.zeros((4, D), dtype=np.float32)
    arr[:, : D // 10] = np.linspace(1.0, 2.0, D // 10, dtype=np.float32)  # compressible
    arr[2] = _updates(1, seed=5)[0]  # random values at random places: the longest frame
    rngs = [np.random.default_rng(i) for i in range(4)]
    sizes = [len(f) for f in UpdateCodec(SPEC, config).encode_many(arr, rngs, [1.0] * 4)]
    cap = sorted(sizes)[-2]
    assert max(sizes) == sizes[2] > cap  # row 2 alone is above it
    tight = UpdateCodec(SPEC, config, DecodeLimits(max_frame_bytes=cap))
    # Execute / Assert
    with pytest.raises(ValueError, match=_refusal(max(sizes), cap)):
        tight.encode_many(arr, [np.random.default_rng(i) for i in range(4)], [1.0] * 4)


@pytest.mark.parametrize("config", [DENSE, SPARSE])
def test_a_refused_error_feedback_step_keeps_the_residual(config: CodecConfig) -> None:
    # Prepare: a device with a residual from an earlier round.
    ef = ErrorFeedback(D)
    ef.step(_updates(1, 7)[0], UpdateCodec(SPEC, SPARSE), np.random.default_rng(0))
    before = ef.residual.copy()
    assert before.any()
    tight = UpdateCodec(SPEC, config, DecodeLimits(max_frame_bytes=CAP))
    # Execute
    with pytest.raises(ValueError, match=f"is above the cap of {CAP} bytes"):
        ef.step(_updates(1, 8)[0], tight, np.random.default_rng(1))
    # Assert: unchanged, and the next step under a roomy codec is the one it would have been.
    assert np.array_equal(ef.residual, before)
    twin = ErrorFeedback(D)
    twin.residual = before.copy()
    roomy = UpdateCodec(SPEC, config)
    a, _ = ef.step(_updates(1, 8)[0], roomy, np.random.default_rng(1))
    b, _ = twin.step(_updates(1, 8)[0], roomy, np.random.default_rng(1))
    assert a == b and np.array_equal(ef.residual, twin.residual)


@pytest.mark.parametrize("config", [DENSE, SPARSE])
def test_a_refused_batch_feedback_step_changes_no_feedback(config: CodecConfig) -> None:
    # Prepare: three devices with residuals.
    fbs = [ErrorFeedback(D) for _ in range(3)]
    for i, fb in enumerate(fbs):
        fb.residual = _updates(1, 20 + i)[0] * np.float32(0.01)
    before = [fb.residual.copy() for fb in fbs]
    tight = UpdateCodec(SPEC, config, DecodeLimits(max_frame_bytes=CAP))
    # Execute
    with pytest.raises(ValueError, match=f"is above the cap of {CAP} bytes"):
        feedback_step_many(
            fbs, _updates(3, 9), tight, [np.random.default_rng(i) for i in range(3)], [1.0] * 3
        )
    # Assert
    for fb, old in zip(fbs, before, strict=True):
        assert np.array_equal(fb.residual, old)


def test_the_sdk_encoder_keeps_its_state_when_its_codec_refuses() -> None:
    # Prepare: sdk's UpdateEncoder wraps ErrorFeedback.step; give it a codec with a tight cap
    # (it builds its own with the default limits, which fit every frame of index="auto").
    enc = UpdateEncoder(SPEC, SPARSE)
    enc.encode(_updates(1, 3)[0], np.random.default_rng(0), weight=1.0)
    pending_u = enc._pending_u
    residual = enc.feedback.residual.copy()
    enc.codec = UpdateCodec(SPEC, DENSE, DecodeLimits(max_frame_bytes=CAP))
    # Execute
    with pytest.raises(ValueError, match=f"is above the cap of {CAP} bytes"):
        enc.encode(_updates(1, 4)[0], np.random.default_rng(1), weight=1.0)
    # Assert: the residual and the outstanding upload's u are the ones before.
    assert np.array_equal(enc.feedback.residual, residual)
    assert enc._pending_u is pending_u
