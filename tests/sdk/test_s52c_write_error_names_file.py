"""A write of the app directory that fails inside os.write or os.fsync (a full disk, EIO) names
the file it was writing and what to do: those calls raise with no file name, so the app saw a
bare "[Errno 28] No space left on device". The errno, and so the OSError subclass, is the
write's."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

import sdk.device_store as device_store
from sdk.device_store import DeviceStore

from .test_s24h_failed_write_temp import SPEC, _ef


@pytest.mark.parametrize("fault", ["write", "fsync"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EACCES])
def test_a_failed_write_names_its_file_and_keeps_its_errno(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str, code: int
) -> None:
    # Prepare
    store = DeviceStore(tmp_path)
    store.save_residual(_ef(1.0), 7, SPEC)

    def fail(*_: Any) -> Any:
        raise OSError(code, os.strerror(code))

    # Execute
    with monkeypatch.context() as m:
        m.setattr(device_store.os, fault, fail)
        with pytest.raises(OSError) as caught:
            store.save_residual(_ef(2.0), 8, SPEC)

    # Assert: the file, the errno and its subclass, the fix; the directory as it was
    assert caught.value.errno == code
    assert type(caught.value) is type(OSError(code, "x"))
    assert caught.value.filename == str(tmp_path / "residual-8.bin")
    assert os.strerror(code) in str(caught.value)
    assert "call again once it can be written" in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["residual-7.bin"]


def test_an_error_that_names_its_file_is_raised_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the rename fails, naming its files itself
    store = DeviceStore(tmp_path)
    raised = OSError(errno.EXDEV, os.strerror(errno.EXDEV), "a", None, "b")

    def fail(*_: Any) -> Any:
        raise raised

    # Execute
    with monkeypatch.context() as m:
        m.setattr(device_store.os, "replace", fail)
        with pytest.raises(OSError) as caught:
            store.save_residual(_ef(1.0), 7, SPEC)

    # Assert
    assert caught.value is raised
