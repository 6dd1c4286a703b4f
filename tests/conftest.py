"""Shared test settings: deterministic, single-threaded torch, data from ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("PLUME_DATA", str(ROOT.parent / "shared" / "data"))


def pytest_configure(config: pytest.Config) -> None:
    try:
        import torch
    except ImportError:
        return
    # Two cores are shared by the suite; one intra-op thread keeps runs deterministic and fast.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = Path(os.environ["PLUME_DATA"])
    if not (root / "mnist-t10k").exists():
        pytest.fail(f"test data missing at {root}; set PLUME_DATA")
    return root
