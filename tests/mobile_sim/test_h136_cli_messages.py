"""`plume sim`'s error lines from helper-134's walkthrough that name the fix: a registered
aggregator in a '+' spec, --coordinator without --transport http, a plugin module not found;
and PLUME_DEBUG=0 (or empty) asks for no traceback, as `plume`'s other commands have it."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.aggregators import Clip, CoordinateMedian, FedAvg
from coordinator.cli import main as plume
from mobile_sim.data import FederatedData
from mobile_sim.runner import AGGREGATORS, DATASET_LOADERS, build_aggregator

_NAME = "h136_unweighted"


@pytest.fixture
def registered() -> Iterator[str]:
    """An aggregator registered as a --plugin registers one; removed afterwards."""
    AGGREGATORS[_NAME] = FedAvg
    yield _NAME
    AGGREGATORS.pop(_NAME, None)


@pytest.mark.parametrize("spec", [f"{_NAME}+median", f"normbound:5+{_NAME}"])
def test_a_registered_aggregator_in_a_plus_spec_is_said_to_be_whole(
    registered: str, spec: str
) -> None:
    # Before: "unknown aggregator 'h136_unweighted' in '...'; known: [...]"
    with pytest.raises(ValueError) as caught:
        build_aggregator(spec)
    assert str(caught.value) == (
        f"{registered!r} is a registered aggregator: it is the whole spec "
        f"(--aggregator {registered}) and does not combine with '+' stages"
    )


def test_the_cli_says_so_with_its_flag(registered: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    code = plume(["sim", "--dataset", "digits", "--aggregator", f"{registered}+median"])

    # Assert
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == (
        f"plume sim: error: --aggregator '{registered}+median': {registered!r} is a registered "
        f"aggregator: it is the whole spec (--aggregator {registered}) and does not combine "
        "with '+' stages"
    )


def test_a_plus_spec_of_built_in_names_is_unchanged(registered: str) -> None:
    got = build_aggregator("normbound:5+median")
    assert type(got) is Clip
    assert type(got.inner) is CoordinateMedian
    assert got == Clip(norm=5.0, inner=CoordinateMedian())
    with pytest.raises(ValueError, match=r"^unknown aggregator 'nosuch' in 'nosuch\+median'"):
        build_aggregator("nosuch+median")


def test_coordinator_without_http_says_to_add_it(capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    code = plume(["sim", "--coordinator", "http://127.0.0.1:1", "--rounds", "1"])

    # Assert: still refused (exit 2), with the fix
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "plume sim: error: --coordinator URL is only used with --transport http (add it)"
    )


def test_a_plugin_module_not_found_says_where_it_was_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))

    # Execute
    code = plume(["sim", "--plugin", "nosuch_h136.models", "--rounds", "1"])

    # Assert
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "plume sim: error: --plugin nosuch_h136.models: ModuleNotFoundError: No module named "
        f"'nosuch_h136' (looked in {tmp_path} and the installed packages; run from the folder "
        "holding it, or pass its .py path)"
    )


def test_a_module_a_plugin_imports_gets_no_such_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the plugin is found; what it imports is not (pip install, not a folder)
    (tmp_path / "h136_needs.py").write_text("import nosuch_dep_h136\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))

    # Execute
    code = plume(["sim", "--plugin", "h136_needs", "--rounds", "1"])
    sys.modules.pop("h136_needs", None)

    # Assert
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "plume sim: error: --plugin h136_needs: ModuleNotFoundError: No module named "
        "'nosuch_dep_h136'"
    )


def _failing_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A run whose dataset loader raises a ValueError once the run starts, in words that
    `plume sim` puts in its flags ('lower the client count' -> 'lower --clients'): only its
    own handler does, not `plume`'s net under every command."""

    def load(root: str | None, seed: int) -> FederatedData:
        raise ValueError("too few examples: lower the client count")

    monkeypatch.setitem(DATASET_LOADERS, "h136_failing", load)
    argv = ["sim", "--dataset", "h136_failing", "--model", "mlp", "--clients", "5"]
    argv += ["--per-round", "2", "--rounds", "1", "--no-progress", "--fleet", "off"]
    return [*argv, "--out", str(tmp_path / "run")]


@pytest.mark.parametrize("value", ["", "0", " 0 "])
def test_plume_debug_0_or_empty_shows_no_traceback(
    value: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Before, any non-empty value ("0" too) re-raised the run's ValueError past plume sim's
    # own handler (plume's net then printed it untranslated).
    monkeypatch.setenv("PLUME_DEBUG", value)
    argv = _failing_run(tmp_path, monkeypatch)

    # Execute
    code = plume(argv)

    # Assert: plume sim's own one-line error, in its flags
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.strip() == (
        "plume sim: error: dataset 'h136_failing' (its loader "
        f"{__name__}._failing_run.<locals>.load): ValueError: too few examples: lower --clients"
    )


def test_plume_debug_1_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLUME_DEBUG", "1")
    argv = _failing_run(tmp_path, monkeypatch)
    with pytest.raises(ValueError, match="lower the client count"):
        plume(argv)
    assert os.environ["PLUME_DEBUG"] == "1"
