"""Stragglers' uploads are counted: `bytes up` is what the engine accepted, and each round's
`measurements.clock.straggler_up_bytes` is what the devices that arrived too late sent anyway
(their frames were encoded and timed, then refused). Before, those bytes were nowhere."""

from __future__ import annotations

from mobile_sim.runner import SimConfig, run_simulation


def test_an_over_selected_round_records_the_bytes_its_stragglers_sent() -> None:
    # Prepare: 6 selected for 4 reports a round, on the simulated clock (no dropouts)
    cfg = SimConfig(
        dataset="digits",
        clients=12,
        per_round=4,
        over_selection=1.5,
        rounds=2,
        local_epochs=1,
        fleet="timing",
        seed=0,
    )

    # Execute
    result = run_simulation(cfg, progress=False)

    # Assert: two stragglers a round, each sending a frame about the size of a kept one
    for rec in result.records:
        clock = rec.measurements["clock"]
        assert (clock["selected"], clock["kept"], clock["stragglers"]) == (6, 4, 2)
        per_kept = rec.bytes_up / clock["kept"]
        assert 1.5 * per_kept < clock["straggler_up_bytes"] < 2.5 * per_kept


def test_a_round_without_stragglers_records_zero() -> None:
    cfg = SimConfig(dataset="digits", clients=8, per_round=4, rounds=1, local_epochs=1, seed=0)

    result = run_simulation(cfg, progress=False)

    assert result.records[0].measurements["clock"]["straggler_up_bytes"] == 0


def test_dropped_devices_send_nothing_and_are_not_counted() -> None:
    # Prepare: the realistic fleet of the simulator docs' table: 13 selected for 10 reports,
    # with tier dropouts (a dropped device is not trained and never uploads). A guard: with
    # `frames.keys() - arrival` in place of the clock's stragglers it passes too, as long as
    # dropped devices stay untrained.
    cfg = SimConfig(
        dataset="digits",
        clients=200,
        per_round=10,
        over_selection=1.3,
        rounds=3,
        local_epochs=1,
        lr=0.2,
        topk=0.1,
        fleet="realistic",
        deadline_s=300.0,
        seed=0,
    )

    # Execute
    result = run_simulation(cfg, progress=False)

    # Assert: straggler bytes scale with the stragglers alone (frames are 300-350 B here)
    dropped = 0
    for rec in result.records:
        clock = rec.measurements["clock"]
        dropped += clock["dropped"]
        per_kept = rec.bytes_up / clock["kept"]
        sent = clock["straggler_up_bytes"]
        assert abs(sent - clock["stragglers"] * per_kept) <= 0.25 * per_kept * clock["stragglers"]
    assert dropped > 0
