"""`plume coordinator create-task --seed` past 64 bits is named as the flag's error. Before,
the model was built from it first and torch's "Overflow when unpacking long long" was the
whole message."""

from __future__ import annotations

import pytest

from coordinator.cli import main


@pytest.mark.parametrize("seed", ["-1", str(2**63), "99999999999999999999"])
def test_create_task_names_a_seed_out_of_range(
    seed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: refused before any request (the URL is a closed port)
    code = main(
        ["coordinator", "create-task", "--model", "mlp", "--seed", seed]
        + ["--url", "http://127.0.0.1:9", "--admin-token", "t"]
    )
    # Assert
    err = capsys.readouterr().err
    assert code == 2  # a usage mistake, refused before any request (helper-231)
    assert "seed must be in [0, 2**63) (--seed)" in err, err
