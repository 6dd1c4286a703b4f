"""`plume coordinator serve --config FILE`: the serve flags from a TOML file (keys are the flags
without their dashes), a flag given on the command line winning over the file, and the file
over the defaults. A mistake in the file (an unknown key, a value its flag refuses, a file that
is not TOML) is one line naming the file and the key, before anything is opened.

Before, serve had no configuration file: an operator wrote every setting on the command line
(the admin token too, visible in `ps`) or in a wrapper script."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from coordinator.cli import main
from coordinator.service import ServiceConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


@pytest.fixture()
def served(monkeypatch: pytest.MonkeyPatch) -> list[tuple[ServiceConfig, str, int, dict]]:
    """What `plume coordinator serve` would serve: (config, host, port, keywords) per call."""
    import coordinator.service as service

    seen: list[tuple[ServiceConfig, str, int, dict]] = []
    monkeypatch.setattr(
        service, "serve", lambda config, host, port, **kw: seen.append((config, host, port, kw))
    )
    monkeypatch.delenv("PLUME_ADMIN_TOKEN", raising=False)
    return seen


def _config(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "plume.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def _serve(*flags: str) -> int:
    try:
        return main(["coordinator", "serve", *flags])
    except SystemExit as exc:  # argparse's usage errors
        return int(exc.code or 0)


def _config_refused(
    capsys: pytest.CaptureFixture[str],
    served: list[tuple[ServiceConfig, str, int, dict]],
    conf: Path,
    *flags: str,
) -> str:
    """`plume coordinator serve *flags --config conf` refuses the file: status 2, nothing
    served, one line on stderr naming the file; that line."""
    code = _serve(*flags, "--config", str(conf))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and served == []
    assert len(err) == 1, err
    assert err[0].startswith(f"plume coordinator serve: error: --config {conf}: "), err
    return err[0]


def test_the_file_sets_the_serve_flags(
    tmp_path: Path, served: list[tuple[ServiceConfig, str, int, dict]]
) -> None:
    # Prepare
    db = tmp_path / "fleet.db"
    conf = _config(
        tmp_path,
        f'db = "{db}"\nhost = "127.0.0.2"\nport = 9090\nadmin-token = "from-file"\n'
        'poll = 3\nkeep_frames = 10\npool-ttl = 120.5\nlog-level = "warning"\n'
        'access-log = "off"\n',
    )
    # Execute
    code = _serve("--config", str(conf))
    # Assert: dashes or underscores, numbers as TOML numbers, each where its flag would put it
    assert code == 0
    ((config, host, port, kw),) = served
    assert (config.db_path, host, port) == (str(db), "127.0.0.2", 9090)
    assert config.admin_token == "from-file"
    assert (config.poll_s, config.keep_frames_rounds, config.pool_ttl_s) == (3.0, 10, 120.5)
    assert kw["log_level"] == "warning" and kw["access_log"] is False


def test_a_flag_on_the_command_line_wins_over_the_file_wherever_it_is(
    tmp_path: Path, served: list[tuple[ServiceConfig, str, int, dict]]
) -> None:
    conf = _config(tmp_path, f'db = "{tmp_path / "a.db"}"\nport = 9090\nregister-burst = 50\n')
    # --register-burst 20 is the default, given explicitly: it still wins
    assert _serve("--port", "9191", "--config", str(conf), "--register-burst", "20") == 0
    ((config, _, port, _),) = served
    assert port == 9191 and config.register_burst == 20
    assert config.db_path == str(tmp_path / "a.db")


def test_a_relative_path_in_the_file_is_relative_to_the_files_folder(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: serve starts elsewhere (systemd starts it in /)
    conf = _config(tmp_path, 'db = "plume.db"\n')
    monkeypatch.chdir("/")
    # Execute
    assert _serve("--config", str(conf)) == 0
    # Assert: the file's folder, not /; a relative --db flag stays relative to where serve runs
    assert served[0][0].db_path == str(tmp_path / "plume.db")
    assert _serve("--config", str(conf), "--db", "other.db") == 0
    assert served[1][0].db_path == "other.db"


def test_the_file_wins_over_the_environments_admin_token(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PLUME_ADMIN_TOKEN", "from-env")
    conf = _config(tmp_path, f'db = "{tmp_path / "a.db"}"\nadmin_token = "from-file"\n')
    assert _serve("--config", str(conf)) == 0
    assert served[0][0].admin_token == "from-file"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("prot = 9090\n", "unknown key 'prot' (did you mean 'port'?)"),
        ("config = 'other.toml'\n", "unknown key 'config'"),
        ("port = '80x'\n", "port = '80x': expected a port number, got '80x'"),
        ("port = 70000\n", "port = 70000: a TCP port is 0-65535, got 70000"),
        ("log-level = 'loud'\n", "log-level = 'loud': choose one of critical, error, warning"),
        ("poll = true\n", "poll = true: give a string or a number"),
        ("access-log = 'no'\n", "access-log = 'no': expected on or off, got 'no'"),
        ("[serve]\nport = 1\n", "[serve] is a table; write the keys at the top of the file"),
        ("port = \n", "it is not TOML (Invalid value (at line 1, column 8))"),
    ],
)
def test_a_mistake_in_the_file_is_one_line_naming_it(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],
    capsys: pytest.CaptureFixture[str],
    text: str,
    words: str,
) -> None:
    # Prepare
    conf = _config(tmp_path, text)
    # Execute / Assert: refused before anything is served or created
    line = _config_refused(capsys, served, conf, "--db", str(tmp_path / "x.db"))
    assert words in line, line
    assert not (tmp_path / "x.db").exists()


def test_a_config_file_that_is_not_there_is_named(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing = tmp_path / "nope.toml"
    assert _serve("--config", str(missing)) == 2
    assert capsys.readouterr().err.strip() == (
        f"plume coordinator serve: error: --config {missing}: no such file"
    )


def test_a_token_in_a_file_others_may_read_gets_a_note(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    conf = _config(
        tmp_path, f'db = "{tmp_path / "a.db"}"\nadmin-token = "t"\n', stat.S_IRUSR | stat.S_IROTH
    )
    assert _serve("--config", str(conf)) == 0
    err = capsys.readouterr().err
    assert f"note: --config {conf} holds the admin token and other users may read it" in err
    # a file only its owner, or its owner and group (root:plume, 0640), reads gets none
    for mode in (0o600, 0o640):
        conf.chmod(mode)
        assert _serve("--config", str(conf)) == 0
        assert "holds the admin token" not in capsys.readouterr().err


def test_the_documented_systemd_unit_starts_serve_with_its_config_file(
    tmp_path: Path, served: list[tuple[ServiceConfig, str, int, dict]]
) -> None:
    # Prepare: the unit's ExecStart, its --config pointed at the documented example file
    import shlex

    text = DOC.read_text()
    unit = re.search(
        r"```ini\n# /etc/systemd/system/plume-coordinator.service\n(.*?)```", text, re.S
    )
    assert unit, "docs/operations.md: the systemd unit is gone"
    (exec_start,) = re.findall(r"^ExecStart=(.*)$", unit.group(1), re.M)
    program, *argv = shlex.split(exec_start)
    assert program.endswith("/bin/plume") and argv[:2] == ["coordinator", "serve"]
    example = re.search(r"```toml\n# /etc/plume/coordinator.toml\n(.*?)```", text, re.S)
    assert example
    conf = _config(tmp_path, example.group(1).replace("/var/lib/plume", str(tmp_path)))
    argv = [str(conf) if a == "/etc/plume/coordinator.toml" else a for a in argv]
    # Execute
    assert main(argv) == 0
    # Assert: served with the file's settings; a mistake in it exits 2, which the unit's
    # RestartPreventExitStatus does not retry
    assert served[0][2] == 8080
    assert "RestartPreventExitStatus=2" in unit.group(1)
    conf.write_text("prot = 1\n")
    assert _serve(*argv[2:]) == 2


def test_the_documented_example_file_is_what_serve_reads(
    tmp_path: Path, served: list[tuple[ServiceConfig, str, int, dict]]
) -> None:
    # Prepare: docs/operations.md's example file, its database moved to tmp_path
    text = DOC.read_text()
    match = re.search(r"```toml\n# /etc/plume/coordinator.toml\n(.*?)```", text, re.S)
    assert match, "docs/operations.md: the example configuration file is gone"
    body = match.group(1).replace("/var/lib/plume/plume.db", str(tmp_path / "plume.db"))
    conf = _config(tmp_path, body)
    # Execute
    assert _serve("--config", str(conf)) == 0
    # Assert: what the doc says it sets
    ((config, host, port, kw),) = served
    assert (host, port, config.keep_frames_rounds, config.poll_s) == ("0.0.0.0", 8080, 50, 3.0)
    assert config.admin_token and kw["tls_cert"] is None
    assert os.path.basename(config.db_path) == "plume.db"


def test_a_tilde_in_the_files_db_is_the_home_folder(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The shell expands ~ in a flag, but nothing did in the file: the store opened ./~/x.db
    monkeypatch.setenv("HOME", str(tmp_path))
    conf = _config(tmp_path, 'db = "~/x.db"\n')
    assert _serve("--config", str(conf)) == 0
    assert served[0][0].db_path == str(tmp_path / "x.db")
