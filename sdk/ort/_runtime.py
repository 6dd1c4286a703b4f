"""Local training on plain onnxruntime from exported artifacts (numpy in, numpy out; no torch)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from compression import ModelSpec

from .._types import TrainResult
from ._manifest import ArtifactError, Manifest, load_manifest

__all__ = ["OrtTrainer", "session_options"]

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(threads: int = 1, optimization: str = "all") -> ort.SessionOptions:
    """Session options for a device: `threads` intra-op threads (0 = onnxruntime's default)."""
    if threads < 0:
        raise ValueError("threads must be >= 0")
    if optimization not in _OPT_LEVELS:
        raise ValueError(f"optimization must be one of {sorted(_OPT_LEVELS)}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = _OPT_LEVELS[optimization]
    so.log_severity_level = 3  # errors only: a device app owns its own logging
    return so


def _check_names(
    session: ort.InferenceSession, inputs: Sequence[str], outputs: Sequence[str], what: str
) -> None:
    got_in = [i.name for i in session.get_inputs()]
    got_out = [o.name for o in session.get_outputs()]
    if got_in != list(inputs) or got_out != list(outputs):
        raise ArtifactError(
            f"{what}: graph inputs/outputs {got_in} -> {got_out} do not match the manifest"
        )


class OrtTrainer:
    """Minibatch SGD (or momentum SGD) driven by the exported training-step graph.

    Implements `sdk.LocalTrainer` with the same batching as `sdk.trainer.TorchTrainer`: each
    epoch draws ``rng.permutation(n)`` and walks it in batches of `batch_size`, keeping the last
    partial batch (the graph's batch dimension is dynamic, and its loss is the mean over the
    examples in that batch, as torch's). Momentum buffers start at zero on every `train` call,
    as a fresh ``torch.optim.SGD`` does. Sessions are created once and reused across calls, so
    one trainer serves many simulated devices.
    """

    def __init__(
        self,
        manifest: Manifest,
        *,
        threads: int = 1,
        optimization: str = "all",
    ) -> None:
        self.manifest = manifest
        options = session_options(threads, optimization)
        providers = ["CPUExecutionProvider"]
        try:
            self._train = ort.InferenceSession(
                str(manifest.train_path), options, providers=providers
            )
            self._infer = ort.InferenceSession(
                str(manifest.infer_path), options, providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors on a bad model
            raise ArtifactError(f"onnxruntime refused the artifacts: {exc}") from exc
        m = manifest
        _check_names(
            self._train,
            [*m.param_inputs, *m.state_inputs, m.x_name, m.y_name, m.lr_name],
            m.train_outputs,
            "train_step",
        )
        _check_names(self._infer, [*m.param_inputs, m.x_name], m.infer_outputs, "infer")
        self._x_dtype = np.dtype(m.x_dtype)
        self._y_dtype = np.dtype(m.y_dtype)

    @classmethod
    def from_dir(
        cls,
        path: str | os.PathLike[str],
        *,
        threads: int = 1,
        optimization: str = "all",
        verify: bool = True,
    ) -> OrtTrainer:
        """Load the artifacts `sdk.onnx_export` (or `plume export`) wrote to `path`."""
        return cls(load_manifest(path, verify=verify), threads=threads, optimization=optimization)

    @property
    def spec(self) -> ModelSpec:
        return self.manifest.spec

    def split(self, params: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float32]]:
        """Views of a flat float32[d] vector as the model's tensors, in spec order."""
        flat = np.ascontiguousarray(params, dtype=np.float32)
        if flat.shape != (self.spec.size,):
            raise ValueError(f"params of shape {flat.shape}, the model has {self.spec.size}")
        return [flat[e.offset : e.offset + e.size].reshape(e.shape) for e in self.spec.entries]

    def _check_x(self, x: npt.NDArray) -> npt.NDArray:
        """`x` as the graph's dtype, contiguous, after checking its per-example shape."""
        m = self.manifest
        xs = np.ascontiguousarray(x, dtype=self._x_dtype)
        if xs.ndim != 1 + len(m.x_shape) or tuple(xs.shape[1:]) != m.x_shape:
            raise ValueError(f"x of shape {x.shape}, the model takes [B, {m.x_shape}]")
        return xs

    def _check_y(self, y: npt.NDArray, n: int) -> npt.NDArray:
        m = self.manifest
        ys = np.ascontiguousarray(y, dtype=self._y_dtype)
        if ys.ndim != 1 + len(m.y_shape) or tuple(ys.shape[1:]) != m.y_shape:
            raise ValueError(f"y of shape {y.shape}, the model takes [B, {m.y_shape}]")
        if len(ys) != n:
            raise ValueError(f"{n} inputs but {len(ys)} targets")
        return ys

    def step(
        self,
        params: list[npt.NDArray[np.float32]],
        state: list[npt.NDArray[np.float32]],
        x: npt.NDArray,
        y: npt.NDArray,
        lr: float,
    ) -> tuple[float, list[npt.NDArray[np.float32]], list[npt.NDArray[np.float32]]]:
        """One optimiser step on one batch: ``(loss, new params, new momentum state)``."""
        m = self.manifest
        feeds: dict[str, npt.NDArray] = dict(zip(m.param_inputs, params, strict=True))
        feeds.update(zip(m.state_inputs, state, strict=True))
        feeds[m.x_name] = x
        feeds[m.y_name] = y
        feeds[m.lr_name] = np.asarray(lr, dtype=np.float32)
        out = self._train.run(None, feeds)
        n = len(m.param_inputs)
        return float(out[0]), list(out[1 : 1 + n]), list(out[1 + n :])

    def train(
        self,
        params: npt.NDArray[np.float32],
        x: npt.NDArray[np.float32],
        y: npt.NDArray[np.int64],
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        rng: np.random.Generator,
    ) -> TrainResult:
        """Run `epochs` epochs from flat `params`; returns new float32[d] params and mean loss."""
        if epochs < 0 or batch_size < 1:
            raise ValueError("epochs must be >= 0 and batch_size >= 1")
        if not math.isfinite(lr):
            raise ValueError("lr must be finite")
        xs = self._check_x(x)
        ys = self._check_y(y, len(xs))
        n = len(xs)
        if n == 0:
            raise ValueError("a device needs at least one example to train")
        tensors = [t.copy() for t in self.split(params)]
        state = [np.zeros_like(t) for t in tensors] if self.manifest.state_inputs else []
        total, count = 0.0, 0
        for _ in range(epochs):
            order = rng.permutation(n)
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                loss, tensors, state = self.step(tensors, state, xs[idx], ys[idx], lr)
                total += loss * len(idx)
                count += len(idx)
        flat = np.concatenate([t.reshape(-1) for t in tensors]).astype(np.float32, copy=False)
        return TrainResult(flat, n, total / max(count, 1))

    def predict(
        self, params: npt.NDArray[np.float32], x: npt.NDArray, batch_size: int = 1000
    ) -> npt.NDArray[np.float32]:
        """Model outputs (logits) for `x`, in batches of `batch_size`."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        xs = self._check_x(x)
        feeds: dict[str, npt.NDArray] = dict(
            zip(self.manifest.param_inputs, self.split(params), strict=True)
        )
        parts = []
        for start in range(0, len(xs), batch_size):
            feeds[self.manifest.x_name] = xs[start : start + batch_size]
            parts.append(self._infer.run(None, feeds)[0])
        if not parts:
            raise ValueError("no examples to predict")
        return np.concatenate(parts).astype(np.float32, copy=False)

    def evaluate(
        self, params: npt.NDArray[np.float32], x: npt.NDArray, y: npt.NDArray[np.int64]
    ) -> tuple[float, float]:
        """(accuracy, mean cross-entropy) of a classifier's `params` on a labelled set."""
        logits = self.predict(params, x).astype(np.float64)
        labels = np.asarray(y, dtype=np.int64)
        if logits.ndim > 2:
            logits = logits.reshape(-1, logits.shape[-1])
            labels = labels.reshape(-1)
        if len(logits) != len(labels):
            raise ValueError(f"{len(logits)} predictions but {len(labels)} labels")
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        loss = float(-log_probs[np.arange(len(labels)), labels].mean())
        accuracy = float((logits.argmax(axis=1) == labels).mean())
        return accuracy, loss
