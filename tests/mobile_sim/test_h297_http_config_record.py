"""An HTTP run's rounds.json `config` says what its coordinator task ran with (helper-297).

Before, `plume sim --transport http` without `--downlink-topk/--downlink-bits` recorded
`downlink_topk: null, downlink_bits: null` (in process: no downlink compression) while its task
published top-k 0.05 / 8-bit deltas (`http_fleet.DOWNLINK`, or `HttpFleetOptions.downlink`),
and `selection_timeout_s: 900.0` (the realistic fleet's simulated default, unused) while the
task opened rounds after 2 s (`HttpFleetOptions.selection_timeout_s`). Now the result's config
carries the task's values; a dense run keeps null (its downloads are the exact fp32 model, as
in process), and the config's keys are the in-process config's (bench/robustness.py --merge's
`_same_setting` compares key sets).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import sdk.trainer
from coordinator.cli import main as plume
from coordinator.service.admin_client import AdminClient
from mobile_sim import http_fleet
from mobile_sim.runner import SimConfig
from protocol.messages import CodecParams, TaskConfig

TINY = [
    "sim", "--dataset", "digits", "--model", "digits_mlp", "--clients", "4", "--per-round",
    "2", "--rounds", "1", "--local-epochs", "1", "--batch-size", "16", "--partition", "iid",
    "--seed", "5", "--no-progress", "--transport", "http",
]  # fmt: skip

# 4 digits-MLP devices, 2 a round, 2 rounds
CFG = SimConfig(
    dataset="digits",
    model="digits_mlp",
    clients=4,
    per_round=2,
    rounds=2,
    topk=0.1,
    bits=8,
    local_epochs=1,
    batch_size=16,
    partition="iid",
    fleet="off",
    seed=5,
)


@pytest.fixture
def created(monkeypatch: pytest.MonkeyPatch) -> list[TaskConfig]:
    """Each task the fleet creates on its coordinator, as sent."""
    tasks: list[TaskConfig] = []
    create = AdminClient.create_task

    def noting(self: AdminClient, task: TaskConfig, *args: Any, **kwargs: Any) -> Any:
        tasks.append(task)
        return create(self, task, *args, **kwargs)

    monkeypatch.setattr(AdminClient, "create_task", noting)
    return tasks


@pytest.mark.timeout(120)
def test_rounds_json_records_the_downlink_and_selection_timeout_the_task_ran_with(
    tmp_path: Path, created: list[TaskConfig], capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: no downlink flag, and the dense baseline beside it
    out = tmp_path / "run"
    code = plume([*TINY, "--compare-dense", "--out", str(out)])

    # Assert: the compressed run's config has its task's downlink and selection timeout
    assert code == 0, capsys.readouterr().err
    compressed, dense = created
    assert compressed.downlink == http_fleet.DOWNLINK == CodecParams(topk=0.05, bits=8)
    config = json.loads((out / "compressed" / "rounds.json").read_text())["config"]
    assert (config["downlink_topk"], config["downlink_bits"]) == (0.05, 8)
    assert config["selection_timeout_s"] == compressed.selection_timeout_s == 2.0
    # ... the dense run's downlink stays null: exact fp32 downloads (its task's is lossless)
    assert dense.downlink == CodecParams(topk=1.0, bits=32)
    dense_config = json.loads((out / "dense" / "rounds.json").read_text())["config"]
    assert (dense_config["downlink_topk"], dense_config["downlink_bits"]) == (None, None)
    assert dense_config["selection_timeout_s"] == dense.selection_timeout_s
    # ... the keys are those an in-process config records (robustness --merge's key sets)
    assert set(config) == set(dense_config) == set(SimConfig().as_dict())
    # ... and the recorded config rebuilds, making the same task again
    again = SimConfig.from_dict(config)
    spec = _spec()
    opts = http_fleet.HttpFleetOptions()
    assert http_fleet._task_config(again, spec, "", opts).downlink == compressed.downlink
    assert SimConfig.from_dict(dense_config).downlink() is None


@pytest.mark.timeout(120)
def test_the_options_downlink_is_recorded_also_for_a_failed_runs_rounds(
    monkeypatch: pytest.MonkeyPatch, created: list[TaskConfig]
) -> None:
    # Prepare: a library run whose options set the downlink and the selection timeout, failing
    # while its second round is evaluated (its first is kept on the error)
    opts = http_fleet.HttpFleetOptions(
        downlink=CodecParams(topk=0.2, bits=4), selection_timeout_s=3.0
    )
    evaluate = sdk.trainer.evaluate
    calls = []

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("evaluation broke")
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(sdk.trainer, "evaluate", failing)

    # Execute
    with pytest.raises(RuntimeError, match="evaluation broke") as caught:
        http_fleet.run_http_simulation(CFG, progress=False, options=opts)

    # Assert: the finished round's result records the task's downlink and timeout
    (task,) = created
    assert task.downlink == CodecParams(topk=0.2, bits=4)
    finished = caught.value.finished_rounds  # type: ignore[attr-defined]
    assert [r.round for r in finished.records] == [1]
    recorded = finished.config.as_dict()
    assert (recorded["downlink_topk"], recorded["downlink_bits"]) == (0.2, 4)
    assert recorded["selection_timeout_s"] == 3.0
    # ... the config given is left as it was
    assert (CFG.downlink_topk, CFG.downlink_bits, CFG.selection_timeout_s) == (None, None, 900.0)


def test_the_recorded_config_keeps_the_rest_of_the_config() -> None:
    spec = _spec()
    opts = http_fleet.HttpFleetOptions()
    cfg = replace(CFG, downlink_topk=0.1, downlink_bits=4)
    ran = http_fleet._as_ran(cfg, http_fleet._task_config(cfg, spec, "", opts))
    # the config's own downlink is the task's: recorded as given
    assert (ran.downlink_topk, ran.downlink_bits) == (0.1, 4)
    assert ran == replace(cfg, selection_timeout_s=opts.selection_timeout_s)
    plain = http_fleet._as_ran(CFG, http_fleet._task_config(CFG, spec, "", opts))
    assert plain.downlink() == CodecParams(topk=0.05, bits=8).to_config()


def _spec() -> Any:
    from mobile_sim.models import build_model
    from sdk.flat import spec_from_module

    return spec_from_module(build_model("digits_mlp", seed=0))
