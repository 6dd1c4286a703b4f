"""Central DP in the simulator: the accounted sampling against the pool rounds really select from.

A `dp:` stage with `population=N,sample=k` accounts a uniform cohort of k out of N devices; a
round that selects from fewer devices samples each one more often, and its epsilon is
understated. `plume sim` refuses what is certain (Poisson accounting, N above the fleet) and
flags rounds that fell short (the realistic fleet's pool depends on availability).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from coordinator.cli import main as plume
from mobile_sim.report import dp_pool_warning, summary, write_run
from mobile_sim.runner import SimConfig, run_simulation

TINY = SimConfig(
    dataset="digits",
    model="digits_mlp",
    clients=30,
    per_round=3,
    rounds=2,
    topk=0.1,
    local_epochs=1,
    batch_size=10,
    lr=0.2,
    partition="iid",
    seed=4,
)
ARGV = [
    "sim", "--dataset", "digits", "--model", "digits_mlp", "--clients", "6", "--per-round",
    "3", "--rounds", "2", "--local-epochs", "1", "--no-progress",
]  # fmt: skip


def _dp(sampling: str) -> str:
    return f"dp:clip=1,z=1,{sampling},denom=3,seed=0+fedavg"


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "plume sim: error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- refused up front: the accounting cannot hold --------------------------------------------


def test_poisson_accounting_is_refused_the_sim_selects_fixed_size_cohorts() -> None:
    # Execute / Assert: it used to run and report an epsilon that bounded nothing
    with pytest.raises(ValueError, match=r"dp accounts Poisson sampling \(q=\)") as info:
        replace(TINY, aggregator=_dp("q=0.1"))
    assert "population=N,sample=3" in str(info.value)
    assert "population=3,sample=3 to account without amplification" in str(info.value)


def test_a_population_larger_than_the_fleet_is_refused_and_the_fleet_size_is_accepted() -> None:
    # Execute / Assert: 31 of 30 devices can never be available
    with pytest.raises(ValueError, match="population=31, but the fleet has only 30 devices"):
        replace(TINY, aggregator=_dp("population=31,sample=3"))
    cfg = replace(TINY, aggregator=_dp("population=30,sample=3"))
    assert cfg.dp_sampling() is not None


def test_a_spec_that_does_not_parse_names_the_aggregator() -> None:
    with pytest.raises(ValueError, match="aggregator 'dp:z=1,q=2': "):
        replace(TINY, aggregator="dp:z=1,q=2")


@pytest.mark.parametrize(
    ("sampling", "expected"),
    [
        (
            "q=0.5",
            "--aggregator: dp accounts Poisson sampling (q=), but the simulator selects "
            "fixed-size cohorts, so that epsilon bounds nothing: use population=N,sample=3 with "
            "N at most the devices available each round (--per-round x --over-selection = 3",
        ),
        (
            "population=100,sample=3",
            "--aggregator: dp accounts cohorts sampled from population=100, but the fleet has "
            "only 6 devices (--clients), so epsilon would be understated every round",
        ),
    ],
)
def test_the_cli_refuses_them_in_one_line_before_any_round(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sampling: str, expected: str
) -> None:
    # Execute
    code = plume([*ARGV, "--aggregator", _dp(sampling), "--out", str(tmp_path / "run")])
    captured = capsys.readouterr()
    # Assert: a usage error, no table, nothing written
    assert code == 2
    assert expected in _error_line(captured.err)
    assert "round accuracy" not in captured.out
    assert not (tmp_path / "run").exists()


# --- recorded and flagged: the pool depends on availability ----------------------------------


def test_every_device_available_selects_from_the_whole_fleet_and_flags_nothing() -> None:
    # Execute: timing fleet (everyone available), population = the fleet
    res = run_simulation(replace(TINY, aggregator=_dp("population=30,sample=3")), progress=False)
    # Assert
    assert [r.available for r in res.records] == [30, 30]
    s = summary(res)
    assert (s["dp_population"], s["dp_pool_min"], s["dp_pool_short_rounds"]) == (30, 30, [])
    assert dp_pool_warning(res) is None


def test_realistic_rounds_opened_short_of_the_population_are_flagged(tmp_path: Path) -> None:
    # Prepare: the realistic fleet opens a round by the selection timeout (0 s) as soon as
    # min_reports devices have checked in, far fewer than the 30 the accounting assumes
    cfg = replace(
        TINY,
        aggregator=_dp("population=30,sample=3"),
        fleet="realistic",
        selection_timeout_s=0.0,
    )
    # Execute
    res = run_simulation(cfg, progress=False)
    paths = write_run(res, tmp_path)
    # Assert: every committed round records its pool, below 30, and is flagged
    pools = [r.available for r in res.records]
    assert all(r.committed for r in res.records)
    assert all(p is not None and p < 30 for p in pools)
    assert [r.measurements["selection"]["pool"] for r in res.records] == pools
    doc = json.loads(paths["json"].read_text())
    assert doc["summary"]["dp_pool_short_rounds"] == [1, 2]
    assert doc["summary"]["dp_pool_min"] == min(pools)
    assert [row["available"] for row in doc["rounds"]] == pools
    assert "available" in paths["csv"].read_text().splitlines()[0].split(",")
    warning = dp_pool_warning(res)
    assert warning is not None
    assert warning.startswith("warning: 2 of 2 rounds selected their cohort from fewer than")
    assert "lower population= to the devices really available" in warning
    assert "(population=3,sample=3)" in warning


def test_the_realistic_pool_fills_up_to_the_dp_population_not_just_the_cohort() -> None:
    # Prepare: no selection timeout, so a round opens only with a full pool; the dp stage
    # accounts 3 of 8, so the pool must hold 8 (it used to stop at the cohort of 3)
    cfg = replace(
        TINY,
        aggregator=_dp("population=8,sample=3"),
        fleet="realistic",
        selection_timeout_s=None,
    )
    # Execute
    res = run_simulation(cfg, progress=False)
    # Assert
    for rec in res.records:
        assert rec.committed and rec.available == 8
        assert rec.measurements["selection"] == rec.measurements["selection"] | {
            "pool": 8,
            "opened_by": "cohort",
        }
    assert summary(res)["dp_pool_short_rounds"] == []


def test_a_pool_that_never_reaches_the_population_abandons_the_selection_by_name() -> None:
    # Prepare: all 30 devices are never eligible at once, and no timeout opens a short pool
    cfg = replace(
        TINY,
        aggregator=_dp("population=30,sample=3"),
        fleet="realistic",
        selection_timeout_s=None,
        rounds=1,
    )
    # Execute
    (rec,) = run_simulation(cfg, progress=False).records
    # Assert: abandoned (no release, so not a short round), and the reason names the target
    assert not rec.committed
    assert "short of the dp population of 30, with no selection timeout" in (
        rec.measurements["abandoned"]
    )


def test_the_cli_prints_the_warning_under_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: 30 registered devices, realistic availability, timeout 0
    argv = [*ARGV, "--clients", "30", "--fleet", "realistic", "--selection-timeout", "0"]
    code = plume([*argv, "--aggregator", _dp("population=30,sample=3"), "--out", str(tmp_path)])
    out = capsys.readouterr().out
    # Assert
    assert code == 0
    line = next(x for x in out.splitlines() if "warning:" in x)
    assert line.startswith("compressed: warning: 2 of 2 rounds selected their cohort from")
    assert "account without amplification (population=3,sample=3)" in line
