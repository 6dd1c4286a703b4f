"""Helper-s43: a model that draws from torch's RNG (dropout) trains the same on every backend,
and the vectorized backend refuses bad data and a diverging run with the sequential trainer's
words.

1. Dropout draws from torch's global RNG, which no backend seeded per job: a pool run's
   accuracy changed on every run of the same command, and differed from sequential's. Each
   torch job now trains with torch's generator seeded from its own seed material
   (`job_torch_seed`, stream 4), and the caller's generator is put back afterwards.
2. The vectorized backend skipped the trainer's data check and its finite-loss check: a label
   past the model's classes gave a torch traceback (sequential: "training data: class label
   10 out of range ..."), NaN inputs or a diverging lr "delta + residual is not finite"
   instead of the trainer's "training data: ... NaN" / "training diverged ...".
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mobile_sim import models
from mobile_sim.backends import SequentialBackend, TrainContext, TrainJob
from mobile_sim.backends._base import import_plugins, job_torch_seed
from mobile_sim.backends.process_pool import ProcessPoolBackend
from mobile_sim.backends.vectorized import VectorizedBackend
from mobile_sim.data import load_digits_data
from mobile_sim.models import build_model
from mobile_sim.runner import SimConfig, run_simulation
from sdk.flat import get_flat_params

_DROP = "s43_drop_mlp"
_PLUGIN = f"""\
from torch import nn

from mobile_sim.models import MODELS

MODELS["{_DROP}"] = lambda: nn.Sequential(
    nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 10)
)
"""


@pytest.fixture
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def drop_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A plugin file registering the dropout model (here and in spawned pool workers);
    afterwards neither the model nor the plugin's module is left behind."""
    path = tmp_path / "s43_drop_plugin.py"
    path.write_text(_PLUGIN)
    monkeypatch.setitem(models.MODELS, _DROP, lambda: None)  # removed at teardown
    before = set(sys.modules)
    import_plugins((str(path),))
    yield path
    for key in set(sys.modules) - before:
        if "s43_drop" in key:
            del sys.modules[key]


def _jobs(n: int, size: int, *, seed: int = 0, round_id: int = 1) -> list[TrainJob]:
    rng = np.random.default_rng(seed)
    return [
        TrainJob(f"dev-{i}", i, round_id, seed, np.sort(rng.choice(1000, size, replace=False)))
        for i in range(n)
    ]


# 1. dropout: torch's RNG seeded per job


def test_a_dropout_job_trains_the_same_whatever_ran_before_it_and_leaves_torch_alone(
    drop_plugin: Path, one_thread: None
) -> None:
    # Prepare: two jobs on the dropout model, the second trained after the first or alone,
    # from different driver torch states
    data = load_digits_data()
    ctx = TrainContext(_DROP, data.x_train, data.y_train, epochs=1, batch_size=8, lr=0.3)
    params = get_flat_params(build_model(_DROP))
    jobs = _jobs(2, 40)
    seq = SequentialBackend()
    seq.start(ctx)

    # Execute
    torch.manual_seed(1)
    both = seq.train(params, jobs)
    torch.manual_seed(2)
    state = torch.get_rng_state()
    alone = seq.train(params, jobs[1:])
    after = torch.get_rng_state()

    # Assert: the same masks, so the same delta bit for bit; the caller's torch RNG untouched
    np.testing.assert_array_equal(both[1].delta, alone[0].delta)
    assert both[1].loss == alone[0].loss
    assert torch.equal(state, after)
    # the seed is the job's own: another round or device draws other masks
    assert job_torch_seed(jobs[0]) != job_torch_seed(jobs[1])
    assert job_torch_seed(jobs[0]) != job_torch_seed(replace(jobs[0], round_id=2))


def test_dropout_runs_agree_on_sequential_and_two_pool_runs(
    drop_plugin: Path, one_thread: None
) -> None:
    # Prepare: a short digits run of the dropout model, its plugin named for the workers
    cfg = SimConfig(
        dataset="digits",
        model=_DROP,
        clients=12,
        per_round=4,
        rounds=2,
        local_epochs=1,
        batch_size=10,
        lr=0.3,
        plugins=(str(drop_plugin),),
    )

    # Forked workers (0.2 s to start, not a spawned interpreter's 3-10 s): the same worker
    # code, each starting from the driver's torch RNG state as it was at the fork
    pool = ProcessPoolBackend(workers=2, start_method="fork")

    # Execute: two pool runs (the pool restarts its workers for each)
    seq = run_simulation(cfg, progress=False)
    try:
        pooled = [
            run_simulation(replace(cfg, backend="pool"), progress=False, backend=pool)
            for _ in range(2)
        ]
    finally:
        pool.close()

    # Assert: the same weights, accuracy and bytes, bit for bit (one torch thread everywhere)
    for run in pooled:
        np.testing.assert_array_equal(run.final_params, seq.final_params)
        assert [(r.accuracy, r.bytes_up) for r in run.records] == [
            (r.accuracy, r.bytes_up) for r in seq.records
        ]


# 2. the vectorized backend's data and divergence checks


