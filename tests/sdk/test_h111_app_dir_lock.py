"""The app-directory lock: one process at a time may use an `app_dir` (`sdk.AppDirInUse`)."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import ErrorFeedback
from sdk import AppDirInUse, AsyncClient, Client, ClientError, device_store
from sdk.device_store import DeviceStore, PendingUpload

ROOT = Path(__file__).resolve().parents[2]

# What the "other process" (the app's background worker) does: open the store on the same
# directory, and if it can, spend the residual on an upload of its own.
_OTHER = """
import json, sys
import numpy as np
from compression import ErrorFeedback
from sdk.device_store import DeviceStore, PendingUpload
try:
    from sdk import AppDirInUse
except ImportError:  # the SDK before the lock
    AppDirInUse = ()
try:
    store = DeviceStore(sys.argv[1])
except AppDirInUse as exc:
    print(json.dumps({"refused": str(exc), "path": str(exc.path), "pid": exc.pid}))
    raise SystemExit(0)
held = store.load_residual(4, 1)
spent = ErrorFeedback(4)
store.save_pending(PendingUpload(7, "worker-key", b"worker-frame", task_id=1), spent)
print(json.dumps({"opened": True, "residual": held.residual.tolist()}))
"""


def _other(app_dir: Path) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", _OTHER, str(app_dir)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def _residual(value: float) -> ErrorFeedback:
    ef = ErrorFeedback(4)
    ef.residual = np.full(4, value, np.float32)
    return ef


def test_a_second_process_cannot_spend_the_residual_or_replace_the_pending_upload(
    tmp_path: Path,
) -> None:
    # Prepare: the app holds a pending upload whose residual assumes it was sent.
    store = DeviceStore(tmp_path)
    store.save_pending(PendingUpload(7, "app-key", b"app-frame", task_id=1), _residual(0.5))

    # Execute: the background worker opens the same app_dir while the app runs.
    seen = _other(tmp_path)

    # Assert: it was refused at once, named the directory and the app's pid, and the app's
    # upload and residual are as the app left them. Before the lock the worker read the same
    # residual, spent it on its own upload and replaced the app's pending upload with it.
    assert "refused" in seen, f"a second process used the app directory: {seen}"
    assert seen["path"] == str(tmp_path)
    assert seen["pid"] == os.getpid()
    held = store.load_pending()
    assert held is not None and held.key == "app-key" and held.frame == b"app-frame"
    kept = store.load_residual(4, 1)
    assert kept is not None and np.array_equal(kept.residual, np.full(4, 0.5, np.float32))


# A process that opens the store and says whether it could: {"opened": True} or why not.
_OPEN = """
import json, sys, time
from sdk import AppDirInUse
from sdk.device_store import DeviceStore
try:
    store = DeviceStore(sys.argv[1])
except AppDirInUse as exc:
    print(json.dumps({"refused": str(exc), "pid": exc.pid}), flush=True)
    raise SystemExit(0)
print(json.dumps({"opened": True}), flush=True)
if len(sys.argv) > 2:  # hold it until killed
    time.sleep(60)
"""


def _try_open(app_dir: Path) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", _OPEN, str(app_dir)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def test_the_lock_of_a_killed_holder_is_released_by_the_kernel(tmp_path: Path) -> None:
    # Prepare: another process opens the app directory and holds it.
    # (the with block closes the pipes: left open, the collector closes them later, with a
    # ResourceWarning in whatever test runs then)
    with subprocess.Popen(
        [sys.executable, "-c", _OPEN, str(tmp_path), "hold"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    ) as holder:  # fmt: skip
        try:
            assert holder.stdout is not None
            assert json.loads(holder.stdout.readline()) == {"opened": True}
            with pytest.raises(AppDirInUse) as refused:
                DeviceStore(tmp_path)
            assert refused.value.pid == holder.pid
            assert refused.value.path == tmp_path
            assert f"in use by process {holder.pid}" in str(refused.value)

            # Execute: the holder dies without closing anything.
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=30)
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait(timeout=30)

    # Assert: the directory opens again at once.
    with DeviceStore(tmp_path) as store:
        assert store.root == tmp_path


def test_close_the_with_block_and_garbage_collection_release_the_lock(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path)
    store.close()
    store.close()  # idempotent
    assert _try_open(tmp_path) == {"opened": True}

    with DeviceStore(tmp_path) as store:
        pass
    assert _try_open(tmp_path) == {"opened": True}

    store = DeviceStore(tmp_path)
    del store  # dropped without close (refcounting frees it here)
    assert _try_open(tmp_path) == {"opened": True}


def test_a_closed_store_refuses_to_be_used(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path)
    store.close()
    with pytest.raises(ValueError, match="this DeviceStore is closed"):
        store.save_residual(_residual(1.0), 1)
    with pytest.raises(ValueError, match="closed"):
        store.load_pending()
    assert not (tmp_path / "residual-1.bin").exists()


def test_stores_of_one_process_share_its_lock_until_the_last_closes(tmp_path: Path) -> None:
    # Prepare: the same directory twice in one process, once through a symlink.
    link = tmp_path / "link"
    (tmp_path / "app").mkdir()
    link.symlink_to(tmp_path / "app")
    first = DeviceStore(tmp_path / "app")
    second = DeviceStore(link)

    # Execute / Assert: another process is refused while either is open.
    first.close()
    assert "refused" in _try_open(tmp_path / "app")
    second.save_residual(_residual(2.0), 1)  # still usable
    second.close()
    assert _try_open(tmp_path / "app") == {"opened": True}


def test_threads_opening_one_directory_share_the_lock(tmp_path: Path) -> None:
    stores: list[DeviceStore] = []

    def open_one() -> None:
        stores.append(DeviceStore(tmp_path))

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(stores) == 8
    for s in stores[:-1]:
        s.close()
    with pytest.raises(AppDirInUse):  # a fresh open file is refused: someone still holds it
        _fresh_flock(tmp_path)
    stores[-1].close()
    _fresh_flock(tmp_path)


def _fresh_flock(path: Path) -> None:
    """Flock `path` through a new open file, as another process would (AppDirInUse if held)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AppDirInUse(path, None) from None
    finally:
        os.close(fd)


