"""DPMean's helpers and figures pinned directly (helper s62d's mutation hunt): `seed_note` warns
of a seeded dp stage, and of nothing else."""

from __future__ import annotations

from coordinator.aggregators import DPMean
from coordinator.aggregators._dp import seed_note


def test_seed_note_names_a_seeded_stage_and_nothing_else() -> None:
    # A seeded stage, with or without accounting, gets the note (it names the seed).
    note = seed_note(DPMean(1.0, seed=3))
    assert note is not None and "seed=3" in note
    assert seed_note(DPMean(1.0, seed=0)) is not None  # seed 0 is a seed too
    # No stage, or a stage drawing fresh OS noise: no note.
    assert seed_note(None) is None
    assert seed_note(DPMean(1.0)) is None
