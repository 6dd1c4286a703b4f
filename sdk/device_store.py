"""The app directory: what a device keeps between launches so a restarted app resumes.

Layout (every file replaced atomically: write to a temp file, fsync, rename, fsync the directory):

    device_key       32-byte Ed25519 private key (every file mode 0600, the directory 0700)
    state.json       device id, task, model version, digest, whether the model is exact
    model.f32        the model at that version, little-endian float32[d]
    residual.bin     the error-feedback residual (`ErrorFeedback.to_bytes`), of the one model
                     the device last encoded for (see `_add_to_residual`)
    pending.json     an upload not yet acknowledged: round, idempotency key, frame file name
    pending.frame    its frame bytes; pending.residual the residual that assumes it
    pending.refused  the residual after a refusal, until it replaces residual.bin
    accepted-<r>.json  an accepted upload to round r whose outcome is not known yet: round,
                     layout, size and SHA-256 of accepted-<r>.frame (at most MAX_ACCEPTED
                     records; the oldest is forgotten past that)
    accepted-<r>.frame what that upload carried, as an update frame decoding under the layout:
                     the frame sent (plain round), or the values a masked input stood for
    accepted-<r>.residual  the residual that assumes a secure record, until it replaces
                     residual.bin
    accepted-<r>.settled   the residual with the record's content added back, likewise
    accepted.json, accepted.frame (and .residual, .settled): the single record an older SDK
                     kept; moved to accepted-<r>.* when the directory is opened
"""

from __future__ import annotations

import hashlib
import json
import os
import re
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
    "MAX_ACCEPTED",
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
        # Finish what a crash interrupted, and move an older SDK's single accepted record to
        # the accepted-<r>.* files, before anything is read.
        self._recover()

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
    # Each accepted record (accepted-<r>.*) has the same two windows: accepted-<r>.residual
    # with accepted-<r>.json is the residual (save_accepted committed, residual.bin not yet
    # rewritten); accepted-<r>.settled without accepted-<r>.json is the residual (the record's
    # return committed, not yet renamed). Every step closes its window before it returns, so at
    # most one window (pending or accepted) is open at a time.

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

    def _residual_path(self) -> Path:
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

    def _settle_window(self, meta: Path, frame: Path, held: Path, settled: Path) -> None:
        """Finish (or drop, if it never committed) a step on one accepted record that a crash
        interrupted: `meta` is its commit file, `held` its save window, `settled` its return
        window."""
        if meta.exists():
            _unlink(settled)  # a return that never committed
            if held.exists():  # save_accepted committed before it rewrote residual.bin
                os.replace(held, self.root / "residual.bin")
                _fsync_dir(self.root)
            if not frame.exists():
                _unlink(meta)  # not a record (foreign): it would count against the bound
        else:
            _unlink(held)  # a save that never committed, or a frame whose record is gone
            _unlink(frame)
            if settled.exists():  # a return that committed before its rename
                os.replace(settled, self.root / "residual.bin")
                _fsync_dir(self.root)

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
        for name in ("pending.residual", "pending.refused"):
            _unlink(self.root / name)
        for round_id, kinds in self._record_files().items():
            for kind in kinds & {"residual", "settled"}:
                _unlink(self._record(round_id, kind))

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

    def refuse_pending(self, sent: npt.NDArray[np.float32], size: int) -> ErrorFeedback | None:
        """Forget a pending upload the coordinator refused for good, adding `sent` (its decoded
        update, float32[size]) back into the residual, which is returned (None, the residual
        untouched, when the one held is another model's: see `_add_to_residual`).

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
        self._recover()
        self._write_record(record, ef)
        if ef is not None:
            self.save_residual(ef)
        self._evict()

    def _write_record(self, record: AcceptedUpload, ef: ErrorFeedback | None) -> None:
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
        r = record.round_id
        _unlink(self._record(r, "json"))  # an older record must never pair with this frame
        _write(self._record(r, "frame"), record.frame)
        if ef is not None:
            _write(self._record(r, "residual"), ef.to_bytes())
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
            self.save_accepted(AcceptedUpload(pending.round_id, pending.frame, spec))
        self.clear_pending()

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
        digest = meta.get("sha256")
        if round_id < 1 or size > _MAX_FRAME_BYTES or os.stat(frame_path).st_size != size:
            return None
        frame = frame_path.read_bytes()
        if len(frame) != size or hashlib.sha256(frame).hexdigest() != digest:
            return None
        return AcceptedUpload(round_id, frame, spec)

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
        self, round_id: int, sent: npt.NDArray[np.float32], size: int
    ) -> ErrorFeedback | None:
        """The round of the record ended without its content in the model: add `sent` (the
        record's decoded content, float32[size]) to the residual and drop the record, in one
        crash-safe step; returns the new residual. None (nothing added) when no record of
        `round_id` is held, so a second call, or one after a crash that committed, adds nothing;
        None too, with the record dropped and the residual untouched, when the residual held is
        another model's (see `_add_to_residual`).
        """
        if sent.shape != (size,):
            raise ValueError(f"sent of shape {sent.shape}, model has {size} scalars")
        self._recover()
        if self.load_accepted(round_id) is None:
            return None
        return self._add_to_residual(
            size,
            sent,
            f"accepted-{round_id}.settled",
            f"accepted-{round_id}.json",
            (f"accepted-{round_id}.frame",),
        )

    def _add_to_residual(
        self,
        size: int,
        sent: npt.NDArray[np.float32],
        staging: str,
        commit: str,
        leftovers: tuple[str, ...],
    ) -> ErrorFeedback | None:
        """Residual += `sent`, written to `staging` first; removing the `commit` file is the
        commit point (`_recover` finishes or drops the step after a crash), then the staged
        residual replaces residual.bin and the `leftovers` go.

        The app directory holds the residual of one model: the one the device last encoded
        for. If it holds one of another size (the device moved to another task's model since
        `sent` was encoded), `sent` belongs to a model whose residual is gone: it is not
        added, and that residual is not replaced (adding it to zeros of its size would
        discard the current model's residual). The upload or record is then dropped as if
        delivered and None returned. No residual held at all: `sent` starts one.
        """
        current = self._residual_path()
        if current.exists() and os.stat(current).st_size != 16 + 4 * size:
            if current.name in leftovers:  # a window of this very upload: keep what it holds
                os.replace(current, self.root / "residual.bin")
                _fsync_dir(self.root)
            _unlink(self.root / commit)
            for name in leftovers:
                _unlink(self.root / name)
            return None
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
