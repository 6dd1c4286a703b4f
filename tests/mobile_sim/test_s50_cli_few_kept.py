"""s50 review, item 1: `plume sim --dataset digits --compare-dense` at the defaults ended at
compressed 0.3175 against dense 0.7465 after 20 rounds with nothing said: at the default --topk
0.01 the 2,410-parameter digits_mlp keeps 24 values an upload. `_few_kept_note` words the note
for a run whose uploads keep fewer than about 100 values: k as the codec derives it, the
model's size, and a larger --topk (and for digits, the README run's --lr 0.2 --rounds 30)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from coordinator.cli import build_parser
from mobile_sim import _cli


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
    assert note.startswith("--topk 0.01 keeps 24 of digits_mlp's 2,410 parameters in each upload")
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


@pytest.mark.parametrize(
    "flags",
    [
        (),  # mnist_cnn, 1,663,370 parameters: 16,634 kept
        ("--model", "mlp"),  # 1,992 kept
        ("--dataset", "digits", "--topk", "0.05"),  # 120 kept
        ("--dataset", "digits", "--dense"),  # no --topk: dense fp32 uploads
        ("--dataset", "digits", "--secure"),  # no --topk: a masked sketch
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
