"""Tests of mobile_sim.secure: the in-process secure round driver and a short MNIST run."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from coordinator.secure import SecureConfig, SecureCoordinator, SecureOutcome
from mobile_sim.secure import STAGES, draw_dropouts, run_secure_round
from protocol.secagg import Stage
from sdk.secure import SecureParticipant
from tests.coordinator.test_service_support import StageClock


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


# The HTTP fleet tests' stage idle time and cap, on the registry's clock, which the test
# steps: no stage closes by its timer before the test has seen it hold every upload it will
# get. At the 0.5 s idle time of before, a device whose upload came more than 0.5 s after the
# one before it (a loaded machine) would have been left out, and these tests assert the exact
# cohort.
_STAGE_S = 60.0
_WAIT_S = 60.0  # the longest the test waits for the round to reach a state (milliseconds here)


class _SteppedFleet:
    """An `HttpSecureFleet` whose stages close by their timer only when the test steps its
    task's secure registry clock (installed as the fleet creates the task, before any device
    checks in); `start_round` runs `run_round` on a thread of its own meanwhile."""

    def __init__(self, coord: SecureCoordinator) -> None:
        from mobile_sim.secure import HttpSecureFleet

        self.fleet = HttpSecureFleet(coord, stage_idle_s=_STAGE_S, stage_cap_s=_STAGE_S)
        self.clock = StageClock()
        self._coordinator = self.fleet._server.app.state.coordinator
        create = self.fleet._create_task

        def create_on_the_test_clock(cohort: int) -> int:
            task_id = create(cohort)
            self._coordinator.runtimes[task_id].secure.registry.clock = self.clock
            return task_id

        self.fleet._create_task = create_on_the_test_clock  # type: ignore[method-assign]
        self._thread: threading.Thread | None = None
        self._outcome: SecureOutcome | None = None
        self._error: BaseException | None = None

    def start_round(
        self,
        parts: Mapping[str, SecureParticipant],
        ups: Mapping[str, tuple[npt.NDArray[np.float32], int]],
        drops: Mapping[str, Stage],
    ) -> None:
        def run() -> None:
            try:
                self._outcome = self.fleet.run_round(parts, ups, drops)
            except BaseException as exc:  # raised again by `outcome`
                self._error = exc

        self._thread = threading.Thread(target=run, name="secure-round", daemon=True)
        self._thread.start()

    def _open_round(self) -> tuple[Any, int] | None:
        """The task's registry and its open round's id, if a round is open."""
        if self.fleet.task_id is None:
            return None
        runtime = self._coordinator.runtimes[self.fleet.task_id]
        current = runtime.current
        return None if current is None else (runtime.secure.registry, current.round_id)

    def uploads(self, stage: Stage) -> int:
        """Uploads the open round's registry accepted in `stage` (0 with no round open)."""
        found = self._open_round()
        if found is None:
            return 0
        registry, round_id = found
        try:
            return int(registry.stage_counts(round_id).get(str(stage), 0))
        except LookupError:  # the round was just discarded
            return 0

    def stage(self) -> Stage | None:
        """The open round's earliest stage still open (None with no round open)."""
        found = self._open_round()
        if found is None:
            return None
        registry, round_id = found
        try:
            current: Stage | None = registry.current_stage(round_id)
        except LookupError:
            return None
        return current

    def wait_until(self, what: str, done: Callable[[], bool]) -> None:
        give_up = time.monotonic() + _WAIT_S
        while not done():
            if self._thread is not None and not self._thread.is_alive():
                raise AssertionError(f"the round ended before {what}: {self._error!r}")
            if time.monotonic() > give_up:
                raise AssertionError(f"not {what} after {_WAIT_S:g} s")
            time.sleep(0.01)

    def close_by_timer(self, stage: Stage, uploads: int) -> None:
        """Once `stage` holds `uploads` uploads (all it will get), step the clock past its
        idle time and cap, and wait until the service has closed it."""
        self.wait_until(f"{uploads} {stage} uploads", lambda: self.uploads(stage) >= uploads)
        self.clock.advance(_STAGE_S + 1.0)
        self.wait_until(f"{stage} closed", lambda: self.stage() != stage)

    def outcome(self) -> SecureOutcome:
        assert self._thread is not None
        self._thread.join(2 * _WAIT_S)
        if self._error is not None:
            raise self._error
        assert self._outcome is not None, f"the round did not end in {2 * _WAIT_S:g} s"
        return self._outcome

    def close(self) -> None:
        self.fleet.close()


