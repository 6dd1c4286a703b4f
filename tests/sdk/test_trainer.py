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


def test_refused_upload_keeps_the_whole_update_in_the_residual() -> None:
    from compression import CodecConfig
    from sdk.device import UpdateEncoder

    spec = spec_from_module(build_model("digits_mlp"))
    enc = UpdateEncoder(spec, CodecConfig(topk=0.1, bits=4))
    rng = np.random.default_rng(0)
    d1 = rng.standard_normal(spec.size).astype(np.float32)
    enc.encode(d1, rng, 1.0)
    enc.accepted()
    r1 = enc.feedback.residual.copy()
    assert 0 < np.abs(r1).sum() < np.abs(d1).sum()
    d2 = rng.standard_normal(spec.size).astype(np.float32)
    enc.encode(d2, rng, 1.0)
    enc.refused()  # a straggler: nothing reached the model
    np.testing.assert_array_equal(enc.feedback.residual, d2 + r1)
