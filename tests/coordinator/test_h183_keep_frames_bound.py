"""`--keep-frames` above SQLite's largest integer (2**63 - 1) was accepted, by the flag and by
a --config file; the store's prune query then raised OverflowError (logged as a failed prune)
at every start and round close. The flag and the file now refuse it (status 2, naming the
flag or the file's key); the store clamps a huge count (`ServiceConfig` takes any int >= 0),
which keeps every frame, as it means."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from coordinator.service import ServiceConfig, Store
from coordinator.service.rounds import Coordinator

from .test_h113_serve_config import _config, _serve, served  # noqa: F401 (served: fixture)
from .test_restart_midround import Clock, _close, _frame, _open_round
from .test_service_support import task_config

SQLITE_MAX = 2**63 - 1


def test_the_flag_refuses_a_count_above_sqlites_largest_integer(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Execute
    code = _serve("--db", str(tmp_path / "x.db"), "--keep-frames", str(SQLITE_MAX + 1))
    # Assert
    err = capsys.readouterr().err
    assert code == 2 and served == []
    assert "--keep-frames" in err and f"at most {SQLITE_MAX}" in err, err


def test_the_largest_count_is_taken(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],  # noqa: F811
) -> None:
    code = _serve("--db", str(tmp_path / "x.db"), "--keep-frames", str(SQLITE_MAX))
    assert code == 0
    assert served[0][0].keep_frames_rounds == SQLITE_MAX


@pytest.mark.parametrize("value", [str(SQLITE_MAX + 1), str(10**30), f'"{10**30}"'])
def test_the_config_file_refuses_it_naming_the_file_and_key(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    value: str,
) -> None:
    # Prepare
    conf = _config(tmp_path, f'db = "{tmp_path / "x.db"}"\nkeep_frames = {value}\n')
    # Execute
    code = _serve("--config", str(conf))
    # Assert
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and served == []
    assert len(err) == 1 and f"--config {conf}: keep_frames = " in err[0], err
    assert f"at most {SQLITE_MAX}" in err[0]


def test_the_store_clamps_a_huge_count_and_keeps_every_frame(tmp_path: Path) -> None:
    # Prepare: a closed round with two stored frames
    db = tmp_path / "plume.db"
    cfg = task_config(rounds=3, clients_per_round=2, selection_timeout_s=30)
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)), clock=Clock())
    coord.restore()
    task_id, round_id = _open_round(coord, cfg)
    coord.submit(round_id, "a", "key-a", _frame(cfg, 0))
    coord.submit(round_id, "b", "key-b", _frame(cfg, 1))
    _close(coord, task_id)
    store = coord.store
    # Execute
    frames = store.prune_frames(task_id, 2**80)
    versions = store.prune_versions(task_id, -(2**80), 2**80)
    # Assert
    assert (frames.frames, versions.frames) == (0, 0)
    assert store._query("SELECT COUNT(*) FROM updates WHERE pruned_len IS NULL") == [(2,)]
    store.close()


def test_a_coordinator_configured_with_a_huge_count_prunes_without_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare
    db = tmp_path / "plume.db"
    cfg = task_config(rounds=3, clients_per_round=2, selection_timeout_s=30)
    config = ServiceConfig(db_path=str(db), keep_frames_rounds=2**80)
    coord = Coordinator(Store(db), config, clock=Clock())
    coord.restore()
    task_id, round_id = _open_round(coord, cfg)
    coord.submit(round_id, "a", "key-a", _frame(cfg, 0))
    coord.submit(round_id, "b", "key-b", _frame(cfg, 1))
    # Execute: the close prunes (frames and old versions' delta frames)
    with caplog.at_level(logging.ERROR):
        _close(coord, task_id)
        coord.prune_frames(task_id)
    # Assert
    failed = [r.getMessage() for r in caplog.records if "pruning" in r.getMessage()]
    assert failed == []
    assert coord.store._query("SELECT COUNT(*) FROM updates WHERE pruned_len IS NULL") == [(2,)]
    coord.store.close()
