"""`nohup plume coordinator serve &` keeps running when its terminal closes: nohup starts it
with SIGHUP ignored, and serve (which now takes SIGHUP as a graceful stop, 47f27c8) leaves an
ignored SIGHUP ignored. Before, its own handler replaced the inherited SIG_IGN and the hang-up
nohup was asked to ignore stopped the coordinator (helper-269's review)."""

from __future__ import annotations

import signal
import subprocess

import httpx
import pytest

from tests.coordinator.test_h266_ops_shutdown import _serve


@pytest.mark.timeout(120)
def test_serve_started_with_sighup_ignored_keeps_serving_after_a_hang_up(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Prepare: serve started as nohup starts it (SIGHUP ignored)
    db = tmp_path / "plume.db"
    proc = _serve(db, sighup=signal.SIG_IGN)
    with proc:
        try:
            url = proc.healthy_url()

            # Execute: the terminal closes
            proc.send_signal(signal.SIGHUP)

            # Assert: still serving a few requests later (the hang-up's graceful stop would
            # have closed the port), then a SIGTERM stops it as before
            for _ in range(5):
                assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
                try:
                    proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    continue
                pytest.fail(f"serve exited on an ignored SIGHUP: {proc.returncode}")
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)
            assert proc.returncode == 0
        finally:
            if proc.poll() is None:
                proc.kill()
