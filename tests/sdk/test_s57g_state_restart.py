"""docs/devices.md on the device's identity and state across a restart, as properties: a
registration answer mutated at random is a `ClientError` with nothing recorded, or the device
registered as itself; a `state.json` damaged at random (a field replaced or removed, bytes
flipped, cut or added) ends the next run's calls in a `DeviceStoreError` (`DeviceIdentityLost`
among them: "state.json carries no check: a changed digit there reads as a lost key"), or in
a model download checked against the coordinator's digest, never in another exception, and the
device key and the task's residual are untouched either way ("the residuals and uploads are
kept")."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from hypothesis import event, given
from hypothesis import strategies as st

from compression import model_digest
from sdk import Client
from sdk.client import ClientError
from sdk.device_store import DeviceStore, DeviceStoreError

from .test_client import SPEC
from .test_client_hostile_server import WAIT, _app_files, _app_with_state
from .test_s57g_hostile_answers import (
    CHAINED,
    NEW,
    PROPERTY,
    REAL,
    SCRATCH,
    _response,
    mutated_json,
)

KEPT = ("device_key", "residual-1.bin")  # what no answer and no damage to state.json touches


def _registration(device_id: str) -> bytes:
    """A coordinator's answer to a first registration."""
    return json.dumps({"device_id": device_id, "created": True, "incarnation": "ab" * 16}).encode()


def _coordinator(registration: bytes) -> httpx.MockTransport:
    """Answers a registration with `registration`, a check-in with "wait", and a model
    download with the real delta chain from version 3 when it names `have=3`, else with the
    real snapshot of version 4."""

    def reply(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/devices":
            return httpx.Response(200, content=registration)
        if path == "/v1/checkin":
            return httpx.Response(200, content=WAIT)
        assert path == "/v1/tasks/1/model", path
        have = request.url.params.get("have")
        return _response(REAL["chain"] if have == "3" else REAL["snapshot"])

    return httpx.MockTransport(reply)


@contextmanager
def _unregistered() -> Iterator[tuple[Path, str, dict[str, bytes]]]:
    """An app directory holding task 1's model (version 3) and its residual, nothing pending,
    not registered: (its path, the device's id, its files)."""
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        root = Path(tmp)
        _app_with_state(root)
        with DeviceStore(root) as store:
            store.clear_pending()
        with Client("http://coord", str(root), transport=_coordinator(b"")) as c:
            device_id = c.device_id
        yield root, device_id, _app_files(root)


@PROPERTY
@given(data=st.data())
def test_a_mutated_registration_answer_records_nothing_or_the_device_itself(
    data: st.DataObject,
) -> None:
    with _unregistered() as (root, device_id, files):
        answer = data.draw(mutated_json(_registration(device_id)))
        # Execute
        with Client("http://coord", str(root), transport=_coordinator(answer), retries=0) as c:
            try:
                c.register()
            except ClientError as exc:
                event(f"ClientError {exc.reason}")
                # Assert: nothing about the device recorded
                assert _app_files(root) == files
                return
        # Assert: registered as itself; the key and the residual untouched
        event("registered")
        state = DeviceStore(root).state()
        assert state["device_id"] == device_id and state["registered"] is True
        after = _app_files(root)
        assert all(after[name] == files[name] for name in KEPT)


def _registered_files() -> dict[str, bytes]:
    with _unregistered() as (root, device_id, _):
        with Client(
            "http://coord", str(root), transport=_coordinator(_registration(device_id))
        ) as c:
            c.register()
        return _app_files(root)


FILES = _registered_files()


@PROPERTY
@given(state=mutated_json(FILES["state.json"]))
def test_a_damaged_state_json_is_a_device_store_error_or_a_checked_download(state: bytes) -> None:
    # "A state.json that does not read fails register and participate at every call";
    # "A model whose bytes do not match the digest in state.json (a torn file, a bit flipped
    # on disk) counts as not held"; the residual is kept
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        root = Path(tmp)
        for name, content in FILES.items():
            (root / name).write_bytes(state if name == "state.json" else content)
            (root / name).chmod(0o600)
        transport = _coordinator(_registration(json.loads(FILES["state.json"])["device_id"]))
        # Execute
        try:
            with Client("http://coord", str(root), transport=transport, retries=0) as c:
                c.check_in(1)
                got, version, _ = c.fetch_current(1, SPEC)
        except DeviceStoreError as exc:
            event(type(exc).__name__)
        else:
            # Assert: the coordinator's model, checked (a chain applied to the bytes held,
            # whatever version state.json names, still matches the coordinator's digest)
            event("downloaded")
            assert version == 4
            assert model_digest(got) in (model_digest(NEW), model_digest(CHAINED))
        # Assert: the key and the residual untouched
        after = _app_files(root)
        assert all(after[name] == FILES[name] for name in KEPT)
