"""A torch-free device: ORT local training, then the same clip/error-feedback/codec pipeline."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from compression import CodecConfig, EncodeReport

from .._data import check_settings
from .._types import CancelFlag, TrainResult
from ..device import UpdateEncoder
from ._runtime import OrtTrainer

__all__ = ["OrtDevice", "OrtUpload"]


@dataclass(frozen=True, slots=True)
class OrtUpload:
    """One round's result: the frame to upload (bytes), its encode report, the training result."""

    frame: bytes
    report: EncodeReport
    result: TrainResult


class OrtDevice:
    """Local data + `OrtTrainer` + `sdk.device.UpdateEncoder`: global params in, upload frame out.

    The delta is ``local - global`` (float32[d]) in the manifest's `ModelSpec` order, weighted by
    the number of local examples, exactly as a torch device sends it.
    """

    def __init__(
        self,
        trainer: OrtTrainer,
        x: npt.NDArray,
        y: npt.NDArray,
        *,
        codec: CodecConfig,
        epochs: int = 1,
        batch_size: int = 32,
        lr: float = 0.05,
        error_feedback: bool = True,
        clip_norm: float | None = None,
    ) -> None:
        # Checked (and cast to the graph's dtypes) once here, so bad local data or settings fail
        # when the device is set up (`TrainingDataError`, a ValueError), not at its first round;
        # `train` re-checks cheaply.
        check_settings(epochs, batch_size, lr)
        trainer.check_data(x, y)
        self.trainer = trainer
        self.x = trainer._check_x(x)
        self.y = trainer._check_y(y, len(self.x))
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.encoder = UpdateEncoder(
            trainer.spec, codec, error_feedback=error_feedback, clip_norm=clip_norm
        )

    def run_round(
        self,
        global_params: npt.NDArray[np.float32],
        rng: np.random.Generator,
        codec: CodecConfig | None = None,
        cancel: CancelFlag | None = None,
        *,
        keep_params: bool = True,
    ) -> OrtUpload:
        """Train from `global_params` and encode the update. `codec`, when given, encodes this
        round's update instead of the device's config, for this call only: the config is put
        back when the call returns or raises (the error-feedback residual carries over either
        way). To change it for good: ``device.encoder.set_config(codec)``. `cancel` stops the training within one step (`TrainingCancelled`, nothing encoded:
        the error-feedback residual stays as it was).

        `keep_params=False` computes the delta into the trained parameters' own buffer, one
        parameter-sized array fewer at the peak (the same frame and residual): the upload's
        `result.params` is then an empty float32 array, not the trained parameters (its
        `num_examples` and `loss` are kept)."""
        if codec is None:
            return self._run_round(global_params, rng, cancel, keep_params)
        config = self.encoder.config
        self.encoder.set_config(codec)
        try:
            return self._run_round(global_params, rng, cancel, keep_params)
        finally:
            self.encoder.set_config(config)

    def _run_round(
        self,
        global_params: npt.NDArray[np.float32],
        rng: np.random.Generator,
        cancel: CancelFlag | None,
        keep_params: bool,
    ) -> OrtUpload:
        """`run_round` with the encoder's config as it is."""
        start = np.ascontiguousarray(global_params, dtype=np.float32)
        result = self.trainer.train(
            start,
            self.x,
            self.y,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            rng=rng,
            cancel=cancel,
        )
        trained = result.params
        # The delta gets its own buffer, which the encoder then reuses for u (`encode_owned`);
        # with keep_params=False it is the trained parameters' buffer, when that is the fresh
        # float32 array `OrtTrainer.train` returns (never the caller's `global_params`).
        reuse = (
            not keep_params
            and trained.dtype == np.float32
            and trained.shape == start.shape
            and trained.flags.c_contiguous
            and trained.flags.writeable
            and not np.may_share_memory(trained, start)
        )
        if reuse:
            result = TrainResult(np.empty(0, np.float32), result.num_examples, result.loss)
            delta = np.subtract(trained, start, out=trained)
        else:  # a fresh array either way
            delta = (trained - start).astype(np.float32, copy=False)
        del trained
        frame, report = self.encoder.encode_owned(delta, rng, float(result.num_examples))
        del delta
        # An OrtDevice has no path for a refused upload (`UpdateEncoder.refused`): the copy of
        # u the encoder keeps for one would be held, a parameter-sized array, until the next
        # round replaced it.
        self.encoder.accepted()
        return OrtUpload(frame, report, result)
