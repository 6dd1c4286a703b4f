"""A model of where every upload's error-feedback content should be, checked against the app
directory over random sequences of store steps in three tasks (two of the same model size, one
of another), each step possibly crashed at any write, unlink or rename, the directory reopened
after every step: every pending upload and accepted record is either where the model puts it
or, after a crash, the step happened whole or not at all; a task's residual holds its own
content only; an older SDK's directory (written by that SDK's own code, crash windows included)
migrates without losing or doubling anything."""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import sdk.device_store as device_store
from compression import ErrorFeedback, ModelSpec
from sdk.device_store import AcceptedUpload, DeviceStore, PendingUpload

from .test_client import SPEC
from .test_review_device_state import _Crash

OTHER = ModelSpec.from_shapes([("w", (3, 5)), ("b", (5,))])
THIRD = ModelSpec.from_shapes([("w", (3, 4))])  # task 3's model after it changed size
SPECS = {SPEC.size: SPEC, OTHER.size: OTHER}
TASKS = {1: SPEC, 2: SPEC, 3: OTHER}  # tasks 1 and 2 share a model size
MAX_ACCEPTED = 3  # patched in, so that the bound is reached within a few steps
ROOT = Path(__file__).resolve().parents[2]
# The app directories go to memory (tmpfs) where the machine has /dev/shm: the store's fsyncs
# and unlinks took about half of this machine's time on disk, and what it checks (which files
# a crash at each write, unlink or rename leaves, the crash raised in the test) does not
# depend on the filesystem.
TMP_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _old_store_module() -> types.ModuleType | None:
    """sdk/device_store.py as the SDK before per-task residuals and several records had it
    (00724fe^): the code that wrote the app directories a new SDK must migrate. None outside
    a git checkout holding that commit (the model then starts from empty directories only)."""
    try:
        source = subprocess.run(
            ["git", "show", "00724fe^:sdk/device_store.py"],
            cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader("_old_device_store", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["_old_device_store"] = module
    exec(compile(source, "old_device_store.py", "exec"), module.__dict__)
    return module


OLD = _old_store_module()
Vec = np.ndarray


def _vec(values: list[int], size: int) -> Vec:
    """Small integers as float32[size]: every sum of them is exact in float32."""
    return np.resize(np.array(values, dtype=np.float32), size).astype(np.float32)


def _ef(vec: Vec) -> ErrorFeedback:
    ef = ErrorFeedback(vec.size)
    ef.residual = vec.astype(np.float32)
    return ef


def _frame(vec: Vec) -> bytes:
    # The store keeps frames as opaque bytes; the model decodes them itself.
    return vec.astype("<f4").tobytes()


@dataclass
class Model:
    """Where the content is: each task's residual (None: no file), the older SDK's residual
    and the task that claimed it, the pending upload (round, task, content) and the records
    (round -> (task, content))."""

    res: dict[int, Vec | None] = field(default_factory=lambda: dict.fromkeys(TASKS))
    legacy: Vec | None = None
    claimer: int | None = None
    pending: tuple[int, int | None, Vec] | None = None
    records: dict[int, tuple[int | None, Vec]] = field(default_factory=dict)

    def copy(self) -> Model:
        return copy.deepcopy(self)

    def claim(self, task: int, size: int) -> None:
        if (
            self.claimer is None
            and self.legacy is not None
            and self.legacy.size == size
            and self.res[task] is None
        ):
            self.claimer, self.res[task], self.legacy = task, self.legacy, None

    def slot(self, task: int | None) -> Vec | None:
        if task is None:
            return self.res[self.claimer] if self.claimer is not None else self.legacy
        return self.res[task]

    def set_slot(self, task: int | None, vec: Vec) -> None:
        if task is None and self.claimer is None:
            self.legacy = vec
        else:
            self.res[self.claimer if task is None else task] = vec  # type: ignore[index]

    def add(self, task: int | None, sent: Vec) -> None:
        """`_add_to_residual`: into the task's residual, or dropped if it is another size's."""
        if task is not None:
            self.claim(task, sent.size)
        current = self.slot(task)
        if current is not None and current.size != sent.size:
            return
        self.set_slot(task, (current if current is not None else 0 * sent) + sent)

    def save_record(self, round_id: int, task: int | None, content: Vec) -> None:
        self.records[round_id] = (task, content)
        for r in sorted(self.records)[: max(0, len(self.records) - MAX_ACCEPTED)]:
            del self.records[r]  # forgotten as delivered

    def same(self, other: Model) -> bool:
        def eq(a: Vec | None, b: Vec | None) -> bool:
            return (a is None) == (b is None) and (a is None or np.array_equal(a, b))

        return (
            all(eq(self.res[t], other.res[t]) for t in TASKS)
            and eq(self.legacy, other.legacy)
            and self.claimer == other.claimer
            and (self.pending is None) == (other.pending is None)
            and (
                self.pending is None
                or (
                    self.pending[:2] == other.pending[:2]  # type: ignore[index]
                    and eq(self.pending[2], other.pending[2])  # type: ignore[index]
                )
            )
            and self.records.keys() == other.records.keys()
            and all(
                self.records[r][0] == other.records[r][0]
                and eq(self.records[r][1], other.records[r][1])
                for r in self.records
            )
        )


def _peek(path: Path, task: int | None) -> Vec | None:
    """A stored residual's values, read without claiming anything; its trailer, if any, must
    name `task` (None: any)."""
    if not path.exists():
        return None
    d = device_store._residual_size(path)
    assert d is not None, f"{path.name} is not a residual"
    named = device_store._residual_task(path)
    assert task is None or named in (None, task), f"{path.name} names task {named}"
    return np.frombuffer(path.read_bytes()[16 : 16 + 4 * d], "<f4").astype(np.float32)


def observe(root: Path) -> Model:
    """The model the app directory holds, as a restarted app reads it."""
    store = DeviceStore(root)
    m = Model()
    pending = store.load_pending()
    if pending is not None:
        m.pending = (pending.round_id, pending.task_id, np.frombuffer(pending.frame, "<f4"))
    for r in store.accepted_rounds():
        record = store.load_accepted(r)
        assert record is not None, f"record {r} does not load"
        m.records[r] = (record.task_id, np.frombuffer(record.frame, "<f4").astype(np.float32))
    m.claimer = store.legacy_claimer()
    for t in TASKS:
        m.res[t] = _peek(store._residual_path(t), t if m.claimer != t else None)
    if m.claimer is None:
        m.legacy = _peek(store._residual_path(None), None)
    return m


@contextmanager
def crashing(at: int | None, *modules: types.ModuleType) -> Iterator[list[int]]:
    """Every write, unlink and rename of `modules` counts one; the one numbered `at` raises
    `_Crash` instead of happening (the process dying there). Yields [writes seen]."""
    seen = [0]
    saved: list[tuple[Any, str, Any]] = []

    def wrap(target: Any, attr: str) -> None:
        real = getattr(target, attr)

        def io(*args: Any, **kwargs: Any) -> Any:
            if at is not None and seen[0] == at:
                seen[0] += 1
                raise _Crash(attr)
            seen[0] += 1
            return real(*args, **kwargs)

        saved.append((target, attr, real))
        setattr(target, attr, io)

    for module in modules:
        wrap(module, "_write")
        wrap(module, "_unlink")
    wrap(os, "replace")
    try:
        yield seen
    finally:
        for target, attr, real in reversed(saved):
            setattr(target, attr, real)


def _legacy_dir(root: Path, data: st.DataObject) -> Model:
    """An app directory as the older SDK left it, steps possibly crashed; the model of what it
    holds, as the older SDK itself reads it back (from a copy, so its recovery does not touch
    the directory the new SDK opens)."""
    size_r = data.draw(st.sampled_from([0, SPEC.size, OTHER.size]), "old residual size")
    size_p = data.draw(st.sampled_from([0, SPEC.size, OTHER.size]), "old pending size")
    size_a = data.draw(st.sampled_from([0, SPEC.size, OTHER.size]), "old record size")
    steps: list[Callable[[Any], None]] = []
    if size_r:
        steps.append(lambda s: s.save_residual(_ef(_vec([1, 2, 3], size_r))))
    if size_a:
        kind = data.draw(st.sampled_from(["plain", "secure", "accept_pending"]), "old record")
        content = _vec([4, -5], size_a)
        if kind == "accept_pending":

            def accept(s: Any) -> None:
                up = OLD.PendingUpload(3, "c" * 32, _frame(content), 0, SPECS[size_a])
                s.save_pending(up, _ef(_vec([7], size_a)))
                s.accept_pending(s.load_pending())

            steps.append(accept)
        else:
            ef = _ef(_vec([6, 1], size_a)) if kind == "secure" else None
            rec = OLD.AcceptedUpload(3, _frame(content), SPECS[size_a])
            steps.append(lambda s: s.save_accepted(rec, ef))
    if size_p:
        up = OLD.PendingUpload(4, "d" * 32, _frame(_vec([8, 9, -1], size_p)), 0, SPECS[size_p])
        steps.append(lambda s: s.save_pending(up, _ef(_vec([2, -3], size_p))))
        if data.draw(st.booleans(), "old refusal"):
            steps.append(lambda s: s.refuse_pending(_vec([8, 9, -1], size_p), size_p))
    crash_step = data.draw(st.integers(0, max(0, len(steps) - 1)), "old crash step")
    crash_at = data.draw(st.none() | st.integers(0, 8), "old crash at")
    store = OLD.DeviceStore(root)
    for i, step in enumerate(steps):
        try:
            with crashing(crash_at if i == crash_step else None, OLD):
                step(store)
        except _Crash:
            break
    # What the older SDK reads from it (on a copy).
    with tempfile.TemporaryDirectory(dir=TMP_ROOT) as tmp:
        shutil.copytree(root, Path(tmp) / "d")
        old = OLD.DeviceStore(Path(tmp) / "d")
        m = Model()
        pending = old.load_pending()
        if pending is not None:
            m.pending = (pending.round_id, None, np.frombuffer(pending.frame, "<f4"))
        record = old.load_accepted()
        if record is not None:
            m.records[record.round_id] = (None, np.frombuffer(record.frame, "<f4").copy())
        for size in (SPEC.size, OTHER.size):
            ef = old.load_residual(size)
            if ef is not None:
                m.legacy = ef.residual.copy()
    return m


@settings(
    max_examples=int(os.environ.get("H53_EXAMPLES", "150")),
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
class EFStore(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory(prefix="plume-h53-", dir=TMP_ROOT)
        self.root = Path(self.tmp.name) / "app"
        self.model = Model()
        self.next_round = 10
        self.specs = dict(TASKS)
        self.saved_max = device_store.MAX_ACCEPTED
        device_store.MAX_ACCEPTED = MAX_ACCEPTED

    def teardown(self) -> None:
        device_store.MAX_ACCEPTED = self.saved_max
        self.tmp.cleanup()

    @initialize(data=st.data(), legacy=st.booleans())
    def start(self, data: st.DataObject, legacy: bool) -> None:
        self.root.mkdir()
        if legacy and OLD is not None:
            self.model = _legacy_dir(self.root, data)
        self.check(observe(self.root), [self.model])

    def step(self, at: int | None, run: Callable[[DeviceStore], None], *candidates: Model) -> None:
        """Run `run` on the store, crashed at write `at`; the directory must then hold the last
        candidate (the step whole) or, if it crashed, any of them."""
        crashed = False
        store = DeviceStore(self.root)
        try:
            with crashing(at, device_store):
                run(store)
        except _Crash:
            crashed = True
        seen = observe(self.root)
        self.check(seen, list(candidates) if crashed else [candidates[-1]])
        self.model = next(c for c in candidates if c.same(seen))

    def check(self, seen: Model, candidates: list[Model]) -> None:
        assert any(c.same(seen) for c in candidates), (
            f"directory holds\n{_show(seen)}\nexpected one of\n"
            + "\n".join(_show(c) for c in candidates)
        )

    def fresh_round(self) -> int:
        self.next_round += 1
        return self.next_round

    @precondition(lambda self: self.model.pending is None)
    @rule(
        task=st.sampled_from(sorted(TASKS)),
        at=st.none() | st.integers(0, 10),
        seed=st.integers(0, 5),
    )
    def encode(self, task: int, at: int | None, seed: int) -> None:
        """What `_Core.encode` does: the encoder loads the task's residual, then the upload is
        saved as pending with the residual that assumes it."""
        spec, round_id = self.specs[task], self.fresh_round()
        delta, sent = _vec([seed + 1, -2, 3], spec.size), _vec([seed, 1], spec.size)
        claimed = self.model.copy()
        claimed.claim(task, spec.size)
        base = claimed.res[task]
        base = base if base is not None and base.size == spec.size else 0 * delta
        done = claimed.copy()
        done.res[task] = base + delta - sent
        done.pending = (round_id, task, sent)

        def run(store: DeviceStore) -> None:
            held = store.load_residual(spec.size, task)
            stored = held.residual if held is not None else np.zeros(spec.size, np.float32)
            np.testing.assert_array_equal(stored, base)  # the encoder starts from the model's
            up = PendingUpload(round_id, f"{round_id:032d}", _frame(sent), 0, spec, task)
            store.save_pending(up, _ef(stored + delta - sent))

        self.step(at, run, self.model, claimed, done)

    @precondition(lambda self: self.model.pending is not None)
    @rule(at=st.none() | st.integers(0, 10))
    def accept(self, at: int | None) -> None:
        assert self.model.pending is not None
        round_id, task, sent = self.model.pending
        done = self.model.copy()
        done.pending = None
        done.save_record(round_id, task, sent)

        def run(store: DeviceStore) -> None:
            pending = store.load_pending()
            assert pending is not None
            store.accept_pending(pending)

        self.step(at, run, self.model, done)

    @precondition(lambda self: self.model.pending is not None)
    @rule(at=st.none() | st.integers(0, 10))
    def refuse(self, at: int | None) -> None:
        assert self.model.pending is not None
        _, task, sent = self.model.pending
        claimed = self.model.copy()
        if task is not None:
            claimed.claim(task, sent.size)
        done = self.model.copy()
        done.pending = None
        done.add(task, sent)

        def run(store: DeviceStore) -> None:
            store.refuse_pending(sent.copy(), sent.size)

        self.step(at, run, self.model, claimed, done)

    @precondition(lambda self: bool(self.model.records))
    @rule(data=st.data(), at=st.none() | st.integers(0, 10), committed=st.booleans())
    def settle(self, data: st.DataObject, at: int | None, committed: bool) -> None:
        round_id = data.draw(st.sampled_from(sorted(self.model.records)), "round")
        task, sent = self.model.records[round_id]
        claimed = self.model.copy()
        if task is not None and not committed:
            claimed.claim(task, sent.size)
        done = self.model.copy()
        del done.records[round_id]
        if not committed:
            done.add(task, sent)

        def run(store: DeviceStore) -> None:
            if committed:
                store.forget_accepted(round_id)
            else:
                store.return_accepted(round_id, sent.copy(), sent.size)

        self.step(at, run, self.model, claimed, done)

    @rule(
        task=st.sampled_from(sorted(TASKS)),
        at=st.none() | st.integers(0, 12),
        seed=st.integers(0, 5),
    )
    def secure(self, task: int, at: int | None, seed: int) -> None:
        """What a secure round that took the masked input saves (`keep_secure_input`)."""
        spec, round_id = self.specs[task], self.fresh_round()
        delta, sent = _vec([seed - 2, 5], spec.size), _vec([1, seed], spec.size)
        claimed = self.model.copy()
        claimed.claim(task, spec.size)
        base = claimed.res[task]
        base = base if base is not None and base.size == spec.size else 0 * delta
        done = claimed.copy()
        done.res[task] = base + delta - sent
        done.save_record(round_id, task, sent)

        def run(store: DeviceStore) -> None:
            held = store.load_residual(spec.size, task)
            stored = held.residual if held is not None else np.zeros(spec.size, np.float32)
            np.testing.assert_array_equal(stored, base)
            record = AcceptedUpload(round_id, _frame(sent), spec, task)
            store.save_accepted(record, _ef(stored + delta - sent))

        self.step(at, run, self.model, claimed, done)

    @rule()
    def resize(self) -> None:
        """Task 3's model changes size (or back): its residual, uploads and records of the
        other size are then another model's."""
        self.specs[3] = THIRD if self.specs[3] is OTHER else OTHER

    @rule(
        task=st.sampled_from(sorted(TASKS)),
        at=st.none() | st.integers(0, 6),
        seed=st.integers(0, 5),
    )
    def keep_unsent(self, task: int, at: int | None, seed: int) -> None:
        """A secure round whose masked input was never taken keeps its residual only."""
        spec = self.specs[task]
        delta = _vec([seed, -1], spec.size)
        claimed = self.model.copy()
        claimed.claim(task, spec.size)
        base = claimed.res[task]
        base = base if base is not None and base.size == spec.size else 0 * delta
        done = claimed.copy()
        done.res[task] = base + delta

        def run(store: DeviceStore) -> None:
            held = store.load_residual(spec.size, task)
            stored = held.residual if held is not None else np.zeros(spec.size, np.float32)
            np.testing.assert_array_equal(stored, base)
            store.save_residual(_ef(stored + delta), task)

        self.step(at, run, self.model, claimed, done)

    @invariant()
    def bounded(self) -> None:
        if not self.root.exists():
            return
        names = os.listdir(self.root)
        records = [n for n in names if n.startswith("accepted-") and n.endswith(".json")]
        assert len(records) <= MAX_ACCEPTED, names
        residuals = [n for n in names if n.startswith("residual-")]
        assert len(residuals) <= device_store.MAX_RESIDUALS, names
        assert not {"accepted.json", "accepted.frame"} & set(names), names  # moved at open
        for n in names:
            assert n in _ALLOWED or _STAGED(n), f"unexpected file {n}"  # no temp file left


_ALLOWED = {"state.json", "residual.bin", "pending.json", "pending.frame", "pending.residual"}


def _STAGED(name: str) -> bool:
    return bool(
        device_store._RECORD_FILE.fullmatch(name) or device_store._RESIDUAL_FILE.fullmatch(name)
    )


def _show(m: Model) -> str:
    def v(x: Vec | None) -> str:
        return "-" if x is None else f"{x.size}:{x[:3].tolist()}"

    pend = "-" if m.pending is None else f"r{m.pending[0]} t{m.pending[1]} {v(m.pending[2])}"
    recs = {r: (t, v(c)) for r, (t, c) in m.records.items()}
    res = {t: v(x) for t, x in m.res.items()}
    return f"  res={res} legacy={v(m.legacy)} claimer={m.claimer} pending={pend} records={recs}"


TestEFStore = EFStore.TestCase


def test_the_old_store_module_is_the_older_sdk() -> None:
    # The migration above is only as good as the code that wrote the old directories.
    if OLD is None:
        pytest.skip("no git checkout with 00724fe: the older SDK's code is not at hand")
    assert not hasattr(OLD, "MAX_RESIDUALS") and not hasattr(OLD, "MAX_ACCEPTED")
