"""What a new user ran into walking through the README and docs with the `plume` command: a
mistyped option, Ctrl-C, a run the privacy budget stops, flags that were silently ignored,
artifacts of the wrong loss, and error lines that named no flag."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from coordinator.cli import main

# A tiny, fast run: 2 rounds of digits_mlp on 6 devices, 3 a round.
TINY = [
    "sim", "--dataset", "digits", "--model", "digits_mlp", "--clients", "6", "--per-round",
    "3", "--rounds", "2", "--local-epochs", "1", "--no-progress",
]  # fmt: skip
# What TINY's default --topk 0.01 prints first: 24 values an upload (test_s51_cli_few_kept.py)
FEW_KEPT_NOTE = (
    "plume sim: note: --topk 0.01 keeps 24 of digits_mlp's 2,410 parameters in each upload, so "
    "few that the compressed run can end far below dense fp32; a larger --topk keeps more, "
    "e.g. --topk 0.1 (241 values) (and for digits a larger --lr than 0.05: the README's digits "
    "run uses --lr 0.2 --rounds 30)"
)


def _error_line(err: str, prog: str) -> str:
    """The one `PROG: error:` line of `err` (and no traceback)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if f"{prog}: error:" in line]
    assert len(lines) == 1, err
    return lines[0]


# --- a mistyped option -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "prog", "expected"),
    [
        (["sim", "--per_round", "3"], "plume sim", "--per_round (did you mean --per-round?)"),
        (
            ["coordinator", "serve", "--prot", "8080"],
            "plume coordinator serve",
            "--prot 8080 (did you mean --port?)",
        ),
        (["sim", "report", "runs/x", "extra"], "plume sim", "unrecognized arguments: extra"),
    ],
)
def test_an_unknown_option_is_refused_by_its_command_with_a_suggestion(
    capsys: pytest.CaptureFixture[str], argv: list[str], prog: str, expected: str
) -> None:
    # Execute
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    # Assert: the command's own usage and error line (it was `plume: error:` with the top-level
    # usage, which did not say which command the option was typed for)
    assert exit_info.value.code == 2
    assert expected in _error_line(err, prog)
    assert f"usage: {prog} " in err


def test_a_usage_error_of_a_command_with_many_options_fits_on_a_screen(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Execute: `plume sim` (60 options) and `plume export` (a handful)
    with pytest.raises(SystemExit):
        main(["sim", "--bits", "3"])
    sim_err = capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "--model", "mlp"])
    export_err = capsys.readouterr().err
    # Assert: sim's 24-line usage is one line saying where it is; export's stays whole
    assert sim_err.splitlines() == [
        "usage: plume sim [OPTIONS] (`plume sim --help` lists them)",
        "plume sim: error: argument --bits: invalid choice: 3 (choose from 1, 2, 4, 8, 16, 32)",
    ]
    assert "[--input-shape D1,D2,...]" in export_err
    assert "plume export: error: the following arguments are required: --out" in export_err


