"""`plume sim` states each value rule once (SimConfig) and still names the flag in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.cli import main as plume

# mnist from a data folder that does not exist: a mistake refused before any data is loaded
# exits 2; one that got as far as loading the data fails with exit 1 (a DataError).
ARGV = ["sim", "--dataset", "mnist", "--rounds", "1", "--no-progress"]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--clients", "0"], "--clients must be at least 1, got 0"),
        (["--per-round", "0"], "--per-round must be at least 1, got 0"),
        (["--local-epochs", "0"], "--local-epochs must be at least 1, got 0"),
        (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["--shards-per-client", "0", "--partition", "shards"], "--shards-per-client must be"),
        (["--min-reports", "0"], "--min-reports must be at least 1, got 0"),
        (["--lr", "nan"], "--lr must be finite and > 0, got nan"),
        (["--momentum", "inf"], "--momentum must be finite and >= 0, got inf"),
        (["--clients", "4", "--per-round", "5"], "--per-round 5 exceeds --clients 4: a round"),
        # SimConfig builds the engine's policy: refused now, not once the data had loaded
        (["--over-selection", "11"], "--over-selection must be in [1, 10]"),
        (["--server-lr", "0"], "--server-lr must be positive"),
        # helper-151: values that break the run (momentum) or void the codec flags (warmup)
        (["--momentum", "1.5"], "--momentum must be below 1 (0.9 is usual), got 1.5"),
        (["--momentum", "1"], "--momentum must be below 1 (0.9 is usual), got 1.0"),
        (
            ["--rounds", "2", "--warmup-rounds", "2"],
            "--warmup-rounds 2 makes every one of the 2 rounds dense (fp32), so the codec "
            "flags change nothing: give fewer than --rounds, or --dense",
        ),
        (
            ["--rounds", "2", "--warmup-rounds", "5"],
            "--warmup-rounds 5 makes every one of the 2 rounds dense",
        ),
    ],
)
def test_each_bad_value_is_one_line_naming_its_flag_before_the_data_loads(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    expected: str,
) -> None:
    # Prepare
    monkeypatch.setenv("PLUME_DATA", str(tmp_path / "nonexistent"))
    # Execute
    code = plume([*ARGV, *flags, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    # Assert: a usage error (2), not the missing data (1), in one line
    lines = [line for line in err.splitlines() if "plume sim: error:" in line]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err
    assert expected in lines[0]
