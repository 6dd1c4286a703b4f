"""`plume coordinator create-task` and `plume sim` have different training defaults (helper-222:
a task trains 1 local epoch of batches of 32 with over-selection 1.3 for 10 rounds, a simulation
5 epochs of batches of 10, no over-selection, 20 rounds). The README's CLI section says so; this
keeps its numbers equal to the parsers' defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize(
    ("sim_dest", "task_dest", "flag"),
    [
        ("local_epochs", "local_epochs", "--local-epochs"),
        ("batch_size", "batch_size", "--batch-size"),
        ("over_selection", "over_selection", "--over-selection"),
        ("rounds", "rounds", "--rounds"),
    ],
)
def test_the_cli_note_gives_both_commands_defaults(
    sim_dest: str, task_dest: str, flag: str
) -> None:
    # Prepare: the defaults, from the parsers themselves
    from coordinator.cli import build_parser

    parser = build_parser()
    sim = parser.parse_args(["sim"])
    task = parser.parse_args(["coordinator", "create-task", "--admin-token", "x"])

    # Execute: the README's note
    note = " ".join(README.split("`create-task` and `plume sim` have different", 1)[1].split())
    note = note.split("\n\n", 1)[0]
    task_part, sim_part = note.split("where `plume sim` runs", 1)

    # Assert
    assert f"{flag} {getattr(task, task_dest):g}" in task_part.replace("`", "")
    sim_value = getattr(sim, sim_dest)
    if sim_dest == "over_selection":
        # plume sim's --over-selection defaults by fleet (helper-265): None on the parser,
        # then SimConfig's 1.0 with the default --fleet timing (the note's number), the
        # coordinator's 1.3 with --fleet realistic
        from mobile_sim.runner import SimConfig

        assert sim_value is None
        sim_value = SimConfig().over_selection
    sim_words = {
        "local_epochs": f"{sim.local_epochs} local epochs",
        "batch_size": f"batches of {sim.batch_size}",
        "over_selection": f"no over-selection ({sim_value})",
        "rounds": f"{sim.rounds} rounds",
    }
    assert sim_words[sim_dest] in sim_part
    assert sim_value != getattr(task, task_dest)
