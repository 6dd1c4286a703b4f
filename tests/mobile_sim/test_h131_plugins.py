"""`plume sim --plugin`, the fixes after helper-130's review: a secure run builds its training
context as a plain run does (with the plugins, so a spawned pool worker finds a plugin's
model); the plugins' root is the directory the config was made in."""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator.cli import main as plume
from mobile_sim.models import MODELS
from mobile_sim.runner import DATASET_LOADERS

_PLUGIN = """\
from torch import nn

from mobile_sim.data import FederatedData, load_digits_data
from mobile_sim.models import MODELS
from mobile_sim.runner import DATASET_LOADERS


def load(root, seed):
    d = load_digits_data(seed=seed)
    return FederatedData("{name}_data", d.x_train[:120], d.y_train[:120], d.x_test[:60],
                         d.y_test[:60], 10)


MODELS["{name}_linear"] = lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
DATASET_LOADERS["{name}_data"] = load
"""


@dataclass
class Plugin:
    module: str
    folder: Path
    model: str
    dataset: str


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Plugin]:
    """A plugin module in an empty current directory; afterwards sys.path, sys.modules and
    the registries are as before."""
    name = f"h131_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(_PLUGIN.format(name=name))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    found = Plugin(name, tmp_path, f"{name}_linear", f"{name}_data")
    yield found
    for key in [k for k in sys.modules if name in k]:
        del sys.modules[key]
    MODELS.pop(found.model, None)
    DATASET_LOADERS.pop(found.dataset, None)


@pytest.mark.timeout(120)
def test_a_plugin_model_trains_in_a_secure_run_on_the_pool_backend(
    plugin: Plugin, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before, the secure run built its own TrainContext without the plugins: the spawned
    # pool workers did not import the plugin and failed with "unknown model".
    out = plugin.folder / "run"

    # Execute
    code = plume(
        [
            "sim",
            "--plugin",
            plugin.module,
            "--dataset",
            plugin.dataset,
            "--model",
            plugin.model,
            "--secure",
            "--backend",
            "pool",
            "--clients",
            "6",
            "--per-round",
            "4",
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
    assert len(doc["rounds"]) == 1


class _Recording:
    """The sequential backend, keeping the context it was started with."""

    name = "sequential"

    def __init__(self) -> None:
        from mobile_sim.backends.sequential import SequentialBackend

        self.inner = SequentialBackend()
        self.contexts: list[object] = []

    def start(self, ctx: object) -> None:
        self.contexts.append(ctx)
        self.inner.start(ctx)  # type: ignore[arg-type]

    def train(self, params: object, jobs: object) -> object:
        return self.inner.train(params, jobs)  # type: ignore[arg-type]

    def close(self) -> None:
        self.inner.close()


def test_the_context_keeps_the_directory_the_config_was_made_in(
    plugin: Plugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, a relative .py plugin was resolved when the config was made, but the context
    # (which a pool worker imports the plugins from) took the directory of run_simulation's
    # call: another, where the worker found no such file.
    from mobile_sim.runner import SimConfig, run_simulation

    cfg = SimConfig(
        dataset=plugin.dataset,
        model=plugin.model,
        plugins=(f"./{plugin.module}.py",),
        clients=4,
        per_round=2,
        rounds=1,
        local_epochs=1,
        fleet="off",
    )
    backend = _Recording()
    monkeypatch.chdir(plugin.folder.parent)

    # Execute
    run_simulation(cfg, progress=False, backend=backend)  # type: ignore[arg-type]

    # Assert
    (ctx,) = backend.contexts
    assert ctx.plugins == (f"./{plugin.module}.py",)  # type: ignore[attr-defined]
    assert ctx.plugin_root == str(plugin.folder)  # type: ignore[attr-defined]
    assert os.path.isfile(os.path.join(ctx.plugin_root, ctx.plugins[0]))  # type: ignore[attr-defined]


def test_a_secure_run_and_a_plain_run_start_their_backend_with_one_context(
    plugin: Plugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    from coordinator.secure import SecureConfig
    from mobile_sim import runner
    from mobile_sim.runner import SimConfig, run_simulation
    from mobile_sim.secure import run_secure_simulation

    cfg = SimConfig(
        dataset=plugin.dataset,
        model=plugin.model,
        plugins=(plugin.module,),
        clients=4,
        per_round=3,
        rounds=1,
        local_epochs=1,
        fleet="off",
    )
    backends: list[_Recording] = []

    def recording(_cfg: SimConfig) -> _Recording:
        backends.append(_Recording())
        return backends[-1]

    monkeypatch.setattr(runner, "backend_for", recording)

    # Execute
    run_simulation(cfg, progress=False)
    run_secure_simulation(cfg, SecureConfig(), dropout=0.0, progress=False)

    # Assert: the same context, plugins and their root included
    plain, secure = (b.contexts[0] for b in backends)
    assert plain.plugins == secure.plugins == (plugin.module,)  # type: ignore[attr-defined]
    assert plain.plugin_root == secure.plugin_root == str(plugin.folder)  # type: ignore[attr-defined]
    for name in ("model", "epochs", "batch_size", "lr", "momentum", "ort_artifacts"):
        assert getattr(plain, name) == getattr(secure, name), name
