"""One Ctrl-C stops `plume coordinator serve` gracefully with exit status 130 and the database
closed (stop 57, audit F). docs/operations.md: "Ctrl-C, SIGTERM ... or SIGHUP ... stops it
gracefully: ... the database is closed, and the exit status is 0 for SIGTERM and SIGHUP, 130
for Ctrl-C". SIGTERM and SIGHUP have their tests (tests/test_h74_operator.py,
tests/coordinator/test_h266_ops_shutdown.py), and a second Ctrl-C its own
(tests/coordinator/test_s45_second_ctrl_c.py); a single one had none."""

from __future__ import annotations

import signal
from pathlib import Path

from .test_s55o_ops_running_service import _start

PROSE = " ".join(
    (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text().split()
)


def test_one_ctrl_c_exits_130_with_the_database_closed(tmp_path: Path) -> None:
    assert "the exit status is 0 for SIGTERM and SIGHUP, 130 for Ctrl-C" in PROSE
    served = _start(tmp_path)
    status, _, err = served.stop(signal.SIGINT)
    assert status == 130, err
    assert "Traceback" not in err, err
    # closed: SQLite folded the -wal into the file and removed it ("so the `.db` file alone
    # then holds every commit")
    assert (tmp_path / "plume.db").stat().st_size > 0
    assert not (tmp_path / "plume.db-wal").exists()
    assert not (tmp_path / "plume.db-shm").exists()
