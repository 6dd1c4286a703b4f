"""bench/summarize.py: smoke runs are not published, missing commands are not invented, and a
sectioned file's sections keep their own machine (helper-195's audit, helper-199's fix)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _summarize(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("h199_summarize", ROOT / "bench" / "summarize.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "results").mkdir()
    monkeypatch.setattr(module, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(module, "DOC", tmp_path / "benchmarks.md")
    return module


def _write(module: ModuleType, name: str, doc: dict[str, Any]) -> None:
    (module.RESULTS / name).write_text(json.dumps(doc))


MACHINE = {"cpu": "Test CPU", "cores": 2, "memory_gib": 4.0}


@pytest.mark.parametrize(
    "doc",
    [{"quick": True}, {"settings": {"quick": True}}],
    ids=["quick", "settings.quick"],
)
def test_a_quick_canonical_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], doc: Any
) -> None:
    # Before: the smoke run's numbers were rendered into docs/benchmarks.md.
    module = _summarize(tmp_path, monkeypatch)
    _write(module, "secagg.json", {"command": "python bench/secagg.py --quick", **doc})

    assert module.main([]) == 1
    assert not module.DOC.exists()
    assert "secagg.json is from a --quick smoke run" in capsys.readouterr().err
    assert module.main(["--check"]) == 1


def test_a_missing_command_is_not_invented(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: "Command: `python bench/onnx_train.py`" although the file recorded none. Since
    # s24e the docs' command for such a file is shown, marked as the docs' (DOC_COMMANDS,
    # checked against the file by test_s24e_summarize_commands); a file with neither is
    # "not recorded".
    module = _summarize(tmp_path, monkeypatch)
    _write(module, "onnx_train.json", {"machine": MACHINE, "date": "2026-01-01"})
    _write(module, "cli_startup.json", {"machine": MACHINE, "date": "2026-01-01"})
    _write(module, "server_opt.json", {"command": "server_opt.py --seed 3", "arms": {}})
    _write(module, "codec.json", {"command": "python bench/codec.py --reps 50"})

    text = module.render()

    assert "Command: not recorded. Machine: Test CPU" in text.split("## CLI start-up")[1]
    assert (
        "Command: `python bench/onnx_train.py` (from docs/devices.md: the file records no "
        "command). Machine: Test CPU"
    ) in text
    assert "Command: `python bench/server_opt.py --seed 3`." in text
    assert "Command: `python bench/codec.py --reps 50`." in text


def test_sections_show_their_own_machine_and_quick_sections_are_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _summarize(tmp_path, monkeypatch)
    old = {"measured_at": "2026-01-01T00:00:00Z", "machine": {**MACHINE, "cpu": "Old CPU"}}
    old["date"] = "2026-01-01"
    new = {"measured_at": "2026-02-01T00:00:00Z", "machine": MACHINE, "date": "2026-02-01"}
    quick = {"measured_at": "2026-02-02T00:00:00Z", "settings": {"quick": True}}
    doc = {"machine": MACHINE, "date": "2026-02-02", "million_from_section": "million"}
    doc["sections"] = {"million": old, "digits": new, "mnist_quick": quick, "x": {"quick": True}}
    _write(module, "sim_throughput.json", doc)

    text = module.render().split("## Simulator throughput")[1]

    assert "| `million` | 2026-01-01T00:00:00Z, 2026-01-01 on Old CPU" in text
    assert "| `digits` | 2026-02-01T00:00:00Z, 2026-02-01 on Test CPU" in text
    assert "mnist_quick`" not in text
    assert "Left out, --quick smoke runs: mnist_quick, x." in text
    assert "Machine of the last section run: Test CPU" in text


def test_headline_keys_from_a_quick_section_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _summarize(tmp_path, monkeypatch)
    doc = {"mnist_cnn_from_section": "mnist_quick", "sections": {"mnist_quick": {}}}
    _write(module, "sim_throughput.json", doc)

    with pytest.raises(module.QuickResults, match="mnist_quick"):
        module.render()


def test_quick_extras_are_left_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _summarize(tmp_path, monkeypatch)
    arm = {"aggregator": "fedavg", "server_lr": 1.0, "final_accuracy": 0.5}
    arm |= {"best_accuracy": 0.5, "upload_bytes": 10, "accuracy_per_round": [0.5] * 5}
    base = {"command": "python bench/server_opt.py", "settings": {"seed": 0}, "arms": {"a": arm}}
    _write(module, "server_opt.json", base)
    _write(module, "server_opt_seed1.json", {**base, "settings": {"seed": 1}})
    _write(module, "server_opt_seed2_quick.json", {**base, "settings": {"seed": 2}, "quick": True})

    text = module.render()

    assert "Across seeds [0, 1]" in text
