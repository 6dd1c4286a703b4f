"""UpdateEncoder.encode with a finite delta whose sum with the residual overflows float32: the
error-feedback step's ValueError (residual kept), not a RuntimeWarning from the sum first."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from compression import CodecConfig, ModelSpec
from sdk.device import UpdateEncoder


def test_an_overflowing_delta_plus_residual_is_refused_and_the_residual_kept() -> None:
    # Prepare: an encoder whose residual holds float32's largest value in one coordinate.
    spec = ModelSpec.from_shapes([("w", (8,))])
    enc = UpdateEncoder(spec, CodecConfig(topk=0.5, bits=4))
    big = np.finfo(np.float32).max
    enc.feedback.residual[:] = 0.0
    enc.feedback.residual[3] = big
    held = enc.feedback.residual.copy()
    delta = np.zeros(8, dtype=np.float32)
    delta[3] = big  # finite, but delta + residual is +inf

    # Execute: with every warning an error, as the suite runs.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # a socket an earlier test left to the collector is not this code's warning
        warnings.simplefilter("ignore", ResourceWarning)
        with pytest.raises(ValueError, match="residual"):
            enc.encode(delta, np.random.default_rng(0), weight=1.0)

    # Assert: the residual is what it was, and nothing is pending for `refused`.
    np.testing.assert_array_equal(enc.feedback.residual, held)
    enc.refused()
    np.testing.assert_array_equal(enc.feedback.residual, held)
