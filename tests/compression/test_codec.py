"""UpdateCodec end to end: round trips, top-k semantics, reports, config validation."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from compression import CodecConfig, DecodeLimits, ErrorFeedback, ModelSpec, UpdateCodec
from compression._topk import exact_topk, sampled_topk, split_k

# Big enough for the prefilter and the sampled path (>= 65,536 scalars), small enough to be quick.
SPEC = ModelSpec.from_shapes(
    [
        ("conv.weight", (32, 1, 5, 5)),
        ("conv.bias", (32,)),
        ("fc.weight", (128, 784)),
        ("fc.bias", (128,)),
    ]
)
D = SPEC.size


@pytest.fixture(scope="module")
def update() -> np.ndarray:
    return (np.random.default_rng(0).standard_t(3, size=D) * 1e-3).astype(np.float32)


CONFIGS = [
    CodecConfig(0.01, 4),
    CodecConfig(0.01, 4, topk_mode="sampled"),
    CodecConfig(0.01, 4, scope="per_tensor"),
    CodecConfig(0.01, 4, topk_mode="sampled", scope="per_tensor"),
    CodecConfig(0.003, 1, block=64),
    CodecConfig(0.05, 2, index="bitmap"),
    CodecConfig(0.02, 8, index="ef"),
    CodecConfig(0.01, 4, index="rice", block=8),
    CodecConfig(0.3, 16),
    CodecConfig(0.6, 4),
    CodecConfig.dense(),
]


@pytest.mark.parametrize(
    "cfg", CONFIGS, ids=lambda c: f"{c.topk}-{c.bits}-{c.index}-{c.topk_mode}-{c.scope}"
)
def test_roundtrip_is_bit_identical_to_decode(cfg: CodecConfig, update: np.ndarray) -> None:
    # Prepare
    codec = UpdateCodec(SPEC, cfg)
    decoder = UpdateCodec(SPEC, CodecConfig(0.5, 8))  # another config: the frame says it all
    # Execute
    frame, dense, report = codec.roundtrip(update, np.random.default_rng(1), weight=12.0)
    got = decoder.decode_frame(frame)
    # Assert
    assert np.array_equal(got.update.to_dense(), dense)
    assert got.weight == 12.0
    got.update.validate()
    assert report.frame_bytes == len(frame) and report.dense_bytes == 4 * D
    assert report.nnz == got.update.nnz == got.header.nnz
    assert report.ratio == pytest.approx(4 * D / len(frame))
    assert report.index_coding == got.header.index_coding
    assert [s.name for s in report.stages] == [
        "topk",
        "quantize",
        f"index:{report.index_coding}",
        "zstd",
        "frame",
    ]
    assert report.stages[-1].bytes_out == len(frame)
    assert report.stage("index").bytes_out == got.header.index_bytes
    assert report.stage("zstd").bytes_out == got.header.payload_bytes
    # Same rng seed, same frame: encoding is deterministic
    again, _ = codec.encode(update, np.random.default_rng(1), weight=12.0)
    assert again == frame


def test_dense_fp32_is_lossless(update: np.ndarray) -> None:
    codec = UpdateCodec(SPEC, CodecConfig.dense())
    frame, report = codec.encode(update, np.random.default_rng(0))
    assert report.index_coding == "all"
    np.testing.assert_array_equal(codec.decode(frame).to_dense(), update)


def test_exact_topk_keeps_the_largest(update: np.ndarray) -> None:
    # Prepare
    cfg = CodecConfig(0.01, 32)
    k = cfg.k_for(D)
    # Execute
    sparse = UpdateCodec(SPEC, cfg).decode(
        UpdateCodec(SPEC, cfg).encode(update, np.random.default_rng(0))[0]
    )
    # Assert: exactly the k largest magnitudes (the draws have no ties), values lossless
    want = np.sort(np.argsort(-np.abs(update), kind="stable")[:k])
    np.testing.assert_array_equal(sparse.indices, want)
    np.testing.assert_array_equal(sparse.values, update[want])


@settings(derandomize=True, max_examples=40, deadline=None)
@given(n=st.integers(1, 200_000), frac=st.floats(0.0001, 1.0), seed=st.integers(0, 2**32 - 1))
def test_exact_topk_matches_argpartition(n: int, frac: float, seed: int) -> None:
    mag = np.abs(np.random.default_rng(seed).standard_normal(n)).astype(np.float32)
    k = max(1, min(n, round(frac * n)))
    got = exact_topk(mag, k)
    assert got.shape == (k,) and np.all(np.diff(got) > 0)
    kth = np.partition(mag, n - k)[n - k]
    assert mag[got].min() == kth


def test_sampled_topk_count_is_near_k() -> None:
    rng = np.random.default_rng(3)
    for dist in (rng.standard_normal(D), rng.standard_t(2, D), rng.exponential(size=D) ** 3):
        mag = np.abs(dist).astype(np.float32)
        for k in (70, 700, 7000):
            got = sampled_topk(mag, k, np.random.default_rng(5))
            assert 0.9 * k <= got.shape[0] <= k
            assert np.all(np.diff(got) > 0)
            # every kept magnitude is at least the exact k-th largest magnitude
            assert mag[got].min() >= np.partition(mag, D - k)[D - k]


def test_per_tensor_split(update: np.ndarray) -> None:
    # Prepare
    cfg = CodecConfig(0.01, 32, scope="per_tensor")
    ks = split_k(SPEC, cfg.k_for(D))
    # Execute
    sparse = UpdateCodec(SPEC, cfg).decode(
        UpdateCodec(SPEC, cfg).encode(update, np.random.default_rng(0))[0]
    )
    # Assert: k split by size, each tensor's share taken from inside it
    assert sum(ks) == cfg.k_for(D)
    for (start, stop), kt in zip(SPEC.boundaries(), ks, strict=True):
        assert np.count_nonzero((sparse.indices >= start) & (sparse.indices < stop)) == kt


def test_per_tensor_split_sends_every_tensor(update: np.ndarray) -> None:
    # conv.bias's proportional share of k = 1,013 is 0.32: it used to get 0 every round
    # (helper-276); now each tensor gets at least 1, taken from fc.weight's share.
    # Prepare
    cfg = CodecConfig(0.01, 32, scope="per_tensor")
    # Execute
    ks = split_k(SPEC, cfg.k_for(D))
    sparse = UpdateCodec(SPEC, cfg).decode(
        UpdateCodec(SPEC, cfg).encode(update, np.random.default_rng(0))[0]
    )
    # Assert
    assert ks == [8, 1, 1003, 1]  # was [8, 0, 1004, 1]
    for start, stop in SPEC.boundaries():
        assert np.count_nonzero((sparse.indices >= start) & (sparse.indices < stop)) >= 1


def test_zeros_are_not_sent() -> None:
    u = np.zeros(D, np.float32)
    u[[5, 77, 1000]] = [1.0, -2.0, 3.0]
    codec = UpdateCodec(SPEC, CodecConfig(0.01, 32))
    sparse = codec.decode(codec.encode(u, np.random.default_rng(0))[0])
    np.testing.assert_array_equal(sparse.indices, [5, 77, 1000])
    empty = codec.decode(codec.encode(np.zeros(D, np.float32), np.random.default_rng(0))[0])
    assert empty.nnz == 0


@settings(derandomize=True, max_examples=60, deadline=None)
@given(
    d=st.integers(1, 300),
    data=st.data(),
    topk=st.floats(0.01, 1.0),
    bits=st.sampled_from([1, 2, 4, 8, 16, 32]),
    index=st.sampled_from(["auto", "bitmap", "rice", "ef"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_small_models_round_trip(
    d: int, data: st.DataObject, topk: float, bits: int, index: str, seed: int
) -> None:
    spec = ModelSpec.from_shapes([("w", (d,))])
    u = data.draw(arrays(np.float32, d, elements=st.floats(-1000, 1000, allow_nan=False, width=32)))
    codec = UpdateCodec(spec, CodecConfig(topk, bits, block=8, index=index))
    frame, dense, _ = codec.roundtrip(u, np.random.default_rng(seed), weight=float(d))
    got = codec.decode_frame(frame)
    assert np.array_equal(got.update.to_dense(), dense)
    assert got.weight == float(d)
    if bits == 32:
        np.testing.assert_array_equal(got.update.values, u[got.update.indices])


def test_encode_refuses_bad_input() -> None:
    codec = UpdateCodec(SPEC, CodecConfig(0.01, 4))
    rng = np.random.default_rng(0)
    good = np.zeros(D, np.float32)
    with pytest.raises(ValueError, match="shape"):
        codec.encode(np.zeros(D + 1, np.float32), rng)
    with pytest.raises(ValueError, match="float32"):
        codec.encode(np.zeros(D, np.float64), rng)
    bad = good.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        codec.encode(bad, rng)
    for w in (-1.0, float("nan"), float("inf"), True, "3"):
        with pytest.raises(ValueError, match="weight"):
            codec.encode(good, rng, weight=w)  # type: ignore[arg-type]
    codec.encode(good, rng, weight=np.float32(3))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Generator"):
        codec.encode(good, np.random.RandomState(0))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"topk": 0.0, "bits": 4},
        {"topk": 1.5, "bits": 4},
        {"topk": float("nan"), "bits": 4},
        {"topk": 0.1, "bits": 3},
        {"topk": 0.1, "bits": True},
        {"topk": 0.1, "bits": 4, "block": 4},
        {"topk": 0.1, "bits": 4, "index": "huffman"},
        {"topk": 0.1, "bits": 4, "topk_mode": "approx"},
        {"topk": 0.1, "bits": 4, "scope": "layer"},
        {"topk": 0.1, "bits": 4, "zstd_level": 99},
    ],
)
def test_config_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        CodecConfig(**kwargs)  # type: ignore[arg-type]


def test_config_is_frozen_and_dense_is_fp32() -> None:
    cfg = CodecConfig.dense()
    assert (cfg.topk, cfg.bits) == (1.0, 32)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.bits = 4  # type: ignore[misc]
    with pytest.raises(ValueError):
        DecodeLimits(max_header_bytes=10)
    with pytest.raises(ValueError):
        DecodeLimits(zstd_max_window_log=40)


def test_one_codec_many_threads(update: np.ndarray) -> None:
    # zstd contexts are per thread: concurrent use of one codec gives the same frames.
    codec = UpdateCodec(SPEC, CodecConfig(0.05, 8))
    want = codec.encode(update, np.random.default_rng(9))[0]
    results: list[bool] = []

    def work() -> None:
        for _ in range(5):
            f = codec.encode(update, np.random.default_rng(9))[0]
            results.append(
                f == want and np.array_equal(codec.decode(f).indices, codec.decode(want).indices)
            )

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 20


def test_error_feedback_invariant_each_round(update: np.ndarray) -> None:
    # Prepare
    codec = UpdateCodec(SPEC, CodecConfig(0.01, 2, topk_mode="sampled"))
    ef = ErrorFeedback(D)
    rng = np.random.default_rng(4)
    sent = np.zeros(D, np.float64)
    total = np.zeros(D, np.float64)
    for r in range(5):
        delta = (update * (r + 1)).astype(np.float32)
        u = delta + ef.residual
        # Execute
        frame, _ = ef.step(delta, codec, rng, weight=2.0)
        # Assert: residual == u - decode(encode(u)), exactly, in float32
        decoded = codec.decode(frame).to_dense()
        assert np.array_equal(ef.residual, u - decoded)
        sent += decoded
        total += delta
    # what was sent plus what is held back is what was trained, up to float32 rounding
    np.testing.assert_allclose(sent + ef.residual, total, rtol=0, atol=1e-5 * np.abs(total).max())
