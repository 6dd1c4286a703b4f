"""A secure run holds its devices' `SecureParticipant`s up to `--residual-memory-mb` and spills
the rest to a private temporary directory (mobile_sim/_residuals.py's `ParticipantStore`):
before, one participant per device ever selected (its float32[d] residual and its noise
stream) stayed in a dict for the whole run, and the flag was refused with `--secure`."""

from __future__ import annotations

import copy
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mobile_sim.secure as secure
from coordinator.cli import main as plume
from coordinator.secure import SecureConfig
from mobile_sim._residuals import ParticipantStore
from mobile_sim.runner import RunInterrupted, SimConfig
from protocol.secagg import CtrRandom, NoiseKind
from sdk.secure import SecureParticipant

# 16 devices, 5 a round for 4 rounds: most are selected again after a round or more apart.
CFG = SimConfig(
    dataset="digits",
    model="digits_mlp",
    clients=16,
    per_round=5,
    rounds=4,
    local_epochs=1,
    partition="iid",
    seed=5,
)
D = 2410  # digits_mlp
PLAIN = SecureConfig(coord_fraction=0.1)
NOISED = SecureConfig(coord_fraction=0.1, noise=NoiseKind.DISCRETE_GAUSSIAN, noise_multiplier=0.5)


def _spill_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("plume-residuals-*"))


class _Watched(ParticipantStore):
    """A `ParticipantStore` that keeps, after each `end_round`, its spills, restores, idle
    bytes and the spill files present."""

    made: list[_Watched] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[int, int, int, list[str]]] = []
        _Watched.made.append(self)

    def end_round(self) -> None:
        super().end_round()
        files = sorted(str(p) for p in Path(tempfile.gettempdir()).glob("plume-residuals-*/*"))
        self.seen.append((self.spills, self.restores, self.idle_bytes, files))


def _run(cfg: SimConfig, sc: SecureConfig, monkeypatch: pytest.MonkeyPatch, folder: Path) -> Any:
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setattr(secure, "ParticipantStore", _Watched)
    _Watched.made = []
    return secure.run_secure_simulation(cfg, sc, dropout=0.2, progress=False)


def _rows(res: Any) -> list[tuple[Any, ...]]:
    return [
        (r.round, r.accuracy, r.loss, r.train_loss, r.reports, r.committed, r.bytes_up)
        for r in res.records
    ]


