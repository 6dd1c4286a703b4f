"""`plume sim --plugin MODULE`: the errors a newcomer meets with their own model, dataset or
aggregator are one line that names the cause and the fix (helper-134's walkthrough), on every
transport and fleet, and a failed run leaves no empty --out folder behind."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator.cli import main as plume
from mobile_sim.models import MODELS
from mobile_sim.runner import AGGREGATORS, DATASET_LOADERS, DEFAULT_MODEL

# A plugin whose dataset (4 features) does not fit the built-in 784-input mlp, and a few more
# names to meet the other errors with.
_PLUGIN = """\
import numpy as np

from coordinator.aggregators import FedAvg
from mobile_sim.data import FederatedData
from mobile_sim.runner import AGGREGATORS, DATASET_LOADERS

SEEN = []


def small(root, seed):
    SEEN.append(root)
    x = np.zeros((10, 4), np.float32)
    y = np.zeros(10, np.int64)
    return FederatedData("{name}_small", x, y, x, y, 2)


def missing(root, seed):
    return np.load(f"{{root}}/nosuch_h136.npz")


def wide(root, seed):
    x = np.zeros((10, 4), np.float64)
    y = np.zeros(10, np.int64)
    return FederatedData("{name}_wide", x, y, x.astype(np.float32), y, 2)


DATASET_LOADERS["{name}_small"] = small
DATASET_LOADERS["{name}_missing"] = missing
DATASET_LOADERS["{name}_wide"] = wide
AGGREGATORS["{name}_mean"] = FedAvg
"""


@dataclass
class Plugin:
    module: str
    folder: Path
    small: str
    missing: str
    wide: str
    aggregator: str


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Plugin]:
    """The plugin module in an empty current directory; afterwards sys.path, sys.modules and
    the registries are as before."""
    name = f"h136_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(_PLUGIN.format(name=name))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    found = Plugin(
        name, tmp_path, f"{name}_small", f"{name}_missing", f"{name}_wide", f"{name}_mean"
    )
    yield found
    for key in [k for k in sys.modules if name in k]:
        del sys.modules[key]
    for registry in (DATASET_LOADERS, AGGREGATORS, MODELS, DEFAULT_MODEL):
        for key in [k for k in registry if k.startswith(name)]:
            del registry[key]


def _sim(p: Plugin, *flags: str) -> int:
    return plume(["sim", "--plugin", p.module, "--no-progress", *flags])


_SMALL_RUN = ("--model", "mlp", "--clients", "5", "--per-round", "2", "--rounds", "1")


@pytest.mark.parametrize(
    "flags",
    [
        pytest.param((), id="fleet-timing"),
        pytest.param(("--fleet", "off"), id="fleet-off"),
        pytest.param(("--fleet", "realistic"), id="fleet-realistic"),
        pytest.param(("--transport", "http"), id="http"),
    ],
)
def test_a_dataset_the_model_does_not_fit_is_one_error_line_on_every_path(
    plugin: Plugin, capsys: pytest.CaptureFixture[str], flags: tuple[str, ...]
) -> None:
    # Before, the default fleet crashed with a torch traceback from training_flops_per_sample
    # and --transport http with a DeviceFailed traceback; only --fleet off said this.
    out = plugin.folder / "runs" / "misfit"

    # Execute
    code = _sim(plugin, "--dataset", plugin.small, *_SMALL_RUN, "--out", str(out), *flags)

    # Assert: exit 2, one line in the trainer's words, and no empty --out folder left behind
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("plume sim: error: training data: x of shape [")
    assert "(float32) does not fit the model: mat1 and mat2 shapes cannot be multiplied" in err
    assert not out.exists()
    assert not (plugin.folder / "runs").exists()


def test_a_failed_run_keeps_an_out_folder_that_was_there(
    plugin: Plugin, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: an existing, empty --out is the user's: it stays
    out = plugin.folder / "mine"
    out.mkdir()

    # Execute
    code = _sim(plugin, "--dataset", plugin.small, *_SMALL_RUN, "--out", str(out))

    # Assert
    assert code == 2, capsys.readouterr().err
    assert out.is_dir()


def test_a_registered_loader_gets_the_default_data_root(
    plugin: Plugin, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before, it got None though --data-root's help says "default: $PLUME_DATA, else
    # ../shared/data", as the built-in loaders resolve it (mobile_sim.data.data_root).
    from mobile_sim.data import data_root
    from mobile_sim.runner import load_dataset

    # Prepare
    monkeypatch.setenv("PLUME_DATA", str(plugin.folder))
    _sim(plugin, "--dataset", "nosuch_h136")  # imports the plugin; the dataset is refused
    capsys.readouterr()
    seen = sys.modules[plugin.module].SEEN

    # Execute
    load_dataset(plugin.small)
    monkeypatch.delenv("PLUME_DATA")
    load_dataset(plugin.small)
    load_dataset(plugin.small, root="elsewhere")

    # Assert
    assert seen == [str(plugin.folder), str(data_root()), "elsewhere"]


def test_a_loader_that_raises_is_named_in_the_error(
    plugin: Plugin, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = _sim(plugin, "--dataset", plugin.missing, "--model", "mlp", "--rounds", "1")

    # Assert: one line naming the dataset, its loader and the loader's exception
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 1, err
    assert len(lines) == 1, err
    assert lines[0].startswith(
        f"plume sim: error: dataset {plugin.missing!r} (its loader {plugin.module}.missing): "
        "FileNotFoundError: "
    )
    assert "nosuch_h136.npz" in lines[0]


def test_a_float64_dataset_is_told_its_dtype_and_the_cast(
    plugin: Plugin, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = _sim(plugin, "--dataset", plugin.wide, "--model", "mlp", "--rounds", "1")

    # Assert
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.strip() == (
        f"plume sim: error: dataset {plugin.wide!r}: x_train must be a float32 array [N, ...], "
        "got float64 of shape [10, 4]; return x.astype(np.float32)"
    )


def test_a_dataset_of_another_type_is_told_what_it_got() -> None:
    # Prepare: not a floating dtype, so no cast is suggested
    import numpy as np

    from mobile_sim.data import FederatedData
    from mobile_sim.runner import _checked

    x, y = np.zeros((3, 2), np.int64), np.zeros(3, np.int64)

    # Execute / Assert
    with pytest.raises(ValueError) as caught:
        _checked("ints", FederatedData("ints", x, y, x, y, 2))
    assert str(caught.value) == (
        "dataset 'ints': x_train must be a float32 array [N, ...], got int64 of shape [3, 2]"
    )
    with pytest.raises(ValueError, match=r"got list$"):
        _checked("lists", FederatedData("lists", [[1.0]], y, x, y, 2))  # type: ignore[arg-type]


def test_an_unknown_dataset_lists_the_names_as_one_plain_list(
    plugin: Plugin, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: "choose mnist, digits or one of ('shakespeare', ...), or one registered: ..."
    # Execute
    code = _sim(plugin, "--dataset", "nosuch_h136", "--model", "mlp")

    # Assert
    err = capsys.readouterr().err
    assert code == 2, err
    assert "('shakespeare'" not in err and "'shakespeare'" not in err, err
    registered = sorted([plugin.small, plugin.missing, plugin.wide])
    assert err.strip().endswith(f"or one registered: {', '.join(registered)}"), err
    assert "choose mnist, digits, shakespeare" in err, err
