"""Figures the export's texts quote (helper-s50's review, findings 5 and 6).

- The file-size cap's message called the largest zoo graph 388 KB, the size of
  shakespeare_lstm_small's training step; `plume export --model shakespeare_lstm` writes one of
  785,912 bytes (the export is reproducible: the command gives the same bytes each time).
- `plume export --help` said an LSTM takes "a minute or two"; shakespeare_lstm takes several
  minutes on a 2-core machine, shakespeare_lstm_small about two.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from coordinator.cli import main
from sdk.ort import ArtifactError, load_manifest
from tests._export_cache import ExportCache, example


def test_the_file_cap_names_the_largest_zoo_graph_and_its_size(
    tmp_path: Path, export_cache: ExportCache
) -> None:
    torch.manual_seed(0)
    export_cache.export(nn.Sequential(nn.Linear(4, 3)), example(2, 4), tmp_path)
    with pytest.raises(ArtifactError) as info:
        load_manifest(tmp_path, max_file_bytes=16)
    message = str(info.value)
    assert message.endswith(
        "(max_file_bytes; Plume's largest zoo graph, the train_step.onnx that `plume export "
        "--model shakespeare_lstm` writes, is about 786 KB)"
    )
    assert "388" not in message


def test_export_help_gives_the_lstm_export_times(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["export", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "a minute or two" not in text
    assert (
        "on a 2-core machine shakespeare_lstm_small takes about 2 minutes and shakespeare_lstm "
        "several minutes" in text
    )
