"""docs/devices.md on a restart with an upload pending, as a property over damage to the two
files that hold it: whatever `pending.json` or `pending.frame` then holds (a field replaced or
removed, bytes flipped, cut or added), the next run re-sends exactly the upload the last one
saved (same round, idempotency key and frame), or sends nothing and raises
`DeviceStoreError` naming `pending.json` ("a flipped bit in the key, round or task id says
... its check does not match its fields ... rather than re-sending the upload as another"),
or, for a frame that is not the one pending.json describes, sends nothing and counts the upload
as delivered. Never another exception, never another upload."""

from __future__ import annotations

import tempfile
from pathlib import Path

import httpx
from hypothesis import event, given
from hypothesis import strategies as st

from protocol.names import Header
from sdk import Client
from sdk.device_store import DeviceStore, DeviceStoreError

from .test_client import RECEIPT
from .test_client_hostile_server import _app_files, _app_with_state
from .test_s57g_hostile_answers import PROPERTY, SCRATCH, mutated_bytes, mutated_json

Sent = tuple[str, str, bytes]  # path, idempotency key, body


def _resume(root: Path) -> tuple[object, list[Sent]]:
    """`resume_pending()` against a server that answers any upload with its receipt; its
    result (or the exception raised) and the requests sent."""
    sent: list[Sent] = []

    def reply(request: httpx.Request) -> httpx.Response:
        sent.append(
            (request.url.path, request.headers.get(Header.IDEMPOTENCY_KEY, ""), request.content)
        )
        return httpx.Response(200, json={**RECEIPT, "round_id": 4})

    with Client("http://coord", str(root), transport=httpx.MockTransport(reply), retries=0) as c:
        try:
            return c.resume_pending(), sent
        except DeviceStoreError as exc:
            return exc, sent


@st.composite
def damage(draw: st.DrawFn, files: dict[str, bytes]) -> tuple[str, bytes]:
    """One of the two files with one mutation."""
    name = draw(st.sampled_from(["pending.json", "pending.frame"]))
    if name == "pending.json":
        return name, draw(mutated_json(files[name]))
    return name, draw(mutated_bytes(files[name]))


def _saved() -> tuple[dict[str, bytes], list[Sent]]:
    """The files of an app directory with an upload for round 4 pending, and what its re-send
    sends when nothing is damaged."""
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        root = Path(tmp)
        files = _app_with_state(root)
        got, sent = _resume(root)
        assert got is not None and not isinstance(got, Exception) and len(sent) == 1
        return files, sent


FILES, SENT = _saved()


@PROPERTY
@given(data=st.data())
def test_a_damaged_pending_upload_is_resent_as_saved_or_refused_never_as_another(
    data: st.DataObject,
) -> None:
    # Prepare: the same app directory (same key, device and frame), one file damaged
    name, damaged = data.draw(damage(FILES))
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        root = Path(tmp)
        for file, content in FILES.items():
            (root / file).write_bytes(damaged if file == name else content)
            (root / file).chmod(0o600)
        before = _app_files(root)
        # Execute
        got, sent = _resume(root)
        # Assert
        if isinstance(got, DeviceStoreError):
            event(f"{name}: DeviceStoreError")
            assert name == "pending.json" and "pending.json" in str(got)
            assert sent == [] and _app_files(root) == before
        elif got is None:
            event(f"{name}: dropped as delivered")
            assert sent == [] and DeviceStore(root).load_pending() is None
        else:
            event(f"{name}: re-sent")
            assert sent == SENT, "an upload other than the one saved was sent"
            assert DeviceStore(root).load_pending() is None
