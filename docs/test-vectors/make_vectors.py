"""Write Plume's wire-format conformance vectors (docs/test-vectors/*.json) from the product code.

    .venv/bin/python docs/test-vectors/make_vectors.py            # (re)write the JSON files
    .venv/bin/python docs/test-vectors/make_vectors.py --check    # exit 1 if a file would change

Every expected byte comes from the product's own functions (`compression`, `protocol.auth`,
`protocol.messages`, `protocol.secagg`, `sdk.secure`, `coordinator.service.downlink`); every
input is fixed or drawn from a seeded `numpy.random.default_rng`, and nothing reads the clock.
The secure round of secagg.json draws its keys, seed, nonces and Shamir coefficients inside
`protocol.secagg`; `FixedDraws` fixes them while the generator runs (and only then). The
hostile inputs of negative.json are valid frames with one field or section rewritten here (and
the CRC-32 recomputed where the mutation is meant to get past it); the error each one must
raise is the one the reference decoder raises for it. `tests/compression/test_h281_vectors.py` rebuilds
everything and compares it with the committed files (and
`tests/protocol/test_s46_secagg_vectors.py` secagg.json). docs/test-vectors/README.md says how
a port uses them.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import struct
import sys
import types
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zstandard
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from compression import (  # noqa: E402
    CodecConfig,
    CodecError,
    DecodeLimits,
    ErrorFeedback,
    FrameHeader,
    ModelSpec,
    UpdateCodec,
    ZstdCodec,
    decode_snapshot,
    encode_snapshot,
    model_digest,
)
from compression._config import QUANTIZED_BITS  # noqa: E402
from compression._index import INDEX_BY_NAME  # noqa: E402
from compression._topk import split_k  # noqa: E402
from compression._wire import HEADER_LEN, pack_header  # noqa: E402
from coordinator.aggregators import AggregateOutput, FedAvg  # noqa: E402
from coordinator.engine import EngineConfig, RoundEngine  # noqa: E402
from coordinator.service.downlink import DOWNLINK_STREAM, DownlinkStrategy  # noqa: E402
from protocol import auth  # noqa: E402
from protocol.messages import MessageError, apply_delta, pack_chain, unpack_chain  # noqa: E402
from protocol.names import Header  # noqa: E402
from protocol.secagg import (  # noqa: E402
    AdvertiseKeys,
    CtrRandom,
    MaskedInput,
    SecAggServer,
    SecurePlan,
    ShareKeys,
    UnmaskResponse,
    agree,
    combine_shares,
    decrypt,
    dither_uniforms,
    expand_mask,
    hkdf,
    neighbours,
    pack_bits,
    pair_mask_seed,
    pair_mask_sign,
    prg_bytes,
    public_key_of,
    required_ring_bits,
    ring_mask,
    round_digest,
    round_to_levels,
    self_mask,
    share_associated_data,
)
from protocol.secagg import _client as sa_client  # noqa: E402
from protocol.secagg import _crypto as sa_crypto  # noqa: E402
from protocol.secagg import _shamir as sa_shamir  # noqa: E402
from sdk.secure import SecureParticipant, encode_for_plan  # noqa: E402

__all__ = ["OUT_DIR", "FILES", "build", "render", "main"]

OUT_DIR = Path(__file__).resolve().parent
FILES = (
    "update_frames.json",
    "error_feedback.json",
    "snapshots.json",
    "delta_chain.json",
    "signing.json",
    "negative.json",
    "secagg.json",
)
F32 = npt.NDArray[np.float32]
Doc = dict[str, Any]

# The model layouts the vectors use. S20 is the worked example of docs/wire-format.md 1.6.
S3 = ModelSpec.from_shapes([("w", (3,))])
S20 = ModelSpec.from_shapes([("w", (4, 4)), ("b", (4,))])
S100 = ModelSpec.from_shapes(
    [("conv.w", (4, 1, 3, 3)), ("conv.b", (4,)), ("fc.w", (5, 10)), ("fc.b", (10,))]
)
SPECS = {"S3": S3, "S20": S20, "S100": S100}
# A layout with an empty tensor, for per-tensor top-k (which counts the non-empty tensors only);
# the update frames use it, negative.json does not.
S10E = ModelSpec.from_shapes([("a", (3,)), ("empty", (0,)), ("b", (4,)), ("c", (3,))])
FRAME_SPECS = {**SPECS, "S10E": S10E}
WORKED_U = np.array(
    [0.5, -0.02, 0.01, -1.25, 0.0, 0.03, 0.75, -0.04, 0.02, -0.6,
     0.01, 0.0, 0.05, 0.9, -0.03, 0.02, 0.01, -0.01, 0.04, 0.3],
    dtype=np.float32,
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# JSON helpers


def f32_list(a: npt.ArrayLike) -> list[float]:
    """float32 values as JSON numbers: each is the float64 of the float32, printed exactly."""
    return [float(x) for x in np.asarray(a, dtype=np.float32)]


def f32_hex(a: npt.ArrayLike) -> str:
    return np.asarray(a, dtype="<f4").tobytes().hex()


def spec_json(spec: ModelSpec) -> Doc:
    name = next(n for n, s in FRAME_SPECS.items() if s == spec)
    return {
        "id": name,
        "tensors": spec.to_json(),
        "d": spec.size,
        "fingerprint_hex": spec.fingerprint.hex(),
    }


def config_json(config: CodecConfig) -> Doc:
    return dataclasses.asdict(config)


def header_json(h: FrameHeader, frame: bytes) -> Doc:
    """The header's fields under the names of docs/wire-format.md 1.1, and the CRC-32."""
    return {
        "version": h.version,
        "flags": h.flags,
        "fingerprint_hex": h.fingerprint.hex(),
        "d": h.size,
        "k": h.nnz,
        "bits": h.bits,
        "index_id": INDEX_BY_NAME[h.index_coding].wire_id,
        "index_coding": h.index_coding,
        "index_param": h.index_param,
        "block": h.block,
        "weight": h.weight,
        "index_bytes": h.index_bytes,
        "scale_bytes": h.scale_bytes,
        "value_bytes": h.value_bytes,
        "payload_bytes": h.payload_bytes,
        "crc32_hex": frame[-4:][::-1].hex(),
    }


def meta(kind: str, what: str) -> Doc:
    return {
        "kind": kind,
        "format": "plume-test-vectors/1",
        "wire_version": 1,
        "generator": "docs/test-vectors/make_vectors.py",
        "description": what,
        # Only the bytes of entries with "zstd_bytes": true depend on it (README.md, zstd).
        "zstd_library": ".".join(map(str, zstandard.ZSTD_VERSION)),
    }