@pytest.mark.parametrize("sc", [PLAIN, NOISED], ids=["no-noise", "dp-noise"])
def test_a_secure_run_with_every_participant_spilled_is_the_same_run(
    sc: SecureConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    roomy, tight = tmp_path / "roomy", tmp_path / "tight"
    roomy.mkdir()
    tight.mkdir()

    # Execute: the default budget holds every device; 0 spills each settled one every round
    base = _run(CFG, sc, monkeypatch, roomy)
    spilled = _run(replace(CFG, residual_memory_mb=0.0), sc, monkeypatch, tight)
    (store,) = _Watched.made

    # Assert: bit for bit the same model, ledger and rounds (the noise streams included)
    assert base.final_params.tobytes() == spilled.final_params.tobytes()
    assert base.ledger.rows() == spilled.ledger.rows()
    assert _rows(base) == _rows(spilled)
    # ... every settled participant went to disk and some came back in later rounds
    spills, restores, idle, files = store.seen[-1]
    assert spills >= CFG.per_round * CFG.rounds and restores > 0
    assert all(held == 0 for _, _, held, _ in store.seen)
    assert all(files for *_, files in store.seen)
    # ... and the run removed its directory
    assert _spill_dirs(tight) == [] and _spill_dirs(roomy) == []


def test_a_budget_of_some_devices_holds_at_most_that(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: three devices' residuals (and noise stream positions)
    budget = 3 * (D * 4 + 40)

    # Execute
    _run(replace(CFG, residual_memory_mb=budget / 2**20), PLAIN, monkeypatch, tmp_path)
    (store,) = _Watched.made

    # Assert
    assert all(0 < held <= budget for _, _, held, _ in store.seen)
    assert store.seen[-1][0] > 0
    assert _spill_dirs(tmp_path) == []


def _noise_stream(skip: int) -> CtrRandom:
    """A device's noise stream, past a keystream block (64 KiB) and `skip` bytes more."""
    rng = CtrRandom(bytes(range(32)))
    for _ in range(8192 + skip):
        rng.randbelow(2**64)  # 8 bytes each
    return rng


@pytest.mark.parametrize("budget", [0, 10**9], ids=["spilled", "held"])
@pytest.mark.parametrize("skip", [0, 3])
def test_the_store_gives_back_the_residual_and_noise_stream_bit_for_bit(
    tmp_path: Path, budget: int, skip: int
) -> None:
    # Prepare: a residual a float round trip could change (-0.0, a subnormal, NaN bits), and
    # a noise stream that has used a block and part of the next (or exactly one block)
    rng = np.random.default_rng(0)
    residual = rng.standard_normal(D).astype(np.float32)
    residual[:3] = np.array([-0.0, 1e-45, np.nan], dtype=np.float32)
    p = SecureParticipant(D, noise_rng=_noise_stream(skip))
    p.residual = residual.copy()
    reference = copy.deepcopy(p.noise_rng)
    store = ParticipantStore(D, budget, tmpdir=str(tmp_path))
    store["a"] = p

    # Execute
    store.end_round()
    back = store["a"]

    # Assert: out of memory (or slimmed), then back as it was
    assert back is not p
    assert store.spills == (1 if budget == 0 else 0) and store.restores == (budget == 0)
    assert back.residual.tobytes() == residual.tobytes()
    assert back.unsettled is None
    draws = [back.noise_rng.randbelow(2**61 - 1) for _ in range(9000)]
    assert draws == [reference.randbelow(2**61 - 1) for _ in range(9000)]
    store.close()
    assert _spill_dirs(tmp_path) == []


def test_an_unsettled_participant_is_never_spilled(tmp_path: Path) -> None:
    # Prepare: a masked input still out (its round's outcome unknown), and a settled one
    store = ParticipantStore(D, 0, tmpdir=str(tmp_path))
    out, done = SecureParticipant(D), SecureParticipant(D)
    out.unsettled = (np.arange(5, dtype=np.int64), np.ones(5, dtype=np.float32))
    store["out"] = out
    store["done"] = done

    # Execute
    store.end_round()

    # Assert: the unsettled one stays whole in memory, counted; the settled one went out
    assert store.spilled == 1 and "done" in store
    assert store.idle_bytes == D * 4 + 5 * 8 + 5 * 4
    assert store["out"] is out and out.unsettled is not None
    store.close()


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_a_secure_run_cut_short_removes_its_spill_directory(
    error: type[BaseException], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: Ctrl-C (or a failure) in round 3, after two rounds spilled every participant
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    real = secure.run_secure_round
    seen: list[list[str]] = []

    def run(*args: Any, **kwargs: Any) -> Any:
        seen.append(_spill_dirs(tmp_path))
        if len(seen) == 3:
            raise error("cut short")
        return real(*args, **kwargs)

    monkeypatch.setattr(secure, "run_secure_round", run)

    # Execute
    with pytest.raises(error) as info:
        secure.run_secure_simulation(
            replace(CFG, residual_memory_mb=0.0), PLAIN, dropout=0.0, progress=False
        )

    # Assert: the finished rounds are kept; the directory existed and is gone
    if error is KeyboardInterrupt:
        assert isinstance(info.value, RunInterrupted) and len(info.value.result.records) == 2
    else:
        assert len(info.value.finished_rounds.records) == 2  # type: ignore[attr-defined]
    assert seen[2], "nothing was spilled before the run was cut short"
    assert _spill_dirs(tmp_path) == []


TINY = [
    "sim", "--secure", "--dataset", "digits", "--model", "digits_mlp", "--clients", "6",
    "--per-round", "3", "--rounds", "2", "--local-epochs", "1", "--no-progress",
]  # fmt: skip


@pytest.mark.parametrize("transport", ["inproc", "http"])
def test_the_flag_is_taken_with_secure(
    transport: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the run itself is not what is tested here; stop it once it has its config
    got: list[SimConfig] = []

    def run(cfg: SimConfig, *args: Any, **kwargs: Any) -> Any:
        got.append(cfg)
        raise RuntimeError("stopped by the test")

    monkeypatch.setattr(secure, "run_secure_simulation", run)
    out = tmp_path / "run"

    # Execute: refused with --secure before (plain rounds only)
    with pytest.raises(RuntimeError, match="stopped by the test"):
        plume([*TINY, "--transport", transport, "--residual-memory-mb", "0", "--out", str(out)])

    # Assert
    assert got and got[0].residual_memory_mb == 0.0


def test_a_plain_http_run_still_refuses_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A plain HTTP fleet's devices keep their residuals in their SDK app directories.
    code = plume(
        [
            "sim",
            *TINY[2:],
            "--transport",
            "http",
            "--residual-memory-mb",
            "0",
            "--out",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "plume sim: error: --residual-memory-mb only applies to --transport inproc" in err


@pytest.mark.parametrize("used", [0, 1, 7, 65535, 65536, 65537, 3 * 65536 + 5])
def test_a_noise_stream_rebuilt_at_its_position_gives_the_same_bytes(used: int) -> None:
    # Prepare: a stream that has given `used` bytes, in uneven draws
    from protocol.secagg import CtrRandom

    rng = CtrRandom(bytes(range(32)))
    left = used
    while left:
        take = min(left, 1 + left % 4099)
        rng._bytes(take)
        left -= take
    # Execute
    again = CtrRandom.at(rng.seed, rng.position)
    # Assert
    assert rng.position == used and again.position == used
    assert again._bytes(70_000) == rng._bytes(70_000)
