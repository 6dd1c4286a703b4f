"""`--plugin NAME` that finds a folder without __init__.py: Python imports it as a namespace
package, which runs no code and registers nothing, and the run went on as if the plugin had
loaded. It is refused now, naming the folder; a real package and a module inside a namespace
package still import."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.cli import main as plume
from mobile_sim.backends._base import PluginError, import_plugins


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty current directory; afterwards sys.path and sys.modules as before (for the
    test's own modules, whose names hold s44)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for key in set(sys.modules) - before:
        if "s44" in key:
            del sys.modules[key]


def test_a_folder_without_init_is_refused_naming_it(folder: Path) -> None:
    # Prepare
    (folder / "data_s44").mkdir()
    (folder / "data_s44" / "notes.txt").write_text("not code")
    # Execute
    with pytest.raises(PluginError) as caught:
        import_plugins(["data_s44"])
    # Assert: the reason names the folder; sys.path is left as it was
    assert caught.value.reason == (
        f"names a folder without __init__.py ({folder / 'data_s44'}), whose import runs no "
        "code; pass the module or .py file that registers the models"
    )
    assert str(folder) not in sys.path


def test_plume_sim_stops_with_one_line(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    (folder / "empty_s44").mkdir()
    # Execute
    try:
        code = plume(["sim", "--plugin", "empty_s44", "--rounds", "1", "--out", "run"])
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err.strip().splitlines()
    # Assert: a usage error before anything runs
    assert code == 2
    assert err == [
        f"plume sim: error: --plugin empty_s44: names a folder without __init__.py "
        f"({folder / 'empty_s44'}), whose import runs no code; pass the module or .py file "
        "that registers the models"
    ]
    assert not (folder / "run").exists()


def test_a_package_and_a_module_in_a_namespace_folder_still_import(folder: Path) -> None:
    # Prepare: a regular package, and a module inside a folder without __init__.py
    (folder / "pkg_s44").mkdir()
    (folder / "pkg_s44" / "__init__.py").write_text("LOADED = 1\n")
    (folder / "ns_s44").mkdir()
    (folder / "ns_s44" / "mod.py").write_text("LOADED = 2\n")
    # Execute
    import_plugins(["pkg_s44", "ns_s44.mod"])
    # Assert
    assert sys.modules["pkg_s44"].LOADED == 1
    assert sys.modules["ns_s44.mod"].LOADED == 2
