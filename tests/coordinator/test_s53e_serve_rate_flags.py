"""`plume coordinator serve` names the one registration flag at fault, with its value. Before,
`--register-rate -1` and `--register-burst 0` both got "--register-rate must be >= 0 and
--register-burst >= 1", naming both flags and neither value, and a rate below 1e-06 or a burst
above 1,000,000 got one sentence about both ("...; got 1e-09 and 20"); `--body-timeout -1` gave
no value. The --config file's keys were already named alone (an operator's walkthrough, s53e)."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.cli import main
from coordinator.service import ServiceConfig

from .test_h113_serve_config import served  # noqa: F401 (served: fixture)

CASES = [
    (["--register-rate", "-1"], "--register-rate must be a number >= 0 and finite (0: unlimited), got -1.0"),
    (["--register-rate", "inf"], "--register-rate must be a number >= 0 and finite (0: unlimited), got inf"),
    (["--register-burst", "0"], "--register-burst must be >= 1, got 0"),
    (
        ["--register-rate", "1e-9"],
        "--register-rate must be 0 (unlimited) or at least 1e-06 per second, got 1e-09",
    ),
    (["--register-burst", "2000000"], "--register-burst at most 1,000,000 is taken, got 2000000"),
    (["--body-timeout", "-1"], "--body-timeout must be a number of seconds >= 0 (0: no limit), got -1.0"),
]  # fmt: skip


@pytest.mark.parametrize(("flags", "line"), CASES)
def test_the_flag_at_fault_is_named_alone_with_its_value(
    tmp_path: Path,
    flags: list[str],
    line: str,
    capsys: pytest.CaptureFixture[str],
    served: list[tuple[ServiceConfig, str, int, dict]],  # noqa: F811
) -> None:
    # Execute
    code = main(["coordinator", "serve", "--db", str(tmp_path / "plume.db"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    # Assert: status 2, nothing served, one line naming only the flag given
    assert code == 2 and served == []
    assert err == [f"plume coordinator serve: error: {line}"]
    other = "--register-burst" if flags[0] == "--register-rate" else "--register-rate"
    assert other not in err[0]
