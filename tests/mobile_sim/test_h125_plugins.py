"""`plume sim --plugin MODULE`: a module of the user's, imported before the flags are checked,
registers a model, a dataset and an aggregator that `--model`, `--dataset` and `--aggregator`
then name, on every backend (the pool's "spawn" and "forkserver" workers and Ray's actors are
fresh interpreters: they import the plugins from the training context before building the
model). Before, `plume sim` had no such flag, and a model registered in the driver alone failed
in a spawned pool worker ("unknown model")."""

from __future__ import annotations

import json
import shlex
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from coordinator.cli import build_parser
from coordinator.cli import main as plume
from mobile_sim import _cli as sim_cli
from mobile_sim.models import MODELS
from mobile_sim.runner import AGGREGATORS, DATASET_LOADERS, DEFAULT_MODEL, SimConfig

# A plugin as a user writes it: a slice of sklearn's digits, a linear model, an aggregator.
_PLUGIN = """\
from torch import nn

from coordinator.aggregators import FedAvg
from mobile_sim.data import FederatedData, load_digits_data
from mobile_sim.models import MODELS
from mobile_sim.runner import AGGREGATORS, DATASET_LOADERS


def load(root, seed):
    d = load_digits_data(seed=seed)
    return FederatedData("{name}_data", d.x_train[:120], d.y_train[:120], d.x_test[:60],
                         d.y_test[:60], 10)


MODELS["{name}_linear"] = lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
DATASET_LOADERS["{name}_data"] = load
AGGREGATORS["{name}_mean"] = FedAvg
"""


@dataclass
class Plugin:
    module: str  # the module name, in the current directory
    folder: Path  # the current directory, holding the module's file
    model: str
    dataset: str
    aggregator: str


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Plugin]:
    """A plugin module in an empty current directory; afterwards sys.path, sys.modules and
    the registries are as before."""
    name = f"h125_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(_PLUGIN.format(name=name))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    found = Plugin(name, tmp_path, f"{name}_linear", f"{name}_data", f"{name}_mean")
    yield found
    for key in [k for k in sys.modules if name in k]:
        del sys.modules[key]
    MODELS.pop(found.model, None)
    DATASET_LOADERS.pop(found.dataset, None)
    AGGREGATORS.pop(found.aggregator, None)
    DEFAULT_MODEL.pop(found.dataset, None)


def _run(p: Plugin, out: Path, *flags: str, spec: str | None = None) -> int:
    return plume(
        [
            "sim",
            "--plugin",
            spec or p.module,
            "--dataset",
            p.dataset,
            "--model",
            p.model,
            "--aggregator",
            p.aggregator,
            "--clients",
            "6",
            "--per-round",
            "3",
            "--rounds",
            "2",
            "--local-epochs",
            "1",
            "--lr",
            "0.2",
            "--topk",
            "0.1",
            "--no-progress",
            "--out",
            str(out),
            *flags,
        ]
    )


def _accuracies(out: Path) -> list[float]:
    doc = json.loads((out / "rounds.json").read_text())
    return [r["accuracy"] for r in doc["rounds"]]