def render(obj: Any, indent: int = 0) -> str:
    """JSON with one key per line and lists of scalars on one line (small, diff-friendly)."""
    pad = "  " * indent
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{pad}  {json.dumps(k)}: {render(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and any(isinstance(x, (dict, list)) for x in obj):
        items = [pad + "  " + render(v, indent + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(obj, allow_nan=False)


# ---------------------------------------------------------------------------------------------
# Update frames


def no_topk_tie(u: F32, spec: ModelSpec, config: CodecConfig) -> None:
    """The reference breaks a tie at the k-th magnitude arbitrarily: vectors have none."""
    k = config.k_for(spec.size)
    if k >= spec.size:
        return
    ranges = [(0, spec.size, k)]
    if config.scope == "per_tensor":
        ranges = [
            (e.offset, e.offset + e.size, kt)
            for e, kt in zip(spec.entries, split_k(spec, k, np.abs(u)), strict=True)
        ]
    for start, stop, kk in ranges:
        mag = np.sort(np.abs(u[start:stop]))[::-1]
        if 0 < kk < mag.shape[0] and mag[kk - 1] == mag[kk] and mag[kk] != 0:
            raise AssertionError(f"top-k tie at the boundary in [{start}, {stop})")


def uniforms_for(seed: Any, bits: int, k: int, rng_after: np.random.Generator) -> list[float]:
    """The U draws of the stochastic rounding: `k` float32 from a fresh generator of `seed`
    (exact top-k draws nothing, fp16 and fp32 draw nothing), checked against the state the
    encoder left its generator in."""
    fresh = np.random.default_rng(seed)
    draws = fresh.random(k, dtype=np.float32) if bits in QUANTIZED_BITS and k else np.zeros(0)
    if fresh.bit_generator.state != rng_after.bit_generator.state:
        raise AssertionError("the encoder drew something else than k float32 uniforms")
    return f32_list(draws)


def raw_sections(frame: bytes, h: FrameHeader) -> bytes:
    payload = frame[HEADER_LEN : HEADER_LEN + h.payload_bytes]
    if h.compressed:
        return ZstdCodec().decompress(payload, h.raw_bytes)
    return payload


def describe_frame(frame: bytes, spec: ModelSpec) -> Doc:
    """The expected bytes of a frame and what every decoder must get from it."""
    got = UpdateCodec(spec, CodecConfig.dense()).decode_frame(frame)
    h = got.header
    raw = raw_sections(frame, h)
    i, s = h.index_bytes, h.index_bytes + h.scale_bytes
    return {
        "frame_hex": frame.hex(),
        "frame_bytes": len(frame),
        "zstd_bytes": h.compressed,
        "header": header_json(h, frame),
        "sections": {
            "index_hex": raw[:i].hex(),
            "scales_hex": raw[i:s].hex(),
            "values_hex": raw[s:].hex(),
        },  # fmt: skip
        "decoded": {
            "weight": got.weight,
            "indices": [int(x) for x in got.update.indices],
            "values": f32_list(got.update.values),
            "values_f32le_hex": f32_hex(got.update.values),
        },
    }


def frame_vector(
    name: str,
    description: str,
    spec: ModelSpec,
    config: CodecConfig,
    u: F32,
    seed: int,
    weight: float,
) -> Doc:
    no_topk_tie(u, spec, config)
    rng = np.random.default_rng(seed)
    frame, report = UpdateCodec(spec, config).encode(u, rng, weight=weight)
    split: Doc = {}
    if config.scope == "per_tensor" and config.k_for(spec.size) < spec.size:
        # each tensor's share of k, in spec order (wire-format.md section 5's rule)
        split = {"per_tensor_k": split_k(spec, config.k_for(spec.size), np.abs(u))}
    return {
        "name": name,
        "description": description,
        "spec": spec_json(spec),
        "config": config_json(config),
        **split,
        "weight": weight,
        "rng_seed": seed,
        "update": f32_list(u),
        "update_f32le_hex": f32_hex(u),
        "uniforms": uniforms_for(seed, config.bits, report.nnz, rng),
        **describe_frame(frame, spec),
    }


def normal(seed: int, n: int, scale: float) -> F32:
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


def publish(
    strategy: DownlinkStrategy, engine: RoundEngine, round_key: int, step: F32
) -> tuple[bytes, str | None]:
    """One `DownlinkStrategy.publish` (the coordinator's own), as for round `round_key`."""
    strategy.round_key = round_key
    log = logging.getLogger("plume.coordinator")
    was, log.disabled = log.disabled, True  # the fallback's WARNING is expected here
    try:
        strategy.publish(engine, round_key, AggregateOutput(state=None, result=step))
    finally:
        log.disabled = was
    assert strategy.last_frame is not None
    return strategy.last_frame, strategy.last_fallback


def downlink(
    spec: ModelSpec, config: CodecConfig, seed: int
) -> tuple[DownlinkStrategy, RoundEngine]:
    strategy = DownlinkStrategy(spec, config, seed=seed, feedback=ErrorFeedback(spec.size))
    engine = RoundEngine(
        spec, np.zeros(spec.size, np.float32), FedAvg(), EngineConfig(1), strategy=strategy
    )
    return strategy, engine


FALLBACK_STEP = normal(31, 20, 0.05)
FALLBACK_STEP[[2, 11]] = np.float32(70000.0), np.float32(-1e5)  # beyond fp16's 65504


def fallback_vector() -> Doc:
    config = CodecConfig(topk=0.25, bits=16)
    strategy, engine = downlink(S20, config, seed=5)
    frame, why = publish(strategy, engine, 1, FALLBACK_STEP)
    if why is None:
        raise AssertionError("the fallback step was carried at 16 bits")
    vec = {
        "name": "fp32_fallback_downlink",
        "description": (
            "A server step the task's 16-bit downlink cannot carry (|v| >= 65520) is published "
            "with fp32 values at the same top-k (coordinator.service.downlink, weight 0.0). The "
            "frame is an ordinary bits=32 frame; a decoder reads the choice from the header."
        ),
        "spec": spec_json(S20),
        "config": config_json(config),
        "written_with_bits": 32,
        "weight": 0.0,
        "rng_seed": [5, 1, DOWNLINK_STREAM],
        "update": f32_list(FALLBACK_STEP),
        "update_f32le_hex": f32_hex(FALLBACK_STEP),
        "uniforms": [],
        **describe_frame(frame, S20),
    }
    no_topk_tie(FALLBACK_STEP, S20, config)
    return vec


def placed(seed: int, n: int, values: dict[int, float]) -> F32:
    """A seeded small update (|u| about 0.01) with `values` at their indices."""
    u = normal(seed, n, 0.01)
    for i, x in values.items():
        u[i] = np.float32(x)
    return u


def per_tensor_small_k() -> list[Doc]:
    """Per-tensor top-k at a k that leaves a proportional share at 0 (compression.split_k,
    wire-format.md section 5): below, at and just above the number of non-empty tensors.
    S100's tensors are conv.w [0, 36), conv.b [36, 40), fc.w [40, 90) and fc.b [90, 100)."""
    pt = functools.partial(CodecConfig, scope="per_tensor")
    return [
        frame_vector(
            "per_tensor_k_below_tensors", "k = 2 < 4 tensors: one coordinate each for the 2 "
            "tensors whose largest |u| is largest (fc.b's 0.5, conv.b's 0.3): per_tensor_k "
            "[0, 1, 0, 1], indices 38 and 93. Not global top-2 (93 and 97, both in fc.b), nor "
            "the 2 largest tensors (conv.w, fc.w).", S100, pt(topk=0.02, bits=32),
            placed(13, 100, {93: 0.5, 97: -0.45, 38: -0.3}), 34, 1.0,
        ),
        frame_vector(
            "per_tensor_k_below_tensors_tie", "k = 3 < 4 tensors, and conv.w's and fc.w's "
            "largest |u| are equal (0.25, at 10 and 60) for the third place: the earlier "
            "tensor, conv.w, gets it. per_tensor_k [1, 1, 0, 1], indices 10, 37 and 95.",
            S100, pt(topk=0.03, bits=8, block=8),
            placed(14, 100, {95: 0.5, 37: -0.4, 10: 0.25, 60: -0.25}), 35, 3.0,
        ),
        frame_vector(
            "per_tensor_k_equals_tensors", "k = 4 = the number of tensors: the proportional "
            "split is [2, 0, 2, 0]; conv.b, then fc.b, takes 1 from the largest share at that "
            "moment (conv.w, then fc.w: the earlier of equals), so per_tensor_k [1, 1, 1, 1].",
            S100, pt(topk=0.04, bits=4, block=8), normal(15, 100, 0.01), 36, 4.0,
        ),
        frame_vector(
            "per_tensor_k_above_tensors", "k = 5: the proportional split is [2, 0, 3, 0]; "
            "conv.b takes 1 from fc.w (3), then fc.b 1 from conv.w (2, the earlier of conv.w's "
            "and fc.w's 2), so per_tensor_k [1, 1, 2, 1].",
            S100, pt(topk=0.05, bits=4, block=8), normal(16, 100, 0.01), 37, 5.0,
        ),
        frame_vector(
            "per_tensor_empty_tensor", "A layout with an empty tensor (S10E: a [0, 3), empty, "
            "b [3, 7), c [7, 10)): k = 2 is below the 3 non-empty tensors, so c (0.5) and a "
            "(0.3) get one coordinate each and the empty tensor none: per_tensor_k "
            "[1, 0, 0, 1], indices 1 and 8. (The 2 largest tensors would be b and a.)",
            S10E, pt(topk=0.2, bits=16), placed(17, 10, {8: 0.5, 1: -0.3}), 38, 1.0,
        ),
    ]  # fmt: skip


# Found offline (a scan over the float32 neighbours of lo + (3 - U) * step for the uniforms of
# seed 46): x + U computed in float32 rounds up to 3, in float64 it stays below 3, so the code of
# index 14 is 3 by wire-format.md 1.4 and 2 for a port that computes in float64.
F32_ONLY_MAGNITUDE = 0.4757850766181946


def reading_gaps() -> list[Doc]:
    """Frames that pin rules a port could otherwise read another way and still pass every
    vector: round-half-to-even of topk * d (both directions), float32 quantization, and the
    Rice parameter range from the mean gap (not from d / k)."""
    return [
        frame_vector(
            "topk_round_half_down_to_even", "topk * d = 0.125 * 20 = 2.5 exactly: Python's "
            "round gives k = 2 (the even neighbour), not 3 (round half up).",
            S20, CodecConfig(topk=0.125, bits=32),
            placed(41, 20, {4: 0.5, 11: -0.4, 16: 0.3}), 0, 1.0,
        ),
        frame_vector(
            "topk_round_half_up_to_even", "topk * d = 0.5 * 3 = 1.5 exactly: Python's round "
            "gives k = 2 (the even neighbour), not 1 (round half down or truncation).",
            S3, CodecConfig(topk=0.5, bits=32), np.array([0.25, -0.5, 0.125], np.float32),
            0, 1.0,
        ),
        frame_vector(
            "quant_float32_not_float64", "4 bits, one block (lo 0.1, hi 1.0): for index 14 "
            "(|u| = 0.47578508, U = 0.07722676) x + U rounds to 3.0 in float32, so its code "
            "is 3; the same formula in float64 gives 2.9999996 and code 2. Compute in float32 "
            "exactly as wire-format.md 1.4 writes it.",
            S20, CodecConfig(topk=0.25, bits=4, block=8),
            placed(42, 20, {2: 1.0, 5: -0.1, 9: -0.5, 14: F32_ONLY_MAGNITUDE, 17: 0.3}),
            46, 2.0,
        ),
        frame_vector(
            "rice_r0_from_mean_gap", "index auto, k = 5 of d = 100 at 3, 5, 8, 10, 12: the "
            "mean gap 1.6 gives r0 = 0 and Rice r = 0 (2 bytes); r0 from d / k = 20 would be "
            "4, try r = 2 to 7 only and write a 3-byte Rice r = 2 section.",
            S100, CodecConfig(topk=0.05, bits=4, block=8),
            placed(43, 100, {3: 0.5, 5: -0.45, 8: 0.4, 10: -0.35, 12: 0.3}), 47, 1.0,
        ),
    ]  # fmt: skip


@functools.cache
def update_frames() -> Doc:
    u100 = normal(11, 100, 0.01)
    sparse = np.zeros(20, np.float32)
    sparse[[1, 7, 19]] = 0.25, -0.125, 2.0
    tiled = np.tile(np.array([0.25, -0.5, 0.0, 0.125], np.float32), 25)
    gappy = normal(12, 100, 0.01)
    gappy[40:60] = 0
    v: list[Doc] = [
        frame_vector(
            "worked_example_rice_4bit", "docs/wire-format.md 1.6, byte for byte.",
            S20, CodecConfig(topk=0.25, bits=4, block=8), WORKED_U, 7, 32.0,
        ),
        frame_vector(
            "dense_fp32", "Every coordinate as raw fp32 (index coding 0, no scales).",
            S20, CodecConfig.dense(), WORKED_U, 0, 1.0,
        ),
        frame_vector(
            "topk_1bit_auto", "1 bit: the sign, with per block of 8 the means of its negative "
            "values and of the others as scales; 3 blocks, the "
            "last one short.", S100, CodecConfig(topk=0.2, bits=1, block=8), u100, 21, 40.0,
        ),
        frame_vector(
            "topk_2bit_bitmap", "2 bits sign + magnitude, bitmap index.",
            S100, CodecConfig(topk=0.2, bits=2, block=8, index="bitmap"), u100, 22, 40.0,
        ),
        frame_vector(
            "topk_4bit_rice", "4 bits, Golomb-Rice index forced.",
            S100, CodecConfig(topk=0.1, bits=4, block=8, index="rice"), u100, 23, 600.0,
        ),
        frame_vector(
            "topk_4bit_auto", "4 bits, index chosen by the 'auto' rule of 1.3.",
            S100, CodecConfig(topk=0.2, bits=4, block=8), u100, 24, 600.0,
        ),
        frame_vector(
            "topk_8bit_ef", "8 bits, Elias-Fano index forced, blocks of 16.",
            S100, CodecConfig(topk=0.2, bits=8, block=16, index="ef"), u100, 25, 3.0,
        ),
        frame_vector(
            "topk_16bit", "fp16 values (round to nearest even), no scales, block 0.",
            S100, CodecConfig(topk=0.2, bits=16), u100, 26, 1.0,
        ),
        frame_vector(
            "topk_32bit", "fp32 values at top-k 5%.",
            S100, CodecConfig(topk=0.05, bits=32), u100, 27, 1.0,
        ),
        frame_vector(
            "per_tensor_4bit", "scope per_tensor: k split over the tensors by size.",
            S100, CodecConfig(topk=0.2, bits=4, block=8, scope="per_tensor"), u100, 28, 7.0,
        ),
        *per_tensor_small_k(),
        frame_vector(
            "zeros_dropped", "topk 0.25 asks for k = 5 but only 3 values are non-zero: exact "
            "zeros are dropped, so k = 3.", S20, CodecConfig(topk=0.25, bits=8, block=8),
            sparse, 29, 2.0,
        ),
        frame_vector(
            "all_zero", "An all-zero update is a frame with k = 0 and empty sections.",
            S20, CodecConfig(topk=0.25, bits=4, block=8), np.zeros(20, np.float32), 30, 5.0,
        ),
        frame_vector(
            "dense_fp32_zstd", "Dense fp32 of a repeating pattern: the zstd payload is kept "
            "(flag bit 0).", S100, CodecConfig.dense(), tiled, 0, 1.0,
        ),
        frame_vector(
            "dense_8bit_zstd", "topk 1.0 at 8 bits: index coding 0 with quantized values; zstd "
            "kept.", S100, CodecConfig(topk=1.0, bits=8, block=32), gappy, 33, 12.0,
        ),
        *reading_gaps(),
        fallback_vector(),
    ]  # fmt: skip
    return {"meta": meta("update_frames", "Update frames: inputs and exact bytes."), "vectors": v}


# ---------------------------------------------------------------------------------------------
# Error feedback


def error_feedback() -> Doc:
    config = CodecConfig(topk=0.1, bits=4, block=8)
    codec = UpdateCodec(S100, config)
    ef = ErrorFeedback(S100.size)
    steps: list[Doc] = []
    for i, (seed, weight) in enumerate(((41, 25.0), (42, 30.0))):
        delta = normal(100 + i, 100, 0.01)
        before = ef.residual.copy()
        u = (delta + before).astype(np.float32)
        no_topk_tie(u, S100, config)
        rng = np.random.default_rng(seed)
        frame, report = ef.step(delta, codec, rng, weight=weight)
        steps.append(
            {
                "step": i + 1,
                "delta": f32_list(delta),
                "delta_f32le_hex": f32_hex(delta),
                "residual_before_f32le_hex": f32_hex(before),
                "encoded_sum_f32le_hex": f32_hex(u),
                "weight": weight,
                "rng_seed": seed,
                "uniforms": uniforms_for(seed, config.bits, report.nnz, rng),
                **describe_frame(frame, S100),
                "residual_after": f32_list(ef.residual),
                "residual_after_f32le_hex": f32_hex(ef.residual),
                "residual_file_hex": ef.to_bytes().hex(),
            }
        )
    vec = {
        "name": "two_steps_4bit",
        "description": (
            "ErrorFeedback.step twice: each frame encodes u = delta + residual (float32 "
            "addition), and the residual becomes u - decoded(frame) (float32 subtraction). "
            "residual_file_hex is the device-local PLMR file (wire-format.md section 3)."
        ),
        "spec": spec_json(S100),
        "config": config_json(config),
        "steps": steps,
    }
    return {"meta": meta("error_feedback", "Error feedback over two steps."), "vectors": [vec]}


# ---------------------------------------------------------------------------------------------
# Snapshots and the delta chain

CHAIN_BASE = normal(51, 20, 0.5)
CHAIN_STEPS = (normal(52, 20, 0.01), FALLBACK_STEP)


@functools.cache
def chain_run() -> tuple[list[bytes], list[F32], list[str | None], CodecConfig]:
    """Two rounds published by the coordinator's DownlinkStrategy from CHAIN_BASE."""
    config = CodecConfig(topk=0.25, bits=16)
    strategy, engine = downlink(S20, config, seed=9)
    engine.params = CHAIN_BASE.copy()
    frames, models, why = [], [CHAIN_BASE.copy()], []
    for r, step in enumerate(CHAIN_STEPS, start=1):
        frame, fallback = publish(strategy, engine, r, step)
        frames.append(frame)
        models.append(engine.params.copy())
        why.append(fallback)
    return frames, models, why, config


def snapshot_vector(name: str, description: str, params: F32, dtype: str) -> Doc:
    spec = S20 if params.shape[0] == 20 else S3
    blob = encode_snapshot(params, spec, dtype)
    decoded = decode_snapshot(blob, spec)
    width = 2 if dtype == "fp16" else 4
    content = ZstdCodec().decompress(blob[56:], width * spec.size)
    return {
        "name": name,
        "description": description,
        "spec": spec_json(spec),
        "dtype": dtype,
        "zstd_level": 3,
        "params": f32_list(params),
        "params_f32le_hex": f32_hex(params),
        "snapshot_hex": blob.hex(),
        "zstd_bytes": True,
        "payload_content_hex": content.hex(),
        "digest_hex": model_digest(decoded).hex(),
        "decoded": f32_list(decoded),
        "decoded_f32le_hex": f32_hex(decoded),
    }


def snapshots() -> Doc:
    _frames, models, _why, _config = chain_run()
    v = [
        snapshot_vector(
            "doc_example_fp16", "docs/wire-format.md section 2, byte for byte.",
            np.array([1.0, -2.0, 0.5], np.float32), "fp16",
        ),
        snapshot_vector(
            "chain_base_fp32", "The delta chain's base model (version 0), fp32: exact.",
            models[0], "fp32",
        ),
        snapshot_vector(
            "chain_base_fp16", "The same model as fp16: the digest is of the fp16-rounded "
            "values, which differ from the model (x-plume-model-exact: 0).", models[0], "fp16",
        ),
        snapshot_vector(
            "chain_v2_fp32", "The model after the chain's two frames: its digest is the "
            "chain's final digest.", models[2], "fp32",
        ),
    ]  # fmt: skip
    return {"meta": meta("snapshots", "Model snapshots (PLMS) and their digests."), "vectors": v}


def delta_chain() -> Doc:
    frames, models, why, config = chain_run()
    body = pack_chain(frames)
    if unpack_chain(body, max_frames=1000, max_frame_bytes=4 * S20.size + 65536) != frames:
        raise AssertionError("the chain does not split back into its frames")
    links = []
    for r, (frame, step, reason) in enumerate(zip(frames, CHAIN_STEPS, why, strict=True), 1):
        links.append(
            {
                "round": r,
                "server_step_f32le_hex": f32_hex(step),
                "rng_seed": [9, r, DOWNLINK_STREAM],
                "fp32_fallback": reason is not None,
                **describe_frame(frame, S20),
                "model_after_f32le_hex": f32_hex(models[r]),
                "model_after": f32_list(models[r]),
                "digest_after_hex": model_digest(models[r]).hex(),
            }
        )
    # The device's side: apply each decoded frame with the one shared function.
    held = models[0]
    for frame in frames:
        held = apply_delta(held, UpdateCodec(S20, CodecConfig.dense()).decode(frame))
    if model_digest(held) != model_digest(models[2]):
        raise AssertionError("the device's rebuild differs from the server's model")
    vec = {
        "name": "two_links_fp16_then_fp32",
        "description": (
            "Versions 0 -> 1 -> 2 of a task with downlink topk 0.25, bits 16, published by the "
            "coordinator's DownlinkStrategy (server-side error feedback). Round 2's step holds "
            "values beyond fp16's range, so its frame carries fp32 values. A device holding "
            "version 0 applies each frame with model[i] += value (float32) and checks the "
            "final digest, as sdk/client.py does."
        ),
        "spec": spec_json(S20),
        "downlink_config": config_json(config),
        "base_model": f32_list(models[0]),
        "base_model_f32le_hex": f32_hex(models[0]),
        "base_digest_hex": model_digest(models[0]).hex(),
        "chain_hex": body.hex(),
        "zstd_bytes": any(
            UpdateCodec(S20, config).decode_frame(f).header.compressed for f in frames
        ),  # fmt: skip
        "sdk_caps": {"max_frames": 1000, "max_frame_bytes": 4 * S20.size + 65536},
        "links": links,
        "final_digest_hex": model_digest(models[2]).hex(),
    }
    return {"meta": meta("delta_chain", "A delta chain (PLCH) of two frames."), "vectors": [vec]}


# ---------------------------------------------------------------------------------------------
# Request signing

# TEST-ONLY Ed25519 key, public in this repository: never register it with a real coordinator.
TEST_KEY_LABEL = b"plume test vectors: PUBLIC TEST-ONLY Ed25519 key, never use it for a device"
TEST_PRIVATE_KEY = hashlib.sha256(TEST_KEY_LABEL).digest()


def signed_request(
    name: str, method: str, target: str, round_id: int, body: bytes, ts: int, nonce: str
) -> Doc:
    headers = auth.sign_request(
        TEST_PRIVATE_KEY, method=method, target=target, round_id=round_id, body=body,
        timestamp_ms=ts, nonce=nonce,
    )  # fmt: skip
    message = auth.signing_message(
        method=method, target=target, device_id=headers[Header.DEVICE], round_id=round_id,
        body_hash=auth.body_sha256(body), timestamp_ms=ts, nonce=nonce,
    )  # fmt: skip
    signature = auth.decode_signature(headers[Header.SIGNATURE])
    if not auth.verify(auth.public_key_bytes(TEST_PRIVATE_KEY), message, signature):
        raise AssertionError("the test signature does not verify")
    return {
        "name": name,
        "method": method,
        "target": target,
        "round_id": round_id,
        "timestamp_ms": ts,
        "nonce": nonce,
        "body_hex": body.hex(),
        "body_sha256_hex": auth.body_sha256(body),
        "message": message.decode("ascii"),
        "message_hex": message.hex(),
        "signature_hex": signature.hex(),
        "headers": {str(k): v for k, v in headers.items()},
    }


def signing() -> Doc:
    public = auth.public_key_bytes(TEST_PRIVATE_KEY)
    public_b64 = base64.urlsafe_b64encode(public).rstrip(b"=").decode()
    register_body = b'{"public_key":"' + public_b64.encode() + b'"}'
    upload_body = bytes.fromhex(update_frames()["vectors"][0]["frame_hex"])
    requests = [
        signed_request(
            "register", "POST", "/v1/devices", 0, register_body, 1764316800000,
            "00112233445566778899aabbccddeeff",
        ),
        signed_request(
            "model_download", "GET", "/v1/tasks/1/model?format=auto&dtype=fp32&have=3", 4, b"",
            1764316801234, "0123456789abcdef",
        ),
        signed_request(
            "upload", "POST", "/v1/rounds/4/updates", 4, upload_body, 1764316812345,
            "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100",
        ),
    ]  # fmt: skip
    # The canonical signature header's last base64url character has 4 zero spare bits; the
    # same 64 bytes with a spare bit set is another text for them, which verifiers refuse.
    good = requests[2]["headers"][Header.SIGNATURE]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    spare = good[:-1] + alphabet[alphabet.index(good[-1]) + 1]
    negatives = []
    for name, header in (("signature_spare_bit_set", spare), ("signature_85_chars", good[:-1])):
        try:
            auth.decode_signature(header)
        except auth.AuthError:
            pass
        else:
            raise AssertionError(f"{name} was accepted")
        negatives.append(
            {"name": name, "of": "upload", "signature_header": header, "error": "AuthError"}
        )
    changed = bytearray(upload_body)
    changed[-5] ^= 1
    negatives.append(
        {
            "name": "upload_body_changed",
            "of": "upload",
            "body_hex": bytes(changed).hex(),
            "body_sha256_hex": auth.body_sha256(bytes(changed)),
            "expect": "the upload's signature does not verify over the message of this body",
        }
    )
    key = {
        "WARNING": "PUBLIC TEST-ONLY KEY. It is in a public repository: never use it for a "
        "device or register it with a coordinator that is not a test.",
        "derivation": "SHA-256 of the ASCII label",
        "label": TEST_KEY_LABEL.decode("ascii"),
        "private_key_hex": TEST_PRIVATE_KEY.hex(),
        "public_key_hex": public.hex(),
        "public_key_b64url": public_b64,
        "device_id": auth.device_id_for(public),
    }
    return {
        "meta": meta("signing", "Ed25519 request signing (docs/http-api.md, Signing)."),
        "test_key": key,
        "vectors": requests,
        "negative": negatives,
    }


# ---------------------------------------------------------------------------------------------
# Negative vectors

# Header field offsets and struct codes (docs/wire-format.md 1.1).
FIELDS = {
    "magic": (0, "4s"), "version": (4, "B"), "flags": (5, "B"), "header_len": (6, "H"),
    "fingerprint": (8, "8s"), "d": (16, "I"), "k": (20, "I"), "bits": (24, "B"),
    "index_id": (25, "B"), "index_param": (26, "B"), "reserved": (27, "B"),
    "block": (28, "I"), "weight": (32, "d"), "index_bytes": (40, "I"),
    "scale_bytes": (44, "I"), "value_bytes": (48, "I"), "payload_bytes": (52, "I"),
}  # fmt: skip
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
F32_MAX = float(np.finfo(np.float32).max)


def reseal(body: bytes) -> bytes:
    return body + zlib.crc32(body).to_bytes(4, "little")


def patch(frame: bytes, crc: bool = True, **fields: object) -> bytes:
    """`frame` with header fields rewritten; the CRC-32 recomputed unless `crc` is False."""
    body = bytearray(frame[:-4])
    for name, value in fields.items():
        off, fmt = FIELDS[name]
        struct.pack_into("<" + fmt, body, off, value)
    return reseal(bytes(body)) if crc else bytes(body) + frame[-4:]


def rebuild(frame: bytes, index: bytes, scales: bytes, values: bytes, **fields: Any) -> bytes:
    """A raw-payload frame with the header of `frame` (and `fields`) and these sections."""
    h = UpdateCodec(S20, CodecConfig.dense()).decode_frame(frame).header
    index_id = frame[25]
    payload = index + scales + values
    h = dataclasses.replace(
        h, flags=0, index_bytes=len(index), scale_bytes=len(scales), value_bytes=len(values),
        payload_bytes=len(payload),
    )  # fmt: skip
    return patch(reseal(pack_header(h, index_id) + payload), **fields)


def with_payload(frame: bytes, payload: bytes, flags: int) -> bytes:
    """`frame`'s header with `flags` and `payload` (payload_bytes and the CRC-32 updated)."""
    head = bytearray(frame[:HEADER_LEN])
    head[5] = flags
    struct.pack_into("<I", head, 52, len(payload))
    return reseal(bytes(head) + payload)


def zstd_by_hand(
    content: bytes | None = None,
    *,
    rle: tuple[int, int] | None = None,
    declared: int | None = None,
    window_log: int | None = None,
    fhd_extra: int = 0,
) -> bytes:
    """A zstd frame written byte by byte (RFC 8878), independent of any zstd library: one raw
    block of `content`, or one RLE block `(byte, count)`; Frame_Content_Size `declared` (None:
    absent); single-segment unless `window_log` is given."""
    if window_log is None:
        assert declared is not None and declared < 256
        fhd, wd, fcs = 0x20, b"", bytes([declared])  # single segment, 1-byte content size
    else:
        wd = bytes([(window_log - 10) << 3])
        fhd, fcs = (0x00, b"") if declared is None else (0x80, declared.to_bytes(4, "little"))
    out = ZSTD_MAGIC + bytes([fhd | fhd_extra]) + wd + fcs
    if rle is not None:
        byte, count = rle
        return out + ((count << 3) | 0b011).to_bytes(3, "little") + bytes([byte])
    assert content is not None
    return out + ((len(content) << 3) | 1).to_bytes(3, "little") + content


def snapshot_by_hand(
    params: F32, spec: ModelSpec, *, dtype_id: int = 2, digest: bytes | None = None
) -> bytes:
    """A fp32 snapshot with a hand-written raw-block zstd payload (library independent)."""
    content = np.asarray(params, "<f4").tobytes()
    payload = zstd_by_hand(content, declared=len(content)) if len(content) < 256 else b""
    head = struct.pack(
        "<4sBBH8sII32s", b"PLMS", 1, dtype_id, 56, spec.fingerprint, spec.size, len(payload),
        digest if digest is not None else model_digest(params),
    )  # fmt: skip
    return head + payload


def residual_file(values: F32, crc: int | None = None) -> bytes:
    body = np.asarray(values, "<f4").tobytes()
    c = zlib.crc32(body) if crc is None else crc
    return struct.pack("<4sBBHII", b"PLMR", 1, 0, 16, values.shape[0], c) + body


def refusal(decoder: str, data: bytes, spec: ModelSpec | None, **extra: Any) -> str:
    """The class name of what the reference raises for `data` (it must raise)."""
    try:
        if decoder == "update_frame":
            assert spec is not None
            UpdateCodec(spec, CodecConfig.dense()).decode_frame(data)
        elif decoder == "snapshot":
            assert spec is not None
            decode_snapshot(data, spec)
        elif decoder == "residual":
            ErrorFeedback.from_bytes(data, extra["size"])
        elif decoder == "delta_chain":
            unpack_chain(data, **extra["caps"])
        else:
            raise AssertionError(decoder)
    except (CodecError, MessageError) as exc:
        return type(exc).__name__
    raise AssertionError(f"the reference accepted {extra['name']!r}")


def negative() -> Doc:
    enc = {
        name: UpdateCodec(S20, CodecConfig(topk=0.25, bits=4, block=8, index=name)).encode(
            WORKED_U, np.random.default_rng(7), weight=32.0
        )[0]
        for name in ("rice", "bitmap", "ef")
    }
    rice, bitmap, ef = enc["rice"], enc["bitmap"], enc["ef"]
    dense, _ = UpdateCodec(S20, CodecConfig.dense()).encode(WORKED_U, np.random.default_rng(0))
    fp16, _ = UpdateCodec(S20, CodecConfig(topk=0.25, bits=16)).encode(
        WORKED_U, np.random.default_rng(0)
    )
    for f in (rice, bitmap, ef, dense, fp16):
        assert f[5] == 0, "negative vectors start from raw-payload frames"
    idx = rice[56:58]  # Rice r = 0: indices 0, 3, 6, 9, 13
    scales, codes = rice[58:66], rice[66:69]
    f32 = dense[56:-4]
    n16 = 56 + int.from_bytes(fp16[40:44], "little")  # end of the fp16 frame's index
    ef_code = INDEX_BY_NAME["ef"]
    cap = DecodeLimits().frame_cap(S20)
    snap = snapshot_by_hand(CHAIN_BASE, S20)
    if not np.array_equal(decode_snapshot(snap, S20), CHAIN_BASE):
        raise AssertionError("the hand-made snapshot is not valid")
    nan_params = CHAIN_BASE.copy()
    nan_params[4] = np.nan
    chain = pack_chain([rice, dense])
    caps = {"max_frames": 1000, "max_frame_bytes": 4 * S20.size + 65536}
    rows: list[tuple[str, str, int | None, str, bytes, dict[str, Any]]] = [
        # (decoder, name, check step, reason, bytes, extra)
        ("update_frame", "frame_above_cap", 1, f"{cap + 1} bytes, above the default cap "
         f"4d + ceil(d/8) + 1024 = {cap}", rice + bytes(cap + 1 - len(rice)), {}),
        ("update_frame", "empty", 2, "no bytes", b"", {}),
        ("update_frame", "seven_bytes", 2, "shorter than the 8-byte prefix", rice[:7], {}),
        ("update_frame", "bad_magic", 3, "magic 'PLMX'", b"PLMX" + rice[4:], {}),
        ("update_frame", "snapshot_not_frame", 3, "a snapshot given to the frame decoder",
         snap, {}),
        ("update_frame", "version_2", 4, "version byte 2", patch(rice, version=2), {}),
        ("update_frame", "header_len_4097", 5, "header_len above max_header_bytes (4096)",
         patch(rice, header_len=4097), {}),
        ("update_frame", "header_len_64", 6, "header_len 64, not 56",
         patch(rice, header_len=64), {}),
        ("update_frame", "ends_in_header", 7, "40 bytes: cut inside the header", rice[:40], {}),
        ("update_frame", "truncated_by_one", 8, "last byte missing", rice[:-1], {}),
        ("update_frame", "payload_bytes_huge", 8, "payload_bytes 0xfffffff0: the frame is far "
         "shorter than declared", patch(rice, crc=False, payload_bytes=0xFFFFFFF0), {}),
        ("update_frame", "trailing_byte", 8, "one byte after the CRC", rice + b"\0", {}),
        ("update_frame", "crc_wrong", 9, "CRC-32 with one bit flipped",
         rice[:-4] + bytes([rice[-4] ^ 1]) + rice[-3:], {}),
        ("update_frame", "payload_bit_flipped", 9, "a payload bit flipped, CRC left as was",
         rice[:60] + bytes([rice[60] ^ 0x10]) + rice[61:], {}),
        ("update_frame", "unknown_flag", 10, "flags 0x02", patch(rice, flags=2), {}),
        ("update_frame", "reserved_byte", 10, "reserved byte 1", patch(rice, reserved=1), {}),
        ("update_frame", "other_spec", 11, "fingerprint of another layout",
         patch(rice, fingerprint=S100.fingerprint), {}),
        ("update_frame", "d_21", 11, "d = 21 for a spec of 20", patch(rice, d=21), {}),
        ("update_frame", "k_above_d", 12, "declared count k = 21 > d = 20", patch(rice, k=21), {}),
        ("update_frame", "k_huge", 12, "declared count k = 0xffffffff",
         patch(rice, k=0xFFFFFFFF), {}),
        ("update_frame", "bits_3", 13, "bits 3", patch(rice, bits=3), {}),
        ("update_frame", "index_id_4", 13, "index coding id 4", patch(rice, index_id=4), {}),
        ("update_frame", "rice_param_5", 13, "Rice r = 5: 2**5 > d = 20",
         patch(rice, index_param=5), {}),
        ("update_frame", "all_with_k_5", 13, "index coding 0 (all) with k = 5 != d",
         patch(rice, index_id=0), {}),
        ("update_frame", "block_4", 13, "block 4 < 8", patch(rice, block=4), {}),
        ("update_frame", "block_on_fp32", 13, "block 8 with bits 32", patch(dense, block=8), {}),
        ("update_frame", "weight_nan", 13, "weight NaN", patch(rice, weight=float("nan")), {}),
        ("update_frame", "weight_negative", 13, "weight -1.0", patch(rice, weight=-1.0), {}),
        ("update_frame", "weight_above_2_53", 13, "weight 2**53 + 2",
         patch(rice, weight=float(2**53 + 2)), {}),
        ("update_frame", "value_bytes_4", 14, "value_bytes 4 where k = 5 at 4 bits needs 3",
         patch(rice, value_bytes=4), {}),
        ("update_frame", "index_bytes_4", 14, "Rice section of 4 bytes; k = 5, d = 20, r = 0 "
         "allow 1 to 3", patch(rice, index_bytes=4), {}),
        ("update_frame", "raw_payload_mismatch", 15, "index_bytes 3 (legal) so the sections "
         "total 14, but the raw payload is 13 bytes", patch(rice, index_bytes=3), {}),
        ("update_frame", "zstd_flag_not_shorter", 15, "flag bit 0 set on a payload as long as "
         "the sections", patch(rice, flags=1), {}),
        ("update_frame", "zstd_no_magic", 16, "flag 1, payload of 10 bytes that is not zstd",
         with_payload(dense, bytes(range(10)), 1), {}),
        ("update_frame", "zstd_reserved_bit", 16, "zstd Frame_Header_Descriptor bit 3 set",
         with_payload(dense, zstd_by_hand(rle=(0, 80), declared=80, fhd_extra=0x08), 1), {}),
        ("update_frame", "zstd_no_content_size", 17, "zstd frame without Frame_Content_Size",
         with_payload(dense, zstd_by_hand(rle=(0, 80), window_log=17), 1), {}),
        ("update_frame", "zstd_declares_81", 18, "zstd content size 81 > the 80 section bytes",
         with_payload(dense, zstd_by_hand(rle=(0, 81), declared=81), 1), {}),
        ("update_frame", "zstd_declares_79", 18, "zstd content size 79 != the 80 section bytes",
         with_payload(dense, zstd_by_hand(rle=(0, 79), declared=79), 1), {}),
        ("update_frame", "zstd_window_2_25", 19, "zstd window 2**25 above the 2**24 cap",
         with_payload(dense, zstd_by_hand(rle=(0, 80), declared=80, window_log=25), 1), {}),
        ("update_frame", "zstd_lies_about_size", 20, "zstd declares 80 bytes, its block holds "
         "70", with_payload(dense, zstd_by_hand(rle=(0, 70), declared=80), 1), {}),
        ("update_frame", "zstd_trailing_byte", 21, "one byte after the zstd frame",
         with_payload(dense, zstd_by_hand(rle=(0, 80), declared=80) + b"\0", 1), {}),
        ("update_frame", "rice_padding_bits", 22, "a non-zero padding bit after the 5th unary "
         "one", rebuild(rice, bytes([idx[0], idx[1] | 0x80]), scales, codes), {}),
        ("update_frame", "bitmap_bit_at_d", 22, "bitmap bit 20 set (d = 20)",
         rebuild(bitmap, bitmap[56:58] + bytes([bitmap[58] | 0x10]), scales, codes), {}),
        ("update_frame", "bitmap_six_bits", 22, "bitmap with 6 bits set for k = 5",
         rebuild(bitmap, bytes([bitmap[56] | 0x02]) + bitmap[57:59], scales, codes), {}),
        ("update_frame", "ef_index_out_of_range", 22, "Elias-Fano (L = 2) indices 0, 3, 6, 9, "
         "20: index 20 >= d", rebuild(ef, ef_code.encode(np.array([0, 3, 6, 9, 20], np.int64), 20, 2), scales, codes,
                 index_param=2), {}),
        ("update_frame", "ef_not_increasing", 22, "Elias-Fano indices 0, 3, 6, 6, 13",
         rebuild(ef, ef_code.encode(np.array([0, 3, 6, 6, 13], np.int64), 20, ef[26]),
                 scales, codes), {}),
        ("update_frame", "rice_index_out_of_range", 22, "Rice gaps 0, 2, 2, 2, 10: the 5th "
         "index is 20 >= d", rebuild(rice, INDEX_BY_NAME["rice"].encode(
             np.array([0, 3, 6, 9, 20], np.int64), 20, 0), scales, codes), {}),
        ("update_frame", "scale_nan", 23, "block 0 hi = NaN",
         rebuild(rice, idx, scales[:4] + struct.pack("<f", float("nan")), codes), {}),
        ("update_frame", "scale_lo_above_hi", 23, "block 0 lo = 2.0 > hi = 1.25",
         rebuild(rice, idx, struct.pack("<f", 2.0) + scales[4:], codes), {}),
        ("update_frame", "scale_lo_negative", 23, "4-bit block 0 lo = -0.5",
         rebuild(rice, idx, struct.pack("<f", -0.5) + scales[4:], codes), {}),
        ("update_frame", "code_padding_nibble", 23, "the padding nibble after the 5th code is 1",
         rebuild(rice, idx, scales, codes[:2] + bytes([codes[2] | 0x10])), {}),
        ("update_frame", "dequantized_overflow", 24, "block (lo, hi) = (2e36, float32 max): "
         "level 7, f32(7) * step + lo, rounds to +inf", rebuild(
             rice, idx, struct.pack("<ff", 2e36, F32_MAX), bytes([0x0E, 0x0E, 0x0E])), {}),
        ("update_frame", "fp32_value_nan", 24, "dense fp32 value 3 is NaN",
         rebuild(dense, b"", b"", f32[:12] + struct.pack("<f", float("nan")) + f32[16:]), {}),
        ("update_frame", "fp16_value_inf", 24, "fp16 value 0 is +inf (0x7c00)",
         rebuild(fp16, fp16[56:n16], b"", b"\x00\x7c" + fp16[n16 + 2 : -4]), {}),
        ("snapshot", "snapshot_digest_wrong", None, "digest with one bit flipped",
         snapshot_by_hand(CHAIN_BASE, S20, digest=bytes([model_digest(CHAIN_BASE)[0] ^ 1])
                          + model_digest(CHAIN_BASE)[1:]), {}),
        ("snapshot", "snapshot_dtype_3", None, "dtype id 3",
         snapshot_by_hand(CHAIN_BASE, S20, dtype_id=3), {}),
        ("snapshot", "snapshot_trailing_byte", None, "one byte after the payload", snap + b"\0", {}),
        ("snapshot", "snapshot_other_spec", None, "the snapshot of S20 decoded for S100",
         snap, {"decode_spec": "S100"}),
        ("snapshot", "snapshot_nan", None, "a NaN parameter (digest of the NaN bytes)",
         snapshot_by_hand(nan_params, S20), {}),
        ("snapshot", "frame_not_snapshot", None, "an update frame given to the snapshot decoder",
         rice, {}),
        ("residual", "residual_crc_wrong", 10, "CRC-32 of the values off by one",
         residual_file(np.array([0.25, -1.0], np.float32), crc=0x05DEFB01), {"size": 2}),
        ("residual", "residual_other_size", 8, "a residual of 2 values read for size 3",
         residual_file(np.array([0.25, -1.0], np.float32)), {"size": 3}),
        ("delta_chain", "chain_seven_bytes", 1, "shorter than the 8-byte header", chain[:7], {}),
        ("delta_chain", "chain_bad_magic", 2, "magic 'PLCX'", b"PLCX" + chain[4:], {}),
        ("delta_chain", "chain_version_2", 3, "version 2", chain[:4] + b"\x02" + chain[5:], {}),
        ("delta_chain", "chain_reserved", 4, "reserved byte 1", chain[:5] + b"\x01" + chain[6:],
         {}),
        ("delta_chain", "chain_count_1001", 5, "count 1001 above the SDK's cap of 1000",
         chain[:6] + struct.pack("<H", 1001) + chain[8:], {}),
        ("delta_chain", "chain_table_truncated", 6, "count 2 but only one length",
         chain[:12], {}),
        ("delta_chain", "chain_frame_above_cap", 7, "a declared length of 65617 > 4d + 65536",
         chain[:8] + struct.pack("<I", 4 * 20 + 65537) + chain[12:], {}),
        ("delta_chain", "chain_trailing_byte", 8, "one byte after the last frame",
         chain + b"\0", {}),
        ("delta_chain", "chain_short_by_one", 8, "the last frame one byte short", chain[:-1], {}),
    ]  # fmt: skip
    vectors = []
    for decoder, name, step, reason, data, extra in rows:
        spec = (
            SPECS[extra.get("decode_spec", "S20")]
            if decoder in ("update_frame", "snapshot")
            else None
        )
        entry: Doc = {"name": name, "decoder": decoder}
        if spec is not None:
            entry["spec"] = next(n for n, s in SPECS.items() if s == spec)
        if decoder == "delta_chain":
            entry["caps"] = caps
        if decoder == "residual":
            entry["size"] = extra["size"]
        entry.update(
            {
                "check": step,
                "reason": reason,
                "input_hex": data.hex(),
                "error": refusal(decoder, data, spec, caps=caps, size=extra.get("size"), name=name),
            }
        )
        vectors.append(entry)
    return {
        "meta": {
            **meta("negative", "Inputs every decoder must refuse, and the reference's error."),
            "specs": {n: spec_json(s) for n, s in SPECS.items()},
        },
        "vectors": vectors,
    }


# ---------------------------------------------------------------------------------------------
# Secure aggregation (docs/secure-aggregation.md, "Protocol messages")

# One round of 6 nodes (a Harary graph of degree 4, threshold 3) through the product's device
# side (`sdk.secure`, which drives `protocol.secagg.SecAggClient`) and its server
# (`SecAggServer`). The file records node 2's view: its keys, every message it reads and
# writes, one share bundle in the clear, its Shamir shares and its masked input. Node 4 (one of
# node 2's neighbours) shares keys and then goes silent, so node 2's unmask answer holds a share
# of each kind.
SA_N, SA_DEGREE, SA_THRESHOLD, SA_NODE, SA_DROPPED = 6, 4, 3, 2, 4
SA_ROUND_ID = 0x0102030405
SA_D, SA_INDICES = 12, (1, 4, 5, 9)
SA_LABEL = "plume secagg test vectors"  # every fixed key, seed, nonce and coefficient comes from it
SA_LABELS = {
    # the domain-separation labels, as the product writes them (ASCII, most with a NUL after)
    "round_digest": b"plume-round-v1\0",
    "enc_key_info": b"plume-secagg-enc\0",
    "mask_seed_info": b"plume-secagg-mask\0",
    "share_aad": b"plume-secagg-share-v1\0",
    "prg_key_info": b"plume-prg-v1\0",
    "shamir_commit": b"plume-shamir-commit-v1\0",
    "shamir_check": b"plume-shamir-share-v1\0",
}


def sa_bytes(what: str, n: int = 32) -> bytes:
    """Fixed bytes named by a public label: the first `n` bytes of SHA-256(SA_LABEL: what)."""
    return hashlib.sha256(f"{SA_LABEL}: {what}".encode()).digest()[:n]


def sa_int(what: str) -> int:
    """A fixed element of Shamir's field GF(2^127 - 1), named by a public label."""
    return int.from_bytes(sa_bytes(what, 16), "little") % sa_shamir.PRIME


# What `FixedDraws` swaps: each module's own name for the randomness it draws
SA_PATCHED = (
    (sa_client, "generate_keypair"),
    (sa_client, "os"),
    (sa_crypto, "os"),
    (sa_shamir, "secrets"),
)


class FixedDraws:
    """GENERATOR ONLY. While `active`, the randomness the device side draws for itself comes
    from public labels instead of the OS, and every draw is logged under `who` (the node whose
    session is running): X25519 key pairs (`_client.generate_keypair`, enc then mask) and the
    self-mask seed (`_client.os.urandom`), the AES-GCM nonces (`_crypto.os.urandom`) and the
    Shamir coefficients (`_shamir.secrets.randbelow`). None of these functions takes the value
    as an argument. The module attributes are swapped for stand-ins (never the global `os` or
    `secrets`) and restored on exit. The recorded bytes are checked by the tests without this
    code: AES-GCM and HKDF from `cryptography`, shares from the recorded coefficients, Lagrange
    interpolation, hashlib (tests/protocol/test_s46_secagg_vectors.py)."""

    def __init__(self) -> None:
        self.who = -1
        self.log: dict[tuple[int, str], list[Any]] = {}

    def _draw(self, kind: str, value: Any) -> Any:
        self.log.setdefault((self.who, kind), []).append(value)
        return value

    def _keypair(self) -> tuple[bytes, bytes]:
        which = ("enc", "mask")[len(self.log.get((self.who, "keys"), [])) % 2]
        private = sa_bytes(f"node {self.who} {which} private key")
        self._draw("keys", private)
        return private, public_key_of(private)

    def _seed(self, n: int) -> bytes:
        return bytes(self._draw("seed", sa_bytes(f"node {self.who} self-mask seed", n)))

    def _nonce(self, n: int) -> bytes:
        count = len(self.log.get((self.who, "nonce"), []))
        return bytes(self._draw("nonce", sa_bytes(f"node {self.who} nonce {count}", n)))

    def _coefficient(self, bound: int) -> int:
        assert bound == sa_shamir.PRIME
        count = len(self.log.get((self.who, "coefficient"), []))
        return int(self._draw("coefficient", sa_int(f"node {self.who} coefficient {count}")))

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        stand_ins = (
            self._keypair,
            types.SimpleNamespace(urandom=self._seed),
            types.SimpleNamespace(urandom=self._nonce),
            types.SimpleNamespace(randbelow=self._coefficient),
        )
        saved = [vars(module)[name] for module, name in SA_PATCHED]
        for (module, name), value in zip(SA_PATCHED, stand_ins, strict=True):
            setattr(module, name, value)
        try:
            yield
        finally:
            for (module, name), value in zip(SA_PATCHED, saved, strict=True):
                setattr(module, name, value)


def sa_x25519(private: bytes, public: bytes) -> bytes:
    """The raw X25519 shared secret (the product only exposes it through HKDF, `agree`)."""
    return X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(public)
    )


def sa_field_hex(value: int) -> str:
    """A field element as 16 little-endian bytes, as a share writes its y values."""
    return value.to_bytes(16, "little").hex()


def sa_prg(seed: bytes, label: bytes, count: int, bits: int) -> Doc:
    word = 4 if bits <= 32 else 8
    return {
        "seed_hex": seed.hex(),
        "label_hex": label.hex(),
        "aes_key_hex": hkdf(seed, SA_LABELS["prg_key_info"] + label).hex(),
        "bits": bits,
        "count": count,
        "keystream_hex": prg_bytes(seed, count * word, label).hex(),
        "words": [int(w) for w in expand_mask(seed, count, bits, label)],
    }


def sa_plan() -> SecurePlan:
    return SecurePlan(
        round_id=SA_ROUND_ID, num_nodes=SA_N, degree=SA_DEGREE, threshold=SA_THRESHOLD,
        ring_bits=required_ring_bits(SA_N, 1, 8), value_bits=8, max_weight=1, model_size=SA_D,
        indices=np.array(SA_INDICES, np.int64), clip_norm=1.0, coord_bound=0.25,
        graph_seed=sa_bytes("graph seed"), rotation_seed=sa_bytes("rotation seed"),
        dither=True,
    )  # fmt: skip


def secagg() -> Doc:
    plan = sa_plan()
    plan_bytes = plan.to_bytes()
    model = normal(46, SA_D, 0.1)
    digest = round_digest(model_digest(model), plan)
    params = plan.protocol_params(model_digest(model))
    if params.digest != digest or plan.dither is not True or plan.rotate or plan.sketch_bits:
        raise AssertionError("the secagg vectors need a dithered plan without rotation or sketch")
    updates = {i: normal(460 + i, SA_D, 0.1) for i in range(SA_N)}
    updates[SA_NODE][SA_INDICES[2]] = np.float32(0.3)  # beyond C' = 0.25: clipped to the top level
    draws = FixedDraws()
    sessions = {
        i: SecureParticipant(SA_D, CtrRandom(sa_bytes(f"node {i} noise"))).join(
            plan_bytes, digest, model, i
        )
        for i in range(SA_N)
    }
    server = SecAggServer(params)
    alive = [i for i in range(SA_N) if i != SA_DROPPED]
    with draws.active():
        adv = {}
        for i in range(SA_N):
            draws.who = i
            adv[i] = sessions[i].advertise()
            server.receive_advertise(AdvertiseKeys.from_bytes(adv[i]))
        directory = {i: m.to_bytes() for i, m in server.close_advertise().items()}
        shared = {}
        for i in range(SA_N):
            draws.who = i
            shared[i] = sessions[i].share_keys(directory[i])
            server.receive_share_keys(ShareKeys.from_bytes(shared[i], SA_N))
    delivery = {i: m.to_bytes() for i, m in server.close_share_keys().items()}
    masked = {}
    for i in alive:
        rng = np.random.default_rng(0)  # a dithered plan without noise draws nothing from it
        masked[i] = sessions[i].masked_input(delivery[i], updates[i], 1, rng)
        if rng.bit_generator.state != np.random.default_rng(0).bit_generator.state:
            raise AssertionError("the masked input drew from the device's generator")
        server.receive_masked_input(
            MaskedInput.from_bytes(masked[i], plan.vector_len, plan.ring_bits)
        )
    request = server.close_masked_input().to_bytes()
    answers = {}
    for i in alive:
        answers[i] = sessions[i].unmask(request)
        server.receive_unmask(UnmaskResponse.from_bytes(answers[i], SA_N))
    result = server.finish()

    # Node 2's view, recomputed from the functions that take every value as an argument; each
    # must give the bytes the state machine sent.
    me, keys = SA_NODE, draws.log[(SA_NODE, "keys")]
    enc_sk, mask_sk = keys[0], keys[1]
    (self_seed,) = draws.log[(me, "seed")]
    graph = neighbours(SA_N, SA_DEGREE, plan.graph_seed)
    mine = graph[me]
    pub = {i: AdvertiseKeys.from_bytes(adv[i]) for i in range(SA_N)}
    ring = ring_mask(plan.ring_bits)
    vector, _ = encode_for_plan(updates[me], plan, 1, np.random.default_rng(0), None, me)
    y = vector + self_mask(self_seed, plan.vector_len, plan.ring_bits)
    pairs = []
    for peer in mine:
        seed = pair_mask_seed(mask_sk, pub[peer].mask_public, digest)
        raw = sa_x25519(mask_sk, pub[peer].mask_public)
        if hkdf(raw, SA_LABELS["mask_seed_info"] + digest) != seed:
            raise AssertionError("pair_mask_seed is not HKDF(X25519, mask label || digest)")
        words = expand_mask(seed, plan.vector_len, plan.ring_bits, b"pair-mask")
        sign = pair_mask_sign(me, peer)
        y = y + words if sign > 0 else y - words
        pairs.append({
            "peer": peer, "sign": sign, "mask_shared_secret_hex": raw.hex(),
            "seed_hex": seed.hex(), "words": [int(w) for w in words],
        })  # fmt: skip
    y &= np.uint64(ring)
    packed = pack_bits(y, plan.ring_bits)
    mine_masked = MaskedInput(SA_ROUND_ID, me, plan.vector_len, plan.ring_bits, packed)
    if mine_masked.to_bytes() != masked[me]:
        raise AssertionError("the masked input is not the client's")
    expected = np.zeros(plan.vector_len, np.uint64)
    for i in alive:
        expected += encode_for_plan(updates[i], plan, 1, np.random.default_rng(0), None, i)[0]
    if not np.array_equal(result.total, expected & np.uint64(ring)):
        raise AssertionError("the server's unmasked sum is not the sum of the alive inputs")
    dither = dither_uniforms(plan, me, plan.k, b"values")
    # The values at S_r in level units, x = (clip(u, -C', C') + C') * ((2^b - 1) / (2 C')) in
    # float64 (protocol.secagg._encoding), which the quantizer rounds to floor(x + U)
    u_s = updates[me][plan.indices]
    if float(np.linalg.norm(u_s.astype(np.float64))) > plan.clip_norm:
        raise AssertionError("the recorded update must be inside the clip norm")
    levels, bound = (1 << plan.value_bits) - 1, plan.coord_bound
    x = (np.clip(u_s.astype(np.float64), -bound, bound) + bound) * (levels / (2.0 * bound))
    if not np.array_equal(round_to_levels(x, levels, np.random.default_rng(0), dither),
                          vector[: plan.k]):  # fmt: skip
        raise AssertionError("the level values do not round to the client's input")

    # One share bundle (to node 2's first neighbour), its key and its associated data
    dest = mine[0]
    cts = dict(ShareKeys.from_bytes(shared[me], SA_N).ciphertexts)
    enc_raw = sa_x25519(enc_sk, pub[dest].enc_public)
    enc_key = hkdf(enc_raw, SA_LABELS["enc_key_info"] + digest)
    if agree(enc_sk, pub[dest].enc_public, SA_LABELS["enc_key_info"] + digest) != enc_key:
        raise AssertionError("agree is not HKDF(X25519, info)")
    aad = share_associated_data(digest, SA_ROUND_ID, me, dest)
    plaintext = decrypt(enc_key, cts[dest], aad)
    # The Shamir shares node 2 dealt: it drew t - 1 coefficients per 15-byte chunk of its mask
    # private key (3 chunks), then as many for its self-mask seed, which are recorded
    drawn = [sa_field_hex(c) for c in draws.log[(me, "coefficient")]]
    per_chunk, per_secret = SA_THRESHOLD - 1, 3 * (SA_THRESHOLD - 1)
    if len(drawn) != 2 * per_secret:
        raise AssertionError(f"{len(drawn)} coefficients drawn for two 32-byte secrets")
    seed_coefficients = [
        drawn[per_secret + c : per_secret + c + per_chunk] for c in range(0, per_secret, per_chunk)
    ]
    seed_shares = []
    for holder in mine:
        blob = decrypt(
            hkdf(sa_x25519(enc_sk, pub[holder].enc_public), SA_LABELS["enc_key_info"] + digest),
            cts[holder], share_associated_data(digest, SA_ROUND_ID, me, holder),
        )  # fmt: skip
        seed_shares.append(blob[8 + 2 + 79 + 2 :])
    if combine_shares([seed_shares[i] for i in (0, 1, 3)]) != self_seed:
        raise AssertionError("the self-mask seed shares do not give the seed back")
    return {
        "meta": meta(
            "secagg",
            "Node 2's view of one secure round (SecAgg+) of 6 nodes, node 4 dropping.",
        ),
        "labels": {f"{name}_hex": label.hex() for name, label in SA_LABELS.items()},
        "prg": [
            sa_prg(sa_bytes("prg seed"), b"self-mask", 4, 24),
            sa_prg(sa_bytes("prg seed"), b"pair-mask", 3, 40),
        ],
        "model_f32le_hex": f32_hex(model),
        "model_digest_hex": model_digest(model).hex(),
        "plan": {
            "round_id": plan.round_id,
            "num_nodes": plan.num_nodes,
            "degree": plan.degree,
            "threshold": plan.threshold,
            "ring_bits": plan.ring_bits,
            "value_bits": plan.value_bits,
            "max_weight": plan.max_weight,
            "model_size": plan.model_size,
            "clip_norm": plan.clip_norm,
            "coord_bound": plan.coord_bound,
            "flags": plan.flags,
            "noise": int(plan.noise),
            "noise_variance": plan.noise_variance,
            "noise_headroom": plan.noise_headroom,
            "graph_seed_hex": plan.graph_seed.hex(),
            "rotation_seed_hex": plan.rotation_seed.hex(),
            "sketch_bits": plan.sketch_bits,
            "sketch_segments": [],
            "indices": list(SA_INDICES),
            "zstd_bytes": True,
            "plan_hex": plan_bytes.hex(),
        },  # fmt: skip
        "round_digest_hex": digest.hex(),
        "neighbours": [list(g) for g in graph],
        "device": {
            "node": me,
            "enc_private_hex": enc_sk.hex(),
            "enc_public_hex": pub[me].enc_public.hex(),
            "mask_private_hex": mask_sk.hex(),
            "mask_public_hex": pub[me].mask_public.hex(),
            "self_seed_hex": self_seed.hex(),
        },  # fmt: skip
        "dropped": [SA_DROPPED],
        "messages": {
            "advertise_keys_hex": adv[me].hex(),
            "key_directory_hex": directory[me].hex(),
            "share_keys_hex": shared[me].hex(),
            "share_delivery_hex": delivery[me].hex(),
            "masked_input_hex": masked[me].hex(),
            "unmask_request_hex": request.hex(),
            "unmask_response_hex": answers[me].hex(),
        },
        "bundle": {
            "dest": dest,
            "enc_shared_secret_hex": enc_raw.hex(),
            "enc_key_hex": enc_key.hex(),
            "nonce_hex": cts[dest][:12].hex(),
            "aad_hex": aad.hex(),
            "plaintext_hex": plaintext.hex(),
            "ciphertext_hex": cts[dest].hex(),
        },  # fmt: skip
        "shamir": {
            "threshold": SA_THRESHOLD,
            "holders": list(mine),
            "self_seed_coefficients_hex": seed_coefficients,
            "self_seed_shares_hex": [s.hex() for s in seed_shares],
        },
        "masked_input": {
            "values_f32le_hex": f32_hex(u_s),
            "levels_x": [float(v) for v in x],
            "weight": 1,
            "dither": [float(u) for u in dither],
            "vector": [int(v) for v in vector],
            "self_mask": [int(w) for w in self_mask(self_seed, plan.vector_len, plan.ring_bits)],
            "pair_masks": pairs,
            "masked": [int(v) for v in y],
        },
    }


# ---------------------------------------------------------------------------------------------

BUILDERS: dict[str, Callable[[], Doc]] = {
    "update_frames.json": update_frames,
    "error_feedback.json": error_feedback,
    "snapshots.json": snapshots,
    "delta_chain.json": delta_chain,
    "signing.json": signing,
    "negative.json": negative,
    "secagg.json": secagg,
}


def build() -> dict[str, str]:
    """File name -> the text the generator writes (the whole file, newline-terminated)."""
    return {name: render(BUILDERS[name]()) + "\n" for name in FILES}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a file would change")
    args = parser.parse_args(argv)
    stale = []
    for name, text in build().items():
        path = OUT_DIR / name
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text)
    total = sum((OUT_DIR / n).stat().st_size for n in FILES if (OUT_DIR / n).exists())
    verb = "differ" if args.check else "written"
    print(f"{len(stale)} of {len(FILES)} files {verb}: {stale or 'none'}; {total:,} bytes in all")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
