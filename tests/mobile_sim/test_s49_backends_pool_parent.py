"""A pool worker whose parent is gone leaves at once and quietly (helper review, stop 49): a
worker busy with a task when `plume sim` was SIGKILLed ran on as an orphan, holding the pool's
shared-memory blocks in /dev/shm ("fork": even an idle one, which never read EOF), and a worker
whose pipe was reset or broken, not closed, died with a ConnectionResetError or BrokenPipeError
traceback on the terminal instead of leaving as it does on EOF."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not Path("/dev/shm").is_dir() or not Path("/proc/self/stat").exists(),
    reason="Linux: /dev/shm and /proc",
)

# Data attacks for the workers, in a module of their own that a spawned worker imports too.
_HELPERS = textwrap.dedent(
    """
    import time
    from pathlib import Path


    class Stalls:
        \"\"\"Says it started (a file), then keeps its worker busy far longer than the test.\"\"\"

        def __init__(self, mark):
            self.mark = mark

        def poison_data(self, x, y, rng):
            Path(self.mark).write_text("training")
            time.sleep(120)
            return x, y


    class Sleeps:
        \"\"\"Keeps its worker busy for a second.\"\"\"

        def poison_data(self, x, y, rng):
            time.sleep(1.0)
            return x, y
    """
)

_CONTEXT = textwrap.dedent(
    """
    import numpy as np
    from mobile_sim.backends import TrainContext, TrainJob
    from mobile_sim.models import build_model
    from sdk.flat import get_flat_params

    rng = np.random.default_rng(0)  # digits-shaped data, without importing sklearn
    x, y = rng.random((64, 64), dtype=np.float32), rng.integers(0, 10, 64)
    ctx = TrainContext("digits_mlp", x, y, epochs=1, batch_size=8, lr=0.1)
    params = get_flat_params(build_model("digits_mlp"))
    jobs = [TrainJob(f"d{i}", i, 1, 0, np.arange(10 * i, 10 * i + 10)) for i in range(2)]
    """
)

# A driver that starts a pool of two, trains one round (the blocks are made), says its
# workers and blocks, then trains a round in which one worker stalls and the other is idle.
_DRIVER = _CONTEXT + textwrap.dedent(
    """
    import json, sys
    from dataclasses import replace
    from mobile_sim.backends.process_pool import ProcessPoolBackend
    from s49_pool_helpers import Stalls

    if __name__ == "__main__":
        pool = ProcessPoolBackend(workers=2, start_method=sys.argv[1])
        pool.start(ctx)
        pool.train(params, jobs)
        info = {"pids": [p.pid for p in pool._procs], "blocks": [pool._params.name, pool._out.name]}
        print(json.dumps(info), flush=True)
        pool.train(params, [replace(jobs[0], data_attack=Stalls(sys.argv[2])), jobs[1]])
    """
)

# A bare worker (`_worker_main`) whose parent closes its end of the pipe with the worker's
# "ready" unread (the worker's next read is reset), or while the worker trains a task (its
# reply meets a broken pipe). Prints the worker's exit code.
_BARE_WORKER = _CONTEXT + textwrap.dedent(
    """
    import multiprocessing, sys
    from dataclasses import replace
    from mobile_sim.backends.process_pool import _Shared, _worker_main
    from s49_pool_helpers import Sleeps

    if __name__ == "__main__":
        mp = multiprocessing.get_context("spawn")
        parent, child = mp.Pipe()
        proc = mp.Process(target=_worker_main, args=(child, "sequential", 1), daemon=True)
        proc.start()
        child.close()
        parent.send(ctx)
        assert parent.poll(120), "the worker did not start"
        d = len(params)
        blocks = [_Shared((d,)), _Shared((1, d))]
        if sys.argv[1] == "reset":
            parent.close()
        else:
            parent.recv()
            blocks[0].array[:] = params
            job = replace(jobs[0], data_attack=Sleeps())
            parent.send(("task", blocks[0].name, d, blocks[1].name, 1, [(0, job)]))
            parent.close()
        proc.join(60)
        for block in blocks:
            block.close(unlink=True)
        print("exitcode", proc.exitcode)
    """
)


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _script(tmp_path: Path, name: str, text: str) -> Path:
    (tmp_path / "s49_pool_helpers.py").write_text(_HELPERS)
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["spawn", "fork", "forkserver"])
def test_workers_and_their_blocks_go_when_the_parent_is_sigkilled(
    method: str, tmp_path: Path
) -> None:
    # Prepare: a driver whose pool has one worker stalled in a task and one idle
    driver = _script(tmp_path, "driver.py", _DRIVER)
    mark = tmp_path / "stalled"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    proc = subprocess.Popen(
        [sys.executable, str(driver), method, str(mark)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    try:
        deadline = time.monotonic() + 60
        while not mark.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mark.exists(), "the worker never started the stalled task"

        # Execute: SIGKILL the driver (no close, no stop message)
        proc.kill()
        proc.wait()

        # Assert: both workers exit within seconds (they polled every 0.5 s), and the resource
        # tracker, once they are gone, unlinks the driver's blocks
        deadline = time.monotonic() + 10
        left: list[object] = []
        while time.monotonic() < deadline:
            left = [pid for pid in info["pids"] if _alive(pid)]
            left += [b for b in info["blocks"] if (Path("/dev/shm") / b).exists()]
            if not left:
                break
            time.sleep(0.1)
        assert left == []
    finally:
        for pid in info["pids"]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.stdout.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["reset", "broken"])
def test_a_worker_whose_pipe_is_reset_or_broken_leaves_quietly(how: str, tmp_path: Path) -> None:
    # Prepare
    script = _script(tmp_path, "bare_worker.py", _BARE_WORKER)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}

    # Execute
    done = subprocess.run(
        [sys.executable, str(script), how],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )

    # Assert: the worker left as on EOF (status 0), without a traceback on the shared stderr
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "exitcode 0", done.stderr
    assert "Error" not in done.stderr, done.stderr
