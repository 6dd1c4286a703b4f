"""The app directory: what a device keeps between launches so a restarted app resumes.

Layout (every file replaced atomically: write to a temp file, fsync, rename):

    device_key       32-byte Ed25519 private key (mode 0600)
    state.json       device id, task, model version, digest, whether the model is exact
    model.f32        the model at that version, little-endian float32[d]
    residual.bin     the error-feedback residual (`ErrorFeedback.to_bytes`)
    pending.json     an upload not yet acknowledged: round, idempotency key, frame file name
    pending.frame    its frame bytes; pending.residual the residual that assumes it
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from compression import ErrorFeedback
from protocol import auth

__all__ = ["DeviceStore", "PendingUpload"]


class PendingUpload:
    """An encoded update waiting for the coordinator's receipt."""

    __slots__ = ("round_id", "key", "frame", "dense_bytes")

    def __init__(self, round_id: int, key: str, frame: bytes, dense_bytes: int = 0) -> None:
        self.round_id = round_id
        self.key = key
        self.frame = frame
        self.dense_bytes = dense_bytes  # the dense fp32 size of the same update (ledger baseline)


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class DeviceStore:
    """Files under `app_dir` (created if missing). One process per directory."""

    def __init__(self, app_dir: str | os.PathLike[str]) -> None:
        self.root = Path(app_dir).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)

    # -- identity ------------------------------------------------------------------------

    def private_key(self) -> bytes:
        """The device's Ed25519 key, made on first use."""
        path = self.root / "device_key"
        if path.exists():
            key = path.read_bytes()
            if len(key) != 32:
                raise ValueError(f"{path} is not a 32-byte Ed25519 key")
            return key
        key = auth.generate_private_key()
        _write(path, key, 0o600)
        return key

    # -- state ---------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        path = self.root / "state.json"
        if not path.exists():
            return {}
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path} is not a JSON object")
        return data

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
        raw = path.read_bytes()
        if len(raw) != 4 * size:
            return None
        params = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        return params, int(st["model_version"]), bool(st.get("model_exact", False))

    def forget_model(self) -> None:
        (self.root / "model.f32").unlink(missing_ok=True)
        st = self.state()
        for k in ("model_version", "model_digest", "model_exact"):
            st.pop(k, None)
        _write(self.root / "state.json", json.dumps(st, sort_keys=True).encode())

    # -- error feedback ------------------------------------------------------------------

    def load_residual(self, size: int) -> ErrorFeedback | None:
        path = self.root / "residual.bin"
        if (self.root / "pending.json").exists() and (self.root / "pending.residual").exists():
            path = self.root / "pending.residual"
        if not path.exists():
            return None
        try:
            return ErrorFeedback.from_bytes(path.read_bytes(), size)
        except ValueError:
            return None  # another model's residual: start afresh

    def save_residual(self, ef: ErrorFeedback) -> None:
        _write(self.root / "residual.bin", ef.to_bytes())

    # -- pending upload ------------------------------------------------------------------

    def save_pending(self, pending: PendingUpload, ef: ErrorFeedback) -> None:
        """Persist the frame and the residual that assumes it; `pending.json` is the commit
        point, so a crash at any step leaves either the old state or the new one whole."""
        _write(self.root / "pending.frame", pending.frame)
        _write(self.root / "pending.residual", ef.to_bytes())
        meta = {
            "round_id": pending.round_id,
            "key": pending.key,
            "bytes": len(pending.frame),
            "dense_bytes": pending.dense_bytes,
        }
        _write(self.root / "pending.json", json.dumps(meta).encode())
        self.save_residual(ef)

    def load_pending(self) -> PendingUpload | None:
        meta_path, frame_path = self.root / "pending.json", self.root / "pending.frame"
        if not meta_path.exists() or not frame_path.exists():
            return None
        meta = json.loads(meta_path.read_text())
        frame = frame_path.read_bytes()
        if len(frame) != meta.get("bytes"):
            return None
        return PendingUpload(
            int(meta["round_id"]), str(meta["key"]), frame, int(meta.get("dense_bytes", 0))
        )

    def clear_pending(self) -> None:
        if not any((self.root / n).exists() for n in ("pending.json", "pending.frame")):
            (self.root / "pending.residual").unlink(missing_ok=True)
            return
        (self.root / "pending.json").unlink(missing_ok=True)
        (self.root / "pending.frame").unlink(missing_ok=True)
        (self.root / "pending.residual").unlink(missing_ok=True)
