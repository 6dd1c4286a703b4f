"""The conformance vectors of docs/test-vectors: rebuilt from the product code and compared with
the committed files byte for byte (a codec change that alters a byte fails here; rerun
`.venv/bin/python docs/test-vectors/make_vectors.py` only for an intended wire change), then
read back the way a port reads them: the decoders give the recorded values, the documented
quantization formula with the recorded uniforms gives the recorded codes, and every negative
vector is refused with the recorded error class."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import zstandard

from compression import (
    CodecConfig,
    CodecError,
    ErrorFeedback,
    ModelSpec,
    UpdateCodec,
    ZstdCodec,
    decode_snapshot,
    model_digest,
)
from protocol import auth
from protocol.messages import MessageError, apply_delta, unpack_chain
from tests.compression.test_golden import GOLDEN_RICE

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "docs" / "test-vectors"
ZSTD_LIBRARY = ".".join(map(str, zstandard.ZSTD_VERSION))
F32 = npt.NDArray[np.float32]


def _generator() -> ModuleType:
    path = VECTORS / "make_vectors.py"
    spec = importlib.util.spec_from_file_location("plume_make_vectors", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and functools look the module up by name
    spec.loader.exec_module(module)
    return module


GEN = _generator()


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text())
    return data


DOCS = {name: _load(name) for name in GEN.FILES}


def _f32(hex_text: str) -> F32:
    return np.frombuffer(bytes.fromhex(hex_text), dtype="<f4").astype(np.float32)


def _spec(entry: dict[str, Any]) -> ModelSpec:
    spec = ModelSpec.from_json(entry["tensors"])
    assert (spec.size, spec.fingerprint.hex()) == (entry["d"], entry["fingerprint_hex"])
    return spec


def _without_zstd_bytes(obj: Any) -> Any:
    """`obj` with every entry whose bytes come from the zstd library cut to its name."""
    if isinstance(obj, dict):
        if obj.get("zstd_bytes") is True:
            return {"name": obj.get("name"), "zstd_bytes": True}
        return {k: _without_zstd_bytes(v) for k, v in obj.items() if k != "zstd_library"}
    if isinstance(obj, list):
        return [_without_zstd_bytes(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------
# The committed files are what the product writes


@pytest.fixture(scope="module")
def built() -> dict[str, str]:
    texts: dict[str, str] = GEN.build()
    return texts


@pytest.mark.parametrize("name", GEN.FILES)
def test_committed_file_is_what_the_product_writes(name: str, built: dict[str, str]) -> None:
    # Prepare
    committed = (VECTORS / name).read_text()
    # Execute + Assert: byte for byte where the zstd library is the one that wrote the files;
    # elsewhere everything but the bytes zstd wrote (their decoded content is checked below)
    hint = f"docs/test-vectors/{name} differs from what the codec writes now"
    if json.loads(committed)["meta"]["zstd_library"] == ZSTD_LIBRARY:
        assert committed == built[name], hint
    else:
        got, want = json.loads(built[name]), json.loads(committed)
        assert _without_zstd_bytes(got) == _without_zstd_bytes(want), hint


def test_the_generator_is_deterministic(built: dict[str, str]) -> None:
    # Execute: a second build in the same process (cached builders cleared) and the first
    GEN.update_frames.cache_clear()
    GEN.chain_run.cache_clear()
    # Assert
    assert GEN.build() == built


def test_vectors_are_small_and_documented() -> None:
    sizes = {p.name: p.stat().st_size for p in VECTORS.glob("*.json")}
    assert set(sizes) == set(GEN.FILES)
    assert sum(sizes.values()) < 250_000, sizes
    readme = (VECTORS / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in GEN.FILES)
    wire = (ROOT / "docs" / "wire-format.md").read_text()
    assert "(test-vectors/README.md)" in wire
    # the count both documents give
    n = len(_load("negative.json")["vectors"])
    assert f"and {n} inputs every decoder must refuse" in wire
    assert f"| {n} malformed inputs" in readme


def test_worked_example_is_the_golden_frame() -> None:
    first = DOCS["update_frames.json"]["vectors"][0]
    assert first["name"] == "worked_example_rice_4bit"
    assert first["frame_hex"] == GOLDEN_RICE


# ---------------------------------------------------------------------------------------------
# Update frames, as a port reads them


def _frames() -> list[tuple[str, dict[str, Any], dict[str, Any], F32 | None]]:
    """(id, frame entry, spec entry, the float32 vector that was encoded, if recorded)."""
    out: list[tuple[str, dict[str, Any], dict[str, Any], F32 | None]] = []
    for v in DOCS["update_frames.json"]["vectors"]:
        out.append((v["name"], v, v["spec"], _f32(v["update_f32le_hex"])))
    for v in DOCS["error_feedback.json"]["vectors"]:
        for s in v["steps"]:
            out.append((f"{v['name']}_{s['step']}", s, v["spec"], _f32(s["encoded_sum_f32le_hex"])))
    for v in DOCS["delta_chain.json"]["vectors"]:
        for link in v["links"]:
            step = _f32(link["server_step_f32le_hex"])
            out.append((f"{v['name']}_{link['round']}", link, v["spec"], step))
    return out


FRAMES = _frames()
IDS = [f[0] for f in FRAMES]


@pytest.mark.parametrize(("name", "v", "spec_entry", "u"), FRAMES, ids=IDS)
def test_frame_decodes_to_the_recorded_update(
    name: str, v: dict[str, Any], spec_entry: dict[str, Any], u: F32 | None
) -> None:
    # Prepare
    spec = _spec(spec_entry)
    frame = bytes.fromhex(v["frame_hex"])
    h = v["header"]
    # Execute
    got = UpdateCodec(spec, CodecConfig.dense()).decode_frame(frame)
    # Assert: the header fields, the sections, the indices and the values bit for bit
    assert len(frame) == v["frame_bytes"] == 56 + h["payload_bytes"] + 4
    assert (got.header.size, got.header.nnz, got.header.bits) == (h["d"], h["k"], h["bits"])
    assert (got.header.index_coding, got.header.index_param) == (h["index_coding"],
                                                                  h["index_param"])  # fmt: skip
    assert (frame[25], frame[5], got.header.block) == (h["index_id"], h["flags"], h["block"])
    assert got.weight == h["weight"] == v["decoded"]["weight"]
    assert frame[-4:][::-1].hex() == h["crc32_hex"]
    assert bool(h["flags"]) == v["zstd_bytes"]
    sections = b"".join(bytes.fromhex(v["sections"][s]) for s in ("index_hex", "scales_hex",
                                                                   "values_hex"))  # fmt: skip
    payload = frame[56:-4]
    if h["flags"]:
        assert ZstdCodec().decompress(payload, len(sections)) == sections
    else:
        assert payload == sections
    assert got.update.indices.tolist() == v["decoded"]["indices"]
    values = _f32(v["decoded"]["values_f32le_hex"])
    assert got.update.values.tobytes() == values.tobytes()
    assert np.array_equal(np.array(v["decoded"]["values"], np.float32).view(np.uint32),
                          values.view(np.uint32))  # fmt: skip


def _unpack(data: bytes, k: int, bits: int) -> npt.NDArray[np.int64]:
    """k codes of `bits` bits, LSB first (docs/wire-format.md conventions)."""
    stream = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little").astype(np.int64)
    fields = stream[: k * bits].reshape(k, bits)
    weights: npt.NDArray[np.int64] = np.int64(1) << np.arange(bits, dtype=np.int64)
    out: npt.NDArray[np.int64] = fields @ weights
    return out


QUANTIZED = [f for f in FRAMES if f[1]["header"]["bits"] in (1, 2, 4, 8) and f[1]["header"]["k"]]


@pytest.mark.parametrize(("name", "v", "spec_entry", "u"), QUANTIZED, ids=[f[0] for f in QUANTIZED])
def test_recorded_uniforms_give_the_codes_by_the_documented_formula(
    name: str, v: dict[str, Any], spec_entry: dict[str, Any], u: F32 | None
) -> None:
    """What a port's encoder does with the vector's uniforms instead of numpy's generator:
    docs/wire-format.md 1.4, computed here from the JSON alone."""
    # Prepare
    assert u is not None
    h = v["header"]
    k, bits, block = h["k"], h["bits"], h["block"]
    vals = u[np.array(v["decoded"]["indices"], np.int64)]
    uni = np.array(v["uniforms"], np.float32)
    assert uni.shape == (k,)
    seed = v["rng_seed"]
    assert np.array_equal(np.random.default_rng(seed).random(k, dtype=np.float32), uni)
    scales = _f32(v["sections"]["scales_hex"])
    lo, hi = np.repeat(scales[0::2], block)[:k], np.repeat(scales[1::2], block)[:k]
    codes = _unpack(bytes.fromhex(v["sections"]["values_hex"]), k, bits)
    # Execute + Assert: scales, codes and decoded values
    starts = range(0, k, block)
    if bits == 1:
        # the sign, and each block's means of its negative values and of the others, summed in
        # float64 and rounded to float32 (a block of one sign: both scales its mean)
        for b, s in enumerate(starts):
            blk = vals[s : s + block].astype(np.float64)
            neg, rest = blk[blk < 0], blk[blk >= 0]
            means = [np.float32(g.sum() / g.size) if g.size else None for g in (neg, rest)]
            lo_b = means[0] if means[0] is not None else means[1]
            hi_b = means[1] if means[1] is not None else means[0]
            assert (scales[2 * b], scales[2 * b + 1]) == (lo_b, hi_b)
        want = (vals >= 0).astype(np.int64)
        decoded = np.where(codes == 1, hi, lo)
    else:
        mag = np.abs(vals)
        assert scales[0::2].tolist() == [mag[s : s + block].min() for s in starts]
        assert scales[1::2].tolist() == [mag[s : s + block].max() for s in starts]
        steps = (1 << (bits - 1)) - 1
        step = ((hi - lo) / np.float32(steps)).astype(np.float32)
        x = np.divide(mag - lo, step, out=np.zeros(k, np.float32), where=step > 0)
        j = np.clip(np.floor((x + uni).astype(np.float32)), 0, steps).astype(np.int64)
        want = (j << 1) | np.signbit(vals).astype(np.int64)
        m = ((codes >> 1).astype(np.float32) * step + lo).astype(np.float32)
        decoded = np.where(codes & 1 == 1, -m, m)
    assert codes.tolist() == want.tolist()
    assert decoded.astype(np.float32).tobytes() == bytes.fromhex(v["decoded"]["values_f32le_hex"])


UPDATES = DOCS["update_frames.json"]["vectors"]


@pytest.mark.parametrize("v", UPDATES, ids=[v["name"] for v in UPDATES])
def test_the_recorded_inputs_encode_to_the_recorded_frame(v: dict[str, Any]) -> None:
    # Prepare: everything from the JSON (the list and the hex spell the same float32 values)
    spec = _spec(v["spec"])
    u = _f32(v["update_f32le_hex"])
    assert np.array_equal(np.array(v["update"], np.float32).view(np.uint32), u.view(np.uint32))
    cfg = CodecConfig(**{**v["config"], "bits": v.get("written_with_bits", v["config"]["bits"])})
    rng = np.random.default_rng(v["rng_seed"])
    # Execute
    frame, _ = UpdateCodec(spec, cfg).encode(u, rng, weight=v["weight"])
    # Assert: the same bytes (zstd's where it is the library that wrote them), else the same
    # header, sections and values
    codec = UpdateCodec(spec, CodecConfig.dense())
    if not v["zstd_bytes"] or DOCS["update_frames.json"]["meta"]["zstd_library"] == ZSTD_LIBRARY:
        assert frame.hex() == v["frame_hex"]
    got = codec.decode_frame(frame)
    assert got.update.values.tobytes() == bytes.fromhex(v["decoded"]["values_f32le_hex"])
    assert got.update.indices.tolist() == v["decoded"]["indices"]


def test_error_feedback_steps_chain_their_residuals() -> None:
    (v,) = DOCS["error_feedback.json"]["vectors"]
    spec = _spec(v["spec"])
    held = np.zeros(spec.size, np.float32)
    for s in v["steps"]:
        assert _f32(s["residual_before_f32le_hex"]).tobytes() == held.tobytes()
        u = _f32(s["delta_f32le_hex"]) + held
        assert u.tobytes() == bytes.fromhex(s["encoded_sum_f32le_hex"])
        dense = np.zeros(spec.size, np.float32)
        dense[s["decoded"]["indices"]] = _f32(s["decoded"]["values_f32le_hex"])
        held = (u - dense).astype(np.float32)
        assert held.tobytes() == bytes.fromhex(s["residual_after_f32le_hex"])
        restored = ErrorFeedback.from_bytes(bytes.fromhex(s["residual_file_hex"]), spec.size)
        assert restored.residual.tobytes() == held.tobytes()


# ---------------------------------------------------------------------------------------------
# Snapshots, the delta chain, signing

SNAPSHOTS = DOCS["snapshots.json"]["vectors"]


@pytest.mark.parametrize("v", SNAPSHOTS, ids=[v["name"] for v in SNAPSHOTS])
def test_snapshot_decodes_to_its_digest(v: dict[str, Any]) -> None:
    spec = _spec(v["spec"])
    blob = bytes.fromhex(v["snapshot_hex"])
    decoded = decode_snapshot(blob, spec)
    assert decoded.tobytes() == bytes.fromhex(v["decoded_f32le_hex"])
    digest = hashlib.sha256(decoded.astype("<f4").tobytes()).hexdigest()
    assert digest == v["digest_hex"] == blob[24:56].hex()
    width = {"fp16": 2, "fp32": 4}[v["dtype"]]
    content = ZstdCodec().decompress(blob[56:], width * spec.size)
    assert content.hex() == v["payload_content_hex"]
    params = _f32(v["params_f32le_hex"])
    assert np.array_equal(params.astype("<f2" if width == 2 else "<f4").astype(np.float32),
                          decoded)  # fmt: skip


def test_delta_chain_rebuilds_each_version() -> None:
    (v,) = DOCS["delta_chain.json"]["vectors"]
    spec = _spec(v["spec"])
    frames = unpack_chain(bytes.fromhex(v["chain_hex"]), **v["sdk_caps"])
    assert [f.hex() for f in frames] == [link["frame_hex"] for link in v["links"]]
    held = _f32(v["base_model_f32le_hex"])
    assert model_digest(held).hex() == v["base_digest_hex"]
    codec = UpdateCodec(spec, CodecConfig.dense())
    for frame, link in zip(frames, v["links"], strict=True):
        held = apply_delta(held, codec.decode(frame))
        assert held.tobytes() == bytes.fromhex(link["model_after_f32le_hex"])
        assert model_digest(held).hex() == link["digest_after_hex"]
    assert model_digest(held).hex() == v["final_digest_hex"]
    assert [link["header"]["bits"] for link in v["links"]] == [16, 32]
    final = [s for s in SNAPSHOTS if s["name"] == "chain_v2_fp32"][0]
    assert final["digest_hex"] == v["final_digest_hex"]


SIGNING = DOCS["signing.json"]


@pytest.mark.parametrize("v", SIGNING["vectors"], ids=[v["name"] for v in SIGNING["vectors"]])
def test_signed_request_is_what_protocol_auth_signs(v: dict[str, Any]) -> None:
    # Prepare
    key = SIGNING["test_key"]
    private = bytes.fromhex(key["private_key_hex"])
    assert hashlib.sha256(key["label"].encode()).digest() == private
    public = auth.public_key_bytes(private)
    assert public.hex() == key["public_key_hex"]
    assert auth.device_id_for(public) == key["device_id"] == v["headers"]["x-plume-device"]
    body = bytes.fromhex(v["body_hex"])
    # Execute
    message = auth.signing_message(
        method=v["method"], target=v["target"], device_id=key["device_id"],
        round_id=v["round_id"], body_hash=hashlib.sha256(body).hexdigest(),
        timestamp_ms=v["timestamp_ms"], nonce=v["nonce"],
    )  # fmt: skip
    headers = auth.sign_request(
        private, method=v["method"], target=v["target"], round_id=v["round_id"], body=body,
        timestamp_ms=v["timestamp_ms"], nonce=v["nonce"],
    )  # fmt: skip
    # Assert
    assert message.decode() == v["message"] and message.hex() == v["message_hex"]
    assert message.split(b"\n")[5].decode() == v["body_sha256_hex"]
    assert {str(k): val for k, val in headers.items()} == v["headers"]
    signature = bytes.fromhex(v["signature_hex"])
    assert auth.verify(public, message, signature)
    fields = auth.fields_from_headers(v["headers"])
    assert (fields.signature, fields.nonce, fields.timestamp_ms) == (
        signature,
        v["nonce"],
        v["timestamp_ms"],
    )


def test_signing_negatives_are_refused() -> None:
    upload = [v for v in SIGNING["vectors"] if v["name"] == "upload"][0]
    public = bytes.fromhex(SIGNING["test_key"]["public_key_hex"])
    signature = bytes.fromhex(upload["signature_hex"])
    for n in SIGNING["negative"]:
        if "signature_header" in n:
            with pytest.raises(auth.AuthError):
                auth.decode_signature(n["signature_header"])
        else:
            assert auth.body_sha256(bytes.fromhex(n["body_hex"])) == n["body_sha256_hex"]
            lines = upload["message"].split("\n")
            lines[5] = n["body_sha256_hex"]
            assert not auth.verify(public, "\n".join(lines).encode(), signature)


# ---------------------------------------------------------------------------------------------
# Negative vectors

NEGATIVE = DOCS["negative.json"]
SPECS = {name: _spec(entry) for name, entry in NEGATIVE["meta"]["specs"].items()}


@pytest.mark.parametrize("v", NEGATIVE["vectors"], ids=[v["name"] for v in NEGATIVE["vectors"]])
def test_negative_vector_is_refused_with_its_error(v: dict[str, Any]) -> None:
    data = bytes.fromhex(v["input_hex"])
    with pytest.raises((CodecError, MessageError)) as info:
        if v["decoder"] == "update_frame":
            UpdateCodec(SPECS[v["spec"]], CodecConfig.dense()).decode_frame(data)
        elif v["decoder"] == "snapshot":
            decode_snapshot(data, SPECS[v["spec"]])
        elif v["decoder"] == "residual":
            ErrorFeedback.from_bytes(data, v["size"])
        else:
            assert v["decoder"] == "delta_chain"
            unpack_chain(data, **v["caps"])
    assert type(info.value).__name__ == v["error"], info.value


def test_negative_vectors_cover_every_error_class_and_check() -> None:
    errors = {v["error"] for v in NEGATIVE["vectors"]}
    # every CodecError subclass the frame decoder can raise, and the chain's MessageError
    assert errors >= {
        "SizeLimitExceeded", "TruncatedFrame", "BadMagic", "UnsupportedVersion",
        "HeaderTooLarge", "MalformedHeader", "ChecksumMismatch", "SpecMismatch",
        "DecompressionError", "TrailingBytes", "MalformedSection", "InvalidIndices",
        "NonFiniteValues", "MessageError",
    }  # fmt: skip
    checks = {v["check"] for v in NEGATIVE["vectors"] if v["decoder"] == "update_frame"}
    assert checks == set(range(1, 25))
