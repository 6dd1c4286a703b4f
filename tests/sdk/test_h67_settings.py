"""`check_settings` refuses bools for epochs and batch_size (bool is an int in Python)."""

from __future__ import annotations

import numpy as np
import pytest

from sdk._data import check_settings


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": True}, "epochs must be an integer >= 0, not a bool, got True"),
        ({"epochs": False}, "epochs must be an integer >= 0, not a bool, got False"),
        ({"batch_size": True}, "batch_size must be an integer >= 1, not a bool, got True"),
        ({"batch_size": np.bool_(True)}, "batch_size must be an integer >= 1"),
    ],
)
def test_bool_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    settings: dict[str, object] = {"epochs": 1, "batch_size": 4, "lr": 0.1} | kwargs
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        check_settings(**settings)  # type: ignore[arg-type]


def test_integer_settings_still_pass() -> None:
    check_settings(0, 1, 0.0)
    check_settings(np.int64(3), np.int32(16), 0.5)  # numpy integers are integers
