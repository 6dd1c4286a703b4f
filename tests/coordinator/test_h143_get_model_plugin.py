"""`plume coordinator get-model --plugin MODULE`: create-task deployed a model a plugin
registers (`--plugin`), but get-model had no way to import that plugin, so `--format pt` of
such a task was always refused ('not a zoo model'). With `--plugin` it builds the plugin's
model and writes its state_dict; a plugin that does not import, or a factory that fails, is
one error line as in create-task. create-task also warns when a plugin replaced the factory
of the zoo model it deploys."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from coordinator.cli import main
from coordinator.service import AdminClient, ServerThread, ServiceConfig
from mobile_sim import models

from .test_service_support import ADMIN

_PLUGIN = """\
from torch import nn

from mobile_sim.models import MODELS


def tiny():
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))


MODELS["h143_tiny"] = tiny
"""

_MODULES = ("h143_plugin", "h143_raises", "h143_str", "h143_mlp")


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder holding plugins; the registry, sys.path and the modules are restored after."""
    (tmp_path / "h143_plugin.py").write_text(_PLUGIN)
    (tmp_path / "h143_raises.py").write_text(
        "from mobile_sim.models import MODELS\n\n\ndef broken():\n"
        "    raise RuntimeError('needs a GPU')\n\n\nMODELS['h143_tiny'] = broken\n"
    )
    (tmp_path / "h143_str.py").write_text(
        "from mobile_sim.models import MODELS\n\nMODELS['h143_tiny'] = lambda: 'a model'\n"
    )
    (tmp_path / "h143_mlp.py").write_text(
        "from torch import nn\n\nfrom mobile_sim.models import MODELS\n\n"
        "MODELS['mlp'] = lambda: nn.Linear(3, 2)\n"
    )
    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for name in _MODULES:
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = tmp_path_factory.mktemp("h143") / "p.db"
    with ServerThread(ServiceConfig(db_path=str(db), admin_token=ADMIN)) as base:
        yield base


def _run(*argv: str) -> int:
    try:
        return main(["coordinator", *argv])
    except SystemExit as exc:  # get-model's _fail
        return int(exc.code or 0)


def _create(url: str, *flags: str) -> list[str]:
    return ["create-task", "--url", url, "--admin-token", ADMIN, "--rounds", "2",
            "--clients-per-round", "2", *flags]  # fmt: skip


def _get(url: str, task_id: int, out: Path, *flags: str) -> list[str]:
    return ["get-model", "--url", url, "--admin-token", ADMIN, "--task", str(task_id),
            "--out", str(out), *flags]  # fmt: skip


def _forget_plugin() -> None:
    """As a new process would be: the plugin's model unregistered and its module unimported."""
    models.MODELS.pop("h143_tiny", None)
    sys.modules.pop("h143_plugin", None)


