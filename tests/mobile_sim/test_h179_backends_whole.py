"""Whole runs agree on the sequential, vectorized and pool backends, the pool running vmap
inside its workers (`inner="vectorized"`, as bench/sim_throughput.py runs it), and a pool
worker whose model vmap cannot batch falls back to one job at a time with the same results
(test gaps helper-173 found: backends_whole.py, ray_vec.py; no wrong result was found)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mobile_sim import models
from mobile_sim.backends import SequentialBackend, TrainContext, TrainJob
from mobile_sim.backends._base import import_plugins
from mobile_sim.backends.process_pool import ProcessPoolBackend
from mobile_sim.data import load_digits_data
from mobile_sim.models import build_model
from mobile_sim.runner import RoundRecord, SimConfig, SimResult, run_simulation
from sdk.flat import get_flat_params

# Everything a round reports that does not depend on float rounding or the wall clock.
_EXACT = (
    "round",
    "reports",
    "committed",
    "bytes_up",
    "bytes_down",
    "dense_up",
    "dense_down",
    "wire_up",
    "wire_down",
    "ratio_up",
    "sim_s",
    "wait_s",
    "available",
)


def _exact(rec: RoundRecord) -> tuple[object, ...]:
    return tuple(getattr(rec, k) for k in _EXACT)


def _assert_same_run(ref: SimResult, got: SimResult) -> None:
    assert [_exact(r) for r in got.records] == [_exact(r) for r in ref.records]
    for a, b in zip(ref.records, got.records, strict=True):
        assert b.accuracy == pytest.approx(a.accuracy, abs=0.01)
        assert b.train_loss == pytest.approx(a.train_loss, rel=1e-3, abs=1e-5)
    np.testing.assert_allclose(got.final_params, ref.final_params, atol=1e-4, rtol=1e-4)


def test_whole_runs_agree_on_sequential_vectorized_and_pool_with_vmap_inside(
    capfd: pytest.CaptureFixture[str],
) -> None:
    # Prepare: digits, a tiny fleet with simulated timings, 2 rounds of compressed updates
    # with momentum (the pipeline: train, encode with error feedback, decode, aggregate)
    torch.set_num_threads(1)
    cfg = SimConfig(
        dataset="digits",
        model="digits_mlp",
        clients=8,
        per_round=4,
        rounds=2,
        topk=0.1,
        bits=8,
        local_epochs=1,
        batch_size=10,
        lr=0.2,
        momentum=0.9,
        partition="dirichlet",
        alpha=0.5,
        fleet="timing",
        seed=3,
    )
    pool = ProcessPoolBackend(workers=2, inner="vectorized")

    # Execute
    seq = run_simulation(cfg, progress=False)
    vec = run_simulation(replace(cfg, backend="vectorized"), progress=False)
    try:
        pooled = run_simulation(replace(cfg, backend="pool"), progress=False, backend=pool)
    finally:
        pool.close()

    # Assert: the same reports, bytes and simulated seconds in every round; weights and
    # accuracy within float tolerance
    assert len(seq.records) == 2 and all(r.reports == 4 for r in seq.records)
    assert "one by one" not in capfd.readouterr().err  # the workers did vmap the MLP
    _assert_same_run(seq, vec)
    _assert_same_run(seq, pooled)


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


MODELS["h179_item_net"] = ItemNet
'''


@pytest.fixture
def item_net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A plugin file registering "h179_item_net" (here and in a spawned worker); afterwards
    neither the model nor the plugin's module is left behind."""
    path = tmp_path / "h179_item_plugin.py"
    path.write_text(_PLUGIN)
    monkeypatch.setitem(models.MODELS, "h179_item_net", lambda: None)  # removed at teardown
    before = set(sys.modules)
    import_plugins((str(path),))
    yield path
    for key in set(sys.modules) - before:
        if "h179" in key:
            del sys.modules[key]


def test_a_pool_worker_falls_back_to_one_by_one_when_vmap_cannot_batch(
    item_net: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: jobs of uneven sizes on the unvmappable model, the plugin named in the context
    # so that the spawned workers register it too
    torch.set_num_threads(1)
    data = load_digits_data()
    rng = np.random.default_rng(0)
    ctx = TrainContext(
        "h179_item_net",
        data.x_train,
        data.y_train,
        epochs=1,
        batch_size=8,
        lr=0.1,
        momentum=0.9,
        plugins=(str(item_net),),
    )
    jobs = [
        TrainJob(f"dev-{i}", i, 1, 0, np.sort(rng.choice(len(data.y_train), 5 + 7 * i, False)))
        for i in range(6)
    ]
    params = get_flat_params(build_model("h179_item_net"))
    seq = SequentialBackend()
    seq.start(ctx)
    ref = seq.train(params, jobs)
    pool = ProcessPoolBackend(workers=2, inner="vectorized")

    # Execute
    with caplog.at_level(logging.WARNING, logger="mobile_sim.backends.vectorized"):
        pool.start(ctx)
        try:
            got = pool.train(params, jobs)
        finally:
            pool.close()

    # Assert: the pool said its workers fell back (the parent logs the reason they sent, once:
    # test_s54c_pool_fallback_once) and trained every job as the sequential backend does
    said = caplog.text
    assert "one by one" in said and ".item()" in said, said[-2000:]
    assert [r.device_id for r in got] == [r.device_id for r in ref]
    for a, b in zip(ref, got, strict=True):
        assert b.num_examples == a.num_examples
        np.testing.assert_allclose(b.delta, a.delta, atol=1e-5, rtol=1e-4)
        assert b.loss == pytest.approx(a.loss, rel=1e-4, abs=1e-6)


def _digits_jobs(n: int) -> tuple[TrainContext, np.ndarray, list[TrainJob]]:
    data = load_digits_data()
    rng = np.random.default_rng(1)
    ctx = TrainContext("digits_mlp", data.x_train, data.y_train, epochs=2, batch_size=8, lr=0.1)
    jobs = [
        TrainJob(f"dev-{i}", i, 3, 0, np.sort(rng.choice(len(data.y_train), 1 + 7 * i, False)))
        for i in range(n)
    ]
    return ctx, get_flat_params(build_model("digits_mlp")), jobs


@pytest.mark.ray
@pytest.mark.slow  # a local Ray runtime starts in ~15 s on a busy 2-core machine
def test_ray_with_vmap_inside_its_actors_matches_sequential() -> None:
    # Prepare: test_backends.py's Ray test runs the actors' default inner="sequential"
    ray = pytest.importorskip("ray", reason="the Ray backend needs `pip install .[ray]`")
    from mobile_sim.backends.ray_backend import RayBackend

    torch.set_num_threads(1)
    ctx, params, jobs = _digits_jobs(8)
    seq = SequentialBackend()
    seq.start(ctx)
    ref = seq.train(params, jobs)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    backend = RayBackend(workers=2, inner="vectorized")

    # Execute
    try:
        backend.start(ctx)
        got = backend.train(params, jobs)
        backend.close()
    finally:
        ray.shutdown()

    # Assert
    assert [r.device_id for r in got] == [r.device_id for r in ref]
    for a, b in zip(ref, got, strict=True):
        assert b.num_examples == a.num_examples
        np.testing.assert_allclose(b.delta, a.delta, atol=1e-5, rtol=1e-4)
        assert b.loss == pytest.approx(a.loss, rel=1e-4, abs=1e-6)
