"""The in-process fleet: real training, real frames through the engine, honest byte counts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from coordinator.cli import main as plume
from mobile_sim.runner import SimConfig, run_simulation

SMALL = SimConfig(
    dataset="digits",
    model="digits_mlp",
    clients=20,
    per_round=5,
    rounds=4,
    topk=0.1,
    bits=4,
    local_epochs=3,
    batch_size=10,
    lr=0.2,
    partition="iid",
)


def test_small_run_learns_and_counts_bytes() -> None:
    res = run_simulation(SMALL, progress=False)
    assert len(res.records) == 4
    accs = [r.accuracy for r in res.records]
    assert accs[0] is not None and accs[-1] is not None
    assert accs[-1] > 0.6 and accs[-1] > accs[0]
    for r in res.records:
        assert r.reports == 5 and r.committed
        assert r.dense_up == 5 * 4 * res.num_params
        assert 0 < r.bytes_up < r.dense_up
        assert r.bytes_down == r.dense_down  # the dense broadcast, for now
    # The ledger holds exactly one upload row per report, with real frame sizes.
    up_rows = [row for row in res.ledger.rows() if row.direction == "up"]
    assert len(up_rows) == 20
    assert sum(row.payload_bytes for row in up_rows) == res.total_up


def test_same_seed_same_result() -> None:
    a = run_simulation(SMALL, progress=False)
    b = run_simulation(SMALL, progress=False)
    np.testing.assert_array_equal(a.final_params, b.final_params)
    assert [r.bytes_up for r in a.records] == [r.bytes_up for r in b.records]


def test_dense_baseline_ratio_is_about_one() -> None:
    res = run_simulation(replace(SMALL, dense=True, rounds=1), progress=False)
    assert res.upload_ratio is not None and 0.9 < res.upload_ratio < 1.5


def test_config_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="exceeds clients"):
        SimConfig(clients=5, per_round=6)
    with pytest.raises(ValueError, match="needs an attack"):
        SimConfig(malicious=0.2)
    with pytest.raises(ValueError, match="topk"):
        SimConfig(topk=0.0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"clients": 1.5}, "clients must be an integer, got 1.5"),
        ({"local_epochs": 2.0}, "local_epochs must be an integer"),
        ({"seed": True}, "seed must be an integer"),
        ({"lr": float("inf")}, "lr must be finite"),
        ({"momentum": float("nan")}, "momentum must be finite and >= 0"),
        ({"momentum": -0.1}, "momentum must be finite and >= 0"),
        ({"alpha": float("nan")}, "alpha must be positive and finite"),
        ({"alpha": float("inf")}, "alpha must be positive and finite"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"eval_every": 0}, "eval_every must be at least 1, got 0"),
        ({"shards_per_client": 0}, "shards_per_client must be at least 1, got 0"),
        ({"warmup_rounds": -1}, "warmup_rounds must be >= 0, got -1"),
        ({"min_reports": 11}, "min_reports 11 exceeds per_round 10"),
        ({"min_reports": 0}, "min_reports must be at least 1, got 0"),
    ],
)
def test_config_refuses_values_that_would_fail_later_under_another_name(
    fields: dict[str, object], message: str
) -> None:
    # Execute / Assert: refused when the config is built, before any data is loaded.
    with pytest.raises(ValueError, match=message):
        replace(SimConfig(), **fields)


def test_config_takes_numpy_integers() -> None:
    # A sweep script's np.int64 counts are integers too.
    cfg = SimConfig(clients=np.int64(20), per_round=np.int64(5), seed=np.int64(3))
    assert cfg.clients == 20 and cfg.seed == 3


def test_cli_writes_table_files_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code = plume(
        [
            "sim",
            "--dataset",
            "digits",
            "--clients",
            "10",
            "--per-round",
            "4",
            "--rounds",
            "2",
            "--local-epochs",
            "1",
            "--topk",
            "0.1",
            "--bits",
            "4",
            "--partition",
            "iid",
            "--compare-dense",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    for sub in ("compressed", "dense"):
        for name in ("rounds.json", "rounds.csv", "ledger.csv"):
            assert (out / sub / name).stat().st_size > 0
    assert (out / "accuracy_vs_upload_bytes.png").stat().st_size > 1000
    text = capsys.readouterr().out
    assert "compressed vs dense" in text
    assert plume(["sim", "report", str(out)]) == 0


def test_cli_help_and_bad_args(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        plume(["sim", "--help"])
    assert exc.value.code == 0
    assert "--compare-dense" in capsys.readouterr().out
    assert plume(["sim", "--dataset", "digits", "--topk", "2", "--no-progress"]) == 2
    assert "topk" in capsys.readouterr().err
    assert plume(["sim", "--dataset", "digits", "--threads", "0", "--no-progress"]) == 2
    assert "--threads" in capsys.readouterr().err


def test_cli_secure_mode_runs(tmp_path: Path) -> None:
    out = tmp_path / "secure"
    code = plume(
        [
            "sim",
            "--secure",
            "--secure-fraction",
            "0.5",
            "--dataset",
            "digits",
            "--clients",
            "12",
            "--per-round",
            "6",
            "--rounds",
            "2",
            "--local-epochs",
            "1",
            "--partition",
            "iid",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    doc = (out / "rounds.json").read_text()
    assert '"label": "secure"' in doc
    assert (
        plume(
            [
                "sim",
                "--secure",
                "--dp-noise",
                "laplace",
                "--no-progress",
                "--dataset",
                "digits",
                "--out",
                str(out),
            ]
        )
        == 2
    )


def test_simulated_clock_reports_seconds_and_keeps_first_arrivals() -> None:
    timed = run_simulation(replace(SMALL, rounds=2), progress=False)
    assert all(r.sim_s is not None and r.sim_s > 0 for r in timed.records)
    real = run_simulation(
        replace(
            SMALL,
            rounds=3,
            over_selection=1.6,
            fleet="realistic",
            deadline_s=3600.0,
            selection_timeout_s=None,  # open only with the full cohort
        ),
        progress=False,
    )
    for r in real.records:
        clock = r.measurements["clock"]
        assert r.reports == clock["kept"] <= SMALL.per_round
        assert clock["selected"] == 8  # ceil(5 * 1.6)
        assert clock["kept"] + clock["stragglers"] + clock["dropped"] == clock["selected"]
        assert r.dense_down == 8 * 4 * real.num_params  # every selected device downloads


def test_clock_off_and_timing_give_the_same_model() -> None:
    off = run_simulation(replace(SMALL, rounds=2, fleet="off"), progress=False)
    timed = run_simulation(replace(SMALL, rounds=2), progress=False)
    np.testing.assert_array_equal(off.final_params, timed.final_params)
    assert all(r.sim_s is None for r in off.records)


def test_ort_devices_can_be_a_tier() -> None:
    from mobile_sim.fleet import SimFleet
    from mobile_sim.runner import ort_devices_of_tier

    fleet = SimFleet(300, seed=0)
    low = ort_devices_of_tier(fleet, 300, "low")
    high = ort_devices_of_tier(fleet, 300, "high")
    assert low and high and not low & high
    batch = fleet.population.profiles(np.array(sorted(low)))
    assert {str(batch[i].tier) for i in range(len(batch))} == {"low"}
    with pytest.raises(ValueError, match="unknown tier"):
        ort_devices_of_tier(fleet, 300, "flagship")


def test_a_realistic_fleet_with_nobody_eligible_is_an_error_not_the_whole_fleet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: a population where no device ever charges on unmetered wifi.
    from mobile_sim.fleet import Selection, SimFleet

    def nobody(self: SimFleet, n: int, rng: np.random.Generator, **kw: object) -> Selection:
        return Selection(np.zeros(0, np.int64), "abandoned", 172_800.0, float("nan"), 1)

    monkeypatch.setattr(SimFleet, "select", nobody)
    # Execute + Assert: before, every device silently became eligible.
    with pytest.raises(RuntimeError, match="no device was eligible"):
        run_simulation(replace(SMALL, rounds=1, fleet="realistic"), progress=False)
