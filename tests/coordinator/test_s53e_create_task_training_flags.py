"""`plume coordinator create-task` names `--local-epochs` or `--batch-size` alone, with its
bounds and value. Before, either out of range got the task check's "training.local_epochs and
training.batch_size out of range (--local-epochs/--batch-size)": both flags, no bound, no value
(an operator's walkthrough, s53e). The bounds are the coordinator's own."""

from __future__ import annotations

import pytest

from coordinator.cli import main
from coordinator.service.rounds import validate_task
from protocol.messages import MAX_BATCH_SIZE, MAX_LOCAL_EPOCHS, TrainingParams

from .test_service_support import task_config

# Nothing listens on port 9 (discard) here; a request would fail with status 1, not 2.
URL = "http://127.0.0.1:9"


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--local-epochs", "0"], "--local-epochs must be in 1..1000, got 0"),
        (["--local-epochs", "1001"], "--local-epochs must be in 1..1000, got 1001"),
        (["--batch-size", "0"], "--batch-size must be in 1..1000000, got 0"),
        (["--batch-size", "1000001"], "--batch-size must be in 1..1000000, got 1000001"),
    ],
)
def test_the_training_flag_at_fault_is_named_with_its_bounds(
    flags: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: refused before any request (status 2)
    code = main(
        ["coordinator", "create-task", "--url", URL, "--admin-token", "t", "--model", "mlp", *flags]
    )
    err = capsys.readouterr().err.strip().splitlines()
    # Assert
    assert code == 2
    assert err == [f"plume coordinator create-task: error: {line}"]


def test_the_bounds_are_the_ones_the_coordinator_checks() -> None:
    for epochs, batch in ((MAX_LOCAL_EPOCHS, MAX_BATCH_SIZE), (1, 1)):
        validate_task(task_config(training=TrainingParams(epochs, batch, 0.1)))
    for epochs, batch in ((MAX_LOCAL_EPOCHS + 1, 1), (1, MAX_BATCH_SIZE + 1), (0, 1), (1, 0)):
        with pytest.raises(ValueError):
            validate_task(task_config(training=TrainingParams(epochs, batch, 0.1)))
