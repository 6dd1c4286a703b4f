"""s50 review, item 1: `plume sim --dataset digits --compare-dense` at the defaults ended at
compressed 0.3175 against dense 0.7465 after 20 rounds with nothing said: at the default --topk
0.01 the 2,410-parameter digits_mlp keeps 24 values an upload. `_few_kept_note` words the note
for a run whose uploads keep fewer than about 100 values: k as the codec derives it, the
model's size, and a larger --topk (and for digits, the README run's --lr 0.2 --rounds 30).
Stop 51 prints it: `plume sim: note: ...` on stderr, once, once the flags make a run (in
process and over --transport http, whose devices encode with the same codec)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from coordinator.cli import build_parser
from coordinator.cli import main as plume
from mobile_sim import _cli

# The README's digits defaults (--topk 0.01, --lr 0.05): the note in full, as printed
DIGITS_NOTE = (
    "plume sim: note: --topk 0.01 keeps 24 of digits_mlp's 2,410 parameters in each upload, so "
    "few that the compressed run can end far below dense fp32; a larger --topk keeps more, "
    "e.g. --topk 0.1 (241 values) (and for digits a larger --lr than 0.05: the README's digits "
    "run uses --lr 0.2 --rounds 30)"
)
# A run of one round on 4 devices, 2 a round: seconds
TINY = [
    "sim", "--dataset", "digits", "--clients", "4", "--per-round", "2", "--rounds", "1",
    "--local-epochs", "1", "--no-progress",
]  # fmt: skip


def _run_args(*flags: str) -> argparse.Namespace:
    args = build_parser().parse_args(["sim", *flags])
    assert _cli._usage_error(args) is None  # also fills in the default --partition
    return args


def _note(*flags: str) -> str | None:
    args = _run_args(*flags)
    return _cli._few_kept_note(_cli.config_from_args(args), args)


def _codec_k(*flags: str) -> int:
    """How many coordinates the run's codec really keeps in one upload (its frame's nnz)."""
    from compression import UpdateCodec
    from mobile_sim.models import build_model
    from sdk.flat import spec_from_module

    cfg = _cli.config_from_args(_run_args(*flags))
    spec = spec_from_module(build_model(cfg.model_name))
    update = np.random.default_rng(0).normal(size=spec.size).astype(np.float32)
    frame, _ = UpdateCodec(spec, cfg.codec()).encode(update, np.random.default_rng(1))
    return int(UpdateCodec(spec, cfg.codec()).decode_frame(frame).header.nnz)


def test_the_digits_defaults_get_the_note_with_k_the_size_and_the_fix() -> None:
    # Execute: `plume sim --dataset digits` (digits_mlp, --topk 0.01, --lr 0.05)
    note = _note("--dataset", "digits")

    # Assert: k as the codec keeps it, the parameter count, a larger --topk, the README's run
    assert note is not None
    assert _codec_k("--dataset", "digits") == 24
    assert f"plume sim: note: {note}" == DIGITS_NOTE
    assert "--topk 0.1 (241 values)" in note
    assert "--lr 0.2 --rounds 30" in note


@pytest.mark.parametrize("scope", ["global", "per_tensor"])
def test_k_is_the_codecs_under_either_scope(scope: str) -> None:
    # Prepare: --topk 0.02 keeps 48 of 2,410 in all, split over the tensors under per_tensor
    flags = ("--dataset", "digits", "--topk", "0.02", "--scope", scope, "--lr", "0.2")

    # Execute
    note = _note(*flags)

    # Assert: the note's k is the frame's; an --lr given is not advised again
    assert note is not None
    assert f"keeps {_codec_k(*flags)} of digits_mlp's" in note
    assert "keeps 48 of" in note
    assert "--lr" not in note


@pytest.mark.parametrize("scope", ["global", "per_tensor"])
def test_k_is_what_the_http_devices_keep_too(scope: str) -> None:
    # Prepare: the task a --transport http run creates; its devices encode with its codec
    from compression import UpdateCodec
    from mobile_sim.http_fleet import HttpFleetOptions, _task_config
    from mobile_sim.models import build_model
    from sdk.flat import spec_from_module

    flags = ("--transport", "http", "--dataset", "digits", "--topk", "0.02", "--scope", scope)
    args = _run_args(*flags)
    cfg = _cli.config_from_args(args)
    spec = spec_from_module(build_model(cfg.model_name))
    codec = UpdateCodec(spec, _task_config(cfg, spec, "", HttpFleetOptions()).codec.to_config())

    # Execute
    note = _cli._few_kept_note(cfg, args)
    update = np.random.default_rng(0).normal(size=spec.size).astype(np.float32)
    frame, _ = codec.encode(update, np.random.default_rng(1))

    # Assert: the same k as the note's
    assert note is not None
    assert codec.decode_frame(frame).header.nnz == 48
    assert note.startswith("--topk 0.02 keeps 48 of digits_mlp's 2,410 parameters")


@pytest.mark.parametrize(
    "flags",
    [
        (),  # mnist_cnn, 1,663,370 parameters: 16,634 kept
        ("--model", "mlp"),  # 1,992 kept
        ("--dataset", "digits", "--topk", "0.05"),  # 120 kept
        ("--dataset", "digits", "--topk", "0.0415"),  # 100 kept: not fewer than 100
        ("--dataset", "digits", "--dense"),  # no --topk: dense fp32 uploads
        ("--dataset", "digits", "--secure"),  # no --topk: a masked sketch
        ("--dataset", "digits", "--secure", "--transport", "http"),
    ],
)
def test_no_note_where_an_upload_keeps_enough_or_no_topk_applies(flags: tuple[str, ...]) -> None:
    assert _note(*flags) is None


def test_the_suggested_topk_keeps_a_couple_of_hundred_values() -> None:
    # synthetic_lr (610 parameters) keeps 6 at the default; 0.2 would keep 122, 0.5 keeps 305
    note = _note("--dataset", "synthetic", "--clients", "10")
    assert note is not None
    assert note.startswith("--topk 0.01 keeps 6 of synthetic_lr's 610 parameters")
    assert "--topk 0.5 (305 values)" in note
    assert "--lr" not in note  # the README's --lr 0.2 is digits' advice only


def test_a_model_that_cannot_be_built_here_gets_no_note() -> None:
    # An unknown dataset has no default model: the runner refuses it in its own words, later
    args = build_parser().parse_args(["sim", "--dataset", "nosuch"])
    args.partition, args.clients = "dirichlet", 100
    assert _cli._few_kept_note(_cli.config_from_args(args), args) is None


@pytest.mark.parametrize("dataset", ["nosuch", "synthetic_nosuch", "synthetic(1,x)"])
def test_a_dataset_the_runner_refuses_gets_no_note(dataset: str) -> None:
    # A --model that builds (synthetic_lr keeps 6 of 610), a dataset name that never loads
    assert _note("--dataset", dataset, "--model", "synthetic_lr", "--clients", "10") is None
    assert _note("--dataset", "synthetic(0.5,0.5)", "--model", "synthetic_lr") is not None


def test_plume_sim_prints_the_note_once_for_both_runs_of_compare_dense(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: the compressed run and its dense baseline
    code = plume([*TINY, "--compare-dense", "--out", str(tmp_path)])

    # Assert: the note alone on stderr, once (the dense run has no --topk); both runs written
    err = capsys.readouterr().err
    assert code == 0, err
    assert err.splitlines() == [DIGITS_NOTE]
    assert (tmp_path / "compressed" / "rounds.json").is_file()
    assert (tmp_path / "dense" / "rounds.json").is_file()


@pytest.mark.parametrize(
    "flags",
    [
        ("--dense",),  # no --topk
        ("--topk", "0.1"),  # 241 values an upload
    ],
)
def test_plume_sim_says_nothing_where_no_note_applies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: tuple[str, ...]
) -> None:
    code = plume([*TINY, *flags, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert err == ""


@pytest.mark.parametrize("more", [(), ("--compare-dense",)])
def test_a_usage_error_of_a_few_kept_run_stays_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], more: tuple[str, ...]
) -> None:
    # Prepare: flags that would keep 24 values an upload, refused by the run's config
    argv = [*TINY, *more, "--fleet", "realistic", "--min-memory-mb", "20000"]

    # Execute
    code = plume([*argv, "--out", str(tmp_path / "out")])

    # Assert: the error line alone (the note is said only once the flags make a run)
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines() == [
        "plume sim: error: --min-memory-mb 20000 MiB is above every device's memory (the "
        "largest tier's is 12288 MiB): no device would ever be eligible"
    ]
    assert not (tmp_path / "out").exists()


def test_an_unknown_dataset_with_a_few_kept_model_stays_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: digits_mlp would keep 24 values an upload; the runner refuses the dataset
    argv = ["sim", "--dataset", "nosuch", "--model", "digits_mlp", "--clients", "4"]
    argv += ["--per-round", "2", "--rounds", "1", "--no-progress"]
    code = plume([*argv, "--out", str(tmp_path / "out")])

    # Assert: the runner's usage error alone
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("plume sim: error: unknown dataset 'nosuch'; choose mnist, digits")


@pytest.mark.parametrize(
    "name",
    ["synthetic", "synthetic_iid", "synthetic(0.5,0.5)", "synthetic(1,x)", "synthetic(1)", "nope"],
)
def test_known_agrees_with_load_federated(name: str) -> None:
    # The note's check and the loader it stands in for take the same names
    from mobile_sim import datasets

    try:
        datasets.load_federated(name, seed=0)
        loads = True
    except ValueError:
        loads = False
    assert datasets.known(name) is loads
