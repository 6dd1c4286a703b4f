"""`plume sim`'s summary line gives the download next to the upload (against the fp32
snapshots), and over HTTP the bytes the devices' requests took on the wire: before, it gave
the upload payload only, so an HTTP run's "NNNx fewer bytes" read as the whole traffic
(helper-266's walkthrough: 534x of payload, 265x of wire bytes, in the README's HTTP run)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from coordinator.cli import main as plume

TINY = [
    "sim", "--dataset", "digits", "--model", "digits_mlp", "--clients", "6", "--per-round",
    "3", "--rounds", "2", "--local-epochs", "1", "--no-progress",
]  # fmt: skip


def _summary(out: str) -> str:
    return next(x for x in out.splitlines() if x.startswith("compressed: final accuracy"))


def test_an_in_process_run_gives_its_download_against_fp32_snapshots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    assert plume([*TINY, "--out", str(tmp_path)]) == 0
    line = _summary(capsys.readouterr().out)

    # Assert: the download and its ratio, from rounds.json's own figures; no wire part in process
    rounds = json.loads((tmp_path / "rounds.json").read_text())["rounds"]
    down = sum(r["bytes_down"] for r in rounds)
    dense = sum(r["dense_down"] for r in rounds)
    # (in process the exact model: the same bytes, stop 48's test_s48_same_bytes.py)
    assert down == dense
    assert f", download {down:,} B (the same as raw fp32 models, 4 B a parameter)" in line
    assert "on the wire" not in line


@pytest.mark.timeout(90)
def test_an_http_run_also_gives_its_wire_bytes_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    assert plume([*TINY, "--transport", "http", "--out", str(tmp_path)]) == 0
    line = _summary(capsys.readouterr().out)

    # Assert: the wire figure is rounds.json's wire_up, above the payload
    rounds = json.loads((tmp_path / "rounds.json").read_text())["rounds"]
    wire = sum(r["wire_up"] for r in rounds)
    assert wire > sum(r["bytes_up"] for r in rounds)
    assert f"; on the wire {wire:,} B up in the rounds (" in line
    assert re.search(r", download [\d,]+ B", line)


@pytest.mark.parametrize(
    ("ratio", "said"),
    [(4.24, "4.2x fewer"), (0.9, "1.1x more"), (0.5, "2.0x more")],  # 1.0: test_s48_same_bytes
)
def test_a_ratio_below_one_says_more_not_fewer(ratio: float, said: str) -> None:
    """Stop 47 (docs review): a secure run's download (its key material besides the model)
    read "0.9x fewer than raw fp32 models", which meant more."""
    from mobile_sim._cli import _times

    assert _times(ratio) == said
    assert _times(ratio, " bytes") == f"{said} bytes"
