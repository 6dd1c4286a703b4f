"""With `--fleet off` and over-selection, the reports that count are drawn at random each
round, not the lowest-numbered devices of the cohort (stop 48, helper-410: the engine's
selection is sorted by device index and the runner kept its first `target_reports`, so with
`--over-selection 2` on 50 clients, ids 0-24 sent 367 of 400 reports)."""

from __future__ import annotations

from mobile_sim.runner import SimConfig, run_simulation


def test_over_selected_reports_are_not_the_lowest_numbered_devices() -> None:
    # Prepare: 50 clients, 10 reports a round from a cohort of 20
    cfg = SimConfig(
        dataset="digits",
        clients=50,
        per_round=10,
        rounds=12,
        over_selection=2.0,
        fleet="off",
        local_epochs=1,
        lr=0.2,
        seed=0,
        eval_every=12,
    )

    # Execute
    result = run_simulation(cfg, progress=False)

    # Assert: every round counts 10 reports, and the upper half of the ids sends a fair share
    # of them (before: about 1 in 12), as it gets about half of the downloads
    uploads = [row for row in result.ledger.rows() if row.direction == "up"]
    assert len(uploads) == 12 * 10
    upper = sum(int(row.device_id.rsplit("-", 1)[1]) >= 25 for row in uploads)
    assert 0.3 < upper / len(uploads) < 0.7, upper
