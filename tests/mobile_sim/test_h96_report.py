"""`plume sim` output as a researcher compares it: a sweep's runs are told apart in one plot,
a run folder says how to rerun it and with which code, and a secure run records its own
settings."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from coordinator.cli import build_parser
from coordinator.cli import main as plume
from mobile_sim import _cli as sim_cli
from mobile_sim.report_extra import load_runs, rebuild_run_dir
from tests.mobile_sim.test_h84_cli import TINY


def _write_run(folder: Path, label: str, accuracy: float) -> None:
    folder.mkdir(parents=True)
    row = {"round": 1, "accuracy": accuracy, "bytes_up": 500, "bytes_down": 5000, "wall_s": 0.1}
    doc = {"config": {"dataset": "digits"}, "summary": {"label": label}, "rounds": [row]}
    (folder / "rounds.json").write_text(json.dumps(doc))


def test_a_sweep_folder_labels_each_run_by_its_folder(tmp_path: Path) -> None:
    # Prepare: one --out folder per setting, as a shell loop over --topk writes them; every
    # run ran as "compressed".
    for name in ("k0.01", "k0.1", "k0.05"):
        _write_run(tmp_path / name, "compressed", 0.5)

    # Execute
    labels = [label for label, _ in load_runs(tmp_path)]

    # Assert: the legend names the settings (it used to say "compressed" three times)
    assert labels == ["k0.01", "k0.05", "k0.1"]


def test_a_sweep_of_compare_dense_runs_is_found_two_levels_down(tmp_path: Path) -> None:
    # Prepare: SWEEP/k/{compressed,dense}, each a --compare-dense run's folder
    for k in ("k0.01", "k0.1"):
        _write_run(tmp_path / k / "compressed", "compressed", 0.5)
        _write_run(tmp_path / k / "dense", "dense", 0.6)

    # Execute
    labels = [label for label, _ in load_runs(tmp_path)]
    paths = rebuild_run_dir(tmp_path)

    # Assert: every run, dense baselines last (it used to be "no rounds.json" in the sweep)
    assert labels == ["k0.01/compressed", "k0.1/compressed", "k0.01/dense", "k0.1/dense"]
    assert all(p.is_file() for p in paths)


def test_a_compare_dense_folder_keeps_its_labels(tmp_path: Path) -> None:
    # Prepare
    _write_run(tmp_path / "compressed", "compressed", 0.5)
    _write_run(tmp_path / "dense", "dense", 0.6)

    # Execute + Assert
    assert [label for label, _ in load_runs(tmp_path)] == ["compressed", "dense"]


def test_rounds_json_holds_the_command_that_reruns_it_and_the_code(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "run"
    flags = [*TINY, "--rounds", "1", "--topk", "0.1", "--aggregator", "median", "--out", str(out)]

    # Execute
    assert plume(flags) == 0
    doc = json.loads((out / "rounds.json").read_text())

    # Assert: the command parses back to the same config, and says which code ran
    words = shlex.split(doc["command"])
    assert words[:2] == ["plume", "sim"]
    args = build_parser().parse_args(words[1:])
    assert sim_cli.config_from_args(args).as_dict() == doc["config"]
    assert doc["code"]["plume"]
    assert "git_commit" in doc["code"] and "git_dirty" in doc["code"]


def test_a_secure_run_records_its_secure_settings(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "secure"
    flags = [*TINY, "--rounds", "1", "--secure", "--secure-bits", "4", "--out", str(out)]
    flags += ["--dp-noise", "gaussian", "--noise-multiplier", "0.5", "--secure-dropout", "0.2"]

    # Execute
    assert plume(flags) == 0
    doc = json.loads((out / "rounds.json").read_text())

    # Assert: two secure runs of other noise or bits no longer have identical files
    secure = doc["secure"]
    assert secure["value_bits"] == 4
    assert secure["noise"] == "discrete_gaussian"
    assert secure["noise_multiplier"] == 0.5
    assert secure["dropout"] == 0.2


def test_a_plain_run_has_no_secure_section(tmp_path: Path) -> None:
    # Execute
    assert plume([*TINY, "--rounds", "1", "--out", str(tmp_path)]) == 0

    # Assert
    assert "secure" not in json.loads((tmp_path / "rounds.json").read_text())


def test_plume_sim_report_prints_one_comparable_line_per_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: two settings of a sweep, two rounds each; the second round of k0.1 was not
    # evaluated, so its final accuracy is the first round's
    def run(name: str, rows: list[dict[str, object]]) -> None:
        (tmp_path / name).mkdir()
        doc = {"summary": {"label": "compressed"}, "rounds": rows}
        (tmp_path / name / "rounds.json").write_text(json.dumps(doc))

    row = {"bytes_down": 5000, "wall_s": 0.1}
    run(
        "k0.01",
        [
            {**row, "round": 1, "accuracy": 0.5, "bytes_up": 400, "dense_up": 40_000},
            {**row, "round": 2, "accuracy": 0.6, "bytes_up": 600, "dense_up": 40_000},
        ],
    )
    run(
        "k0.1",
        [
            {**row, "round": 1, "accuracy": 0.7, "bytes_up": 4_000, "dense_up": 40_000},
            {**row, "round": 2, "accuracy": None, "bytes_up": 4_000, "dense_up": 40_000},
        ],
    )

    # Execute
    code = plume(["sim", "report", str(tmp_path)])

    # Assert: the runs in the plots' order, with what a comparison needs
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    start = out.index(next(line for line in out if line.startswith("run ")))
    assert out[start].split() == [
        "run", "rounds", "final", "accuracy", "upload", "bytes", "ratio", "vs", "dense",
    ]  # fmt: skip
    assert out[start + 2].split() == ["k0.01", "2", "0.6000", "1.0", "KB", "80.0x"]
    assert out[start + 3].split() == ["k0.1", "2", "0.7000", "8.0", "KB", "10.0x"]


def test_a_sweep_mixing_single_and_compare_dense_runs_finds_every_run(tmp_path: Path) -> None:
    # Prepare: one setting run alone, another with --compare-dense
    _write_run(tmp_path / "k0.01", "compressed", 0.5)
    _write_run(tmp_path / "k0.1" / "compressed", "compressed", 0.6)
    _write_run(tmp_path / "k0.1" / "dense", "dense", 0.7)

    # Execute
    labels = [label for label, _ in load_runs(tmp_path)]

    # Assert: k0.1's runs were silently left out before (only one level was read)
    assert labels == ["k0.01", "k0.1/compressed", "k0.1/dense"]


def test_a_secure_compare_dense_run_names_the_secure_run_in_its_comparison(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    flags = [*TINY, "--rounds", "1", "--secure", "--compare-dense", "--out", str(tmp_path)]
    code = plume(flags)

    # Assert: the comparison line named a "compressed" run this invocation did not have
    out = capsys.readouterr().out
    assert code == 0
    assert "secure vs dense: " in out and "compressed vs dense" not in out


def _git(cwd: Path, *words: str) -> None:
    import subprocess

    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env |= {"GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    subprocess.run(["git", "-C", str(cwd), *words], check=True, capture_output=True, env=env)


def test_git_info_is_only_read_from_the_checkout_the_package_is(tmp_path: Path) -> None:
    # Prepare: a project checkout with a virtualenv inside it, where a pip-installed plume
    # would sit in .venv/.../site-packages, below the project's git repository
    from mobile_sim.report import git_info

    _git(tmp_path, "init", "-q")
    (tmp_path / "f").write_text("x")
    _git(tmp_path, "add", "f")
    _git(tmp_path, "commit", "-q", "-m", "c")
    installed = tmp_path / ".venv" / "site-packages"
    installed.mkdir(parents=True)

    # Execute
    own, inside = git_info(tmp_path), git_info(installed)

    # Assert: the checkout's commit for the checkout, none for a package merely inside it
    # (it was the project's commit, not the code that ran)
    assert own["git_commit"] is not None and len(own["git_commit"]) == 40
    assert own["git_dirty"] is False
    assert inside == {"git_commit": None, "git_dirty": None}


def test_server_lr_help_says_compressed_runs_may_need_a_larger_step(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Execute: a compressed-vs-dense comparison at the default step handicaps the compressed
    # run, which the help did not say (the README's headline run uses 2.0)
    with pytest.raises(SystemExit):
        plume(["sim", "--help"])
    text = " ".join(capsys.readouterr().out.split())

    # Assert
    assert "top-k shrinks the averaged update" in text
    assert "the README's headline run uses 2.0 with --topk 0.005" in text
