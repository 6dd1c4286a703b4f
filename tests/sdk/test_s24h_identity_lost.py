"""A device whose key is gone is refused, not silently made a new device (s24/r4 finding 1).

Before, `DeviceStore.private_key` made a fresh key whenever `device_key` was missing, and took
any 32 bytes there (a flipped bit, another device's key) as the key, although state.json named
the registered device and the directory still held that device's residual, pending upload and
records of accepted uploads; `register` then wrote the new id over state.json's. The new
device re-sent the old pending upload and asked about the old records, and the coordinator
answered as it must for a device that never uploaded (the re-send refused, the record's round
`excluded`): the content went back into the residual although it was in the model already,
and counted twice. Now `Client(...)` raises `DeviceIdentityLost` (a `DeviceStoreError`) before
any request, leaving the directory as it was; state.json's `device_id`, SHA-256 of the public
key as every SDK version wrote it at registration, is the fingerprint compared.

Real coordinator on loopback for the directories (a round whose record is held; an upload whose
acknowledgement was lost, held pending); the refusal itself needs no network."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig
from protocol import auth
from sdk import AsyncClient, Client, CoordinatorUnreachable
from sdk.device_store import DeviceIdentityLost, DeviceStore, DeviceStoreError
from tests.coordinator.test_service_support import (
    ADMIN,
    SoftmaxTrainer,
    create_task,
    local_data,
    task_config,
)

X, Y = local_data(0)


class _Requests:
    """A client mod counting requests; with `lose_ack`, an upload reaches the coordinator but
    its answer is lost (a dropped connection), so the client keeps the upload pending."""

    def __init__(self, lose_ack: bool = False) -> None:
        self.lose_ack = lose_ack
        self.sent: list[str] = []

    def __call__(self, request: httpx.Request, nxt: Callable[..., Any]) -> httpx.Response:
        self.sent.append(f"{request.method} {request.url.path}")
        response = nxt(request)
        if self.lose_ack and request.url.path.endswith("/updates"):
            raise httpx.ConnectError("connection lost before the answer", request=request)
        return response


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, Path]]:
    """(url, task, base): base/record holds a device after one accepted round (its record and
    residual), base/pending one whose second upload's acknowledgement was lost."""
    base = tmp_path_factory.mktemp("identity")
    cfg = ServiceConfig(db_path=str(base / "p.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as url:
        with httpx.Client(base_url=url) as admin:
            one = task_config(clients_per_round=1, rounds=8, selection_timeout_s=0.2, deadline_s=20)
            task = create_task(admin, one)
        with Client(url, str(base / "record")) as client:
            client.register()
            report = client.participate(SoftmaxTrainer(), X, Y, task_id=task, max_wait_s=20)
            assert report is not None and report.receipt.accepted
        lose = _Requests(lose_ack=True)
        with Client(url, str(base / "pending"), retries=0, mods=(lose,)) as client:
            client.register()
            lose.lose_ack = False
            assert client.participate(SoftmaxTrainer(), X, Y, task_id=task, max_wait_s=20)
            lose.lose_ack = True
            with pytest.raises(CoordinatorUnreachable):
                client.participate(SoftmaxTrainer(), X, Y, task_id=task, max_wait_s=20)
        yield url, task, base


def _flip(key: bytes) -> bytes:
    return bytes([key[0] ^ 0x01]) + key[1:]


def _foreign(_: bytes) -> bytes:
    return auth.generate_private_key()


# How the key is lost: removed, replaced by 32 other bytes (one bit flipped, another device's
# key), or left unreadable (torn to 16 bytes).
_LOSSES: dict[str, Callable[[Path], None]] = {
    "removed": lambda p: p.unlink(),
    "bit_flipped": lambda p: p.write_bytes(_flip(p.read_bytes())),
    "foreign": lambda p: p.write_bytes(_foreign(p.read_bytes())),
    "torn": lambda p: p.write_bytes(p.read_bytes()[:16]),
}


def _open(url: str, app_dir: Path, asynchronous: bool, mod: _Requests) -> None:
    if not asynchronous:
        with Client(url, str(app_dir), mods=(mod,)) as client:
            client.register()
        return

    async def run() -> None:
        async def amod(request: httpx.Request, nxt: Callable[..., Any]) -> httpx.Response:
            mod.sent.append(f"{request.method} {request.url.path}")
            return await nxt(request)

        async with AsyncClient(url, str(app_dir), mods=(amod,)) as client:
            await client.register()

    asyncio.run(run())


@pytest.mark.parametrize("asynchronous", [False, True], ids=["Client", "AsyncClient"])
@pytest.mark.parametrize("held", ["record", "pending"])
@pytest.mark.parametrize("loss", sorted(_LOSSES))
def test_a_registered_device_whose_key_is_lost_is_refused_and_nothing_is_sent(
    coordinator: tuple[str, int, Path], tmp_path: Path, loss: str, held: str, asynchronous: bool
) -> None:
    # Prepare: a copy of the device's directory, its key lost
    url, _, base = coordinator
    app_dir = tmp_path / "app"
    shutil.copytree(base / held, app_dir)
    state = json.loads((app_dir / "state.json").read_text())
    assert state["registered"] is True and len(state["device_id"]) == 32
    assert any(n.startswith(("pending.", "accepted-")) for n in _files(app_dir))
    _LOSSES[loss](app_dir / "device_key")
    before = _files(app_dir)
    mod = _Requests()

    # Execute
    with pytest.raises(DeviceIdentityLost) as caught:
        _open(url, app_dir, asynchronous, mod)

    # Assert: refused before any request, the directory untouched (no new key), and the message
    # says what was lost and what the app can do
    assert isinstance(caught.value, DeviceStoreError)
    assert mod.sent == []
    assert _files(app_dir) == before
    message = str(caught.value)
    assert "identity is lost" in message and "Restore that device's device_key" in message
    assert "remove the whole app directory" in message and "residual" in message


def test_a_lost_key_is_refused_when_state_json_does_not_read(
    coordinator: tuple[str, int, Path], tmp_path: Path
) -> None:
    # Prepare: key gone and state.json torn: whether the device registered cannot be told
    url, _, base = coordinator
    app_dir = tmp_path / "app"
    shutil.copytree(base / "pending", app_dir)
    (app_dir / "device_key").unlink()
    (app_dir / "state.json").write_bytes((app_dir / "state.json").read_bytes()[:20])
    before = _files(app_dir)

    # Execute / Assert
    with pytest.raises(DeviceIdentityLost, match="state.json does not read"):
        _open(url, app_dir, False, _Requests())
    assert _files(app_dir) == before


def test_the_intact_directory_reopens_as_the_same_device_and_resumes(
    coordinator: tuple[str, int, Path], tmp_path: Path
) -> None:
    # Prepare: the directory as an SDK before this change wrote it (state.json with device_id
    # and registered, no other identity field: nothing to migrate)
    url, task, base = coordinator
    app_dir = tmp_path / "app"
    shutil.copytree(base / "pending", app_dir)
    device_id = json.loads((app_dir / "state.json").read_text())["device_id"]
    mod = _Requests()

    # Execute
    with Client(url, str(app_dir), mods=(mod,)) as client:
        assert client.device_id == device_id
        assert client.register() == device_id
        report = client.participate(SoftmaxTrainer(), X, Y, task_id=task, max_wait_s=20)

    # Assert: the pending upload was re-sent (same key) and the device went on
    assert report is not None and report.receipt.accepted
    assert not (app_dir / "pending.json").exists()
    assert json.loads((app_dir / "state.json").read_text())["device_id"] == device_id


def test_register_does_not_write_another_device_id_over_state_json(tmp_path: Path) -> None:
    # Prepare: a client open on a directory; state.json then names another device (written by a
    # plain store of this process, which shares the lock)
    sent: list[str] = []

    def coordinator(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        return httpx.Response(500)

    with Client(
        "http://coord", str(tmp_path), transport=httpx.MockTransport(coordinator), retries=0
    ) as client:
        other = "0" * 32
        DeviceStore(tmp_path).update_state(device_id=other, registered=True)
        before = _files(tmp_path)

        # Execute / Assert: refused before the request; state.json keeps the id it had
        with pytest.raises(DeviceIdentityLost, match=f"names registered device {other}"):
            client.register()
        assert sent == []
        assert _files(tmp_path) == before


def test_register_refuses_once_the_key_file_is_replaced_while_open(tmp_path: Path) -> None:
    # Prepare
    sent: list[str] = []

    def coordinator(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        return httpx.Response(500)

    with Client(
        "http://coord", str(tmp_path), transport=httpx.MockTransport(coordinator), retries=0
    ) as client:
        (tmp_path / "device_key").write_bytes(auth.generate_private_key())

        # Execute / Assert
        with pytest.raises(DeviceIdentityLost, match="device_key is now the key of device"):
            client.register()
        assert sent == []
        assert not (tmp_path / "state.json").exists()


def test_a_key_is_still_made_in_a_directory_no_device_has_used(tmp_path: Path) -> None:
    # Prepare: a state.json naming no registered device (a pending upload saved by a test
    # through the store, say) ties the directory to no device
    store = DeviceStore(tmp_path)
    store.update_state(models={})

    # Execute
    key = store.private_key()

    # Assert
    assert len(key) == 32 and store.private_key() == key
    assert (tmp_path / "device_key").read_bytes() == key


def test_an_unregistered_directory_with_a_torn_key_is_refused_as_before(tmp_path: Path) -> None:
    # Prepare: nothing ties the directory to a device; the key file is torn
    (tmp_path / "device_key").write_bytes(b"\x01" * 16)

    # Execute / Assert: the store's plain error (not an identity loss)
    with pytest.raises(DeviceStoreError, match="32-byte Ed25519 key") as caught:
        DeviceStore(tmp_path).private_key()
    assert not isinstance(caught.value, DeviceIdentityLost)


def test_the_store_errors_are_importable_from_sdk() -> None:
    # An app catches them around Client(...) and participate(): `from sdk import ...`.
    import sdk
    from sdk.device_store import DeviceIdentityLost, DeviceStoreError

    assert sdk.DeviceIdentityLost is DeviceIdentityLost
    assert sdk.DeviceStoreError is DeviceStoreError
    assert issubclass(sdk.DeviceIdentityLost, sdk.DeviceStoreError)
    assert {"DeviceIdentityLost", "DeviceStoreError"} <= set(sdk.__all__)


def test_a_damaged_state_json_id_names_removing_state_json_as_the_way_out(tmp_path: Path) -> None:
    """Stop 47 (helper-405): state.json carries no check, so a flipped digit of its device id
    reads as a lost key; the message offered only restoring the key or wiping the directory
    (residual and pending upload lost). It now also names removing state.json alone."""
    # Prepare: a registered device whose state.json's id has one digit changed
    never = httpx.MockTransport(lambda request: httpx.Response(500))
    with Client("http://coord", str(tmp_path), transport=never, retries=0) as client:
        mine = client.device_id
    DeviceStore(tmp_path).update_state(device_id=mine, registered=True)
    flipped = mine[:-1] + ("0" if mine[-1] != "0" else "1")
    state = tmp_path / "state.json"
    state.write_text(state.read_text().replace(mine, flipped))

    # Execute
    with pytest.raises(DeviceIdentityLost) as lost:
        Client("http://coord", str(tmp_path), transport=never, retries=0)

    # Assert: the usual two ways out, and state.json's own, naming this key's id
    text = str(lost.value)
    assert f"device_key is the key of device {mine}" in text
    assert "remove state.json alone instead" in text and f"({mine} is the id" in text
    assert "remove the whole app directory" in text
