"""`bench/robustness.py --resummarise` summarises a results file's backdoor runs with the file's
own backdoor options (s24/r5 F2). It checked only the SimConfig setting and took
--backdoor-seeds, --backdoor-defenses, --backdoor-attacks and --backdoor-malicious from the
invocation, so `--resummarise` without them rewrote robustness_backdoor_20seeds_rebuild.json
(20 seeds) as a 10-seed summary (the default seeds) that still recorded the 20-seed command.
Now the options the file records are used; one given with another value is refused, named.
Every test works on a copy in tmp_path."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
NAME = "robustness_backdoor_20seeds_rebuild"
COMMITTED = ROOT / "bench" / "results" / f"{NAME}.json"
HEADLINE = "collusion:tau=0.3+normbound:q=0.9,init=1+fedavg"
WEAK_DP = "collusion:tau=0.3+dp:clip=1,quantile=0.9,z=0.01,seed=0+fedavg"


def _robustness() -> ModuleType:
    path = ROOT / "bench" / "robustness.py"
    spec = importlib.util.spec_from_file_location("s24j_robustness", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _resummarise(tmp_path: Path, *extra: str) -> dict[str, Any]:
    shutil.copy(COMMITTED, tmp_path / COMMITTED.name)
    argv = ["--skip-matrix", "--name", NAME, "--out", str(tmp_path), "--resummarise", *extra]
    assert _robustness().main(argv) == 0
    out: dict[str, Any] = json.loads((tmp_path / COMMITTED.name).read_text())
    return out


def _without_resummarised(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "resummarised"}


def test_resummarise_without_backdoor_flags_keeps_the_files_20_seeds(tmp_path: Path) -> None:
    # Execute: the reviewer's command (no --backdoor-* flag)
    doc = _resummarise(tmp_path)

    # Assert: exactly the committed summary (20 seeds, 18 meeting the target with weak DP),
    # only `resummarised` says when and how
    committed = json.loads(COMMITTED.read_text())
    assert doc["backdoor_seeds"] == list(range(20))
    assert doc["backdoor_by_defense"][WEAK_DP]["seeds_meeting_target"] == 18
    assert _without_resummarised(doc) == _without_resummarised(committed)
    assert doc["resummarised"]["command"].endswith(f"--out {tmp_path} --resummarise")


def test_the_documented_command_still_gives_the_committed_file(tmp_path: Path) -> None:
    # The command docs/robustness.md gives (the file's own options, written out)
    doc = _resummarise(
        tmp_path,
        "--backdoor-seeds", "0-19", "--backdoor-defenses", HEADLINE, WEAK_DP, "--workers", "1",
    )  # fmt: skip

    committed = json.loads(COMMITTED.read_text())
    assert _without_resummarised(doc) == _without_resummarised(committed)


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--backdoor-seeds", "0-9"], "--backdoor-seeds"),
        (["--backdoor-defenses", HEADLINE], "--backdoor-defenses"),
        (["--backdoor-attacks", "backdoor:target=0,poison_fraction=0.5"], "--backdoor-attacks"),
        (["--backdoor-malicious", "0.05"], "--backdoor-malicious"),
        (["--backdoor-rounds", "10"], "--backdoor-rounds"),
    ],
)
def test_another_backdoor_option_is_refused_by_name(
    tmp_path: Path, extra: list[str], named: str
) -> None:
    # Prepare
    path = tmp_path / COMMITTED.name
    shutil.copy(COMMITTED, path)
    before = path.read_bytes()
    argv = ["--skip-matrix", "--name", NAME, "--out", str(tmp_path), "--resummarise", *extra]

    # Execute
    with pytest.raises(SystemExit) as exc:
        _robustness().main(argv)

    # Assert: one message naming the option and the file's value; the file untouched
    text = str(exc.value)
    assert named in text and str(path) in text
    assert text.count("--backdoor-") == 1
    assert path.read_bytes() == before
