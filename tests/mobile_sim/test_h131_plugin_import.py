"""`backends._base.import_plugins` (`plume sim --plugin`), the fixes after helper-130's review:
a plugin that calls sys.exit() is a usage error; an interrupted .py plugin is not left half-run
in sys.modules; a file also named as a module runs once; a .py plugin imports the modules
beside it, as a script does."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.cli import main as plume
from mobile_sim.backends._base import import_plugins
from mobile_sim.models import MODELS


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty current directory; afterwards sys.path and sys.modules are as before."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for key in set(sys.modules) - before:
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
