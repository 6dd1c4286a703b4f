"""bench/partition.py: the Dirichlet split's timing benchmark (s55b).

docs/simulator.md quoted the hopeless Dirichlet split's CPU time (1,000 draws) from an ad-hoc
timing. bench/partition.py measures it, against baselines timed in the same run, and writes
bench/results/partition.json. Nothing here is timed: the checks are that its floor baseline
draws exactly the random numbers the split draws, that a --quick run stays off the published
file, that bad options are one clear line, and that the published file records its command
(the script's defaults), machine, load and date.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("s55b_partition", ROOT / "bench" / "partition.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("n_labels", "draws"), [(500, 1), (3_000, 7)])
def test_the_stream_floor_draws_what_the_hopeless_split_draws(n_labels: int, draws: int) -> None:
    # The baseline is honest only if it takes the same random numbers as the split: after
    # both, the generators are in the same state.
    from mobile_sim import partition

    module = _script()
    labels = np.random.default_rng(3).integers(0, 10, n_labels).astype(np.int64)
    split, floor = np.random.default_rng(0), np.random.default_rng(0)
    with pytest.raises(ValueError, match=f"in {draws} draws"):
        partition.dirichlet(labels, 100, 0.001, split, max_tries=draws)
    module.stream_floor(labels, 100, 0.001, floor, draws)
    assert split.bit_generator.state == floor.bit_generator.state
    assert split.random() == floor.random()


def test_a_quick_run_stays_off_the_published_file(tmp_path: Path) -> None:
    module = _script()
    out = tmp_path / "p.json"
    argv = ["--quick", "--max-tries", "3", "--compare-rev", "none", "--out", str(out)]
    assert module.main(argv) == 0
    doc = json.loads(out.read_text())
    assert doc["quick"] is True and "git_commit" in doc
    assert doc["command"] == "python bench/partition.py " + " ".join(argv)
    assert set(doc["results"]) == {"mnist_train", "mnist_x6"}  # --quick: no 10^6 set
    assert doc["results"]["mnist_x6"]["labels"] == 60_000
    assert doc["settings"]["compare_commit"] is None
    assert "dirichlet_hopeless_before" not in doc["results"]["mnist_train"]["cpu_s"]
    assert module.out_file(None, RESULTS / "partition.json", True) == (
        RESULTS / "partition_quick.json"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--repeats", "0"], "--repeats must be at least 1, got 0"),
        (["--max-tries", "-2"], "--max-tries must be at least 1, got -2"),
        (["--alpha", "nan"], "--alpha must be positive and finite, got nan"),
        (["--compare-rev", "no-such-rev"], "--compare-rev 'no-such-rev'"),
    ],
)
def test_bad_options_are_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "partition.py"), *args, "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert proc.returncode in (1, 2), proc.stderr
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


def test_the_published_file_is_the_scripts_defaults_with_its_machine_and_date() -> None:
    module = _script()
    doc = json.loads((RESULTS / "partition.json").read_text())
    assert doc["quick"] is False
    assert doc["command"] == "python bench/partition.py"  # the defaults: what `make bench` runs
    settings = doc["settings"]
    assert settings["max_tries"] == 1000
    assert (settings["repeats"], settings["million_repeats"]) == (3, 1)
    assert settings["compare_rev"] == module.COMPARE_REV
    assert len(settings["compare_commit"]) == 40
    assert {"cpu", "cores", "load_average_start", "load_average_end"} <= set(doc["machine"])
    assert doc["date"].endswith("Z") and doc["started_at"] <= doc["date"]
    assert set(doc["results"]) == {"mnist_train", "mnist_x6", "synthetic_1e6"}
    sizes = {name: r["labels"] for name, r in doc["results"].items()}
    assert sizes == {"mnist_train": 8_000, "mnist_x6": 60_000, "synthetic_1e6": 1_000_000}
    for name, entry in doc["results"].items():
        cpu = entry["cpu_s"]
        runs = settings["million_repeats"] if name == "synthetic_1e6" else settings["repeats"]
        assert all(len(s["runs"]) == runs for s in cpu.values()), name
        ratio = cpu["dirichlet_hopeless"]["median"] / cpu["stream_floor"]["median"]
        assert entry["hopeless_over_stream_floor"] == round(ratio, 3), name
        assert doc[f"{name}_hopeless_cpu_s"] == cpu["dirichlet_hopeless"]["median"], name
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    assert "## Dirichlet partition time" in page
    assert "Command: `python bench/partition.py`. Machine: " in page


def test_simulator_md_quotes_the_published_file() -> None:
    # docs/simulator.md's Dirichlet timing sentence is the published run's, not an ad-hoc one.
    doc = json.loads((RESULTS / "partition.json").read_text())
    text = " ".join((ROOT / "docs" / "simulator.md").read_text().split())
    cpu = {name: r["cpu_s"] for name, r in doc["results"].items()}
    x6 = cpu["mnist_x6"]["dirichlet_hopeless"]
    quoted = [
        f"{x6['median']:.2f} s, the median of 3 runs, {x6['min']:.2f}–{x6['max']:.2f} s",
        f"{cpu['mnist_train']['dirichlet_hopeless']['median']:.2f} s with the 8,000",
        f"about {cpu['synthetic_1e6']['dirichlet_hopeless']['median']:.0f} s with 10^6 labels",
        f"take {cpu['mnist_x6']['stream_floor']['median']:.2f} s and "
        f"{cpu['synthetic_1e6']['stream_floor']['median']:.1f} s in that run",
        f"took {cpu['mnist_x6']['dirichlet_hopeless_before']['median']:.2f} s at 60,000 labels",
        f"({doc['results']['mnist_x6']['hopeless_before_over_now']:.2f}x)",
        f"{cpu['synthetic_1e6']['dirichlet_hopeless_before']['median']:.1f} s at 10^6 "
        f"({doc['results']['synthetic_1e6']['hopeless_before_over_now']:.2f}x)",
        doc["date"][:10],
    ]
    for phrase in quoted:
        assert phrase in text, phrase
