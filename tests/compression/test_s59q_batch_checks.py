"""s59q mutation hunt: `compression._batch` input checks, each pinned on rows the batch path
encodes itself (an all-zero row goes to the single encoder, whose own checks hid theirs)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from compression import (
    CodecConfig,
    DecodedFrame,
    ErrorFeedback,
    ModelSpec,
    SizeLimitExceeded,
    UpdateCodec,
    feedback_step_many,
)
from compression._feedback import SUM_OVERFLOW

SPEC = ModelSpec.from_shapes([("w", (4, 4)), ("b", (4,))])  # d = 20


def _codec() -> UpdateCodec:
    return UpdateCodec(SPEC, CodecConfig(topk=0.5, bits=4))


def _rows(n: int, d: int = SPEC.size) -> np.ndarray:
    """float32[n, d], every value non-zero and distinct: every row takes the batch path."""
    return (np.arange(1, n * d + 1, dtype=np.float32) / 64).reshape(n, d)


def _rngs(n: int) -> list[np.random.Generator]:
    return [np.random.default_rng(i) for i in range(n)]


def test_the_fixture_rows_take_the_batch_path() -> None:
    # The tests below mean something only if these rows are encoded by the batch code: it
    # equals the single encoder on them.
    codec = _codec()
    frames = codec.encode_many(_rows(2), _rngs(2), [1.0, 2.0])
    single = [
        codec.encode(_rows(2)[i], rng, w)[0]
        for i, rng, w in zip(range(2), _rngs(2), [1.0, 2.0], strict=True)
    ]
    assert frames == single


@pytest.mark.parametrize("shape", [(2, 3), (2, 21), (2, 20, 1), (20,)])
def test_a_batch_of_the_wrong_shape_is_refused_by_name(shape: tuple[int, ...]) -> None:
    # Without the check a (2, 3) batch failed in numpy broadcasting ("operands could not be
    # broadcast together with shapes"), a message that only happened to say "shape".
    arr = np.ones(shape, dtype=np.float32)
    with pytest.raises(ValueError, match=r"^updates must have shape \(n, 20\), got "):
        _codec().encode_many(arr, _rngs(2), [1.0, 1.0])


def test_a_float64_batch_is_refused() -> None:
    # Without the check non-zero float64 rows were encoded (cast) instead of refused as by
    # `encode`.
    with pytest.raises(ValueError, match=r"^update must be float32, got float64$"):
        _codec().encode_many(_rows(2).astype(np.float64), _rngs(2), [1.0, 1.0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_value_in_a_batch_row_is_refused(bad: float) -> None:
    arr = _rows(2)
    arr[1, 3] = bad
    with pytest.raises(ValueError, match=r"^update contains NaN or Inf$"):
        _codec().encode_many(arr, _rngs(2), [1.0, 1.0])


def test_a_batch_rng_that_is_not_a_generator_is_a_type_error() -> None:
    # Without the check it failed later as an AttributeError ('int' has no 'random').
    rngs: list[object] = [np.random.default_rng(0), 7]
    with pytest.raises(TypeError, match=r"^rng must be a numpy.random.Generator, got int$"):
        _codec().encode_many(_rows(2), rngs, [1.0, 1.0])  # type: ignore[arg-type]


@pytest.mark.parametrize("d", [(1 << 16) - 1, 1 << 16])
def test_the_batch_encoder_breaks_ties_as_the_single_one_at_the_prefilter_size(d: int) -> None:
    # From d = 2**16 `exact_topk` prefilters, and a tie at the k-th magnitude is broken
    # otherwise than by the batch's argpartition: such models must take the single encoder.
    # Small integers: many ties at the k-th magnitude of every row.
    spec = ModelSpec.from_shapes([("w", (d,))])
    codec = UpdateCodec(spec, CodecConfig(topk=0.01, bits=32))
    u = np.random.default_rng(1).integers(1, 4, size=(2, d)).astype(np.float32)
    many = codec.encode_many(u, _rngs(2), [1.0, 1.0])
    single = [codec.encode(u[i], rng, 1.0)[0] for i, rng in enumerate(_rngs(2))]
    assert many == single


def test_feedback_step_many_checks_the_deltas_and_each_feedback() -> None:
    codec = _codec()
    good = _rows(2)
    fbs = [ErrorFeedback(SPEC.size), ErrorFeedback(SPEC.size)]
    for bad in (good[:1], good[:, :19], good.astype(np.float64), good[0]):
        with pytest.raises(ValueError, match=r"^deltas must be float32\[2, 20\], got "):
            feedback_step_many(fbs, bad, codec, _rngs(2), [1.0, 1.0])
    other = [ErrorFeedback(SPEC.size), ErrorFeedback(21)]
    with pytest.raises(ValueError, match=r"^delta must be float32\[21\], got float32\[20\]$"):
        feedback_step_many(other, good, codec, _rngs(2), [1.0, 1.0])
    assert all(not fb.residual.any() for fb in fbs + other)


def test_feedback_step_many_refuses_a_sum_that_overflows_and_changes_no_feedback() -> None:
    codec = _codec()
    fbs = [ErrorFeedback(SPEC.size), ErrorFeedback(SPEC.size)]
    big = np.finfo(np.float32).max
    fbs[1].residual = np.full(SPEC.size, big, np.float32)
    deltas = _rows(2)
    deltas[1] = big
    with pytest.raises(ValueError, match=re.escape(SUM_OVERFLOW)):
        feedback_step_many(fbs, deltas, codec, _rngs(2), [1.0, 1.0])
    assert not fbs[0].residual.any()
    assert np.all(fbs[1].residual == big)
    # The same step, one feedback at a time, refuses the same way.
    with pytest.raises(ValueError, match=re.escape(SUM_OVERFLOW)):
        fbs[1].step(deltas[1], codec, np.random.default_rng(0), 1.0)


def test_a_row_that_zstd_does_not_shorten_is_stored_raw_by_the_batch_encoder() -> None:
    # fp32, every coordinate sent: 264 bytes of sections that zstd packs into exactly 264
    # (found by a search over seeds). "zstd only when strictly shorter": the frame is raw,
    # from the batch encoder as from the single one.
    spec = ModelSpec.from_shapes([("w", (7, 9)), ("b", (3,))])
    codec = UpdateCodec(spec, CodecConfig(topk=1.0, bits=32))
    u = (np.random.default_rng(4).standard_normal(66).astype(np.float32) + 1)[None, :]
    u[0, :5] = 1.5
    raw = u[0].astype("<f4").tobytes()
    assert len(codec.zstd.zstd.compress(raw)) == len(raw) == 264
    many = codec.encode_many(u, _rngs(1), [1.0])
    assert many == [codec.encode(u[0], np.random.default_rng(0), 1.0)[0]]
    assert many[0][5] == 0  # flags: no zstd
    assert codec.decode_frame(many[0]).header.payload_bytes == 264


def test_decode_many_refuses_a_memoryview_above_the_cap_by_its_size() -> None:
    # A bytes-like above the cap is not copied into the batch; the single decoder must still
    # see the caller's object (and refuse its size), not the empty stand-in.
    codec = _codec()
    frame = codec.encode_many(_rows(1), _rngs(1), [1.0])[0]
    huge = memoryview(b"PLMU" + bytes(1 << 16))
    got = codec.decode_many([huge, memoryview(frame)])  # type: ignore[list-item]
    with pytest.raises(SizeLimitExceeded) as err:
        codec.decode_frame(huge)  # type: ignore[arg-type]
    assert type(got[0]) is SizeLimitExceeded and str(got[0]) == str(err.value)
    assert isinstance(got[1], DecodedFrame)
