"""Stop 49: `plume sim --transport http --coordinator URL` checks its URL with the admin
commands' own validator, `coordinator._cli.checked_url`, imported, not copied.

Before, the simulator had checks of its own, fewer than --url's since stop 48: `HTTP://` was
refused ("must start with http:// or https://"), and a port outside 1-65535, a query and a
fragment were taken (the port failed only when connecting; the query became part of every
request's path). Now each of them is refused, or taken, as `plume coordinator status --url`
refuses or takes it, in the same words with --coordinator for --url; the simulator's exit
status for a flag mistake stays 2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coordinator.cli import main

TOKEN = "s49-url-token"

# A tiny run: its flags pass every other usage check.
TINY = [
    "sim", "--dataset", "digits", "--model", "digits_mlp", "--clients", "6", "--per-round",
    "3", "--rounds", "1", "--no-progress", "--transport", "http",
]  # fmt: skip


@pytest.fixture
def no_run(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stop a run at the HTTP fleet, recording the --coordinator URL it was given."""
    import mobile_sim.http_fleet as http_fleet

    given: list[str] = []

    def record(cfg: Any, coordinator_url: str, **_: Any) -> Any:
        given.append(coordinator_url)
        raise KeyboardInterrupt  # ends the run at once; `plume sim` says "interrupted"

    monkeypatch.setattr(http_fleet, "run_http_simulation", record)
    monkeypatch.setattr(
        "mobile_sim.runner.load_dataset",
        lambda *a, **k: pytest.fail("the run went past the usage checks"),
    )
    monkeypatch.setenv("PLUME_ADMIN_TOKEN", TOKEN)
    return given


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit status and the text after `: error: ` of the one error line of `plume ARGV`."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    return code, lines[0].split(": error: ", 1)[1]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:99999",  # taken before, failed only when connecting
        "http://127.0.0.1:0",
        "HTTP://127.0.0.1:70000",
        "http://127.0.0.1:8080?token=x",  # taken before, sent as part of every path
        "http://127.0.0.1:8080/#top",
        "ftp://127.0.0.1:8080",
        "127.0.0.1:8080",
        "http://[::1",
        "http://",
    ],
)
def test_sim_refuses_a_coordinator_url_as_the_admin_commands_refuse_it(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_run: list[str]
) -> None:
    # Prepare: the admin commands' words for the same URL, with their flag's name
    code, admin_says = _error(
        ["coordinator", "status", "--url", url, "--admin-token", TOKEN], capsys
    )
    assert code == 1, admin_says
    # Execute
    code, sim_says = _error([*TINY, "--coordinator", url, "--out", str(tmp_path)], capsys)
    # Assert: a usage mistake, in the same words; no run started
    assert code == 2
    assert sim_says == admin_says.replace("--url", "--coordinator"), sim_says
    assert sim_says.startswith("--coordinator ")
    assert no_run == []


@pytest.mark.parametrize("scheme", ["HTTP", "Http", "hTtPs"])
def test_sim_takes_an_upper_case_scheme_and_asks_the_lower_case_url(
    scheme: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_run: list[str]
) -> None:
    # Prepare: refused before ("--coordinator must start with http:// or https://")
    url = f"{scheme}://127.0.0.1:8080"
    # Execute
    code = main([*TINY, "--coordinator", url, "--out", str(tmp_path)])
    # Assert: the run reached the fleet, with the scheme as the coordinator will be asked
    err = capsys.readouterr().err
    assert code == 130, err
    assert no_run == [f"{scheme.lower()}://127.0.0.1:8080"]


def test_sim_asks_the_coordinator_clis_validator(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_run: list[str],
) -> None:
    # Prepare: the validator of `plume coordinator`, replaced: the sim must say its words
    import coordinator._cli as coordinator_cli

    asked: list[tuple[str, str]] = []

    def checked_url(given: str, flag: str = "--url") -> str:
        asked.append((given, flag))
        raise ValueError(f"{flag} {given!r}: the coordinator CLI's own check")

    monkeypatch.setattr(coordinator_cli, "checked_url", checked_url)
    url = "http://127.0.0.1:8080"
    # Execute
    code, says = _error([*TINY, "--coordinator", url, "--out", str(tmp_path)], capsys)
    # Assert
    assert code == 2
    assert asked == [(url, "--coordinator")]
    assert says == f"--coordinator {url!r}: the coordinator CLI's own check"
