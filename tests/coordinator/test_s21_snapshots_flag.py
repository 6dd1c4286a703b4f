"""`plume coordinator serve --snapshots-per-version N` sets `ServiceConfig.snapshots_per_version`
(the per-device snapshot limit of 906ab87, which had no serve flag), from the command line or a
--config file; a value out of range is a usage error naming the flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.cli import main
from coordinator.service import ServiceConfig


@pytest.fixture()
def served(monkeypatch: pytest.MonkeyPatch) -> list[ServiceConfig]:
    import coordinator.service as service

    seen: list[ServiceConfig] = []
    monkeypatch.setattr(service, "serve", lambda config, host, port, **kw: seen.append(config))
    monkeypatch.setenv("PLUME_ADMIN_TOKEN", "t" * 32)
    return seen


def _serve(*flags: str) -> int:
    try:
        return main(["coordinator", "serve", *flags])
    except SystemExit as exc:  # argparse's usage errors
        return int(exc.code or 0)


@pytest.mark.parametrize(("flags", "want"), [((), 16), (("--snapshots-per-version", "0"), 0),
                                             (("--snapshots-per-version", "3"), 3)])  # fmt: skip
def test_the_flag_reaches_the_service_config(
    tmp_path: Path, served: list[ServiceConfig], flags: tuple[str, ...], want: int
) -> None:
    # Execute
    code = _serve("--db", str(tmp_path / "p.db"), *flags)
    # Assert
    assert code == 0
    assert served[0].snapshots_per_version == want


def test_the_config_file_sets_it(tmp_path: Path, served: list[ServiceConfig]) -> None:
    # Prepare
    conf = tmp_path / "plume.toml"
    conf.write_text(f'db = "{tmp_path / "p.db"}"\nsnapshots-per-version = 4\n')
    conf.chmod(0o600)
    # Execute
    code = _serve("--config", str(conf))
    # Assert
    assert code == 0
    assert served[0].snapshots_per_version == 4


@pytest.mark.parametrize("value", ["-1", "1000001", "2.5", "many"])
def test_a_value_out_of_range_names_the_flag(
    tmp_path: Path, served: list[ServiceConfig], value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = _serve("--db", str(tmp_path / "p.db"), "--snapshots-per-version", value)
    # Assert
    assert code == 2 and not served
    assert "--snapshots-per-version" in capsys.readouterr().err