def test_http_fleet_round_with_dropouts() -> None:
    d = 2000
    devs = [f"d{i:02d}" for i in range(8)]
    rng = np.random.default_rng(3)
    parts = {x: SecureParticipant(d) for x in devs}
    ups = {x: (rng.normal(0, 0.01, d).astype(np.float32), 1) for x in devs}
    coord = SecureCoordinator(np.zeros(d, np.float32), SecureConfig(coord_fraction=0.1))
    stepped = _SteppedFleet(coord)
    try:
        stepped.start_round(parts, ups, {devs[0]: Stage.SHARE_KEYS, devs[1]: Stage.UNMASK})
        # The two stages a device drops out of close by their timer once the others uploaded
        stepped.close_by_timer(Stage.SHARE_KEYS, 7)
        stepped.close_by_timer(Stage.UNMASK, 6)
        out = stepped.outcome()
    finally:
        stepped.close()
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


class _JoinsLate(SecureParticipant):
    """A device that joins its round (starts the first stage) only once `released` is set."""

    def __init__(self, size: int, released: threading.Event) -> None:
        super().__init__(size)
        self.released = released

    def join(self, *args: Any, **kwargs: Any) -> Any:
        if not self.released.wait(2 * _WAIT_S):
            raise RuntimeError("the test never let this device join")
        return super().join(*args, **kwargs)


def test_http_fleet_names_a_device_the_service_left_out_by_its_timing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Prepare: eight devices, none dropped by the simulation; one joins only after the first
    # stage closed by its timer (once the other seven uploaded), as a device that joins later
    # than a stage's idle time after the latest upload
    import logging

    d = 2000
    devs = [f"d{i:02d}" for i in range(8)]
    rng = np.random.default_rng(3)
    released = threading.Event()
    parts: dict[str, SecureParticipant] = {x: SecureParticipant(d) for x in devs}
    parts[devs[2]] = _JoinsLate(d, released)
    ups = {x: (rng.normal(0, 0.01, d).astype(np.float32), 1) for x in devs}
    coord = SecureCoordinator(np.zeros(d, np.float32), SecureConfig(coord_fraction=0.1))
    stepped = _SteppedFleet(coord)
    caplog.set_level(logging.WARNING, logger="mobile_sim.secure")
    # Execute
    try:
        stepped.start_round(parts, ups, {})
        stepped.close_by_timer(Stage.ADVERTISE_KEYS, 7)
        released.set()
        out = stepped.outcome()
    finally:
        released.set()
        stepped.close()
    # Assert: the round went on without it, and the outcome and the log name it
    assert devs[2] in out.dropped and devs[2] not in out.contributors
    assert out.measurements["late_devices"] == [devs[2]]
    lines = [r.getMessage() for r in caplog.records if "left out by" in r.getMessage()]
    assert len(lines) == 1 and lines[0].endswith(devs[2])


def test_run_secure_round_does_not_commit_below_min_reports() -> None:
    # Prepare: 12 devices, 4 drop before their masked input: 8 masked inputs
    d = 500
    devs = [f"d{i:02d}" for i in range(12)]
    rng = np.random.default_rng(5)
    ups = {x: (rng.normal(0, 0.01, d).astype(np.float32), 1) for x in devs}
    drops = dict.fromkeys(devs[:4], Stage.MASKED_INPUT)

    def run(min_reports: int) -> SecureOutcome:
        parts = {x: SecureParticipant(d) for x in devs}
        coord = SecureCoordinator(np.zeros(d, np.float32), SecureConfig(coord_fraction=0.2))
        out, _ = run_secure_round(coord, parts, ups, drops, min_reports=min_reports)
        return out

    # Execute / Assert: 8 inputs commit at min_reports 8, not at 9 (nothing published)
    assert run(8).committed
    short = run(9)
    assert not short.committed and not short.update.any()


def test_secure_simulation_rounds_need_three_reports_in_process_as_over_http(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: record the min_reports the in-process driver gets (before stop 50 it got none,
    # so a round of one or two masked inputs committed in process and aborted over HTTP)
    import mobile_sim.secure as secure_mod
    from mobile_sim.runner import SimConfig

    seen: list[int] = []
    real = secure_mod.run_secure_round

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("min_reports", 1))
        return real(*args, **kwargs)

    monkeypatch.setattr(secure_mod, "run_secure_round", spy)
    cfg = SimConfig(dataset="digits", model="digits_mlp", clients=6, per_round=3, rounds=1,
                    local_epochs=1, batch_size=10, partition="iid")  # fmt: skip
    # Execute
    secure_mod.run_secure_simulation(cfg, SecureConfig(coord_fraction=0.5), progress=False)
    # Assert
    assert seen == [secure_mod.SECURE_MIN_REPORTS] and secure_mod.SECURE_MIN_REPORTS == 3
