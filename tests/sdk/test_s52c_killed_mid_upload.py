"""A device process killed during its upload (before the request left, or after the
coordinator took it but before the device read the receipt) and started again on the same app
directory, against a loopback coordinator: the restart re-sends the pending upload, nothing is
lost and nothing counts twice. The task's final model is bit for bit the one a run without the
kill reaches, and each round holds one report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SIZE = 40  # one tensor of 4 x 10

# The device app: a numpy trainer (no torch in the child, so it starts fast), one
# `participate` per run, killed (os._exit, no cleanup) around its upload when asked.
_DEVICE = """
import os, sys
import numpy as np
from sdk import Client, TrainResult

url, app_dir, kill = sys.argv[1:4]

class Step:
    def train(self, params, x, y, *, epochs, batch_size, lr, rng):
        target = np.float32(x.mean() + y.mean())
        return TrainResult((params - lr * (params - target)).astype(np.float32), len(x), 1.0)

def mod(request, send):
    upload = request.url.path.endswith("/updates")
    if upload and kill == "before":
        os._exit(9)
    response = send(request)
    if upload and kill == "after":
        os._exit(9)
    return response

x = np.linspace(0, 1, 32, dtype=np.float32).reshape(8, 4)
y = np.arange(8) % 10
with Client(url, app_dir=app_dir, mods=(mod,), retries=0) as client:
    client.register()
    report = client.participate(Step(), x, y, task_id=1, max_wait_s=20)
    print("ROUND", report.round_id if report is not None else None)
"""


def _device(url: str, app_dir: Path, kill: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _DEVICE, url, str(app_dir), kill],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip


def _run(tmp: Path, kill: str) -> tuple[np.ndarray, list[tuple[str, int]], list[str]]:
    """Two device runs on one app directory (the first killed as `kill` says) in a two-round
    task of one device a round: the final model, each round's (state, reports), the outputs."""
    from coordinator.service import AdminClient, ServerThread, ServiceConfig
    from protocol.messages import TaskConfig, TensorShape, TrainingParams

    tmp.mkdir()
    cfg = ServiceConfig(db_path=str(tmp / "p.db"), admin_token="t", poll_s=0.05)
    outputs = []
    with ServerThread(cfg) as url, AdminClient(url, "t") as admin:
        task_id = admin.create_task(
            TaskConfig(
                name="killed",
                model_name="linear",
                spec=[TensorShape("w", [4, 10])],
                rounds=2,
                clients_per_round=1,
                selection_timeout_s=0.2,
                retry_after_s=0.2,
                training=TrainingParams(1, 8, 0.5),
            ),
            np.zeros(SIZE, np.float32),
        )
        assert task_id == 1
        for run in (kill, "none"):
            proc = _device(url, tmp / "app", run)
            assert proc.returncode == (0 if run == "none" else 9), proc.stderr
            outputs.append(proc.stdout)
        rounds = [(r.state, r.reports) for r in _settled(admin, task_id)]
        final = admin.model(task_id).params
    return final, rounds, outputs


def _settled(admin: Any, task_id: int) -> list[Any]:
    """The task's rounds once none is still open (the last one commits asynchronously)."""
    import time

    deadline = time.monotonic() + 10.0
    rounds = admin.rounds(task_id)
    while any(r.state not in ("committed", "abandoned") for r in rounds) or len(rounds) < 2:
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
        rounds = admin.rounds(task_id)
    return list(rounds)


@pytest.mark.parametrize("kill", ["before", "after"])
def test_a_device_killed_mid_upload_resumes_without_loss_or_double_count(
    tmp_path: Path, kill: str
) -> None:
    # Prepare: the same two runs with no kill, for reference
    want, want_rounds, reference = _run(tmp_path / "reference", "none")

    # Execute
    final, rounds, outputs = _run(tmp_path / "killed", kill)

    # Assert: the killed run left its upload pending, the restart delivered it (round 1) and
    # then took part in round 2; the coordinator holds one report a round and the same model
    assert [out.split() for out in reference] == [["ROUND", "1"], ["ROUND", "2"]]
    assert "ROUND" not in outputs[0]
    assert outputs[1].split() == ["ROUND", "2"]
    assert want_rounds == rounds == [("committed", 1), ("committed", 1)]
    np.testing.assert_array_equal(final, want)
    app = tmp_path / "killed" / "app"
    assert not (app / "pending.json").exists() and not list(app.glob("*.tmp"))
