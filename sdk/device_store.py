"""The app directory: what a device keeps between launches so a restarted app resumes.

Layout (every file replaced atomically: write to a temp file, fsync, rename, fsync the directory):

    device_key       32-byte Ed25519 private key (every file mode 0600, the directory 0700)
    state.json       device id, task, model version, digest, whether the model is exact
    model.f32        the model at that version, little-endian float32[d]
    residual.bin     the error-feedback residual (`ErrorFeedback.to_bytes`)
    pending.json     an upload not yet acknowledged: round, idempotency key, frame file name
    pending.frame    its frame bytes; pending.residual the residual that assumes it
    pending.refused  the residual after a refusal, until it replaces residual.bin
    accepted.json    the last accepted upload whose round's outcome is not known yet: round,
                     layout, size and SHA-256 of accepted.frame (at most one; bounded)
    accepted.frame   what that upload carried, as an update frame decoding under the layout:
                     the frame sent (plain round), or the values a masked input stood for
    accepted.residual  the residual that assumes a secure record, until it replaces residual.bin
    accepted.settled   the residual with the record's content added back, likewise
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from compression import ErrorFeedback, ModelSpec
from protocol import auth

__all__ = [
    "AcceptedUpload",
    "DeviceStore",
    "DeviceStoreError",
    "PendingUpload",
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


class DeviceStoreError(ValueError):
    """A file in the app directory is corrupt, foreign or unsafe (named in the message)."""


class PendingUpload:
    """An encoded update waiting for the coordinator's receipt."""

    __slots__ = ("round_id", "key", "frame", "dense_bytes", "spec")

    def __init__(
        self,
        round_id: int,
        key: str,
        frame: bytes,
        dense_bytes: int = 0,
        spec: ModelSpec | None = None,
    ) -> None:
        self.round_id = round_id
        self.key = key
        self.frame = frame
        self.dense_bytes = dense_bytes  # the dense fp32 size of the same update (ledger baseline)
        # The layout the frame decodes under: after a restart it lets a refused upload's
        # content go back into the residual (None for records written before it was kept).
        self.spec = spec


class AcceptedUpload:
    """An upload the coordinator accepted whose round's outcome the device has not learnt:
    `frame` decodes under `spec` to the dense content (float32[d]) it added to the round."""

    __slots__ = ("round_id", "frame", "spec")

    def __init__(self, round_id: int, frame: bytes, spec: ModelSpec) -> None:
        self.round_id = round_id
        self.frame = frame
        self.spec = spec


