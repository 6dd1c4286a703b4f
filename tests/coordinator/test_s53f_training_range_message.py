"""validate_task names the one training field out of range, its bounds and its value (a Python
caller of Coordinator.create_task got "training.local_epochs and training.batch_size out of
range" for either, with no bound and no value)."""

from __future__ import annotations

import dataclasses

import pytest

from coordinator.service.rounds import validate_task
from protocol.messages import MAX_BATCH_SIZE, MAX_LOCAL_EPOCHS

from .test_service_support import task_config


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("local_epochs", 0, f"training.local_epochs must be in 1..{MAX_LOCAL_EPOCHS}, got 0"),
        ("local_epochs", MAX_LOCAL_EPOCHS + 1, f"got {MAX_LOCAL_EPOCHS + 1}"),
        ("batch_size", 0, f"training.batch_size must be in 1..{MAX_BATCH_SIZE}, got 0"),
        ("batch_size", -(10**400), "training.batch_size must be in 1..1000000, got -1e+400"),
    ],
    ids=["epochs_0", "epochs_over", "batch_0", "batch_huge"],
)
def test_an_out_of_range_training_field_is_named_with_its_bounds(
    field: str, value: int, message: str
) -> None:
    cfg = task_config()
    bad = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, **{field: value}))
    with pytest.raises(ValueError) as caught:
        validate_task(bad)
    assert message in str(caught.value)
    other = "batch_size" if field == "local_epochs" else "local_epochs"
    assert other not in str(caught.value)


def test_the_bounds_themselves_pass() -> None:
    cfg = task_config()
    for epochs, batch in ((1, 1), (MAX_LOCAL_EPOCHS, MAX_BATCH_SIZE)):
        training = dataclasses.replace(cfg.training, local_epochs=epochs, batch_size=batch)
        validate_task(dataclasses.replace(cfg, training=training))
