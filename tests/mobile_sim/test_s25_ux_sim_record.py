"""The s25 new-user review's `plume sim` findings (/work/notes/s25/newuser/REPORT.md):

- F2: a `--secure` run's rounds say where `wall_s` went (the five wall phases were null), and
  rounds.json's `machine` has the 1-minute load average at the run's start and end;
- F10: `plume sim report DIR` reads only the layouts `plume sim` writes (DIR, its
  compressed/secure/dense subfolders, a sweep's subfolders and theirs) and, when DIR has no
  rounds.json of its own, an unreadable file in a subfolder is named as such (`plume sim report
  /tmp` failed on /tmp/tmp.xxx/rounds.json with no word that /tmp itself held none);
- F11: rounds.json keeps the command as typed (`argv`), credentials redacted as in `command`;
- F14: a piped `--transport http` run says in one line that it is setting up (it printed
  nothing for ~10 s before round 1); --no-progress keeps stderr empty.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from coordinator.cli import build_parser
from coordinator.cli import main as plume
from coordinator.secure import SecureConfig
from mobile_sim._cli import _typed_argv
from mobile_sim.report_extra import RunDirError, RunDirNotFound, read_run_dir
from mobile_sim.runner import WALL_PHASES, SimConfig
from mobile_sim.secure import run_secure_simulation

SECURE_TINY = [
    "sim", "--secure", "--dataset", "digits", "--model", "digits_mlp", "--clients", "8",
    "--per-round", "4", "--rounds", "2", "--eval-every", "2", "--local-epochs", "1",
    "--threads", "1", "--no-progress",
]  # fmt: skip
HTTP_TINY = [
    "sim", "--transport", "http", "--dataset", "digits", "--model", "digits_mlp", "--clients",
    "6", "--per-round", "3", "--rounds", "1", "--local-epochs", "1",
]  # fmt: skip
# What HTTP_TINY's devices upload at the default --topk 0.01 (test_s51_cli_few_kept.py)
FEW_KEPT_NOTE = (
    "plume sim: note: --topk 0.01 keeps 24 of digits_mlp's 2,410 parameters in each upload, so "
    "few that the compressed run can end far below dense fp32; a larger --topk keeps more, "
    "e.g. --topk 0.1 (241 values) (and for digits a larger --lr than 0.05: the README's digits "
    "run uses --lr 0.2 --rounds 30)"
)
# The parts are disjoint spans inside wall_s and the rest is wall_s minus them.
TOLERANCE_S = 1e-6


# --- F2: secure wall phases, load average -------------------------------------------------


def test_a_secure_round_says_where_its_wall_time_went() -> None:
    # Prepare: two in-process secure rounds, the first not evaluated
    cfg = SimConfig(
        dataset="digits", model="digits_mlp", clients=8, per_round=4, rounds=2,
        local_epochs=1, eval_every=2, seed=0,
    )  # fmt: skip

    # Execute
    result = run_secure_simulation(cfg, SecureConfig(), dropout=0.0, progress=False)

    # Assert: the five parts are filled in (they were None) and add up to wall_s
    first, second = result.records
    for rec in result.records:
        parts = [getattr(rec, name) for name in WALL_PHASES]
        assert all(isinstance(p, float) and math.isfinite(p) and p >= 0.0 for p in parts), parts
        assert math.isclose(sum(parts), rec.wall_s, rel_tol=0.0, abs_tol=TOLERANCE_S), parts
        assert rec.wall_train_s is not None and rec.wall_train_s > 0.0  # 4 devices trained
        assert rec.wall_encode_s is not None and rec.wall_encode_s > 0.0  # 4 masked inputs
        assert rec.wall_aggregate_s is not None and rec.wall_aggregate_s > 0.0  # stages, unmask
    assert first.accuracy is None and first.wall_eval_s == 0.0
    assert second.accuracy is not None and second.wall_eval_s is not None
    assert second.wall_eval_s > 0.0


def test_a_secure_run_writes_its_split_argv_and_load_averages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: as typed, with an abbreviation and a --flag=value word
    argv = [*SECURE_TINY, "--secure-drop=0", "--out", str(tmp_path)]
    code = plume(argv)

    # Assert
    assert code == 0, capsys.readouterr().err
    doc = json.loads((tmp_path / "rounds.json").read_text())
    assert all(isinstance(r[name], float) for r in doc["rounds"] for name in WALL_PHASES)
    # F11: the words as typed, beside the normalised command
    assert doc["argv"] == ["plume", *argv]
    assert doc["command"].startswith("plume sim ")
    assert "--secure-drop=0" not in doc["command"]
    # F2: the load average at the start and end of the run (this machine has one)
    machine = doc["machine"]
    for key in ("load_average_start", "load_average_end"):
        assert isinstance(machine[key], float) and machine[key] >= 0.0, machine
    assert "cpu" in machine and "cores" in machine  # machine_info's keys are still there


# --- F11: argv redaction -----------------------------------------------------------------


def test_argv_redacts_what_command_redacts() -> None:
    # Prepare: the credentials `command` leaves out, in both word forms and an abbreviation
    words = [
        "sim", "--rounds=3",
        "--ray-addr", "user:secret@head:6379",
        "--ray-runtime-env", '{"env_vars": {"TOKEN": "s3cret"}}',
        "--coordinator=http://admin:pw@host:8000", "--plugin", "https://u:p@example.org/x.py",
    ]  # fmt: skip
    args = build_parser().parse_args(words)

    # Execute
    typed = _typed_argv(args)

    # Assert: every word kept in place, the secrets gone
    assert typed == [
        "plume", "sim", "--rounds=3",
        "--ray-addr", "head:6379",
        "--ray-runtime-env", "<inline runtime_env not recorded (keys: env_vars)>",
        "--coordinator=http://host:8000", "--plugin", "https://example.org/x.py",
    ]  # fmt: skip
    assert not any(s in " ".join(typed) for s in ("secret", "s3cret", "pw", "u:p"))


# --- F10: which folders `plume sim report` reads ------------------------------------------


def _run(folder: Path) -> None:
    folder.mkdir(parents=True)
    row = {"round": 1, "accuracy": 0.5, "bytes_up": 500, "bytes_down": 5000, "wall_s": 0.1}
    doc = {
        "config": {"dataset": "digits", "model": "digits_mlp"},
        "summary": {"label": "compressed"},
        "rounds": [row],
    }
    (folder / "rounds.json").write_text(json.dumps(doc))


def test_an_unrelated_file_in_a_subfolder_is_named_as_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: /tmp as the reviewer had it: no rounds.json of its own, an unrelated
    # tmp.xxx/rounds.json somebody left there
    (tmp_path / "tmp.71g0spi1o1").mkdir()
    (tmp_path / "tmp.71g0spi1o1" / "rounds.json").write_text("not json")

    # Execute
    code = plume(["sim", "report", str(tmp_path)])

    # Assert: one line that says the folder has no rounds.json of its own and which
    # subfolder's file was taken for a run (before: only the subfolder's file was named)
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert f"{tmp_path} has no rounds.json of its own" in err
    assert "subfolder tmp.71g0spi1o1/" in err
    assert str(tmp_path / "tmp.71g0spi1o1" / "rounds.json") in err


def test_nothing_deeper_than_the_layouts_plume_sim_writes_is_read(tmp_path: Path) -> None:
    # Prepare: a rounds.json two levels down in a subfolder that is no run label
    _run(tmp_path / "project" / "results")

    # Execute / Assert: not a run folder (before, it was read as a sweep's run)
    with pytest.raises(RunDirNotFound, match=f"no rounds.json in {tmp_path} or its subfolders"):
        read_run_dir(tmp_path)


def test_the_layouts_plume_sim_writes_still_report(tmp_path: Path) -> None:
    # Prepare: a --compare-dense run, and a sweep of them
    _run(tmp_path / "pair" / "compressed")
    _run(tmp_path / "pair" / "dense")
    _run(tmp_path / "sweep" / "k0.01" / "secure")
    _run(tmp_path / "sweep" / "k0.01" / "dense")
    _run(tmp_path / "sweep" / "k0.1")

    # Execute / Assert
    assert [label for label, _ in read_run_dir(tmp_path / "pair").runs] == ["compressed", "dense"]
    labels = [label for label, _ in read_run_dir(tmp_path / "sweep").runs]
    assert labels == ["k0.01/secure", "k0.1", "k0.01/dense"]


def test_a_damaged_compare_dense_file_names_itself_only(tmp_path: Path) -> None:
    # Prepare: a --compare-dense run whose dense/rounds.json is damaged
    _run(tmp_path / "compressed")
    (tmp_path / "dense").mkdir()
    (tmp_path / "dense" / "rounds.json").write_text("{")

    # Execute / Assert: the file's own error, without the sweep wording
    with pytest.raises(RunDirError) as caught:
        read_run_dir(tmp_path)
    assert str(tmp_path / "dense" / "rounds.json") in str(caught.value)
    assert "of its own" not in str(caught.value)


# --- F14: a piped HTTP run's set-up line --------------------------------------------------


@pytest.mark.timeout(300)
def test_a_piped_http_run_says_it_is_setting_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: stderr is captured, so not a terminal
    code = plume([*HTTP_TINY, "--out", str(tmp_path)])

    # Assert: one plain line before round 1, after the few-kept note (said before any set-up);
    # nothing else on stderr; stdout as before
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err.splitlines() == [
        FEW_KEPT_NOTE,
        "plume sim: setting up: loading digits, registering 6 devices with a loopback "
        "coordinator...",
    ], err
    assert "setting up" not in out


@pytest.mark.timeout(300)
def test_no_progress_keeps_an_http_run_quiet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # --topk 0.1: 241 values an upload, no few-kept note (a note, not progress: it would stay)
    code = plume([*HTTP_TINY, "--topk", "0.1", "--no-progress", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert err == ""
