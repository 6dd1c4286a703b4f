"""s52b, a new user's typos in `plume sim --dataset` and `--model`: a mistyped flag says `did
you mean --dataset?` and a mistyped aggregator `did you mean 'fedavg'?`, but `--dataset MNIST`
or `digit`, `--model mlpp` and `plume sim reprot DIR` only listed the names. The error now names
the nearest one (case ignored); a name near none keeps the plain list."""

from __future__ import annotations

import pytest

from coordinator.cli import main as plume

_DATASETS = "choose mnist, digits, shakespeare, synthetic, synthetic(ALPHA,BETA) or synthetic_iid"
_MODELS = (
    "choose one of digits_mlp, mlp, mnist_cnn, shakespeare_lstm, shakespeare_lstm_small, "
    "synthetic_lr"
)


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (
            ["--dataset", "MNIST"],
            f"unknown dataset 'MNIST' (--dataset, did you mean 'mnist'?); {_DATASETS}",
        ),
        (
            ["--dataset", "digit"],
            f"unknown dataset 'digit' (--dataset, did you mean 'digits'?); {_DATASETS}",
        ),
        (["--dataset", "cifar10"], f"unknown dataset 'cifar10'; {_DATASETS}"),
        (
            ["--dataset", "digits", "--model", "mlpp"],
            f"unknown model 'mlpp' (--model, did you mean 'mlp'?); {_MODELS}",
        ),
        (
            ["--dataset", "digits", "--model", "Digits_MLP"],
            f"unknown model 'Digits_MLP' (--model, did you mean 'digits_mlp'?); {_MODELS}",
        ),
        (
            ["--dataset", "digits", "--model", "resnet"],
            f"unknown model 'resnet' (--model); {_MODELS}",
        ),
    ],
)
def test_a_mistyped_dataset_or_model_names_the_nearest(
    tmp_path: object, capsys: pytest.CaptureFixture[str], flags: list[str], line: str
) -> None:
    # Execute
    code = plume(["sim", "--rounds", "1", "--out", f"{tmp_path}/out", *flags])

    # Assert: one usage line, nothing made
    assert code == 2
    assert capsys.readouterr().err == f"plume sim: error: {line}\n"


@pytest.mark.parametrize(
    ("action", "line"),
    [
        ("reprot", "unknown action 'reprot' (run or report); did you mean 'report'?"),
        ("Report", "unknown action 'Report' (run or report); did you mean 'report'?"),
        ("xyz", "unknown action 'xyz' (run or report)"),
    ],
)
def test_a_mistyped_action_names_the_nearest(
    tmp_path: object, capsys: pytest.CaptureFixture[str], action: str, line: str
) -> None:
    # Execute: `plume sim reprot DIR` (DIR need not exist: the action is refused first)
    code = plume(["sim", action, f"{tmp_path}/run"])

    # Assert
    assert code == 2
    assert capsys.readouterr().err == f"plume sim: error: {line}\n"
