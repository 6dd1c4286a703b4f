"""A second Ctrl-C during `serve`'s shutdown grace stops it without a traceback (s45).

The first Ctrl-C starts the graceful stop; a second one is uvicorn's "force quit", which skips
the app's lifespan shutdown. `asyncio.run` then cancelled the lifespan task at exit, and
starlette logged that CancelledError as a ~30-line ERROR traceback before `serve`'s one line
"interrupted". The app's shutdown now runs after a forced stop too (`server._Server.shutdown`).

A real `plume coordinator serve` in a subprocess; the request in flight is an admin model `PUT`
whose body stops half way (a raw socket), so that the grace (60 s here) is still running when
the second SIGINT arrives.
"""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

from tests.test_h74_operator import assert_database_file_complete

from .test_h266_ops_shutdown import _create_task, _half_put, _serve, _until


def test_a_second_ctrl_c_stops_serve_without_a_traceback(tmp_path: Path) -> None:
    # Prepare: serve with a long grace, one task, a model PUT half sent
    db = tmp_path / "plume.db"
    with _serve(db, "--shutdown-grace", "60") as proc:
        try:
            url = proc.healthy_url()
            task_id = _create_task(url)
            s = _half_put(url, task_id)
            # Execute: Ctrl-C, and again while the grace waits for the PUT
            proc.send_signal(signal.SIGINT)
            _until(lambda: proc.poll() is None and _stopping(url), "stopping")
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
            s.close()
        finally:
            if proc.poll() is None:
                proc.kill()
    # Assert: the interrupted exit, its one line, no ERROR nor traceback (before: starlette's
    # "Traceback ... asyncio.exceptions.CancelledError" at ERROR); the app's shutdown ran
    assert proc.returncode == 130, err
    assert err.rstrip().endswith("plume coordinator serve: interrupted"), err
    assert "Traceback" not in err and "ERROR" not in err, err
    assert "Application shutdown complete" in err, err
    assert_database_file_complete(db, task_id)


def _stopping(url: str) -> bool:
    """Whether the coordinator no longer accepts connections (its stop has begun)."""
    host, port = url.removeprefix("http://").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=0.5).close()
    except OSError:
        return True
    return False
