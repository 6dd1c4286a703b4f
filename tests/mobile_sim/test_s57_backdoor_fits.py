"""A backdoor attack on data that cannot take its trigger is refused before round 1 (stop 57).

`SimConfig(dataset="synthetic(1,1)", attack="backdoor", ...)` was accepted and the run failed
inside round 1's first attacker's training ("flat images of 60 features are not square", from
the backend's worker). It now fails as the run starts, naming the attack and the dataset.
"""

from __future__ import annotations

import pytest

from mobile_sim.runner import SimConfig, run_simulation

_MODELS = {"digits": "digits_mlp", "synthetic(1,1)": "synthetic_lr"}


def _config(dataset: str, attack: str) -> SimConfig:
    return SimConfig(
        dataset=dataset, model=_MODELS[dataset], clients=6, per_round=3, rounds=1, local_epochs=1,
        attack=attack, malicious=0.5, seed=0,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("attack", "why"),
    [
        ("backdoor", "flat images of 60 features are not square"),
    ],
)
def test_a_backdoor_on_non_image_data_is_refused_before_any_round(attack: str, why: str) -> None:
    with pytest.raises(ValueError, match=f"attack backdoor does not fit synthetic.*{why}"):
        run_simulation(_config("synthetic(1,1)", attack))


def test_a_trigger_larger_than_the_images_is_refused_before_any_round() -> None:
    # digits are 8x8: a 9px trigger cannot sit in them
    with pytest.raises(ValueError, match="attack backdoor does not fit digits.*9px trigger"):
        run_simulation(_config("digits", "backdoor:size=9"))


def test_a_backdoor_that_fits_still_runs() -> None:
    result = run_simulation(_config("digits", "backdoor"))
    assert len(result.records) == 1
