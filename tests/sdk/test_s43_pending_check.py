"""pending.json carries a check over its fields (helper-347): a flipped bit in the key or the
round id made the re-send another upload, which the coordinator refused as the round's
duplicate, and the SDK put its content back into the residual while the coordinator held it
(counted twice). Now such a file is refused naming it, and a file without the check (an older
SDK's) reads as before."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sdk.device_store import DeviceStore, DeviceStoreError, PendingUpload

from .test_client import SPEC
from .test_review_device_state import _ef


def _saved(root: Path) -> dict[str, Any]:
    DeviceStore(root).save_pending(
        PendingUpload(177, "k" * 31 + "4", b"frame-177", 40, SPEC, 5), _ef(0.5)
    )
    meta = json.loads((root / "pending.json").read_text())
    assert isinstance(meta, dict) and len(meta["check"]) == 64
    return meta


@pytest.mark.parametrize(
    "field, value", [("key", "k" * 31 + "5"), ("round_id", 176), ("task_id", 4), ("bytes", 8)]
)
def test_a_changed_field_is_refused_naming_the_file(
    tmp_path: Path, field: str, value: object
) -> None:
    meta = _saved(tmp_path)
    assert DeviceStore(tmp_path).load_pending() is not None
    (tmp_path / "pending.json").write_text(json.dumps({**meta, field: value}))
    with pytest.raises(DeviceStoreError, match=r"pending\.json: its check does not match"):
        DeviceStore(tmp_path).load_pending()


def test_a_flipped_bit_in_the_key_is_refused(tmp_path: Path) -> None:
    _saved(tmp_path)
    raw = bytearray((tmp_path / "pending.json").read_bytes())
    raw[raw.index(b'4", "bytes"')] ^= 0x01  # "...k4" -> "...k5"
    (tmp_path / "pending.json").write_bytes(bytes(raw))
    with pytest.raises(DeviceStoreError, match="check does not match"):
        DeviceStore(tmp_path).load_pending()


def test_a_file_without_the_check_reads_as_before(tmp_path: Path) -> None:
    meta = _saved(tmp_path)
    del meta["check"]
    (tmp_path / "pending.json").write_text(json.dumps(meta))
    pending = DeviceStore(tmp_path).load_pending()
    assert pending is not None
    assert (pending.round_id, pending.key, pending.frame, pending.task_id) == (
        177, "k" * 31 + "4", b"frame-177", 5,
    )  # fmt: skip
    # a key order other than the one written does not matter: the check sorts the fields
    meta = _saved(tmp_path)
    (tmp_path / "pending.json").write_text(json.dumps(dict(reversed(list(meta.items())))))
    assert DeviceStore(tmp_path).load_pending() is not None


def test_an_upload_names_the_device_it_was_sent_as_and_keeps_its_identity(tmp_path: Path) -> None:
    # helper-347: with state.json and device_key both gone, a new key was made and the pending
    # upload re-sent as another device's: refused as the round's duplicate, its content went
    # back into the residual (counted twice). The upload now names the device it was sent as.
    from sdk.device_store import AcceptedUpload, DeviceIdentityLost

    store = DeviceStore(tmp_path)
    key = store.private_key()
    store.save_pending(PendingUpload(9, "k" * 32, b"frame-9", 40, SPEC, 5), _ef(0.5))
    store.save_accepted(AcceptedUpload(8, b"frame-8", SPEC, 5))
    sender = json.loads((tmp_path / "pending.json").read_text())["device_id"]
    assert json.loads((tmp_path / "accepted-8.json").read_text())["device_id"] == sender
    assert DeviceStore(tmp_path).load_pending() is not None  # the check covers the new field
    (tmp_path / "device_key").unlink()
    assert not (tmp_path / "state.json").exists()
    with pytest.raises(DeviceIdentityLost, match=f"accepted-8.json was sent as device {sender}"):
        DeviceStore(tmp_path).private_key()
    assert not (tmp_path / "device_key").exists()  # nothing made
    (tmp_path / "accepted-8.json").unlink()
    with pytest.raises(DeviceIdentityLost, match="pending.json was sent as device"):
        DeviceStore(tmp_path).private_key()
    # the key put back: the device as it was
    (tmp_path / "device_key").write_bytes(key)
    (tmp_path / "device_key").chmod(0o600)
    assert DeviceStore(tmp_path).private_key() == key


def test_a_store_used_without_a_key_names_no_device(tmp_path: Path) -> None:
    meta = _saved(tmp_path)  # no device_key: no sender to name
    assert "device_id" not in meta
    assert len(DeviceStore(tmp_path).private_key()) == 32  # a key is made, as before
