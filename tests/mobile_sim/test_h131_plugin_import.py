"""`backends._base.import_plugins` (`plume sim --plugin`), the fixes after helper-130's review:
a plugin that calls sys.exit() is a usage error; an interrupted .py plugin is not left half-run
in sys.modules; a file also named as a module runs once; a .py plugin imports the modules
beside it, as a script does."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from coordinator.cli import main as plume
from mobile_sim.backends._base import PluginError, import_plugins
from mobile_sim.models import MODELS


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty current directory; afterwards sys.path is as before and sys.modules holds
    none of the test's plugins (only those: a numpy extension module cannot load twice)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for key in set(sys.modules) - before:
        if "h131" in key:  # the plugins' (their file names hold h131), not numpy's and such
            del sys.modules[key]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("import sys\nsys.exit(0)\n", "SystemExit: 0"),
        ("import sys\nsys.exit('bye')\n", "SystemExit: bye"),
        ("raise SystemExit\n", "SystemExit"),
    ],
)
@pytest.mark.parametrize("spec", ["quits_h131", "quits_h131.py"])
def test_a_plugin_calling_sys_exit_is_a_usage_error(
    folder: Path, capsys: pytest.CaptureFixture[str], body: str, reason: str, spec: str
) -> None:
    # Before, sys.exit(0) in a plugin ended `plume sim` with exit 0 and no run.
    (folder / "quits_h131.py").write_text(body)
    out = folder / "run"

    # Execute
    try:
        code = plume(["sim", "--plugin", spec, "--rounds", "1", "--no-progress", "--out", str(out)])
    finally:
        sys.modules.pop("quits_h131", None)

    # Assert: exit 2, one line naming the plugin and the exit, nothing run
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [f"plume sim: error: --plugin {spec}: {reason}"]
    assert not out.exists()


def test_an_interrupted_file_plugin_is_imported_again_next_time(folder: Path) -> None:
    # Before, a KeyboardInterrupt while a .py plugin imported left its half-run module in
    # sys.modules, and the next import_plugins skipped it: nothing registered, no error.
    (folder / "flaky_h131.py").write_text(
        "from pathlib import Path\n"
        "from mobile_sim.models import MODELS\n"
        "marker = Path(__file__).with_name('interrupted')\n"
        "if not marker.exists():\n"
        "    marker.touch()\n"
        "    raise KeyboardInterrupt\n"
        "MODELS['h131_flaky_model'] = object\n"
    )
    before = set(sys.modules)

    # Execute: the first import is interrupted (and the interrupt goes on), the second runs
    with pytest.raises(KeyboardInterrupt):
        import_plugins(["flaky_h131.py"])
    assert set(sys.modules) == before
    import_plugins(["flaky_h131.py"])

    # Assert
    assert MODELS.pop("h131_flaky_model") is object


_COUNTED = "from pathlib import Path\nwith open(Path(__file__).resolve().with_name('ran.txt'), 'a') as f:\n    f.write('ran\\n')\n"


@pytest.mark.parametrize(
    "specs",
    [
        ["counted_h131", "./counted_h131.py"],
        ["counted_h131", "counted_h131.py"],
        ["./counted_h131.py", "counted_h131"],
        ["counted_h131.py", "./counted_h131.py", "counted_h131"],
    ],
)
def test_a_file_also_named_as_a_module_runs_once(folder: Path, specs: list[str]) -> None:
    # Before, `--plugin counted --plugin ./counted.py` ran the file's top-level code twice
    # (once as counted, once under the file's own module name): a model registered twice,
    # a print printed twice.
    (folder / "counted_h131.py").write_text(_COUNTED)

    # Execute
    import_plugins(specs)

    # Assert
    assert (folder / "ran.txt").read_text() == "ran\n"


def test_the_same_file_by_a_link_runs_once(folder: Path) -> None:
    (folder / "counted_h131.py").write_text(_COUNTED)
    (folder / "link").mkdir()
    (folder / "link" / "counted_h131.py").symlink_to(folder / "counted_h131.py")

    import_plugins(["counted_h131.py", "link/counted_h131.py"])

    assert (folder / "ran.txt").read_text() == "ran\n"


def test_another_file_of_the_same_name_still_runs(folder: Path) -> None:
    (folder / "counted_h131.py").write_text(_COUNTED)
    (folder / "other").mkdir()
    (folder / "other" / "counted_h131.py").write_text(_COUNTED)

    import_plugins(["counted_h131", "other/counted_h131.py"])

    assert (folder / "ran.txt").read_text() == "ran\n"
    assert (folder / "other" / "ran.txt").read_text() == "ran\n"


def _plugin_with_helper(folder: Path, model: str) -> None:
    # plugins/main_h131.py imports helper_h131.py, beside it, as a script would
    (folder / "plugins").mkdir()
    (folder / "plugins" / "helper_h131.py").write_text(
        "from torch import nn\n"
        "from mobile_sim.models import MODELS\n"
        f"MODELS[{model!r}] = lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n"
    )
    (folder / "plugins" / "main_h131.py").write_text("import helper_h131  # noqa: F401\n")


def test_a_file_plugin_imports_the_modules_beside_it(folder: Path) -> None:
    # Before: PluginError "ModuleNotFoundError: No module named 'helper_h131'"
    _plugin_with_helper(folder, "h131_beside")
    try:
        # Execute
        import_plugins(["plugins/main_h131.py"])

        # Assert
        assert "h131_beside" in MODELS
        assert sys.path[-1] == str(folder / "plugins")
    finally:
        MODELS.pop("h131_beside", None)


def test_a_file_plugin_that_fails_leaves_sys_path_as_it_was(folder: Path) -> None:
    (folder / "plugins").mkdir()
    (folder / "plugins" / "bad_h131.py").write_text("raise ValueError('no')\n")
    before = list(sys.path)

    with pytest.raises(PluginError, match="ValueError: no"):
        import_plugins(["plugins/bad_h131.py"])

    assert sys.path == before


@pytest.mark.timeout(120)
def test_a_pool_worker_imports_a_file_plugins_neighbours(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A "spawn" worker is a new interpreter: it imports the file plugin, which imports the
    # module beside it, with the plugin's folder not on the driver's sys.path.
    from mobile_sim.backends import TrainContext, TrainJob
    from mobile_sim.backends.process_pool import ProcessPoolBackend
    from mobile_sim.data import load_digits_data

    _plugin_with_helper(folder, "h131_pool")
    try:
        import_plugins(["plugins/main_h131.py"])
        monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(folder / "plugins")])
        d = load_digits_data(seed=0)
        ctx = TrainContext(
            model="h131_pool",
            x_train=d.x_train[:20],
            y_train=d.y_train[:20],
            epochs=1,
            batch_size=10,
            lr=0.1,
            plugins=("plugins/main_h131.py",),
            plugin_root=str(folder),
        )
        jobs = [TrainJob("d0", 0, 0, 1, np.arange(10))]
        pool = ProcessPoolBackend(workers=1, start_method="spawn")

        # Execute
        try:
            pool.start(ctx)
            (got,) = pool.train(np.zeros(650, np.float32), jobs)
        finally:
            pool.close()

        # Assert: it trained the plugin's model
        assert got.delta.shape == (650,)
        assert np.abs(got.delta).sum() > 0
    finally:
        MODELS.pop("h131_pool", None)
