"""`--server-lr` with a server optimizer multiplies the optimizer's own step (robustness.md:
keep it 1). `plume sim` accepted the pair without a word; it now prints a note and runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.cli import main as plume

TINY = ["sim", "--dataset", "digits", "--clients", "6", "--per-round", "3", "--rounds", "1",
        "--local-epochs", "1", "--no-progress"]  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "noted"),
    [
        (["--aggregator", "yogi:lr=0.01", "--server-lr", "2"], True),
        (["--aggregator", "AvgM:lr=1+median", "--server-lr", "0.5"], True),
        (["--aggregator", "yogi:lr=0.01"], False),
        (["--aggregator", "fedavg", "--server-lr", "2"], False),
    ],
)
def test_server_lr_with_a_server_optimizer_is_noted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], noted: bool
) -> None:
    # Execute
    code = plume([*TINY, *flags, "--out", str(tmp_path)])
    # Assert: the run goes on either way; the note only for the pair
    err = capsys.readouterr().err
    assert code == 0, err
    assert ("multiplies the step of the server optimizer" in err) is noted
