"""The `plume` command as a new user meets it: help that explains every option, and one clear
`plume CMD: error: ...` line with a non-zero status (no traceback) for each common mistake."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.cli import build_parser, iter_parsers, main
from coordinator.service import ServerThread, ServiceConfig
from tests.coordinator.test_service_support import refused_url

ADMIN = "s3cret-ux"
# A tiny, fast run: 2 rounds of digits_mlp on 6 devices.
TINY = [
    "sim", "--dataset", "digits", "--model", "digits_mlp", "--clients", "6", "--per-round",
    "3", "--rounds", "2", "--local-epochs", "1", "--no-progress",
]  # fmt: skip


def _one_error_line(err: str, prog: str) -> str:
    """The error line of `err`, after checking it is a single `PROG: error:` line."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if f"{prog}: error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def _plume() -> list[str]:
    """The installed `plume` console script, else the same entry point through python -m."""
    script = Path(sys.executable).with_name("plume")
    return [str(script)] if script.exists() else [sys.executable, "-m", "coordinator.cli"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = tmp_path_factory.mktemp("coord") / "plume.db"
    with ServerThread(ServiceConfig(db_path=str(db), admin_token=ADMIN)) as url:
        yield url


# --- help ------------------------------------------------------------------------------------


def test_every_option_of_every_command_says_what_it_does() -> None:
    # Prepare
    parser = build_parser()
    # Execute
    missing = [
        f"{p.prog} {action.option_strings[0]}"
        for p in iter_parsers(parser)
        for action in p._actions
        if action.option_strings and not action.help
    ]
    # Assert
    assert missing == []


def test_sim_help_gives_defaults_choices_and_examples(capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    with pytest.raises(SystemExit) as exc:
        main(["sim", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # unwrap the columns
    # Assert: defaults, units, the choices of closed sets, and examples
    assert exc.value.code == 0
    assert "training rounds (default: 20)" in text
    assert "device SGD learning rate (default: 0.05)" in text
    assert "{iid,dirichlet,shards,natural}" in text and "{1,2,4,8,16,32}" in text
    assert "{sequential,vectorized,pool,ray}" in text
    assert "round deadline, simulated seconds" in text
    assert "device SGD momentum (default: 0.0)" in text  # a zero default is shown too
    assert "examples: plume sim --dataset digits --rounds 30 --lr 0.2" in text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    # Assert
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("plume ")


def test_help_never_shows_the_admin_token_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    monkeypatch.setenv("PLUME_ADMIN_TOKEN", "do-not-print-me")
    # Execute
    for command in (["coordinator", "serve"], ["coordinator", "create-task"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        # Assert
        assert "do-not-print-me" not in capsys.readouterr().out


def test_the_name_lists_in_help_match_the_library() -> None:
    # Prepare
    from coordinator import _cli as coord_cli
    from mobile_sim import _cli as sim_cli
    from mobile_sim.backends import BACKENDS
    from mobile_sim.models import MODELS
    from mobile_sim.runner import DEFAULT_MODEL
    from sdk import _cli as sdk_cli

    # Assert: every zoo model, backend and dataset is named where --help lists them
    assert set(coord_cli._ZOO_MODELS) == set(MODELS)
    assert set(sim_cli._MODELS.split(", ")) == set(MODELS)
    assert set(sim_cli._BACKENDS) == set(BACKENDS)
    assert all(name in sim_cli._DATASETS for name in DEFAULT_MODEL)
    assert set(sdk_cli._INT_INPUT_MODELS) <= set(MODELS)


# --- plume sim mistakes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--per-round", "20"], "--per-round 20 exceeds --clients 6"),
        (["--rounds", "0"], "--rounds must be at least 1, got 0"),
        (["--eval-every", "0"], "--eval-every must be at least 1"),
        (["--warmup-rounds", "-1"], "--warmup-rounds must be >= 0"),
        (["--min-reports", "5"], "--min-reports 5 exceeds --per-round 3"),
        (["--momentum", "-1"], "--momentum must be finite and >= 0, got -1.0"),
        (["--lr", "0"], "--lr must be finite and > 0, got 0.0"),
        (["--topk", "2"], "--topk must be in (0, 1], got 2.0"),
        (["--attack", "alie"], "--attack alie needs --malicious FRACTION"),
        (["--coordinator", "http://x"], "--coordinator URL is only used with --transport http"),
        (["--secure-fraction", "0.1"], "--secure-fraction only applies to secure runs"),
        (["--secure", "--group-aggregator", "median"], "--group-aggregator needs --group-size"),
        (["--secure", "--secure-dropout", "1.5"], "--secure-dropout is a fraction in [0, 1)"),
        (["--secure", "--noise-multiplier", "-1"], "--noise-multiplier must be >= 0"),
        # The secure clip is --secure-clip (it was named --clip-norm, refused with --secure)
        (["--secure", "--secure-clip", "0"], "--secure-clip must be a positive finite number"),
        (["--secure", "--secure-clip", "nan"], "--secure-clip must be a positive finite number"),
        (["--clip-norm", "0"], "--clip-norm must be a positive finite number"),
        (["--dense", "--compare-dense"], "pass one"),
        (["--dense", "--secure"], "cannot be combined with --dense"),
        (
            ["--dense", "--topk", "0.1", "--bits", "8"],
            "--topk, --bits only apply to compressed updates; --dense runs only the dense",
        ),
        (["--ort-fraction", "0.5"], "need --ort-artifacts DIR"),
        (["--ort-artifacts", "/nonexistent/a"], "is not a folder (run `plume export` first)"),
        (["--data-root", "/nonexistent/d"], "--data-root /nonexistent/d is not a folder"),
        (["--aggregator", "trimmed:beta=2"], "--aggregator 'trimmed:beta=2': unknown aggregator"),
        (["--aggregator", "krum:f=abc"], "--aggregator 'krum:f=abc': parameter 'f' needs a number"),
        (["--attack", "nope", "--malicious", "0.2"], "--attack 'nope': unknown attack 'nope'"),
        (
            ["--secure", "--group-size", "3", "--group-aggregator", "nope"],
            "--group-aggregator 'nope': unknown aggregator 'nope'",
        ),
        (["--model", "nope"], "unknown model 'nope'"),
        (["--dataset", "nope", "--model", "mlp"], "unknown dataset 'nope'"),
        (["--job-timeout", "5"], "--job-timeout applies to the pool and ray backends"),
        (["--over-selection", "0.5"], "--over-selection must be in [1, 10]"),
        (["--alpha", "0"], "--alpha must be positive"),
        (["--fleet", "off", "--deadline", "5"], "--deadline needs the simulated clock"),
        # Runs without a simulated clock refuse its flags (they were silently ignored).
        (
            ["--transport", "http", "--fleet", "realistic"],
            "--fleet realistic needs the simulated clock, which only in-process plain runs have",
        ),
        (["--transport", "http", "--fleet", "timing"], "--transport http runs in wall time"),
        (["--secure", "--fleet", "realistic"], "--secure runs in wall time (drop --fleet"),
        (
            ["--transport", "http", "--deadline", "30"],
            "--deadline is in simulated seconds, which --transport http runs do not have",
        ),
        (["--secure", "--deadline", "30"], "which --secure runs do not have"),
        (
            ["--secure", "--attack", "signflip", "--malicious", "0.2"],
            "--attack, --malicious only apply to plain rounds; a --secure run uploads",
        ),
        (["--secure", "--aggregator", "krum"], "--aggregator only applies to plain rounds"),
        (["--secure", "--topk", "0.1"], "--topk only applies to plain rounds"),
        (["--secure", "--no-error-feedback"], "--no-error-feedback only applies to plain"),
        (
            ["--transport", "http", "--backend", "pool"],
            "--backend only applies to --transport inproc",
        ),
        (["--checkin-period", "300"], "--checkin-period only applies with --fleet realistic"),
        (["--partition", "natural"], "--partition natural needs a dataset with its own users"),
        (
            ["--partition", "iid", "--alpha", "0.1"],
            "--alpha only applies with --partition dirichlet",
        ),
        (["--seed", "-1"], "--seed must be >= 0, got -1"),
        (["--model", "mlp"], "--model mlp takes inputs of shape 1x28x28, but digits examples"),
    ],
)
def test_sim_mistakes_are_one_line_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], expected: str
) -> None:
    # Execute
    code = main([*TINY, "--out", str(tmp_path / "run"), *flags])
    err = capsys.readouterr().err
    # Assert: exit 2 (a usage error), one line that names the flag, nothing written
    assert code == 2
    assert expected in _one_error_line(err, "plume sim")
    assert not (tmp_path / "run" / "rounds.json").exists()


def test_sim_with_a_missing_data_folder_says_to_set_plume_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    monkeypatch.setenv("PLUME_DATA", str(tmp_path / "nonexistent"))
    run = ["sim", "--dataset", "mnist", "--rounds", "1", "--no-progress"]
    # Execute: from $PLUME_DATA, then from an empty --data-root
    code = main([*run, "--out", str(tmp_path / "run")])
    captured = capsys.readouterr()
    code_root = main([*run, "--data-root", str(tmp_path), "--out", str(tmp_path / "run")])
    captured_root = capsys.readouterr()
    # Assert: one line naming the file and the setting to fix; no table header printed
    assert (code, code_root) == (1, 1)
    assert "set PLUME_DATA" in _one_error_line(captured.err, "plume sim")
    line = _one_error_line(captured_root.err, "plume sim")
    assert "mnist-t10k" in line and "pass --data-root the folder" in line
    assert captured.out == captured_root.out == ""


def test_sim_with_an_unwritable_out_fails_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: --out names an existing file
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    # Execute
    code = main([*TINY, "--out", str(blocker / "run")])
    captured = capsys.readouterr()
    # Assert: no round ran (no table), one error line
    assert code == 1
    assert "cannot create the output folder --out" in _one_error_line(captured.err, "plume sim")
    assert "round accuracy" not in captured.out


def test_sim_without_progress_still_prints_the_round_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = main([*TINY, "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    # Assert: the header and one row per round, then the summary
    assert code == 0
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("round accuracy"))
    assert [line.split()[0] for line in lines[header + 2 : header + 4]] == ["1", "2"]
    assert "compressed: final accuracy" in out and "\r" not in out


def test_a_secure_run_prints_its_round_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = main([*TINY, "--secure", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    # Assert: the secure runner's rows too, under a [secure] header
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "[secure]" and lines[1].startswith("round accuracy")
    assert [line.split()[0] for line in lines[3:5]] == ["1", "2"]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p, "no rounds.json in"),
        (lambda p: p / "missing", "is not a folder"),
    ],
)
def test_sim_report_on_a_folder_that_is_not_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: object, expected: str
) -> None:
    # Prepare
    folder = make(tmp_path)  # type: ignore[operator]
    # Execute
    code = main(["sim", "report", str(folder)])
    line = _one_error_line(capsys.readouterr().err, "plume sim")
    # Assert
    assert code == 2
    assert expected in line and "RUN_DIR must be the --out folder" in line


def test_sim_against_an_external_coordinator_that_refuses_or_is_absent(
    server: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare
    monkeypatch.setenv("PLUME_ADMIN_TOKEN", "wrong")
    run = [*TINY, "--transport", "http", "--out", str(tmp_path / "run")]
    # Execute
    refused = main([*run, "--coordinator", server])
    refused_line = _one_error_line(capsys.readouterr().err, "plume sim")
    with refused_url() as absent:
        missing = main([*run, "--coordinator", absent])
    missing_line = _one_error_line(capsys.readouterr().err, "plume sim")
    # Assert: exit 1, the reason, and the flag to fix
    assert (refused, missing) == (1, 1)
    assert "refused the admin token" in refused_line
    assert f"cannot reach the coordinator at {absent}" in missing_line
    assert missing_line.endswith("(--coordinator)")


def test_sim_given_a_run_folder_without_report_suggests_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = main(["sim", str(tmp_path)])
    line = _one_error_line(capsys.readouterr().err, "plume sim")
    # Assert
    assert code == 2
    assert line.endswith(f"to rebuild the plots of a run folder: plume sim report {tmp_path}")


# --- plume coordinator mistakes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--db", "/nonexistent/dir/plume.db"], "the folder of --db /nonexistent/dir/plume.db"),
        (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"], "no such file"),
        (["--signature-window", "0"], "--signature-window must be a positive number"),
        (["--poll", "-1"], "--poll must be a positive number"),
        (["--host", "999.1.1.1"], "--host '999.1.1.1' is not an IPv4 address"),
        (["--host", "[::1]"], "--host '[::1]' is not an IPv6 address"),
    ],
)
def test_serve_refuses_bad_flags_before_opening_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], expected: str
) -> None:
    # Execute
    code = main(["coordinator", "serve", "--db", str(tmp_path / "x.db"), *flags])
    # Assert
    assert code == 2
    assert expected in _one_error_line(capsys.readouterr().err, "plume coordinator serve")
    assert not (tmp_path / "x.db").exists()


