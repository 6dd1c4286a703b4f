"""The pool's default worker count, its workers-per-CPU cap and a private Ray runtime's CPUs
come from the CPUs this process may use (its affinity, a cgroup v2 quota), not from
`os.cpu_count()`, which counts every core of the host: under `taskset -c 0`, a Slurm
allocation or a `--cpus` container the pool started one worker per host core, each importing
torch and holding the training set (helper-252: `taskset -c 0` gave 2 workers and accepted 8)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mobile_sim.backends._base import usable_cpus
from mobile_sim.backends.process_pool import ProcessPoolBackend


def test_the_pool_counts_the_cpus_it_may_run_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert usable_cpus() == 1
    assert ProcessPoolBackend().workers == 1
    with pytest.raises(ValueError, match="8"):
        ProcessPoolBackend(workers=8)  # more than 4 a CPU, as on a 1-CPU machine


def test_a_cgroup_quota_caps_the_count(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)), raising=False)
    real = Path.read_text

    def read_text(self: Path, *args: object, **kwargs: object) -> str:
        if str(self) == "/sys/fs/cgroup/cpu.max":
            return "250000 100000\n"  # 2.5 CPUs: 3
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", read_text)
    assert usable_cpus() == 3
