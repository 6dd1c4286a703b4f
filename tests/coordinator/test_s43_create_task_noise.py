"""A secure task's noise multiplier without noise, or one that is negative or not finite.

`plume coordinator create-task --secure --secure-noise-multiplier 1` without --secure-noise was
accepted and its devices added no noise; `-1` was stored as given. Both are a usage error
now (status 2, one line naming the flags, before any request). `SecureConfig` (so the
service's `parse_secure`, which create-task's 422 and a task's restore use) refuses a
negative or non-finite multiplier with a `ValueError`, noise or not; a positive one without
noise it still takes (existing tests build such configs), as it always did.
"""

from __future__ import annotations

import math

import pytest

from coordinator.cli import main
from coordinator.secure import SecureConfig
from coordinator.service.secure import parse_secure
from protocol.secagg import NoiseKind
from tests.test_cli_ux import _one_error_line

PROG = "plume coordinator create-task"
# Never contacted: every case is refused before any request.
ARGV = ["coordinator", "create-task", "--url", "http://127.0.0.1:9", "--admin-token", "t",
        "--model", "digits_mlp", "--secure"]  # fmt: skip


def _run(flags: list[str]) -> int:
    try:
        return int(main([*ARGV, *flags]) or 0)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize(
    "flags",
    [
        ["--secure-noise-multiplier", "1"],
        ["--secure-noise-multiplier", "1", "--secure-noise", "none"],
    ],
)
def test_a_noise_multiplier_without_noise_is_a_usage_error(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = _run(flags)
    # Assert
    line = _one_error_line(capsys.readouterr().err, PROG)
    assert code == 2
    assert (
        "--secure-noise-multiplier sets the noise of --secure-noise discrete_gaussian or "
        "skellam; without --secure-noise (or with none) no device adds noise"
    ) in line


@pytest.mark.parametrize("z", ["-1", "nan", "inf", "-inf"])
@pytest.mark.parametrize("noise", [[], ["--secure-noise", "skellam"]])
def test_a_negative_or_infinite_noise_multiplier_is_a_usage_error(
    z: str, noise: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = _run([f"--secure-noise-multiplier={z}", *noise])
    # Assert: one line naming the flag and the value
    line = _one_error_line(capsys.readouterr().err, PROG)
    assert code == 2
    assert (
        f"--secure-noise-multiplier must be a finite number >= 0 (0: no noise), got {float(z)}"
        in line
    )


@pytest.mark.parametrize("z", [-1.0, -math.inf, math.inf, math.nan])
def test_the_library_refuses_a_negative_or_infinite_noise_multiplier_without_noise(
    z: float,
) -> None:
    with pytest.raises(ValueError, match=r"noise_multiplier must be a finite number >= 0"):
        SecureConfig(noise_multiplier=z)
    # The service's reading (create-task's 422, a stored task's restore); it refuses a value
    # that is not finite itself, as for every number
    why = (
        r"secure: noise_multiplier must be a finite number >= 0"
        if math.isfinite(z)
        else (r"secure\.noise_multiplier must be a finite number")
    )
    with pytest.raises(ValueError, match=f"^{why}"):
        parse_secure({"noise_multiplier": z}, seed=0, server_lr=1.0)


@pytest.mark.parametrize("z", [-1.0, 0.0, math.inf, math.nan])
def test_the_library_refuses_a_bad_noise_multiplier_with_noise(z: float) -> None:
    with pytest.raises(ValueError, match="noise needs a finite noise_multiplier > 0"):
        SecureConfig(noise=NoiseKind.SKELLAM, noise_multiplier=z, sketch=False)


def test_noise_and_its_multiplier_together_are_accepted() -> None:
    assert SecureConfig().noise_multiplier == 0.0
    assert SecureConfig(noise_multiplier=0.0).noise == NoiseKind.NONE  # 0: no noise
    assert SecureConfig(noise=NoiseKind.SKELLAM, noise_multiplier=1.0, sketch=False).dp