def test_serve_without_admin_token_says_the_admin_api_is_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: `serve` replaced by a recorder, no token anywhere
    import coordinator.service as service

    seen: list[ServiceConfig] = []
    monkeypatch.setattr(service, "serve", lambda config, *a, **kw: seen.append(config))
    monkeypatch.delenv("PLUME_ADMIN_TOKEN", raising=False)
    # Execute
    code = main(["coordinator", "serve", "--db", str(tmp_path / "x.db")])
    # Assert: it serves, with a note on stderr
    assert code == 0 and len(seen) == 1 and seen[0].admin_token is None
    assert (
        "the admin API (create-task, status, pause, resume, stop, get-model) is off"
        in capsys.readouterr().err
    )


def test_serve_rejects_a_port_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    with pytest.raises(SystemExit) as exc:
        main(["coordinator", "serve", "--port", "70000"])
    # Assert: argparse's usage error, exit 2
    assert exc.value.code == 2
    assert "a TCP port is 0-65535" in capsys.readouterr().err


def test_serve_on_a_port_in_use_says_so(tmp_path: Path) -> None:
    # Prepare: something already listens on the port. A subprocess, because uvicorn
    # reconfigures the logging of the process it runs in.
    plume = _plume()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # Execute
        done = subprocess.run(
            [*plume, "coordinator", "serve", "--db", str(tmp_path / "x.db"), "--port",
             str(port), "--log-level", "critical"],
            capture_output=True, text=True, timeout=120, check=False,
            env={**os.environ, "PLUME_DEBUG": ""},
        )  # fmt: skip
    # Assert
    assert done.returncode == 1
    line = _one_error_line(done.stderr, "plume coordinator serve")
    assert f"port {port} on 127.0.0.1 is already in use" in line and "--port" in line