def test_a_plugin_registers_a_model_dataset_and_aggregator_the_cli_runs(
    plugin: Plugin, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = _run(plugin, plugin.folder / "run")

    # Assert: two rounds of the plugin's model on its data, recorded with the plugin
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads((plugin.folder / "run" / "rounds.json").read_text())
    assert len(doc["rounds"]) == 2
    assert doc["summary"]["model"] == plugin.model
    assert doc["summary"]["num_params"] == 650
    assert doc["config"]["plugins"] == [plugin.module]
    assert doc["config"]["aggregator"] == plugin.aggregator
    assert f"--plugin {plugin.module} --dataset {plugin.dataset}" in doc["command"]
    assert "compressed: final accuracy" in out


def test_the_recorded_command_reruns_the_run(
    plugin: Plugin, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a run, then its rounds.json's command with another --out (as the docs say)
    assert _run(plugin, plugin.folder / "first") == 0
    doc = json.loads((plugin.folder / "first" / "rounds.json").read_text())
    words = shlex.split(doc["command"])
    assert words[:2] == ["plume", "sim"]

    # Execute: in a fresh registry state, as a new `plume sim` process would have
    del sys.modules[plugin.module]
    MODELS.pop(plugin.model)
    DATASET_LOADERS.pop(plugin.dataset)
    AGGREGATORS.pop(plugin.aggregator)
    code = plume([*words[1:], "--out", str(plugin.folder / "again")])

    # Assert: the same run
    assert code == 0, capsys.readouterr().err
    again = json.loads((plugin.folder / "again" / "rounds.json").read_text())
    assert again["config"] == doc["config"]
    assert _accuracies(plugin.folder / "again") == _accuracies(plugin.folder / "first")


def test_a_py_file_path_is_a_plugin_too(plugin: Plugin, capsys: pytest.CaptureFixture[str]) -> None:
    # Execute: the file by its relative path
    code = _run(plugin, plugin.folder / "run", spec=f"./{plugin.module}.py")

    # Assert
    assert code == 0, capsys.readouterr().err
    doc = json.loads((plugin.folder / "run" / "rounds.json").read_text())
    assert doc["config"]["plugins"] == [f"./{plugin.module}.py"]
    assert len(doc["rounds"]) == 2


def test_a_plugin_model_trains_on_the_vectorized_backend(
    plugin: Plugin, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = _run(plugin, plugin.folder / "vec", "--backend", "vectorized")

    # Assert
    assert code == 0, capsys.readouterr().err
    assert len(_accuracies(plugin.folder / "vec")) == 2


def test_report_takes_no_plugin(plugin: Plugin, capsys: pytest.CaptureFixture[str]) -> None:
    # `plume sim report` redraws from rounds.json alone: --plugin is a run flag like the rest
    code = plume(["sim", "report", str(plugin.folder), "--plugin", plugin.module])

    err = capsys.readouterr().err
    assert code == 2
    assert "takes no run flags (got --plugin)" in err
    assert plugin.module not in sys.modules


@pytest.mark.timeout(120)
def test_a_plugin_model_trains_in_spawned_pool_workers(
    plugin: Plugin, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the sequential run to agree with
    assert _run(plugin, plugin.folder / "seq") == 0

    # Execute: the pool's default start method is "spawn": fresh interpreters. One worker
    # proves it: `start` waits until every worker has imported the plugins and built the model;
    # a second spawned worker would only repeat that (~5 s of imports on a 2-core machine)
    code = _run(plugin, plugin.folder / "pool", "--backend", "pool", "--workers", "1")

    # Assert: the workers built the plugin's model and trained as the driver does
    assert code == 0, capsys.readouterr().err
    np.testing.assert_allclose(
        _accuracies(plugin.folder / "pool"), _accuracies(plugin.folder / "seq"), atol=0.02
    )


def _context(p: Plugin, plugins: tuple[str, ...]) -> tuple[object, np.ndarray, list[object]]:
    from mobile_sim.backends import TrainContext, TrainJob
    from mobile_sim.data import load_digits_data

    d = load_digits_data(seed=0)
    ctx = TrainContext(
        model=p.model,
        x_train=d.x_train[:40],
        y_train=d.y_train[:40],
        epochs=1,
        batch_size=10,
        lr=0.1,
        plugins=plugins,
        plugin_root=str(p.folder),
    )
    jobs = [TrainJob(f"d{i}", i, 0, 1, np.arange(10 * i, 10 * i + 10)) for i in range(2)]
    return ctx, np.zeros(650, np.float32), jobs


@pytest.mark.timeout(120)
# "forkserver" workers are new interpreters; a "fork" worker inherits the plugin, and
# importing it again there must be a harmless no-op.
@pytest.mark.parametrize("start_method", ["forkserver", "fork"])
def test_pool_workers_import_the_plugins_of_the_context(
    plugin: Plugin, monkeypatch: pytest.MonkeyPatch, start_method: str
) -> None:
    from mobile_sim.backends._base import import_plugins
    from mobile_sim.backends.process_pool import ProcessPoolBackend
    from mobile_sim.backends.sequential import SequentialBackend

    # Prepare: the driver has the plugin; a new interpreter would not find it (another cwd,
    # and the plugin's folder off sys.path, which "forkserver" passes on at its start)
    import_plugins([plugin.module])
    ctx, params, jobs = _context(plugin, (plugin.module,))
    monkeypatch.chdir(plugin.folder.parent)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(plugin.folder)])
    want = SequentialBackend()
    want.start(ctx)  # type: ignore[arg-type]
    expected = want.train(params, jobs)  # type: ignore[arg-type]
    pool = ProcessPoolBackend(workers=1, start_method=start_method)

    # Execute
    try:
        pool.start(ctx)  # type: ignore[arg-type]
        got = pool.train(params, jobs)  # type: ignore[arg-type]
    finally:
        pool.close()

    # Assert
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a.delta, b.delta, atol=1e-6)


@pytest.mark.slow  # a local Ray runtime: ~8 s on a busy 2-core machine
@pytest.mark.ray
@pytest.mark.timeout(240)
def test_ray_actors_import_the_plugins_of_the_context(plugin: Plugin) -> None:
    ray = pytest.importorskip("ray", reason="the Ray backend needs `pip install .[ray]`")
    from mobile_sim.backends._base import import_plugins
    from mobile_sim.backends.ray_backend import RayBackend
    from mobile_sim.backends.sequential import SequentialBackend

    # Prepare
    import_plugins([f"{plugin.module}.py"])
    ctx, params, jobs = _context(plugin, (f"{plugin.module}.py",))
    want = SequentialBackend()
    want.start(ctx)  # type: ignore[arg-type]
    expected = want.train(params, jobs)  # type: ignore[arg-type]
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    backend = RayBackend(workers=1)

    # Execute
    try:
        backend.start(ctx)  # type: ignore[arg-type]
        got = backend.train(params, jobs)  # type: ignore[arg-type]
        backend.close()
    finally:
        ray.shutdown()

    # Assert
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a.delta, b.delta, atol=1e-6)


