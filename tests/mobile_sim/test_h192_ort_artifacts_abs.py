"""A relative `ort_artifacts` reaches the backends as an absolute path, made against the
driver's current directory (helper-191: a Ray actor runs in the directory `ray start` ran
in, where the relative path named nothing and the round ended in a RayTaskError)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from mobile_sim.runner import SimConfig, train_context


def _data() -> Any:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 64)).astype(np.float32)
    y = rng.integers(0, 10, 8).astype(np.int64)
    # The test set too: train_context passes it on (the pool and Ray evaluate in workers).
    return SimpleNamespace(x_train=x, y_train=y, x_test=x, y_test=y)


@pytest.mark.parametrize("given", ["art", Path("art"), "./sub/../art"])
def test_relative_ort_artifacts_is_made_absolute(
    given: str | Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = SimConfig(dataset="digits", ort_artifacts=given)  # type: ignore[arg-type]
    ctx = train_context(cfg, _data())
    assert ctx.ort_artifacts is not None
    assert os.path.isabs(ctx.ort_artifacts)
    assert Path(ctx.ort_artifacts) == tmp_path / "art"


def test_absolute_and_absent_ort_artifacts_are_kept(tmp_path: Path) -> None:
    folder = str(tmp_path / "art")
    assert (
        train_context(SimConfig(dataset="digits", ort_artifacts=folder), _data()).ort_artifacts
        == folder
    )
    assert train_context(SimConfig(dataset="digits"), _data()).ort_artifacts is None
