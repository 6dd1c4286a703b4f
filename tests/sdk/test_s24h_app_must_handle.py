"""docs/devices.md, "What the app must handle", names every way a call can end that leaves the
app something to do about its app directory (s24/r4 finding 2). README says the table lists
every way `participate` can end, but a full disk (`OSError`, errno 28) and a corrupt file
(`DeviceStoreError`: a state.json that does not read fails `register` and `participate`; a
pending.json that does not read fails every `participate` until removed) were missing, and the
text implied clearing the directory was the remedy for a `DeviceStoreError` (it discards the
identity and the residual). The remedies the table gives are checked here on the store and a
client: removing pending.json forgets the upload as delivered (the residual already left its
content out: never counted twice), removing state.json keeps the device (its key)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from compression import ErrorFeedback, ModelSpec
from protocol import auth
from sdk import Client
from sdk.device_store import AcceptedUpload, DeviceStore, DeviceStoreError, PendingUpload

ROOT = Path(__file__).resolve().parents[2]
SPEC = ModelSpec.from_shapes([("w", (4, 8)), ("b", (4,))])


def _table() -> dict[str, tuple[str, str, str]]:
    """The table's rows: the outcome cell's first code span -> (outcome, meaning, next step)."""
    text = (ROOT / "docs" / "devices.md").read_text()
    section = text.split("### What the app must handle", 1)[1].split("\n\n**", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        m = re.match(r"(?:a |)`([^`]+)`", cells[0]) if len(cells) == 3 else None
        if m is not None:
            rows[m.group(1)] = (cells[0], cells[1], cells[2])
    return rows


def test_the_table_names_a_full_disk_and_a_corrupt_file_with_what_to_do() -> None:
    # Execute
    rows = _table()

    # Assert: each row says what happened and what to remove (never the whole directory)
    disk = rows["OSError"]
    assert "ENOSPC" in disk[0] and "stays pending" in disk[1]
    assert "call again later" in disk[2] and "do not clear the directory" in disk[2]
    store = rows["sdk.DeviceStoreError"]
    assert "state.json" in store[1] and "pending.json" in store[1]
    assert "spec is not a model layout" in store[1]
    assert "remove the file named, and nothing else" in store[2]
    assert "keep `device_key`" in store[2] and "never counted twice" in store[2]
    assert "Never clear the whole directory" in store[2]
    lost = rows["sdk.DeviceIdentityLost"]
    assert "restore that device's `device_key`" in lost[2] and "residual" in lost[2]


def test_clearing_the_directory_is_not_offered_as_a_remedy() -> None:
    # Prepare
    text = (ROOT / "docs" / "devices.md").read_text()

    # Assert: the sentence that read as "clear it on a DeviceStoreError" is gone, and clearing
    # is named for what it discards
    assert "so do not clear the directory on\nit." not in text
    assert "clearing discards the device's identity and its residual" in text


def _ef(value: float) -> ErrorFeedback:
    ef = ErrorFeedback(SPEC.size)
    ef.residual = np.full(SPEC.size, value, dtype=np.float32)
    return ef


def test_removing_a_corrupt_pending_json_forgets_the_upload_as_delivered(tmp_path: Path) -> None:
    # Prepare: a record of round 3, an upload of round 4 pending (its residual saved), then a
    # bit flipped in pending.json's layout
    with DeviceStore(tmp_path) as store:
        store.save_accepted(AcceptedUpload(3, b"frame-3", SPEC, 7))
        store.save_pending(PendingUpload(4, "k" * 32, b"frame-4", 40, SPEC, 7), _ef(0.5))
    raw = bytearray((tmp_path / "pending.json").read_bytes())
    raw[raw.index(b'"name"') + 1] ^= 0x40
    (tmp_path / "pending.json").write_bytes(bytes(raw))
    residual = (tmp_path / "residual-7.bin").read_bytes()
    with DeviceStore(tmp_path) as store, pytest.raises(DeviceStoreError, match="pending.json"):
        store.load_pending()

    # Execute: the table's remedy
    (tmp_path / "pending.json").unlink()

    # Assert: no upload pending, the residual as it was (it already left the upload out), the
    # record kept, and the next upload saves over the leftover frame
    with DeviceStore(tmp_path) as store:
        assert store.load_pending() is None
        assert (tmp_path / "residual-7.bin").read_bytes() == residual
        record = store.load_accepted(3)
        assert record is not None and record.frame == b"frame-3"
        store.save_pending(PendingUpload(5, "j" * 32, b"frame-5", 40, SPEC, 7), _ef(0.25))
        pending = store.load_pending()
        assert pending is not None and pending.round_id == 5 and pending.frame == b"frame-5"


def _coordinator(sent: list[str]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        key = base64.urlsafe_b64decode(json.loads(request.content)["public_key"] + "==")
        return httpx.Response(200, json={"device_id": auth.device_id_for(key), "created": False})

    return httpx.MockTransport(answer)


def test_removing_a_corrupt_state_json_keeps_the_device(tmp_path: Path) -> None:
    # Prepare: a registered device with a residual, then state.json torn
    sent: list[str] = []
    with Client("http://coord", str(tmp_path), transport=_coordinator(sent), retries=0) as c:
        device_id = c.register()
    with DeviceStore(tmp_path) as store:
        store.save_residual(_ef(0.5), 7, SPEC)
    residual = (tmp_path / "residual-7.bin").read_bytes()
    state = tmp_path / "state.json"
    state.write_bytes(state.read_bytes()[:10])
    with Client("http://coord", str(tmp_path), transport=_coordinator(sent), retries=0) as c:
        with pytest.raises(DeviceStoreError, match="state.json"):
            c.register()

    # Execute: the table's remedy (device_key kept)
    state.unlink()
    with Client("http://coord", str(tmp_path), transport=_coordinator(sent), retries=0) as c:
        again = c.register()

    # Assert: the same device, registered again, its residual kept
    assert again == device_id
    assert json.loads(state.read_text()) == {"device_id": device_id, "registered": True}
    assert (tmp_path / "residual-7.bin").read_bytes() == residual
    assert sent == ["/v1/devices", "/v1/devices"]
