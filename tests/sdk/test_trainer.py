"""Local torch training and flat-parameter plumbing."""

from __future__ import annotations

import numpy as np
import pytest

from mobile_sim.data import load_digits_data
from mobile_sim.models import build_model
from sdk.flat import get_flat_params, set_flat_params, spec_from_module
from sdk.trainer import TorchTrainer, evaluate


def test_flat_round_trip() -> None:
    m = build_model("mlp")
    spec = spec_from_module(m)
    flat = get_flat_params(m)
    assert flat.shape == (spec.size,) and spec.size == 199_210
    set_flat_params(m, flat * 2)
    np.testing.assert_array_equal(get_flat_params(m), flat * 2)
    with pytest.raises(ValueError):
        set_flat_params(m, flat[:-1])


def test_training_is_deterministic_and_learns() -> None:
    d = load_digits_data()
    trainer = TorchTrainer(build_model("digits_mlp"))
    p0 = get_flat_params(build_model("digits_mlp"))
    acc0, _ = evaluate(trainer.module, p0, d.x_test, d.y_test)
    r1 = trainer.train(
        p0, d.x_train, d.y_train, epochs=3, batch_size=10, lr=0.1, rng=np.random.default_rng(0)
    )
    r2 = trainer.train(
        p0, d.x_train, d.y_train, epochs=3, batch_size=10, lr=0.1, rng=np.random.default_rng(0)
    )
    np.testing.assert_array_equal(r1.params, r2.params)
    acc1, _ = evaluate(trainer.module, r1.params, d.x_test, d.y_test)
    assert r1.num_examples == len(d.x_train)
    assert acc1 > 0.85 > acc0
