"""Adversarial review of the device's downlink: what a malicious or buggy server can send."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compression import CodecConfig, UpdateCodec, encode_snapshot, model_digest
from protocol.messages import TensorShape, pack_chain
from protocol.names import Header, ModelEncoding
from sdk import Client
from sdk.client import ClientError, ModelIntegrityError
from sdk.device_store import DeviceStore

from .test_client import SPEC, _assignment  # SPEC: d = 36

F32_MAX = float(np.finfo(np.float32).max)

Handler = Callable[[httpx.Request], httpx.Response]


def _model_response(body: bytes, encoding: str, digest: str, version: str) -> httpx.Response:
    return httpx.Response(
        200,
        content=body,
        headers={
            str(Header.MODEL_ENCODING): encoding,
            str(Header.MODEL_DIGEST): digest,
            str(Header.MODEL_VERSION): version,
            str(Header.MODEL_EXACT): "1",
        },
    )


def _serve(responses: list[httpx.Response], haves: list[str | None] | None = None) -> Handler:
    """A server that answers the model downloads in order (recording each request's `have=`
    in `haves`, None for a snapshot asked for)."""

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/tasks/1/model"
        if haves is not None:
            haves.append(request.url.params.get("have"))
        return responses.pop(0)

    return handler


def _snapshot_of(params: np.ndarray, version: int = 1) -> httpx.Response:
    body = encode_snapshot(params, SPEC, dtype="fp32")
    return _model_response(body, ModelEncoding.SNAPSHOT, model_digest(params).hex(), str(version))


def test_a_delta_chain_that_overflows_the_model_is_refused_and_forgotten(tmp_path: Path) -> None:
    # Prepare: the server first sends a (finite) model holding float32's largest value, then
    # a delta chain adding it again: finite frames whose sum is inf. The server's digest
    # header matches the inf model, as a buggy or hostile server's would. A chain that fails
    # is asked for again once, in the same call, as a snapshot (no have=; as in a round since
    # helper-189): the server answers that with a finite model.
    base = np.zeros(SPEC.size, np.float32)
    base[0] = F32_MAX
    delta = np.zeros(SPEC.size, np.float32)
    delta[0] = F32_MAX
    frame, _ = UpdateCodec(SPEC, CodecConfig.dense()).encode(delta, np.random.default_rng(0))
    with np.errstate(over="ignore"):
        overflowed = base + delta
    chain_digest = model_digest(overflowed).hex()
    chain = _model_response(pack_chain([frame]), ModelEncoding.DELTA_CHAIN, chain_digest, "2")
    finite = np.linspace(-1, 1, SPEC.size, dtype=np.float32)
    haves: list[str | None] = []
    handler = _serve([_snapshot_of(base), chain, _snapshot_of(finite, 2)], haves)
    # Execute
    with Client("http://coord", str(tmp_path), transport=httpx.MockTransport(handler)) as c:
        params, version, _ = c.fetch_current(1, SPEC)
        got, got_version, encoding = c.fetch_current(1, SPEC)
    # Assert: the first model was kept; the chain was refused (the held model dropped, so the
    # second request of the call asked for a snapshot, without have=), and only the finite
    # snapshot reached the app and its directory: nothing non-finite
    assert version == 1 and params[0] == F32_MAX
    assert haves == [None, "1", None]
    assert got_version == 2 and encoding == ModelEncoding.SNAPSHOT
    assert np.array_equal(got, finite)
    held = DeviceStore(tmp_path).load_model(1, SPEC.size)
    assert held is not None and held[1] == 2 and np.array_equal(held[0], finite)
    # ... and the chain's own refusal (hidden by the snapshot that followed) is a bad model
    # that would be non-finite, the held model dropped
    store = DeviceStore(tmp_path / "again")
    store.save_model(1, base, 1, model_digest(base).hex(), True)
    with Client("http://coord", str(tmp_path / "again")) as c:
        again = _model_response(chain.content, ModelEncoding.DELTA_CHAIN, chain_digest, "2")
        with pytest.raises(ModelIntegrityError) as info:
            c._core.apply_model(1, SPEC, again)
    assert info.value.reason == "bad_model" and "finite" in info.value.detail
    assert DeviceStore(tmp_path / "again").load_model(1, SPEC.size) is None


def test_a_delta_chain_that_overflows_then_a_bad_snapshot_is_an_integrity_error(
    tmp_path: Path,
) -> None:
    # Prepare: as above, but the snapshot asked for after the refused chain carries the inf
    # model's digest too (a finite body that is not it)
    base = np.zeros(SPEC.size, np.float32)
    base[0] = F32_MAX
    delta = np.zeros(SPEC.size, np.float32)
    delta[0] = F32_MAX
    frame, _ = UpdateCodec(SPEC, CodecConfig.dense()).encode(delta, np.random.default_rng(0))
    with np.errstate(over="ignore"):
        overflowed = base + delta
    digest = model_digest(overflowed).hex()
    chain = _model_response(pack_chain([frame]), ModelEncoding.DELTA_CHAIN, digest, "2")
    liar = _model_response(_snapshot_of(base).content, ModelEncoding.SNAPSHOT, digest, "2")
    haves: list[str | None] = []
    handler = _serve([_snapshot_of(base), chain, liar], haves)
    # Execute
    with Client("http://coord", str(tmp_path), transport=httpx.MockTransport(handler)) as c:
        c.fetch_current(1, SPEC)
        with pytest.raises(ModelIntegrityError) as info:
            c.fetch_current(1, SPEC)
    # Assert: the snapshot's failure is raised, with no third request in the call, and no
    # model is held
    assert haves == [None, "1", None]
    assert info.value.reason == "digest_mismatch"
    assert DeviceStore(tmp_path).load_model(1, SPEC.size) is None


@pytest.mark.parametrize("version", ["abc", "", "1.5", "0x10"])
def test_a_model_version_that_is_not_an_integer_is_a_client_error(
    tmp_path: Path, version: str
) -> None:
    params = np.linspace(-1, 1, SPEC.size, dtype=np.float32)
    good = _snapshot_of(params)
    bad = _model_response(good.content, ModelEncoding.SNAPSHOT, model_digest(params).hex(), version)
    with Client("http://coord", str(tmp_path), transport=httpx.MockTransport(_serve([bad]))) as c:
        with pytest.raises(ClientError) as info:
            c.fetch_current(1, SPEC)
    assert info.value.reason == "bad_response"
    assert DeviceStore(tmp_path).load_model(1, SPEC.size) is None


@settings(
    derandomize=True,
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=64).map(lambda b: b"PLMS\x01\x02\x38\x00" + b),
        st.lists(st.binary(max_size=120), max_size=3).map(pack_chain),
    ),
    encoding=st.sampled_from([ModelEncoding.SNAPSHOT, ModelEncoding.DELTA_CHAIN, "gzip"]),
)
def test_any_model_body_is_a_client_error_or_a_checked_model(
    tmp_path: Path, body: bytes, encoding: str
) -> None:
    # Prepare: a device that already holds version 1 (of SPEC's layout, so fetch_current asks
    # from it), then a download of arbitrary bytes
    params = np.linspace(-1, 1, SPEC.size, dtype=np.float32)
    store = DeviceStore(tmp_path / "app")
    store.save_model(1, params, 1, model_digest(params).hex(), True, SPEC.fingerprint)
    # A server that answers every download with the same bytes: a delta chain that fails is
    # asked for again once as a snapshot (no have=), and gets them again
    replies = [_model_response(body, encoding, model_digest(params).hex(), "2") for _ in "ab"]
    haves: list[str | None] = []
    transport = httpx.MockTransport(_serve(replies, haves))
    # Execute / Assert: only ClientError (ModelIntegrityError included) ever escapes, after at
    # most a second request (without have=), and only for a delta chain
    with Client("http://coord", str(tmp_path / "app"), transport=transport) as c:
        try:
            got, _, _ = c.fetch_current(1, SPEC)
        except ClientError:
            assert haves in (["1"], ["1", None])
            assert len(haves) == 1 or encoding == ModelEncoding.DELTA_CHAIN
            return
    assert haves == ["1"]
    assert np.all(np.isfinite(got)) and model_digest(got) == model_digest(params)


@pytest.mark.parametrize("shape", [[-1], [1 << 20, 1 << 20], [0]])
def test_an_assignment_with_an_impossible_spec_is_a_client_error(
    tmp_path: Path, shape: list[int]
) -> None:
    # Prepare: a check-in answer that parses (integer dimensions) but is no model
    a = dataclasses.replace(_assignment(), spec=[TensorShape("w", shape)])
    transport = httpx.MockTransport(_serve([]))
    # Execute / Assert: refused before any request, as a ClientError
    with Client("http://coord", str(tmp_path), transport=transport) as c:
        with pytest.raises(ClientError) as info:
            c.fetch_model(a)
    assert info.value.reason == "bad_response" and "spec" in info.value.detail
