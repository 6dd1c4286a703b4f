"""`backends._base.import_plugins` and sys.path, after helper-139's review: a .py plugin's folder
goes last on sys.path, so the files beside it (a compression.py, a statistics.py) hide no
standard or installed module; a module-name plugin that fails to import leaves sys.path as
it was."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from importlib.machinery import PathFinder
from pathlib import Path

import pytest

from mobile_sim.backends._base import PluginError, import_plugins
from mobile_sim.models import MODELS


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty current directory; afterwards sys.path is as before and sys.modules holds
    none of the test's plugins."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for key in set(sys.modules) - before:
        if "h141" in key:
            del sys.modules[key]


@pytest.mark.parametrize("name", ["compression", "statistics", "logging", "json"])
def test_a_file_beside_a_file_plugin_hides_no_module(folder: Path, name: str) -> None:
    # Before, the plugin's folder went first on sys.path: a later `import compression` (plume's
    # own) or `import statistics` found plugins/compression.py, plugins/statistics.py instead.
    plugins = folder / "plugins"
    plugins.mkdir()
    (plugins / f"{name}.py").write_text("SHADOW = True\n")
    (plugins / "helper_h141.py").write_text("VALUE = 7\n")
    (plugins / "main_h141.py").write_text(
        "import helper_h141\n"
        "from mobile_sim.models import MODELS\n"
        "MODELS['h141_beside'] = helper_h141.VALUE\n"
    )
    try:
        # Execute
        import_plugins(["plugins/main_h141.py"])

        # Assert: the module beside it is still imported; the standard/plume one is found first
        assert MODELS["h141_beside"] == 7
        assert sys.path[-1] == str(plugins)
        found = PathFinder.find_spec(name)
        assert found is not None and found.origin is not None
        assert Path(found.origin).parent != plugins
        assert not Path(found.origin).is_relative_to(plugins)
    finally:
        MODELS.pop("h141_beside", None)


def test_a_file_plugin_named_like_a_standard_module_runs_once(folder: Path) -> None:
    # Before: plugins/statistics.py ran as the plugin, and again when anything imported
    # statistics afterwards (its folder first on sys.path).
    plugins = folder / "plugins"
    plugins.mkdir()
    (plugins / "statistics.py").write_text(
        "from mobile_sim.models import MODELS\n"
        "MODELS['h141_runs'] = MODELS.get('h141_runs', 0) + 1\n"
    )
    try:
        import_plugins(["plugins/statistics.py"])
        found = PathFinder.find_spec("statistics")

        assert MODELS["h141_runs"] == 1
        assert found is not None and found.origin is not None
        assert Path(found.origin).parent != plugins
    finally:
        MODELS.pop("h141_runs", None)


@pytest.mark.parametrize(
    ("body", "reason"),
    [(None, "ModuleNotFoundError"), ("raise ValueError('no')\n", "ValueError: no")],
)
def test_a_module_plugin_that_fails_leaves_sys_path_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str | None, reason: str
) -> None:
    # Before, its root stayed at sys.path[0], where its files hid the modules imported later.
    monkeypatch.setattr(sys, "path", list(sys.path))
    root = tmp_path / "root"
    root.mkdir()
    if body is not None:
        (root / "bad_h141.py").write_text(body)
    before = list(sys.path)

    try:
        with pytest.raises(PluginError, match=reason):
            import_plugins(["bad_h141"], root=str(root))
    finally:
        sys.modules.pop("bad_h141", None)

    assert sys.path == before


def test_a_module_plugin_root_already_on_sys_path_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A root the user had on sys.path is not the plugin's to remove.
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    before = list(sys.path)

    with pytest.raises(PluginError):
        import_plugins(["missing_h141"], root=str(tmp_path))

    assert sys.path == before
