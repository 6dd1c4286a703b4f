"""Result files say which vector ISA torch's kernels used (two CPUs that both call themselves
"AMD EPYC" differed: AVX-512 and AVX2 only, with twice the round time and other kernel
choices), and docs/benchmarks.md shows it where a file records it."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from mobile_sim.report import machine_info

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import summarize  # noqa: E402


def test_machine_info_records_torch_s_cpu_capability() -> None:
    # Act
    info = machine_info()

    # Assert
    assert info["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_the_summary_names_the_capability_only_where_a_file_records_it() -> None:
    # Prepare
    base = {"cpu": "AMD EPYC", "cores": 2, "memory_gib": 23.5}

    # Act
    with_isa = summarize._machine({"machine": {**base, "torch_cpu_capability": "AVX2"}})
    without = summarize._machine({"machine": base})

    # Assert
    assert with_isa == "AMD EPYC (AVX2), 2 cores, 23.5 GiB"
    assert without == "AMD EPYC, 2 cores, 23.5 GiB"