def _errors(ctx: TrainContext, params: np.ndarray, jobs: list[TrainJob]) -> tuple[str, str]:
    """The error each backend raises for the round: (sequential's, vectorized's)."""
    seq = SequentialBackend()
    seq.start(ctx)
    with pytest.raises(ValueError) as seq_err:
        seq.train(params, jobs)
    vec = VectorizedBackend()
    vec.start(ctx)
    assert vec.fallback_reason is None  # the vmapped path is the one checked
    with pytest.raises(ValueError) as vec_err:
        vec.train(params, jobs)
    return str(seq_err.value), str(vec_err.value)


@pytest.mark.parametrize("sizes", ["equal", "uneven"])
def test_a_label_past_the_models_classes_is_refused_in_the_trainers_words(sizes: str) -> None:
    # Prepare: labels 10 (the model has 10 classes) in two devices' examples, past the rows
    # the backend's vmap probe trains on
    data = load_digits_data()
    y = data.y_train.copy()
    jobs = _jobs(6, 30)
    if sizes == "uneven":
        jobs = [replace(j, indices=j.indices[: 10 + 3 * k]) for k, j in enumerate(jobs)]
    y[jobs[3].indices[:4]] = 10
    y[jobs[5].indices[:2]] = 10
    ctx = TrainContext("digits_mlp", data.x_train, y, epochs=1, batch_size=8, lr=0.1)
    params = get_flat_params(build_model("digits_mlp"))

    # Execute
    seq_msg, vec_msg = _errors(ctx, params, jobs)

    # Assert
    assert seq_msg.startswith("training data: class label 10 out of range")
    assert vec_msg == seq_msg


def test_nan_inputs_are_refused_in_the_trainers_words() -> None:
    # Prepare
    data = load_digits_data()
    x = data.x_train.copy()
    jobs = _jobs(4, 25)
    x[jobs[2].indices[3], 5] = np.nan
    ctx = TrainContext("digits_mlp", x, data.y_train, epochs=1, batch_size=8, lr=0.1)
    params = get_flat_params(build_model("digits_mlp"))

    # Execute
    seq_msg, vec_msg = _errors(ctx, params, jobs)

    # Assert
    assert seq_msg.startswith("training data: 1 input values are NaN")
    assert vec_msg == seq_msg


def test_a_diverging_lr_is_refused_in_the_trainers_words(one_thread: None) -> None:
    # Prepare: an lr no model survives
    data = load_digits_data()
    ctx = TrainContext("digits_mlp", data.x_train, data.y_train, epochs=2, batch_size=8, lr=1e30)
    params = get_flat_params(build_model("digits_mlp"))

    # Execute
    seq_msg, vec_msg = _errors(ctx, params, _jobs(5, 30))

    # Assert
    assert seq_msg.startswith("training diverged: ")
    assert vec_msg == seq_msg


_BAD_LABELS = """\
import numpy as np
from torch import nn

from mobile_sim.data import load_digits_data
from mobile_sim.datasets._types import NaturalData
from mobile_sim.models import MODELS
from mobile_sim.runner import DATASET_LOADERS


def load(root, seed):
    d = load_digits_data(seed=seed)
    order = np.argsort(d.y_train[:200] == 9, kind="stable")  # the nines last
    x, y = d.x_train[:200][order], d.y_train[:200][order]
    keep = d.y_test < 9
    groups = tuple(np.arange(k, k + 50) for k in range(0, 200, 50))
    tests = tuple(np.arange(k, k + 5) for k in range(0, 20, 5))
    return NaturalData("s43_bad", x, y, d.x_test[keep], d.y_test[keep], 10,
                       train_groups=groups, test_groups=tests, group_names=("a", "b", "c", "d"))


MODELS["s43_nine"] = lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 9))
DATASET_LOADERS["s43_bad"] = load
"""


def test_plume_sim_vectorized_reports_a_bad_label_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a model of 9 classes on digits in natural groups: the first device (which the
    # run checks up front) has no 9, the last ones do
    from coordinator.cli import main as plume
    from mobile_sim.runner import DATASET_LOADERS

    plugin = tmp_path / "s43_bad_labels.py"
    plugin.write_text(_BAD_LABELS)
    monkeypatch.setitem(DATASET_LOADERS, "s43_bad", lambda root, seed: None)
    monkeypatch.setitem(models.MODELS, "s43_nine", lambda: None)
    monkeypatch.chdir(tmp_path)
    before = set(sys.modules)
    argv = ["sim", "--plugin", str(plugin), "--dataset", "s43_bad", "--model", "s43_nine"]
    argv += ["--clients", "4", "--per-round", "4", "--rounds", "1", "--partition", "natural"]
    argv += ["--out", str(tmp_path / "out")]

    # Execute
    try:
        got = []
        for backend in ("sequential", "vectorized"):
            code = plume([*argv, "--backend", backend])
            got.append((code, capsys.readouterr().err.strip().splitlines()[-1]))
    finally:
        for key in set(sys.modules) - before:
            if "s43_bad" in key:
                del sys.modules[key]

    # Assert: one line, exit 2, the same on both backends
    assert got[0] == got[1]
    code, line = got[0]
    assert code == 2
    assert line.startswith("plume sim: error: ") and "class label 9 out of range" in line
