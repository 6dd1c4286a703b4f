"""A device's `GET /v1/rounds/{id}` of a round still open does not build its cohort again: the
device view's cohort is the running round's selection (a set already in memory, the one the
membership check reads), and `_own_view` no longer copies the cohort less the reader
(`cohort - {me}`) at each read. The stored row is still read and parsed at every request (an
open round's row changes; see the report on `Store.round`). Work is counted as bytes
allocated (tracemalloc), never timed; the answers are tied to the code before by a seeded
hypothesis property."""

from __future__ import annotations

import json
import re
import tracemalloc
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from compression import encode_snapshot
from coordinator.service.rounds import Coordinator, _own_view

# the cohort, another device and the measurement trees test_h69_closed_round_cost draws from
from .test_h69_closed_round_cost import _COHORT, _OTHER, _STRINGS, _TREE, _device
from .test_restart_midround import Clock, _start
from .test_service_support import SPEC, initial_params, task_config


def _open_round(db: Path, cohort: int) -> tuple[Coordinator, int]:
    """A running task whose round of `cohort` devices is open (opened by their check-ins)."""
    coord = _start(db, Clock())
    task_id = coord.create_task(task_config(clients_per_round=cohort, min_reports=1))
    coord.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    for i in range(cohort):
        coord.check_in(_device(i), task_id)
    cur = coord.runtimes[task_id].current
    assert cur is not None and len(cur.selected) == cohort
    return coord, cur.round_id


# `_own_view` as it was at 519b993 (before helper-86's change), the property's reference.
_ID_IN_TEXT = re.compile(r"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")


def _own_view_before(value: Any, cohort: frozenset[str], me: str) -> Any:
    others = cohort - {me}

    def names(v: Any) -> bool:
        if not isinstance(v, str):
            return False
        return v in others or (len(v) > 32 and any(m in others for m in _ID_IN_TEXT.findall(v)))

    def record(v: Any) -> bool:
        if isinstance(v, dict):
            return any(names(x) for x in v.values())
        if isinstance(v, list | tuple):
            return any(names(x) for x in v) and not all(isinstance(x, str) for x in v)
        return False

    def flat(v: dict[Any, Any]) -> bool:
        return not any(isinstance(x, dict | list | tuple) for x in v.values())

    def view(v: Any) -> Any:
        if isinstance(v, dict):
            return {
                k: view(x)
                for k, x in v.items()
                if not names(k)
                and not names(x)
                and not (isinstance(x, list | tuple) and record(x))
                and not (isinstance(x, dict) and flat(x) and record(x))
            }
        if isinstance(v, list | tuple):
            return [view(x) for x in v if not names(x) and not record(x)]
        return v

    return view(value)


def test_a_device_read_of_an_open_round_allocates_the_same_at_any_cohort(tmp_path: Path) -> None:
    # Prepare: open rounds of 60 and of 1,200 devices; the stored row is parsed once here
    # and handed back, so that what is measured is the read's own work, not the parse's
    peaks = []
    for cohort in (60, 1_200):
        coord, round_id = _open_round(tmp_path / f"c{cohort}.db", cohort)
        row = coord.store.round(round_id)
        coord.store.round = lambda _id, row=row: row  # type: ignore[method-assign]
        coord.round_status(round_id, only=_device(3))  # warm
        # Execute
        tracemalloc.start()
        try:
            coord.round_status(round_id, only=_device(3))
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        coord.store.close()
    # Assert: no set of the cohort built per read (one of 1,200 ids is ~32 KiB)
    assert peaks[1] < peaks[0] + 4096, peaks


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    tree=st.dictionaries(_STRINGS, _TREE, max_size=6),
    cohort=st.frozensets(st.sampled_from([*_COHORT, _OTHER]), max_size=5),
    me=st.sampled_from([*_COHORT, _OTHER, "x"]),
)
def test_own_view_is_the_view_before(tree: dict[str, Any], cohort: frozenset[str], me: str) -> None:
    # Execute / Assert: the same value, keys in the same order
    assert json.dumps(_own_view(tree, cohort, me)) == json.dumps(_own_view_before(tree, cohort, me))


def test_a_device_read_of_an_open_round_is_the_read_before(tmp_path: Path) -> None:
    # Prepare: an open round of the 4 devices, whose stored measurements the property sets
    coord, round_id = _open_round(tmp_path / "p.db", len(_COHORT))
    cohort = frozenset(coord.store.round(round_id).selected)  # type: ignore[union-attr]
    assert cohort == frozenset(_COHORT)

    @settings(max_examples=60, derandomize=True, deadline=None)
    @given(tree=st.dictionaries(_STRINGS, _TREE, max_size=6))
    def same(tree: dict[str, Any]) -> None:
        coord.store.set_round_measurements(round_id, tree)
        stored = coord.store.round(round_id)
        assert stored is not None
        admin = coord.round_status(round_id)
        assert admin.measurements == stored.measurements
        for me in [*_COHORT, _OTHER]:
            got = coord.round_status(round_id, only=me).measurements
            want = _own_view_before(stored.measurements, cohort, me)
            assert json.dumps(got) == json.dumps(want), me

    # Execute / Assert
    same()
    coord.store.close()