def _plugin_task(url: str, capsys: pytest.CaptureFixture[str]) -> int:
    code = _run(*_create(url, "--plugin", "h143_plugin", "--model", "h143_tiny", "--seed", "3"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "warning" not in captured.err
    task_id: int = json.loads(captured.out)["task_id"]
    _forget_plugin()
    return task_id


@pytest.mark.parametrize("spec", ["h143_plugin", "h143_plugin.py"])
def test_get_model_plugin_writes_the_plugins_state_dict(
    plugin_dir: Path, url: str, spec: str, capsys: pytest.CaptureFixture[str]
) -> None:
    task_id = _plugin_task(url, capsys)
    out = plugin_dir / "m.pt"

    code = _run(*_get(url, task_id, out, "--plugin", spec))

    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["format"] == "pt"
    state = torch.load(out, weights_only=True)
    made = models.build_model("h143_tiny", seed=0)  # registered again by get-model's --plugin
    assert [(k, tuple(v.shape)) for k, v in state.items()] == [
        (k, tuple(v.shape)) for k, v in made.state_dict().items()
    ]
    with AdminClient(url, ADMIN) as admin:
        exported = admin.model(task_id)
    flat = np.concatenate([v.numpy().ravel() for v in state.values()])
    np.testing.assert_array_equal(flat, exported.params)
    # The exported weights are create-task's for --seed 3, not the seed-0 build's
    want = models.build_model("h143_tiny", seed=3)
    np.testing.assert_array_equal(
        flat, np.concatenate([p.detach().numpy().ravel() for p in want.parameters()])
    )
    made.load_state_dict(state, strict=True)


def test_without_the_plugin_pt_is_still_refused(
    plugin_dir: Path, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    task_id = _plugin_task(url, capsys)
    out = plugin_dir / "m.pt"

    code = _run(*_get(url, task_id, out))

    err = capsys.readouterr().err
    assert code == 1
    assert "'h143_tiny' is not a zoo model" in err and "--plugin MODULE" in err, err
    assert "--format npz" in err and err.count("\n") == 1, err
    assert list(plugin_dir.glob("*m.pt*")) == []


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("h143_missing", "--plugin h143_missing: ModuleNotFoundError: No module named"),
        ("missing_h143.py", "--plugin missing_h143.py: no such file: "),
    ],
)
def test_a_plugin_that_does_not_import_is_one_line_and_exit_2(
    plugin_dir: Path, spec: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing listens at this URL: a request would fail differently (exit 1)
    code = _run(*_get("http://127.0.0.1:9", 1, plugin_dir / "m.pt", "--plugin", spec))

    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"plume coordinator get-model: error: {says}"), err
    assert err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("h143_raises", "model_name 'h143_tiny': building it raised RuntimeError: needs a GPU"),
        ("h143_str", "model_name 'h143_tiny': its factory returned str, not a torch.nn.Module"),
    ],
)
def test_a_plugin_factory_that_fails_is_one_line(
    plugin_dir: Path,
    url: str,
    spec: str,
    says: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PLUME_DEBUG", raising=False)
    task_id = _plugin_task(url, capsys)
    out = plugin_dir / "m.pt"

    code = _run(*_get(url, task_id, out, "--plugin", spec))

    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("plume coordinator get-model: error: "), err
    assert says in err and err.count("\n") == 1, err
    assert list(plugin_dir.glob("*m.pt*")) == []


def test_create_task_warns_when_a_plugin_replaced_the_zoo_model_it_deploys(
    plugin_dir: Path, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _run(*_create(url, "--plugin", "h143_plugin", "--plugin", "h143_mlp.py"))

    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["params"] == 3 * 2 + 2  # the plugin's 'mlp'
    warning = "plume coordinator create-task: warning: --plugin h143_mlp.py replaced the zoo's model 'mlp'\n"
    assert captured.err == warning


def test_no_warning_when_the_replaced_zoo_model_is_not_deployed(
    plugin_dir: Path, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _run(*_create(url, "--plugin", "h143_mlp", "--plugin", "h143_plugin",
                         "--model", "h143_tiny"))  # fmt: skip

    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err == ""


def test_get_model_help_names_plugin() -> None:
    from coordinator.cli import build_parser, iter_parsers

    parser = next(p for p in iter_parsers(build_parser()) if p.prog.endswith("get-model"))
    text = " ".join(parser.format_help().split())
    assert "--plugin MODULE" in text and "a plugin registers" in text


def test_a_rebuild_without_initial_makes_the_plugins_initial_model(
    plugin_dir: Path, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The rebuild of an older version of a task stored before schema 4 starts from the
    model's own initial weights for the task's seed when no --initial is given (what
    create-task uploaded); a plugin's model is built once get-model imported the plugin."""
    import argparse

    from coordinator import _cli

    task_id = _plugin_task(url, capsys)
    with AdminClient(url, ADMIN) as admin:
        config = admin.status(task_id).config
        exported = admin.model(task_id)
    args = argparse.Namespace(initial=None, version=1)
    # Without the plugin: said, with what to pass
    with pytest.raises(ValueError, match=r"'h143_tiny' is not a zoo model .*--plugin MODULE"):
        _cli._initial_model(args, config)
    # A factory that raises: the one-line sentence, not the factory's traceback
    assert _run(*_get("http://127.0.0.1:9", 1, plugin_dir / "x.pt", "--plugin", "h143_raises"))
    capsys.readouterr()
    with pytest.raises(ValueError, match="building it raised RuntimeError: needs a GPU"):
        _cli._initial_model(args, config)
    # With the plugin: version 0 as create-task made it (seed 3)
    sys.modules.pop("h143_plugin", None)
    assert _run(*_get("http://127.0.0.1:9", 1, plugin_dir / "x.pt", "--plugin", "h143_plugin"))
    capsys.readouterr()
    initial, source = _cli._initial_model(args, config)
    np.testing.assert_array_equal(initial, exported.params)
    assert "'h143_tiny' with seed 3" in source
