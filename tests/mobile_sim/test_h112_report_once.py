"""`plume sim report RUN_DIR` reads each rounds.json once. Before, it parsed every file up to
five times (the plots' runs, their title, the extra plots' runs again, the comparison table's
runs, the interrupted runs' notes); its output is unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coordinator.cli import main as plume
from mobile_sim import report_extra

PLOTS = ["accuracy_vs_upload_bytes.png", "bytes_per_round.png", "round_durations.png"]


def _write_run(folder: Path, label: str, rounds: int, interrupted: bool) -> None:
    folder.mkdir(parents=True)
    rows = [
        {
            "round": r,
            "accuracy": 0.5 + 0.1 * r,
            "bytes_up": 500 * r,
            "bytes_down": 5000,
            "dense_up": 4000,
            "wall_s": 0.1 * r,
        }
        for r in range(1, rounds + 1)
    ]
    summary: dict[str, Any] = {"label": label, "rounds": rounds, "interrupted": interrupted}
    if interrupted:
        summary["rounds_planned"] = 5
    config = {"dataset": "digits", "model": "digits_mlp"}
    doc = {"config": config, "summary": summary, "rounds": rows}
    (folder / "rounds.json").write_text(json.dumps(doc))


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many times each rounds.json is read (by its folder's name)."""
    reads: dict[str, int] = {}
    real = Path.read_text

    def read_text(self: Path, *args: Any, **kwargs: Any) -> str:
        if self.name == "rounds.json":
            reads[self.parent.name] = reads.get(self.parent.name, 0) + 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    return reads


def test_plume_sim_report_reads_each_rounds_json_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a --compare-dense folder whose dense run Ctrl-C stopped after 2 rounds
    _write_run(tmp_path / "compressed", "compressed", 3, interrupted=False)
    _write_run(tmp_path / "dense", "dense", 2, interrupted=True)
    reads = _count_reads(monkeypatch)

    # Execute
    code = plume(["sim", "report", str(tmp_path)])
    out = capsys.readouterr().out

    # Assert: one read each, and the report it always printed
    assert code == 0
    assert reads == {"compressed": 1, "dense": 1}
    lines = out.splitlines()
    assert lines[0] == "rebuilt " + ", ".join(str(tmp_path / name) for name in PLOTS)
    assert [
        line.split()[:2] for line in lines[2:] if line.startswith(("compressed ", "dense "))
    ] == [
        ["compressed", "3"],
        ["dense", "2"],
    ]
    assert lines[-1] == (
        "dense: interrupted after 2 of 5 rounds; its figures stop at round 2, the last that "
        "finished"
    )


def test_rebuild_run_dir_reads_each_rounds_json_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    _write_run(tmp_path / "run", "compressed", 2, interrupted=False)
    reads = _count_reads(monkeypatch)

    # Execute
    paths = report_extra.rebuild_run_dir(tmp_path / "run")

    # Assert
    assert [p.name for p in paths] == PLOTS
    assert reads == {"run": 1}
