"""Inline vectorized backend: many clients' local SGD at once with `torch.func.vmap`.

Each client keeps its own copy of the parameters (stacked on a leading client axis) and its own
minibatch order, drawn from the same per-job RNG stream as the sequential backend, so the
results match it to float tolerance. Clients with fewer examples are padded and masked: a padded
row contributes exactly zero to its client's loss, and a client with no real rows left in a step
does not move. Where a model cannot be vmapped (or a job needs another trainer), jobs run one by
one through the sequential path and `fallback_reason` says why.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

import sdk.trainer as _trainer
from sdk.trainer import IGNORE_INDEX, restored_slots

from ._base import JobResult, TrainContext, TrainJob, check_round, job_rng, num_params
from ._seeding import RngPool
from .sequential import run_job

__all__ = ["VectorizedBackend", "train_clients_vmapped", "warn_fallback"]

log = logging.getLogger(__name__)

Params = dict[str, torch.Tensor]


def _unflatten(module: nn.Module, flat: torch.Tensor) -> Params:
    """float32[C, d] -> {name: float32[C, *shape]} (views, in `named_parameters` order)."""
    out: Params = {}
    offset = 0
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        n = p.numel()
        out[name] = flat[:, offset : offset + n].reshape(flat.shape[0], *p.shape)
        offset += n
    if offset != flat.shape[1]:
        raise ValueError(f"flat params have {flat.shape[1]} scalars, the model {offset}")
    return out


def _step_fn(module: nn.Module) -> Callable[..., tuple[Params, torch.Tensor]]:
    """vmap(grad(masked mean cross-entropy)) over the client axis.

    Each call puts the module's slots back afterwards (`sdk.trainer.restored_slots`):
    `functional_call` swaps a slot reachable by two paths (a layer or parameter registered
    under two names) twice and left the caller's module holding dead functorch tensors
    (pytorch/pytorch#164759). Training was right either way, as every call passes every
    parameter. The module itself is traced, not a copy, which hooks or closures over `self`
    would bypass (and which a lock in the model cannot make).
    """
    from torch.func import functional_call, grad, vmap

    buffers = dict(module.named_buffers())

    def loss(
        params: Params, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = functional_call(module, (params, buffers), (x,))
        # A skipped target (IGNORE_INDEX) has a loss of 0 here and counts in no mean.
        ce = nn.functional.cross_entropy(logits, y, reduction="none", ignore_index=IGNORE_INDEX)
        counted = (y != IGNORE_INDEX).to(ce.dtype) * mask.view(-1, *([1] * (y.dim() - 1)))
        total = (ce * counted).sum()
        # The mean over this client's counted targets in its real rows, as nn.CrossEntropyLoss
        # on the unpadded batch.
        return total / counted.sum().clamp_min(1.0), total

    vmapped = vmap(grad(loss, has_aux=True))

    def step(*args: Any) -> tuple[Params, torch.Tensor]:
        with restored_slots(module):
            return vmapped(*args)  # type: ignore[no-any-return]

    return step


def train_clients_vmapped(
    module: nn.Module,
    params: npt.NDArray[np.float32],
    xs: Sequence[npt.NDArray[Any]],
    ys: Sequence[npt.NDArray[np.int64]],
    rngs: Sequence[np.random.Generator],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.0,
    step: Callable[..., tuple[Params, torch.Tensor]] | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    """Local SGD of C clients from the same start `params` (float32[d]), all at once.

    Client c trains on xs[c] (float32[n_c, ...]) / ys[c] for `epochs` epochs of minibatches of
    `batch_size` in the order `rngs[c].permutation(n_c)` draws each epoch, exactly as
    `sdk.trainer.TorchTrainer` does. Returns (trained params float32[C, d], mean loss float64[C]).
    """
    c = len(xs)
    if not (c == len(ys) == len(rngs)) or c == 0:
        raise ValueError("xs, ys and rngs must be non-empty and of equal length")
    if isinstance(xs, np.ndarray):
        sizes = np.full(c, xs.shape[1], dtype=np.int64)  # already stacked: equal sizes
    else:
        sizes = np.array([len(x) for x in xs], dtype=np.int64)
    if sizes.min() < 1:
        raise ValueError("a device needs at least one example to train")
    n_max = int(sizes.max())
    steps = math.ceil(n_max / batch_size)
    padded = steps * batch_size
    # Every client's data, padded to n_max rows (row 0 repeated; masked out below).
    if int(sizes.min()) == n_max:
        # Equal sizes (a typical simulated cohort): one stack, no per-client copies.
        x_all = xs if isinstance(xs, np.ndarray) else np.stack(xs)
        y_all = (ys if isinstance(ys, np.ndarray) else np.stack(ys)).astype(np.int64, copy=False)
    else:
        x_all = np.zeros((c, n_max, *xs[0].shape[1:]), dtype=xs[0].dtype)
        y_all = np.zeros((c, n_max), dtype=np.int64)
        for k in range(c):
            x_all[k, : sizes[k]] = xs[k]
            y_all[k, : sizes[k]] = ys[k]
    # Minibatch orders: positions >= n_k are padding (index 0, mask 0).
    order = np.zeros((epochs, c, padded), dtype=np.int64)
    # valid[e, k, j] = 1 for the client's real positions j < n_k (the same every epoch).
    real = (np.arange(padded) < sizes[:, None]).astype(np.float32)
    valid = np.repeat(real[None], epochs, axis=0)
    size_list = sizes.tolist()
    # Each client's epochs in order from its own generator, as TorchTrainer draws them.
    perms = [rngs[k].permutation(size_list[k]) for k in range(c) for _ in range(epochs)]
    if int(sizes.min()) == n_max:
        order[:, :, :n_max] = np.stack(perms).reshape(c, epochs, n_max).transpose(1, 0, 2)
    else:
        for k in range(c):
            for e in range(epochs):
                order[e, k, : size_list[k]] = perms[k * epochs + e]
    # Minibatches of one example go in steps of two rows, the second padding (masked: it adds
    # exactly zero). A one-row step's matrix products take the matrix-vector kernels, whose
    # result for a client depended on where its row sat in the chunk's memory: at --threads
    # 1, the clients at odd places of a chunk of several got other last bits than alone
    # (tests/mobile_sim/test_s57i_backend_equivalence.py's chunking property found it),
    # which broke "the same bits however the round's devices are shared" (docs/simulator.md).
    # Two rows take the matrix-matrix kernels, as every batch of two or more does.
    width = batch_size
    if batch_size == 1:
        order = np.stack([order, np.zeros_like(order)], axis=-1).reshape(epochs, c, 2 * steps)
        valid = np.stack([valid, np.zeros_like(valid)], axis=-1).reshape(epochs, c, 2 * steps)
        width = 2
    xt, yt = torch.from_numpy(x_all), torch.from_numpy(y_all)
    order_t, valid_t = torch.from_numpy(order), torch.from_numpy(valid)
    rows = torch.arange(c)[:, None]

    # Every client starts from `params`: one row each, filled here. Not torch.from_numpy on
    # `params` itself, which may be read-only (Ray's object store hands them out so), and torch
    # warns of a tensor over a read-only array even when it is only read.
    start = np.empty((c, params.shape[0]), dtype=np.float32)
    start[:] = params
    stacked = torch.from_numpy(start)
    p = _unflatten(module, stacked)
    names = list(p)
    plist = [p[n] for n in names]
    bufs: list[torch.Tensor] | None = None
    step_fn = step if step is not None else _step_fn(module)
    loss_sum = torch.zeros(c, dtype=torch.float64)
    for e in range(epochs):
        for s in range(steps):
            sl = slice(s * width, (s + 1) * width)
            idx = order_t[e, :, sl]
            mask = valid_t[e, :, sl]
            grads, totals = step_fn(p, xt[rows, idx], yt[rows, idx], mask)
            loss_sum += totals.detach().to(torch.float64)
            glist = [grads[n] for n in names]
            active = mask.sum(dim=1) > 0
            with torch.no_grad():
                if momentum:
                    # torch.optim.SGD: buf = g on the first step, then momentum * buf + g.
                    if bufs is None:
                        bufs = [g.clone() for g in glist]
                    else:
                        scale = torch.where(active, momentum, 1.0)
                        for b, g in zip(bufs, glist, strict=True):
                            keep = scale.view(-1, *([1] * (b.dim() - 1)))
                            b.mul_(keep).add_(g)
                    glist = bufs
                if not bool(active.all()):
                    # A client with no real rows left stays put: its step is zeroed, and
                    # every client still takes the one `_foreach_add_` (alpha=-lr, as
                    # torch.optim.SGD). A separate `p - lr * g * gate` here rounded
                    # differently, so a client's result depended on which other clients
                    # shared its chunk: a pool worker's or Ray actor's share of the round
                    # against the whole round in one process (docs/simulator.md, "Backends").
                    gate = active.to(torch.float32)
                    glist = [g * gate.view(-1, *([1] * (g.dim() - 1))) for g in glist]
                torch._foreach_add_(plist, glist, alpha=-lr)
    # The mean loss over every counted target of every epoch, as TorchTrainer weighs its steps.
    counts = torch.from_numpy(_counted_per_client(y_all, sizes).astype(np.float64) * epochs)
    return stacked.numpy().copy(), (loss_sum / counts).numpy()


def _counted_per_client(
    y_all: npt.NDArray[np.int64], sizes: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """Each client's targets that count (not `IGNORE_INDEX`) over its real rows of `y_all`
    ([clients, n_max, ...]); a client with none gets 0 (its mean loss is then NaN)."""
    real = np.arange(y_all.shape[1]) < sizes[:, None]
    counted = (y_all != IGNORE_INDEX).reshape(*y_all.shape[:2], -1).sum(axis=2)
    return np.asarray((counted * real).sum(axis=1), dtype=np.int64)


def _weights(ys: Any) -> list[int]:
    """Each client's FedAvg weight, as TorchTrainer gives it: its examples that have a target
    (an example whose labels are all `IGNORE_INDEX` adds nothing to the update)."""
    if isinstance(ys, np.ndarray):  # stacked [clients, n, ...]: one pass
        skipped = (ys == IGNORE_INDEX).reshape(*ys.shape[:2], -1).all(axis=2)
        return (ys.shape[1] - skipped.sum(axis=1)).tolist()  # type: ignore[no-any-return]
    out = []
    for y in ys:
        skipped = (np.asarray(y) == IGNORE_INDEX).reshape(len(y), -1).all(axis=1)
        out.append(len(y) - int(np.count_nonzero(skipped)))
    return out


def warn_fallback(model: str, reason: str) -> None:
    """Log that `model` cannot be trained under vmap (`reason`: the probe's error) and that its
    clients are trained one by one: `VectorizedBackend.start` does, or for a pool's workers or
    Ray's actors their driver, once (`WorkerState.fallback_reason`), where the user sees it."""
    log.warning(
        "vectorized backend: model %r cannot be trained under vmap (%s); "
        "training its clients one by one instead",
        model,
        reason,
    )


class VectorizedBackend:
    """Trains the round's jobs in chunks of clients under `vmap`, in this process.

    `max_floats` bounds a chunk: clients per chunk * d stays below it (~4 bytes each, a few
    copies live at once). Models whose layers have no vmap batching rule fall back to the
    sequential path for every job, with the reason in `fallback_reason` and a log warning
    (`warn_fallback`; `warn=False` leaves that to the caller: a remote worker's driver).
    """

    name = "vectorized"

    def __init__(
        self, *, max_floats: int = 48_000_000, max_clients: int = 4096, warn: bool = True
    ) -> None:
        if max_floats < 1 or max_clients < 1:
            raise ValueError("max_floats and max_clients must be >= 1")
        self.max_floats = max_floats
        self.max_clients = max_clients
        self.warn = warn
        self.fallback_reason: str | None = None
        self._ctx: TrainContext | None = None
        self._module: nn.Module | None = None
        self._step: Callable[..., tuple[Params, torch.Tensor]] | None = None
        self._trainers: dict[str, Any] = {}
        self._d = 0
        self._rngs = RngPool()
        # The trainer's data-check cache: (example shape, dtype) -> the model's output shape
        # and input vocabulary, probed once (`sdk.trainer._checked`).
        self._out_shapes: dict[tuple[tuple[int, ...], str], tuple[tuple[int, ...], int | None]]
        self._out_shapes = {}

    def start(self, ctx: TrainContext) -> None:
        from ..models import build_model

        self._ctx = ctx
        self._trainers = {}
        self._module = build_model(ctx.model)
        self._d = num_params(self._module)
        self._step = None
        self._out_shapes = {}
        self.fallback_reason = self._probe(ctx)
        if self.fallback_reason is not None and self.warn:
            warn_fallback(ctx.model, self.fallback_reason)

    def _probe(self, ctx: TrainContext) -> str | None:
        """Run one vmapped step on two tiny clients; the error text if that fails."""
        assert self._module is not None
        n = min(2, len(ctx.x_train))
        x, y = ctx.x_train[:n], ctx.y_train[:n]
        params = torch.cat([p.detach().reshape(-1) for p in self._module.parameters()]).numpy()
        try:
            # Building the step inside the try: whatever it raises means "not vmappable".
            self._step = _step_fn(self._module)
            train_clients_vmapped(
                self._module,
                params,
                [x, x],
                [y, y],
                [np.random.default_rng(0), np.random.default_rng(1)],
                epochs=1,
                batch_size=n,
                lr=0.0,
                step=self._step,
            )
        except Exception as exc:  # any failure of vmap tracing means "not vmappable"
            return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        return None

    def train(self, params: npt.NDArray[np.float32], jobs: Sequence[TrainJob]) -> list[JobResult]:
        ctx = self._ctx
        if ctx is None or self._module is None:
            raise RuntimeError("backend not started")
        check_round(params, jobs, len(ctx.y_train), size=self._d)
        results: list[JobResult | None] = [None] * len(jobs)
        batchable: list[int] = []
        for i, job in enumerate(jobs):
            if job.trainer != "torch" or self.fallback_reason is not None:
                results[i] = run_job(ctx, self._trainers, params, job)
            else:
                batchable.append(i)
        # Similar sizes together: less padding per chunk.
        batchable.sort(key=lambda i: (len(jobs[i].indices), i))
        per_chunk = max(1, min(self.max_clients, self.max_floats // max(self._d, 1)))
        for start in range(0, len(batchable), per_chunk):
            chunk = batchable[start : start + per_chunk]
            plain = all(jobs[i].data_attack is None for i in chunk)
            if plain and len({len(jobs[i].indices) for i in chunk}) == 1:
                # Equal-size clean clients: one gather of [clients, n] examples.
                rows = np.stack([jobs[i].indices for i in chunk])
                xs: Any = ctx.x_train[rows]
                ys: Any = ctx.y_train[rows]
                fits = self._data_fits(xs, ys)
            else:
                raw = [_job_data(ctx, jobs[i]) for i in chunk]
                # Checked as given, before the labels are cast (the trainer refuses float ones).
                fits = self._data_fits([x for x, _ in raw], [y for _, y in raw])
                xs = [np.asarray(x) for x, _ in raw]
                ys = [np.asarray(y, dtype=np.int64) for _, y in raw]
            if not fits:
                return self._one_by_one(ctx, params, jobs, results, batchable)
            # job_rng(job)'s streams, seeded for the whole chunk at once (reused generators).
            rngs = self._rngs.for_jobs([jobs[i] for i in chunk])
            trained, losses = train_clients_vmapped(
                self._module,
                params,
                xs,
                ys,
                rngs,
                epochs=ctx.epochs,
                batch_size=ctx.batch_size,
                lr=ctx.lr,
                momentum=ctx.momentum,
                step=self._step,
            )
            if not (np.isfinite(losses).all() and np.isfinite(trained).all()):
                # A client diverged: the trainer finds which, at which step, in its words.
                return self._one_by_one(ctx, params, jobs, results, batchable)
            deltas = trained - params[None, :]
            loss_list = losses.tolist()
            sizes = _weights(ys)
            for k, i in enumerate(chunk):
                # Row views of a fresh matrix: each result owns its row, no per-client copy.
                results[i] = JobResult(jobs[i].device_id, deltas[k], sizes[k], loss_list[k])
        return [r for r in results if r is not None]

    def _data_fits(self, xs: Any, ys: Any) -> bool:
        """Whether a chunk's clients' examples, all together (`xs`, `ys`: stacked [clients, n,
        ...] or one array per client), pass the sequential trainer's data check
        (`sdk.trainer._checked`, what `TorchTrainer.check_data` runs; the model probed once).
        Without it a label past the model's classes failed inside torch (an IndexError under
        vmap, a traceback), and a NaN input trained a NaN update the encoder refused later."""
        assert self._module is not None
        try:
            if isinstance(xs, np.ndarray):
                x, y = xs.reshape(-1, *xs.shape[2:]), ys.reshape(-1, *ys.shape[2:])
            else:
                x, y = np.concatenate(xs), np.concatenate(ys)
            _trainer._checked(self._module, x, y, True, "training data", self._out_shapes)
        except ValueError:  # TrainingDataError, or data that does not even concatenate
            return False
        return True

    def _one_by_one(
        self,
        ctx: TrainContext,
        params: npt.NDArray[np.float32],
        jobs: Sequence[TrainJob],
        results: list[JobResult | None],
        batchable: list[int],
    ) -> list[JobResult]:
        """The round's vmapped jobs trained one by one on the sequential path, in the round's
        order: taken when a chunk's data fails the trainer's check or its training diverges,
        so the first job the trainer refuses raises the error the sequential backend raises
        (`TrainingDataError`'s "training data: ...", or "training diverged: ..."). If none is
        refused (the chunk's check or a float rounding differed), these are the round's
        results."""
        for i in sorted(batchable):
            results[i] = run_job(ctx, self._trainers, params, jobs[i])
        return [r for r in results if r is not None]

    def close(self) -> None:
        self._trainers = {}
        self._module = None


def _job_data(ctx: TrainContext, job: TrainJob) -> tuple[Any, Any]:
    """The job's examples as `run_job` gives them to the trainer (poisoned by its data attack)."""
    x, y = ctx.x_train[job.indices], ctx.y_train[job.indices]
    if job.data_attack is not None:
        x, y = job.data_attack.poison_data(x, y, job_rng(job, stream=1))
    return x, y
