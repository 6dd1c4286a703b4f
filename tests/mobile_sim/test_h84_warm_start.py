"""A backend's `start()` pays torch's one-time set-up, so round 1's `wall s` measures the
round: before, the first `torch.optim.SGD` of the run (in round 1) imported torch._dynamo, about
1.5-3 s that made round 1 of a digits run look 5-40x slower than the rest."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# A fresh interpreter: this test process imported everything long ago.
_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from mobile_sim.backends import TrainContext, TrainJob, build_backend

    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 64)).astype(np.float32)
    y = rng.integers(0, 10, 40)
    ctx = TrainContext("digits_mlp", x, y, epochs=1, batch_size=10, lr=0.1)
    params = np.zeros(2410, np.float32)
    jobs = [TrainJob(f"dev-{i}", i, 1, 0, np.arange(10 * i, 10 * i + 10)) for i in range(4)]
    backend = build_backend(sys.argv[1])
    backend.start(ctx)
    before = set(sys.modules)
    backend.train(params, jobs)
    print(sorted(m for m in set(sys.modules) - before if m.startswith("torch")))
    backend.close()
    """
)


@pytest.mark.timeout(120)
def test_the_first_round_of_the_sequential_backend_imports_no_torch_module() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, "sequential"],
        capture_output=True,
        text=True,
        check=True,
        timeout=110,
    ).stdout
    assert out.strip() == "[]", out[:500]
