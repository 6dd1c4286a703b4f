"""`plume sim` refuses bad attack parameters, --malicious, --threads, --coordinator and --seed
values as one-line usage errors (exit 2) before any data is loaded (docs/robustness.md,
"Attack suite").

Before: `--attack signflip:scale=inf` (scaling's boost=1e39, ipm's epsilon=inf, gaussian's
std=nan, alie's z=nan) failed in round 1 with "delta + residual is not finite" and
`gaussian:std=-1` with numpy's "scale < 0"; `--malicious -0.1` said "needs --malicious
FRACTION"; `--threads 100000` made OpenBLAS fail and then segfaulted; a malformed
`--coordinator` URL was an httpx.InvalidURL traceback; `--seed 99999999999999999999` said
"Overflow when unpacking long long" without naming --seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coordinator.cli import main
from mobile_sim.attacks import MAX_FACTOR, build_attack

TINY = [
    "sim", "--dataset", "digits", "--model", "digits_mlp", "--clients", "6", "--per-round",
    "3", "--rounds", "1", "--local-epochs", "1", "--no-progress",
]  # fmt: skip


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "plume sim: error:" in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def no_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the run gets as far as loading data or setting torch's threads."""
    import torch

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the run went past the usage checks")

    monkeypatch.setattr("mobile_sim.runner.load_dataset", refuse)
    monkeypatch.setattr(torch, "set_num_threads", refuse)
    monkeypatch.setattr("mobile_sim.backends._base.usable_cpus", lambda: 2)


def _sim_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str]) -> str:
    code = main([*TINY, "--out", str(tmp_path / "run"), *flags])
    err = capsys.readouterr().err
    assert code == 2, err
    assert not (tmp_path / "run" / "rounds.json").exists()
    return _one_error_line(err)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("signflip:scale=inf", "signflip needs a finite scale with |scale| <= 1e6"),
        ("signflip:scale=-1e7", "signflip needs a finite scale with |scale| <= 1e6"),
        ("scaling:boost=1e39", "scaling needs a finite boost with |boost| <= 1e6"),
        ("ipm:epsilon=inf", "ipm needs a finite epsilon with |epsilon| <= 1e6"),
        ("gaussian:std=nan", "gaussian needs a finite std in [0, 1e6]"),
        ("gaussian:std=-1", "gaussian needs a finite std in [0, 1e6], got -1"),
        ("alie:z=nan", "alie needs a finite z with |z| <= 1e6"),
        ("backdoor:boost=inf", "backdoor needs a finite boost with |boost| <= 1e6"),
    ],
)
def test_build_attack_refuses_a_factor_that_is_not_finite_or_too_large(
    spec: str, expected: str
) -> None:
    with pytest.raises(ValueError) as exc:
        build_attack(spec)
    assert expected in str(exc.value)


def test_build_attack_takes_factors_up_to_the_bound() -> None:
    assert build_attack(f"signflip:scale={-MAX_FACTOR}").scale == -MAX_FACTOR  # type: ignore[attr-defined]
    assert build_attack("scaling:boost=1e6").boost == 1e6  # type: ignore[attr-defined]
    assert build_attack("gaussian:std=0").std == 0  # type: ignore[attr-defined]
    assert build_attack("ipm:epsilon=-0.5").epsilon == -0.5  # type: ignore[attr-defined]
    assert build_attack("alie", num_clients=10, num_malicious=2).z is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "signflip:scale=inf",
            "--attack 'signflip:scale=inf': signflip needs a finite scale with |scale| <= 1e6 "
            "(beyond that, crafted updates overflow float32), got inf",
        ),
        ("scaling:boost=1e39", "--attack 'scaling:boost=1e39': scaling needs a finite boost"),
        ("ipm:epsilon=inf", "--attack 'ipm:epsilon=inf': ipm needs a finite epsilon"),
        ("gaussian:std=nan", "--attack 'gaussian:std=nan': gaussian needs a finite std"),
        ("gaussian:std=-1", "gaussian needs a finite std in [0, 1e6], got -1"),
        ("alie:z=nan", "--attack 'alie:z=nan': alie needs a finite z"),
    ],
)
def test_sim_refuses_a_bad_attack_parameter_before_any_round(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_run: None,
    spec: str,
    expected: str,
) -> None:
    line = _sim_error(tmp_path, capsys, ["--attack", spec, "--malicious", "0.34"])
    assert expected in line


@pytest.mark.parametrize("value", ["-0.1", "nan", "1"])
def test_sim_malicious_out_of_range_says_the_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_run: None, value: str
) -> None:
    line = _sim_error(tmp_path, capsys, ["--attack", "signflip", "--malicious", value])
    assert f"--malicious must be a fraction in [0, 1), got {float(value):g}" in line
    assert "needs --malicious" not in line


def test_sim_attack_without_malicious_still_says_it_needs_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_run: None
) -> None:
    line = _sim_error(tmp_path, capsys, ["--attack", "signflip"])
    assert "--attack signflip needs --malicious FRACTION" in line


def test_sim_threads_are_capped_at_four_per_cpu(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_run: None
) -> None:
    # usable_cpus() is 2 here (no_run): at most 8 threads
    line = _sim_error(tmp_path, capsys, ["--threads", "100000"])
    assert (
        "--threads must be at most 4 per CPU this process may use (8 with its 2 CPUs), got 100000"
        in line
    )
    assert "--threads must be at most 4 per CPU" in _sim_error(tmp_path, capsys, ["--threads", "9"])


def test_sim_threads_help_states_the_bound(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["sim", "--help"])
    assert "most 4 per CPU this process may use" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://[::1", "--coordinator 'http://[::1' is not a valid URL: Invalid port"),
        ("http://", "--coordinator 'http://' is not a valid URL: it names no host"),
    ],
)
def test_sim_malformed_coordinator_url_is_a_usage_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_run: None,
    url: str,
    expected: str,
) -> None:
    monkeypatch.setenv("PLUME_ADMIN_TOKEN", "s43-token")
    line = _sim_error(tmp_path, capsys, ["--transport", "http", "--coordinator", url])
    assert expected in line


@pytest.mark.parametrize("seed", [str(2**63), "99999999999999999999"])
def test_sim_seed_beyond_63_bits_names_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_run: None, seed: str
) -> None:
    line = _sim_error(tmp_path, capsys, ["--seed", seed])
    assert f"--seed must be in [0, 2**63), got {seed}" in line


def test_sim_largest_seed_passes_the_usage_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_run: None
) -> None:
    # 2**63 - 1 gets past the checks (to loading the data, which no_run stops)
    with pytest.raises(AssertionError, match="past the usage checks"):
        main([*TINY, "--out", str(tmp_path / "run"), "--seed", str(2**63 - 1)])


@pytest.mark.parametrize("out", ["", "  "])
def test_sim_empty_out_is_a_usage_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_run: None,
    out: str,
) -> None:
    # "" was the current folder: the run removed an earlier run's rounds.json there
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rounds.json").write_text("{}")
    code = main([*TINY, "--out", out])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--out must name a folder (got an empty one)" in _one_error_line(err)
    assert (tmp_path / "rounds.json").read_text() == "{}"
