"""Stop 48, helper-406's review of the simulator: a --plugin dataset with natural users of its
own (a `NaturalData` with `train_groups`) run with `--partition natural` and no `--clients`
failed: `--clients` defaulted to 100, and the error said "--clients must be at most 4 with the
natural partition: ... got 100" of a flag the user never gave, though the --clients help
promises "with --partition natural, all the dataset's natural clients". Only the built-in
shakespeare and synthetic were counted; a registered dataset is now counted too."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.cli import main as plume
from mobile_sim.runner import DATASET_LOADERS, DEFAULT_MODEL

# Digits split over four users of its own ("natural"), and the same digits with none ("plain").
_PLUGIN = """\
import numpy as np

from mobile_sim.data import FederatedData, load_digits_data
from mobile_sim.datasets import NaturalData
from mobile_sim.runner import DATASET_LOADERS, DEFAULT_MODEL


def natural(root, seed):
    d = load_digits_data(seed=seed)
    x, y = d.x_train[:200], d.y_train[:200]
    groups = tuple(np.arange(k, k + 50) for k in range(0, 200, 50))
    tests = tuple(np.array_split(np.arange(len(d.y_test)), 4))
    return NaturalData("{name}_natural", x, y, d.x_test, d.y_test, 10, train_groups=groups,
                       test_groups=tests, group_names=("ann", "bo", "cy", "di"))


def plain(root, seed):
    d = load_digits_data(seed=seed)
    return FederatedData("{name}_plain", d.x_train, d.y_train, d.x_test, d.y_test, 10)


DATASET_LOADERS["{name}_natural"] = natural
DATASET_LOADERS["{name}_plain"] = plain
DEFAULT_MODEL["{name}_natural"] = DEFAULT_MODEL["{name}_plain"] = "digits_mlp"
"""


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The plugin module's name, in an empty current directory; afterwards sys.path,
    sys.modules and the registries are as before."""
    name = f"s48_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(_PLUGIN.format(name=name))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield name
    for key in [k for k in sys.modules if name in k]:
        del sys.modules[key]
    for registry in (DATASET_LOADERS, DEFAULT_MODEL):
        for key in [k for k in registry if k.startswith(name)]:
            del registry[key]


def _sim(plugin: str, dataset: str, out: Path, *flags: str) -> int:
    return plume(
        ["sim", "--plugin", plugin, "--dataset", f"{plugin}_{dataset}", "--partition",
         "natural", "--per-round", "2", "--rounds", "1", "--local-epochs", "1",
         "--no-progress", "--out", str(out), *flags]
    )  # fmt: skip


def test_a_plugin_datasets_natural_users_are_all_the_clients_by_default(
    plugin: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = _sim(plugin, "natural", tmp_path / "run")

    # Assert: every one of its four users is a device, and the line says so
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.splitlines()[0] == (
        f"{plugin}_natural: --partition natural (its own users): 4 devices, all of them "
        "(--clients N takes the first N)"
    )
    doc = json.loads((tmp_path / "run" / "rounds.json").read_text())
    assert doc["config"]["clients"] == 4
    assert "--clients 4" in doc["command"]  # the rerun line writes the count out


def test_a_plugin_datasets_clients_given_still_take_the_first_n(
    plugin: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _sim(plugin, "natural", tmp_path / "run", "--clients", "3")

    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "its own users" not in captured.out
    assert json.loads((tmp_path / "run" / "rounds.json").read_text())["config"]["clients"] == 3


def test_a_plugin_dataset_without_natural_users_is_one_usage_error(
    plugin: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The same line as with --clients given; before, the run was refused for the 100 clients
    code = _sim(plugin, "plain", tmp_path / "run")

    err = capsys.readouterr().err
    assert code == 2
    assert err == f"plume sim: error: dataset '{plugin}_plain' has no natural partition\n"
    assert not (tmp_path / "run").exists()
