"""A task's residual file names the layout of its model (helper-67): after a restart a task
whose model was replaced by one of the same size in another layout starts from no residual,
and an upload or record of another layout is dropped as delivered, not added to it. A FIFO,
torn or otherwise unreadable residual file is no residual: a refusal or return into it starts
the task's residual with its content instead of dropping it as another model's."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sdk.device_store as device_store
from compression import CodecConfig, ErrorFeedback, ModelSpec, UpdateCodec
from sdk.device_store import AcceptedUpload, DeviceStore, PendingUpload

from .test_review_device_state import SPEC, _ef

# Same size as SPEC (36 scalars), another layout.
OTHER = ModelSpec.from_shapes([("w", (8, 4)), ("b", (4,))])
# Another size.
SMALL = ModelSpec.from_shapes([("w", (3, 4))])


def _frame(value: float, spec: ModelSpec = SPEC) -> bytes:
    frame, _ = UpdateCodec(spec, CodecConfig.dense()).encode(
        np.full(spec.size, value, np.float32), np.random.default_rng(0), weight=1.0
    )
    return frame


def _pending(spec: ModelSpec | None, task: int | None = 1, value: float = 1.0) -> PendingUpload:
    return PendingUpload(5, "k" * 32, _frame(value, spec or SPEC), 0, spec, task)


def _sent(value: float, size: int = SPEC.size) -> np.ndarray:
    return np.full(size, value, np.float32)


def _first(ef: ErrorFeedback | None) -> float | None:
    return None if ef is None else float(ef.residual[0])


# -- 1. the layout after a restart --------------------------------------------------------------


def test_a_residual_saved_with_a_pending_upload_names_its_layout_after_a_restart(
    tmp_path: Path,
) -> None:
    # Prepare: a round of task 1 in layout SPEC saved its upload and residual (2.0)
    DeviceStore(tmp_path).save_pending(_pending(SPEC), _ef(2.0))

    # Execute: the app restarts; task 1's model is now OTHER (same size)
    store = DeviceStore(tmp_path)

    # Assert: OTHER's round starts from no residual; SPEC's still reads it; a caller that
    # names no layout matches by size, as before
    assert store.load_residual(OTHER.size, 1, OTHER) is None
    assert _first(store.load_residual(SPEC.size, 1, SPEC)) == 2.0
    assert _first(store.load_residual(SPEC.size, 1)) == 2.0


def test_save_residual_with_a_layout_and_other_tasks_untouched(tmp_path: Path) -> None:
    # Prepare: tasks 1 and 2 hold residuals of SPEC
    store = DeviceStore(tmp_path)
    store.save_residual(_ef(1.0), 1, SPEC)
    store.save_residual(_ef(2.0), 2, SPEC)

    # Execute: after a restart task 1 loads as OTHER, then saves OTHER's residual
    store = DeviceStore(tmp_path)
    assert store.load_residual(OTHER.size, 1, OTHER) is None
    store.save_residual(_ef(3.0), 1, OTHER)

    # Assert: task 1 holds OTHER's; task 2's is as it was
    store = DeviceStore(tmp_path)
    assert _first(store.load_residual(OTHER.size, 1, OTHER)) == 3.0
    assert store.load_residual(SPEC.size, 1, SPEC) is None
    assert _first(store.load_residual(SPEC.size, 2, SPEC)) == 2.0


@pytest.mark.parametrize("trailer", ["none", "PLUMTASK", "PLUMTSEQ"])
def test_older_trailers_still_load_by_size(tmp_path: Path, trailer: str) -> None:
    # Prepare: task 1's residual as an older SDK wrote it (no layout)
    raw = _ef(4.0).to_bytes()
    if trailer == "PLUMTASK":
        raw += b"PLUMTASK" + (1).to_bytes(8, "little")
    elif trailer == "PLUMTSEQ":
        raw += b"PLUMTSEQ" + (1).to_bytes(8, "little") + (7).to_bytes(8, "little")
    name = "residual.bin" if trailer == "none" else "residual-1.bin"  # none: claimed by task 1
    (tmp_path / name).write_bytes(raw)

    # Execute / Assert: any layout of that size reads it (the layout is unknown)
    store = DeviceStore(tmp_path)
    assert _first(store.load_residual(OTHER.size, 1, OTHER)) == 4.0
    assert _first(store.load_residual(SPEC.size, 1, SPEC)) == 4.0


def test_a_sequence_renumbering_keeps_the_layout(tmp_path: Path) -> None:
    # Prepare: task 1's residual of SPEC; task 2's names a sequence number just below 2^63
    store = DeviceStore(tmp_path)
    store.save_residual(_ef(1.0), 1, SPEC)
    raw = (
        _ef(2.0).to_bytes()
        + b"PLUMTSEQ"
        + (2).to_bytes(8, "little")
        + (2**63 - 1).to_bytes(8, "little")
    )
    (tmp_path / "residual-2.bin").write_bytes(raw)

    # Execute: the next write renumbers the residuals held
    store.save_residual(_ef(3.0), 3, SPEC)

    # Assert: task 1's file was rewritten with a new number and still names SPEC
    found = device_store._trailer(tmp_path / "residual-1.bin")
    assert found is not None and found[1] is not None and found[1] < 2**62
    assert store.load_residual(OTHER.size, 1, OTHER) is None
    assert _first(store.load_residual(SPEC.size, 1, SPEC)) == 1.0


def test_a_refused_upload_of_another_layout_is_dropped_after_a_restart(tmp_path: Path) -> None:
    # Prepare: an upload of task 1 in OTHER is pending; then (in-process layout change)
    # task 1's residual became SPEC's (5.0)
    store = DeviceStore(tmp_path)
    store.save_pending(_pending(OTHER), _ef(1.0))
    store.save_residual(_ef(5.0), 1, SPEC)

    # Execute: after a restart the coordinator refuses the OTHER upload for good
    store = DeviceStore(tmp_path)
    got = store.refuse_pending(_sent(0.25), OTHER.size)

    # Assert: dropped as delivered, SPEC's residual untouched; before, 0.25 was added to it
    assert got is None
    assert store.load_pending() is None
    assert _first(store.load_residual(SPEC.size, 1, SPEC)) == 5.0


def test_a_returned_record_of_another_layout_is_dropped_after_a_restart(tmp_path: Path) -> None:
    # Prepare: a record of task 1's round 3 in SPEC; task 1's residual is now OTHER's (5.0)
    store = DeviceStore(tmp_path)
    store.save_accepted(AcceptedUpload(3, _frame(0.5), SPEC, 1))
    store.save_residual(_ef(5.0), 1, OTHER)
    store.save_residual(_ef(6.0), 2, SPEC)

    # Execute: after a restart round 3 is abandoned
    store = DeviceStore(tmp_path)
    got = store.return_accepted(3, _sent(0.5), SPEC.size)

    # Assert: dropped (the record is gone), OTHER's residual and task 2's untouched
    assert got is None
    assert store.load_accepted(3) is None
    assert _first(store.load_residual(OTHER.size, 1, OTHER)) == 5.0
    assert _first(store.load_residual(SPEC.size, 2, SPEC)) == 6.0


def test_a_return_of_the_same_layout_adds_and_keeps_the_layout(tmp_path: Path) -> None:
    # Prepare: a record of task 1 in SPEC and a residual of SPEC
    store = DeviceStore(tmp_path)
    store.save_accepted(AcceptedUpload(3, _frame(0.5), SPEC, 1))
    store.save_residual(_ef(1.0), 1, SPEC)

    # Execute
    got = DeviceStore(tmp_path).return_accepted(3, _sent(0.5), SPEC.size)

    # Assert: added, and the new file still names SPEC
    assert _first(got) == 1.5
    store = DeviceStore(tmp_path)
    assert store.load_residual(OTHER.size, 1, OTHER) is None
    assert _first(store.load_residual(SPEC.size, 1, SPEC)) == 1.5


def test_a_refusal_of_an_unknown_layout_into_a_named_residual_keeps_its_layout(
    tmp_path: Path,
) -> None:
    # Prepare: a pending upload that names no layout (an older SDK's pending.json), then a
    # residual of SPEC for its task
    store = DeviceStore(tmp_path)
    store.save_pending(_pending(None), _ef(1.0))
    store.save_residual(_ef(1.0), 1, SPEC)

    # Execute: refused (matched by size: its layout is unknown)
    got = DeviceStore(tmp_path).refuse_pending(_sent(0.5), SPEC.size)

    # Assert: added, and the residual still names SPEC
    assert _first(got) == 1.5
    assert DeviceStore(tmp_path).load_residual(OTHER.size, 1, OTHER) is None


def test_a_layout_of_another_size_is_refused(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path)
    with pytest.raises(ValueError, match="layout of 12 scalars"):
        store.save_residual(_ef(1.0), 1, SMALL)
    with pytest.raises(ValueError, match="layout of 12 scalars"):
        store.load_residual(SPEC.size, 1, SMALL)
    assert not list(tmp_path.glob("residual-*"))


_LAYOUTS = {"SPEC": SPEC, "OTHER": OTHER, "none": None}


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    saved=st.sampled_from(sorted(_LAYOUTS)),
    asked=st.sampled_from(sorted(_LAYOUTS)),
    task=st.integers(0, 2**63 - 1),
    restarts=st.booleans(),
)
def test_a_residual_loads_unless_both_layouts_are_known_and_differ(
    tmp_path_factory: pytest.TempPathFactory, saved: str, asked: str, task: int, restarts: bool
) -> None:
    root = tmp_path_factory.mktemp("store")
    store = DeviceStore(root)
    store.save_residual(_ef(1.25), task, _LAYOUTS[saved])
    if restarts:
        store = DeviceStore(root)
    got = store.load_residual(SPEC.size, task, _LAYOUTS[asked])
    differ = "none" not in (saved, asked) and saved != asked
    assert _first(got) == (None if differ else 1.25)
    found = device_store._trailer(root / f"residual-{task}.bin")
    assert found is not None and found.task == task
    spec = _LAYOUTS[saved]
    assert found.layout == (None if spec is None else spec.fingerprint)


# -- 4. a residual file that is no residual -----------------------------------------------------


def _no_block(fn: object) -> object:
    """Run `fn` in a thread; fail (instead of hanging) if it blocks over 10 s."""
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)  # type: ignore[operator]
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the store blocked"
    return out[0]


def test_a_refusal_into_a_fifo_starts_the_residual(tmp_path: Path) -> None:
    # Prepare: an upload of task 1 pending; a FIFO where task 1's residual is kept
    store = DeviceStore(tmp_path)
    store.save_pending(_pending(SPEC), _ef(1.0))
    (tmp_path / "residual-1.bin").unlink()
    os.mkfifo(tmp_path / "residual-1.bin")

    # Execute: the upload is refused for good
    got = _no_block(lambda: DeviceStore(tmp_path).refuse_pending(_sent(0.5), SPEC.size))

    # Assert: its content starts task 1's residual (before: dropped as another model's)
    assert _first(got) == 0.5  # type: ignore[arg-type]
    assert (tmp_path / "residual-1.bin").is_file()
    assert _first(DeviceStore(tmp_path).load_residual(SPEC.size, 1, SPEC)) == 0.5


@pytest.mark.parametrize("cut", [1, 8, 17, 60, 100])
def test_a_return_into_a_torn_residual_starts_the_residual(tmp_path: Path, cut: int) -> None:
    # Prepare: a record of task 1; task 1's residual file torn (its last `cut` bytes gone)
    store = DeviceStore(tmp_path)
    store.save_accepted(AcceptedUpload(3, _frame(0.5), SPEC, 1))
    store.save_residual(_ef(1.0), 1, SPEC)
    path = tmp_path / "residual-1.bin"
    path.write_bytes(path.read_bytes()[:-cut])

    # Execute
    got = DeviceStore(tmp_path).return_accepted(3, _sent(0.5), SPEC.size)

    # Assert: the content starts the residual (the torn file held none that reads)
    assert _first(got) == 0.5
    assert DeviceStore(tmp_path).load_accepted(3) is None
    assert _first(DeviceStore(tmp_path).load_residual(SPEC.size, 1, SPEC)) == 0.5


def test_a_residual_failing_its_checksum_is_no_residual(tmp_path: Path) -> None:
    # Prepare: task 1's residual of another size, one value flipped (its CRC fails)
    store = DeviceStore(tmp_path)
    store.save_pending(_pending(SPEC), _ef(1.0))
    small = ErrorFeedback(SMALL.size)
    small.residual = np.full(SMALL.size, 2.0, np.float32)
    store.save_residual(small, 1, SMALL)
    raw = bytearray((tmp_path / "residual-1.bin").read_bytes())
    raw[20] ^= 0xFF
    (tmp_path / "residual-1.bin").write_bytes(bytes(raw))

    # Execute
    got = DeviceStore(tmp_path).refuse_pending(_sent(0.5), SPEC.size)

    # Assert: not another model's residual (it reads as none): the content starts one
    assert _first(got) == 0.5


def test_a_whole_residual_of_another_size_still_drops_the_content(tmp_path: Path) -> None:
    # Prepare: task 1's model changed size after the upload: its residual is SMALL's (2.0)
    store = DeviceStore(tmp_path)
    store.save_pending(_pending(SPEC), _ef(1.0))
    small = ErrorFeedback(SMALL.size)
    small.residual = np.full(SMALL.size, 2.0, np.float32)
    store.save_residual(small, 1, SMALL)

    # Execute
    got = DeviceStore(tmp_path).refuse_pending(_sent(0.5), SPEC.size)

    # Assert: as before, dropped as delivered, SMALL's residual untouched
    assert got is None
    assert DeviceStore(tmp_path).load_pending() is None
    assert _first(DeviceStore(tmp_path).load_residual(SMALL.size, 1, SMALL)) == 2.0
