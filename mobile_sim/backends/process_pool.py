"""Process-pool backend: a round's jobs spread over persistent worker processes on this machine."""

from __future__ import annotations

import contextlib
import multiprocessing
import numbers
import os
import re
import secrets
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait
from multiprocessing.reduction import ForkingPickler
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np
import numpy.typing as npt

from .._proc import process_start, running
from ..status import say
from ._base import JobResult, TrainContext, TrainJob, check_round, usable_cpus
from ._worker import (
    INNER_BACKENDS,
    StallLimit,
    WorkerState,
    check_job_timeout,
    join_evaluations,
    name_devices,
    split_jobs,
    task_examples,
    test_set_size,
)

__all__ = ["ProcessPoolBackend", "PoolWorkerError", "EVAL_BATCH", "eval_chunks"]

# Seconds all the workers together get to start (spawn, import torch, receive the data), and
# each gets to exit.
_START_TIMEOUT_S = 300.0
_STOP_TIMEOUT_S = 10.0
# Seconds `close` gives all the workers together to exit on their stop message before it kills
# the rest. An idle worker exits in milliseconds (it is waiting in `recv`, and `_worker_main`
# ends with os._exit whatever the start method); one still there after this is frozen in a way SIGCONT does not end (a
# debugger's stop) or not reading its pipe, and has nothing a clean exit would save.
_STOP_GRACE_S = 2.0
# Seconds `close` waits for a task's sender thread to end before it takes the task for one
# still being written (and kills its worker): a finished write's thread ends in microseconds
# on an idle machine, and was seen still alive at close under load (workers killed, -9).
_SENDER_SETTLE_S = 0.5


# Test rows per forward pass in a worker's share of `evaluate` (the shares start at multiples
# of it): half `sdk.trainer.evaluate`'s 250, so that two single-thread workers together hold
# the activations one 250-row batch of the driver's does (the MNIST CNN's first convolution:
# about 25 MB, inside the L3 cache). At 250 rows each, two workers spilled it: on the 2-vCPU AMD
# EPYC of 2026-12-01 (quiet), evaluating the CNN's 2,000 test rows took 0.68-0.71 s in the
# pool against 0.53-0.55 s in one process on two threads, and 0.50-0.51 s in the pool at 125
# rows (medians of 7; a scratch A/B, docs/simulator.md "Backends").
EVAL_BATCH = 125


