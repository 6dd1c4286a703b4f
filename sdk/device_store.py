"""The app directory: what a device keeps between launches so a restarted app resumes.

Layout (every file replaced atomically: write to a temp file, fsync, rename, fsync the directory;
the temp files a crash left are removed when the directory is opened; a directory the store
makes, the app directory or one on its path, is synced into its parent once made):

    device_key       32-byte Ed25519 private key (every file mode 0600, the directory 0700)
    state.json       device id, and the version, SHA-256 digest and exactness of each model held
    model.f32        the model of task `task_id`, little-endian float32[d], at state.json's
                     `model_version` (`model_digest`, `model_exact`, and `model_seq` its write
                     sequence number): the one model an older SDK held, read as it wrote it
    model-<t>.f32    the model of task t, its metadata in state.json `models["<t>"]` (`version`,
                     `digest`, `exact`, `seq`): with model.f32, at most MAX_MODELS models, the
                     least recently written (lowest sequence number) dropped past that
    residual-<t>.bin the error-feedback residual of task t (`ErrorFeedback.to_bytes`, then a
                     32-byte trailer naming t, the file's write sequence number and the layout
                     of the model the residual is of): at most MAX_RESIDUALS tasks, the least
                     recently written (lowest sequence number) dropped past that. A residual
                     saved without its layout has the 24-byte trailer (no layout), and an
                     older SDK's trailer is 16 bytes (no sequence number): such files still
                     load, matched by size only, and the latter count as written before any
                     that has a sequence number
    residual.bin     the residual an older SDK kept for every task (no trailer), until the first
                     task that uses it with a matching size claims it (state.json
                     `legacy_residual_task`, and `legacy_residual_seq`, the write sequence
                     number the claimed file counts as until it has a trailer); see
                     `_claim_legacy`
    pending.json     an upload not yet acknowledged: round, idempotency key, the frame's size
                     and SHA-256, its task, layout and, when its assignment asked for one, the
                     training loss its upload sends (`train_loss`, absent in older files)
    pending.frame    its frame bytes; pending.residual the residual that assumes it
    pending.refused  the residual after a refusal, until it replaces its task's residual file
    accepted-<r>.json  an accepted upload to round r whose outcome is not known yet: round,
                     layout, size and SHA-256 of accepted-<r>.frame (at most MAX_ACCEPTED
                     records; the oldest is forgotten past that)
    accepted-<r>.frame what that upload carried, as an update frame decoding under the layout:
                     the frame sent (plain round), or the values a masked input stood for
    accepted-<r>.residual  the residual that assumes a secure record, until it replaces
                     its task's residual file
    accepted-<r>.settled   the residual with the record's content added back, likewise
    accepted.json, accepted.frame (and .residual, .settled): the single record an older SDK
                     kept; moved to accepted-<r>.* when the directory is opened

Every staged residual (pending.residual, pending.refused, accepted-<r>.residual and .settled)
carries the trailer of its task, so a crash-interrupted step finishes into that task's file;
one without a trailer (an older SDK's, or of an upload or record that names no task) belongs to
the legacy residual. pending.json and accepted-<r>.json name their task (`task_id`), absent in
files an older SDK wrote.

While a `DeviceStore` is open its process holds an exclusive `flock` on the directory itself
(no lock file): another process's store on it raises `AppDirInUse` (see `_lock`).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import gc
import hashlib
import itertools
import json
import logging
import operator
import os
import re
import stat
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple

try:
    import fcntl
except ImportError:  # Windows: no flock, and the SDK supports POSIX systems only
    fcntl = None  # type: ignore[assignment]

import numpy as np
import numpy.typing as npt

from compression import ErrorFeedback, ModelSpec
from protocol import auth
from protocol.messages import MessageError, check_incarnation, check_train_loss

# Damage the store works around rather than refuses (a device must keep training), said here.
log = logging.getLogger("plume.sdk")

__all__ = [
    "AcceptedUpload",
    "AppDirInUse",
    "DeviceIdentityLost",
    "DeviceStore",
    "DeviceStoreError",
    "PendingUpload",
    "UnsupportedPlatform",
    "MAX_ACCEPTED",
    "MAX_MODELS",
    "MAX_RESIDUALS",
    "MAX_SPEC_JSON_BYTES",
]

KEY_BYTES = 32
# Caps on files read back whole: a foreign or runaway file is refused before it is read.
_MAX_JSON_BYTES = 1 << 20
# The largest model layout (its JSON, tensor names included) kept with a pending upload, so
# that pending.json always stays under the read cap above.
MAX_SPEC_JSON_BYTES = _MAX_JSON_BYTES // 2
_MAX_FRAME_BYTES = 1 << 31
_HEX_DIGITS = frozenset("0123456789abcdef")
# Most accepted uploads kept while their rounds' outcomes are unknown. A check-in settles one,
# so a device that checks in before each round holds one or two; past this bound the oldest is
# forgotten (counted as delivered), which keeps the app directory bounded against a coordinator
# that never answers `round_outcome` (docs/http-api.md, "What became of an accepted upload").
MAX_ACCEPTED = 8
# The files of one accepted record: accepted-<round id>.<kind>.
_RECORD_FILE = re.compile(r"accepted-([1-9][0-9]{0,18})\.(json|frame|residual|settled)")
# Most tasks whose residuals are kept (residual-<task id>.bin). Past it the least recently
# written is dropped: that task's next update then lacks what its residual held, as after a
# fresh install (docs/devices.md, "Error feedback across tasks").
MAX_RESIDUALS = 8
_RESIDUAL_FILE = re.compile(r"residual-(0|[1-9][0-9]{0,18})\.bin")
# Most tasks whose models are held (model.f32 and model-<task id>.f32), the bound on residuals:
# a device alternating between tasks downloads a delta from its own version of each. Past it
# the least recently written is dropped: that task's next download is a whole snapshot, as
# after a fresh install (docs/devices.md, "Held models across tasks").
MAX_MODELS = MAX_RESIDUALS
_MODEL_FILE = re.compile(r"model-(0|[1-9][0-9]{0,18})\.f32")
_TASK_KEY = re.compile(r"0|[1-9][0-9]{0,18}")
_LAYOUT_HEX = re.compile(r"[0-9a-f]{16}")  # a held model's layout in state.json
_PRIMARY_MODEL = "model.f32"
# The state.json keys of the model in model.f32 (`task_id` names its task).
_PRIMARY_KEYS = ("model_version", "model_digest", "model_exact", "model_seq", "model_layout")
# The temp file of each file this module writes (`_write`): its name, then ".tmp".
_STORE_TEMP = re.compile(
    r"(device_key|state\.json|model(-[0-9]{1,19})?\.f32|residual(-[0-9]{1,19})?\.bin"
    r"|pending\.(json|frame|residual|refused)"
    r"|accepted(-[0-9]{1,19})?\.(json|frame|residual|settled))\.tmp"
)
# The trailer after a task's residual: magic, the task id, the write sequence number
# (little-endian u64s), then the layout of the model the residual is of (its
# `ModelSpec.fingerprint`, 8 bytes). The sequence orders residuals by recency for the bound
# above without the wall clock (a clock set back, or coarse mtimes, made mtime order drop a
# fresh residual): each residual written gets one more than the highest held. The layout tells,
# after a restart, a task whose model was replaced by one of the same size in another layout
# (the client knows it within one process only). A residual saved without its layout gets the
# trailer without it (_TASK_MAGIC), as the SDK before the layout wrote every one, and an older
# SDK wrote the shortest trailer (_OLD_MAGIC, task id only): both are still read, and such a
# residual is matched by its size alone.
_LAYOUT_MAGIC = b"PLUMTLAY"
_LAYOUT_BYTES = 8  # ModelSpec.fingerprint
_LAYOUT_TRAILER = len(_LAYOUT_MAGIC) + 16 + _LAYOUT_BYTES
_TASK_MAGIC = b"PLUMTSEQ"
_TRAILER = len(_TASK_MAGIC) + 16
_OLD_MAGIC = b"PLUMTASK"
_OLD_TRAILER = len(_OLD_MAGIC) + 8
# Write sequence numbers stay below this (one per residual written: an app never comes near it).
# A trailer naming one at or past it is foreign or corrupt: that file counts as having no
# sequence number (written before any that has one). A number just below it (also only from a
# foreign file) makes the next write renumber the residuals held 0, 1, ... in their order
# (`_renumber`), so no write ever ties with, or overflows past, a number already held.
_SEQ_LIMIT = 2**63
_EF_HEADER = 16  # ErrorFeedback.to_bytes's header; its bytes 8..12 hold the scalar count


class DeviceStoreError(ValueError):
    """A file in the app directory is corrupt, foreign or unsafe (named in the message)."""


class DeviceIdentityLost(DeviceStoreError):
    """The app directory is a registered device's (state.json names its device id; a state.json
    that does not read may) but its key is gone: `device_key` is missing, unreadable, or the
    key of another device than the one state.json names. Refused rather than made anew: under
    a new key the device's uploads are another device's, whose re-sent pending upload and
    records of accepted uploads the coordinator answers as never received, so their content
    would go back into the residual and count twice in the model. The message says what to do: restore that device's
    `device_key`, or remove the whole app directory to start over as a new device (which
    discards the residual, the unsent part of its earlier updates). `path` is the key file."""

    def __init__(self, path: Path, problem: str, held: list[str], hint: str = "") -> None:
        self.path = path
        super().__init__(
            f"{path}: this device's identity is lost: {problem}, but {'; '.join(held)}. The "
            "residual, pending upload and upload records here are that device's and are never "
            "used under another key (the coordinator would count their content a second time). "
            "Restore that device's device_key into the app directory, or, to start over as a "
            "new device, remove the whole app directory: that discards the unsent "
            "error-feedback residual (what this device's earlier updates left out) and any "
            f"unacknowledged upload{hint}"
        )


class UnsupportedPlatform(RuntimeError):
    """This platform cannot lock an app directory (it has no `fcntl.flock`: Windows). The SDK
    refuses to run there rather than let two processes act as one device unseen."""


class AppDirInUse(RuntimeError):
    """Another process holds the app directory `path` (its `DeviceStore`, or a `Client` on it,
    is open there), or another `Client` of this process does (`DeviceStore.claim`; `pid` is
    then this process's). `pid` is the holder's process id where the OS tells it (Linux's
    /proc/locks), else None. Not a `DeviceStoreError`: nothing in the directory is wrong, so an app
    must not repair or clear it on this error; try again once the other process is done."""

    def __init__(self, path: Path, pid: int | None, *, by_client: bool = False) -> None:
        self.path = path
        self.pid = pid
        if by_client:
            super().__init__(
                f"{path} is in use by another client of this process ({pid}): one client at a "
                "time may use an app directory (close that Client first, or give each its own "
                "app_dir)"
            )
            return
        holder = "another process" if pid is None else f"process {pid}"
        super().__init__(
            f"{path} is in use by {holder}: one process at a time may use an app directory "
            "(close that process's Client, or give each process its own app_dir)"
        )


class _Trailer(NamedTuple):
    """What a stored residual's trailer names."""

    task: int
    seq: int | None  # the write sequence number; None in an older SDK's 16-byte trailer
    layout: bytes | None  # ModelSpec.fingerprint; None in the 16- and 24-byte trailers


class PendingUpload:
    """An encoded update waiting for the coordinator's receipt."""

    __slots__ = (
        "round_id", "key", "frame", "dense_bytes", "spec", "task_id", "return_refused",
        "train_loss",
    )  # fmt: skip

    def __init__(
        self,
        round_id: int,
        key: str,
        frame: bytes,
        dense_bytes: int = 0,
        spec: ModelSpec | None = None,
        task_id: int | None = None,
        return_refused: bool = True,
        train_loss: str | None = None,
    ) -> None:
        self.round_id = round_id
        self.key = key
        self.frame = frame
        self.dense_bytes = dense_bytes  # the dense fp32 size of the same update (ledger baseline)
        # The layout the frame decodes under: after a restart it lets a refused upload's
        # content go back into the residual (None for records written before it was kept).
        self.spec = spec
        # The task whose residual a refusal returns the content to (None: written by an older
        # SDK, or by a caller that names no task: the legacy residual's).
        self.task_id = task_id
        # False (a task with DP: `Assignment.return_refused`): a refusal for good drops the
        # content as if delivered instead of returning it to the residual; kept with the upload
        # (and with its accepted record), so a resumed one after a restart is settled alike.
        self.return_refused = return_refused
        # The training loss the upload sends (`?train_loss=`), as `format_train_loss` wrote it
        # (a decimal of at most 32 characters, `check_train_loss`), when its assignment asked
        # for one (`Assignment.report_loss`); None sends none. Kept in pending.json, so an
        # upload re-sent after a restart carries the same signed query.
        self.train_loss = train_loss


class AcceptedUpload:
    """An upload the coordinator accepted whose round's outcome the device has not learnt:
    `frame` decodes under `spec` to the dense content (float32[d]) it added to the round."""

    __slots__ = ("round_id", "frame", "spec", "task_id", "return_refused")

    def __init__(
        self,
        round_id: int,
        frame: bytes,
        spec: ModelSpec,
        task_id: int | None = None,
        return_refused: bool = True,
    ) -> None:
        self.round_id = round_id
        self.frame = frame
        self.spec = spec
        self.task_id = task_id  # whose residual takes the content back (None: the legacy one)
        # False: a round that ends without the content drops it instead (see `PendingUpload`).
        self.return_refused = return_refused


def _fsync_dir(directory: Path) -> None:
    # A rename is durable only once the directory entry is on disk: without this a power loss
    # can bring back the old name after later files (e.g. pending.json) already persisted.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _no_directory(path: Path) -> None:
    """Raise `DeviceStoreError` if `path` is a directory: the store keeps a file under that
    name, and a foreign directory there must be named, not fail as a bare OSError."""
    if path.is_dir() and not path.is_symlink():
        raise DeviceStoreError(
            f"{path} is a directory where the app directory keeps a file: remove it"
        )


def _not_a_directory(path: Path) -> bool:
    """Whether something other than a directory (a file, a dangling symlink) is at `path`."""
    return os.path.lexists(path) and not path.is_dir()


def _write(
    path: Path, data: bytes | memoryview | tuple[bytes | memoryview, ...], mode: int = 0o600
) -> None:
    """Write `data` to `path` atomically (a temp file, fsync, rename). A tuple is written part
    after part, as one file: a caller need not join its parts into one more copy."""
    # Owner-only by default: the residual, model and pending frame derive from the user's data.
    tmp = path.with_name(path.name + ".tmp")
    _no_directory(path)
    _no_directory(tmp)
    # A leftover temp is removed, not opened: a FIFO there would block the open forever, and
    # a symlink would have the bytes written wherever it points (O_CREAT follows it).
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed `mode`; set it exactly
            for part in data if isinstance(data, tuple) else (data,):
                view = memoryview(part)
                while view:  # os.write may write less than asked (Linux caps a call at ~2 GiB)
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        # A failed write (ENOSPC, EIO) leaves no temp file behind: in a long-lived process on a
        # full disk each would hold its bytes until the directory is next opened, and a temp
        # named after a round (accepted-<r>.frame.tmp) is never written over. Best effort: the
        # error raised is the write's, and a temp this misses is removed at the next open (as
        # is one a crash left: tests stand for a crash with another exception, which keeps it).
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if exc.filename is not None or exc.errno is None:
            raise
        # os.write and os.fsync name no file: a bare "[Errno 28] No space left on device"
        # told the app neither where nor what to do. Same errno (and OSError subclass).
        raise OSError(
            exc.errno,
            f"{exc.strerror}; the app directory holds what it held before this write: call "
            "again once it can be written (do not clear it)",
            str(path),
        ) from exc
    _fsync_dir(path.parent)


def _replace(src: Path, dst: Path) -> None:
    """Rename a staged residual over `dst` (`DeviceStoreError` if `dst` is a directory)."""
    _no_directory(dst)
    os.replace(src, dst)
    _fsync_dir(dst.parent)


def _unlink(path: Path) -> None:
    _no_directory(path)
    path.unlink(missing_ok=True)
    _fsync_dir(path.parent)


# Every read opens a regular file only (lstat first: a device node is never opened, whatever
# opening it would do), without following a symlink (one would have a file outside the app
# directory read as the store's: its bytes sent as a residual, or its JSON taken for the
# device's state) and without blocking (opening a FIFO to read waits for a writer, forever);
# the type is checked again on the open file, so nothing swapped in after the lstat is read.
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


def _open_regular(path: Path) -> int | None:
    """A read-only descriptor on `path` if it is a regular file; None if it is missing or
    not one (a symlink, a FIFO, a directory...). See `_READ_FLAGS`."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return None
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _read_fd(fd: int, n: int) -> bytes:
    """Up to `n` bytes from `fd`'s position (fewer only at its end)."""
    chunks = []
    while n > 0:
        chunk = os.read(fd, min(n, 1 << 30))
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _read_sized(path: Path, size: int) -> bytes | None:
    """The `size` bytes of regular file `path`, or None if it is not one of that size (a
    directory, a FIFO, which would block the read, a symlink, or a file torn or grown)."""
    fd = _open_regular(path)
    if fd is None:
        return None
    try:
        if os.fstat(fd).st_size != size:
            return None
        raw = _read_fd(fd, size + 1)
    finally:
        os.close(fd)
    return raw if len(raw) == size else None


def _read(path: Path, limit: int, what: str) -> bytes:
    """The bytes of `path`, refusing a symlink, a non-regular file or one over `limit` bytes
    unread (`DeviceStoreError`); OSError (FileNotFoundError...) as the open raises it."""
    symlink = DeviceStoreError(
        f"{path} ({what}) is a symlink: the app directory's files are never read through one "
        "(it could name a file outside the directory); remove it"
    )
    # A directory or FIFO under the name: the table's remedy for it too (docs/devices.md).
    not_regular = DeviceStoreError(f"{path} ({what}) is not a regular file: remove it")
    mode = os.lstat(path).st_mode
    if stat.S_ISLNK(mode):
        raise symlink
    if not stat.S_ISREG(mode):
        raise not_regular
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        if path.is_symlink():  # swapped in after the lstat
            raise symlink from exc
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise not_regular
        if st.st_size > limit:
            raise DeviceStoreError(f"{path} ({what}) is {st.st_size} bytes, over the {limit} cap")
        # The file's size and one byte more, not the cap: os.read allocates what it is asked
        # for, 1 MiB for each small JSON file read. A file grown since the fstat is read on to
        # the cap, as before.
        raw = _read_fd(fd, st.st_size + 1)
        if len(raw) > st.st_size:
            raw += _read_fd(fd, limit + 1 - len(raw))
    finally:
        os.close(fd)
    if len(raw) > limit:  # grown since the check
        raise DeviceStoreError(f"{path} ({what}) is over the {limit}-byte cap")
    return raw


def _meta_check(meta: dict[str, Any]) -> str:
    """The check `save_pending` records in pending.json: SHA-256 of the other fields' JSON
    with sorted keys (a key, round id or task id that changed on disk must not read as
    another upload)."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


def _read_json(path: Path, what: str) -> dict[str, Any]:
    raw = _read(path, _MAX_JSON_BYTES, what)
    try:
        data = json.loads(raw)
    # ValueError also covers an integer past Python's 4300-digit limit, and RecursionError
    # nesting past the parser's depth: a foreign file must be the store's error, not those.
    except (ValueError, RecursionError) as exc:
        raise DeviceStoreError(f"{path} ({what}) is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DeviceStoreError(f"{path} ({what}) is not a JSON object")
    return data


def _trailer_bytes(task_id: int, seq: int, layout: bytes | None) -> bytes:
    """The trailer naming `task_id`, write sequence number `seq` and `layout` (None: the
    trailer without a layout)."""
    ids = task_id.to_bytes(8, "little") + seq.to_bytes(8, "little")
    return _TASK_MAGIC + ids if layout is None else _LAYOUT_MAGIC + ids + layout


def _residual_parts(
    ef: ErrorFeedback, task_id: int | None, seq: int, layout: bytes | None = None
) -> tuple[bytes | memoryview, ...]:
    """`ef` as stored, in the parts `_write` writes one after the other: `ErrorFeedback`'s
    header and values (`to_parts`: the values are a view of the residual's memory), then the
    trailer naming `task_id`, the write sequence number `seq` and the model's `layout` when
    known (no trailer for the legacy residual). Joining them (`to_bytes()` + trailer) made two
    copies the size of the model to write one file."""
    parts = ef.to_parts()
    if task_id is None:
        return parts
    return (*parts, _trailer_bytes(task_id, seq, layout))


def _head(fd: int) -> tuple[int, int, int] | None:
    """(the file's length, the scalar count its header names, where its values end) of a
    stored residual open at `fd` (read from position 0: its header only); None unless its
    length is its values' with or without one of the trailers."""
    n = os.fstat(fd).st_size
    head = _read_fd(fd, _EF_HEADER)
    if len(head) < _EF_HEADER:
        return None
    d = int.from_bytes(head[8:12], "little")
    body = _EF_HEADER + 4 * d
    if n - body not in (0, _OLD_TRAILER, _TRAILER, _LAYOUT_TRAILER):
        return None
    return n, d, body


def _peek(path: Path) -> tuple[int, bytes] | None:
    """(the scalar count a stored residual's header names, the bytes after its values), read
    from its header and end only; None for a file that is not a regular file (see
    `_open_regular`) whose length is its values' with or without one of the trailers."""
    fd = _open_regular(path)
    if fd is None:
        return None
    try:
        found = _head(fd)
        if found is None:
            return None
        n, d, body = found
        os.lseek(fd, body, os.SEEK_SET)
        tail = _read_fd(fd, n - body + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return (d, tail) if len(tail) == n - body else None


def _residual_size(path: Path) -> int | None:
    """The scalar count a stored residual holds (read from its header, checked against its
    length with or without a trailer), or None for a file that is neither."""
    found = _peek(path)
    return None if found is None else found[0]


def _trailer(path: Path) -> _Trailer | None:
    """What a stored residual's trailer names; None without a trailer (legacy) or with a
    foreign one."""
    found = _peek(path)
    return None if found is None else _parse_trailer(found[1])


def _parse_trailer(tail: bytes) -> _Trailer | None:
    """What the bytes after a residual's values name (see `_trailer`)."""
    task = int.from_bytes(tail[8:16], "little")
    if len(tail) == _LAYOUT_TRAILER and tail[: len(_LAYOUT_MAGIC)] == _LAYOUT_MAGIC:
        return _Trailer(task, int.from_bytes(tail[16:24], "little"), tail[24:])
    if len(tail) == _TRAILER and tail[: len(_TASK_MAGIC)] == _TASK_MAGIC:
        return _Trailer(task, int.from_bytes(tail[16:24], "little"), None)
    if len(tail) == _OLD_TRAILER and tail[: len(_OLD_MAGIC)] == _OLD_MAGIC:
        return _Trailer(task, None, None)
    return None


def _load_stored(path: Path, size: int | None) -> tuple[ErrorFeedback, _Trailer | None] | None:
    """The residual stored in `path` (of `size` scalars; None: any) and its trailer (None: it
    has none); None unless it is a whole one: missing, not a regular file (a FIFO, a
    symlink), torn, of another size, with a foreign trailer or values that fail their checks
    (`ErrorFeedback.from_bytes`: the CRC-32, finite values)."""
    fd = _open_regular(path)
    if fd is None:
        return None
    try:
        # One descriptor and one read of the whole file (the header read first, to refuse a
        # file of another size or length unread).
        try:
            found = _head(fd)
        except OSError:
            return None
        if found is None or (size is not None and found[1] != size):
            return None
        n, d, body = found
        os.lseek(fd, 0, os.SEEK_SET)
        raw = _read_fd(fd, n + 1)
    finally:
        os.close(fd)
    if len(raw) != n:
        return None  # torn or grown while read
    tail = raw[body:]
    trailer = _parse_trailer(tail) if tail else None
    if tail and trailer is None:
        return None
    try:
        return ErrorFeedback.from_bytes(raw[:body], d), trailer
    except ValueError:
        return None


def _layout_of(spec: ModelSpec | None, size: int, what: str) -> bytes | None:
    """`spec`'s fingerprint (None without one); `ValueError` if it is not of `size` scalars."""
    if spec is None:
        return None
    if spec.size != size:
        raise ValueError(f"{what}: a layout of {spec.size} scalars for a residual of {size}")
    return spec.fingerprint


def _spec_if(spec: ModelSpec | None, size: int) -> ModelSpec | None:
    """`spec` if it is a layout of `size` scalars, else None: a record or residual of another
    size names no layout (it is matched by size)."""
    return spec if spec is not None and spec.size == size else None


def _layout_if(spec: ModelSpec | None, size: int) -> bytes | None:
    """The fingerprint of `spec` if it is a layout of `size` scalars (`_spec_if`), else None."""
    return None if (kept := _spec_if(spec, size)) is None else kept.fingerprint


def _other_layout(a: bytes | None, b: bytes | None) -> bool:
    """Two layout fingerprints that are both known and differ (an unknown one, None, matches
    any: a residual or record saved without a layout is matched by size)."""
    return a is not None and b is not None and a != b


def _spec_layout(meta: dict[str, Any]) -> bytes | None:
    """The fingerprint of the layout a metadata file keeps (`spec`); None without a readable
    one (an older SDK's file, or one written without a layout)."""
    if "spec" not in meta:
        return None
    try:
        return ModelSpec.from_json(meta["spec"]).fingerprint
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _residual_task(path: Path) -> int | None:
    """The task a stored residual names in its trailer; None without one (legacy)."""
    found = _trailer(path)
    return None if found is None else found[0]


def _task_field(meta: dict[str, Any]) -> int | None:
    """A metadata file's `task_id`: None when absent (an older SDK's) or not a task id."""
    value = meta.get("task_id")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        return None
    return value


class _HeldModel(NamedTuple):
    """A held model as state.json names it: its task, its file's name, and its entry's fields
    as read (checked when the model is loaded)."""

    task: int
    name: str  # model.f32 or model-<task>.f32
    version: object
    digest: object
    exact: object
    seq: int  # the write sequence number; -1 without one (an older SDK's model.f32)
    # The model's layout (`ModelSpec.fingerprint`, hex) as a download of it showed it; None
    # when no download did (an empty delta chain, an SDK from before the field).
    layout: object = None

    @property
    def primary(self) -> bool:
        return self.name == _PRIMARY_MODEL

    def meta(self) -> dict[str, Any]:
        meta = {"version": self.version, "digest": self.digest, "exact": self.exact}
        if self.layout is not None:
            meta["layout"] = self.layout
        return meta


def _layout_field(value: object) -> bytes | None:
    """A held model's layout as state.json holds it (16 lowercase hex digits); None for none,
    or for anything else (foreign: the layout counts as not known)."""
    if isinstance(value, str) and _LAYOUT_HEX.fullmatch(value):
        return bytes.fromhex(value)
    return None


def _seq_field(value: object) -> int:
    """A model's write sequence number as state.json holds it; -1 for none, or for one that is
    no integer in [0, 2^63) (foreign: counted as written before any that has one)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _SEQ_LIMIT:
        return value
    return -1


def _held_models(st: dict[str, Any]) -> dict[int, _HeldModel]:
    """The models state.json `st` names, by task: model.f32's (`task_id` with `model_version`,
    as an older SDK wrote it) and model-<t>.f32's (`models`). An entry that is no JSON object,
    or under a key that is no task id, names none; model.f32's wins over a `models` entry of
    the same task (an older SDK, run in between, wrote model.f32 for a task held there)."""
    held: dict[int, _HeldModel] = {}
    models = st.get("models")
    if isinstance(models, dict):
        for key, meta in models.items():
            if not (isinstance(key, str) and _TASK_KEY.fullmatch(key) and isinstance(meta, dict)):
                continue
            task = int(key)
            if task < 2**63:
                held[task] = _HeldModel(
                    task, f"model-{task}.f32", meta.get("version"), meta.get("digest"),
                    meta.get("exact", False), _seq_field(meta.get("seq")), meta.get("layout"),
                )  # fmt: skip
    primary = _task_field(st)
    if primary is not None and "model_version" in st:
        held[primary] = _HeldModel(
            primary, _PRIMARY_MODEL, st["model_version"], st.get("model_digest"),
            st.get("model_exact", False), _seq_field(st.get("model_seq")), st.get("model_layout"),
        )  # fmt: skip
    return held


def _by_recency(held: dict[int, _HeldModel]) -> list[_HeldModel]:
    """`held`'s models, the least recently written first (write sequence number, then task)."""
    return sorted(held.values(), key=lambda m: (m.seq, m.task))


def _train_loss(text: object) -> str | None:
    """`text` if it is a training loss as an upload's query sends it (`check_train_loss`: a
    decimal of at most 32 characters in [0, 1e6]), else None."""
    try:
        check_train_loss(text)
    except MessageError:
        return None
    assert isinstance(text, str)
    return text


def _check_task_id(task_id: int | None, what: str) -> None:
    """Raise `ValueError` for a task id the store could not read back (`_task_field`)."""
    if task_id is not None and (
        isinstance(task_id, bool) or not isinstance(task_id, int) or not 0 <= task_id < 2**63
    ):
        raise ValueError(f"{what}: task id {task_id!r} is not in [0, 2^63); not saved")


def _count(meta: dict[str, Any], name: str, path: Path, default: int | None = None) -> int:
    value = meta.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise DeviceStoreError(f"{path}: {name} must be a non-negative integer")
    return value


# `DeviceStore` holds an exclusive `flock` on the app directory itself while open, so two
# processes (an app and its background worker) never use one app directory at once: both would
# act as the same device, each spending the same residual on an upload of its own and
# overwriting the other's pending upload. The directory, not a lock file in it: nothing is
# added to the layout, and no file can be removed, replaced by a symlink or left behind.
class _Hold:
    """This process's flock on one app directory, shared by every `DeviceStore` the process
    has open on it (`users`): a flock belongs to an open file, so a second open of the
    directory in this process would be refused by the first's lock. `claim` is the token of
    the one store a `Client` of this process uses it through (`DeviceStore.claim`), or None."""

    __slots__ = ("claim", "fd", "key", "pid", "tokens")

    def __init__(self, fd: int, key: tuple[int, int]) -> None:
        self.fd = fd  # -1 once closed
        self.key = key  # the directory's (st_dev, st_ino): the same directory by any path
        self.pid = os.getpid()
        # The tokens of the stores sharing it: adding and discarding one are each a single
        # step, and a release done twice (re-run after an interrupt) is a release done once.
        self.tokens: set[object] = set()
        self.claim: object | None = None

    @property
    def users(self) -> int:
        return len(self.tokens)

    def here(self) -> bool:
        """Whether this process holds the lock through this hold (False once released, and
        in a forked child: the child does not inherit it)."""
        return bool(self.tokens) and self.pid == os.getpid()


# `_HOLDS` changes only under `_HOLDS_GUARD`, a plain (non-reentrant) lock. A store's release
# can run in a garbage collection, which may start in any allocation, also in a thread inside
# the guard: a release that waited for the guard would then wait for its own thread for ever.
# So a release is queued (`_RELEASES`, whose appends need no lock) and done by whoever holds the
# guard: at once if it is free, else by its holder on the way out (`_Guarded.__exit__`). A
# release run re-entrantly in the middle of `_lock` is queued too, so it cannot close a
# descriptor `_lock` has just counted a user of.
#
# The guard must also survive a KeyboardInterrupt (any exception a signal handler raises), which
# CPython raises at a Python function's entry or as a C call returns. Two rules make it so:
# - Who holds the guard (`_GUARD_OWNER`) changes with the lock in one C call, with no Python
#   code in between (`_take`, `_give`): the guard is never held with no holder recorded (the
#   state that made the next open or close wait for ever), nor recorded as held when free.
# - The record names the holder's region, the frame that gives the guard back (the frame of
#   the `with _Guarded()`, `_drain`'s own, or the one calling os.fork while at that call). An
#   interrupt that kills the region first (at `__exit__`'s entry, say) leaves the guard held by
#   a region that is gone: whoever next waits for the guard sees that holder's stack without
#   the frame (`_running`), and frees it. Other threads still wait while the region runs, and
#   the holder's own finalizers still queue their releases (`_held_here`).
_HOLDS: dict[tuple[int, int], _Hold] = {}
_HOLDS_GUARD = threading.Lock()
# [(thread ident, region frame, the frame's f_lasti for the fork hooks' hold else None)] while
# the guard is held, [] while free.
_GUARD_OWNER: list[tuple[int, FrameType, int | None]] = []
_RELEASES: collections.deque[tuple[_Hold, object]] = collections.deque()
_POLL_S = 0.05  # how often a thread waiting for the guard looks for a holder that is gone
# How long `DeviceStore.claim`'s collection waits for another thread's to end (CPython skips
# a collection asked for while another runs) before it looks at the claim again.
_CLAIM_WAIT_S = 5.0


def _collect(timeout: float) -> None:
    """One full garbage collection run by this thread. While another thread's collection runs,
    CPython skips the one asked for here (`gc.collect()` returns at once, no callback fires):
    then wait, up to `timeout` seconds in all, for that one to end, and ask again. (Asked for
    from inside this thread's own collection, a finalizer creating a client, every ask is
    skipped and it waits the whole `timeout`.)"""
    me = threading.get_ident()
    ran, ended = threading.Event(), threading.Event()

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info.get("generation") == 2 and threading.get_ident() == me:
            ran.set()
        elif phase == "stop":
            ended.set()

    deadline = time.monotonic() + timeout
    try:
        gc.callbacks.append(watch)
        while True:
            ended.clear()
            gc.collect()
            if ran.is_set() or time.monotonic() >= deadline:
                return
            # A "stop" can reach `watch` before CPython drops its collecting flag (a callback
            # after ours that lets the GIL go): look again every `_POLL_S`, not only on a stop.
            ended.wait(min(_POLL_S, max(0.0, deadline - time.monotonic())))
    finally:
        with contextlib.suppress(ValueError):  # someone cleared gc.callbacks
            gc.callbacks.remove(watch)


def _running(owner: tuple[int, FrameType, int | None]) -> bool:
    """Whether the region that took the guard (`owner`) still runs: its frame is on its
    thread's stack (and, for the fork hooks' hold, still at the os.fork call)."""
    ident, region, at = owner
    frame = sys._getframe() if ident == threading.get_ident() else sys._current_frames().get(ident)
    while frame is not None:
        if frame is region:
            return at is None or frame.f_lasti == at
        frame = frame.f_back
    return False  # the region is gone (or its thread is): nobody will give the guard back


def _take(blocking: bool, region: FrameType, at: int | None = None) -> bool:
    """Take the guard for `region` (the caller checked it is not this thread's already, see
    `_held_here`); False if `blocking` is False and another running region holds it. An
    interrupt while waiting leaves it untaken; one after it is taken leaves it recorded as
    this thread's (the caller gives it back)."""
    me = (threading.get_ident(), region, at)
    while True:
        # One C call: the lock taken and the holder recorded, or neither (`compress` appends
        # `me` only if the acquire returned True; no signal handler runs in between).
        wait = _POLL_S if blocking else -1
        _GUARD_OWNER.extend(
            itertools.compress((me,), map(_HOLDS_GUARD.acquire, (blocking,), (wait,)))
        )
        owner = _GUARD_OWNER[:1]
        if owner and owner[0] is me:
            return True
        if owner and not _running(owner[0]):
            # Its region is gone: free the guard in its stead (the record removed and the lock
            # released in one C call; a ValueError if another waiter freed it first).
            with contextlib.suppress(ValueError):
                _calls(functools.partial(_GUARD_OWNER.remove, owner[0]), _HOLDS_GUARD.release)
        elif not blocking:
            return False


def _give() -> None:
    """Give the guard back (this thread's): the record cleared and the lock released in one C
    call, so no interrupt leaves either without the other. The record is kept (`rec`) across
    that call: clearing it may drop the last reference to a gone region's frame, whose freeing
    runs finalizers (which may open or close a store) only once the guard is free, at `del`."""
    rec = _GUARD_OWNER[:]
    _calls(_GUARD_OWNER.clear, _HOLDS_GUARD.release)
    del rec


def _calls(*fns: Callable[[], object]) -> None:
    """Call `fns` in turn in one C call (no Python code runs between them, so no signal
    handler does either); an exception stops it at the function that raised."""
    collections.deque(map(operator.call, fns), maxlen=0)


def _guard_is_mine() -> bool:
    """Whether the guard is recorded as this thread's (by a region running or gone)."""
    return bool(_GUARD_OWNER) and _GUARD_OWNER[0][0] == threading.get_ident()


def _held_here() -> bool:
    """Whether a region of this thread holds the guard and runs: this thread is inside it (a
    finalizer or signal handler in the middle of it, or the forking thread between the fork
    hooks), where waiting for the guard would wait for this thread."""
    owner = _GUARD_OWNER[:1]
    return bool(owner) and owner[0][0] == threading.get_ident() and _running(owner[0])


def _release_queued() -> None:
    """Do the queued releases; the caller holds the guard. Each is taken off the queue only
    once done, and every step is one that can be done again: one cut short (a KeyboardInterrupt)
    is finished by the next guard holder, not lost (the directory locked until the exit)."""
    while _RELEASES:
        hold, token = _RELEASES[0]
        if hold.pid == os.getpid():
            if hold.claim is token:
                hold.claim = None
            hold.tokens.discard(token)
            if not hold.tokens and hold.fd >= 0:
                if _HOLDS.get(hold.key) is hold:
                    del _HOLDS[hold.key]
                fd, hold.fd = hold.fd, -1
                os.close(fd)
        _RELEASES.popleft()


def _drain() -> None:
    """Do the queued releases if the guard is free; never waits (a finalizer calls it). If
    another thread holds the guard, it does them as it lets the guard go; inside this thread's
    own region they wait for its end."""
    while _RELEASES and not _held_here():
        try:
            if not _take(False, sys._getframe()):
                return
            _release_queued()
        finally:
            # Taken above (not before: `_held_here` said so), or a gone region's hold that
            # `_take` was freeing when an interrupt came: given back either way.
            if _guard_is_mine():
                _give()
        # A release queued between the last check and the guard's release is seen here.


class _Guarded:
    """`with _Guarded():` holds the guard, and does the releases queued meanwhile on the way
    out. Use it only in a frame that lets any exception of the with statement propagate (no
    `try` with `except` handlers around it in the same function, nor a `finally` that returns,
    nor a `contextlib.suppress`): the hold's region is that frame, and ends with it. A frame that
    caught an interrupt raised at `__exit__`'s entry would live on with the guard never given
    back, judged still running (`_running`), so every other thread would wait for it for ever.
    tests/sdk/test_h133_guard_rules.py checks this module keeps to it."""

    def __enter__(self) -> None:
        if _held_here():
            # A signal handler or finalizer opening (or claiming) a store while its thread is
            # inside the guard: waiting would wait for this thread.
            raise RuntimeError(
                "a DeviceStore (or Client) was opened or claimed from inside the SDK's own "
                "locking, by a signal handler or finalizer of the thread doing it: do it after"
            )
        try:
            _take(True, sys._getframe(1))
        except BaseException:
            if _guard_is_mine():  # interrupted once taken: no `__exit__` will run
                _give()
            raise

    def __exit__(self, *exc: object) -> None:
        _let_go()


def _let_go() -> None:
    """Give the guard (this thread's) back: the queued releases first, then the ones queued
    meanwhile by others' finalizers."""
    try:
        _release_queued()
    finally:
        _give()
    _drain()


def _before_fork() -> None:
    # Taken across a fork: no thread is then between opening a directory and recording its
    # hold (a child forked there would keep a copy of a descriptor it does not know of, which
    # the parent then locks: the directory would stay locked while the child lives). Its
    # region is the frame calling os.fork, while at that call: a store closed by the forking
    # thread between the fork hooks (a __del__ in a collection, a signal handler) queues its
    # release rather than waiting on its own thread for ever, and a hold the after-fork hook
    # never gave back (an interrupt at its entry) is freed once os.fork has returned.
    if not _held_here():
        frame = sys._getframe()
        region = frame.f_back or frame
        _take(True, region, region.f_lasti)


def _after_fork_in_parent() -> None:
    owner = _GUARD_OWNER[:1]
    if owner and owner[0][0] == threading.get_ident() and owner[0][2] is not None:
        _let_go()


def _forget_holds_in_child() -> None:
    # A forked child closes its copies of the locked directories' descriptors: the parent's
    # lock then ends when the parent lets it go, not when the last child exits, and the child's
    # own `DeviceStore` on a directory is refused while the parent holds it. The stores the
    # child inherited refuse to be used (`DeviceStore.root`).
    global _HOLDS_GUARD
    _HOLDS_GUARD = threading.Lock()  # the parent's, held across the fork
    _GUARD_OWNER.clear()
    for hold in _HOLDS.values():
        try:
            os.close(hold.fd)
        except OSError:
            pass
    _HOLDS.clear()
    _RELEASES.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_forget_holds_in_child,
    )


def _holder_pid(st: os.stat_result) -> int | None:
    """The pid of the process holding a flock on the file `st` describes, as Linux's
    /proc/locks names it; None elsewhere or if it cannot be told (for the message only)."""
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.read(1 << 20).splitlines()
    except OSError:
        return None
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; a waiter's line has "->".
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == want:
            return int(fields[4]) if fields[4].isdigit() else None
    return None


def _lock(root: Path, token: object) -> _Hold:
    """Take the app directory's lock for this process (or share this process's hold on it) for
    the store `token` names; `AppDirInUse` at once if another process holds it."""
    if fcntl is None:
        raise UnsupportedPlatform(
            f"{root}: the app directory is locked with fcntl.flock, which this platform lacks; "
            "the device SDK runs on POSIX systems (Linux, Android, macOS, iOS), not Windows"
        )
    fd = -1
    try:
        with _Guarded():
            # Opened inside the guard, which a fork waits for (`_before_fork`): a child forked
            # by another thread gets no copy of a descriptor this process is about to lock.
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino)
            hold = _HOLDS.get(key)
            if hold is not None:
                hold.tokens.add(token)
                return hold  # `fd` is closed below: that ends no flock (it is another open file)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                hold = None
            else:
                # The hold owns the descriptor before it is published: an interrupt in between
                # leaves a locked descriptor (others refused until this process exits), never a
                # published hold whose descriptor `finally` closed (others let in).
                hold = _Hold(fd, key)
                hold.tokens.add(token)
                fd = -1
                _HOLDS[key] = hold
                return hold
        # Outside the guard: reading /proc/locks allocates, and may run a collection.
        raise AppDirInUse(root, _holder_pid(st))
    finally:
        if fd >= 0:
            os.close(fd)


def _unlock(hold: _Hold, token: object) -> None:
    """One `DeviceStore` (the one `token` names) lets go of `hold`, and of its claim; the
    last one in this process closes the directory's descriptor, which ends the flock (the
    kernel also ends it when the process dies). Never waits: it is queued if the guard is
    busy, and done by the guard's holder (a store's finalizer runs it, maybe in a collection
    inside the guard)."""
    _RELEASES.append((hold, token))
    _drain()


def _unclaim(hold: _Hold, token: object) -> None:
    """A client's claim ends (its owner was garbage-collected). Never waits: only the claim's
    own token is cleared, and a claim is set only where none is."""
    if hold.claim is token:
        hold.claim = None


class DeviceStore:
    """Files under `app_dir` (created if missing), locked for this process while the store is
    open: another process's `DeviceStore` (or `Client`) on the same directory raises
    `AppDirInUse` until `close()` (or the end of a `with` block, or this process's exit).
    Stores a process opens on one directory share its lock: it is released when the last of
    them closes or is garbage-collected. A `Client`'s store also claims the directory
    (`claim`): a second client of the process on it is refused."""

    def __init__(self, app_dir: str | os.PathLike[str]) -> None:
        if not isinstance(app_dir, str | os.PathLike):
            raise TypeError(
                f"app_dir must be a path (a str or an os.PathLike), not {type(app_dir).__name__}"
            )
        if os.fspath(app_dir) == "":
            # Path("") is the current directory: it was narrowed to 0700 and given the device
            # key (an unset environment variable's "", say), whatever the app kept there.
            raise ValueError(
                "app_dir is empty: give the device's own directory (e.g. "
                "'~/.myapp/plume'); an empty path would make the current directory the app "
                "directory (nothing was created)"
            )
        self._root = Path(app_dir).expanduser()
        # The directories this makes: each one's entry in its parent is synced once made, as a
        # renamed file's is (`_fsync_dir`), so a power loss cannot take the whole directory,
        # the device's key included, after its files were synced into it.
        made = [p for p in (self._root, *self._root.parents) if not os.path.lexists(p)]
        try:
            self._root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            # A regular file (or one on the way) at the path: the store's error, naming it.
            blocker = next(
                (p for p in (*reversed(self._root.parents), self._root) if _not_a_directory(p)),
                self._root,
            )
            what = "it is" if blocker == self._root else f"{blocker} is"
            raise DeviceStoreError(
                f"{self._root} cannot be the app directory: {what} a file, not a directory; "
                "give the path of a directory (made if missing)"
            ) from exc
        for path in reversed(made):
            _fsync_dir(path.parent)
        self._narrow_root()
        # Locked before anything is read or repaired: the recovery below must not run while
        # another process is between two writes.
        self._token = object()  # names this store's share (and claim) of the hold
        self._hold = _lock(self._root, self._token)
        self._release = weakref.finalize(self, _unlock, self._hold, self._token)
        try:
            # Finish what a crash interrupted, and move an older SDK's single accepted record
            # to the accepted-<r>.* files, before anything is read.
            self._drop_temp_files()
            self._recover()
            self._evict_residuals(None)  # one more than the bound, if a crash cut an eviction
            self._drop_unheld_models()  # a model file a crash left without its entry
        except BaseException:
            self.close()
            raise

    @property
    def root(self) -> Path:
        """The app directory. `ValueError` once the store is closed, or in a child process
        forked from the one that opened it (the lock is not the child's); `DeviceStoreError`
        once the path names another directory than the one locked (moved or replaced: writing
        by the path would go where another process may hold the lock), or nothing (deleted or
        moved away: every later call would fail on it, and nothing brings it back)."""
        if not (self._release.alive and self._hold.here()):
            raise ValueError(
                f"{self._root}: this DeviceStore is closed"
                + (
                    " (a Client's closes with the Client): make a new Client (or DeviceStore) "
                    "to use the app directory again"
                    if self._hold.pid == os.getpid()
                    else " (opened before a fork): make a new Client (or DeviceStore) in this "
                    "process"
                )
            )
        try:
            st = os.stat(self._root)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                raise DeviceStoreError(
                    f"{self._root}: the app directory no longer exists (it was deleted or moved "
                    "while open): close the store (or Client) and open a new one; a new one "
                    "makes an empty directory and registers as a new device, unless the "
                    "directory's files are restored first"
                ) from exc
            return self._root  # unreadable for now: the operation fails on it as it would have
        if (st.st_dev, st.st_ino) != self._hold.key:
            raise DeviceStoreError(
                f"{self._root} is no longer the app directory this store locked (it was moved "
                "or replaced while open): close the store (or Client) and open it again"
            )
        return self._root

    def close(self) -> None:
        """Release this store's share of the lock, and its claim (idempotent); it cannot be
        used after. The lock is free when this returns if this was the process's last store."""
        self._release()
        if not _held_here():
            # Another thread's guard may hold the release queued, or be doing it (popped, in
            # os.close): passing through the guard waits for it to finish.
            with _Guarded():
                pass

    def claim(self, owner: object) -> None:
        """Make this store the one a `Client` (`owner`) of this process uses the directory
        through, until the store is closed or `owner` is garbage-collected: while it lasts,
        another claim on the directory (another `Client`'s, by any path) raises `AppDirInUse`
        naming this process. A client dropped unclosed is not in the way: before refusing, a
        garbage collection runs to free it (`_collect`: this thread's own, after waiting for
        another thread's to end, up to `_CLAIM_WAIT_S`). Plain stores (a tool, a test
        inspecting a live client's directory) claim nothing and share the lock."""
        root = self.root  # refused once closed
        for collected in (False, True):
            with _Guarded():
                if self._hold.claim is None:
                    self._hold.claim = self._token
                    break
            if collected:
                raise AppDirInUse(root, os.getpid(), by_client=True)
            # A client dropped without close() (a client that made a request sits in
            # reference cycles) holds its claim until a collection: run one, then look again.
            _collect(_CLAIM_WAIT_S)
        weakref.finalize(owner, _unclaim, self._hold, self._token)

    def __enter__(self) -> DeviceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _narrow_root(self) -> None:
        """Make an existing app directory that others may read, enter or write owner-only
        (0700: the group and other bits cleared), as a new one is made. Only one this user
        owns: `DeviceStoreError` for one owned by another user (its owner, or anyone it lets
        write it, could plant a symlink or read what derives from the user's data), or one
        whose mode cannot be changed. No-op where the OS has no POSIX owners (Windows)."""
        if not hasattr(os, "geteuid"):
            return
        root = self._root  # not yet locked: `root` is readable once the lock is held
        st = os.stat(root)  # the directory a symlinked app_dir names
        mode = stat.S_IMODE(st.st_mode)
        if not mode & 0o077:
            return
        if st.st_uid != os.geteuid():
            raise DeviceStoreError(
                f"{root} cannot be the app directory: it is mode {mode:04o} (open to other "
                f"users) and owned by uid {st.st_uid}, not by this process's uid "
                f"{os.geteuid()}, so it is not narrowed to 0700; use a directory this user owns"
            )
        try:
            os.chmod(root, mode & ~0o077)
        except OSError as exc:
            raise DeviceStoreError(
                f"{root} cannot be the app directory: it is mode {mode:04o} (open to other "
                f"users) and could not be narrowed to 0700: {exc.strerror or exc}"
            ) from exc

    def _drop_temp_files(self) -> None:
        """Remove the temp files of writes a crash cut before their rename (`_write`): none is
        ever the state, and one named after a round (accepted-<r>.frame.tmp) or a dropped task
        would never be written over, so each such crash would keep a file for the app's life."""
        for name in os.listdir(self.root):
            path = self.root / name
            if _STORE_TEMP.fullmatch(name) and not (path.is_dir() and not path.is_symlink()):
                _unlink(path)  # a FIFO or symlink too: `_write` never leaves one

    # -- identity ------------------------------------------------------------------------

    def _identity_held(self, state: dict[str, Any] | None) -> list[str]:
        """What ties the app directory to the device of its key (`state` as read, None: it did
        not read): state.json naming a registered device (its `device_id`, written with
        `registered` at registration), or a state.json that does not read, which may; with
        state.json gone too, a pending upload or a record of an accepted upload that names the
        device it was sent as (`_sender`; a new key would re-send it as another device's: the
        coordinator refused it as the round's duplicate or never settled it, and its content
        went back into the residual, counted twice). Empty when a key may be made
        (`private_key`). A device takes part only once registered, so its residual, pending
        upload and records sit beside such a state.json."""
        if state is None:
            return ["state.json does not read, so whether a device registered here is unknown"]
        if state.get("registered") or "device_id" in state:
            return [f"state.json names registered device {str(state.get('device_id'))[:40]}"]
        return self._uploads_sent_as()

    def _uploads_sent_as(self) -> list[str]:
        """The pending upload and the records that name the device they were sent as, each
        as "NAME was sent as device ID" (at most the first two)."""
        try:
            names = sorted(os.listdir(self.root))
        except OSError:
            return []
        found = []
        for name in names:
            if name != "pending.json" and not (
                (m := _RECORD_FILE.fullmatch(name)) and m.group(2) == "json"
            ):
                continue
            try:
                sender = _read_json(self.root / name, "upload").get("device_id")
            except (DeviceStoreError, OSError):
                continue
            if isinstance(sender, str):
                found.append(f"{name} was sent as device {sender[:40]}")
            if len(found) == 2:
                break
        return found

    def _sender(self) -> str | None:
        """The id of the device whose key this directory holds (what its uploads are sent as),
        recorded in pending.json and each record; None where no key reads (a store used
        without a client)."""
        try:
            return auth.device_id_for(
                auth.public_key_bytes(self._read_key(self.root / "device_key"))
            )
        except (DeviceStoreError, OSError, ValueError):
            return None

    def private_key(self) -> bytes:
        """The device's Ed25519 key (32 raw bytes, file mode 0600), made on first use: in an app
        directory whose state.json names no registered device (`_identity_held`).
        `DeviceIdentityLost` when it names one whose key is gone: missing or unreadable, or
        the key of another device (state.json's `device_id` is the key's fingerprint, the
        first 16 bytes of SHA-256 of its public key, as every SDK version wrote it at
        registration: a directory an earlier SDK wrote is checked with nothing to migrate)."""
        path = self.root / "device_key"
        try:
            state: dict[str, Any] | None = self.state()
        except DeviceStoreError:
            state = None  # with the key present, the calls that read the state report it
        if not (path.exists() or path.is_symlink()):
            held = self._identity_held(state)
            if held:
                raise DeviceIdentityLost(path, "device_key is missing", held)
            key = auth.generate_private_key()
            _write(path, key, 0o600)
            return key
        try:
            key = self._read_key(path)
        except DeviceStoreError as exc:
            held = self._identity_held(state)
            if held:
                raise DeviceIdentityLost(path, f"device_key does not read ({exc})", held) from exc
            raise
        recorded = None if state is None else state.get("device_id")
        if recorded is not None:
            mine = auth.device_id_for(auth.public_key_bytes(key))
            if recorded != mine:
                raise DeviceIdentityLost(
                    path,
                    f"device_key is the key of device {mine}",
                    [f"state.json names registered device {str(recorded)[:40]}"],
                    # state.json carries no check: a flipped digit there reads as a lost key
                    # (s47 device-store review), and wiping the directory was the only way out
                    # the message gave.
                    ". If device_key is this device's own and state.json is what was damaged "
                    f"or edited ({mine} is the id the coordinator knows this device by), "
                    "remove state.json alone instead: the device registers again with the same "
                    "key and keeps its residual and uploads",
                )
        return key

    def check_registration(self, device_id: str) -> None:
        """Before `device_id` (this client's, from the key it read) is written to state.json as
        registered: `DeviceIdentityLost` if state.json names another device, or the key file
        is no longer that device's (replaced, or removed, while the client was open)."""
        recorded = self.state().get("device_id")
        path = self.root / "device_key"
        if recorded is not None and recorded != device_id:
            raise DeviceIdentityLost(
                path,
                f"this client's key is that of device {device_id}",
                [f"state.json names registered device {str(recorded)[:40]}"],
            )
        try:
            on_disk = auth.device_id_for(auth.public_key_bytes(self._read_key(path)))
        except (DeviceStoreError, OSError) as exc:
            raise DeviceIdentityLost(
                path,
                f"device_key does not read ({exc})",
                [f"this client registers as device {device_id}, whose key it was"],
            ) from exc
        if on_disk != device_id:
            raise DeviceIdentityLost(
                path,
                f"device_key is now the key of device {on_disk}",
                [f"this client registers as device {device_id}, whose key it was"],
            )

    def _read_key(self, path: Path) -> bytes:
        """The 32 bytes of the key file `path` (`DeviceStoreError` if it is no such file;
        FileNotFoundError if it is gone)."""
        if path.exists() or path.is_symlink():
            # Opened without following a symlink: one there would have the key read from, and
            # the chmod below applied to, a file outside the app directory.
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError as exc:
                raise DeviceStoreError(
                    f"{path} (Ed25519 key) cannot be opened as a regular file: "
                    f"{'it is a symlink' if path.is_symlink() else exc.strerror or exc}"
                ) from exc
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise DeviceStoreError(f"{path} (Ed25519 key) is not a regular file")
                if st.st_size != KEY_BYTES:
                    raise DeviceStoreError(f"{path} is not a {KEY_BYTES}-byte Ed25519 key")
                key = os.read(fd, KEY_BYTES + 1)
                if len(key) != KEY_BYTES:
                    raise DeviceStoreError(f"{path} is not a {KEY_BYTES}-byte Ed25519 key")
                if stat.S_IMODE(st.st_mode) & 0o077:
                    os.fchmod(fd, 0o600)  # readable by others: take it back to owner-only
            finally:
                os.close(fd)
            return key
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))

    # -- state ---------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The JSON object in state.json ({} before the first write)."""
        path = self.root / "state.json"
        if not path.exists():
            return {}
        return _read_json(path, "device state")

    def update_state(self, **values: Any) -> dict[str, Any]:
        data = self.state()
        data.update(values)
        _write(self.root / "state.json", json.dumps(data, sort_keys=True).encode())
        return data

    # -- models ----------------------------------------------------------------------------
    #
    # One model per task, at most MAX_MODELS. A task's model keeps the file it was first
    # written to: model.f32 (its metadata state.json's top-level `model_*` keys, as an older
    # SDK kept its one model, which so stays its task's model after an upgrade) when that was
    # free, else model-<t>.f32 (metadata under `models`). Each save writes the task's file,
    # then state.json: the commit point, with the new digest and, past the bound, without the
    # least recently written model, whose file goes after. A model is held only while its bytes
    # match the digest in state.json, so a crash between the two writes leaves that task with
    # no model held (its next download is a whole snapshot), and never another task's model
    # touched. A model file no entry names (a crash before its first commit, or after an
    # eviction's) is removed when the directory is opened.

    def save_model(
        self,
        task_id: int,
        params: npt.NDArray[np.float32],
        version: int,
        digest: str,
        exact: bool,
        layout: bytes | None = None,
    ) -> None:
        """Hold `params` as `task_id`'s model at `version` (`digest`: the SHA-256 of its
        little-endian float32 bytes; `exact`: bit-identical to the coordinator's), beside other
        tasks' models; past MAX_MODELS the least recently written other one is dropped.
        `layout`: the model's `ModelSpec.fingerprint` as the download showed it (a snapshot's
        header, a delta frame's); None when it showed none (an empty delta chain): the layout
        recorded for the task's model, if any, is kept (`held_layout`)."""
        _check_task_id(task_id, "model")
        if task_id is None:
            raise ValueError("model: a model is held for a task; task id None, not saved")
        st = self.state()
        held = _held_models(st)
        mine = held.pop(task_id, None)
        if mine is not None:
            primary = mine.primary
        else:
            primary = not any(m.primary for m in held.values())
        shown = layout.hex() if layout is not None else None
        if shown is None and mine is not None and _layout_field(mine.layout) is not None:
            shown = str(mine.layout)
        name = _PRIMARY_MODEL if primary else f"model-{task_id}.f32"
        # Written from the array's own memory when it is little-endian float32 already (it
        # is, on any phone): `astype(...).tobytes()` made two copies of the model to write one.
        _write(self.root / name, np.ascontiguousarray(params, dtype="<f4").data.cast("B"))
        others = _by_recency(held)
        kept = others[max(0, len(others) - (MAX_MODELS - 1)) :]
        new = dict(st)
        if not any(m.primary for m in kept):
            for key in _PRIMARY_KEYS:
                new.pop(key, None)
        # Sequence numbers are renumbered 0, 1, ... in recency order at each save (all of them
        # live in this one file), so none ever nears its limit.
        models: dict[str, Any] = {}
        for seq, m in enumerate(kept):
            if m.primary:
                new["model_seq"] = seq
            else:
                models[str(m.task)] = {**m.meta(), "seq": seq}
        if primary:
            new.update(
                task_id=task_id, model_version=version, model_digest=digest, model_exact=exact,
                model_seq=len(kept),
            )  # fmt: skip
            new.pop("model_layout", None)
            if shown is not None:
                new["model_layout"] = shown
        else:
            models[str(task_id)] = {
                "version": version, "digest": digest, "exact": exact, "seq": len(kept),
            }  # fmt: skip
            if shown is not None:
                models[str(task_id)]["layout"] = shown
        if models:
            new["models"] = models
        else:
            new.pop("models", None)
        _write(self.root / "state.json", json.dumps(new, sort_keys=True).encode())
        self._drop_unheld_models(new)

    def load_model(
        self, task_id: int, size: int
    ) -> tuple[npt.NDArray[np.float32], int, bool] | None:
        """(params float32[size], version, exact) held for `task_id`, or None: none held, its
        file missing, of another size, not a regular file, or not the bytes its digest names.
        Other tasks' models are not read. `DeviceStoreError` for a version that is no integer
        (state.json is foreign or corrupt)."""
        held = _held_models(self.state()).get(task_id)
        if held is None:
            return None
        path = self.root / held.name
        if not path.exists():
            return None
        raw = _read_sized(path, 4 * size)  # the size is checked before reading it
        if raw is None:
            return None
        version = held.version
        if isinstance(version, bool) or not isinstance(version, int):
            field = "model_version" if held.primary else f"models[{task_id}].version"
            raise DeviceStoreError(f"{self.root / 'state.json'}: {field} is not an integer")
        if not 0 <= version < 2**63:
            # No coordinator version (an older SDK saved -1 when the header was missing): asked
            # for as `have`, every download would be refused, so the model counts as not held.
            return None
        digest = held.digest
        if digest is None and not held.primary:
            return None  # written with one always: a foreign entry
        if digest is not None and hashlib.sha256(raw).hexdigest() != digest:
            # save_model writes the model's file, then state.json: a crash between the two
            # leaves the new parameters under the old version, which a delta chain from that
            # version would then be applied to. Not the model the state describes: none held.
            # (An older SDK's model.f32 without a digest is taken as it is, as it was then.)
            return None
        params = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        return params, version, bool(held.exact)

    def held_layout(self, task_id: int) -> bytes | None:
        """The layout (`ModelSpec.fingerprint`) of `task_id`'s held model, as the download
        that brought it showed it (`save_model`'s `layout`); None with no model held, or with
        none recorded (a model an SDK from before the field saved, or one only an empty delta
        chain has confirmed)."""
        held = _held_models(self.state()).get(task_id)
        return None if held is None else _layout_field(held.layout)

    def model_version(self, task_id: int | None = None) -> int | None:
        """The version of `task_id`'s model as state.json names it (None: of the model written
        last), without reading the model; None without one, or for one that is no version in
        [0, 2^63). What a check-in names; a download asks from `load_model`'s, checked."""
        held = _held_models(self.state())
        if task_id is None:
            ordered = _by_recency(held)
            found = ordered[-1] if ordered else None
        else:
            found = held.get(task_id)
        version = None if found is None else found.version
        if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version < 2**63:
            return None
        return version

    def forget_model(self, task_id: int | None = None) -> None:
        """Forget `task_id`'s model (None: every task's); other tasks' are kept. The file
        goes first, then its entry in state.json: a crash between the two leaves an entry whose
        file is gone, which holds no model."""
        st = self.state()
        held = _held_models(st)
        if task_id is None:
            gone = list(held.values())
        else:
            gone = [held[task_id]] if task_id in held else []
        for m in gone:
            _unlink(self.root / m.name)
        new = dict(st)
        found = st.get("models")
        models = dict(found) if isinstance(found, dict) and task_id is not None else {}
        if task_id is None or any(m.primary for m in gone):
            for key in _PRIMARY_KEYS:
                new.pop(key, None)
        if task_id is not None:
            models.pop(str(task_id), None)
        if models:
            new["models"] = models
        else:
            new.pop("models", None)
        if new != st:
            _write(self.root / "state.json", json.dumps(new, sort_keys=True).encode())
        self._drop_unheld_models(new)

    def _drop_unheld_models(self, st: dict[str, Any] | None = None) -> None:
        """Remove the model files state.json (`st`, read if None) names no model in: a save a
        crash cut before its first commit, an eviction cut after its commit. Nothing while
        state.json does not read (the calls that need it report it)."""
        if st is None:
            try:
                st = self.state()
            except (DeviceStoreError, OSError):
                return
        names = {m.name for m in _held_models(st).values()}
        for name in os.listdir(self.root):
            if (name == _PRIMARY_MODEL or _MODEL_FILE.fullmatch(name)) and name not in names:
                path = self.root / name
                if not (path.is_dir() and not path.is_symlink()):
                    _unlink(path)

    # -- the coordinator's incarnation --------------------------------------------------
    #
    # Everything above and below but the key is kept by the ids of the coordinator's rounds
    # and tasks, which are its database's own: state.json `incarnation` names the database
    # (`protocol.messages.check_incarnation`) they are of, None before a coordinator said one
    # (an older SDK's directory, an older coordinator). The client sets that state aside
    # before it writes another incarnation here (`sdk.client._Core.note_incarnation`), so a
    # crash in between leaves the old incarnation, and the next answer sets aside the rest.

    def incarnation(self) -> str | None:
        """The incarnation of the coordinator database the state here is of (state.json
        `incarnation`), None when none was written (or a value that is none: a hand edit).
        `DeviceStoreError` when state.json does not read."""
        value = self.state().get("incarnation")
        try:
            return check_incarnation(value)
        except MessageError:
            return None

    def model_tasks(self) -> list[int]:
        """The tasks whose models state.json names, in task order (not loaded: checked)."""
        return sorted(_held_models(self.state()))

    def residual_tasks(self) -> list[int | None]:
        """The tasks whose residual files are held, in task order; None last for the older
        SDK's residual.bin while no task has claimed it (not loaded: checked)."""
        found = (_RESIDUAL_FILE.fullmatch(p.name) for p in self._task_residual_files())
        tasks: list[int | None] = []
        tasks.extend(sorted(int(m.group(1)) for m in found if m is not None))
        if (self.root / "residual.bin").is_file():
            tasks.append(None)
        return tasks

    def drop_residuals(self) -> None:
        """Remove every error-feedback residual: each task's file, the older SDK's residual.bin
        (and its claim in state.json) and the staged ones of steps a crash interrupted. Done
        after the pending upload and the records are forgotten (their steps are finished
        first: nothing is staged for them afterwards); a crash midway leaves fewer residuals,
        and the next call removes the rest."""
        self._recover()
        for path in (
            *self._task_residual_files(),
            *self._staged(),
            self.root / "residual.bin",
        ):
            _unlink(path)
        if any(k in self.state() for k in ("legacy_residual_task", "legacy_residual_seq")):
            st = self.state()
            st.pop("legacy_residual_task", None)
            st.pop("legacy_residual_seq", None)
            _write(self.root / "state.json", json.dumps(st, sort_keys=True).encode())

    # -- error feedback ------------------------------------------------------------------
    #
    # A task's residual file (`_dest`) is its residual, except in two windows, each closed by
    # a rename:
    # - after save_pending committed pending.json and before it rewrote the task's file:
    #   pending.residual exists only then, so with pending.json it is the residual;
    # - after refuse_pending removed pending.json (its commit point) and before it renamed
    #   pending.refused over the task's file: without pending.json, pending.refused is it.
    # A pending.refused next to pending.json is a refusal that never committed: ignored.
    #
    # Each accepted record (accepted-<r>.*) has the same two windows: accepted-<r>.residual
    # with accepted-<r>.json is the residual (save_accepted committed, the task's file not yet
    # rewritten); accepted-<r>.settled without accepted-<r>.json is the residual (the record's
    # return committed, not yet renamed). Every step closes its window before it returns, so at
    # most one window (pending or accepted) is open at a time. The staged file's trailer names
    # the task whose residual it is.

    def _record_files(self) -> dict[int, set[str]]:
        """The accepted-<r>.* files present: round id -> the kinds present (json, frame, ...)."""
        found: dict[int, set[str]] = {}
        for name in os.listdir(self.root):
            m = _RECORD_FILE.fullmatch(name)
            if m is not None and int(m.group(1)) < 2**63:
                found.setdefault(int(m.group(1)), set()).add(m.group(2))
        return found

    def _record(self, round_id: int, kind: str) -> Path:
        return self.root / f"accepted-{round_id}.{kind}"

    def legacy_claimer(self) -> int | None:
        """The task that claimed the older SDK's residual (`_claim_legacy`), or None (also
        while state.json does not read: the claim is then neither made nor followed, and the
        unreadable file is reported by the calls that need it)."""
        try:
            st = self.state()
        except (DeviceStoreError, OSError):
            return None
        return _task_field({"task_id": st.get("legacy_residual_task")})

    def _dest(self, task_id: int | None) -> Path:
        """The file holding `task_id`'s residual outside a window; None is the legacy residual
        (residual.bin, or once claimed the claiming task's file)."""
        if task_id is None:
            task_id = self.legacy_claimer()
            if task_id is None:
                return self.root / "residual.bin"
        return self.root / f"residual-{task_id}.bin"

    def _window(self) -> Path | None:
        """The staged file of the open window (see above), if one is open."""
        if (self.root / "pending.json").exists():
            if (self.root / "pending.residual").exists():
                return self.root / "pending.residual"
        elif (self.root / "pending.refused").exists():
            return self.root / "pending.refused"
        for round_id, kinds in self._record_files().items():
            if "json" in kinds and "residual" in kinds:
                return self._record(round_id, "residual")
            if "json" not in kinds and "settled" in kinds:
                return self._record(round_id, "settled")
        return None

    def _residual_path(self, task_id: int | None) -> Path:
        dest = self._dest(task_id)
        window = self._window()
        if window is not None and self._dest(_residual_task(window)) == dest:
            return window
        return dest

    def _finish(self, staged: Path) -> None:
        """Rename a staged residual over its task's file (a window closing)."""
        _replace(staged, self._dest(_residual_task(staged)))

    def _settle_refusal(self) -> None:
        """Finish (or drop, if it never committed) a refusal a crash interrupted."""
        refused = self.root / "pending.refused"
        if not refused.exists():
            return
        if (self.root / "pending.json").exists():
            _unlink(refused)
        else:
            self._finish(refused)

    def _settle_pending_save(self) -> None:
        """Finish a pending save a crash interrupted after its commit point (pending.residual
        with pending.json: the rename save_pending had left); drop one that never committed.
        Left open, the window would outlive the restart, and a later step's window closed by
        `_recover` would be shadowed by it (two windows open), then overwritten by it."""
        held = self.root / "pending.residual"
        if not held.exists():
            return
        if (self.root / "pending.json").exists():
            self._finish(held)
        else:
            _unlink(held)

    def _settle_window(self, meta: Path, frame: Path, held: Path, settled: Path) -> None:
        """Finish (or drop, if it never committed) a step on one accepted record that a crash
        interrupted: `meta` is its commit file, `held` its save window, `settled` its return
        window."""
        if meta.exists():
            _unlink(settled)  # a return that never committed
            if held.exists():  # save_accepted committed before it rewrote the task's file
                self._finish(held)
            if not frame.exists():
                _unlink(meta)  # not a record (foreign): it would count against the bound
        else:
            _unlink(held)  # a save that never committed, or a frame whose record is gone
            _unlink(frame)
            if settled.exists():  # a return that committed before its rename
                self._finish(settled)

    def _migrate_single_record(self) -> None:
        """Move an older SDK's accepted.json / accepted.frame to accepted-<r>.*, in steps a
        crash may interrupt anywhere: the new record is committed before the old one goes, and
        a second run writes the same record again."""
        meta, frame = self.root / "accepted.json", self.root / "accepted.frame"
        held, settled = self.root / "accepted.residual", self.root / "accepted.settled"
        if not any(p.exists() for p in (meta, frame, held, settled)):
            return
        self._settle_window(meta, frame, held, settled)
        if not meta.exists():
            return
        record = self._load_record(meta, frame)
        if record is not None:  # a torn or foreign file was no record for the older SDK either
            self._write_record(record, None)
        _unlink(meta)
        _unlink(frame)

    def _settle_accepted(self) -> None:
        """Finish (or drop) the steps on accepted records that a crash interrupted."""
        self._migrate_single_record()
        for round_id, kinds in self._record_files().items():
            if kinds != {"json", "frame"}:
                self._settle_window(
                    self._record(round_id, "json"), self._record(round_id, "frame"),
                    self._record(round_id, "residual"), self._record(round_id, "settled"),
                )  # fmt: skip
        self._evict()  # a save that crashed before its eviction

    def _settle_acceptance(self) -> None:
        """Finish an `accept_pending` a crash interrupted after the record's commit point: the
        record of the pending upload's round holds its very frame, so the pending copy goes.
        Done when the directory is opened, before anything can settle that record: left for
        `load_pending`, a check-in first could return the record's content (round abandoned),
        then the re-send of the pending copy, whose receipt the coordinator replays for its
        idempotency key, made a second record of the round, returned a second time."""
        meta_path, frame_path = self.root / "pending.json", self.root / "pending.frame"
        if not meta_path.exists() or not frame_path.exists():
            return
        try:
            meta = _read_json(meta_path, "pending upload")
        except (DeviceStoreError, OSError):
            return  # not an upload load_pending returns (it reports the file)
        round_id, size = meta.get("round_id"), meta.get("bytes")
        if not isinstance(round_id, int) or isinstance(round_id, bool) or not 1 <= round_id:
            return
        if round_id not in self._record_files():
            return
        record = self.load_accepted(round_id)
        if record is None or not isinstance(size, int) or len(record.frame) != size:
            return
        if _read_sized(frame_path, size) != record.frame:
            return
        _unlink(meta_path)  # the record holds it: the pending copy is forgotten (clear_pending)
        _unlink(frame_path)

    def _recover(self) -> None:
        # At most one of these windows is open: each step closes its own before returning, and
        # every step that opens one calls this first.
        self._finish_claim()
        self._settle_refusal()
        self._settle_pending_save()
        self._settle_accepted()
        self._settle_acceptance()

    # -- the older SDK's residual, and the bound on residuals -----------------------------

    def _claim_legacy(self, task_id: int, size: int) -> None:
        """Make the older SDK's residual (kept for every task alike) `task_id`'s when that task
        holds none and it holds `size` scalars: the first task to use it with a matching size
        takes it. An older SDK reset the residual whenever the model size changed, so it holds
        error of models of this size only, most likely of the task the device ran last, which
        is the task an upgraded app runs first. Writing the claim to state.json is the commit
        point; the rename after it is finished by `_finish_claim` after a crash."""
        if self.legacy_claimer() is not None:
            return
        try:
            self.state()
        except (DeviceStoreError, OSError):
            return  # the claim could not be written: the old residual stays unclaimed
        src = self._residual_path(None)
        if not src.exists() or _residual_size(src) != size:
            return
        if self._residual_path(task_id).exists():
            return
        # The claim's write sequence number: the claimed file has no trailer until its task
        # writes it again, and must not count as older than every residual meanwhile.
        self.update_state(legacy_residual_task=task_id, legacy_residual_seq=self._next_seq())
        self._finish_claim()

    def _finish_claim(self) -> None:
        claimer, legacy = self.legacy_claimer(), self.root / "residual.bin"
        if claimer is None or not legacy.exists():
            return
        dest = self._dest(claimer)
        if not dest.exists():  # it always is missing: a task with a residual claims nothing
            # Make room first, so the claimed file never makes one more than the bound (a
            # crash in between leaves the claim committed, and this is run again).
            self._evict_residuals(None, room=1)
            _replace(legacy, dest)

    def _task_residual_files(self) -> list[Path]:
        """The task residual files held (residual-<t>.bin; a directory of that name is no
        residual, and is left alone)."""
        held = []
        for name in os.listdir(self.root):
            m = _RESIDUAL_FILE.fullmatch(name)
            if m is not None and int(m.group(1)) < 2**63:
                path = self.root / name
                if not path.is_dir():
                    held.append(path)
        return held

    def _claim_seq(self) -> tuple[Path, int] | None:
        """(the claimed legacy residual's file, the write sequence number of its claim) as
        state.json records them; None without a claim, or one an older SDK made (no number)."""
        try:
            st = self.state()
        except (DeviceStoreError, OSError):
            return None
        task = _task_field({"task_id": st.get("legacy_residual_task")})
        seq = st.get("legacy_residual_seq")
        if task is None or isinstance(seq, bool) or not isinstance(seq, int):
            return None
        return (self.root / f"residual-{task}.bin", seq) if 0 <= seq < _SEQ_LIMIT else None

    def _sequence(self, path: Path, claim: tuple[Path, int] | None) -> int | None:
        """The write sequence number of stored residual `path`: its trailer's, or the claim's
        for the claimed legacy file while it has no trailer; None without one, or for one at
        or past `_SEQ_LIMIT` (foreign or corrupt)."""
        found = _trailer(path)
        if found is not None:
            seq = found[1]
        else:
            seq = claim[1] if claim is not None and path == claim[0] else None
        return seq if seq is not None and seq < _SEQ_LIMIT else None

    def _next_seq(self) -> int:
        """The write sequence number of a residual written now: one more than any held (task
        files, staged ones and the claim), so the order of the files held is their write order.
        At `_SEQ_LIMIT` (only a foreign number gets there) the held ones are renumbered first."""
        claim = self._claim_seq()
        files = self._task_residual_files() + self._staged()
        seqs = [s for s in (self._sequence(p, claim) for p in files) if s is not None]
        top = max(seqs, default=-1) + 1
        return top if top < _SEQ_LIMIT else self._renumber(files, claim)

    def _renumber(self, files: list[Path], claim: tuple[Path, int] | None) -> int:
        """Give `files` that have a write sequence number the numbers 0, 1, ... in their order
        (each rewritten whole, atomically; a crash between two leaves each file old or new, and
        the next write renumbers again); returns the next number."""
        numbered = [(s, p.name, p) for p in files if (s := self._sequence(p, claim)) is not None]
        numbered.sort()
        for new, (_, _, path) in enumerate(numbered):
            found = _trailer(path)
            if found is None:  # the claimed legacy file: its number is the claim's
                self.update_state(legacy_residual_seq=new)
                continue
            # The trailer rewritten, the rest as it is; a numbered file has a sequence number,
            # so its trailer is the 24-byte one or the 32-byte one (with a layout).
            size = os.lstat(path).st_size
            raw = _read_sized(path, size)
            if raw is not None:
                cut = _TRAILER if found.layout is None else _LAYOUT_TRAILER
                _write(path, raw[: size - cut] + _trailer_bytes(found.task, new, found.layout))
        return len(numbered)

    def _evict_residuals(self, keep: Path | None, room: int = 0) -> None:
        """Past MAX_RESIDUALS task residual files (less `room` to be made), drop the least
        recently written (never `keep`, the one just written): the lowest write sequence
        number; files without one (an older SDK's, or foreign) before any, among themselves by
        modification time, the only order an older SDK left."""
        held = self._task_residual_files()
        excess = len(held) + room - MAX_RESIDUALS
        if excess <= 0:
            return

        claim = self._claim_seq()

        def recency(path: Path) -> tuple[bool, int, int, str]:
            seq = self._sequence(path, claim)
            if seq is None:
                return (path == keep, 0, os.lstat(path).st_mtime_ns, path.name)
            return (path == keep, 1 + seq, 0, path.name)

        held.sort(key=recency)
        for path in held[:excess]:
            if path != keep:
                _unlink(path)

    # -- residuals -----------------------------------------------------------------------

    def load_residual(
        self, size: int, task_id: int | None = None, spec: ModelSpec | None = None
    ) -> ErrorFeedback | None:
        """The residual (float32[size]) the device carries for `task_id`, or None if none is
        held for that task and size. A task holding none first claims the older SDK's residual
        of that size (`_claim_legacy`). `task_id` None reads the legacy residual.

        With `spec` (the layout of the model the caller encodes for, of `size` scalars), None
        too when the residual held names another layout: it is of another model of the same
        size (the round starts from no residual; the file is left as it is until the task's
        next residual is saved). One saved without a layout is matched by size, as before."""
        layout = _layout_of(spec, size, "load_residual")
        if task_id is not None:
            self._claim_legacy(task_id, size)
        # Another model's, torn, no regular file (a FIFO, a symlink) or foreign: start afresh.
        held = self._held(task_id, size)
        if held is None:
            self._warn_if_damaged(self._residual_path(task_id), task_id)
            return None
        if _other_layout(layout, held[1]):
            return None
        return held[0]

    @staticmethod
    def _warn_if_damaged(path: Path, task_id: int | None) -> None:
        """Log a WARNING when `path` is a regular file holding no whole residual of any size
        (torn, values failing their CRC-32, a trailer that does not parse): the round starts
        from no residual, so the error-feedback memory it held is lost, and the file is
        replaced at the round's save. Silent before (s47 device-store review). Another size's,
        another layout's or another task's whole residual is no damage and says nothing."""
        try:
            regular = stat.S_ISREG(os.lstat(path).st_mode)
        except OSError:
            return
        if regular and _load_stored(path, None) is None:
            log.warning(
                "%s: the residual of %s is damaged (torn, or its values fail their check): "
                "this round starts from no residual, so the error-feedback memory it held is "
                "lost, and the file is replaced when the round saves its residual",
                path,
                "the legacy task" if task_id is None else f"task {task_id}",
            )

    def _held(
        self, task_id: int | None, size: int | None, path: Path | None = None
    ) -> tuple[ErrorFeedback, bytes | None] | None:
        """The whole residual `task_id`'s file holds (of `size` scalars; None: any) and the
        layout its trailer names (None: none); None if it holds none, or its trailer names
        another task than this residual's (the claimer's, for the legacy residual). `path`:
        the residual's path when the caller has it (`_residual_path` reads state.json)."""
        stored = _load_stored(path or self._residual_path(task_id), size)
        if stored is None:
            return None
        ef, found = stored
        if found is None:
            return ef, None
        expected = task_id if task_id is not None else self.legacy_claimer()
        return (ef, found.layout) if found.task == expected else None

    def _staged(self) -> list[Path]:
        """Every staged residual file present (open window or leftover)."""
        names = [n for n in ("pending.residual", "pending.refused") if (self.root / n).exists()]
        for round_id, kinds in self._record_files().items():
            names += [f"accepted-{round_id}.{k}" for k in sorted(kinds & {"residual", "settled"})]
        return [self.root / n for n in names]

    def save_residual(
        self, ef: ErrorFeedback, task_id: int | None = None, spec: ModelSpec | None = None
    ) -> None:
        """Make `ef` `task_id`'s residual (None: the legacy residual), of the model of layout
        `spec` (kept in the file's trailer, so that `load_residual` tells another model of the
        same size after a restart; None: unknown, matched by size). Other tasks' residuals are
        untouched. `ValueError`, nothing written, for a `spec` of another size than `ef`."""
        _check_task_id(task_id, "residual")
        layout = _layout_of(spec, ef.size, "residual")
        dest = self._dest(task_id)
        _write(dest, _residual_parts(ef, task_id, self._next_seq(), layout))
        # Leftovers of an interrupted save or refusal would otherwise shadow this newer residual.
        for staged in self._staged():
            if self._dest(_residual_task(staged)) == dest:
                _unlink(staged)
        self._evict_residuals(dest)

    # -- pending upload ------------------------------------------------------------------

    def save_pending(self, pending: PendingUpload, ef: ErrorFeedback) -> None:
        """Persist the frame and the residual that assumes it; `pending.json` is the commit
        point, so a crash at any step leaves either the old state or the new one whole.
        Raises `ValueError`, writing nothing, for an upload `load_pending` could not read back
        (every later load would raise): a key that is not 1 to 128 ASCII characters, a round
        id or size outside [0, 2^63), a task id outside it, a `train_loss` that is not a loss
        the coordinator takes (`check_train_loss`)."""
        key = pending.key
        if not isinstance(key, str) or not 1 <= len(key) <= 128 or not key.isascii():
            raise ValueError("pending upload: key must be 1 to 128 ASCII characters; not saved")
        for name in ("round_id", "dense_bytes"):
            value = getattr(pending, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
                raise ValueError(f"pending upload: {name} {value!r} is not in [0, 2^63); not saved")
        _check_task_id(pending.task_id, "pending upload")
        if pending.train_loss is not None and _train_loss(pending.train_loss) is None:
            raise ValueError(
                f"pending upload: train_loss {pending.train_loss!r:.50} is not a loss the "
                "coordinator takes (check_train_loss); not saved"
            )
        meta: dict[str, Any] = {
            "round_id": pending.round_id,
            "key": pending.key,
            "bytes": len(pending.frame),
            "dense_bytes": pending.dense_bytes,
            "sha256": hashlib.sha256(pending.frame).hexdigest(),
        }
        if pending.task_id is not None:
            meta["task_id"] = pending.task_id
        if pending.spec is not None:
            meta["spec"] = pending.spec.to_json()
        if not pending.return_refused:
            meta["return_refused"] = False  # left out otherwise: the file an older SDK wrote
        if pending.train_loss is not None:
            meta["train_loss"] = pending.train_loss  # likewise
        if (sender := self._sender()) is not None:
            meta["device_id"] = sender  # `_identity_held` reads it
        meta["check"] = _meta_check(meta)
        encoded = json.dumps(meta).encode()
        if len(encoded) > _MAX_JSON_BYTES:
            # Written, it could never be read back: every later load_pending would raise.
            raise DeviceStoreError(
                f"pending upload metadata of {len(encoded)} bytes is over the "
                f"{_MAX_JSON_BYTES}-byte cap (a model layout with huge tensor names?); not saved"
            )
        self._recover()
        # Withdraw an older commit point first: its metadata must never pair with this frame.
        _unlink(self.root / "pending.json")
        _write(self.root / "pending.frame", pending.frame)
        spec = _spec_if(pending.spec, ef.size)
        layout = None if spec is None else spec.fingerprint
        _write(
            self.root / "pending.residual",
            _residual_parts(ef, pending.task_id, self._next_seq(), layout),
        )
        _write(self.root / "pending.json", encoded)
        self.save_residual(ef, pending.task_id, spec)

    def load_pending(self) -> PendingUpload | None:
        """The unacknowledged upload, or None. Raises `DeviceStoreError` if pending.json is
        not the metadata `save_pending` writes."""
        meta_path, frame_path = self.root / "pending.json", self.root / "pending.frame"
        if not meta_path.exists():
            return None  # none pending (a missing frame beside pending.json is damage: below)
        meta = _read_json(meta_path, "pending upload")
        # Files written before the check was recorded carry none. Without it a flipped bit in
        # the key or round id made the re-send another upload: refused as the round's
        # duplicate, its content went back into the residual while the coordinator held it.
        check = meta.pop("check", None)
        if check is not None and check != _meta_check(meta):
            raise DeviceStoreError(
                f"{meta_path}: its check does not match its fields (a bit flipped, or edited)"
            )
        round_id = _count(meta, "round_id", meta_path)
        size = _count(meta, "bytes", meta_path)
        dense = _count(meta, "dense_bytes", meta_path, default=0)
        key, digest = meta.get("key"), meta.get("sha256")
        if not isinstance(key, str) or not 1 <= len(key) <= 128 or not key.isascii():
            raise DeviceStoreError(f"{meta_path}: key must be 1 to 128 ASCII characters")
        # Files written before the digest was recorded carry none; the length check remains.
        if digest is not None and (
            not isinstance(digest, str) or len(digest) != 64 or set(digest) - _HEX_DIGITS
        ):
            raise DeviceStoreError(f"{meta_path}: sha256 must be 64 lower-case hex digits")
        # Files an older SDK wrote name no task: their content is the legacy residual's.
        task_id = _task_field(meta)
        if "task_id" in meta and task_id is None:
            raise DeviceStoreError(f"{meta_path}: task_id must be an integer in [0, 2^63)")
        returns = meta.get("return_refused", True)  # absent: written by an older SDK
        if not isinstance(returns, bool):
            raise DeviceStoreError(f"{meta_path}: return_refused must be true or false")
        # Absent: no loss asked for, or written by an SDK before it was kept. One that is not a
        # loss the coordinator takes (a foreign or damaged file) is dropped, not refused: the
        # upload is re-sent without it rather than lost with the file.
        loss = _train_loss(meta.get("train_loss"))
        frame = _read_sized(frame_path, size) if size <= _MAX_FRAME_BYTES else None
        if frame is None or (digest is not None and hashlib.sha256(frame).hexdigest() != digest):
            # Not the frame this metadata describes: written before pending.json (the commit
            # point), so it is damaged. The upload counts as delivered, as without pending.json.
            log.warning(
                "%s: the pending upload's frame for round %d is %s: the upload is dropped, "
                "and its content (which the residual already left out) is lost unless the "
                "coordinator received it",
                frame_path,
                round_id,
                "missing or of another length" if frame is None else "damaged (SHA-256)",
            )
            return None
        accepted = self.load_accepted(round_id)
        if accepted is not None and accepted.frame == frame:
            # accept_pending committed (the record holds this upload) but a crash came before
            # it forgot the pending copy: finish that, or a refusal of a re-send would return
            # the content to the residual while the record returns it again later.
            self.clear_pending()
            return None
        spec = None
        if "spec" in meta:
            try:
                spec = ModelSpec.from_json(meta["spec"])
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                raise DeviceStoreError(f"{meta_path}: spec is not a model layout ({exc})") from exc
        return PendingUpload(round_id, key, frame, dense, spec, task_id, returns, loss)

    def _holds_other(self, key: str | None) -> bool:
        """Whether the pending upload held is not the one of idempotency key `key` (none held,
        or another: a later `save_pending` replaced it). False for `key` None (any)."""
        if key is None:
            return False
        try:
            meta = _read_json(self.root / "pending.json", "pending upload")
        except (DeviceStoreError, OSError):
            return True
        return meta.get("key") != key

    def clear_pending(self, key: str | None = None) -> None:
        """Forget the pending upload, keeping the residual that assumes it. With `key`, only
        if the upload held has that idempotency key (see `refuse_pending`)."""
        self._recover()
        if self._holds_other(key):
            return
        meta, held = self.root / "pending.json", self.root / "pending.residual"
        if meta.exists() and held.exists():
            # save_pending committed but had not yet rewritten the task's file: finish that.
            self._finish(held)
        _unlink(meta)
        _unlink(self.root / "pending.frame")
        _unlink(held)

    def refuse_pending(
        self, sent: npt.NDArray[np.float32], size: int, key: str | None = None
    ) -> ErrorFeedback | None:
        """Forget a pending upload the coordinator refused for good, adding `sent` (its decoded
        update, float32[size]) back into the residual of the upload's task, which is returned
        (None, the residual untouched, when the one held is another model's: see
        `_add_to_residual`).

        With `key` (the refused upload's idempotency key), nothing is done and None returned
        unless the pending upload held is that one: one the directory no longer holds was
        settled already (adding it again would count it twice), or replaced by a later
        upload, which may be another task's (whose residual must not take it, nor the later
        upload be forgotten).

        One crash-safe step: a crash before the commit leaves the upload pending with the
        residual untouched (a retry is refused again and adds `sent` once); after it, the
        residual holds `sent`. The values equal `clear_pending` then adding `sent`.
        """
        if sent.shape != (size,):
            raise ValueError(f"sent of shape {sent.shape}, model has {size} scalars")
        self._recover()
        if self._holds_other(key):
            return None
        task_id, layout = None, None
        if (self.root / "pending.json").exists():
            try:
                meta = _read_json(self.root / "pending.json", "pending upload")
            except DeviceStoreError:
                pass  # not an upload load_pending returns: nothing of it is named
            else:
                task_id, layout = _task_field(meta), _spec_layout(meta)
        return self._add_to_residual(
            size,
            sent,
            "pending.refused",
            "pending.json",
            ("pending.frame", "pending.residual"),
            task_id,
            layout,
        )

    # -- accepted uploads awaiting their rounds' outcomes ---------------------------------
    #
    # accepted-<r>.json is the commit point of every step on the record of round r: written
    # last by save_accepted (after its frame and, for a secure record, the residual that
    # assumes it), removed first by return_accepted (after it wrote the residual with the
    # content added back), by forget_accepted and by the eviction past MAX_ACCEPTED. So a crash
    # never adds a record's content twice and never loses it; records of other rounds are not
    # touched by a step on one.

    def save_accepted(self, record: AcceptedUpload, ef: ErrorFeedback | None = None) -> None:
        """Keep `record` until its round's outcome is known, beside the records of other rounds
        (one of the same round is replaced). Past `MAX_ACCEPTED` records the oldest (lowest
        round id) is forgotten, its content counted as delivered: the most likely outcome, the
        behaviour before records were kept, and the only one that does not send every upload
        twice against a coordinator that never answers `round_outcome`. With `ef`, that
        residual is saved in the same crash-safe step (a secure round's, which assumes the
        record)."""
        if not 1 <= record.round_id < 2**63:
            raise ValueError(f"round id {record.round_id} is not in [1, 2^63)")
        _check_task_id(record.task_id, "accepted upload")
        self._recover()
        self._write_record(record, ef)
        if ef is not None:
            self.save_residual(ef, record.task_id, _spec_if(record.spec, ef.size))
        self._evict()

    def _write_record(self, record: AcceptedUpload, ef: ErrorFeedback | None) -> None:
        meta = {
            "round_id": record.round_id,
            "bytes": len(record.frame),
            "sha256": hashlib.sha256(record.frame).hexdigest(),
            "spec": record.spec.to_json(),
        }
        if record.task_id is not None:
            meta["task_id"] = record.task_id
        if not record.return_refused:
            meta["return_refused"] = False
        if (sender := self._sender()) is not None:
            meta["device_id"] = sender  # `_identity_held` reads it
        encoded = json.dumps(meta).encode()
        if len(encoded) > _MAX_JSON_BYTES:
            raise DeviceStoreError(
                f"accepted upload metadata of {len(encoded)} bytes is over the "
                f"{_MAX_JSON_BYTES}-byte cap; not saved"
            )
        r = record.round_id
        _unlink(self._record(r, "json"))  # an older record must never pair with this frame
        _write(self._record(r, "frame"), record.frame)
        if ef is not None:
            layout = _layout_if(record.spec, ef.size)
            _write(
                self._record(r, "residual"),
                _residual_parts(ef, record.task_id, self._next_seq(), layout),
            )
        _write(self._record(r, "json"), encoded)

    def _evict(self) -> None:
        """Forget the oldest records past `MAX_ACCEPTED` (see `save_accepted`)."""
        held = sorted(r for r, kinds in self._record_files().items() if "json" in kinds)
        for round_id in held[: max(0, len(held) - MAX_ACCEPTED)]:
            self._drop_record(round_id)

    def _drop_record(self, round_id: int) -> None:
        _unlink(self._record(round_id, "json"))  # the commit point
        _unlink(self._record(round_id, "frame"))

    def accept_pending(self, pending: PendingUpload, spec: ModelSpec | None = None) -> None:
        """The coordinator accepted `pending`: it becomes an accepted record (see
        `save_accepted`) and stops being pending. Without a layout (`spec`, or the one stored
        with it) its content cannot be restored, so it is only forgotten, as before."""
        spec = spec if spec is not None else pending.spec
        if spec is not None and pending.round_id >= 1:
            self.save_accepted(
                AcceptedUpload(
                    pending.round_id, pending.frame, spec, pending.task_id, pending.return_refused
                )
            )
        self.clear_pending(pending.key)  # a later upload that replaced it stays pending

    def accepted_rounds(self) -> list[int]:
        """The rounds of the accepted records held, oldest first (not checked: a record that
        does not load is no record for `load_accepted`)."""
        found = self._record_files()
        return sorted(r for r, kinds in found.items() if {"json", "frame"} <= kinds)

    def _load_record(self, meta_path: Path, frame_path: Path) -> AcceptedUpload | None:
        if not meta_path.exists() or not frame_path.exists():
            return None
        try:
            meta = _read_json(meta_path, "accepted upload")
            round_id = _count(meta, "round_id", meta_path)
            size = _count(meta, "bytes", meta_path)
            spec = ModelSpec.from_json(meta["spec"])
        except (DeviceStoreError, ValueError, TypeError, KeyError, AttributeError):
            return None
        task_id = _task_field(meta)
        if "task_id" in meta and task_id is None:
            return None
        returns = meta.get("return_refused", True)
        if not isinstance(returns, bool):
            return None
        digest = meta.get("sha256")
        if round_id < 1 or size > _MAX_FRAME_BYTES:
            return None
        frame = _read_sized(frame_path, size)
        if frame is None or hashlib.sha256(frame).hexdigest() != digest:
            return None
        return AcceptedUpload(round_id, frame, spec, task_id, returns)

    def load_accepted(self, round_id: int | None = None) -> AcceptedUpload | None:
        """The accepted record of `round_id` (by default the oldest one that loads), or None:
        also for files that are not a whole record (a torn or foreign file must not stop every
        later check-in)."""
        rounds = self.accepted_rounds() if round_id is None else [round_id]
        for r in rounds:
            record = self._load_record(self._record(r, "json"), self._record(r, "frame"))
            if record is not None and record.round_id == r:
                return record
        return None

    def forget_accepted(self, round_id: int) -> None:
        """The record of `round_id` reached the model (or cannot be restored): drop it, keeping
        the residual. Records of other rounds are left alone."""
        self._recover()
        self._drop_record(round_id)

    def return_accepted(
        self, round_id: int, sent: npt.NDArray[np.float32] | npt.NDArray[np.float64], size: int
    ) -> ErrorFeedback | None:
        """The round of the record ended without its content in the model: add `sent` (the
        record's decoded content, float32[size]; or float64[size], added in float64, which takes
        a secure input never taken back to the residual from before it exactly) to the residual
        and drop the record, in one crash-safe step; returns the new residual. None (nothing added) when no record of
        `round_id` is held, so a second call, or one after a crash that committed, adds nothing;
        None too, with the record dropped and the residual untouched, when the residual held is
        another model's (see `_add_to_residual`).
        """
        if sent.shape != (size,):
            raise ValueError(f"sent of shape {sent.shape}, model has {size} scalars")
        self._recover()
        record = self.load_accepted(round_id)
        if record is None:
            return None
        return self._add_to_residual(
            size,
            sent,
            f"accepted-{round_id}.settled",
            f"accepted-{round_id}.json",
            (f"accepted-{round_id}.frame",),
            record.task_id,
            _layout_if(record.spec, size),
        )

    def _add_to_residual(
        self,
        size: int,
        sent: npt.NDArray[np.float32] | npt.NDArray[np.float64],
        staging: str,
        commit: str,
        leftovers: tuple[str, ...],
        task_id: int | None,
        layout: bytes | None,
    ) -> ErrorFeedback | None:
        """`task_id`'s residual += `sent`, written to `staging` first; removing the `commit`
        file is the commit point (`_recover` finishes or drops the step after a crash), then the
        staged residual replaces the task's file and the `leftovers` go. Other tasks' residuals
        are not touched; `task_id` None is the legacy residual (an older SDK's upload).

        A task's residual is of one model: the one the device last encoded for in that task. If
        it holds one of another size (the task's model changed size since `sent` was encoded),
        or names another layout than `layout` (the fingerprint of the layout `sent` is of, None:
        unknown), `sent` belongs to a model whose residual is gone: it is not added, and that
        residual is not replaced (adding it to zeros would discard the current model's
        residual). The upload or record is then dropped as if delivered and None returned.
        No whole residual of this task held (none, or a file that is no residual: a FIFO, a
        symlink, torn, foreign, failing its checksum): `sent` starts one, replacing the file.
        """
        if task_id is not None:
            self._claim_legacy(task_id, size)
        current = self._residual_path(task_id)
        # A foreign directory where the residual is written: the store's error, nothing done
        # (read as another model's residual, the content was dropped as delivered).
        _no_directory(self._dest(task_id))
        _no_directory(current)
        stored = self._held(task_id, None, current)  # None too if it names another task
        held = None if stored is None else stored[1]
        if stored is not None and (stored[0].size != size or _other_layout(layout, held)):
            if current.name in leftovers:  # a window of this very upload: keep what it holds
                self._finish(current)
            _unlink(self.root / commit)
            for name in leftovers:
                _unlink(self.root / name)
            return None
        base = stored[0] if stored is not None else ErrorFeedback(size)
        ef = ErrorFeedback(size)
        with np.errstate(over="ignore", invalid="ignore"):
            ef.residual = (base.residual + sent).astype(np.float32)
        if not np.isfinite(ef.residual).all():
            # Near float32's largest value the sum overflows. An infinite residual would make
            # every later step refuse its input (`ErrorFeedback.step` never keeps one) and the
            # file unreadable after a restart (the whole residual lost): those coordinates keep
            # what the residual held, their returned content dropped as if delivered.
            over = ~np.isfinite(ef.residual)
            ef.residual[over] = base.residual[over]
        staged = self.root / staging
        layout = layout if layout is not None else held
        _write(staged, _residual_parts(ef, task_id, self._next_seq(), layout))
        _unlink(self.root / commit)  # the commit point
        dest = self._dest(task_id)
        _replace(staged, dest)
        for name in leftovers:
            _unlink(self.root / name)
        self._evict_residuals(dest)
        return ef
