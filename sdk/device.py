"""The device-side update pipeline: clip -> error feedback -> encode (torch-free)."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from compression import CodecConfig, EncodeReport, ErrorFeedback, ModelSpec, UpdateCodec
from compression._feedback import SUM_OVERFLOW, checked_sum

__all__ = ["UpdateEncoder", "clip_l2"]


def clip_l2(delta: npt.NDArray[np.float32], norm: float) -> npt.NDArray[np.float32]:
    """Scale `delta` down to L2 norm `norm` if it is longer (the DP and robustness clip)."""
    scale = _clip_scale(delta, norm)
    if scale is None:
        return delta
    return (delta * scale).astype(np.float32)


def _clip_scale(delta: npt.NDArray[np.float32], norm: float) -> np.float32 | None:
    """The factor `clip_l2` multiplies `delta` by, or None when it is left as it is."""
    length = float(np.linalg.norm(delta.astype(np.float64)))
    if length <= norm or length == 0.0:
        return None
    return np.float32(norm / length)


class UpdateEncoder:
    """What a device keeps between rounds to turn a model delta into an upload frame.

    Order, as in the design: optional L2 clip of the fresh delta, then error feedback adds the
    residual, then the codec encodes; the residual becomes exactly `u - decode(encode(u))`.
    With `error_feedback=False` the residual is dropped every round (plain compression).
    """

    def __init__(
        self,
        spec: ModelSpec,
        config: CodecConfig,
        *,
        error_feedback: bool = True,
        clip_norm: float | None = None,
    ) -> None:
        if clip_norm is not None and not (math.isfinite(clip_norm) and clip_norm > 0):
            raise ValueError("clip_norm must be a positive finite number")
        self.spec = spec
        self.codec = UpdateCodec(spec, config)
        self.error_feedback = error_feedback
        self.clip_norm = clip_norm
        self._ef: ErrorFeedback | None = None
        self._pending_u: npt.NDArray[np.float32] | None = None

    @property
    def config(self) -> CodecConfig:
        """The codec settings uploads are encoded with (`set_config` changes them)."""
        return self.codec.config

    def set_config(self, config: CodecConfig) -> None:
        """Switch codec settings (e.g. after warm-up rounds), keeping the residual."""
        if config != self.codec.config:
            self.codec = UpdateCodec(self.spec, config)

    @property
    def feedback(self) -> ErrorFeedback:
        """The error-feedback state, allocated on first use (float32[d])."""
        if self._ef is None:
            self._ef = ErrorFeedback(self.spec.size)
        return self._ef

    @property
    def pending(self) -> bool:
        """Whether an upload is outstanding: `refused` would restore its u (until `accepted`,
        `refused`, `dropped` or an encode without error feedback)."""
        return self._pending_u is not None

    @property
    def state_nbytes(self) -> int:
        """Bytes of float32[d] state held: the residual once allocated, and the outstanding
        upload's u (a view of a batch's u counts as its own d floats)."""
        held = 0 if self._ef is None else int(self._ef.residual.nbytes)
        return held + (0 if self._pending_u is None else int(self._pending_u.nbytes))

    def set_feedback(self, ef: ErrorFeedback) -> None:
        """Adopt `ef` (a residual of this model's size, e.g. read from the app directory) as
        the error-feedback state; `ValueError` for another size."""
        if ef.residual.shape != (self.spec.size,):
            raise ValueError("error-feedback state of the wrong size for this model")
        self._ef = ef

    def encode(
        self, delta: npt.NDArray[np.float32], rng: np.random.Generator, weight: float
    ) -> tuple[bytes, EncodeReport]:
        """Encode `delta` (float32[d], trained minus global params) into an upload frame
        weighted by `weight` (examples), clipping it and adding the residual first; returns
        the frame's bytes and its `EncodeReport`. The residual becomes what this frame did not
        send (`ValueError` for a delta of another size)."""
        if delta.shape != (self.spec.size,):
            raise ValueError(f"delta of shape {delta.shape}, model has {self.spec.size} scalars")
        d = np.asarray(delta, dtype=np.float32)
        if self.clip_norm is not None:
            d = clip_l2(d, self.clip_norm)
        return self._encode(d, rng, weight, owned=False)

    def encode_owned(
        self, delta: npt.NDArray[np.float32], rng: np.random.Generator, weight: float
    ) -> tuple[bytes, EncodeReport]:
        """`encode`, reusing `delta`'s buffer for the clip and for u = delta + residual: one
        parameter-sized array fewer at the peak, the same frame and residual bit for bit.

        For a caller that owns `delta` (a writable, C-contiguous float32[d] array nothing else
        reads) and gives it up: whether the call succeeds or fails, its content afterwards is
        unspecified, and with error feedback on it is the copy of u that `refused` restores
        until `accepted`, `dropped` or the next encode. Another dtype, layout or a read-only
        array is a `ValueError`, not a silent copy."""
        if delta.shape != (self.spec.size,):
            raise ValueError(f"delta of shape {delta.shape}, model has {self.spec.size} scalars")
        if not (
            isinstance(delta, np.ndarray)
            and delta.dtype == np.float32
            and delta.flags.c_contiguous
            and delta.flags.writeable
        ):
            raise ValueError("encode_owned needs a writable, C-contiguous float32 delta")
        # Writing into the residual or into the u kept for `refused` would lose what a failed
        # encode promises to keep (the residual unchanged, the outstanding upload's u).
        kept = [self._pending_u, None if self._ef is None else self._ef.residual]
        if any(a is not None and np.may_share_memory(delta, a) for a in kept):
            raise ValueError("encode_owned: delta shares memory with the encoder's own state")
        if self.clip_norm is not None:
            scale = _clip_scale(delta, self.clip_norm)
            if scale is not None:  # float32 times float32, as `clip_l2` computes it
                np.multiply(delta, scale, out=delta)
        return self._encode(delta, rng, weight, owned=True)

    def _encode(
        self, d: npt.NDArray[np.float32], rng: np.random.Generator, weight: float, *, owned: bool
    ) -> tuple[bytes, EncodeReport]:
        """The clipped delta `d` through error feedback and the codec (`owned`: u is computed
        into `d`'s buffer)."""
        if not self.error_feedback:
            out = self.codec.encode(d, rng, weight=weight)
            if self._ef is not None:  # dropped, never carried into a later upload
                self._ef.residual[:] = 0.0
            # Nothing for `refused` to restore: an earlier upload's u, kept while error
            # feedback was on, is not this upload's and may already be in the model.
            self._pending_u = None
            return out
        # `ErrorFeedback.step` in its two halves, so that u is computed once and kept for
        # `refused` (the whole step computed it again: a second parameter-sized copy alive at
        # once). A non-finite u or residual is refused, the residual kept.
        feedback = self.feedback
        if owned:
            # `checked_sum` into d's buffer: the same float32 sums. `held` is checked first, so
            # a residual of another shape fails before d is written.
            residual = feedback.held()
            with np.errstate(over="ignore"):
                u = np.add(d, residual, out=d)
            if not np.all(np.isfinite(u)):
                raise ValueError(SUM_OVERFLOW)
        else:
            u = checked_sum(d, feedback.held())
        frame, report = feedback.step_sum(u, self.codec, rng, weight)
        # Only once the step succeeded: a failed encode (e.g. a NaN delta) must leave what
        # `refused` would restore for the upload still outstanding, not a u never sent.
        self._pending_u = u
        return frame, report

    def hold(self, u: npt.NDArray[np.float32]) -> None:
        """Keep `u` (delta + residual, float32[d]) for `refused`, for an upload whose
        error-feedback step ran outside `encode` (the simulator's batched path)."""
        if u.shape != (self.spec.size,):
            raise ValueError(f"u of shape {u.shape}, model has {self.spec.size} scalars")
        self._pending_u = u

    def refused(self) -> None:
        """The last upload was refused (a straggler, a closed round): nothing of it reached the
        model, so the whole of `u` stays in the residual for a later round."""
        if self._pending_u is not None:
            self.feedback.residual[:] = self._pending_u
            self._pending_u = None

    def accepted(self) -> None:
        """The last upload was accepted; forget the copy `refused` would restore."""
        self._pending_u = None

    def dropped(self) -> None:
        """The last upload was refused or handed back, but its task has DP
        (`Assignment.return_refused` false): its content is dropped as if delivered, the
        residual left as `accepted` leaves it, so that this device's later uploads do not
        depend on whether a round took this one (docs/privacy.md, item 2)."""
        self._pending_u = None
