"""What a user on Ray (or the pool) is told (helper review, stop 49): the vectorized backend's
fallback to one job at a time is said once on the driver (an actor's log never reached it); a
dead actor is one clean sentence, not Ray's first line with its full stop (after which `plume
sim` wrote "; wrote its ... finished rounds": ".;"); and read-only arrays, as Ray's object store
hands an actor its params and context, no longer make torch warn "The given NumPy array is not
writable" (vectorized.py, sdk.flat, sdk.trainer's evaluation)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from coordinator import cli
from mobile_sim import models
from mobile_sim.backends import TrainContext, TrainJob
from mobile_sim.backends._base import import_plugins
from mobile_sim.backends._worker import WorkerState
from mobile_sim.backends.process_pool import PoolWorkerError
from mobile_sim.backends.vectorized import VectorizedBackend, train_clients_vmapped
from mobile_sim.data import load_digits_data
from mobile_sim.models import build_model
from sdk.flat import get_flat_params

_PLUGIN = '''\
"""A model vmap cannot batch: it reads a tensor's value in Python (.item())."""
from torch import nn

from mobile_sim.models import MODELS


class ItemNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x) * (1.0 + 0.0 * float(x.sum().item()))


MODELS["s49_item_net"] = ItemNet
'''


@pytest.fixture
def item_net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A plugin file registering "s49_item_net" (here, and in an actor that imports the
    context's plugins); afterwards neither the model nor the plugin's module is left behind."""
    path = tmp_path / "s49_item_plugin.py"
    path.write_text(_PLUGIN)
    monkeypatch.setitem(models.MODELS, "s49_item_net", lambda: None)  # removed at teardown
    before = set(sys.modules)
    import_plugins((str(path),))
    yield path
    for key in set(sys.modules) - before:
        if "s49_item" in key:
            del sys.modules[key]


def _context(model: str, plugin: Path | None = None, *, read_only: bool = False) -> TrainContext:
    data = load_digits_data()
    arrays = [data.x_train, data.y_train, data.x_test, data.y_test]
    if read_only:  # as a Ray actor gets them from the object store
        arrays = [a.copy() for a in arrays]
        for a in arrays:
            a.flags.writeable = False
    x, y, x_test, y_test = arrays
    plugins = (str(plugin),) if plugin else ()
    return TrainContext(
        model, x, y, epochs=1, batch_size=8, lr=0.1, plugins=plugins, x_test=x_test, y_test=y_test
    )


def _jobs(n: int) -> list[TrainJob]:
    return [TrainJob(f"dev-{i}", i, 1, 0, np.arange(9 * i, 9 * i + 5 + i)) for i in range(n)]


def _fallbacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "one by one" in r.getMessage()]


def test_a_worker_leaves_its_fallback_to_the_driver_when_told(
    item_net: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare
    ctx = _context("s49_item_net", item_net)

    # Execute: Ray's actors (warn=False), then a pool worker's default
    with caplog.at_level(logging.WARNING, logger="mobile_sim.backends.vectorized"):
        quiet = WorkerState(ctx, "vectorized", 1, False)
        said_by_actor = _fallbacks(caplog)
        loud = WorkerState(ctx, "vectorized", 1)

    # Assert: the reason is there to ask for; only the default worker logged it itself
    reason = quiet.fallback_reason()
    assert reason is not None and ".item()" in reason
    assert said_by_actor == []
    assert len(_fallbacks(caplog)) == 1 and loud.fallback_reason() == reason
    assert WorkerState(_context("digits_mlp"), "vectorized").fallback_reason() is None
    assert WorkerState(_context("digits_mlp"), "sequential").fallback_reason() is None


@pytest.fixture
def torch_warns_always() -> Iterator[None]:
    """Torch's once-per-process warnings ("The given NumPy array is not writable") raised on
    every occurrence, so that an earlier test in this process cannot have used them up."""
    torch.set_warn_always(True)
    yield
    torch.set_warn_always(False)


@pytest.mark.usefixtures("torch_warns_always")
@pytest.mark.parametrize("inner", ["sequential", "vectorized"])
def test_read_only_params_and_context_make_torch_warn_nothing(inner: str) -> None:
    # Prepare: every array read-only, as an actor gets them
    ctx = _context("digits_mlp", read_only=True)
    params = get_flat_params(build_model("digits_mlp"))
    params.flags.writeable = False
    jobs = _jobs(4)
    state = WorkerState(ctx, inner)
    backend = VectorizedBackend()
    backend.start(ctx)
    x = np.stack([ctx.x_train[:6], ctx.x_train[6:12]])
    assert not (ctx.x_train.flags.writeable or ctx.x_test.flags.writeable)

    # Execute / Assert: a warning would be an error here
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = state.train(params, jobs)
        correct, losses = state.evaluate(params, 0, 100, 25)
        backend.train(params, jobs)
        train_clients_vmapped(
            build_model("digits_mlp"),
            params,
            x,
            np.stack([ctx.y_train[:6], ctx.y_train[6:12]]),
            [np.random.default_rng(0), np.random.default_rng(1)],
            epochs=1,
            batch_size=4,
            lr=0.1,
        )
    assert len(got) == 4 and len(losses) == 4 and 0 <= correct <= 100


def _main_raising(
    exc: BaseException, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    def run(_args: argparse.Namespace) -> int:
        raise exc

    parser = argparse.ArgumentParser(prog="plume sim")
    parser.set_defaults(func=run, _prog="plume sim")
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.delenv("PLUME_DEBUG", raising=False)
    status = cli.main([])
    return status, capsys.readouterr().err


def test_a_dead_actor_is_one_sentence(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: Ray's error for an actor whose process died (what Ray 2.60 raised when an
    # actor's process exited mid-task: its first line, fields, and its reason)
    exceptions = pytest.importorskip("ray.exceptions", reason="needs `pip install .[ray]`")
    common = pytest.importorskip("ray.core.generated.common_pb2")
    died = exceptions.ActorDiedError(
        common.ActorDiedErrorContext(
            error_message=(
                "The actor is dead because its worker process has died. Worker exit type: "
                "SYSTEM_ERROR Worker exit detail: Worker unexpectedly exits with a connection "
                "error code 2. End of file. Some common causes include: (1) ..."
            ),
            class_name="WorkerState",
            actor_id=bytes(16),
            pid=13403,
            ray_namespace="ns",
            node_ip_address="192.0.2.2",
        )
    )
    killed = exceptions.ActorDiedError(
        common.ActorDiedErrorContext(
            error_message="The actor is dead because it was killed by `ray.kill`.",
            class_name="WorkerState",
            actor_id=bytes(16),
        )
    )
    init_failed = exceptions.ActorDiedError(
        exceptions.RayTaskError(
            "WorkerState.__init__",
            "Traceback (most recent call last):\nValueError: no such model",
            ValueError("no such model"),
        )
    )
    assert str(died).startswith("The actor died unexpectedly before finishing this task.\n")

    # Execute
    status, err = _main_raising(died, monkeypatch, capsys)

    # Assert: one line, status 1, no full stop for "; wrote its ... finished rounds" to follow
    assert (status, err) == (
        1,
        "plume sim: error: a Ray actor died (pid 13403 on 192.0.2.2): its worker process has "
        "died\n",
    )
    assert cli._worker_error_line(killed) == "a Ray actor died: it was killed by `ray.kill`"
    assert cli._worker_error_line(exceptions.ActorDiedError()) == "a Ray actor died"
    assert cli._worker_error_line(init_failed) == (
        "a Ray actor failed to start: ValueError: no such model"
    )


def test_a_worker_error_line_ends_without_a_full_stop() -> None:
    # Prepare: a worker's exception whose message is a sentence
    exc = PoolWorkerError(
        "a worker failed:\nTraceback (most recent call last):\nRuntimeError: the model broke."
    )

    # Execute / Assert
    assert cli._worker_error_line(exc) == "a worker failed: RuntimeError: the model broke"
    assert cli._worker_error_line(PoolWorkerError("a worker said so...")) == ("a worker said so...")


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_ray_says_the_fallback_once_on_the_driver_and_a_dead_actor_in_one_sentence(
    item_net: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: two actors on the backend's own runtime (log_to_driver=False: an actor's log
    # never reaches this process), the model vmap cannot batch; then a round in which one
    # actor's process exits (a lambda: Ray ships it by value)
    ray = pytest.importorskip("ray", reason="the Ray backend needs `pip install .[ray]`")
    from mobile_sim.backends.ray_backend import RayBackend

    ctx = _context("s49_item_net", item_net)
    params = get_flat_params(build_model("s49_item_net"))
    jobs = _jobs(4)
    dies = SimpleNamespace(poison_data=lambda x, y, rng: os._exit(3))
    backend = RayBackend(workers=2, num_cpus=2, inner="vectorized")

    # Execute
    try:
        with caplog.at_level(logging.WARNING, logger="mobile_sim.backends.vectorized"):
            backend.start(ctx)
        got = backend.train(params, jobs)
        with pytest.raises(ray.exceptions.ActorDiedError) as failed:
            backend.train(params, [replace(jobs[0], data_attack=dies), *jobs[1:]])
    finally:
        backend.close()

    # Assert: the fallback said once here, for both actors; every job trained; the death is
    # one sentence naming the actor's process
    said = _fallbacks(caplog)
    assert len(said) == 1 and "'s49_item_net'" in said[0] and ".item()" in said[0], said
    assert [r.device_id for r in got] == [j.device_id for j in jobs]
    line = cli._worker_error_line(failed.value)
    assert line is not None and line.startswith("a Ray actor died (pid "), line
    assert line.endswith(": its worker process has died"), line
