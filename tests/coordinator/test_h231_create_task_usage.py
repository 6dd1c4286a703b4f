"""`plume coordinator create-task` and `plume sim` answer the same flag mistake alike
(helper-222's walkthrough): `plume sim --bits 3` exited 2 with argparse's "invalid choice",
create-task exited 1 with "bits must be one of (...) (--topk/--bits)". A value create-task
refuses itself, before any request, is now a usage mistake (status 2) said as `plume sim`
says it; a coordinator it cannot reach is still status 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.cli import main

_CREATE = ["coordinator", "create-task", "--url", "http://127.0.0.1:9", "--admin-token", "t"]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit status and the text after `error: ` of `plume ARGV`'s one error line."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's refusals
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    return code, lines[0].split(": error: ", 1)[1]


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--bits", "3"], "argument --bits: invalid choice: 3 (choose from 1, 2, 4, 8, 16, 32)"),
        (["--topk", "2"], "--topk must be in (0, 1], got 2.0"),
        (["--model", "foo"], "unknown model 'foo' (--model); choose one of "),
        (["--aggregator", "medain"], "--aggregator 'medain': unknown aggregator 'medain' (did"),
    ],
)
def test_create_task_and_sim_refuse_a_flag_alike(
    flags: list[str], said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: both refuse before any work (no coordinator listens at port 9)
    sim = _run(["sim", "--dataset", "digits", "--out", str(tmp_path / "run"), *flags], capsys)
    create = _run([*_CREATE, *flags], capsys)
    # Assert: the same status and the same sentence
    assert create == sim
    assert create[0] == 2 and create[1].startswith(said), create


@pytest.mark.parametrize(
    "flags",
    [
        ["--downlink-topk", "0"],
        ["--downlink-bits", "3"],
        ["--rounds", "0"],
        ["--secure-bits", "8"],
        ["--secure", "--clients-per-round", "2"],
    ],
)
def test_every_local_refusal_is_status_2(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, said = _run([*_CREATE, "--model", "mlp", *flags], capsys)
    assert code == 2, said
    assert "--" in said, said  # names a flag


def test_a_coordinator_not_reached_is_still_status_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, said = _run([*_CREATE, "--model", "mlp"], capsys)
    assert code == 1
    assert said.startswith("cannot reach the coordinator at http://127.0.0.1:9"), said


def test_the_parsers_bits_are_the_codecs() -> None:
    from compression._config import VALID_BITS
    from coordinator._cli import _CODEC_BITS

    assert _CODEC_BITS == VALID_BITS
