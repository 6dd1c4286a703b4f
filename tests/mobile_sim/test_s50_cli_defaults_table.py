"""s50 review, item 6: the README said "Pass the four flags to either command to compare a
deployment with a simulation", but more defaults differ between `plume sim --transport http`
and `plume coordinator create-task` (the downlink, 0.05 against 0.02; the selection timeout;
...). docs/simulator.md's "Defaults that differ between `plume sim` and `create-task`" lists
them. These checks find every create-task setting whose default the HTTP simulation does not
share, from the parsers and the classes themselves, and hold the table and the README to it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from coordinator.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
HEADING = "### Defaults that differ between `plume sim` and `create-task`"

# create-task options that are no setting of the task a simulation would share: where and how
# to reach the coordinator, the task's name, where its model comes from, and the --secure
# family (a `--secure --transport http` run creates its own task, `HttpSecureFleet`).
NOT_SETTINGS = {"url", "admin_token", "cacert", "timeout", "name", "plugin", "initial"}


def _parsed() -> tuple[argparse.Namespace, argparse.Namespace]:
    parser = build_parser()
    sim = parser.parse_args(["sim", "--transport", "http"])
    task = parser.parse_args(["coordinator", "create-task", "--admin-token", "x"])
    return sim, task


def _create_task_dests() -> set[str]:
    parsers = [build_parser()]
    while parsers:
        parser = parsers.pop()
        if parser.prog.endswith("coordinator create-task"):
            return {a.dest for a in parser._actions if a.option_strings and a.dest != "help"}
        for action in parser._actions:
            if isinstance(getattr(action, "choices", None), dict):
                parsers.extend(action.choices.values())  # type: ignore[union-attr]
    raise AssertionError("no `plume coordinator create-task` parser")


def _simulated(sim: argparse.Namespace) -> dict[str, Any]:
    """What `plume sim --transport http` at its defaults gives the task, by create-task dest."""
    from mobile_sim import _cli
    from mobile_sim.http_fleet import DOWNLINK, HttpFleetOptions
    from mobile_sim.runner import default_model

    _cli._default_partition(sim)
    cfg = _cli.config_from_args(sim)
    opts = HttpFleetOptions()
    return {
        "model": default_model(sim.dataset),
        "seed": cfg.seed,
        "rounds": cfg.rounds,
        "clients_per_round": cfg.per_round,
        "over_selection": cfg.over_selection,
        "deadline": opts.deadline_s,
        "min_reports": cfg.min_reports,
        "selection_timeout": opts.selection_timeout_s,
        "topk": cfg.topk,
        "bits": cfg.bits,
        "no_error_feedback": not cfg.error_feedback,
        "downlink_topk": cfg.downlink_topk if cfg.downlink_topk is not None else DOWNLINK.topk,
        "downlink_bits": cfg.downlink_bits if cfg.downlink_bits is not None else DOWNLINK.bits,
        "aggregator": cfg.aggregator,
        "server_lr": cfg.server_lr,
        "local_epochs": cfg.local_epochs,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
    }


def _rows() -> dict[str, list[str]]:
    text = (ROOT / "docs" / "simulator.md").read_text()
    assert text.count(HEADING) == 1
    section = text.split(HEADING, 1)[1].split("\n#", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 4 and not set(cells[0]) <= {"-"}:
            rows[cells[0]] = cells[1:]
    return rows


def _section() -> str:
    text = (ROOT / "docs" / "simulator.md").read_text()
    return " ".join(text.split(HEADING, 1)[1].split("\n#", 1)[0].split())


def test_every_create_task_setting_is_compared() -> None:
    # A new create-task flag must be classified here (a setting a simulation shares or not).
    sim, _ = _parsed()
    dests = {d for d in _create_task_dests() if not d.startswith("secure") and d != "secure"}
    dests -= {"stage_timeout", "stage_idle"}  # the --secure family's, without the prefix
    assert dests - NOT_SETTINGS == set(_simulated(sim))


def test_the_table_has_a_row_for_each_default_that_differs() -> None:
    # Prepare
    sim, task = _parsed()
    given = _simulated(sim)
    differ = {dest for dest, value in given.items() if getattr(task, dest) != value}
    rows = _rows()
    row_of = {
        "model": "model",
        "rounds": "training rounds",
        "local_epochs": "device epochs a round",
        "batch_size": "device minibatch",
        "over_selection": "over-selection",
        "downlink_topk": "model downloads",
        "deadline": "round deadline, wall seconds",
        "selection_timeout": "selection timeout, wall seconds",
    }

    # Assert: the defaults that differ are the table's (downlink bits agree: 8 in both)
    assert differ == set(row_of)
    assert given["downlink_bits"] == task.downlink_bits
    flags = {
        "model": "--model",
        "rounds": "--rounds",
        "local_epochs": "--local-epochs",
        "batch_size": "--batch-size",
        "over_selection": "--over-selection",
        "deadline": "--deadline",
        "selection_timeout": "--selection-timeout",
    }
    for dest, flag in flags.items():
        task_cell, sim_cell, _ = rows[row_of[dest]]
        default = getattr(task, dest)
        words = f"`{flag} {default}`" if dest == "model" else f"`{flag} {default:g}`"
        assert words in task_cell, dest
        value = given[dest]
        if dest == "over_selection":
            shown = f"{value:.1f}, none"
        elif dest in ("deadline", "selection_timeout"):
            shown = f"{value:.0f} ("
        elif dest == "model":
            shown = f"`{value}`"
        else:
            shown = f"`{flag} {value}`"
        assert shown in sim_cell, dest
    task_cell, sim_cell, _ = rows["model downloads"]
    assert (
        task_cell == f"`--downlink-topk {task.downlink_topk} --downlink-bits {task.downlink_bits}`"
    )
    assert sim_cell.startswith(
        f"top-k {given['downlink_topk']} at {given['downlink_bits']} bits (`http_fleet.DOWNLINK`"
    )
    assert (
        rows["round deadline, wall seconds"][2]
        == f"`create-task --deadline {given['deadline']:.0f}`"
    )
    timeout = given["selection_timeout"]
    assert rows["selection timeout, wall seconds"][2] == (
        f"`create-task --selection-timeout {timeout:.0f}`"
    )


def test_the_waits_no_flag_sets_are_the_codes() -> None:
    from dataclasses import fields

    from mobile_sim.http_fleet import HttpFleetOptions
    from protocol.messages import TaskConfig

    task_retry = next(f.default for f in fields(TaskConfig) if f.name == "retry_after_s")
    parser = build_parser()
    serve = parser.parse_args(["coordinator", "serve"])
    opts = HttpFleetOptions()
    rows = _rows()
    retry = next(cells for name, cells in rows.items() if "`retry_after_s`" in name)
    poll = rows["the wait while a cohort gathers"]
    assert retry[0].startswith(f"{task_retry:g} s (`TaskConfig.retry_after_s`")
    assert retry[1].startswith(f"{opts.retry_after_s:g} s (`HttpFleetOptions.retry_after_s`")
    assert poll[0] == f"the coordinator's: `serve --poll`, {serve.poll:g} s"
    assert poll[1].startswith(f"{opts.poll_s:g} s with the loopback coordinator")
    assert poll[2].startswith(f"`serve --poll {opts.poll_s:g}`")


def test_the_defaults_said_to_agree_do() -> None:
    from protocol.messages import CodecParams

    sim, task = _parsed()
    given = _simulated(sim)
    text = _section()
    said = {
        "clients_per_round": f"`--per-round`, {given['clients_per_round']})",
        "min_reports": f"`--min-reports` {given['min_reports']}",
        "topk": f"`--topk` {given['topk']:g}",
        "bits": f"`--bits` {given['bits']}",
        "aggregator": f"`--aggregator {given['aggregator']}`",
        "server_lr": f"`--server-lr` {given['server_lr']:g}",
        "lr": f"`--lr` {given['lr']:g}",
        "seed": f"`--seed` {given['seed']}",
    }
    for dest, words in said.items():
        assert words in text, dest
        assert getattr(task, dest) == given[dest], dest
    assert "error feedback on" in text
    assert given["no_error_feedback"] is task.no_error_feedback is False
    codec = CodecParams()
    assert (sim.block, sim.index, sim.topk_mode, sim.scope) == (
        codec.block,
        codec.index,
        codec.topk_mode,
        codec.scope,
    )


def test_the_readme_points_to_the_table_and_names_what_else_differs() -> None:
    sim, task = _parsed()
    given = _simulated(sim)
    readme = " ".join((ROOT / "README.md").read_text().split())
    note = readme.split("`create-task` and `plume sim` have different", 1)[1].split("## ", 1)[0]
    assert "Pass the four flags to either command" not in readme
    assert "(docs/simulator.md#defaults-that-differ-between-plume-sim-and-create-task)" in note
    assert f"`create-task --model {task.model}`" in note
    assert f"`{given['model']}` for MNIST" in note
    assert f"create-task's `--downlink-topk {task.downlink_topk}`" in note
    assert f"`plume sim --transport http`'s {given['downlink_topk']}" in note
