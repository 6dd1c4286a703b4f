"""Bad numbers refused where they are given: `lr=True` to the trainers' settings check, and a
`poll_s` that would poll with no pause (0, negative) or sleep for ever (NaN, inf) to
`HttpSecureDevice`. Both were taken before (lr=True trained at lr 1.0)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sdk._data import check_settings
from sdk.secure import HttpSecureDevice, SecureParticipant


@pytest.mark.parametrize("lr", [True, False])
def test_a_bool_lr_is_refused(lr: bool) -> None:
    with pytest.raises(ValueError, match=r"^lr must be a finite number >= 0, not a bool"):
        check_settings(1, 4, lr)


def test_numeric_lrs_still_pass() -> None:
    check_settings(1, 4, 0)
    check_settings(1, 4, 0.05)


@pytest.mark.parametrize("poll_s", [0, 0.0, -0.05, math.nan, math.inf, True, "0.1"])
def test_a_poll_interval_that_is_not_a_positive_finite_number_is_refused(
    poll_s: object,
) -> None:
    with pytest.raises(ValueError, match=r"^poll_s must be a finite number of seconds > 0"):
        HttpSecureDevice(object(), "d0", SecureParticipant(4), poll_s=poll_s)  # type: ignore[arg-type]


def test_a_positive_poll_interval_is_kept() -> None:
    dev = HttpSecureDevice(object(), "d0", SecureParticipant(4), poll_s=0.2)
    assert dev.poll_s == 0.2


def test_an_lr_float32_cannot_hold_is_refused_by_the_torch_trainer_too() -> None:
    # torch raised its own RuntimeError ("value cannot be converted to type float without
    # overflow") mid-step; the ONNX trainer already refused it (helper-72)
    import torch

    from sdk.flat import get_flat_params
    from sdk.trainer import TorchTrainer

    model = torch.nn.Linear(3, 2)
    trainer = TorchTrainer(model)
    params = get_flat_params(model)
    x = np.zeros((4, 3), dtype=np.float32)
    y = np.zeros(4, dtype=np.int64)
    with pytest.raises(ValueError, match=r"^lr must be at most .*the largest float32, got 1e\+39"):
        trainer.train(params, x, y, epochs=1, batch_size=2, lr=1e39, rng=np.random.default_rng(0))
    check_settings(1, 4, float(np.finfo(np.float32).max))  # the largest float32 itself is legal
