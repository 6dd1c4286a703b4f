"""Stop 48, helper-411's review of the operator's command line: create-task flags that were
stored (or dropped) and never used, now refused before any request as usage mistakes (exit
status 2, one line naming the flag):

- finding 2: `--secure --secure-group-aggregator SPEC` without `--secure-group-size` was stored
  and never read, even an invalid SPEC ('medain'); with a group size, an invalid SPEC said
  `secure: unknown aggregator ...`, naming no flag;
- finding 5: `--secure-expected-dropout` without `--secure-noise` (only read to calibrate the
  noise) was accepted and ignored, where `--secure-noise-multiplier` was refused;
- finding 6: `--secure --topk 0.01 --bits 4` was accepted and ignored: the check compared the
  values with the defaults instead of asking whether the flags were given;
- finding 8: `--name ""` silently became the model's name;
- finding 12: "the secure-aggregation options need --secure" named no option.

Nothing listens at the URL: a command that passes every local check ends "cannot reach the
coordinator", status 1."""

from __future__ import annotations

import pytest

from coordinator.cli import main

_CREATE = ["coordinator", "create-task", "--url", "http://127.0.0.1:9", "--admin-token", "t",
           "--model", "mlp", "--rounds", "2", "--clients-per-round", "10"]  # fmt: skip
_UNREACHED = "cannot reach the coordinator at http://127.0.0.1:9"


def _run(flags: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit status and the one error line's text after `error: ` of create-task FLAGS."""
    try:
        code = main([*_CREATE, *flags])
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    assert lines[0].startswith("plume coordinator create-task: error: "), err
    return code, lines[0].split(": error: ", 1)[1]


@pytest.mark.parametrize("spec", ["median", "medain"])
def test_a_group_aggregator_without_a_group_size_is_refused(
    spec: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, said = _run(["--secure", "--secure-group-aggregator", spec], capsys)
    assert code == 2, said
    assert said.startswith("--secure-group-aggregator combines the group sums"), said
    assert "without --secure-group-size it is unused" in said
    assert f"(got --secure-group-aggregator {spec!r})" in said


def test_an_unknown_group_aggregator_names_its_flag(capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--secure", "--secure-group-size", "3", "--secure-group-aggregator", "medain"]
    code, said = _run(flags, capsys)
    assert code == 2
    assert said.startswith(
        "--secure-group-aggregator 'medain': unknown aggregator 'medain' (did you mean 'median'?)"
    ), said


def test_a_group_aggregator_with_its_group_size_passes_the_local_checks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    flags = ["--secure", "--secure-group-size", "3", "--secure-group-aggregator", "fedavg"]
    code, said = _run(flags, capsys)
    assert code == 1 and said.startswith(_UNREACHED), said


@pytest.mark.parametrize("noise", [[], ["--secure-noise", "none"]])
def test_expected_dropout_without_noise_is_refused(
    noise: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, said = _run(["--secure", *noise, "--secure-expected-dropout", "0.2"], capsys)
    assert code == 2, said
    assert said.startswith("--secure-expected-dropout is the dropout the noise of --secure-noise")
    assert "(got --secure-expected-dropout 0.2)" in said


def test_expected_dropout_with_noise_passes_the_local_checks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    flags = ["--secure", "--secure-noise", "discrete_gaussian", "--secure-noise-multiplier",
             "1", "--secure-expected-dropout", "0.2"]  # fmt: skip
    code, said = _run(flags, capsys)
    assert code == 1 and said.startswith(_UNREACHED), said


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--topk", "0.01"], "--topk sets"),  # the default value, typed
        (["--bits", "4"], "--bits sets"),  # the default value, typed
        (["--topk", "0.01", "--bits", "4"], "--topk and --bits set"),
        (["--bits", "8"], "--bits sets"),
    ],
)
def test_the_plain_codec_flags_are_refused_with_secure_whatever_their_value(
    flags: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, said = _run(["--secure", *flags], capsys)
    assert code == 2, said
    assert said.startswith(f"{named} the plain upload codec, which a secure task's devices"), said


def test_the_plain_codec_flags_at_their_defaults_are_fine_without_secure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, said = _run(["--topk", "0.01", "--bits", "4"], capsys)
    assert code == 1 and said.startswith(_UNREACHED), said


def test_an_empty_name_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, said = _run(["--name", ""], capsys)
    assert code == 2
    assert said == "--name must not be empty; leave it out to name the task after --model"


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--secure-fraction", "0.1"], "--secure-fraction needs --secure: "),
        (["--secure-no-sketch"], "--secure-no-sketch needs --secure: "),
        (["--stage-timeout", "20"], "--stage-timeout needs --secure: "),
        (
            ["--secure-bits", "3", "--secure-noise", "skellam"],
            "--secure-bits and --secure-noise need --secure: ",
        ),
    ],
)
def test_a_secure_option_without_secure_is_named(
    flags: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = _run(flags, capsys)
    assert code == 2
    assert text.startswith(said), text
