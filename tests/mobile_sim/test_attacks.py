"""The attack suite: each attack's maths, the backdoor trigger, and valid frames after crafting."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest

from compression import CodecConfig, ModelSpec, UpdateCodec
from mobile_sim.attacks import (
    ATTACKS,
    AlieAttack,
    BackdoorAttack,
    GaussianAttack,
    IpmAttack,
    LabelFlipAttack,
    ScalingAttack,
    SignFlipAttack,
    alie_z,
    backdoor_accuracy,
    build_attack,
)
from sdk.device import UpdateEncoder

RNG = np.random.default_rng


def benign_set(d: int = 64, n: int = 8) -> list[np.ndarray]:
    rng = RNG(0)
    return [rng.normal(0.5, 0.1, size=d).astype(np.float32) for _ in range(n)]


def test_model_attacks_craft_as_documented() -> None:
    # Prepare
    own = np.arange(1, 5, dtype=np.float32)
    benign = [np.ones(4, np.float32), 3 * np.ones(4, np.float32)]
    rng = RNG(1)
    # Execute / Assert
    np.testing.assert_array_equal(SignFlipAttack().craft(own, benign, rng), -own)
    np.testing.assert_array_equal(ScalingAttack(boost=5).craft(own, benign, rng), 5 * own)
    np.testing.assert_allclose(IpmAttack(epsilon=0.5).craft(own, benign, rng), -np.ones(4))
    g = GaussianAttack(std=2.0).craft(np.zeros(20_000, np.float32), benign, rng)
    assert g.dtype == np.float32 and abs(float(g.std()) - 2.0) < 0.05


def test_alie_sends_mean_minus_z_sigma() -> None:
    benign = benign_set()
    stack = np.stack(benign).astype(np.float64)
    crafted = AlieAttack(z=1.5).craft(benign[0], benign, RNG(0))
    np.testing.assert_allclose(crafted, stack.mean(0) - 1.5 * stack.std(0, ddof=1), rtol=1e-5)


def test_alie_z_follows_baruch_et_al() -> None:
    # s = floor(n/2 + 1) - f, z = Phi^-1((n - s) / n)
    assert alie_z(50, 12) == pytest.approx(NormalDist().inv_cdf((50 - 14) / 50))
    assert alie_z(10, 2) == pytest.approx(NormalDist().inv_cdf(0.6))
    assert alie_z(10, 1) == pytest.approx(0.0, abs=1e-9)
    assert AlieAttack(n=20, f=4).z_value == pytest.approx(alie_z(20, 4))
    assert build_attack("alie", num_clients=20, num_malicious=4).z_value == alie_z(20, 4)  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        alie_z(10, 10)


def test_data_attacks_poison_data_and_leave_updates() -> None:
    x = np.zeros((6, 1, 28, 28), np.float32)
    y = np.arange(6, dtype=np.int64)
    x2, y2 = LabelFlipAttack().poison_data(x, y, RNG(0))
    np.testing.assert_array_equal(y2, 9 - y)
    own = np.ones(3, np.float32)
    np.testing.assert_array_equal(LabelFlipAttack().craft(own, [], RNG(0)), own)
    xs, ys = SignFlipAttack().poison_data(x, y, RNG(0))
    assert xs is x and ys is y


def test_backdoor_stamps_a_checkerboard_on_a_fraction_and_relabels() -> None:
    # Prepare
    rng = RNG(2)
    x = rng.uniform(-0.4, 2.0, size=(10, 1, 28, 28)).astype(np.float32)
    x[0, 0, 0, 0] = 3.0  # the local white
    before = x.copy()
    y = np.full(10, 7, dtype=np.int64)
    attack = BackdoorAttack(target=1, poison_fraction=0.4, size=4, margin=1)
    # Execute
    x2, y2 = attack.poison_data(x, y, RNG(3))
    # Assert
    changed = np.flatnonzero(y2 == 1)
    assert changed.size == 4
    patch = x2[changed[0], 0, 23:27, 23:27]
    assert patch[0, 0] == 3.0 and patch[1, 1] == 3.0 and patch[0, 1] != 3.0
    untouched = np.setdiff1d(np.arange(10), changed)
    np.testing.assert_array_equal(x2[untouched], x[untouched])
    np.testing.assert_array_equal(x, before)  # the caller's data is not modified
    flat = attack.apply_trigger(x.reshape(10, 784))
    assert flat.shape == (10, 784)


def test_backdoor_accuracy_counts_only_non_target_triggered_images() -> None:
    attack = BackdoorAttack(target=0, value=5.0)
    x = np.zeros((4, 1, 28, 28), np.float32)
    y = np.array([0, 1, 2, 3])

    def predict(batch: np.ndarray) -> np.ndarray:
        # "predicts" the target whenever the trigger's top-left pixel is lit, for 2 of 3 images
        lit = batch[:, 0, 23, 23] == 5.0
        out = np.where(lit, 0, 9)
        out[-1] = 9
        return out

    assert backdoor_accuracy(predict, x, y, attack) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        backdoor_accuracy(predict, x[:1], y[:1], attack)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_crafted_updates_encode_to_valid_frames(name: str) -> None:
    # Prepare: the device pipeline the runner uses (clip off, error feedback on, top-k + 4 bits)
    spec = ModelSpec.from_shapes([("w", (40, 25)), ("b", (25,))])
    d = spec.size
    benign = benign_set(d, 6)
    attack = build_attack(name)
    own = benign[0]
    crafted = attack.craft(own, benign, RNG(4))
    encoder = UpdateEncoder(spec, CodecConfig(topk=0.05, bits=4))
    # Execute
    frame, _ = encoder.encode(np.asarray(crafted, np.float32), RNG(5), 10.0)
    decoded = UpdateCodec(spec, CodecConfig(topk=0.05, bits=4)).decode(frame)
    # Assert
    assert crafted.shape == (d,) and crafted.dtype == np.float32
    decoded.validate()
    assert decoded.size == d and 0 < decoded.nnz <= int(np.ceil(0.05 * d))


def test_build_attack_parses_specs_and_rejects_unknowns() -> None:
    assert build_attack("ipm:epsilon=100") == IpmAttack(epsilon=100)
    assert build_attack("backdoor:target=3,boost=2.5") == BackdoorAttack(target=3, boost=2.5)
    assert build_attack("scaling", boost=3.0) == ScalingAttack(boost=3.0)
    assert build_attack("signflip", num_clients=10, num_malicious=2) == SignFlipAttack()
    with pytest.raises(ValueError, match="unknown attack"):
        build_attack("dos")
    with pytest.raises(ValueError, match="unknown parameter"):
        build_attack("ipm:eps=1")
    with pytest.raises(ValueError, match="key=value"):
        build_attack("ipm:1")
