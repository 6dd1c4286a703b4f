"""docs/devices.md's words about the app directory and the calls' outcomes, checked with the
client's own messages: what a foreign file under one of the store's names says (the table's
"A directory, FIFO or symlink where the store keeps a file says `... remove it`"), the lock's
message within one process, the directory's mode, and `participate`'s outage and busy cases."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import httpx
import pytest

import sdk
from sdk import Client
from sdk.device_store import DeviceStoreError
from tests.coordinator.test_service_support import SoftmaxTrainer, local_data, refused_url


def _busy(request: httpx.Request) -> httpx.Response:
    return httpx.Response(503, json={"reason": "busy", "detail": "full"})


def _closed_app(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    Client("http://c", app).close()
    return app


@pytest.mark.parametrize("name", ["state.json", "pending.json"])
@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink"])
def test_a_foreign_file_where_the_store_keeps_one_says_remove_it(
    tmp_path: Path, name: str, kind: str
) -> None:
    # "A directory, FIFO or symlink where the store keeps a file says `... remove it`" (the
    # DeviceStoreError row: "remove the file named, and nothing else"), for register and
    # participate, before any request
    app = _closed_app(tmp_path)
    target = app / name
    if kind == "directory":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        (tmp_path / "elsewhere.json").write_text("{}")
        target.symlink_to(tmp_path / "elsewhere.json")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return _busy(request)

    with Client("http://c", app, transport=httpx.MockTransport(handler), retries=0) as client:
        calls = [lambda: client.participate(SoftmaxTrainer(), *local_data(0), task_id=1)]
        if name == "state.json":
            calls.append(client.register)
        for call in calls:
            with pytest.raises(DeviceStoreError) as caught:
                call()
            message = str(caught.value)
            assert message.startswith(str(target)), message
            assert message.endswith("remove it"), message
    assert seen == []


def test_a_second_client_of_this_process_names_the_fix(tmp_path: Path) -> None:
    # "AppDirInUse: plume-app is in use by another client of this process (4242): one client at
    # a time may use an app directory (close that Client first, or give each its own app_dir)",
    # "with exc.pid this process's id"
    app = tmp_path / "plume-app"
    with Client("http://c", app):
        with pytest.raises(sdk.AppDirInUse) as caught:
            Client("http://c", app)
    assert str(caught.value) == (
        f"{app} is in use by another client of this process ({os.getpid()}): one client at a "
        "time may use an app directory (close that Client first, or give each its own app_dir)"
    )
    assert caught.value.pid == os.getpid()
    assert Path(caught.value.path) == app


def test_an_open_directory_is_narrowed_keeping_setgid(tmp_path: Path) -> None:
    # "An existing one open to other users ... is narrowed when it is opened ...: the group and
    # other bits are cleared, and the owner's bits (and setgid) are kept."
    app = tmp_path / "app"
    app.mkdir()
    os.chmod(app, 0o2775)
    Client("http://c", app).close()
    assert stat.S_IMODE(app.stat().st_mode) == 0o2700


def test_a_path_naming_a_file_is_a_store_error_naming_it(tmp_path: Path) -> None:
    # "An app directory path naming a regular file (or under one) is a DeviceStoreError naming it"
    (tmp_path / "file").write_text("x")
    for path in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(DeviceStoreError, match=str(tmp_path / "file")):
            Client("http://c", path)


def test_a_symlinked_device_key_is_refused(tmp_path: Path) -> None:
    # "device_key is opened without following a symlink: a symlink there is refused (`...
    # cannot be opened as a regular file: it is a symlink`)"
    (tmp_path / "key").write_bytes(b"k" * 32)
    app = tmp_path / "app"
    app.mkdir()
    (app / "device_key").symlink_to(tmp_path / "key")
    with pytest.raises(
        DeviceStoreError, match="cannot be opened as a regular file: it is a symlink"
    ):
        Client("http://c", app)


def test_a_plain_module_is_refused_naming_the_wrapper(tmp_path: Path) -> None:
    # "the torch module itself instead of TorchTrainer(module) says `... got
    # mobile_sim.models.MLP; wrap a torch module: TorchTrainer(module)`"
    from mobile_sim.models import MLP

    with Client("http://c", tmp_path / "app", transport=httpx.MockTransport(_busy)) as client:
        with pytest.raises(
            TypeError,
            match=r"got mobile_sim\.models\.MLP; wrap a torch module: TorchTrainer\(module\)$",
        ):
            client.participate(MLP(), *local_data(0), task_id=1)  # type: ignore[arg-type]


def test_an_outage_is_raised_however_short_the_wait(tmp_path: Path) -> None:
    # "An outage the SDK sees as one is never None: when no check-in of the call was answered
    # and an attempt of the call failed on the network ..., the call raises
    # CoordinatorUnreachable ..., however short max_wait_s is ... (the attempts made so far are
    # named)". Short next to the retries' backoff (1.5 to 3 s), so the wait ends in it; not
    # 0.01 s, which could end before the first attempt on a loaded machine: nothing was sent,
    # so None (test_s66b_outage_slow_start)
    with refused_url() as url, Client(url, tmp_path / "app") as client:
        with pytest.raises(sdk.CoordinatorUnreachable, match=r" in \d+ attempts?: "):
            client.participate(SoftmaxTrainer(), *local_data(0), task_id=1, max_wait_s=1.0)


def test_busy_until_the_wait_ends_is_none_with_no_answer(tmp_path: Path) -> None:
    # "last_check_in is None when no check-in of this call was answered usably within the wait:
    # the coordinator answered busy (5xx or 429, retried)"; "a 5xx or 429 on every attempt, when
    # the wait outlasts the retries, is that ClientError"
    with Client("http://c", tmp_path / "a", transport=httpx.MockTransport(_busy)) as client:
        assert (
            client.participate(SoftmaxTrainer(), *local_data(0), task_id=1, max_wait_s=0.3) is None
        )
        assert client.last_check_in is None
    waits: list[float] = []
    with Client(
        "http://c", tmp_path / "b", transport=httpx.MockTransport(_busy), sleep=waits.append
    ) as client:
        with pytest.raises(sdk.ClientError, match=r"^503 busy: full \(after 5 attempts\)$"):
            client.participate(SoftmaxTrainer(), *local_data(0), task_id=1, max_wait_s=600)


def test_any_path_to_the_directory_is_the_same_directory(tmp_path: Path) -> None:
    # "A second Client or AsyncClient on an app_dir (by any path to it) while a client of the
    # same process on it is not closed yet raises AppDirInUse too"
    app = tmp_path / "app"
    (tmp_path / "link").symlink_to(app, target_is_directory=True)
    with Client("http://c", app):
        for make in (
            lambda: Client("http://c", tmp_path / "link"),
            lambda: sdk.AsyncClient("http://c", tmp_path / "link"),
            lambda: sdk.AsyncClient("http://c", f"{app}/../app"),
        ):
            with pytest.raises(sdk.AppDirInUse):
                make()


def test_another_process_holding_the_directory_is_named(tmp_path: Path) -> None:
    # "AppDirInUse: plume-app is in use by process 4242: one process at a time may use an app
    # directory (close that process's Client, or give each process its own app_dir)"
    import subprocess
    import sys

    app = tmp_path / "plume-app"
    root = Path(__file__).resolve().parents[2]
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from sdk import Client; c = Client('http://c', sys.argv[1]); "
            "print('held', flush=True); sys.stdin.read()",
            str(app),
        ],
        cwd=root,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(sdk.AppDirInUse) as caught:
            Client("http://c", app)
        assert str(caught.value) == (
            f"{app} is in use by process {holder.pid}: one process at a time may use an app "
            "directory (close that process's Client, or give each process its own app_dir)"
        )
        assert caught.value.pid == holder.pid
    finally:
        holder.communicate("", timeout=30)
    # "the kernel drops it" when the process exits
    Client("http://c", app).close()
