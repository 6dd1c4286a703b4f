"""Two get-model edges from helper-88's review:
- `--initial x.pt` holding a weights-only dict whose values are not tensors crashed with an
  AttributeError traceback ('float' object has no attribute 'detach'); it is one ValueError.
- Exporting a task stopped before it had a model advised "PUT its initial model", which a
  stopped task refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compression import ModelSpec
from coordinator._cli import _read_initial
from coordinator.service.errors import ApiError
from tests.coordinator.test_h79_stop import _start
from tests.coordinator.test_service_support import task_config


def test_a_pt_file_without_tensors_is_a_value_error(tmp_path: Path) -> None:
    spec = ModelSpec.from_shapes([("w", (2,))])
    path = tmp_path / "x.pt"
    torch.save({"w": 1.0}, path)
    with pytest.raises(ValueError, match="not a state_dict of the task's model"):
        _read_initial(path, spec)


def test_exporting_a_task_stopped_before_its_model_gives_no_put_advice(tmp_path: Path) -> None:
    coord = _start(tmp_path / "p.db")
    task_id = coord.create_task(task_config())
    coord.stop_task(task_id)
    with pytest.raises(ApiError) as refused:
        coord.export_model(task_id, None)
    assert refused.value.status == 409
    assert "has no model" in refused.value.detail and "PUT" not in refused.value.detail
    coord.store.close()
