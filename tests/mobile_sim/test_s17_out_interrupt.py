"""`plume sim --out` and a Ctrl-C while the run is still being set up (the --coordinator
error classes' imports, which can take half a second): no empty --out folder is left behind
(helper-144's review: the imports ran after the folders were made, outside the cleanup)."""

from __future__ import annotations

from pathlib import Path

import pytest

import mobile_sim._cli as sim_cli
from coordinator.cli import main as plume


def test_a_ctrl_c_in_the_setup_leaves_no_out_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    def interrupted() -> tuple[type[BaseException], ...]:
        raise KeyboardInterrupt

    monkeypatch.setattr(sim_cli, "_remote_errors", interrupted)
    argv = ["sim", "--out", "runs/a/b", "--transport", "http", "--rounds", "1"]
    argv += ["--coordinator", "http://127.0.0.1:9", "--no-progress"]

    try:
        plume(argv)
    except KeyboardInterrupt:
        pass  # the CLI may pass a Ctrl-C in its set-up on, or report it; either way:

    assert not (tmp_path / "runs").exists()
