"""A plugin model that raises while the simulator trains it is one line on every backend
(s49, helper-414's report): `ModelFailed` names the device, the round and the model's own
exception. Before: a pool or Ray worker's failure was one line, the in-process backends'
(sequential, vectorized) a full traceback, and so was the FLOP count at a timing fleet's start.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import torch
from torch import nn

from coordinator.cli import main as plume
from mobile_sim.backends._base import ModelFailed
from mobile_sim.fleet import training_flops_per_sample
from mobile_sim.models import MODELS

_PLUGIN = """\
from torch import nn

from mobile_sim.models import MODELS


class Boom(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 10)

    def forward(self, x):
        if x.shape[0] > 1:  # the fit check and the FLOP count pass one example
            raise RuntimeError("boom in forward\\nits second line")
        return self.lin(x.flatten(1))


MODELS["{name}"] = Boom
"""


@pytest.mark.parametrize("backend", ["sequential", "vectorized", "pool"])
def test_a_model_that_raises_in_training_is_one_line(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a plugin model whose forward raises on a batch
    name = f"s49_boom_{uuid.uuid4().hex[:8]}"
    plugin = tmp_path / f"{name}.py"
    plugin.write_text(_PLUGIN.format(name=name))
    extra = ["--workers", "1"] if backend == "pool" else []
    # Execute (the plugin registers its model in this process: taken out again after, or a
    # later test in the same worker sees a zoo with a model it does not know)
    try:
        code = plume([
            "sim", "--plugin", str(plugin), "--model", name, "--dataset", "digits",
            "--fleet", "off", "--backend", backend, "--rounds", "1", "--clients", "4",
            "--per-round", "2", "--out", str(tmp_path / "out"), *extra,
        ])  # fmt: skip
    finally:
        MODELS.pop(name, None)
    err = capsys.readouterr().err
    # Assert: status 1 and one error line naming the device, the round and the cause, no
    # traceback (before: sequential and vectorized raised it)
    assert code == 1, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert "in round 1 failed: RuntimeError: boom in forward" in lines[0], err
    assert "its second line" not in lines[0] and "ModelFailed" not in lines[0], err


def test_the_flop_count_of_a_model_that_raises_is_a_model_failure() -> None:
    # Prepare: a module whose forward raises a RuntimeError
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    # Execute / Assert: one line naming the sample shape, the model and the cause, chained
    with pytest.raises(ModelFailed) as info:
        training_flops_per_sample(Broken(), (8, 8))
    text = str(info.value)
    assert "one sample of shape (8, 8) through Broken failed" in text
    assert text.endswith("RuntimeError: mat1 and mat2 shapes cannot be multiplied")
    assert isinstance(info.value.__cause__, RuntimeError)
