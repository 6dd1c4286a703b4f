"""Two threads asking for the same unplanned SecAgg group at once get one group, planned once.

`SecureCoordinator.open_round` plans a round's groups lazily (`_Groups.__getitem__`): a
group is built at its first request, under a lock, and the request threads of the service
can ask for the same group together (two devices of a group fetching their setup). Nothing
tested that lock: without it, or without the check again under it, each thread built its
own `SecureRound` (its own SecAgg server), and the devices that reached the one the list did
not keep were lost to the round. The interleaving is forced, not raced: the first build
waits until the second thread is blocked on the lock (or, without the lock, is building too).
"""

from __future__ import annotations

import threading
from types import TracebackType

import numpy as np

from coordinator.secure import SecureConfig, SecureCoordinator, SecureRound

_WAIT_S = 10.0  # a safety bound only: with or without the lock, nothing waits this long


class _SpyLock:
    """A lock that tells `on_contended` when a thread finds it held and has to wait."""

    def __init__(self, on_contended: threading.Event) -> None:
        self._inner = threading.Lock()
        self._contended = on_contended

    def __enter__(self) -> _SpyLock:
        if not self._inner.acquire(blocking=False):
            self._contended.set()
            self._inner.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._inner.release()


def test_two_threads_asking_for_an_unplanned_group_get_one_secagg_server() -> None:
    """Kills _coordinator.py:252 (the `with self._lock:` around the build removed) and
    _coordinator.py:254 (`if sr is None` under the lock -> True): either way the second
    thread built a second `SecureRound` for group 2, and the two threads held different
    SecAgg servers for the same devices."""
    # Prepare: 9 devices in groups of 3; groups 1 and 2 are not planned yet
    config = SecureConfig(coord_fraction=0.25, group_size=3, sketch=False, seed=5)
    coord = SecureCoordinator(np.zeros(40, np.float32), config)
    task = coord.open_round([f"dev-{i}" for i in range(9)], 4)
    groups = task.groups
    assert not groups.built(2)  # type: ignore[attr-defined]
    contended = threading.Event()  # the second thread waits on the lock (or builds too)
    first_building = threading.Event()
    real_build = groups._build  # type: ignore[attr-defined]
    builds: list[int] = []

    def build(g: int) -> SecureRound:
        builds.append(g)
        if len(builds) == 1:
            first_building.set()
            assert contended.wait(_WAIT_S), "the second thread never asked for the group"
        else:
            contended.set()  # no lock kept the second thread out: let the first go on
        sr: SecureRound = real_build(g)
        return sr

    groups._build = build  # type: ignore[attr-defined]
    groups._lock = _SpyLock(contended)  # type: ignore[attr-defined]
    got: dict[str, SecureRound] = {}

    def ask(name: str) -> None:
        got[name] = groups[2]

    first = threading.Thread(target=ask, args=("first",))
    second = threading.Thread(target=ask, args=("second",))
    # Execute: the second thread asks while the first is inside the build
    first.start()
    assert first_building.wait(_WAIT_S)
    second.start()
    first.join(_WAIT_S)
    second.join(_WAIT_S)
    # Assert: one build, one SecAgg server, and it is the group's from now on
    assert not first.is_alive() and not second.is_alive()
    assert builds == [2]
    assert got["first"] is got["second"] is groups[2]
    assert groups[2].device_ids == tuple(task.members[2])
