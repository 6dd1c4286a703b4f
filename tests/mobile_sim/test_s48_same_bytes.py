"""Stop 48, helper-407's review of the simulator: `plume sim`'s summary line said "download
144,600 B (1.0x fewer than raw fp32 models, ...)" when the bytes were the same (an in-process
run downloads the exact model), which read as a saving, and "1.0x more" for a ratio just
under 1. A ratio shown as 1.0x now says "the same as" (or "as many bytes as"), with "about"
when the bytes are not exactly equal, in both directions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator.cli import main as plume
from mobile_sim._cli import _times


@pytest.mark.parametrize(
    ("ratio", "plain", "bytes_"),
    [
        (1.0, "the same as raw fp32", "as many bytes as raw fp32"),
        (1.04, "about the same as raw fp32", "about as many bytes as raw fp32"),
        (1 / 1.04, "about the same as raw fp32", "about as many bytes as raw fp32"),
        (1.06, "1.1x fewer than raw fp32", "1.1x fewer bytes than raw fp32"),
        (1 / 1.06, "1.1x more than raw fp32", "1.1x more bytes than raw fp32"),
        (4.24, "4.2x fewer than raw fp32", "4.2x fewer bytes than raw fp32"),
    ],
)
def test_a_ratio_shown_as_one_says_the_same(ratio: float, plain: str, bytes_: str) -> None:
    assert _times(ratio, than="raw fp32") == plain
    assert _times(ratio, " bytes", "raw fp32") == bytes_


def test_an_in_process_download_of_the_exact_model_is_the_same_as_raw_fp32(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: in process, each download is the exact fp32 model
    code = plume(
        ["sim", "--dataset", "digits", "--clients", "6", "--per-round", "3", "--rounds", "1",
         "--local-epochs", "1", "--no-progress", "--out", str(tmp_path)]
    )  # fmt: skip

    # Assert
    assert code == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("compressed:"))
    rounds = json.loads((tmp_path / "rounds.json").read_text())["rounds"]
    down = sum(r["bytes_down"] for r in rounds)
    assert down == sum(r["dense_down"] for r in rounds)
    assert f", download {down:,} B (the same as raw fp32 models, 4 B a parameter)" in line
    assert "1.0x" not in line