def eval_chunks(rows: int, workers: int, batch: int) -> list[tuple[int, int]]:
    """Rows [0, rows) in at most `workers` contiguous [lo, hi) shares of whole `batch`-row
    batches (the last may be short), as equal as whole batches allow."""
    batches = -(-rows // batch)
    parts = max(1, min(workers, batches))
    bounds = [min(rows, batch * (batches * k // parts)) for k in range(parts + 1)]
    return [(lo, hi) for lo, hi in zip(bounds, bounds[1:], strict=False) if hi > lo]


class PoolWorkerError(RuntimeError):
    """A worker process failed (its traceback is in the message), died, or stalled."""


def _is_count(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


# The most workers `workers=` takes, pool or Ray (`SimConfig.workers`, `--workers`): each is a
# process of its own that imports torch and keeps a model and the training data, and
# workers beyond the devices a round trains get no jobs. And the most per CPU (of this machine
# for the pool, of the cluster for Ray, checked when it starts): a worker trains on one torch
# thread by default, so more workers than CPUs only take turns on them, at a process each.
MAX_WORKERS = 1024
WORKERS_PER_CPU = 4


def check_workers(workers: int | None) -> None:
    """Refuse a `workers=` that is not an integer in [1, MAX_WORKERS] (None: the default)."""
    if workers is None:
        return
    if not (_is_count(workers) and workers >= 1):
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if workers > MAX_WORKERS:
        raise ValueError(
            f"workers must be at most {MAX_WORKERS} (pool and ray), got {workers}: each is a "
            "process that imports torch, and workers beyond the devices of a round get no jobs"
        )


def too_many_per_cpu(workers: int, cpus: float, where: str) -> str | None:
    """The error for `workers` over WORKERS_PER_CPU per CPU of `cpus` ("this machine for the
    pool", "the Ray cluster"), None when they fit."""
    most = int(WORKERS_PER_CPU * cpus)
    if workers <= most:
        return None
    return (
        f"workers must be at most {WORKERS_PER_CPU} per CPU of {where} ({most} with its "
        f"{cpus:g} CPUs), got {workers}: more only take turns on the same CPUs, each a process "
        "that imports torch"
    )


def _stop(procs: Sequence[Any]) -> None:
    """Kill the workers still alive: used when their work will never be read.

    SIGKILL, not SIGTERM: a worker frozen by SIGSTOP holds a SIGTERM pending until it is
    continued, so it would outlive this call and `close` would wait for it (and its pipe would
    stay open, keeping a send to it blocked). A worker keeps nothing a clean exit would save:
    the shared blocks belong to the parent.
    """
    for proc in procs:
        if proc.is_alive():
            proc.kill()


def _continue(proc: Any) -> None:
    """Continue a worker that may be stopped (SIGSTOP, a terminal's Ctrl-Z): a stopped process
    never reads the stop message. Harmless to a running one."""
    if hasattr(signal, "SIGCONT") and proc.pid is not None and proc.is_alive():
        try:
            os.kill(proc.pid, signal.SIGCONT)
        except ProcessLookupError:  # it exited since
            pass


class _Shared:
    """A float32 array in shared memory: the writer creates it, readers attach by name.

    The creating process (the pool's parent) owns the segment and alone unlinks it. Python
    before 3.13 registers an attached segment with the resource tracker too, which is harmless
    only when the reader shares the parent's tracker: see `ProcessPoolBackend.start`.
    """

    def __init__(self, shape: tuple[int, ...], name: str | None = None) -> None:
        nbytes = max(4, int(np.prod(shape)) * 4)
        if name is None:
            while True:
                try:
                    self.shm = SharedMemory(create=True, size=nbytes, name=_segment_name())
                    break
                except FileExistsError:  # this process drew the same random part twice
                    continue
        elif sys.version_info >= (3, 13):
            self.shm = SharedMemory(name=name, track=False)  # a reader leaves it to the owner
        else:
            self.shm = SharedMemory(name=name)
        self.array: npt.NDArray[np.float32] = np.ndarray(shape, np.float32, buffer=self.shm.buf)

    @property
    def name(self) -> str:
        return self.shm.name

    def close(self, unlink: bool = False) -> None:
        del self.array  # the buffer must have no exports before the mapping closes
        try:
            self.shm.close()
        except BufferError:
            pass  # a view is still alive somewhere; the mapping goes when the process does
        if unlink:
            try:
                self.shm.unlink()
            except FileNotFoundError:
                # Already gone (removed by hand, or by a tracker of a foreign process): the
                # goal is met, but `unlink` raised before telling our tracker, which would
                # otherwise try again at exit and warn about a leak that is not one.
                resource_tracker.unregister(self.shm._name, "shared_memory")  # type: ignore[attr-defined]


# The segments a pool's parent creates, where they are files in /dev/shm (Linux), are named
# after it: SEGMENT_PREFIX, then its pid namespace (the inode of /proc/self/ns/pid), pid and
# start time (`process_start`), then a random part. A pool whose process group is SIGKILLed
# loses its resource tracker with it (the tracker, in the same group, would otherwise unlink
# them), and its segments stay in /dev/shm, memory that only a reboot gave back; the next pool
# start removes them (`sweep_stale_segments`). Elsewhere (macOS limits a name to 31
# characters) the names are SharedMemory's own.
SEGMENT_PREFIX = "psm_plume_"
_SEGMENT = re.compile(
    re.escape(SEGMENT_PREFIX) + r"(?P<ns>[0-9]+)_(?P<pid>[0-9]+)_(?P<start>[0-9]+)_[0-9a-f]+"
)
_SHM_ROOT = "/dev/shm"


def _pid_namespace() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _segment_name() -> str | None:
    """The name of a segment this process creates (see `SEGMENT_PREFIX`), or None (a name of
    SharedMemory's) where its owner cannot be named so."""
    ns, start = _pid_namespace(), process_start(os.getpid())
    if ns is None or start is None or not os.path.isdir(_SHM_ROOT):
        return None
    return f"{SEGMENT_PREFIX}{ns}_{os.getpid()}_{start}_{secrets.token_hex(4)}"


def _owner_gone(pid: int, start: int) -> bool:
    """Whether the process that named a segment (`pid`, started at `start`) is surely gone:
    no process has that pid, or the one that has it started at another time (the pid was
    reused). Anything unclear is not gone."""
    return running(pid, start) is False


def sweep_stale_segments(root: str = _SHM_ROOT) -> list[str]:
    """Remove from `root` the shared-memory segments of pools whose parent is gone (killed
    with SIGKILL, its resource tracker with it): only this user's, named by `_segment_name`
    in this pid namespace (a pid of another namespace, as in a container sharing /dev/shm,
    says nothing here), whose owner is surely gone (`_owner_gone`). A live pool's segments,
    this process's included, are never touched. The names removed, sorted."""
    ns = _pid_namespace()
    getuid = getattr(os, "getuid", None)
    if ns is None or getuid is None or not os.path.isdir(root):
        return []
    uid = getuid()
    removed = []
    with contextlib.suppress(OSError), os.scandir(root) as entries:
        for entry in entries:
            found = _SEGMENT.fullmatch(entry.name)
            if found is None or int(found["ns"]) != ns:
                continue
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
            except OSError:
                continue
            if not _owner_gone(int(found["pid"]), int(found["start"])):
                continue
            try:
                os.unlink(entry.path)
            except OSError:  # removed meanwhile, or not ours to remove after all
                continue
            removed.append(entry.name)
    return sorted(removed)


def _check_room(nbytes: int) -> None:
    """Refuse a block /dev/shm has no room for. Creating one succeeds anyway (tmpfs files are
    sparse) and the first write past the limit kills the writing worker with SIGBUS: a bare
    "worker died" instead of the reason. Docker gives containers 64 MB unless --shm-size."""
    root = "/dev/shm"
    if not os.path.isdir(root):
        return  # not Linux: shared memory does not live in a size-limited file system
    st = os.statvfs(root)
    free = st.f_bavail * st.f_frsize
    if nbytes > free:
        raise PoolWorkerError(
            f"the pool needs {nbytes / 2**20:.1f} MiB of shared memory for this round but "
            f"{root} has {free / 2**20:.1f} MiB free (in Docker, raise --shm-size); or use "
            "fewer clients per round, or another backend"
        )


def _send(conn: Connection, payload: bytes | memoryview) -> None:
    """Send one pickled payload to a worker, from a thread of its own: the training context
    (one thread per worker at `start`) or a task (one per task in flight).

    A payload bigger than the pipe's buffer (the context, a device with many examples, a
    vectorized share of hundreds of jobs) is only written as the worker reads it: sent from
    the parent's thread, a worker frozen after its last reply (SIGSTOP, a debugger, a
    swapped-out machine) would block the parent in the send, before the stall limit is ever
    checked.
    """
    try:
        conn.send_bytes(payload)
    except Exception:  # noqa: BLE001
        # The worker died or was stopped (reading its pipe says so), or was killed and its pipe
        # closed while this write waited (the round has failed already); nobody is left to tell.
        pass


def _ignore_sigint() -> None:
    """Make this worker deaf to SIGINT. A terminal's Ctrl-C goes to the whole foreground
    process group, workers included: each printed a KeyboardInterrupt traceback before the
    parent's own message. The parent handles the interrupt and closes the pool (its stop
    message, or SIGKILL), so a worker has nothing to do on it. A "fork" worker starts with
    SIGINT blocked (`_sigint_blocked`): one that arrived since is discarded here."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread while a worker is started. A "fork" child inherits the
    mask, so a Ctrl-C before it reaches `_ignore_sigint` waits, blocked, and is then
    discarded. A "spawn" (or "forkserver") child does not: multiprocessing starts its
    interpreter with an empty mask, so a Ctrl-C during that start-up (before
    `_ignore_sigint`, while `start` says it is starting the workers) still reaches it. The
    parent's own Ctrl-C is held only while `Process.start` runs, then delivered: not lost
    (ignoring SIGINT in the parent instead, which exec would pass on, would lose it)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# What a worker's pipe raises once the parent is gone: EOF when its end closed, a reset when
# it closed with a reply of ours unread (a parent SIGKILLed or failed mid-round), a broken pipe
# when we write to it. Nobody is left to answer, so the worker leaves quietly on any of them.
_PARENT_GONE = (EOFError, ConnectionError)
# Seconds between a worker's checks that the process that started it is still there.
_PARENT_POLL_S = 0.5


def _leave_with_parent() -> None:
    """Make this worker exit at once when the process that started the pool is gone without a
    stop message (SIGKILLed, killed by the OOM killer), whatever the worker is doing.

    Orphaned, a worker busy with a task used to run it to the end (forever, if stuck), and a
    "fork" worker idle in `recv` waited there for good: it inherits the parent's end of its
    own pipe (and of the pipes made before it), so it never reads EOF. Each kept the pool's
    shared-memory blocks in /dev/shm, as the resource tracker (which unlinks the blocks of a
    parent that died) waits for every worker to exit first. A thread checks every
    `_PARENT_POLL_S` whether this process was re-parented ("fork", "spawn": the parent died)
    or multiprocessing's sentinel of the parent says it is gone ("forkserver", whose server
    is the worker's parent and outlives the pool's parent while any worker runs). Not
    prctl(PR_SET_PDEATHSIG), which fires when the thread that started the worker ends."""
    parent = multiprocessing.parent_process()
    ppid = os.getppid()

    def watch() -> None:
        while os.getppid() == ppid and (parent is None or parent.is_alive()):
            time.sleep(_PARENT_POLL_S)
        os._exit(0)  # nobody will read a reply; the kernel drops the mappings

    threading.Thread(target=watch, name="plume-pool-parent", daemon=True).start()


def _answer(conn: Connection, work: Callable[..., Any], *args: Any) -> None:
    """Send the parent ("done", work(*args)), or ("error", the traceback) when `work` raises.
    The send itself is not in the try: a parent gone (`_PARENT_GONE`) ends the worker, and is
    no error of the task's to report."""
    try:
        reply = ("done", work(*args))
    except Exception:
        reply = ("error", traceback.format_exc())
    conn.send(reply)


def _worker_main(conn: Connection, inner: str, threads: int) -> None:
    """A worker's life: receive the context, build the model once, then train until told to stop.

    Messages in: the TrainContext first (answered ("ready", (pid, the model's parameter
    count, why an inner vectorized backend trains one job at a time or None)), or the error), then ("task", params_name, d, out_name, slots,
    [(slot, job), ...]), ("eval", params_name, d, lo, hi, batch_size) or None (stop). The
    global params are read from shared memory and each delta is written into its slot of the
    output block, so no array crosses the pipe; only (slot, examples, loss) go back, or for
    an evaluation (correct, [each batch's summed loss]) of test rows [lo, hi). A parent that
    goes away ends the worker without a word (`_PARENT_GONE`, `_leave_with_parent`).
    """
    _ignore_sigint()
    _leave_with_parent()
    try:
        ctx: TrainContext = conn.recv()
    except _PARENT_GONE:  # the parent stopped the start-up, or died
        return
    ready: tuple[str, Any]
    try:
        # warn=False: a vmap fallback is said once by the parent (`_say_fallback`), not by
        # every worker.
        state = WorkerState(ctx, inner, threads, warn=False)
        ready = ("ready", (os.getpid(), state.num_params(), state.fallback_reason()))
    except BaseException:
        ready = ("error", traceback.format_exc())
    try:
        conn.send(ready)
    except _PARENT_GONE:
        return
    if ready[0] == "error":
        return
    attached: dict[str, _Shared] = {}

    def block(name: str, shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
        shared = attached.get(name)
        if shared is None or shared.array.shape != shape:
            if shared is not None:
                shared.close()
            shared = _Shared(shape, name)
            attached[name] = shared
        return shared.array

    def evaluate(params_name: str, d: int, lo: int, hi: int, batch_size: int) -> Any:
        return state.evaluate(block(params_name, (d,)), lo, hi, batch_size)

    def train(params_name: str, d: int, out_name: str, slots: int, work: list[Any]) -> Any:
        params = block(params_name, (d,))
        out = block(out_name, (slots, d))
        results = state.train(params, [job for _, job in work])
        reply = []
        for (slot, _), res in zip(work, results, strict=True):
            out[slot] = res.delta
            reply.append((slot, res.device_id, res.num_examples, res.loss))
        return reply

    try:
        while True:
            msg = conn.recv()
            if msg is None:
                break
            if msg[0] == "eval":
                _answer(conn, evaluate, *msg[1:])
                continue
            _, params_name, _, out_name, _, _ = msg
            # The parent unlinks a block it replaces (a bigger cohort, another model size), but
            # its memory is only freed once every mapping is gone: drop ours now, not at exit.
            for stale in [n for n in attached if n not in (params_name, out_name)]:
                attached.pop(stale).close()
            _answer(conn, train, *msg[1:])
    except _PARENT_GONE:  # the parent went away without saying stop
        pass
    finally:
        for shared in attached.values():
            shared.close()
    # Told to stop (or orphaned): leave at once, as a forked child does. A spawned worker
    # returning from here would run the whole interpreter shutdown with torch loaded, which
    # can outlast `close`'s grace period and get a healthy worker SIGKILLed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _say_fallback(model: str, reasons: set[str]) -> None:
    """Warn once per run, here in the parent, that the workers' vectorized backend cannot vmap
    `model` and trains its jobs one by one (each reason once). Each worker used to log it
    itself: the same line once per worker."""
    if reasons:
        from .vectorized import warn_fallback

        for reason in sorted(reasons):
            warn_fallback(model, reason)


class ProcessPoolBackend:
    """Trains each round's jobs in `workers` persistent processes (default: one per CPU core).

    - The training context (model name, data, SGD settings, plugins) goes to each worker once,
      at `start`, which also waits until every worker has imported the context's plugins and
      built its model: process start-up is not paid inside the first round.
    - Each round, the global params are written once into shared memory and every delta comes
      back through a shared-memory slot: only job descriptions and (examples, loss) are
      pickled, not 6.6 MB arrays per job.
    - With `inner="sequential"` jobs are handed out one at a time, largest first, to whichever
      worker is free (longest-processing-time scheduling: the round ends when the last job
      does, and a worker slowed by other load simply takes fewer jobs). With
      `inner="vectorized"` each worker gets one share of about equal work, to vmap together.
    - `threads_per_worker` torch threads per worker (default 1: with one worker per core, more
      only oversubscribes the machine). Processes start with `start_method` ("spawn" by
      default: safe with torch's thread pools).
    - `job_timeout_s` (seconds, or None) is a stall limit per task (one job with
      `inner="sequential"`, a worker's whole share with `"vectorized"`), counted from when the
      task is sent. A task still running past it fails the round with `PoolWorkerError`
      naming its device ids and the limit; every worker is stopped and the pool closed, as
      when a worker dies. It is a plain attribute: it may be changed between rounds. No fixed
      figure is safe for honest work of every size (a task's time grows with its examples x
      epochs x model size, a vectorized share can be hundreds of jobs, and a loaded machine
      stretches it to minutes or hours), so the default None is an automatic limit that
      scales with the work (`StallLimit`: 20x the task's examples at the rate of the tasks
      finished since `start`, at least 300 s; 3600 s for a worker's first task, which pays
      its warm-up). A stuck worker therefore cannot hang the run forever. A dead worker needs
      no limit: it fails the round at once either way. Each task is written to its worker by a
      thread of its own (`_send`), so a worker that stops reading (frozen by SIGSTOP
      after its last reply, say) cannot block the parent in a send longer than the pipe
      holds: the limit covers the send too, and the error says the task was not read.
    - `start` has one deadline for all workers together (`_START_TIMEOUT_S`, 300 s); its
      error says how many workers were ready by then.
    """

    name = "pool"

    def __init__(
        self,
        workers: int | None = None,
        *,
        inner: str = "sequential",
        threads_per_worker: int = 1,
        start_method: str = "spawn",
        job_timeout_s: float | None = None,
    ) -> None:
        check_workers(workers)
        if not _is_count(threads_per_worker):
            raise ValueError(f"threads_per_worker must be an integer, got {threads_per_worker!r}")
        if inner not in INNER_BACKENDS:
            raise ValueError(f"inner backend must be one of {INNER_BACKENDS}, got {inner!r}")
        if start_method not in multiprocessing.get_all_start_methods():
            raise ValueError(f"start method {start_method!r} is not available here")
        cpus = usable_cpus()  # affinity and cgroup quota, not every core of the host
        where = "this machine for the pool"
        if workers is not None and (problem := too_many_per_cpu(workers, cpus, where)):
            raise ValueError(problem)
        self.workers = workers or cpus
        self.inner = inner
        self.threads_per_worker = threads_per_worker
        self.start_method = start_method
        self.job_timeout_s = check_job_timeout(job_timeout_s)
        self._stall = StallLimit()  # the limit when job_timeout_s is None
        self._procs: list[Any] = []
        self._conns: list[Connection] = []
        # The thread writing each worker's latest task (`_send`), while it may still run.
        self._senders: dict[Connection, threading.Thread] = {}
        self._params: _Shared | None = None
        self._out: _Shared | None = None
        self._num_examples = 0  # the training set's size, for `check_round`
        self._size = 0  # the model's parameter count (the workers' "ready"), for `check_round`
        self._test_rows = 0  # the context's test rows (0: none), for `evaluate`
        self._test_predictions = 0  # ... and its labels (y_test.size)

    def start(self, ctx: TrainContext) -> None:
        self.close()
        # Before this pool's segments are made: a pool killed earlier left its own behind.
        sweep_stale_segments()
        self._num_examples = len(ctx.y_train)
        self._test_rows, self._test_predictions = test_set_size(ctx)
        self._stall = StallLimit()  # rates of another context say nothing of this one
        mp: Any = multiprocessing.get_context(self.start_method)
        if os.name == "posix":
            # Before 3.13 a worker attaching to a block registers it with the resource tracker.
            # A "fork" child of a process with no tracker yet would launch its own, and when the
            # child exits that tracker unlinks the parent's live blocks (so the parent's own
            # unlink in `close` met FileNotFoundError) and warns of a leak. Started here, the
            # tracker is inherited and shared by every worker, as "spawn" and "forkserver"
            # arrange themselves: a worker's registration repeats the parent's (the tracker
            # keeps a set), and the parent's unlink settles the block once.
            resource_tracker.ensure_running()
        # The context (the whole training set: 24 MB for MNIST) goes through each worker's
        # pipe after every worker is spawned, not in the spawn arguments: `Process.start()`
        # writes those itself and, if the child dies before reading them all, blocks forever
        # (it holds the pipe's read end until the write is done). Threads send it in parallel,
        # pickled once, so the deadline below covers every step of the start-up.
        say(f"starting {self.workers} pool worker{'s' if self.workers != 1 else ''}")
        payload = ForkingPickler.dumps(ctx)
        senders: list[threading.Thread] = []
        started = False
        try:
            for _ in range(self.workers):
                parent, child = mp.Pipe()
                proc = mp.Process(
                    target=_worker_main,
                    args=(child, self.inner, self.threads_per_worker),
                    daemon=True,
                )
                with _sigint_blocked():
                    proc.start()
                child.close()
                self._procs.append(proc)
                self._conns.append(parent)
            # Only once all are spawned: a "fork" child would inherit a sender mid-send.
            for conn in self._conns:
                sender = threading.Thread(target=_send, args=(conn, payload), daemon=True)
                sender.start()
                senders.append(sender)
            fallbacks = self._await_ready(time.monotonic() + _START_TIMEOUT_S)
            started = True
        finally:
            if not started:
                # Workers still starting would not read the stop message (`close` would wait
                # _STOP_TIMEOUT_S for each); and once they are gone a send still in progress
                # fails at once, so its pipe is closed only after that.
                _stop(self._procs)
                for proc in self._procs:
                    proc.join(_STOP_TIMEOUT_S)
            for sender in senders:
                sender.join(_STOP_TIMEOUT_S)
            if not started:
                self.close()
        _say_fallback(ctx.model, fallbacks)

    def _await_ready(self, deadline: float) -> set[str]:
        """Read every worker's "ready" by `deadline` (time.monotonic() s), all in parallel;
        the workers' reasons for a vmap fallback (`WorkerState.fallback_reason`), if any."""
        fallbacks: set[str] = set()
        waiting = set(self._conns)
        while waiting:
            ready = wait(list(waiting), max(0.0, deadline - time.monotonic()))
            if not ready:
                started = len(self._conns) - len(waiting)
                raise PoolWorkerError(
                    f"{started} of {len(self._conns)} workers were ready after "
                    f"{_START_TIMEOUT_S:g} s; the rest did not start in time (a loaded machine, "
                    "or a model or dataset too slow to build)"
                )
            for conn in ready:
                if isinstance(conn, Connection):
                    waiting.discard(conn)
                    # Raises on a worker's error or death; else (pid, the model's size, its
                    # fallback reason), the same from every worker (one context, one model).
                    _, self._size, reason = self._reply(conn)
                    if reason is not None:
                        fallbacks.add(reason)
        return fallbacks

    def _reply(self, conn: Connection) -> Any:
        try:
            kind, payload = conn.recv()
        except (EOFError, ConnectionError):
            # A worker that dies with a message of ours still unread resets the connection
            # instead of closing it: the same death.
            raise PoolWorkerError("a worker process died") from None
        if kind == "error":
            raise PoolWorkerError(f"a worker failed:\n{payload}")
        return payload

    def _blocks(self, d: int, slots: int) -> tuple[_Shared, _Shared]:
        # The old block is forgotten before the new one is made: if making it fails (no room
        # in /dev/shm, no file descriptors), `close` must not meet a half-closed block.
        if self._params is None or self._params.array.shape != (d,):
            old, self._params = self._params, None
            if old is not None:
                old.close(unlink=True)
            _check_room(4 * d)
            self._params = _Shared((d,))
        if self._out is None or self._out.array.shape[1] != d or self._out.array.shape[0] < slots:
            old, self._out = self._out, None
            if old is not None:
                old.close(unlink=True)
            _check_room(4 * slots * d)
            self._out = _Shared((slots, d))
        return self._params, self._out

    def train(self, params: npt.NDArray[np.float32], jobs: Sequence[TrainJob]) -> list[JobResult]:
        if not self._conns:
            raise RuntimeError("backend not started")
        # Here, not in a worker: bad input fails the call and leaves the pool running.
        check_round(params, jobs, self._num_examples, size=self._size)
        if not jobs:
            return []
        d = int(params.shape[0])
        shm_params, shm_out = self._blocks(d, len(jobs))
        np.copyto(shm_params.array, params, casting="same_kind")
        slots = int(shm_out.array.shape[0])
        if self.inner == "sequential":
            # Largest first, each its own task: dynamic longest-processing-time scheduling.
            order = sorted(range(len(jobs)), key=lambda i: (-len(jobs[i].indices), i))
            tasks = [[i] for i in order]
        else:
            tasks = split_jobs(jobs, self.workers)
        try:
            return self._run(tasks, jobs, shm_params, shm_out, d, slots)
        except BaseException:
            # Replies still in flight would be read as the next round's: start afresh. The
            # other workers' tasks are abandoned, so stop them now rather than wait for them
            # (up to _STOP_TIMEOUT_S each) to finish work nobody will read.
            _stop(self._procs)
            self.close()
            raise

    def _run(
        self,
        tasks: list[list[int]],
        jobs: Sequence[TrainJob],
        shm_params: _Shared,
        shm_out: _Shared,
        d: int,
        slots: int,
    ) -> list[JobResult]:
        results: list[JobResult | None] = [None] * len(jobs)

        def message(task: list[int]) -> tuple[Any, ...]:
            work = [(i, jobs[i]) for i in task]
            return ("task", shm_params.name, d, shm_out.name, slots, work)

        def take(task: list[int], reply: Any) -> None:
            for slot, device_id, examples, loss in reply:
                # Copy out: the slot is overwritten next round.
                delta = shm_out.array[slot].copy()
                results[slot] = JobResult(device_id, delta, examples, loss)

        self._dispatch(
            tasks,
            message,
            take,
            size=lambda task: task_examples(jobs, task),
            what=lambda task: ("for devices", "training devices", name_devices(jobs, task)),
            learn=True,
            fixed=self.job_timeout_s,
        )
        return [r for r in results if r is not None]

    def _dispatch(
        self,
        tasks: list[list[int]],
        message: Callable[[list[int]], tuple[Any, ...]],
        take: Callable[[list[int], Any], None],
        *,
        size: Callable[[list[int]], int],
        what: Callable[[list[int]], tuple[str, str, str]],
        learn: bool,
        fixed: float | None,
    ) -> None:
        """Hand `tasks` out to idle workers, in order, until all are answered: each worker's
        reply goes to `take(task, reply)`. `message(task)` is the task's message, `size(task)`
        its examples (the unit of the stall limit) and `what(task)` its words for a stall
        error: ("for devices", "training devices", "d1, d2"). `learn`: the task's time counts
        towards the automatic stall limit's rate (training; an evaluation's rows would make
        the rate look faster than training is). `fixed`: the stall limit in seconds
        (`job_timeout_s`, a training task's), or None for the automatic one."""
        idle = list(self._conns)
        # Each busy worker's task and when it was sent (time.monotonic() s).
        busy: dict[Connection, tuple[float, list[int]]] = {}
        pending = list(reversed(tasks))

        def limit(conn: Connection, task: list[int]) -> float:
            return self._stall.task_limit(fixed, conn, size(task))

        while pending or busy:
            while pending and idle:
                conn = idle.pop()
                task = pending.pop()
                # Pickled here, so a job that cannot be pickled fails the call itself; written
                # by a thread, so a worker that does not read cannot block this loop: the
                # task's clock starts now and its limit covers the send too.
                payload = ForkingPickler.dumps(message(task))
                previous = self._senders.pop(conn, None)
                if previous is not None:
                    previous.join()  # done: the worker replied, so it read the whole task
                sender = threading.Thread(target=_send, args=(conn, payload), daemon=True)
                sender.start()
                self._senders[conn] = sender
                busy[conn] = (time.monotonic(), task)
            # A dead worker's pipe reads as ready (EOF), so death still ends the wait at once;
            # the timeout only adds a wake-up at the first task's limit.
            first = min(sent + limit(conn, task) for conn, (sent, task) in busy.items())
            for ready in wait(list(busy), max(0.0, first - time.monotonic())):
                if not isinstance(ready, Connection):
                    continue
                conn = ready
                sent, task = busy.pop(conn)
                take(task, self._reply(conn))
                if learn:
                    self._stall.finished(conn, size(task), time.monotonic() - sent)
                idle.append(conn)
            now = time.monotonic()
            for conn, (sent, task) in busy.items():
                if now - sent < limit(conn, task):
                    continue
                why = self._stall.overrun(fixed, conn, size(task))
                unread, doing, names = what(task)
                writer = self._senders.get(conn)
                state = (
                    f"had still not read its task {unread}"  # frozen, or its pipe stuck
                    if writer is not None and writer.is_alive()
                    else f"was still {doing}"
                )
                raise PoolWorkerError(
                    f"a worker {state} {names} after {why}; the pool's workers were stopped"
                )

    def evaluate(self, params: npt.NDArray[np.float32]) -> tuple[float, float] | None:
        """(accuracy, mean loss) of `params` on the context's test set (`TrainContext.x_test`,
        `y_test`), its rows split over the workers at multiples of `EVAL_BATCH` (each worker
        one torch thread, as it trains), or None when the context has none.

        Bit for bit `sdk.trainer.evaluate(model, params, x_test, y_test, EVAL_BATCH)` where a
        kernel's result does not depend on its thread count (each batch is the same; the
        batches' sums are added in row order here, as there); evaluate's default 250-row
        batches give the same accuracy and the loss to float rounding. The caller checks the
        test set once first (`sdk.trainer.check_evaluation_data`): a worker does not. `params`
        are checked here, as `train` checks them (`check_round`: a 1-D float array of the
        model's length, else `ValueError`, the pool left running). A worker that fails, dies
        or stalls fails the call as in `train`, and the pool is closed; the stall limit is the
        automatic one (`StallLimit`, for the share's rows), never `job_timeout_s`, which
        bounds a training task."""
        if not self._conns:
            raise RuntimeError("backend not started")
        # Params only (no jobs), before any worker is asked: a wrong length used to fail in
        # each worker's `set_flat_params`, as a PoolWorkerError that closed the pool.
        check_round(params, (), self._num_examples, size=self._size)
        if self._test_rows == 0:
            return None
        d = int(params.shape[0])
        shm_params, _ = self._blocks(d, 1)
        np.copyto(shm_params.array, params, casting="same_kind")
        chunks = eval_chunks(self._test_rows, len(self._conns), EVAL_BATCH)
        tasks = [[i] for i in range(len(chunks))]
        parts: list[tuple[int, list[float]] | None] = [None] * len(chunks)

        def message(task: list[int]) -> tuple[Any, ...]:
            lo, hi = chunks[task[0]]
            return ("eval", shm_params.name, d, lo, hi, EVAL_BATCH)

        def take(task: list[int], reply: Any) -> None:
            parts[task[0]] = reply

        def rows(task: list[int]) -> str:
            lo, hi = chunks[task[0]]
            return f"{lo}:{hi}"

        try:
            self._dispatch(
                tasks,
                message,
                take,
                size=lambda task: chunks[task[0]][1] - chunks[task[0]][0],
                what=lambda task: ("to evaluate test rows", "evaluating test rows", rows(task)),
                learn=False,
                # Not job_timeout_s: that bounds one device's training, and a worker's share
                # of the test set may take longer. The automatic limit (its rows at 20x the
                # training rate, at least 300 s) still ends a stuck worker.
                fixed=None,
            )
        except BaseException:
            _stop(self._procs)  # as in `train`: replies in flight would be read as the next's
            self.close()
            raise
        return join_evaluations(parts, self._test_predictions)

    def close(self) -> None:
        senders, self._senders = self._senders, {}
        for conn, proc in zip(self._conns, self._procs, strict=True):
            sender = senders.get(conn)
            if sender is not None:
                # A write the worker has read (it replied) ends its thread in moments, but not
                # always before this check on a crowded machine: give it that moment.
                sender.join(_SENDER_SETTLE_S)
            if sender is not None and sender.is_alive():
                # A task still being written: the stop message would interleave with it, and
                # a worker that does not read would block it. Its work is abandoned anyway.
                proc.kill()
                continue
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        # One grace period for all of them, then SIGKILL (a frozen worker would hold a
        # SIGTERM pending: before, close waited 10 s, sent SIGTERM and waited 10 s more).
        for proc in self._procs:
            _continue(proc)
        deadline = time.monotonic() + _STOP_GRACE_S
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        _stop(self._procs)
        for proc in self._procs:
            proc.join(_STOP_TIMEOUT_S)
        # A write still waiting meets the dead worker's closed pipe and ends: close each
        # connection only after, not under a thread that still uses it.
        for sender in senders.values():
            sender.join(_STOP_TIMEOUT_S)
        for conn in self._conns:
            conn.close()
        self._procs, self._conns = [], []
        # Forgotten before they are closed: if unlinking one raises, a second `close` is still
        # a no-op, not an attempt on a half-closed block.
        blocks = [shared for shared in (self._params, self._out) if shared is not None]
        self._params = self._out = None
        for shared in blocks:
            shared.close(unlink=True)