def test_admin_commands_without_a_server_say_where_they_looked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare + Execute: nothing listens at the URL while status runs
    with refused_url() as url:
        code = main(["coordinator", "status", "--url", url, "--admin-token", ADMIN, "--task", "1"])
    # Assert
    assert code == 1
    line = _one_error_line(capsys.readouterr().err, "plume coordinator status")
    assert f"cannot reach the coordinator at {url}" in line and "coordinator serve" in line


@pytest.fixture()
def foreign_server() -> Iterator[str]:
    """Another HTTP server on loopback: 200 with an HTML page for GET, 501 for POST."""
    import http.server
    import threading

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = b"<html>\n  <body>a   router's   login page</body>\n</html>"
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_admin_commands_against_another_server_say_so_in_one_line(
    foreign_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: a 200 whose body is a web page (its JSON parse used to escape as a ValueError
    # line), and a 501 page (printed whole, over many lines)
    status = main(["coordinator", "status", "--url", foreign_server, "--admin-token", ADMIN,
                   "--task", "1"])  # fmt: skip
    status_line = _one_error_line(capsys.readouterr().err, "plume coordinator status")
    create = main(["coordinator", "create-task", "--url", foreign_server, "--admin-token", ADMIN,
                   "--model", "digits_mlp"])  # fmt: skip
    create_line = _one_error_line(capsys.readouterr().err, "plume coordinator create-task")

    # Assert: exit 1, one line naming what answered and the flag to check
    assert (status, create) == (1, 1)
    assert (
        f"{foreign_server} answered GET /v1/admin/tasks/1 with 200 and a body that is not the "
        "coordinator's JSON (<html> <body>a router's login page</body> </html>); is a Plume "
        "coordinator serving there? (--url)"
    ) in status_line
    assert "answered POST /v1/admin/tasks with 501" in create_line


def test_admin_commands_refuse_a_url_without_scheme(capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    with pytest.raises(SystemExit) as exc:
        main(["coordinator", "pause", "--url", "localhost:8080", "--admin-token", ADMIN,
              "--task", "1"])  # fmt: skip
    # Assert
    assert exc.value.code == 1
    line = _one_error_line(capsys.readouterr().err, "plume coordinator pause")
    assert "--url must start with http:// or https://" in line


def test_create_task_with_a_wrong_admin_token(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = main(["coordinator", "create-task", "--url", server, "--admin-token", "wrong",
                 "--model", "digits_mlp"])  # fmt: skip
    # Assert
    assert code == 1
    line = _one_error_line(capsys.readouterr().err, "plume coordinator create-task")
    assert "refused the admin token" in line and "PLUME_ADMIN_TOKEN" in line


def test_admin_command_on_a_server_without_admin_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a coordinator started without --admin-token
    with ServerThread(ServiceConfig(db_path=str(tmp_path / "plume.db"))) as url:
        # Execute
        code = main(["coordinator", "status", "--url", url, "--admin-token", ADMIN,
                     "--task", "1"])  # fmt: skip
    # Assert
    assert code == 1
    line = _one_error_line(capsys.readouterr().err, "plume coordinator status")
    assert "admin API is off" in line and "restart `plume coordinator serve`" in line


def test_a_refusal_of_the_server_keeps_its_reason(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = main(["coordinator", "status", "--url", server, "--admin-token", ADMIN,
                 "--task", "999"])  # fmt: skip
    line = _one_error_line(capsys.readouterr().err, "plume coordinator status")
    # Assert
    assert code == 1
    assert line.endswith("no task 999 (404 unknown_task, GET /v1/admin/tasks/999)")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--rounds", "0"], "rounds must be in 1..1000000 (--rounds)"),
        (["--min-reports", "20"], "min_reports must be in [1, clients_per_round] (--min-reports)"),
        (["--aggregator", "trimmed:beta=2"], "unknown aggregator 'trimmed'"),
        (["--secure", "--stage-timeout", "-1"], "--stage-timeout must be in (0, 86400]"),
        (["--secure", "--aggregator", "median"], "use --secure-group-size and"),
    ],
)
def test_create_task_checks_the_task_before_contacting_the_server(
    capsys: pytest.CaptureFixture[str], flags: list[str], expected: str
) -> None:
    # Prepare + Execute: nothing listens at the URL, so only a local check can answer
    with refused_url() as url:
        code = main(["coordinator", "create-task", "--url", url, "--admin-token", ADMIN,
                     "--model", "digits_mlp", *flags])  # fmt: skip
    # Assert: refused before any request, a usage mistake (helper-231; it was 1)
    assert code == 2
    line = _one_error_line(capsys.readouterr().err, "plume coordinator create-task")
    assert expected in line and "cannot reach" not in line


# --- plume export mistakes --------------------------------------------------------------------


def test_export_mistakes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    export = ["export", "--model", "digits_mlp", "--no-progress"]
    # Execute + Assert: an unwritable --out, a shape the model cannot take, a stray flag
    assert main([*export, "--out", str(blocker / "out")]) == 1
    line = _one_error_line(capsys.readouterr().err, "plume export")
    # Found before tracing: the first existing path above --out is a file
    assert f"--out {blocker / 'out'}: {blocker} is not a folder" in line
    assert main([*export, "--out", str(tmp_path / "a"), "--input-shape", "3,3"]) == 2
    line = _one_error_line(capsys.readouterr().err, "plume export")
    assert "does not fit model digits_mlp" in line and "--input-shape" in line
    assert main([*export, "--out", str(tmp_path / "b"), "--momentum", "0.5"]) == 2
    line = _one_error_line(capsys.readouterr().err, "plume export")
    assert "--momentum applies with --optimizer momentum" in line
    # 0.9, the value --optimizer momentum takes when not given, too (it exported plain SGD)
    assert main([*export, "--out", str(tmp_path / "b"), "--momentum", "0.9"]) == 2
    line = _one_error_line(capsys.readouterr().err, "plume export")
    assert "--momentum applies with --optimizer momentum" in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# --- the net under every command ----------------------------------------------------------------


def test_an_unexpected_value_error_is_one_line_unless_debugging(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the report step raises what a library would
    from mobile_sim import _cli as sim_cli

    def boom(args: argparse.Namespace) -> int:
        raise ValueError("bad value\nsecond line")

    monkeypatch.setattr(sim_cli, "_report", boom)
    monkeypatch.delenv("PLUME_DEBUG", raising=False)
    # Execute
    code = main(["sim", "report", "x"])
    err = capsys.readouterr().err
    monkeypatch.setenv("PLUME_DEBUG", "1")
    # Assert: exit 2, the first line of the message; PLUME_DEBUG=1 gives the traceback
    assert code == 2 and err == "plume sim: error: bad value\n"
    with pytest.raises(ValueError, match="bad value"):
        main(["sim", "report", "x"])


def test_an_os_error_names_the_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    from mobile_sim import _cli as sim_cli

    def denied(args: argparse.Namespace) -> int:
        raise PermissionError(13, "Permission denied", "/some/file")

    monkeypatch.setattr(sim_cli, "_report", denied)
    monkeypatch.delenv("PLUME_DEBUG", raising=False)
    # Execute
    code = main(["sim", "report", "x"])
    # Assert
    assert code == 1
    assert capsys.readouterr().err == "plume sim: error: /some/file: Permission denied\n"


# --- the real console script --------------------------------------------------------------------


def test_the_console_script_piped_and_on_a_mistake(tmp_path: Path) -> None:
    # Prepare
    plume = _plume()
    env = {**os.environ, "PLUME_DEBUG": ""}
    # Execute: a run piped into another program, and a user mistake
    piped = subprocess.run(
        [*plume, *TINY[:-1], "--threads", "1", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    wrong = subprocess.run(
        [*plume, *TINY, "--per-round", "9", "--out", str(tmp_path / "w")],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    # Assert: stdout is the plain table and summary (the bar lives on stderr); the mistake
    # exits 2 with one line
    assert piped.returncode == 0, piped.stderr
    assert "\r" not in piped.stdout and "\r" not in piped.stderr  # no bar off a terminal
    assert sum(line.split()[:1] in (["1"], ["2"]) for line in piped.stdout.splitlines()) == 2
    assert wrong.returncode == 2
    assert wrong.stderr == "plume sim: error: --per-round 9 exceeds --clients 6: a round " \
        "cannot aggregate more devices than the fleet has\n"  # fmt: skip
