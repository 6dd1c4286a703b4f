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
    assert (s["dp_population"], s["dp_pool_min"]) == (30, 30)
    assert s["dp_pool_short_rounds"] == s["dp_pool_abandoned_rounds"] == []
    assert dp_pool_warning(res) is None


def test_a_committed_round_that_selected_from_fewer_than_n_is_flagged(tmp_path: Path) -> None:
    # Prepare: a run's records as a runner that let a round open short would leave them
    res = run_simulation(replace(TINY, aggregator=_dp("population=30,sample=3")), progress=False)
    res.records[1] = replace(res.records[1], available=12)
    # Execute
    paths = write_run(res, tmp_path)
    warning = dp_pool_warning(res)
    # Assert
    doc = json.loads(paths["json"].read_text())
    assert doc["summary"]["dp_pool_short_rounds"] == [2]
    assert doc["summary"]["dp_pool_min"] == 12
    assert [row["available"] for row in doc["rounds"]] == [30, 12]
    assert "available" in paths["csv"].read_text().splitlines()[0].split(",")
    assert warning is not None
    assert warning.startswith(
        "warning: 1 of 2 rounds selected their cohort from fewer than the dp population=30 "
        "devices (as few as 12), so the epsilon reported for them is understated"
    )
    assert warning.endswith(
        "lower population= to the devices really available at once, or account without "
        "amplification (population=3,sample=3)"
    )


def test_without_amplification_a_short_pool_is_no_shortfall() -> None:
    # Prepare: population=k,sample=k accounts every selected device as certainly sampled, so
    # a realistic round opened by the timeout over a small pool is covered (a 1 s timeout:
    # the coordinator refuses 0, and so does SimConfig since helper-178)
    cfg = replace(
        TINY, aggregator=_dp("population=3,sample=3"), fleet="realistic", selection_timeout_s=1.0
    )
    # Execute
    res = run_simulation(cfg, progress=False)
    # Assert: the pools were small, and nothing is flagged
    assert all(r.committed and r.available is not None for r in res.records)
    assert cfg.dp_pool_needed() == 0 and res.dp_pool() is None
    assert "dp_population" not in summary(res) and dp_pool_warning(res) is None


def test_the_realistic_pool_fills_up_to_the_dp_population_not_just_the_cohort() -> None:
    # Prepare: the dp stage accounts 3 of 8; with the default selection timeout a round used
    # to open with the cohort of 3 (or fewer, at the timeout)
    cfg = replace(TINY, aggregator=_dp("population=8,sample=3"), fleet="realistic")
    # Execute
    res = run_simulation(cfg, progress=False)
    # Assert: as the coordinator does, a round opens only with 8 devices in the pool
    for rec in res.records:
        assert rec.committed and rec.available == 8 and rec.reports == 3
        assert rec.measurements["selection"]["pool"] == 8
        assert rec.measurements["selection"]["opened_by"] == "cohort"
    assert summary(res)["dp_pool_short_rounds"] == []


def test_a_pool_that_never_holds_the_population_abandons_the_round_even_after_the_timeout(
    tmp_path: Path,
) -> None:
    # Prepare: all 30 devices are never eligible at once; a short timeout used to open each
    # round with the first devices to check in, 3 of them accounted as 3 of 30 (1 s here: 0 s
    # before helper-178, which the coordinator and now SimConfig refuse)
    cfg = replace(
        TINY, aggregator=_dp("population=30,sample=3"), fleet="realistic", selection_timeout_s=1.0
    )
    # Execute
    res = run_simulation(cfg, progress=False)
    # Assert: both rounds abandoned (no release), by name, and counted in the summary
    assert not any(r.committed for r in res.records)
    for rec in res.records:
        assert rec.available is not None and rec.available < 30
        assert (
            "short of the dp population of 30, which a dp round needs in its pool"
            in (rec.measurements["abandoned"])
        )
    s = summary(res)
    assert s["dp_pool_abandoned_rounds"] == [1, 2] and s["dp_pool_short_rounds"] == []
    most = max(r.available or 0 for r in res.records)
    assert dp_pool_warning(res) == (
        "warning: 2 of 2 rounds were abandoned: their pool never held the dp population=30 "
        f"devices at once (at most {most}): lower population= to the devices really available "
        "at once, or account without amplification (population=3,sample=3)"
    )


def test_the_cli_prints_the_warning_under_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: 30 registered devices, realistic availability, timeout 1 s (0 before
    # helper-178; the coordinator refuses 0); no over-selection, written out since realistic
    # mode's default is now the coordinator's 1.3 (helper-265), a cohort of 4 > sample=3
    argv = [*ARGV, "--clients", "30", "--fleet", "realistic", "--selection-timeout", "1"]
    argv += ["--over-selection", "1"]
    code = plume([*argv, "--aggregator", _dp("population=30,sample=3"), "--out", str(tmp_path)])
    out = capsys.readouterr().out
    # Assert
    assert code == 0
    line = next(x for x in out.splitlines() if "warning:" in x)
    assert line.startswith("compressed: warning: 2 of 2 rounds were abandoned: their pool never")
    assert "account without amplification (population=3,sample=3)" in line
