"""s50 review, item 2: `plume sim --transport http --coordinator URL` without $PLUME_ADMIN_TOKEN
printed `setting up: loading ..., registering 100 devices with the coordinator...` and only then
`--coordinator needs an admin token ($PLUME_ADMIN_TOKEN)`. The token is now checked with the
other flags, before any data is loaded, as a usage error (exit status 2), and the line says
which token: the one `plume coordinator serve` was started with."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

import mobile_sim.runner as runner
from coordinator.cli import main as plume

pytest.importorskip("httpx")

RUN = [
    "sim", "--dataset", "digits", "--clients", "4", "--per-round", "2", "--rounds", "1",
    "--local-epochs", "1", "--transport", "http", "--coordinator", "http://127.0.0.1:9",
]  # fmt: skip


def _nothing_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the data was loaded before the token was checked")

    monkeypatch.setattr(runner, "load_dataset", refuse)
    monkeypatch.setattr(runner, "natural_client_count", refuse)


@pytest.mark.parametrize("token", [None, ""])
def test_a_missing_token_is_a_usage_error_before_any_set_up(
    token: str | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare: no token (unset, or set empty); loading any data would fail the test
    if token is None:
        monkeypatch.delenv("PLUME_ADMIN_TOKEN", raising=False)
    else:
        monkeypatch.setenv("PLUME_ADMIN_TOKEN", token)
    _nothing_loaded(monkeypatch)
    out = tmp_path / "out"

    # Execute
    code = plume([*RUN, "--out", str(out)])
    captured = capsys.readouterr()

    # Assert: one error line, no "setting up" line before it, no --out folder made
    assert code == 2
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "plume sim: error: --coordinator needs an admin token: set PLUME_ADMIN_TOKEN to the "
        "token `plume coordinator serve` was started with (its --admin-token, or "
        "PLUME_ADMIN_TOKEN in its environment)"
    ]
    assert not out.exists()


def test_a_natural_split_is_not_counted_before_the_token_either(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # shakespeare without --clients loads the text to count its speakers: not any more first
    monkeypatch.delenv("PLUME_ADMIN_TOKEN", raising=False)
    _nothing_loaded(monkeypatch)
    argv = ["sim", "--dataset", "shakespeare", "--transport", "http"]
    code = plume([*argv, "--coordinator", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--coordinator needs an admin token" in err and "loading" not in err


def test_a_token_a_header_cannot_carry_is_refused_without_echoing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PLUME_ADMIN_TOKEN", "s3cret with spaces")
    _nothing_loaded(monkeypatch)
    out = tmp_path / "out"
    code = plume([*RUN, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("plume sim: error: PLUME_ADMIN_TOKEN must be printable ASCII")
    assert "`plume coordinator serve` was started with" in err
    assert "s3cret" not in err
    assert not out.exists()


def test_a_set_token_passes_the_flag_check(monkeypatch: pytest.MonkeyPatch) -> None:
    # The usage check says nothing of a token it can use (the coordinator judges it)
    from mobile_sim import _cli

    monkeypatch.setenv("PLUME_ADMIN_TOKEN", "s3cret")
    args = _cli_args()
    assert _cli._usage_error(args) is None


def test_the_loopback_coordinator_needs_no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    from mobile_sim import _cli

    monkeypatch.delenv("PLUME_ADMIN_TOKEN", raising=False)
    args = _cli_args(coordinator=False)
    assert _cli._usage_error(args) is None


def _cli_args(coordinator: bool = True) -> argparse.Namespace:
    from coordinator.cli import build_parser

    argv = RUN if coordinator else RUN[: RUN.index("--coordinator")]
    return build_parser().parse_args(argv)