def test_the_lock_is_not_inherited_across_exec(tmp_path: Path) -> None:
    with DeviceStore(tmp_path) as store:
        assert fcntl.fcntl(store._hold.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC


def test_a_forked_child_does_not_inherit_the_lock(tmp_path: Path) -> None:
    # Prepare: this process holds the directory, then forks.
    store = DeviceStore(tmp_path)
    read_end, write_end = os.pipe()
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then stay alive until the parent says so
        code = 0
        try:
            os.close(read_end)
            try:
                DeviceStore(tmp_path)
                seen = "opened"
            except AppDirInUse:
                seen = "refused"
            try:
                store.load_pending()
                inherited = "usable"
            except ValueError as exc:
                inherited = "refused" if "before a fork" in str(exc) else str(exc)
            os.write(write_end, f"{seen} {inherited}".encode())
            os.read(go_read, 1)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(write_end)
    try:
        # Execute: the child tries the directory and the store it inherited.
        seen = os.read(read_end, 100).decode()

        # Assert: both refused; and once the parent closes, the lock is free even though
        # the child still runs (it dropped its copy of the descriptor at the fork).
        assert seen == "refused refused"
        store.close()
        _fresh_flock(tmp_path)
    finally:
        os.write(go_write, b"x")
        _, status = os.waitpid(pid, 0)
        for fd in (read_end, go_read, go_write):
            os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0


def test_without_fcntl_the_store_says_the_platform_is_unsupported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(device_store, "fcntl", None)
    with pytest.raises(device_store.UnsupportedPlatform, match="not Windows"):
        DeviceStore(tmp_path)


def test_a_client_holds_its_app_directory(tmp_path: Path) -> None:
    # A Client opens its DeviceStore, so a second process's Client on the same app_dir is
    # refused before any request, and the lock ends with the Client object.
    # close() gives the lock back at once (a client that made a request sits in reference
    # cycles: dropping it would wait for a collection).
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": "bad_request", "detail": "no"})

    client = Client(
        "http://127.0.0.1:9",
        app_dir=str(tmp_path),
        retries=0,
        transport=httpx.MockTransport(refuse),
    )
    with pytest.raises(ClientError):
        client.register()
    seen = _try_open(tmp_path)
    assert seen.get("pid") == os.getpid()
    client.close()
    assert _try_open(tmp_path) == {"opened": True}


def test_an_async_client_releases_its_app_directory_on_aclose(tmp_path: Path) -> None:
    # Prepare: an AsyncClient that made a (refused) request
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": "bad_request", "detail": "no"})

    async def run() -> tuple[dict[str, Any], dict[str, Any]]:
        async with AsyncClient(
            "http://127.0.0.1:9",
            app_dir=str(tmp_path),
            retries=0,
            transport=httpx.MockTransport(refuse),
        ) as client:
            with pytest.raises(ClientError):
                await client.register()
            held = _try_open(tmp_path)
        return held, _try_open(tmp_path)  # `client` is still referenced here

    # Execute
    held, after = asyncio.run(run())

    # Assert
    assert held.get("pid") == os.getpid()
    assert after == {"opened": True}


def test_a_closed_store_is_refused_while_another_store_holds_the_directory(
    tmp_path: Path,
) -> None:
    # The process still holds the lock through `other`; `closed` gave its share back.
    other = DeviceStore(tmp_path)
    closed = DeviceStore(tmp_path)
    closed.close()
    with pytest.raises(ValueError, match="this DeviceStore is closed"):
        closed.save_residual(_residual(1.0), 1)
    assert other.load_residual(4, 1) is None
    other.close()


@settings(derandomize=True, max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3)), max_size=12))
def test_the_directory_is_locked_exactly_while_a_store_of_the_process_is_open(
    steps: list[tuple[bool, int]],
) -> None:
    # Prepare: open (True) or close (False) stores in any order, closing one twice included.
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        stores: list[DeviceStore] = []
        open_ones: set[int] = set()
        for opening, pick in steps:
            # Execute
            if opening:
                stores.append(DeviceStore(root))
                open_ones.add(len(stores) - 1)
            elif stores:
                i = pick % len(stores)
                stores[i].close()
                open_ones.discard(i)
            # Assert: another open file of the directory is refused iff a store is open.
            if open_ones:
                with pytest.raises(AppDirInUse):
                    _fresh_flock(root)
            else:
                _fresh_flock(root)
        for s in stores:
            s.close()
        _fresh_flock(root)
