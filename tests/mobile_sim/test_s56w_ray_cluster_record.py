"""A Ray run that joined a cluster through the RAY_ADDRESS variable says so in rounds.json
(`ray_cluster`: the address without credentials and "from": "RAY_ADDRESS"); before, its record
(whose `config.ray_address` is only a given address) read like a private runtime's. A given
address is recorded there too ("from": "ray_address"); a private runtime records none. The
config stays the same wherever it is built. No Ray runtime is started here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from coordinator.cli import main as plume
from mobile_sim.backends import JobResult, TrainContext, TrainJob, ray_backend
from mobile_sim.backends.ray_backend import RayBackend
from mobile_sim.backends.sequential import SequentialBackend
from mobile_sim.runner import SimConfig

SECRET = "t0ken-s56w"
TINY = [
    "sim", "--dataset", "digits", "--clients", "4", "--per-round", "2", "--rounds", "1",
    "--local-epochs", "1", "--no-progress", "--backend", "ray",
]  # fmt: skip


@pytest.mark.parametrize(
    ("env", "given", "expected"),
    [
        (None, None, None),  # a private runtime
        ("10.0.0.5:6379", None, {"address": "10.0.0.5:6379", "from": "RAY_ADDRESS"}),
        (
            f"ray://alice:{SECRET}@head.example:10001",
            None,
            {"address": "ray://head.example:10001", "from": "RAY_ADDRESS"},
        ),
        ("auto", None, {"address": "auto", "from": "RAY_ADDRESS"}),
        (None, "10.0.0.7:6379", {"address": "10.0.0.7:6379", "from": "ray_address"}),
        # a given address wins over the variable, as in ray.init
        ("10.0.0.5:6379", "10.0.0.7:6379", {"address": "10.0.0.7:6379", "from": "ray_address"}),
    ],
)
def test_the_cluster_entry_says_the_address_and_where_it_came_from(
    monkeypatch: pytest.MonkeyPatch,
    env: str | None,
    given: str | None,
    expected: dict[str, str] | None,
) -> None:
    if env is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", env)
    backend = RayBackend(workers=1, address=given)
    assert backend.cluster == expected
    if env is not None:
        assert backend.address == (given or env)  # the backend still gets it as given


def test_a_runtime_already_running_in_the_process_is_not_claimed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The caller's own ray.init ran before `start`: the backend joined that runtime, whatever
    # it is, not RAY_ADDRESS's cluster, so it records none.
    ray = pytest.importorskip("ray", reason="the Ray backend needs `pip install .[ray]`")

    class _Stop(Exception):
        pass

    def stop(*_a: Any, **_k: Any) -> None:
        raise _Stop

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "init", stop)
    monkeypatch.setattr(ray, "available_resources", stop)
    backend = RayBackend(workers=1)
    assert backend.cluster is not None
    ctx = TrainContext(
        "digits_mlp", np.zeros((4, 64), np.float32), np.zeros(4, np.int64), 1, 2, 0.1
    )
    with pytest.raises(_Stop):
        backend.start(ctx)
    assert backend.cluster is None


def test_the_config_does_not_depend_on_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    without = SimConfig(backend="ray").as_dict()
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert SimConfig(backend="ray").as_dict() == without
    assert without.get("ray_address") is None


class _StandIn(RayBackend):
    """The real RayBackend's constructor and `cluster`, training in this process: no Ray
    runtime is started (its `start` is the part left out)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._inner = SequentialBackend()

    def start(self, ctx: TrainContext) -> None:
        self._inner.start(ctx)

    def train(self, params: npt.NDArray[np.float32], jobs: Any) -> list[JobResult]:
        jobs_: list[TrainJob] = list(jobs)
        return self._inner.train(params, jobs_)

    def evaluate(self, params: npt.NDArray[np.float32]) -> None:
        return None  # evaluated in this process

    def close(self) -> None:
        self._inner.close()


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secure"])
@pytest.mark.parametrize(
    ("env", "flag", "expected"),
    [
        (
            f"ray://alice:{SECRET}@head.example:10001",
            None,
            {"address": "ray://head.example:10001", "from": "RAY_ADDRESS"},
        ),
        (None, "10.0.0.7:6379", {"address": "10.0.0.7:6379", "from": "ray_address"}),
        (None, None, None),
    ],
    ids=["RAY_ADDRESS", "--ray-address", "private"],
)
def test_rounds_json_records_the_cluster(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: str | None,
    flag: str | None,
    expected: dict[str, str] | None,
    secure: bool,
) -> None:
    # Prepare: the Ray backend stood in for (no Ray is started)
    monkeypatch.setattr(ray_backend, "RayBackend", _StandIn)
    if env is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", env)
    argv = [*TINY, "--out", str(tmp_path)]
    argv += ["--ray-address", flag] if flag else []
    # SecAgg+ needs at least 3 devices a round
    argv += ["--secure", "--clients", "6", "--per-round", "3"] if secure else []

    # Execute
    code = plume(argv)
    out, err = capsys.readouterr()

    # Assert: the record's `ray_cluster`, without credentials; the config reads back
    assert code == 0, err
    doc = json.loads((tmp_path / "rounds.json").read_text())
    assert doc.get("ray_cluster") == expected
    assert ("ray_cluster" in doc) == (expected is not None)
    assert SimConfig.from_dict(doc["config"]).as_dict() == doc["config"]
    for written in tmp_path.iterdir():
        if written.is_file():
            assert SECRET.encode() not in written.read_bytes(), written.name
    assert SECRET not in out + err


def test_report_reads_records_with_and_without_the_key(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(ray_backend, "RayBackend", _StandIn)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    new = tmp_path / "new"
    assert plume([*TINY, "--out", str(new)]) == 0
    old = tmp_path / "old"
    shutil.copytree(new, old)
    doc = json.loads((old / "rounds.json").read_text())
    assert doc.pop("ray_cluster") == {"address": "10.0.0.5:6379", "from": "RAY_ADDRESS"}
    (old / "rounds.json").write_text(json.dumps(doc, indent=2) + "\n")
    capsys.readouterr()
    for run_dir in (new, old):
        assert plume(["sim", "report", str(run_dir)]) == 0, capsys.readouterr().err


class _FailsSecondRound(_StandIn):
    """A stand-in whose second round fails, as a dead Ray worker's would."""

    def train(self, params: npt.NDArray[np.float32], jobs: Any) -> list[JobResult]:
        self._calls = getattr(self, "_calls", 0) + 1
        if self._calls == 2:
            raise RuntimeError("s56w: a worker failed in round 2")
        return super().train(params, jobs)


def test_the_finished_rounds_of_a_failed_run_record_the_cluster(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A run that fails at `start` (an unreachable RAY_ADDRESS) writes no rounds.json; one
    # that fails after a round writes that round, with the cluster it ran on.
    monkeypatch.setattr(ray_backend, "RayBackend", _FailsSecondRound)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    argv = [*TINY, "--out", str(tmp_path)]
    argv[argv.index("--rounds") + 1] = "2"
    with pytest.raises(RuntimeError, match="s56w: a worker failed in round 2"):
        plume(argv)  # an error `plume sim` does not word goes on as it is
    assert "wrote its 1 finished round" in capsys.readouterr().err
    doc = json.loads((tmp_path / "rounds.json").read_text())
    assert len(doc["rounds"]) == 1
    assert doc["ray_cluster"] == {"address": "10.0.0.5:6379", "from": "RAY_ADDRESS"}
