"""`plume sim`'s split for datasets with their own users: Shakespeare (speakers) and
synthetic(alpha, beta) (devices) default to the natural split over all their natural clients,
as the simulator's spec says; mnist and digits keep Dirichlet over 100 clients."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from coordinator.cli import build_parser
from coordinator.cli import main as plume
from mobile_sim._cli import config_from_args


def _cfg(*flags: str) -> object:
    with contextlib.redirect_stderr(io.StringIO()):
        args = build_parser().parse_args(["sim", *flags])
    return config_from_args(args)


@pytest.mark.parametrize(
    ("flags", "partition", "clients"),
    [
        (("--dataset", "shakespeare"), "natural", 98),
        (("--dataset", "synthetic"), "natural", 30),
        (("--dataset", "synthetic(0.5,0.5)"), "natural", 30),
        (("--dataset", "synthetic_iid"), "natural", 30),
        (("--dataset", "shakespeare", "--clients", "40"), "natural", 40),
        (("--dataset", "shakespeare", "--partition", "dirichlet"), "dirichlet", 100),
        (("--dataset", "synthetic", "--partition", "iid", "--clients", "20"), "iid", 20),
        (("--dataset", "digits"), "dirichlet", 100),
        (("--dataset", "mnist"), "dirichlet", 100),
    ],
)
def test_the_split_and_client_count_each_dataset_defaults_to(
    flags: tuple[str, ...], partition: str, clients: int
) -> None:
    # Execute
    cfg = _cfg(*flags)

    # Assert
    assert (cfg.partition, cfg.clients) == (partition, clients)  # type: ignore[attr-defined]


def test_more_clients_than_speakers_is_one_error_line_naming_the_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: the old default count, now given explicitly
    code = plume(
        ["sim", "--dataset", "shakespeare", "--clients", "100", "--no-progress"]
        + ["--out", str(tmp_path)]
    )

    # Assert
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "--clients" in err and "98" in err and "100" in err


def test_a_defaulted_natural_run_says_how_many_clients_it_took(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = plume(
        ["sim", "--dataset", "synthetic", "--per-round", "5", "--rounds", "1"]
        + ["--local-epochs", "1", "--no-progress", "--out", str(tmp_path)]
    )

    # Assert: a line before the table says the split and where the count came from
    out = capsys.readouterr().out
    assert code == 0
    head = out.split("round", 1)[0]
    assert "natural" in head and "30" in head and "--clients" in head


def test_alpha_with_a_natural_default_says_which_partition_runs() -> None:
    # Execute
    code = plume(["sim", "--dataset", "shakespeare", "--alpha", "0.1", "--no-progress"])

    # Assert: refused, as --alpha applies only to dirichlet (now not this run's default)
    assert code == 2
