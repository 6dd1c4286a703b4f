"""What a run records about itself: no credentials in its `command`, and the same summary
`partition` over HTTP as in process."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from coordinator.cli import build_parser
from mobile_sim import _cli as sim_cli
from mobile_sim.http_fleet import run_http_simulation
from mobile_sim.partition import partition_stats
from mobile_sim.runner import SimConfig, prepare

SMALL_FLEET = SimConfig(
    dataset="digits", model="digits_mlp", clients=6, per_round=3, rounds=1, topk=0.1,
    bits=8, local_epochs=1, batch_size=16, partition="iid", seed=0,
)  # fmt: skip


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("http://alice:s3cret@coord.example:8080/", "http://coord.example:8080/"),
        ("https://token@coord.example/", "https://coord.example/"),
        ("http://coord.example:8080", "http://coord.example:8080"),
    ],
)
def test_the_recorded_command_leaves_out_a_urls_credentials(url: str, kept: str) -> None:
    # Prepare: flags as `plume sim` parsed them
    args = build_parser().parse_args(["sim", "--transport", "http", "--coordinator", url])

    # Execute
    words = shlex.split(sim_cli._command(args))

    # Assert: the URL is there, without its user or password
    assert words[words.index("--coordinator") + 1] == kept
    assert "s3cret" not in " ".join(words) and "token@" not in " ".join(words)


def test_an_http_run_records_the_partition_it_trained_on() -> None:
    # Prepare: the split the in-process run of the same config uses
    setup = prepare(SMALL_FLEET)

    # Execute
    result = run_http_simulation(SMALL_FLEET, progress=False, label="http")

    # Assert
    assert result.partition == partition_stats(setup.parts, setup.data.y_train)
    assert result.partition is not None and result.partition["devices"] == 6


@pytest.mark.parametrize(
    ("dataset", "model"),
    [
        ("synthetic_iid", "synthetic_lr"),
        ("synthetic(1,1)", "synthetic_lr"),
        ("digits", "digits_mlp"),
    ],
)
def test_a_rebuilt_plot_is_titled_with_the_model_the_run_picked(
    tmp_path: Path, dataset: str, model: str
) -> None:
    # A run without --model: the title `plume sim report` rebuilds names the model the run
    # trained (SimConfig.model_name), a family's default included (helper-108's review)
    from mobile_sim.report_extra import run_title

    (tmp_path / "rounds.json").write_text(
        json.dumps({"config": {"dataset": dataset, "model": None}, "rounds": []})
    )
    assert SimConfig(dataset=dataset).model_name == model
    assert run_title(tmp_path) == f"{dataset} / {model}"
