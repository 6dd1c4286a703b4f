"""`coordinator.service.serve` called from Python (not the CLI) stops on SIGTERM with its
database closed and returns normally (helper-74 found the CLI path; the function itself still
died on SIGTERM before `store.close()`, leaving the last commits in the -wal file)."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

from tests.test_h74_operator import assert_database_file_complete, sigterm_after_one_task

ADMIN = "s3cret-s13"

SCRIPT = textwrap.dedent(
    """
    import sys
    from coordinator.service import ServiceConfig, serve

    # port 0 and log level info: the port it got is on the "Uvicorn running on" line
    serve(ServiceConfig(db_path=sys.argv[1], admin_token=sys.argv[2]), "127.0.0.1", 0,
          log_level="info")
    print("serve returned")
    """
)


def test_sigterm_returns_from_serve_with_the_database_closed(tmp_path: Path) -> None:
    # Prepare: a program that calls serve(), and one task created through the admin API
    db = tmp_path / "plume.db"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    # Execute
    done, task_id = sigterm_after_one_task(
        [sys.executable, "-c", SCRIPT, str(db), ADMIN], env, ADMIN
    )
    # Assert: serve returned (the program went on), the file alone holds every commit
    assert done.returncode == 0, done.stderr
    assert "serve returned" in done.stdout
    assert_database_file_complete(db, task_id)