def test_a_run_piped_into_head_ends_quietly(tmp_path: Path) -> None:
    # Prepare: `plume sim ... | head -1`, with rounds enough to outlast the reader
    script = Path(sys.executable).with_name("plume")
    plume = [str(script)] if script.exists() else [sys.executable, "-m", "coordinator.cli"]
    argv = [*TINY[:-1], "--rounds", "200", "--no-progress", "--out", str(tmp_path / "run")]
    env = {**os.environ, "PLUME_DEBUG": ""}
    # Execute: read one line, then close the pipe
    with subprocess.Popen(
        [*plume, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read()
        code = proc.wait(timeout=120)
    # Assert: the status of a SIGPIPE death and nothing on stderr but the few-kept note, said
    # before the run (it was "plume sim: error: [Errno 32] Broken pipe")
    assert first == "[compressed]\n"
    assert code == 141
    assert err == FEW_KEPT_NOTE + "\n"


# --- Ctrl-C ----------------------------------------------------------------------------------


def test_ctrl_c_in_a_run_says_how_far_it_got_and_writes_the_finished_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the real runner, whose first round meets Ctrl-C as it is printed
    import mobile_sim.runner as runner

    real = runner.run_simulation

    def interrupted(cfg: Any, progress: bool, label: str, on_round: Any) -> Any:
        def ctrl_c(rec: Any) -> None:
            on_round(rec)
            raise KeyboardInterrupt

        return real(cfg, progress=progress, label=label, on_round=ctrl_c)

    monkeypatch.setattr(runner, "run_simulation", interrupted)
    out = tmp_path / "run"
    # Execute
    code = main([*TINY, "--out", str(out)])
    captured = capsys.readouterr()
    # Assert: exit 130, one line in the `plume sim:` form naming what it wrote (after the
    # few-kept note, said before the run), the finished row printed, and the finished round
    # on disk, marked interrupted (not a completed run)
    assert code == 130
    lines = [line for line in captured.err.splitlines() if line.strip()]
    plots = ", ".join(
        str(out / name)
        for name in ("accuracy_vs_upload_bytes.png", "bytes_per_round.png", "round_durations.png")
    )
    assert lines == [
        FEW_KEPT_NOTE,
        f"plume sim: interrupted after 1 of 2 rounds; wrote its 1 finished round to {out}/ "
        f"(rounds.json with summary.interrupted true, rounds.csv, ledger.csv) and {plots}",
    ]
    assert "round accuracy" in captured.out
    assert "final accuracy" not in captured.out
    summary = json.loads((out / "rounds.json").read_text())["summary"]
    assert (summary["interrupted"], summary["rounds"], summary["rounds_planned"]) == (True, 1, 2)
    assert (out / "rounds.csv").read_text().count("\n") == 2  # the header and round 1
    assert (out / "ledger.csv").is_file()


def test_ctrl_c_in_the_dense_run_of_compare_dense_points_at_the_finished_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the compressed run is real, the dense one is interrupted before its first round;
    # the dense folder holds a rounds.json of an earlier run, which the run removes before
    # round 1 (test_s24c_out_replaced.py): the line no longer has one to point at
    import mobile_sim.runner as runner

    real = runner.run_simulation

    def dense_interrupted(cfg: Any, progress: bool, label: str, on_round: Any) -> Any:
        if cfg.dense:
            raise KeyboardInterrupt
        return real(cfg, progress=progress, label=label, on_round=on_round)

    monkeypatch.setattr(runner, "run_simulation", dense_interrupted)
    out = tmp_path / "run"
    (out / "dense").mkdir(parents=True)
    (out / "dense" / "rounds.json").write_text("{}")
    # Execute
    code = main([*TINY, "--compare-dense", "--out", str(out)])
    err = capsys.readouterr().err
    # Assert
    assert code == 130
    line = next(line for line in err.splitlines() if "interrupted" in line)
    assert line.startswith(
        "plume sim: interrupted after 0 of 2 rounds of the dense run; no round finished, so "
        "nothing was written"
    )
    assert f"(the compressed run is in {out / 'compressed'})" in line
    assert "earlier run" not in line
    assert not (out / "dense" / "rounds.json").exists()
    assert (out / "compressed" / "rounds.json").is_file()


def test_compare_dense_names_the_folders_it_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = main([*TINY, "--compare-dense", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    # Assert: the CSV and JSON files are in one subfolder per run, not in --out itself
    assert code == 0
    assert f"wrote {tmp_path / 'run'}/{{compressed,dense}}/ (rounds.json" in out
    # The baseline's line says what its ratio compares (it read "dense: ... 1.3x fewer bytes
    # than dense fp32")
    dense_line = next(line for line in out.splitlines() if line.startswith("dense: final"))
    assert "(fp32 frames through zstd: " in dense_line and "than raw fp32)" in dense_line
    assert (tmp_path / "run" / "dense" / "rounds.json").is_file()
    assert not (tmp_path / "run" / "rounds.json").exists()


# --- differential privacy --------------------------------------------------------------------


def test_a_run_the_privacy_budget_stops_says_why_it_ended_early(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: z = 2 with 3 of 6 devices a round costs epsilon 4.09 for one round, 5.97 for
    # two, so a budget of 5 pays for one of the two rounds asked for
    dp = "dp:clip=1,z=2.0,population=6,sample=3,denom=3,eps=5,seed=0+fedavg"
    # Execute
    code = main([*TINY, "--aggregator", dp, "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    # Assert: it used to print the summary of 1 round with no word about the second
    assert code == 0
    assert (
        "compressed: stopped after 1 of 2 rounds: the privacy budget of --aggregator dp (eps=) "
        "is spent (epsilon 4.09 at delta 1e-05)"
    ) in out


def test_a_privacy_budget_that_cannot_pay_for_one_round_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: one round costs epsilon 4.09, the budget is 3
    dp = "dp:clip=1,z=2.0,population=6,sample=3,denom=3,eps=3,seed=0+fedavg"
    # Execute
    code = main([*TINY, "--aggregator", dp, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    # Assert: it was a PrivacyBudgetExhausted traceback
    assert code == 2
    line = _error_line(err, "plume sim")
    assert "round 1 would reach epsilon 4.086 > budget 3.0" in line
    assert "raise eps= or z=" in line


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        # Used to run without noise, as if --noise-multiplier had not been given.
        (["--noise-multiplier", "1"], "--noise-multiplier sets the noise of --dp-noise"),
        (["--dp-noise", "gaussian"], "--dp-noise gaussian needs --noise-multiplier Z > 0"),
        (
            ["--dp-noise", "skellam", "--noise-multiplier", "-1"],
            "--noise-multiplier must be >= 0, got -1.0",
        ),
    ],
)
def test_secure_dp_noise_flags_that_do_not_go_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], expected: str
) -> None:
    # Execute
    code = main([*TINY, "--secure", *flags, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    # Assert
    assert code == 2
    assert expected in _error_line(err, "plume sim")
    assert not (tmp_path / "run").exists()


def test_an_unknown_dp_noise_is_named_before_any_data_is_loaded(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Execute
    code = main([*TINY, "--secure", "--dp-noise", "laplace"])
    # Assert: it was "--dp-noise must be one of ['gaussian', 'none', 'skellam'], ..." once the
    # run had loaded its data
    assert code == 2
    line = _error_line(capsys.readouterr().err, "plume sim")
    assert "--dp-noise must be none, gaussian or skellam, got 'laplace'" in line


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            ["--clients", "2000", "--partition", "iid"],
            "2000 clients but only 1438 examples: every client needs at least one; lower --clients",
        ),
        (
            ["--clients", "700", "--alpha", "0.01"],
            "left some client with < 2 examples in 1000 draws; raise --alpha or lower --clients",
        ),
        (
            ["--aggregator", "dp:clip=1,z=1,population=6,sample=2,denom=2+fedavg"],
            "--aggregator: dp accounts cohorts of sample=2 but the engine selects 3",
        ),
    ],
)
def test_partition_and_accountant_advice_names_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], expected: str
) -> None:
    # Execute: a flag given again after TINY's wins (argparse keeps the last)
    code = main([*TINY, "--out", str(tmp_path / "run"), *flags])
    err = capsys.readouterr().err
    # Assert: the advice names the flag to change ("lower the client count", "raise alpha")
    assert code == 2
    assert expected in _error_line(err, "plume sim")


# --- ONNX devices, data, debugging -----------------------------------------------------------


def test_ort_artifacts_exported_for_mse_are_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: what `plume export --loss mse` writes in its manifest (only `loss` is read)
    artifacts = tmp_path / "digits_mse"
    artifacts.mkdir()
    (artifacts / "manifest.json").write_text(json.dumps({"loss": "mse"}))
    # Execute
    code = main([*TINY, "--ort-fraction", "0.5", "--ort-artifacts", str(artifacts)])
    err = capsys.readouterr().err
    # Assert: it used to fail mid-round with "y of shape (9,), the model takes [B, (10,)]"
    assert code == 2
    line = _error_line(err, "plume sim")
    assert "was exported with --loss mse" in line and "export with --loss ce" in line


def test_a_plume_data_that_is_wrong_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    monkeypatch.setenv("PLUME_DATA", str(tmp_path / "nowhere"))
    # Execute
    code = main(["sim", "--dataset", "mnist", "--rounds", "1", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    # Assert: "set PLUME_DATA to ..." alone read as if it were unset
    assert code == 1
    assert f"set PLUME_DATA (now {tmp_path / 'nowhere'}) to" in _error_line(err, "plume sim")


def test_plume_debug_shows_the_traceback_of_a_run_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a ValueError from inside the run (a library bug looks the same)
    import mobile_sim.runner as runner

    def broken(cfg: Any, progress: bool, label: str, on_round: Any) -> Any:
        raise ValueError("deep inside the run")

    monkeypatch.setattr(runner, "run_simulation", broken)
    run = [*TINY, "--out", str(tmp_path / "run")]
    # Execute + Assert: one line without PLUME_DEBUG, the exception itself with it
    assert main(run) == 2
    assert "deep inside the run" in _error_line(capsys.readouterr().err, "plume sim")
    monkeypatch.setenv("PLUME_DEBUG", "1")
    with pytest.raises(ValueError, match="deep inside the run"):
        main(run)


def test_an_external_coordinator_refusing_the_token_points_at_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the refusal AdminClient raises for a token the coordinator does not know (no
    # server: uvicorn in this process would reconfigure its logging)
    import mobile_sim.http_fleet as http_fleet
    from coordinator.service import AdminError

    def refused(cfg: Any, coordinator_url: str, progress: bool, label: str, on_round: Any) -> Any:
        body = json.dumps({"reason": "bad_admin_token", "detail": "wrong admin token"})
        raise AdminError("POST", "/v1/admin/tasks", 403, body)

    monkeypatch.setattr(http_fleet, "run_http_simulation", refused)
    monkeypatch.setenv("PLUME_ADMIN_TOKEN", "not-the-token")
    url = "http://127.0.0.1:9"
    # Execute
    code = main([*TINY, "--transport", "http", "--coordinator", url, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    # Assert: `plume sim` has no --admin-token flag to pass
    assert code == 1
    line = _error_line(err, "plume sim")
    assert "refused the admin token" in line and "(PLUME_ADMIN_TOKEN)" in line
    assert "--admin-token" not in line


# --- create-task, serve, export --------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--topk", "2"], "--topk must be in (0, 1], got 2.0"),
        (["--downlink-topk", "0"], "--downlink-topk must be in (0, 1], got 0.0"),
        (["--downlink-bits", "3"], "argument --downlink-bits: invalid choice: 3 (choose from 1,"),
        (["--aggregator", "nope"], "--aggregator 'nope': unknown aggregator 'nope'"),
        (["--model", "nope"], "unknown model 'nope' (--model); choose one of digits_mlp, mlp,"),
        (
            ["--secure", "--secure-noise", "skellam"],
            "secure: noise needs a finite --secure-noise-multiplier > 0, got 0.0 (--secure-noise)",
        ),
    ],
)
def test_create_task_mistakes_name_their_flag(
    capsys: pytest.CaptureFixture[str], flags: list[str], expected: str
) -> None:
    # Execute: refused before any server is contacted (none runs at this URL); argparse's
    # refusals (a --downlink-bits outside its choices) exit through SystemExit
    argv = ["coordinator", "create-task", "--url", "http://127.0.0.1:9", "--admin-token", "t"]
    try:
        code = main([*argv, *flags])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    # Assert: a usage mistake, as `plume sim` says the same one (helper-231; it was 1)
    assert code == 2
    assert expected in _error_line(err, "plume coordinator create-task")


def test_serve_on_a_port_in_use_creates_no_database_and_says_only_why(tmp_path: Path) -> None:
    # Prepare: a relative --db that does not exist yet; the port is taken. A subprocess,
    # because uvicorn reconfigures the logging of the process it runs in. (A start that can
    # listen logs "creating a new database at PATH": test_h113_serve_logging.)
    script = Path(sys.executable).with_name("plume")
    plume = [str(script)] if script.exists() else [sys.executable, "-m", "coordinator.cli"]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = ["coordinator", "serve", "--db", "plume.db", "--port", str(port)]
        # Execute: two starts on a port in use, at the default log level and at critical
        runs = [
            subprocess.run(
                [*plume, *argv, *level],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
                env={**os.environ, "PLUME_DEBUG": "", "PLUME_ADMIN_TOKEN": "t"},
            )
            for level in ([], ["--log-level", "critical"])
        ]
    # Assert: one error line each, no note about a database no start created
    assert [r.returncode for r in runs] == [1, 1]
    for r in runs:
        assert [line for line in r.stderr.splitlines() if line.strip()] == [
            f"plume coordinator serve: error: port {port} on 127.0.0.1 is already in use "
            "(another coordinator?); stop it or pick another --port"
        ]
    assert not (tmp_path / "plume.db").exists()


@pytest.mark.parametrize(
    ("flags", "code", "expected"),
    [
        (
            ["--optimizer", "momentum", "--momentum", "1.5"],
            2,
            "--momentum must be in [0, 1), got 1.5",
        ),
        (["--model", "nope"], 2, "unknown model 'nope'; choose one of digits_mlp, mlp,"),
    ],
)
def test_export_mistakes_are_refused_before_tracing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    code: int,
    expected: str,
) -> None:
    # Execute
    argv = ["export", "--model", "mlp", "--out", str(tmp_path / "a"), *flags]
    assert main(argv) == code
    err = capsys.readouterr().err
    # Assert: no tracing started (it used to trace first, then fail with status 1)
    assert expected in _error_line(err, "plume export")
    assert "tracing" not in err
    assert not (tmp_path / "a").exists()


def test_export_to_a_path_under_a_file_fails_before_tracing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    (tmp_path / "file").write_text("x")
    # Execute
    code = main(["export", "--model", "mlp", "--out", str(tmp_path / "file" / "a")])
    err = capsys.readouterr().err
    # Assert
    assert code == 1
    assert f"{tmp_path / 'file'} is not a folder" in _error_line(err, "plume export")
    assert "tracing" not in err
