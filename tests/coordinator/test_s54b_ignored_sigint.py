"""`plume coordinator serve &` from a script: a shell without job control starts its background
commands with SIGINT ignored, and such a process keeps ignoring it (CPython's own convention,
tests/_sigint.py). uvicorn installed its handler over the inherited SIG_IGN, so a SIGINT meant
for the script's foreground job stopped the coordinator (exit 0). Serve now leaves an ignored
SIGINT ignored; SIGTERM still stops it gracefully."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.coordinator.test_service_support import ADMIN, ServeProcess
from tests.test_h74_operator import _plume


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.timeout(120)
def test_serve_started_with_sigint_ignored_keeps_serving_after_a_sigint(tmp_path: Path) -> None:
    # Prepare: serve started as `cmd &` in a non-interactive shell starts it (SIGINT ignored)
    db = tmp_path / "plume.db"
    env = {**os.environ, "PLUME_DEBUG": "", "PLUME_ADMIN_TOKEN": ADMIN}
    argv = [*_plume(), "coordinator", "serve", "--db", str(db), "--port", "0"]
    proc = ServeProcess(argv, env=env, preexec_fn=_ignore_sigint)
    with proc:
        try:
            url = proc.healthy_url()

            # Execute: a SIGINT (a Ctrl-C meant for the shell's foreground job)
            proc.send_signal(signal.SIGINT)

            # Assert: still serving a few requests later (a stop closes the port first), then
            # SIGTERM stops it gracefully as before
            for _ in range(5):
                assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
                try:
                    proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    continue
                pytest.fail(f"serve exited on an ignored SIGINT: {proc.returncode}")
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            assert "Traceback" not in err, err
        finally:
            if proc.poll() is None:
                proc.kill()
