"""Tests of mobile_sim.secure: the in-process secure round driver and a short MNIST run."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from coordinator.secure import SecureConfig, SecureCoordinator
from mobile_sim.secure import STAGES, draw_dropouts, run_secure_round
from protocol.secagg import Stage
from sdk.secure import SecureParticipant


def test_dropouts_at_every_stage_and_byte_counts() -> None:
    d = 2000
    devs = [f"d{i:02d}" for i in range(16)]
    rng = np.random.default_rng(0)
    parts = {x: SecureParticipant(d) for x in devs}
    ups = {x: (rng.normal(0, 0.01, d).astype(np.float32), 1) for x in devs}
    drops = dict(zip(devs[:4], STAGES, strict=True))
    coord = SecureCoordinator(np.zeros(d, np.float32), SecureConfig(coord_fraction=0.1))
    out, stats = run_secure_round(coord, parts, ups, drops)
    assert out.committed
    # Devices that dropped before their masked input are out; the one lost at unmask is in.
    assert set(devs) - set(out.contributors) == set(devs[:3])
    assert len(stats.client_s[str(Stage.MASKED_INPUT)]) == 13
    assert stats.bytes_up.get(devs[0], 0) == 0 and stats.bytes_up[devs[5]] > 0
    assert out.measurements["unmask_s"] > 0


def test_draw_dropouts_rate() -> None:
    devs = [str(i) for i in range(2000)]
    drops = draw_dropouts(devs, 0.1, np.random.default_rng(1))
    assert 150 < len(drops) < 250 and set(drops.values()) == set(STAGES)


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["inproc", "http"])
def test_secure_mnist_simulation_learns(transport: str) -> None:
    import torch

    from mobile_sim.runner import SimConfig
    from mobile_sim.secure import run_secure_simulation

    torch.set_num_threads(1)
    cfg = SimConfig(model="mlp", clients=20, per_round=6, rounds=4, local_epochs=1, eval_every=4)
    res = run_secure_simulation(
        cfg, SecureConfig(coord_fraction=0.05), dropout=0.1, progress=False, transport=transport
    )
    assert res.final_accuracy is not None and res.final_accuracy > 0.3
    assert all(r.bytes_up > 0 for r in res.records)


def test_http_fleet_round_with_dropouts() -> None:
    from mobile_sim.secure import HttpSecureFleet

    d = 2000
    devs = [f"d{i:02d}" for i in range(8)]
    rng = np.random.default_rng(3)
    parts = {x: SecureParticipant(d) for x in devs}
    ups = {x: (rng.normal(0, 0.01, d).astype(np.float32), 1) for x in devs}
    coord = SecureCoordinator(np.zeros(d, np.float32), SecureConfig(coord_fraction=0.1))
    fleet = HttpSecureFleet(coord, stage_idle_s=0.5)
    try:
        out = fleet.run_round(parts, ups, {devs[0]: Stage.SHARE_KEYS, devs[1]: Stage.UNMASK})
    finally:
        fleet.close()
    assert out.committed and set(out.contributors) == set(devs[1:])
    sent = [ups[x][0] - parts[x].residual for x in out.contributors]
    np.testing.assert_allclose(out.update, np.mean(sent, axis=0), atol=1e-6)


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ({"fleet": "realistic"}, "secure runs .* have no simulated clock"),
        ({"deadline_s": 30.0}, "secure runs .* have no simulated clock"),
        ({"attack": "signflip", "malicious": 0.25}, "attack only apply to plain rounds"),
        ({"aggregator": "median"}, "aggregator only apply to plain rounds"),
        ({"over_selection": 1.5, "warmup_rounds": 1}, "over_selection, warmup_rounds only"),
        ({"clip_norm": 1.0}, "clip_norm only apply to plain rounds"),
        ({"downlink_topk": 0.05, "downlink_bits": 8}, "downlink_topk, downlink_bits only"),
        ({"downlink_bits": 4}, "downlink_bits only apply to plain rounds"),
    ],
)
def test_secure_simulation_refuses_settings_it_would_ignore(
    setting: dict[str, object], words: str
) -> None:
    # Prepare: each was silently ignored (no simulated clock; no plain-round machinery)
    from mobile_sim.runner import SimConfig
    from mobile_sim.secure import run_secure_simulation

    cfg = SimConfig(dataset="digits", model="digits_mlp", clients=6, per_round=3, rounds=1,
                    **setting)  # type: ignore[arg-type]  # fmt: skip

    # Execute / Assert: refused before any data is loaded
    with pytest.raises(ValueError, match=words):
        run_secure_simulation(cfg, SecureConfig(coord_fraction=0.5), progress=False)


def test_in_process_secure_rounds_count_each_devices_model_download() -> None:
    # Prepare: one small secure round in process, no dropouts
    from mobile_sim.runner import SimConfig
    from mobile_sim.secure import run_secure_simulation

    cfg = SimConfig(dataset="digits", model="digits_mlp", clients=10, per_round=4, rounds=1,
                    local_epochs=1, batch_size=10, partition="iid")  # fmt: skip
    # Execute
    res = run_secure_simulation(cfg, SecureConfig(coord_fraction=0.5), progress=False)
    # Assert: the round's bytes down are the stage downloads plus one fp32 model per selected
    # device (as the plain in-process runner counts it), and the ledger has the same rows
    (rec,) = res.records
    snapshot = 4 * res.num_params
    down: dict[str, int] = {}
    for row in res.ledger.rows():
        if row.direction == "down":
            down[row.device_id] = down.get(row.device_id, 0) + row.payload_bytes
    assert len(down) == cfg.per_round
    assert all(n > snapshot for n in down.values())  # the model and the stage downloads
    assert rec.bytes_down == sum(down.values())
    assert rec.bytes_down > cfg.per_round * snapshot


class _SlowToJoin(SecureParticipant):
    """A device that takes `delay_s` to join its round (to start the first stage)."""

    def __init__(self, size: int, delay_s: float) -> None:
        super().__init__(size)
        self.delay_s = delay_s

    def join(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self.delay_s)
        return super().join(*args, **kwargs)


def test_http_fleet_names_a_device_the_service_left_out_by_its_timing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Prepare: eight devices, none dropped by the simulation; one joins 3 s late, while a
    # stage closes 0.5 s after its latest upload
    import logging

    from mobile_sim.secure import HttpSecureFleet

    d = 2000
    devs = [f"d{i:02d}" for i in range(8)]
    rng = np.random.default_rng(3)
    parts: dict[str, SecureParticipant] = {x: SecureParticipant(d) for x in devs}
    parts[devs[2]] = _SlowToJoin(d, 3.0)
    ups = {x: (rng.normal(0, 0.01, d).astype(np.float32), 1) for x in devs}
    coord = SecureCoordinator(np.zeros(d, np.float32), SecureConfig(coord_fraction=0.1))
    fleet = HttpSecureFleet(coord, stage_idle_s=0.5)
    caplog.set_level(logging.WARNING, logger="mobile_sim.secure")
    # Execute
    try:
        out = fleet.run_round(parts, ups, {})
    finally:
        fleet.close()
    # Assert: the round went on without it, and the outcome and the log name it
    assert devs[2] in out.dropped and devs[2] not in out.contributors
    assert out.measurements["late_devices"] == [devs[2]]
    lines = [r.getMessage() for r in caplog.records if "left out by" in r.getMessage()]
    assert len(lines) == 1 and lines[0].endswith(devs[2])
