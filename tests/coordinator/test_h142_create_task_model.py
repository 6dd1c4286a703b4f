"""`plume coordinator create-task --plugin`: a plugin's model factory that raises (anything but
ValueError) or returns something that is not a torch module ended in a traceback; an
`--aggregator` a plugin registered in `mobile_sim.runner.AGGREGATORS` was refused as unknown
with no word that a coordinator builds only its own (helper-140's review)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.cli import main
from mobile_sim import models, runner

_PLUGIN = """\
from torch import nn

from coordinator.aggregators import build_aggregator
from mobile_sim.models import MODELS
from mobile_sim.runner import AGGREGATORS


def boom():
    raise RuntimeError("needs CUDA\\nsecond line")


MODELS["h142_boom"] = boom
MODELS["h142_value"] = lambda: int("x")
MODELS["h142_str"] = lambda: "not a module"
MODELS["h142_linear"] = lambda: nn.Linear(3, 2)
AGGREGATORS["h142_agg"] = lambda: build_aggregator("mean")
"""

# Nothing listens here: every case ends before create-task contacts a coordinator.
_URL = "http://127.0.0.1:9"


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "h142_plugin.py").write_text(_PLUGIN)
    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))
    monkeypatch.setattr(runner, "AGGREGATORS", dict(runner.AGGREGATORS))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("PLUME_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop("h142_plugin", None)


def _create(*flags: str) -> list[str]:
    return ["coordinator", "create-task", "--url", _URL, "--admin-token", "t",
            "--plugin", "h142_plugin", *flags]  # fmt: skip


@pytest.mark.parametrize(
    ("model", "said"),
    [
        ("h142_boom", "--model h142_boom: building it raised RuntimeError: needs CUDA"),
        (
            "h142_value",
            "--model h142_value: building it raised ValueError: invalid literal for int() "
            "with base 10: 'x'",
        ),
        (
            "h142_str",
            "--model h142_str: its factory returned str, not a torch.nn.Module",
        ),
    ],
)
def test_a_model_that_does_not_build_is_one_line(
    plugin: Path, model: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(_create("--model", model))
    err = capsys.readouterr().err
    assert code == 1
    assert err == f"plume coordinator create-task: error: {said}\n"


def test_plume_debug_shows_the_factorys_own_error(
    plugin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLUME_DEBUG", "1")
    with pytest.raises(RuntimeError, match="needs CUDA"):
        main(_create("--model", "h142_boom"))


def test_a_plugins_aggregator_says_the_coordinator_builds_its_own(
    plugin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(_create("--model", "h142_linear", "--aggregator", "h142_agg"))
    err = capsys.readouterr().err
    assert code == 2  # a flag's value refused before any request (helper-231)
    assert err == (
        "plume coordinator create-task: error: --aggregator 'h142_agg' is registered in this "
        "process (a --plugin's), but a coordinator builds only its own aggregators: choose "
        "one of those (`plume coordinator create-task --help` lists them)\n"
    )
