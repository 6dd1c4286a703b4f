"""`coordinator.service.serve` called from Python (not the CLI) stops on SIGTERM with its
database closed and returns normally (helper-74 found the CLI path; the function itself still
died on SIGTERM before `store.close()`, leaving the last commits in the -wal file)."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from coordinator.service import AdminClient
from protocol.messages import TaskConfig, TensorShape
from tests.coordinator.test_service_support import free_port
from tests.test_h74_operator import _wait_healthy

ADMIN = "s3cret-s13"

SCRIPT = textwrap.dedent(
    """
    import sys
    from coordinator.service import ServiceConfig, serve

    serve(ServiceConfig(db_path=sys.argv[1], admin_token=sys.argv[3]), "127.0.0.1",
          int(sys.argv[2]), log_level="warning")
    print("serve returned")
    """
)


def test_sigterm_returns_from_serve_with_the_database_closed(tmp_path: Path) -> None:
    # Prepare: a program that calls serve(), and one task created through the admin API
    db = tmp_path / "plume.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, "-c", SCRIPT, str(db), str(port), ADMIN]
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        try:
            _wait_healthy(url, proc)
            task = TaskConfig(
                name="t", model_name="tiny", spec=[TensorShape("w", [10])], rounds=1,
                clients_per_round=1,
            )  # fmt: skip
            with AdminClient(url, ADMIN) as admin:
                task_id = admin.create_task(task, np.zeros(10, np.float32))
            # Execute
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    # Assert: serve returned (the program went on), the file alone holds every commit
    assert proc.returncode == 0, err
    assert "serve returned" in out
    assert not Path(f"{db}-wal").exists()
    copy = tmp_path / "copy.db"
    shutil.copyfile(db, copy)
    with sqlite3.connect(copy) as conn:
        assert conn.execute("SELECT task_id FROM tasks").fetchall() == [(task_id,)]
