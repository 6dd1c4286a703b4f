"""`plume export --plugin MODULE`: sim, create-task and get-model take --plugin, export did
not, so a model a plugin registers could not be exported from the command line ('unknown
model'). It imports the plugins as create-task does (same function, same error lines)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.cli import main
from mobile_sim import models

_PLUGIN = """\
from torch import nn

from mobile_sim.models import MODELS

MODELS["h167_tiny"] = lambda: nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.ReLU(),
                                           nn.Linear(4, 3))
"""


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder holding the plugin; the registry, sys.path and the module are restored after."""
    (tmp_path / "h167_plugin.py").write_text(_PLUGIN)
    (tmp_path / "h167_raises.py").write_text(
        "from mobile_sim.models import MODELS\n\n\ndef broken():\n"
        "    raise RuntimeError('needs a GPU')\n\n\nMODELS['h167_tiny'] = broken\n"
    )
    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for name in ("h167_plugin", "h167_raises"):
        sys.modules.pop(name, None)


_EXPORT = ["export", "--model", "h167_tiny", "--input-shape", "6", "--no-progress"]


def test_a_plugin_model_exports(plugin_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Execute: the plugin as a path to its file
    code = main([*_EXPORT, "--plugin", str(plugin_dir / "h167_plugin.py"), "--out", "art"])
    # Assert: the model's 6*4+4 + 4*3+3 = 43 parameters, written with its manifest
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"] == "h167_tiny" and summary["params"] == 43
    manifest = json.loads((plugin_dir / "art" / "manifest.json").read_text())
    assert manifest["model"] == "h167_tiny"


def test_without_the_plugin_the_model_is_unknown(
    plugin_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*_EXPORT, "--out", "art"]) == 2
    assert "unknown model 'h167_tiny'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("plugin", "status", "line"),
    [
        ("h167_nosuch", 2, "plume export: error: --plugin h167_nosuch: "),
        (
            "h167_raises",
            1,
            "plume export: error: --model h167_tiny: building it raised RuntimeError",
        ),
    ],
)
def test_plugin_mistakes_are_one_line(
    plugin: str,
    status: int,
    line: str,
    plugin_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("PLUME_DEBUG", raising=False)
    assert main([*_EXPORT, "--plugin", plugin, "--out", "art"]) == status
    err = capsys.readouterr().err
    assert err.startswith(line) and err.count("\n") == 1, err
    assert not (plugin_dir / "art").exists()