@pytest.mark.parametrize(
    ("source", "spec", "reason"),
    [
        ("raise RuntimeError('no GPU here')\n", None, "RuntimeError: no GPU here"),
        ("import nosuchmodule_h125\n", None, "No module named 'nosuchmodule_h125'"),
        ("def broken(:\n", None, "SyntaxError"),
        (None, "nosuch_plugin_h125", "No module named 'nosuch_plugin_h125'"),
        (None, "missing_h125.py", "no such file"),
    ],
)
def test_a_plugin_that_fails_to_import_is_one_error_line(
    plugin: Plugin,
    capsys: pytest.CaptureFixture[str],
    source: str | None,
    spec: str | None,
    reason: str,
) -> None:
    # Prepare
    if source is not None:
        (plugin.folder / "bad_h125.py").write_text(source)
    spec = spec or "bad_h125"

    # Execute
    code = plume(["sim", "--plugin", spec, "--rounds", "1", "--no-progress"])

    # Assert: exit 2 and one line naming the module and the exception, no traceback
    err = capsys.readouterr().err
    sys.modules.pop("bad_h125", None)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"plume sim: error: --plugin {spec}: ")
    assert reason in lines[0]


def test_an_unknown_model_after_plugins_lists_theirs(
    plugin: Plugin, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = plume(
        ["sim", "--plugin", plugin.module, "--dataset", plugin.dataset, "--model", "nosuch"]
    )

    # Assert
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown model 'nosuch' (--model); choose one of" in err
    assert plugin.model in err and "digits_mlp" in err


def test_the_command_repeats_the_flag_per_plugin() -> None:
    # Prepare
    args = build_parser().parse_args(["sim", "--plugin", "a.b", "--plugin", "c d.py"])

    # Execute
    command = sim_cli._command(args)

    # Assert
    assert command.startswith("plume sim --plugin a.b --plugin 'c d.py'")


def test_without_plugins_the_recorded_config_is_unchanged() -> None:
    # A run without --plugin writes the same rounds.json config as before the flag existed.
    assert "plugins" not in SimConfig(dataset="digits").as_dict()
    assert SimConfig(dataset="digits", plugins=["json"]).plugins == ("json",)  # type: ignore[arg-type]


def test_a_default_model_registered_by_a_plugin_makes_model_optional(
    plugin: Plugin, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a second plugin that only names the default model of the first's dataset
    (plugin.folder / f"{plugin.module}_default.py").write_text(
        "from mobile_sim.runner import DEFAULT_MODEL\n"
        f"DEFAULT_MODEL[{plugin.dataset!r}] = {plugin.model!r}\n"
    )
    out = plugin.folder / "run"

    # Execute: both plugins, in order, and no --model
    code = plume(
        [
            "sim",
            "--plugin",
            plugin.module,
            "--plugin",
            f"{plugin.module}_default",
            "--dataset",
            plugin.dataset,
            "--clients",
            "4",
            "--per-round",
            "2",
            "--rounds",
            "1",
            "--local-epochs",
            "1",
            "--no-progress",
            "--out",
            str(out),
        ]
    )

    # Assert
    assert code == 0, capsys.readouterr().err
    doc = json.loads((out / "rounds.json").read_text())
    assert doc["summary"]["model"] == plugin.model
    assert doc["config"]["plugins"] == [plugin.module, f"{plugin.module}_default"]


def test_a_plugin_aggregator_over_http_is_refused_before_the_run(
    plugin: Plugin, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before, the loopback coordinator refused the task (422, unknown aggregator) with a
    # traceback, after the data was loaded and the coordinator started.
    # Execute
    code = _run(plugin, plugin.folder / "run", "--transport", "http")

    # Assert
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        f"plume sim: error: --aggregator '{plugin.aggregator}' is registered in this process "
        "(a --plugin's), but --transport http aggregates in a coordinator, which builds only "
        "its own aggregators: drop --transport http"
    ]
    assert not (plugin.folder / "run").exists()


_DOC = Path(__file__).resolve().parents[2] / "docs" / "simulator.md"


def test_the_docs_plugin_example_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: docs/simulator.md's my_plugin.py, in an empty folder, and its command
    text = _DOC.read_text()
    block = text.split("```python\n# my_plugin.py\n", 1)[1].split("```", 1)[0]
    flags = next(x for x in text.splitlines() if x.startswith("`--plugin my_plugin "))
    (tmp_path / "my_plugin.py").write_text(block)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    names = ("linear64", "small_digits")
    assert not any(n in MODELS or n in DATASET_LOADERS for n in names)

    # Execute
    try:
        code = plume(["sim", *shlex.split(flags.strip("`")), "--no-progress"])
    finally:
        sys.modules.pop("my_plugin", None)
        MODELS.pop("linear64", None)
        DATASET_LOADERS.pop("small_digits", None)
        DEFAULT_MODEL.pop("small_digits", None)

    # Assert: as the Python example below it says, 650 weights and 2 rounds
    assert code == 0, capsys.readouterr().err
    doc = json.loads((tmp_path / "runs" / "own" / "rounds.json").read_text())
    assert doc["summary"]["num_params"] == 650 and len(doc["rounds"]) == 2
    assert doc["config"]["plugins"] == ["my_plugin"]


def test_an_unknown_dataset_after_plugins_lists_theirs(
    plugin: Plugin, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before, the list named only the built-in datasets, not the ones the plugins registered.
    # Execute
    code = plume(
        ["sim", "--plugin", plugin.module, "--dataset", "nosuch", "--model", plugin.model]
        + ["--rounds", "1", "--no-progress", "--out", str(plugin.folder / "run")]
    )

    # Assert
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("plume sim: error: unknown dataset 'nosuch'; choose mnist, digits")
    assert err.rstrip().endswith(f"or one registered: {plugin.dataset}")
