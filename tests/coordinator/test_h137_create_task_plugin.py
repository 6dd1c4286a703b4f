"""`plume coordinator create-task --plugin MODULE`: the plugins `plume sim --plugin` imports
register models in `mobile_sim.models.MODELS`; create-task took only zoo models, so a model of
one could be simulated but not deployed from the command line (`--model NAME` was refused as
unknown, there being no way to import the module that registers it)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from coordinator.cli import main
from coordinator.service import AdminClient, ServerThread, ServiceConfig
from mobile_sim import models

from .test_service_support import ADMIN

_LAYERS = """\
from torch import nn


def tiny():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.ReLU(), nn.Linear(5, 3))
"""

_PLUGIN = """\
from h137_layers import tiny

from mobile_sim.models import MODELS

MODELS["h137_tiny"] = tiny
"""


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder holding a plugin (`h137_plugin.py`, registering model `h137_tiny`) and the
    module it imports; the registry, sys.path and the modules are restored afterwards."""
    (tmp_path / "h137_layers.py").write_text(_LAYERS)
    (tmp_path / "h137_plugin.py").write_text(_PLUGIN)
    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for name in ("h137_layers", "h137_plugin"):
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = tmp_path_factory.mktemp("h137p") / "p.db"
    with ServerThread(ServiceConfig(db_path=str(db), admin_token=ADMIN)) as base:
        yield base


def _create(url: str, *flags: str) -> list[str]:
    return ["coordinator", "create-task", "--url", url, "--admin-token", ADMIN, "--rounds", "2",
            "--clients-per-round", "2", *flags]  # fmt: skip


@pytest.mark.parametrize("spec", ["h137_plugin", "h137_plugin.py"])
def test_a_plugins_model_is_deployed_with_its_layout_and_weights(
    plugin_dir: Path, url: str, spec: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = main(_create(url, "--plugin", spec, "--model", "h137_tiny", "--seed", "7"))

    # Assert: the plugin's model, built with the seed, is the task's spec and initial model
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = json.loads(captured.out)
    assert out["model"] == "h137_tiny" and out["params"] == 64 * 5 + 5 + 5 * 3 + 3
    made = models.build_model("h137_tiny", seed=7)
    want = np.concatenate([p.detach().numpy().ravel() for p in made.parameters()])
    with AdminClient(url, ADMIN) as admin:
        exported = admin.model(out["task_id"])
    assert [(t.name, t.shape) for t in exported.config.spec] == [
        (name, list(p.shape)) for name, p in made.named_parameters()
    ]
    assert exported.config.model_name == "h137_tiny" and exported.config.name == "h137_tiny"
    np.testing.assert_array_equal(exported.params, want.astype(np.float32))


def test_plugin_is_repeatable_and_imported_in_order(
    plugin_dir: Path, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (plugin_dir / "h137_second.py").write_text(
        "from mobile_sim.models import MODELS\n\nMODELS['h137_again'] = MODELS['h137_tiny']\n"
    )
    try:
        code = main(_create(url, "--plugin", "h137_plugin", "--plugin", "h137_second.py",
                            "--model", "h137_again"))  # fmt: skip
    finally:
        sys.modules.pop("h137_second", None)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["params"] == 343


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("h137_missing", "--plugin h137_missing: ModuleNotFoundError: No module named"),
        ("missing_h137.py", "--plugin missing_h137.py: no such file: "),
        ("h137_raises.py", "--plugin h137_raises.py: RuntimeError: no GPU here"),
    ],
)
def test_a_plugin_that_does_not_import_is_one_line_and_exit_2(
    plugin_dir: Path, spec: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (plugin_dir / "h137_raises.py").write_text("raise RuntimeError('no GPU here')\n")
    # Nothing listens at this URL: a request would fail differently (exit 1)
    try:
        code = main(_create("http://127.0.0.1:9", "--plugin", spec, "--model", "h137_tiny"))
    finally:
        sys.modules.pop("h137_raises", None)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"plume coordinator create-task: error: {says}"), err
    assert err.count("\n") == 1, err


def test_without_the_plugin_its_model_is_still_unknown(
    plugin_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(_create("http://127.0.0.1:9", "--model", "h137_tiny"))
    err = capsys.readouterr().err
    assert code == 2  # a flag's value refused before any request (helper-231)
    assert "unknown model 'h137_tiny' (--model)" in err, err


def test_help_names_plugin() -> None:
    from coordinator.cli import build_parser, iter_parsers

    parser = next(p for p in iter_parsers(build_parser()) if p.prog.endswith("create-task"))
    text = " ".join(parser.format_help().split())
    assert "--plugin MODULE" in text
    assert "or one a --plugin registers" in text
