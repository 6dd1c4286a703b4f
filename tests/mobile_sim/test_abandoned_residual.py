"""The simulator settles a device's error feedback by the round's outcome, not by the upload's
acceptance: a round that ends without a model (abandoned below min_reports, a SecAgg+ round
that aborts after the masked inputs) leaves every reporter's whole update in its residual."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import mobile_sim.runner as runner
from coordinator.secure import SecureConfig, SecureCoordinator
from mobile_sim.runner import SimConfig, run_simulation
from mobile_sim.secure import run_secure_round
from protocol.secagg import Stage
from sdk.secure import SecureParticipant

# Five selected devices; with a 0.17 simulated-second deadline three report and two straggle
# (deterministic: the seeded fleet's clock). With the Ookla-calibrated bandwidths (2026-12-07)
# the third device finishes at 0.144 s and the fourth after 0.19 s (0.2 s, the deadline before,
# now lets four report).
ONE_ROUND = SimConfig(
    dataset="digits",
    model="digits_mlp",
    clients=20,
    per_round=5,
    rounds=1,
    topk=0.1,
    bits=4,
    local_epochs=1,
    batch_size=10,
    lr=0.2,
    partition="iid",
    deadline_s=0.17,
)


def _run_keeping_encoders(
    cfg: SimConfig, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, dict[str, Any], dict[str, npt.NDArray[np.float32]]]:
    """Run `cfg`; also return the devices' encoders and each encoded device's u (delta +
    residual, what a refusal leaves in the residual)."""
    kept: dict[str, Any] = {}
    us: dict[str, npt.NDArray[np.float32]] = {}
    real = runner.encode_reports

    def spy(encoders: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, bytes]:
        frames: dict[str, bytes] = real(encoders, *args, **kwargs)
        kept.update(encoders)
        for dev in frames:
            us[dev] = encoders[dev]._pending_u.copy()
        return frames

    monkeypatch.setattr(runner, "encode_reports", spy)
    return run_simulation(cfg, progress=False), kept, us


def test_an_abandoned_rounds_reporters_keep_their_whole_update(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Execute: three reports arrive, but the round needs five (abandoned, model unchanged)
    res, encoders, us = _run_keeping_encoders(replace(ONE_ROUND, min_reports=5), monkeypatch)

    # Assert: reporters and stragglers alike hold exactly u, as after a refusal
    (rec,) = res.records
    assert not rec.committed and rec.reports == 3
    assert len(us) == 5
    for dev, u in us.items():
        np.testing.assert_array_equal(encoders[dev].feedback.residual, u)


def test_a_committed_rounds_reporters_keep_only_what_was_not_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Execute: the same round with min_reports 1 commits the three reports
    res, encoders, us = _run_keeping_encoders(ONE_ROUND, monkeypatch)

    # Assert: the stragglers hold u; the three reporters hold u - decoded (not u)
    (rec,) = res.records
    assert rec.committed and rec.reports == 3
    whole = [dev for dev, u in us.items() if np.array_equal(encoders[dev].feedback.residual, u)]
    assert len(whole) == 2


def _secure_round(drop_at: dict[str, Stage]) -> tuple[Any, dict[str, SecureParticipant], Any]:
    d = 400
    devs = [f"d{i}" for i in range(5)]
    rng = np.random.default_rng(7)
    parts = {x: SecureParticipant(d) for x in devs}
    for p in parts.values():
        p.residual = rng.normal(0, 0.01, d).astype(np.float32)
    ups = {x: (rng.normal(0, 0.05, d).astype(np.float32), 1) for x in devs}
    us = {x: ups[x][0] + parts[x].residual for x in devs}
    coord = SecureCoordinator(np.zeros(d, np.float32), SecureConfig(coord_fraction=0.2))
    out, _ = run_secure_round(coord, parts, ups, drop_at)
    return out, parts, us


def test_a_secure_round_aborted_after_the_masked_inputs_returns_them() -> None:
    # Execute: every device sends its masked input, four of five go silent before unmask
    drops = {f"d{i}": Stage.UNMASK for i in range(4)}
    out, parts, us = _secure_round(drops)

    # Assert: aborted; each device's residual is its whole u again (to float32 rounding)
    assert not out.committed and out.contributors == []
    for dev, p in parts.items():
        assert p.unsettled is None
        np.testing.assert_allclose(p.residual, us[dev], atol=1e-6)


def test_a_committed_secure_round_keeps_only_what_was_not_sent() -> None:
    # Execute
    out, parts, us = _secure_round({})

    # Assert: committed; what S_r carried left the residual (it is no longer u there)
    assert out.committed and len(out.contributors) == 5
    for dev, p in parts.items():
        assert p.unsettled is None
        assert not np.allclose(p.residual, us[dev], atol=1e-6)
