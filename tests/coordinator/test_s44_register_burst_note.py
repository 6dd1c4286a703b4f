"""`plume coordinator serve --register-burst N` without `--register-rate`: the burst is the
bucket the rate refills, so alone it limits nothing. It was taken silently; serve now says so
in a note (it still starts: a config file may set the burst ahead of the rate)."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.cli import main
from coordinator.service import ServiceConfig

NOTE = "limits nothing without a --register-rate"


@pytest.fixture()
def served(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[ServiceConfig]:
    import coordinator.service as service

    seen: list[ServiceConfig] = []
    monkeypatch.setattr(service, "serve", lambda config, host, port, **kw: seen.append(config))
    monkeypatch.setenv("PLUME_ADMIN_TOKEN", "t" * 32)
    monkeypatch.chdir(tmp_path)
    return seen


def _serve(*flags: str) -> int:
    return main(["coordinator", "serve", "--db", "plume.db", *flags])


def test_a_burst_without_a_rate_is_named_in_a_note(
    served: list[ServiceConfig], capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = _serve("--register-burst", "5")
    err = capsys.readouterr().err
    # Assert: it serves, unlimited, and one note names the flag
    assert code == 0 and served[0].register_rate_per_s == 0
    notes = [line for line in err.splitlines() if NOTE in line]
    assert notes == [
        "plume coordinator serve: note: --register-burst 5 limits nothing without a "
        "--register-rate (0, the default, is unlimited); set both to limit registrations per "
        "address (docs/operations.md)"
    ]


def test_a_burst_from_the_config_file_is_named_by_its_key(
    served: list[ServiceConfig], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Prepare
    conf = tmp_path / "plume.toml"
    conf.write_text("register-burst = 50\n")
    conf.chmod(0o600)
    # Execute
    code = _serve("--config", str(conf))
    err = capsys.readouterr().err
    # Assert
    assert code == 0
    assert f"note: --config {conf}: register-burst = 50 {NOTE}" in err


@pytest.mark.parametrize(
    "flags", [(), ("--register-rate", "0.5"), ("--register-rate", "0.5", "--register-burst", "5")]
)
def test_no_note_with_a_rate_or_the_default_burst(
    served: list[ServiceConfig], capsys: pytest.CaptureFixture[str], flags: tuple[str, ...]
) -> None:
    # Execute
    code = _serve(*flags)
    # Assert
    assert code == 0 and NOTE not in capsys.readouterr().err
