"""s44: `plume sim --secure` flags that changed nothing, or were taken across groups though they
cannot work there, are usage errors (one line, exit 2, before any data is loaded).

- `--group-aggregator median` with one group (`--per-round 6 --group-size 10`) or two (`--group-size
  3`: the median of two is their mean) ran as fedavg; a robust rule needs 3 group sums or more
  (krum its own n > 2f + 2); fedavg takes any number of groups.
- `--group-aggregator collusion+...`: the collusion screen keeps per-device histories, and across
  groups it sees reshuffled group sums (SecureConfig refuses it).
- `--secure-fraction` with `--secure-upload-budget`: the budget chose |S_r| and the fraction
  was ignored.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.cli import build_parser, main

SECURE = [
    "sim", "--dataset", "digits", "--model", "digits_mlp", "--clients", "40", "--rounds", "1",
    "--local-epochs", "1", "--no-progress", "--secure",
]  # fmt: skip


def _error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("plume sim: error: "), err
    return lines[0]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            ["--per-round", "6", "--group-size", "10", "--group-aggregator", "median"],
            "--group-aggregator 'median': median needs 3 group sums or more a round to outvote "
            "a bad one, and a full round has 1 group sum (--per-round 6 in groups of "
            "--group-size 10)",
        ),
        (
            ["--per-round", "6", "--group-size", "3", "--group-aggregator", "median"],
            "a full round has 2 group sums (--per-round 6 in groups of --group-size 3)",
        ),
        (
            ["--per-round", "8", "--group-size", "3", "--group-aggregator", "geomed"],
            "a full round has 2 group sums (--per-round 8 in groups of --group-size 3)",
        ),
        (
            ["--per-round", "9", "--group-size", "3", "--group-aggregator", "krum:f=1"],
            "--group-aggregator 'krum:f=1': krum: Krum needs n > 2f + 2",
        ),
        (
            ["--per-round", "9", "--group-size", "3", "--group-aggregator", "collusion+median"],
            "--group-aggregator 'collusion+median' has a collusion stage, which keeps "
            "per-device histories and is for plain rounds only",
        ),
        (
            ["--secure-fraction", "0.01", "--secure-upload-budget", "50000"],
            "--secure-fraction and --secure-upload-budget both set the shared coordinates",
        ),
    ],
    ids=["one-group", "two-groups", "remainder", "krum", "collusion", "fraction+budget"],
)
def test_a_flag_that_would_change_nothing_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], expected: str
) -> None:
    # Execute
    code = main([*SECURE, "--out", str(tmp_path / "run"), *flags])
    # Assert: exit 2, one line naming the flags, nothing written
    assert code == 2
    assert expected in _error_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "flags",
    [
        ["--per-round", "6", "--group-size", "3", "--group-aggregator", "fedavg"],
        ["--per-round", "5", "--group-size", "10"],  # fedavg (the default) over one group
        ["--per-round", "9", "--group-size", "3", "--group-aggregator", "median"],
    ],
    ids=["fedavg-two-groups", "fedavg-one-group", "median-three-groups"],
)
def test_fedavg_or_enough_groups_passes_the_checks(flags: list[str]) -> None:
    from mobile_sim._cli import _usage_error

    args = build_parser().parse_args([*SECURE, "--out", "unused", *flags])
    assert _usage_error(args) is None
