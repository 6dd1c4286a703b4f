"""bench/explore_cnn_speed.py's Winograd experiment rests on its Cook-Toom matrices: if they
were wrong, its timings would be of a wrong convolution. Check them on 2-D correlations
against torch's conv2d, and that a wrong number of interpolation points is refused."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _winograd_matrices():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "s23_explore", ROOT / "bench" / "explore_cnn_speed.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.winograd_matrices


@pytest.mark.parametrize(
    "m, r, points",
    [
        (2, 3, [0.0, 1.0, -1.0]),
        (2, 5, [0.0, 1.0, -1.0, 2.0, -2.0]),
        (4, 5, [0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5]),
    ],
)
def test_two_dimensional_tiles_match_conv2d(m: int, r: int, points: list[float]) -> None:
    at, g, bt = _winograd_matrices()(m, r, points)
    n = m + r - 1
    rng = np.random.default_rng(7)
    d = rng.standard_normal((n, n))
    w = rng.standard_normal((r, r))
    got = at @ ((g @ w @ g.T) * (bt @ d @ bt.T)) @ at.T
    want = torch.nn.functional.conv2d(
        torch.from_numpy(d)[None, None], torch.from_numpy(w)[None, None]
    )[0, 0].numpy()
    assert got.shape == (m, m)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_wrong_number_of_points_is_refused() -> None:
    with pytest.raises(ValueError, match="F\\(2,5\\) needs 5 finite points, got 4"):
        _winograd_matrices()(2, 5, [0.0, 1.0, -1.0, 2.0])


def test_points_that_are_not_distinct_are_refused() -> None:
    # Two equal points make the interpolation singular (a division by zero in G).
    with pytest.raises(ValueError, match="must be distinct"):
        _winograd_matrices()(2, 3, [0.0, 1.0, 1.0])
