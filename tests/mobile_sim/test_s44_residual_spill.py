"""The simulator holds trained devices' encoder state up to a memory budget and spills the rest
to a private temporary directory (mobile_sim/_residuals.py): before, one `UpdateEncoder` per
device ever trained stayed in a dict for the whole run (6.6 MB a device for the MNIST CNN)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mobile_sim.runner as runner
from compression import CodecConfig, ErrorFeedback
from mobile_sim._residuals import ResidualStore
from mobile_sim.models import build_model
from mobile_sim.runner import RunInterrupted, SimConfig, run_simulation
from sdk.device import UpdateEncoder
from sdk.flat import spec_from_module

# Realistic fleet: over-selection, stragglers and dropouts, so uploads are accepted and refused;
# 30 devices, 6 a round (8 selected): most are trained once or twice, a few more often.
CFG = SimConfig(
    dataset="digits",
    model="digits_mlp",
    clients=30,
    per_round=6,
    rounds=4,
    topk=0.1,
    local_epochs=1,
    partition="iid",
    fleet="realistic",
    seed=3,
)
RECORD = 2410 * 4  # one digits_mlp residual, float32[d]
BUDGET_MB = 3 * RECORD / 2**20  # three devices' residuals


def _spill_dirs(folder: Path) -> list[str]:
    """The store's directories in `folder` (torch may put its own there too)."""
    return sorted(p.name for p in folder.glob("plume-residuals-*"))


def _idle_state_bytes(store: ResidualStore) -> int:
    """The float32[d] state `store` holds in memory for idle devices, counted from what it
    holds (a bare residual, or a whole encoder kept with its pending u), not from its own
    tally (a gc scan of the process counted other tests' objects under xdist)."""
    held = 0
    for value in store._idle.values():
        if isinstance(value, ErrorFeedback):
            held += value.residual.nbytes
        elif isinstance(value, UpdateEncoder):
            held += value.state_nbytes
    assert held == store.idle_bytes
    return held


def _run(cfg: SimConfig, monkeypatch: pytest.MonkeyPatch, spill_dir: Path) -> tuple[Any, list]:
    """Run `cfg` with temporary files in `spill_dir`; also return, at the start of each round's
    encoding, the state held by live encoders and the files in `spill_dir`."""
    monkeypatch.setattr(tempfile, "tempdir", str(spill_dir))
    seen: list[tuple[int, list[str]]] = []
    real = runner.encode_reports

    def spy(encoders: Any, *args: Any, **kwargs: Any) -> dict[str, bytes]:
        # Between rounds: no encoder is the round's yet, so all are idle.
        files = [str(p) for p in spill_dir.glob("plume-residuals-*/*")]
        seen.append((_idle_state_bytes(encoders), files))
        frames: dict[str, bytes] = real(encoders, *args, **kwargs)
        return frames

    monkeypatch.setattr(runner, "encode_reports", spy)
    return run_simulation(cfg, progress=False), seen


def _rows(res: Any) -> list[tuple[Any, ...]]:
    return [
        (r.round, r.accuracy, r.loss, r.train_loss, r.reports, r.committed, r.bytes_up)
        for r in res.records
    ]


def test_spilling_gives_the_same_run_within_the_budget_and_leaves_no_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    roomy, tight = tmp_path / "roomy", tmp_path / "tight"
    roomy.mkdir()
    tight.mkdir()

    # Execute: the default budget holds the whole fleet; three residuals' worth does not
    base, _ = _run(CFG, monkeypatch, roomy)
    spilled, seen = _run(replace(CFG, residual_memory_mb=BUDGET_MB), monkeypatch, tight)

    # Assert: bit for bit the same model, ledger and rounds
    assert np.array_equal(base.final_params, spilled.final_params)
    assert base.final_params.tobytes() == spilled.final_params.tobytes()
    assert base.ledger.rows() == spilled.ledger.rows()
    assert _rows(base) == _rows(spilled)
    assert any(r.reports < 6 for r in spilled.records)  # some uploads were refused
    # ... residuals went to disk between rounds, never more than the budget stayed in memory
    assert all(held <= BUDGET_MB * 2**20 for held, _ in seen)
    assert any(files for _, files in seen[1:]), "nothing was spilled"
    # ... and the run removed its directory
    assert _spill_dirs(tight) == [] and _spill_dirs(roomy) == []


def test_a_run_cut_short_removes_its_spill_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: Ctrl-C as round 4 encodes, after three rounds spilled residuals
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    real = runner.encode_reports
    seen: list[list[str]] = []

    def encode(*args: Any, **kwargs: Any) -> Any:
        seen.append(_spill_dirs(tmp_path))
        if len(seen) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "encode_reports", encode)

    # Execute
    with pytest.raises(RunInterrupted):
        run_simulation(replace(CFG, residual_memory_mb=0.0), progress=False)

    # Assert
    assert seen[3], "nothing was spilled before the interruption"
    assert _spill_dirs(tmp_path) == []


def test_the_store_restores_a_residual_bit_for_bit_and_keeps_a_pending_one(
    tmp_path: Path,
) -> None:
    # Prepare: a residual with values a float round trip could lose (-0.0, a subnormal, NaN bits)
    spec = spec_from_module(build_model("digits_mlp"))
    codec = CodecConfig(topk=0.1, bits=4)
    rng = np.random.default_rng(0)
    residual = rng.standard_normal(spec.size).astype(np.float32)
    residual[:3] = [-0.0, np.float32(1e-45), np.float32(np.nan)]
    store = ResidualStore(spec, 0, tmpdir=str(tmp_path))
    a, b = UpdateEncoder(spec, codec), UpdateEncoder(spec, codec)
    a.feedback.residual = residual.copy()
    store["a"] = a
    store["b"] = b
    b.encode(rng.standard_normal(spec.size).astype(np.float32), rng, 1.0)  # b is pending

    # Execute
    store.end_round()

    # Assert: a went to disk, b (pending) stayed; a comes back bit for bit
    assert store.spilled == 1 and store.directory is not None
    assert "a" in store and len(store) == 2
    back = store["a"]
    assert back is not a and back.feedback.residual.tobytes() == residual.tobytes()
    assert store["b"] is b
    directory = store.directory
    store.close()
    assert not os.path.exists(directory)


def test_the_budget_is_a_simconfig_field_checked_when_made() -> None:
    with pytest.raises(ValueError, match="residual_memory_mb"):
        replace(CFG, residual_memory_mb=-1.0)
    with pytest.raises(ValueError, match="residual_memory_mb"):
        replace(CFG, residual_memory_mb=float("nan"))


def test_a_dense_run_refuses_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    # A --dense run keeps no residual: the flag would change nothing (it was taken silently).
    from coordinator.cli import main

    try:
        code = main(["sim", "--dense", "--residual-memory-mb", "1", "--rounds", "1"])
    except SystemExit as exc:
        code = int(exc.code or 0)
    assert code == 2
    assert "--residual-memory-mb only applies to compressed updates" in capsys.readouterr().err


def test_the_flags_default_is_the_stores() -> None:
    # The CLI spells the default out (its help imports no numpy); it must stay the store's.
    from coordinator.cli import build_parser
    from mobile_sim._cli import config_from_args
    from mobile_sim._residuals import DEFAULT_RESIDUAL_MEMORY_MB

    args = build_parser().parse_args(["sim"])
    assert config_from_args(args).residual_memory_mb == DEFAULT_RESIDUAL_MEMORY_MB
    assert SimConfig().residual_memory_mb == DEFAULT_RESIDUAL_MEMORY_MB
