"""docs/devices.md's claims about a hostile or broken coordinator, as properties over mutations
of real answers (a check-in's assignment, a model download, an upload's receipt; body, headers
or status): the call ends in a checked result or a `ClientError` (`ModelIntegrityError` for a
model that fails its check), never another exception type (KeyError, struct.error,
OverflowError, ...), and the app directory holds what the doc says it holds after it: the
residual as before, an upload pending exactly while its receipt has not come."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from compression import CodecConfig, UpdateCodec, encode_snapshot, model_digest
from protocol.messages import apply_delta, pack_chain
from protocol.names import Header, ModelEncoding
from sdk import AsyncClient, Client
from sdk.client import ClientError, ModelIntegrityError
from sdk.device_store import DeviceStore

from .test_client import RECEIPT, SPEC, _assignment
from .test_client_hostile_server import Sleeps, _app_files, _app_with_state, _data, _train_answer
from .test_client_secure import ShiftTrainer

Handler = Callable[[httpx.Request], httpx.Response]
Answer = tuple[int, dict[str, bytes], bytes]  # status, headers, body
PROPERTY = settings(
    derandomize=True,
    database=None,
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
HELD = np.linspace(-1, 1, SPEC.size, dtype=np.float32)  # version 3, as `_app_with_state` saves
# Each example makes an app directory, whose writes fsync: in memory where the system has it.
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
MODEL_FILES = {"model.f32", "state.json"}  # what a download may change (forgetting the model)


# -- mutations -----------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.sampled_from([0, -1, 1, 2**31, 2**63, 2**64, -(2**63), 10**400])
    | st.integers()
    | st.floats()  # NaN and Infinity included: Python's json writes and reads them
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into a JSON value (each dict key, each list index, nested)."""
    out: list[tuple[Any, ...]] = []
    if isinstance(value, dict | list):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, inner in items:
            out.append((*prefix, key))
            out.extend(_paths(inner, (*prefix, key)))
    return out


@st.composite
def mutated_json(draw: st.DrawFn, body: bytes) -> bytes:
    """`body` (a JSON answer) with one field replaced by any JSON value or removed, or its
    bytes flipped, cut or extended."""
    kind = draw(st.sampled_from(["replace", "remove", "flip", "cut", "extend"]))
    if kind in ("replace", "remove"):
        doc = json.loads(body)
        path = draw(st.sampled_from(_paths(doc)))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if kind == "remove":
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(JSON_VALUES)
        return json.dumps(doc).encode()
    return draw(mutated_bytes(body, kind))


@st.composite
def mutated_bytes(draw: st.DrawFn, body: bytes, kind: str | None = None) -> bytes:
    """`body` with bytes flipped, cut short, or extended with random bytes."""
    kind = kind or draw(st.sampled_from(["flip", "cut", "extend"]))
    data = bytearray(body)
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= draw(st.integers(1, 255))
        return bytes(data)
    if kind == "cut":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    return bytes(data) + draw(st.binary(min_size=1, max_size=64))


HEADER_TEXT = st.one_of(
    st.sampled_from(["", "-1", "nan", "1e400", "9" * 40, "gzip", "zstd", "0", "1", "²", "a" * 300]),
    st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=40),
).map(lambda text: text.encode("utf-8"))  # bytes: httpx takes only ASCII str values


def _response(answer: Answer, kind: str = "sync") -> httpx.Response:
    """`answer` as a response whose body is streamed, as off a socket (a body given whole is
    decoded by httpx.Response itself, by its Content-Encoding, before the client sees it)."""
    status, named, body = answer
    headers = [(name.encode(), value) for name, value in named.items()]
    if kind == "sync":
        return httpx.Response(status, headers=headers, content=iter([body]))

    async def chunks() -> AsyncIterator[bytes]:
        yield body

    return httpx.Response(status, headers=headers, content=chunks())


@contextmanager
def _app() -> Iterator[tuple[Path, dict[str, bytes]]]:
    """A fresh app directory holding task 1's model at version 3 and a residual, no upload
    pending (hypothesis runs many examples in one test: each gets its own directory)."""
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        root = Path(tmp)
        _app_with_state(root)
        with DeviceStore(root) as store:
            store.clear_pending()
        yield root, _app_files(root)


# -- check-in answers ----------------------------------------------------------------------------