def _fsync_dir(directory: Path) -> None:
    # A rename is durable only once the directory entry is on disk: without this a power loss
    # can bring back the old name after later files (e.g. pending.json) already persisted.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    # Owner-only by default: the residual, model and pending frame derive from the user's data.
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        # O_CREAT keeps the mode of a temp file left over from an earlier crash: set it anyway.
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:  # os.write may write less than asked (Linux caps one call at ~2 GiB)
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _read(path: Path, limit: int, what: str) -> bytes:
    """The bytes of `path`, refusing a non-regular file or one over `limit` bytes unread."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise DeviceStoreError(f"{path} ({what}) is not a regular file")
    if st.st_size > limit:
        raise DeviceStoreError(f"{path} ({what}) is {st.st_size} bytes, over the {limit} cap")
    return path.read_bytes()


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(_read(path, _MAX_JSON_BYTES, what))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DeviceStoreError(f"{path} ({what}) is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DeviceStoreError(f"{path} ({what}) is not a JSON object")
    return data


def _count(meta: dict[str, Any], name: str, path: Path, default: int | None = None) -> int:
    value = meta.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise DeviceStoreError(f"{path}: {name} must be a non-negative integer")
    return value


class DeviceStore:
    """Files under `app_dir` (created if missing). One process per directory."""

    def __init__(self, app_dir: str | os.PathLike[str]) -> None:
        self.root = Path(app_dir).expanduser()
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    # -- identity ------------------------------------------------------------------------

    def private_key(self) -> bytes:
        """The device's Ed25519 key (32 raw bytes, file mode 0600), made on first use."""
        path = self.root / "device_key"
        if path.exists():
            key = _read(path, KEY_BYTES, "Ed25519 key")
            if len(key) != KEY_BYTES:
                raise DeviceStoreError(f"{path} is not a {KEY_BYTES}-byte Ed25519 key")
            if stat.S_IMODE(os.stat(path).st_mode) & 0o077:
                os.chmod(path, 0o600)  # readable by others: take it back to owner-only
            return key
        key = auth.generate_private_key()
        _write(path, key, 0o600)
        return key

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

    # -- model ---------------------------------------------------------------------------

    def save_model(
        self, task_id: int, params: npt.NDArray[np.float32], version: int, digest: str, exact: bool
    ) -> None:
        _write(self.root / "model.f32", params.astype("<f4").tobytes())
        self.update_state(
            task_id=task_id, model_version=version, model_digest=digest, model_exact=exact
        )

    def load_model(
        self, task_id: int, size: int
    ) -> tuple[npt.NDArray[np.float32], int, bool] | None:
        """(params float32[size], version, exact) held for `task_id`, or None."""
        st = self.state()
        path = self.root / "model.f32"
        if st.get("task_id") != task_id or "model_version" not in st or not path.exists():
            return None
        if os.stat(path).st_size != 4 * size:  # checked before reading it
            return None
        raw = path.read_bytes()
        if len(raw) != 4 * size:
            return None
        version = st["model_version"]
        if isinstance(version, bool) or not isinstance(version, int):
            raise DeviceStoreError(f"{self.root / 'state.json'}: model_version is not an integer")
        if not 0 <= version < 2**63:
            # No coordinator version (an older SDK saved -1 when the header was missing): asked
            # for as `have`, every download would be refused, so the model counts as not held.
            return None
        params = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        return params, version, bool(st.get("model_exact", False))

    def forget_model(self) -> None:
        _unlink(self.root / "model.f32")
        st = self.state()
        for k in ("model_version", "model_digest", "model_exact"):
            st.pop(k, None)
        _write(self.root / "state.json", json.dumps(st, sort_keys=True).encode())

    # -- error feedback ------------------------------------------------------------------
    #
    # residual.bin is the residual, except in two windows, each closed by a rename:
    # - after save_pending committed pending.json and before it rewrote residual.bin:
    #   pending.residual exists only then, so with pending.json it is the residual;
    # - after refuse_pending removed pending.json (its commit point) and before it renamed
    #   pending.refused over residual.bin: without pending.json, pending.refused is the residual.
    # A pending.refused next to pending.json is a refusal that never committed: ignored.

    #
    # The accepted record has the same two windows: accepted.residual with accepted.json is the
    # residual (save_accepted committed, residual.bin not yet rewritten); accepted.settled
    # without accepted.json is the residual (return_accepted committed, not yet renamed).

    def _residual_path(self) -> Path:
        if (self.root / "pending.json").exists():
            if (self.root / "pending.residual").exists():
                return self.root / "pending.residual"
        elif (self.root / "pending.refused").exists():
            return self.root / "pending.refused"
        if (self.root / "accepted.json").exists():
            if (self.root / "accepted.residual").exists():
                return self.root / "accepted.residual"
        elif (self.root / "accepted.settled").exists():
            return self.root / "accepted.settled"
        return self.root / "residual.bin"

    def _settle_refusal(self) -> None:
        """Finish (or drop, if it never committed) a refusal a crash interrupted."""
        refused = self.root / "pending.refused"
        if not refused.exists():
            return
        if (self.root / "pending.json").exists():
            _unlink(refused)
        else:
            os.replace(refused, self.root / "residual.bin")
            _fsync_dir(self.root)

    def _settle_accepted(self) -> None:
        """Finish (or drop, if it never committed) an accepted-record step a crash interrupted."""
        meta, held = self.root / "accepted.json", self.root / "accepted.residual"
        settled = self.root / "accepted.settled"
        if meta.exists():
            _unlink(settled)  # a return that never committed
            if held.exists():  # save_accepted committed before it rewrote residual.bin
                os.replace(held, self.root / "residual.bin")
                _fsync_dir(self.root)
        else:
            _unlink(held)  # a save that never committed, or a frame whose record is gone
            _unlink(self.root / "accepted.frame")
            if settled.exists():  # a return that committed before its rename
                os.replace(settled, self.root / "residual.bin")
                _fsync_dir(self.root)

    def _recover(self) -> None:
        # At most one of these windows is open: each step closes its own before returning.
        self._settle_refusal()
        self._settle_accepted()

    def load_residual(self, size: int) -> ErrorFeedback | None:
        """The residual (float32[size]) the device carries, or None if none is held for `size`."""
        path = self._residual_path()
        if not path.exists():
            return None
        if os.stat(path).st_size != 16 + 4 * size:  # another model's (or a torn) file: unread
            return None
        try:
            return ErrorFeedback.from_bytes(path.read_bytes(), size)
        except ValueError:
            return None  # another model's residual: start afresh

    def save_residual(self, ef: ErrorFeedback) -> None:
        _write(self.root / "residual.bin", ef.to_bytes())
        # Leftovers of an interrupted save or refusal would otherwise shadow this newer residual.
        for name in (
            "pending.residual",
            "pending.refused",
            "accepted.residual",
            "accepted.settled",
        ):
            _unlink(self.root / name)

    # -- pending upload ------------------------------------------------------------------

    def save_pending(self, pending: PendingUpload, ef: ErrorFeedback) -> None:
        """Persist the frame and the residual that assumes it; `pending.json` is the commit
        point, so a crash at any step leaves either the old state or the new one whole."""
        meta: dict[str, Any] = {
            "round_id": pending.round_id,
            "key": pending.key,
            "bytes": len(pending.frame),
            "dense_bytes": pending.dense_bytes,
            "sha256": hashlib.sha256(pending.frame).hexdigest(),
        }
        if pending.spec is not None:
            meta["spec"] = pending.spec.to_json()
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
        _write(self.root / "pending.residual", ef.to_bytes())
        _write(self.root / "pending.json", encoded)
        self.save_residual(ef)

    def load_pending(self) -> PendingUpload | None:
        """The unacknowledged upload, or None. Raises `DeviceStoreError` if pending.json is
        not the metadata `save_pending` writes."""
        meta_path, frame_path = self.root / "pending.json", self.root / "pending.frame"
        if not meta_path.exists() or not frame_path.exists():
            return None
        meta = _read_json(meta_path, "pending upload")
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
        if size > _MAX_FRAME_BYTES or os.stat(frame_path).st_size != size:
            return None  # not the frame this metadata describes
        frame = frame_path.read_bytes()
        if len(frame) != size:
            return None
        if digest is not None and hashlib.sha256(frame).hexdigest() != digest:
            return None
        accepted = self.load_accepted()
        if accepted is not None and accepted.round_id == round_id and accepted.frame == frame:
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
        return PendingUpload(round_id, key, frame, dense, spec)

    def clear_pending(self) -> None:
        """Forget the pending upload, keeping the residual that assumes it."""
        self._recover()
        meta, held = self.root / "pending.json", self.root / "pending.residual"
        if meta.exists() and held.exists():
            # save_pending committed but had not yet rewritten residual.bin: finish that first.
            os.replace(held, self.root / "residual.bin")
            _fsync_dir(self.root)
        _unlink(meta)
        _unlink(self.root / "pending.frame")
        _unlink(held)

    def refuse_pending(self, sent: npt.NDArray[np.float32], size: int) -> ErrorFeedback:
        """Forget a pending upload the coordinator refused for good, adding `sent` (its decoded
        update, float32[size]) back into the residual, which is returned.

        One crash-safe step: a crash before the commit leaves the upload pending with the
        residual untouched (a retry is refused again and adds `sent` once); after it, the
        residual holds `sent`. The values equal `clear_pending` then adding `sent`.
        """
        if sent.shape != (size,):
            raise ValueError(f"sent of shape {sent.shape}, model has {size} scalars")
        self._recover()
        return self._add_to_residual(
            size, sent, "pending.refused", "pending.json", ("pending.frame", "pending.residual")
        )

    # -- accepted upload awaiting its round's outcome ------------------------------------
    #
    # accepted.json is the commit point of both steps: written last by save_accepted (after
    # its frame and, for a secure record, the residual that assumes it), removed first by
    # return_accepted (after it wrote the residual with the content added back) and by
    # forget_accepted. So a crash never adds the content twice and never loses it.

    def save_accepted(self, record: AcceptedUpload, ef: ErrorFeedback | None = None) -> None:
        """Keep `record` until its round's outcome is known, replacing an older record (whose
        content then counts as delivered: the behaviour before records were kept, and the only
        one against a coordinator that never answers `round_outcome`). With `ef`, that residual
        is saved in the same crash-safe step (a secure round's, which assumes the record)."""
        meta = {
            "round_id": record.round_id,
            "bytes": len(record.frame),
            "sha256": hashlib.sha256(record.frame).hexdigest(),
            "spec": record.spec.to_json(),
        }
        encoded = json.dumps(meta).encode()
        if len(encoded) > _MAX_JSON_BYTES:
            raise DeviceStoreError(
                f"accepted upload metadata of {len(encoded)} bytes is over the "
                f"{_MAX_JSON_BYTES}-byte cap; not saved"
            )
        self._recover()
        _unlink(self.root / "accepted.json")  # an older record must never pair with this frame
        _write(self.root / "accepted.frame", record.frame)
        if ef is not None:
            _write(self.root / "accepted.residual", ef.to_bytes())
        _write(self.root / "accepted.json", encoded)
        if ef is not None:
            self.save_residual(ef)

    def accept_pending(self, pending: PendingUpload, spec: ModelSpec | None = None) -> None:
        """The coordinator accepted `pending`: it becomes the accepted record (see
        `save_accepted`) and stops being pending. Without a layout (`spec`, or the one stored
        with it) its content cannot be restored, so it is only forgotten, as before."""
        spec = spec if spec is not None else pending.spec
        if spec is not None:
            self.save_accepted(AcceptedUpload(pending.round_id, pending.frame, spec))
        self.clear_pending()

    def load_accepted(self) -> AcceptedUpload | None:
        """The accepted upload whose outcome is awaited, or None: also for files that are not
        a whole record (a torn or foreign file must not stop every later check-in)."""
        meta_path, frame_path = self.root / "accepted.json", self.root / "accepted.frame"
        if not meta_path.exists() or not frame_path.exists():
            return None
        try:
            meta = _read_json(meta_path, "accepted upload")
            round_id = _count(meta, "round_id", meta_path)
            size = _count(meta, "bytes", meta_path)
            spec = ModelSpec.from_json(meta["spec"])
        except (DeviceStoreError, ValueError, TypeError, KeyError, AttributeError):
            return None
        digest = meta.get("sha256")
        if round_id < 1 or size > _MAX_FRAME_BYTES or os.stat(frame_path).st_size != size:
            return None
        frame = frame_path.read_bytes()
        if len(frame) != size or hashlib.sha256(frame).hexdigest() != digest:
            return None
        return AcceptedUpload(round_id, frame, spec)

    def forget_accepted(self, round_id: int) -> None:
        """The record of `round_id` reached the model (or cannot be restored): drop it, keeping
        the residual. A record of another round is left alone."""
        self._recover()
        record = self.load_accepted()
        if record is not None and record.round_id != round_id:
            return
        _unlink(self.root / "accepted.json")
        _unlink(self.root / "accepted.frame")

    def return_accepted(
        self, round_id: int, sent: npt.NDArray[np.float32], size: int
    ) -> ErrorFeedback | None:
        """The round of the record ended without its content in the model: add `sent` (the
        record's decoded content, float32[size]) to the residual and drop the record, in one
        crash-safe step; returns the new residual. None (nothing done) when no record of
        `round_id` is held, so a second call, or one after a crash that committed, adds nothing.
        """
        if sent.shape != (size,):
            raise ValueError(f"sent of shape {sent.shape}, model has {size} scalars")
        self._recover()
        record = self.load_accepted()
        if record is None or record.round_id != round_id:
            return None
        return self._add_to_residual(
            size, sent, "accepted.settled", "accepted.json", ("accepted.frame",)
        )

    def _add_to_residual(
        self,
        size: int,
        sent: npt.NDArray[np.float32],
        staging: str,
        commit: str,
        leftovers: tuple[str, ...],
    ) -> ErrorFeedback:
        """Residual += `sent`, written to `staging` first; removing the `commit` file is the
        commit point (`_recover` finishes or drops the step after a crash), then the staged
        residual replaces residual.bin and the `leftovers` go."""
        base = self.load_residual(size) or ErrorFeedback(size)
        ef = ErrorFeedback(size)
        ef.residual = (base.residual + sent).astype(np.float32)
        staged = self.root / staging
        _write(staged, ef.to_bytes())
        _unlink(self.root / commit)  # the commit point
        os.replace(staged, self.root / "residual.bin")
        _fsync_dir(self.root)
        for name in leftovers:
            _unlink(self.root / name)
        return ef