@st.composite
def check_in_answers(draw: st.DrawFn) -> Answer:
    """A real "train" answer with its body, a header or its status mutated."""
    body, status, headers = _train_answer(), 200, {"content-type": b"application/json"}
    what = draw(st.sampled_from(["body", "body", "header", "status"]))
    if what == "body":
        body = draw(mutated_json(body))
    elif what == "header":
        name = draw(
            st.sampled_from(
                [
                    "retry-after",
                    "date",
                    "content-type",
                    "content-encoding",
                    "x-plume-ledger-round",
                    "location",
                ]
            )
        )
        headers[name] = draw(HEADER_TEXT)
    else:
        status = draw(st.sampled_from([100, 201, 204, 301, 302, 304, 307, 400, 404, 409, 425]))
    return status, headers, body


def _check_in(root: Path, answer: Answer, kind: str) -> Any:
    """`check_in(1)` by a `kind` client whose every request is answered with `answer`'s
    status, headers and body."""

    def reply(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/checkin", request.url.path
        return _response(answer, kind)

    if kind == "sync":
        transport = httpx.MockTransport(reply)
        with Client("http://coord", str(root), transport=transport, retries=0) as c:
            return c.check_in(1)

    async def run() -> Any:
        async_transport = httpx.MockTransport(reply)
        async with AsyncClient(
            "http://coord", str(root), transport=async_transport, retries=0
        ) as c:
            return await c.check_in(1)

    return asyncio.run(run())


@PROPERTY
@given(answer=check_in_answers(), kind=st.sampled_from(["sync", "async"]))
def test_a_mutated_check_in_answer_is_a_client_error_or_an_answer_for_the_task(
    answer: Answer, kind: str
) -> None:
    # "Everything the SDK raises about a request to the coordinator (a refusal, an answer it
    # cannot use, ...) is a ClientError"; "An exception leaves the app directory consistent"
    with _app() as (root, files):
        # Execute
        try:
            got = _check_in(root, answer, kind)
        except ClientError as exc:
            event(f"{kind}: {exc.reason}")
            got = None
        else:
            event(f"{kind}: {got.action}")
        # Assert: only ClientError escaped (any other exception fails the test as it is);
        # an assignment kept is one for the task asked; nothing in the directory changed
        if got is not None and got.assignment is not None:
            assert got.assignment.task_id == 1
        assert _app_files(root) == files


# -- model downloads in a round ------------------------------------------------------------------

NEW = HELD + np.float32(0.25)  # the coordinator's version 4


def _model_answer(body: bytes, encoding: str, digest: str, version: str) -> Answer:
    headers = {
        str(Header.MODEL_ENCODING): encoding.encode(),
        str(Header.MODEL_DIGEST): digest.encode(),
        str(Header.MODEL_VERSION): version.encode(),
        str(Header.MODEL_EXACT): b"1",
    }
    return 200, headers, body


def _real_downloads() -> tuple[dict[str, Answer], npt.NDArray[np.float32]]:
    """A snapshot of version 4, and a delta chain from the held version 3 to it."""
    snapshot = _model_answer(
        encode_snapshot(NEW, SPEC, dtype="fp32"),
        ModelEncoding.SNAPSHOT,
        model_digest(NEW).hex(),
        "4",
    )
    frame, _ = UpdateCodec(SPEC, CodecConfig.dense()).encode(NEW - HELD, np.random.default_rng(0))
    chained = apply_delta(HELD, UpdateCodec(SPEC, CodecConfig.dense()).decode(frame))
    chain = _model_answer(
        pack_chain([frame]), ModelEncoding.DELTA_CHAIN, model_digest(chained).hex(), "4"
    )
    return {"snapshot": snapshot, "chain": chain}, chained


REAL, CHAINED = _real_downloads()  # CHAINED: version 4 as the chain makes it from version 3


@st.composite
def model_answers(draw: st.DrawFn) -> tuple[str, Answer]:
    """One real download (snapshot or delta chain) with its body or one header mutated."""
    name = draw(st.sampled_from(["snapshot", "chain"]))
    status, headers, body = REAL[name]
    headers = dict(headers)
    if draw(st.booleans()):
        body = draw(mutated_bytes(body))
    else:
        header = draw(st.sampled_from(sorted(headers) + ["content-encoding"]))
        headers[header] = draw(
            HEADER_TEXT | st.sampled_from([str(e).encode() for e in ModelEncoding])
        )
    return name, (status, headers, body)


def _train_round(root: Path, first: Answer, upload: Answer, seen: list[str], kind: str) -> Any:
    """`train_round` of round 5 by a `kind` client whose server answers the round's first
    model download with `first`, a second one (the snapshot a refused delta chain is asked
    for again as) with the real snapshot, and the upload with `upload`; records each path."""

    def reply(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        seen.append(path)
        if path == "/v1/tasks/1/model":
            return _response(first if seen.count(path) == 1 else REAL["snapshot"], kind)
        assert path == "/v1/rounds/5/updates", path
        return _response(upload, kind)

    x, y = _data()
    if kind == "sync":
        transport = httpx.MockTransport(reply)
        with Client("http://coord", str(root), transport=transport, retries=0, sleep=Sleeps()) as c:
            return c.train_round(_assignment(), ShiftTrainer(0.01), x, y)

    async def run() -> Any:
        async_transport = httpx.MockTransport(reply)
        async with AsyncClient(
            "http://coord", str(root), transport=async_transport, retries=0
        ) as c:
            return await c.train_round(_assignment(), ShiftTrainer(0.01), x, y)

    return asyncio.run(run())


@PROPERTY
@given(download=model_answers(), kind=st.sampled_from(["sync", "async"]))
def test_a_mutated_model_download_fails_the_round_before_anything_is_trained_or_sent(
    download: tuple[str, Answer], kind: str
) -> None:
    # "ModelIntegrityError ...: a model download failed its integrity check. A delta chain
    # that fails is asked for again at once as a whole snapshot, in the same call ... (the
    # round goes on) ... The model held is forgotten ...; nothing was trained, the residual is
    # as before the round"
    name, answer = download
    with _app() as (root, files):
        seen: list[str] = []
        ok: Answer = (200, {}, json.dumps(RECEIPT).encode())
        # Execute
        try:
            report = _train_round(root, answer, ok, seen, kind)
        except ClientError as exc:
            error: ClientError | None = exc
        else:
            error = None
        event(f"{kind} {name}: {type(error).__name__} {getattr(error, 'reason', 'ok')}")
        after = _app_files(root)
        held = DeviceStore(root).load_model(1, SPEC.size)
        if error is None:
            # Assert: a round that went on trained the coordinator's model, checked
            assert report.round_id == 5 and seen[-1] == "/v1/rounds/5/updates"
            assert held is not None
            chained = name == "chain" and seen.count("/v1/tasks/1/model") == 1
            assert model_digest(held[0]) == model_digest(CHAINED if chained else NEW)
            return
        # Assert: nothing uploaded or left pending; the residual as before; the model held
        # as before, or forgotten for a model that failed its check
        assert "/v1/rounds/5/updates" not in seen
        assert DeviceStore(root).load_pending() is None
        assert {k: v for k, v in after.items() if k not in MODEL_FILES} == {
            k: v for k, v in files.items() if k not in MODEL_FILES
        }
        if isinstance(error, ModelIntegrityError):
            assert held is None
        else:
            assert held is not None and model_digest(held[0]) == model_digest(HELD)
            assert held[1] == 3


# -- upload receipts -----------------------------------------------------------------------------


@st.composite
def receipts(draw: st.DrawFn) -> Answer:
    """The upload's real receipt with its body or a header mutated, or a status that is no
    refusal (no 4xx: a 4xx is a refusal, which settles the upload by its reason)."""
    body = json.dumps({**RECEIPT}).encode()
    status, headers = 200, {"content-type": b"application/json"}
    what = draw(st.sampled_from(["body", "body", "header", "status"]))
    if what == "body":
        body = draw(mutated_json(body))
    elif what == "header":
        name = draw(st.sampled_from(["content-encoding", "x-plume-ledger-round", "retry-after"]))
        headers[name] = draw(HEADER_TEXT)
    else:
        status = draw(st.sampled_from([100, 201, 202, 204, 301, 302, 304, 307, 500, 502, 503]))
    return status, headers, body


@PROPERTY
@given(receipt=receipts(), kind=st.sampled_from(["sync", "async"]))
def test_an_upload_answered_with_a_mutated_receipt_stays_pending_unless_accepted(
    receipt: Answer, kind: str
) -> None:
    # "an upload whose answer never came stays pending and is re-sent by the next participate"
    # (an answer that is not its receipt is no answer); "ClientError ... an answer it cannot use"
    with _app() as (root, _files):
        seen: list[str] = []
        # Execute
        try:
            report = _train_round(root, REAL["snapshot"], receipt, seen, kind)
        except ClientError as exc:
            event(f"{kind}: {exc.reason}")
            report = None
        else:
            event(f"{kind}: accepted")
        # Assert: accepted (its round's receipt) and settled, or still pending for round 5
        pending = DeviceStore(root).load_pending()
        if report is not None:
            assert report.round_id == 5 and pending is None
        else:
            assert pending is not None and pending.round_id == 5
