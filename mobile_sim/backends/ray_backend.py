"""Ray backend: a round's jobs split over Ray actors, on this machine or a whole cluster.

`pip install .[ray]`. Without an address it starts a private local Ray runtime (even when
`ray start` runs a cluster on this machine); with
``address="auto"``, an explicit ``ray://`` / ``host:port`` address or the ``RAY_ADDRESS``
environment variable it joins a running cluster (``ray start --head`` on one node,
``ray start --address=HEAD:6379`` on the others). A given address wins over ``RAY_ADDRESS``,
"auto" too (`resolve_address`). Every node needs Plume installed, or pass
``runtime_env={"py_modules": [...]}`` (to ray.init when the backend starts Ray; in a runtime the
caller started, to the actors themselves, where Ray takes no local folders or modules).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

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
from .process_pool import EVAL_BATCH, MAX_WORKERS, check_workers, eval_chunks, too_many_per_cpu
from .vectorized import warn_fallback

__all__ = [
    "RayBackend",
    "RayWorkerError",
    "RuntimeEnvRefused",
    "RuntimeEnvSetupFailed",
    "is_private",
    "resolve_address",
]

# Seconds the actors get to be scheduled and build their model (import torch, get the data).
_START_TIMEOUT_S = 300.0
# Seconds a plain host:port address gets to accept a TCP connection before `start` gives up
# (ray.init would otherwise retry an unreachable address for minutes).
_CONNECT_TIMEOUT_S = 5.0
# The address ray.init documents as "start a new local Ray instance, even if there is already
# an existing local Ray instance": a private runtime, as without any address, not a cluster.
_LOCAL = "local"


def resolve_address(given: str | None) -> tuple[str | None, str]:
    """The Ray address a backend given `given` uses, and where it came from (its `source`,
    "RayBackend(address=...)" or "RAY_ADDRESS"): `given` when it is not blank, whatever
    RAY_ADDRESS holds ("auto" and "local" too), else RAY_ADDRESS, else None (a private
    runtime). Stripped, and blank is unset: Ray reads an empty RAY_ADDRESS as unset but takes
    " host:6379" whole (a host named " host"), and " " as a malformed address. `plume sim`
    reads --ray-address through this too, so that its checks see the address the run uses."""
    address = (given or "").strip()
    if address:
        return address, "RayBackend(address=...)"
    return os.environ.get("RAY_ADDRESS", "").strip() or None, "RAY_ADDRESS"


def is_private(address: str | None) -> bool:
    """Whether `address` (as `resolve_address` returns it) starts a private Ray runtime on
    this machine, with its CPUs, rather than joining a cluster: no address, or "local"."""
    return address is None or address == _LOCAL


@contextlib.contextmanager
def _no_ray_address_variable() -> Iterator[None]:
    """RAY_ADDRESS removed from the environment, and put back after: ray.init reads it for
    address="auto" ("auto" becomes whatever RAY_ADDRESS holds, a ``ray://`` client address or
    "local" too), so a given "auto" would otherwise lose to the variable, and the run would
    record a cluster it did not join (`RayBackend.cluster`)."""
    saved = os.environ.pop("RAY_ADDRESS", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["RAY_ADDRESS"] = saved


def public_address(address: str) -> str:
    """`address` without a user or password before its host (``ray://u:p@head:10001`` ->
    ``ray://head:10001``, ``u:p@head:6379`` -> ``head:6379``): what rounds.json and error
    messages show of a Ray address, since rounds.json is shared with results. A Ray address
    takes no credentials (Ray authenticates with its token), so this only keeps a mistaken
    secret from being written; the backend itself still gets the address as given."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "", address
    netloc, slash, path = rest.partition("/")
    if "@" not in netloc:
        return address
    return f"{scheme}{sep}{netloc.rpartition('@')[2]}{slash}{path}"


def check_reachable(address: str, source: str, timeout_s: float = _CONNECT_TIMEOUT_S) -> None:
    """Fail at once, in one line, when a plain ``host:port`` or a ``ray://host:port`` Ray
    address takes no TCP connection within `timeout_s` (`source` says where the address came
    from; for ``ray://`` the Ray client's port, where ray.init would otherwise wait about 30 s
    and end in a traceback). Other forms ("auto", "local", other schemes, anything without a
    numeric port) are left to Ray. A ``user:password@`` before a plain address's host is a
    ValueError, which shows the address without it (`public_address`): Ray's GCS address
    takes none, and would show it in full."""
    if address.startswith("ray://"):
        netloc = address[len("ray://") :].partition("/")[0].rpartition("@")[2]
        _connect(netloc, public_address(address), source, timeout_s)
        return
    if "://" in address or address in ("auto", "local"):
        return
    if public_address(address) != address:
        raise ValueError(
            f"a Ray address takes no user or password: {public_address(address)} (given by "
            f"{source}, shown here without them) had some before its host; Ray authenticates "
            "with its token (RAY_AUTH_TOKEN or ~/.ray/auth_token), not with the address"
        )
    _connect(address, address, source, timeout_s)


def _connect(netloc: str, shown: str, source: str, timeout_s: float) -> None:
    """`check_reachable`'s TCP check of `netloc` (``host:port``; nothing without a numeric
    port), naming the address as `shown`."""
    host, sep, port_text = netloc.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        return
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [::1]:6379
    end = time.monotonic() + timeout_s
    try:
        with socket.create_connection((host, int(port_text)), timeout=timeout_s) as sock:
            why = _not_grpc(sock, end, timeout_s, shown.startswith("ray://"))
    except OSError as exc:
        if isinstance(exc, TimeoutError):
            why = f"no answer in {timeout_s:g} s"
        else:
            why = (exc.strerror or str(exc) or type(exc).__name__).lower()
    if why is not None:
        raise ConnectionError(
            f"cannot reach a Ray cluster at {shown} (given by {source}): {why}; start one "
            "there (ray start --head) or fix the address (without RAY_ADDRESS or address=, "
            "plume starts a private local Ray runtime)"
        )


# An HTTP/2 client's connection preface and an empty SETTINGS frame (RFC 9113 3.4, 6.5).
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _not_grpc(sock: socket.socket, end: float, timeout_s: float, client: bool) -> str | None:
    """Why the service on `sock` is not a Ray GCS or Ray client server, or None: both are
    gRPC servers, which answer an HTTP/2 preface with a SETTINGS frame (frame type 4) at once.
    A service that takes the connection and says nothing (or speaks another protocol) made
    ray.init retry for minutes (carried since stop 42). With Ray's TLS on (RAY_USE_TLS) the
    server expects a TLS handshake first, so the TCP connection alone is checked."""
    if os.environ.get("RAY_USE_TLS", "0").strip().lower() in ("1", "true", "yes"):
        return None
    port = (
        "the Ray client server's port, 10001 by default"
        if client
        else "the cluster's GCS port, 6379 by default"
    )
    try:
        sock.sendall(_H2_PREFACE)
        head = b""
        while len(head) < 4:
            sock.settimeout(max(end - time.monotonic(), 0.001))
            chunk = sock.recv(4 - len(head))
            if not chunk:
                break
            head += chunk
    except TimeoutError:
        return (
            f"something there takes TCP connections but did not answer as Ray's gRPC server "
            f"in {timeout_s:g} s (is it {port}?)"
        )
    if len(head) == 4 and head[3] == 4:
        return None
    return (
        "something there answered, but not as Ray's gRPC server (it did not speak HTTP/2: "
        f"{'it closed the connection' if not head else 'its first bytes were ' + repr(head)}; "
        f"is it {port}?)"
    )


def _actor_runtime_env(env: dict[str, Any]) -> dict[str, Any]:
    """`env` for the actors' own options, in a Ray runtime the caller started (ray.init before
    `start`): a runtime_env given only to this backend would otherwise be dropped. Ray uploads
    local folders, files or imported modules (``py_modules``, ``working_dir``) only for the
    runtime_env given to ray.init, so those are refused here, in one line that says where to
    put them; URIs and every other field (``env_vars``, ``pip``, ...) go to the actors."""
    local: list[str] = []
    modules = env.get("py_modules")
    for item in [*(modules if isinstance(modules, list) else []), env.get("working_dir")]:
        if item is not None and not (isinstance(item, str) and "://" in item):
            local.append(getattr(item, "__name__", None) or str(item))
    if local:
        raise ValueError(
            "RayBackend(runtime_env=...): Ray uploads local py_modules/working_dir "
            f"({', '.join(local)}) only when they are given to ray.init, and this process "
            "started Ray before the backend: give the runtime_env to that ray.init(...) "
            "instead of to RayBackend, or let the backend start Ray"
        )
    return env


class RayWorkerError(RuntimeError):
    """An actor's share of the round ran past the backend's stall limit (`job_timeout_s`)."""


class RuntimeEnvRefused(ValueError):
    """Ray refused the backend's `runtime_env` (the shape of a key, a path or URI in it, keys
    it takes only alone). The message names the key(s) and leaves out Ray's own, which may
    quote a value: env_vars (and pip's options) may hold secrets."""


class RuntimeEnvSetupFailed(RuntimeError):
    """Ray could not set the backend's `runtime_env` up for the actors (a pip or conda install
    that failed, say). Like `RuntimeEnvRefused`, without Ray's message; Ray's logs have it."""


# Keys of a runtime_env that ray.init turns from local folders or imported modules into
# uploads before it checks them: checked by Ray there, not by `_check_runtime_env` before.
_UPLOADED_KEYS = ("py_modules", "working_dir")
# Where Ray's runtime_env code lives (a frame there raised the error: it is about the env).
_RUNTIME_ENV_CODE = (
    os.path.join("ray", "runtime_env", ""),
    os.path.join("ray", "_private", "runtime_env", ""),
)
_RUNTIME_ENV_FUNCTIONS = ("set_runtime_env", "_validate_runtime_env", "_merge_runtime_env")
_NOT_SHOWN = "Ray's message is left out, as it may quote a value such as a secret"


def _refused_alone(env: dict[str, Any]) -> list[str]:
    """The keys of `env` (none of `_UPLOADED_KEYS`) that Ray's runtime_env check refuses on
    their own."""
    from ray.runtime_env import RuntimeEnv

    refused = []
    for key, value in env.items():
        try:
            RuntimeEnv(**{key: value})
        except Exception:
            refused.append(key)
    return refused


def _which(keys: list[str], env: dict[str, Any], together: bool) -> str:
    """The `keys` of `env` Ray refused, in words ("its pip"); none known: all of its keys,
    refused `together` (a combination, such as pip with conda) or "one of" them."""
    if keys or len(env) == 1:
        return "its " + " and ".join(keys or list(env))
    listed = ", ".join(sorted(env))
    return f"its keys {listed} together" if together else f"one of its keys ({listed})"


def _check_runtime_env(env: dict[str, Any]) -> None:
    """Ray's own check of `env` (what ray.init and an actor's options run), before Ray is
    started or an actor is made: a refusal is one line naming the key, not Ray's message.
    py_modules and working_dir are left to ray.init, which uploads them before it checks."""
    from ray.runtime_env import RuntimeEnv

    checked = {key: value for key, value in env.items() if key not in _UPLOADED_KEYS}
    try:
        RuntimeEnv(**checked)
    except Exception as exc:
        keys = _refused_alone(checked)
        raise RuntimeEnvRefused(
            f"RayBackend(runtime_env=...): Ray refuses {_which(keys, checked, together=True)} "
            f"({type(exc).__name__}; {_NOT_SHOWN})"
        ) from None


def _from_runtime_env(exc: BaseException) -> list[str] | None:
    """When Ray's runtime_env code raised `exc`, the keys its frames name (py_modules.py,
    working_dir.py, pip.py, ...; possibly none); None when `exc` came from elsewhere."""
    frames = traceback.extract_tb(exc.__traceback__)
    named: list[str] = []
    found = False
    for frame in frames:
        in_code = any(part in frame.filename for part in _RUNTIME_ENV_CODE)
        if in_code or frame.name in _RUNTIME_ENV_FUNCTIONS:
            found = True
        if in_code:
            stem = os.path.splitext(os.path.basename(frame.filename))[0]
            if stem not in named:
                named.append(stem)
    return named if found else None


@contextlib.contextmanager
def _runtime_env_errors(
    env: dict[str, Any] | None, on_refusal: Callable[[], None]
) -> Iterator[None]:
    """Turn an error Ray's runtime_env code raises (in ray.init, or making the actors) into
    `RuntimeEnvRefused`, naming the key(s) and leaving Ray's message out; `on_refusal` runs
    first (shutting down a runtime ray.init left half started)."""
    try:
        yield
    except Exception as exc:
        named = None if env is None else _from_runtime_env(exc)
        if named is None or env is None:
            raise
        on_refusal()
        keys = [key for key in env if key in named]
        if not keys:
            keys = _refused_alone({k: v for k, v in env.items() if k not in _UPLOADED_KEYS})
        raise RuntimeEnvRefused(
            f"RayBackend(runtime_env=...): Ray refused {_which(keys, env, together=False)} "
            f"while starting ({type(exc).__name__}; {_NOT_SHOWN})"
        ) from None


def _gcs_address(joined: object) -> str | None:
    """The GCS address (``HOST:PORT``) of the cluster `ray.init` joined, from the context it
    returned (`RayContext.address_info["gcs_address"]`); None when it does not say (a Ray
    client's context, through a ``ray://`` RAY_ADDRESS, has no `address_info`)."""
    info = getattr(joined, "address_info", None)
    found = info.get("gcs_address") if isinstance(info, dict) else None
    return found if isinstance(found, str) and found.strip() else None


class RayBackend:
    """Trains each round's jobs on `workers` Ray actors (default: one per CPU that is free when
    `start` runs, `ray.available_resources()`).

    The training context is put in Ray's object store once and each actor keeps it (importing
    its plugins before it builds the model: on a cluster every node needs them); each round
    puts the global params once and sends every actor its share of the jobs.

    `job_timeout_s` (seconds, or None) is a stall limit on each actor's share, counted from
    when the round's shares are sent: a share still running past it makes `train` kill every
    actor, close the backend and raise `RayWorkerError` naming the share's device ids. The
    default None is the process pool's automatic limit (`StallLimit`: it scales with the
    share's examples at the rate of the shares finished since `start`; an actor's first share
    pays its warm-up), for the same reason: an honest share's time grows with its jobs'
    examples x epochs x model size and with the load on the machines, so no fixed figure is
    safe for every run. A dead actor needs no limit (Ray raises at once).
    """

    name = "ray"

    def __init__(
        self,
        workers: int | None = None,
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        inner: str = "sequential",
        threads_per_worker: int = 1,
        runtime_env: dict[str, Any] | None = None,
        job_timeout_s: float | None = None,
    ) -> None:
        check_workers(workers)
        if inner not in INNER_BACKENDS:
            raise ValueError(f"inner backend must be one of {INNER_BACKENDS}, got {inner!r}")
        self.workers = workers
        self.address, self._address_source = resolve_address(address)
        # The GCS address `ray.init` returned for "auto" (the cluster Ray found), for `cluster`.
        self._found: str | None = None
        # `start` found a Ray runtime already running in this process (the caller's, which
        # `self.address` did not choose): `cluster` is None then.
        self._callers_runtime = False
        self.num_cpus = num_cpus
        self.inner = inner
        self.threads_per_worker = threads_per_worker
        self.runtime_env = runtime_env
        self.job_timeout_s = check_job_timeout(job_timeout_s)
        self._stall = StallLimit()  # the limit when job_timeout_s is None (actors by position)
        self._actors: list[Any] = []
        self._owns_runtime = False
        self._num_examples = 0  # the training set's size, for `check_round`
        self._size: int | None = None  # the model's parameter count, asked once (`_model_size`)
        self._test_rows = 0  # the context's test rows (0: none), for `evaluate`
        self._test_predictions = 0  # ... and its labels (y_test.size)

    @property
    def _cluster_address(self) -> str | None:
        """The address of the cluster `start` joins; None for a private runtime (no address,
        or "local", which ray.init starts privately)."""
        return None if is_private(self.address) else self.address

    @property
    def cluster(self) -> dict[str, str] | None:
        """What rounds.json records of the Ray cluster this backend joins by address (its
        `ray_cluster`): ``{"address": ..., "from": "RAY_ADDRESS"}`` when the address came from
        the environment variable, ``"from": "ray_address"`` when it was given (--ray-address,
        SimConfig.ray_address, RayBackend(address=...)); the address as `public_address` shows
        it (no user or password). For ``"auto"``, once `start` has joined, the GCS address of
        the cluster Ray found on this machine (``HOST:PORT``, as ray.init returned it; a given
        "auto" wins over RAY_ADDRESS, `_init_auto`), else "auto" as given.
        None without an address or with ``"local"`` (both a private runtime), and after a
        `start` that found a Ray runtime already running in this process (the caller's: the
        backend joined whatever that one is)."""
        address = self._cluster_address
        if address is None or self._callers_runtime:
            return None
        source = "RAY_ADDRESS" if self._address_source == "RAY_ADDRESS" else "ray_address"
        return {"address": public_address(self._found or address), "from": source}

    def start(self, ctx: TrainContext) -> None:
        try:
            import ray
        except ImportError as exc:
            raise RuntimeError(
                "the Ray backend needs the optional extra: pip install 'plume-fl[ray]'"
            ) from exc
        self.close()
        self._num_examples = len(ctx.y_train)
        self._size = None  # this context's model: asked of an actor at the first call
        self._test_rows, self._test_predictions = test_set_size(ctx)
        self._stall = StallLimit()
        env = self.runtime_env
        if env is not None:
            _check_runtime_env(env)
        self._callers_runtime = ray.is_initialized()  # our own was shut down by `close`
        self._found = None
        if not ray.is_initialized():
            say("starting Ray")
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if env is not None:
                kwargs["runtime_env"] = env
            with _runtime_env_errors(env, ray.shutdown):  # a half-started runtime ends too
                address = self._cluster_address
                if address is not None:
                    check_reachable(address, self._address_source)
                    # The driver's "ray" logger at WARNING: Ray's INFO line on joining
                    # ("Connecting to existing Ray cluster") is not said; its warnings are.
                    if address == "auto":
                        joined = self._init_auto(ray, kwargs)
                        self._found = _gcs_address(joined)
                    else:
                        ray.init(address=address, logging_level=logging.WARNING, **kwargs)
                else:
                    # No address, or "local" given (Ray's private runtime, started as without
                    # one). "local": a private runtime even when a cluster was started on this
                    # machine (`ray start`). Without it ray.init joins the cluster named in
                    # /tmp/ray/ray_current_cluster, and refuses num_cpus for an existing one.
                    own_cpus = self.num_cpus or usable_cpus()  # affinity, cgroup quota
                    # The driver's "ray" logger at ERROR (ray.init's logging_level): starting
                    # a private runtime printed two timestamped lines amid the CLI's own, a
                    # token-auth WARNING (about a cluster only this process uses) and "INFO
                    # ... Started a local Ray instance" (the status line's "starting Ray" says
                    # it). A worker's failure still arrives as an exception (RayWorkerError's
                    # one line), and the actors' output stays off the terminal (log_to_driver).
                    ray.init(
                        address="local", num_cpus=own_cpus, logging_level=logging.ERROR, **kwargs
                    )
            self._owns_runtime = True
        free = int(ray.available_resources().get("CPU", 1))
        n = self.workers or min(MAX_WORKERS, max(1, free))
        # One CPU per actor, or an equal share of the cluster's CPUs when more workers than
        # CPUs are asked for (as the pool allows): otherwise the extra actors would wait for a
        # free CPU forever, and so would `train`. Ray takes shares to 4 decimals; at most
        # WORKERS_PER_CPU actors per CPU, so a share is at least a quarter of a CPU.
        total = float(ray.cluster_resources().get("CPU", 0.0))
        if total > 0 and (problem := too_many_per_cpu(n, total, "the Ray cluster")):
            self.close()  # the runtime this call started, if it did
            raise ValueError(problem)
        cpus = 1.0 if total >= n else math.floor(total / n * 1e4) / 1e4
        say(f"starting {n} Ray actor{'s' if n != 1 else ''}")
        options: dict[str, Any] = {"num_cpus": cpus}
        if env is not None and not self._owns_runtime:
            # The caller's runtime (ray.init before start) never saw it: the actors take it.
            options["runtime_env"] = _actor_runtime_env(env)
        with _runtime_env_errors(env, self.close):
            actor_cls = ray.remote(**options)(WorkerState)
            ctx_ref = ray.put(ctx)
            # warn=False: an actor's vmap fallback is said by this driver (`_say_fallback`).
            self._actors = [
                actor_cls.remote(ctx_ref, self.inner, self.threads_per_worker, False)
                for _ in range(n)
            ]
        # Like the pool: wait until every actor has built its model, so a bad context fails
        # `start` (with the actor's traceback) and actors that cannot be placed fail it too.
        try:
            ray.get([a.__ray_ready__.remote() for a in self._actors], timeout=_START_TIMEOUT_S)
            if self.inner == "vectorized":
                self._say_fallback(ctx.model)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise RuntimeError(
                f"{n} Ray actors ({cpus} CPU each) did not start in {_START_TIMEOUT_S:.0f} s; "
                f"the cluster reports {total:g} CPUs"
            ) from None
        except ray.exceptions.RuntimeEnvSetupError:
            self.close()
            if env is None:  # Ray's own (a runtime the caller started with its runtime_env)
                raise
            raise RuntimeEnvSetupFailed(
                f"RayBackend(runtime_env=...): Ray could not set up the actors' runtime_env "
                f"({', '.join(sorted(env))}; {_NOT_SHOWN}): its account is in "
                "runtime_env_setup-*.log and runtime_env_agent.log in the logs folder of the Ray "
                "session on each node (/tmp/ray/session_latest/logs by default)"
            ) from None
        except BaseException:
            self.close()
            raise

    def _init_auto(self, ray: Any, kwargs: dict[str, Any]) -> object:
        """ray.init(address="auto", ...) without RAY_ADDRESS in the environment: "auto" is the
        cluster Ray finds on this machine (the latest `ray start` here, else any it sees
        running), whatever RAY_ADDRESS holds. Ray's "Could not find any running Ray instance
        ... setting `--address` flag or `RAY_ADDRESS`" is one line that says so instead."""
        try:
            with _no_ray_address_variable():
                return ray.init(address="auto", logging_level=logging.WARNING, **kwargs)
        except ConnectionError as exc:
            if "Could not find any running Ray instance" not in str(exc):
                raise
            given = self._address_source != "RAY_ADDRESS"
            raise ConnectionError(
                f"cannot find a Ray cluster on this machine for address auto (given by "
                f"{self._address_source}): none is running here; start one (ray start --head) "
                "or give the cluster's address"
                + ("; a given auto does not read RAY_ADDRESS" if given else "")
                + " (without RAY_ADDRESS or address=, plume starts a private local Ray runtime)"
            ) from None

    def _say_fallback(self, model: str) -> None:
        """Warn here, once, when the actors' vectorized backend cannot vmap `model` and trains
        its jobs one by one (`WorkerState.fallback_reason`). The actors do not log it: in the
        runtime this backend starts their output never reaches the driver (log_to_driver=False
        keeps all of it off the user's terminal), so a user on Ray never learned of the
        fallback; in one the caller started with the default, it came once per actor."""
        import ray

        reasons = ray.get(
            [actor.fallback_reason.remote() for actor in self._actors], timeout=_START_TIMEOUT_S
        )
        for reason in sorted({reason for reason in reasons if reason is not None}):
            warn_fallback(model, reason)

    def train(self, params: npt.NDArray[np.float32], jobs: Sequence[TrainJob]) -> list[JobResult]:
        import ray

        if not self._actors:
            raise RuntimeError("backend not started")
        check_round(params, jobs, self._num_examples, size=self._model_size())
        shares = split_jobs(jobs, len(self._actors))
        params_ref = ray.put(params)
        refs = [
            actor.train.remote(params_ref, [jobs[i] for i in share])
            for actor, share in zip(self._actors, shares, strict=False)
        ]
        sent = time.monotonic()
        fixed = self.job_timeout_s

        def limit(k: int) -> float:  # share k runs on actor k
            return self._stall.task_limit(fixed, k, task_examples(jobs, shares[k]))

        outs: list[Any] = [None] * len(refs)
        pending = {ref: k for k, ref in enumerate(refs)}
        while pending:
            first = min(sent + limit(k) for k in pending.values())
            timeout = max(0.0, first - time.monotonic())
            done, _ = ray.wait(list(pending), num_returns=1, timeout=timeout)
            for ref in done:
                k = pending.pop(ref)
                outs[k] = ray.get(ref)
                self._stall.finished(k, task_examples(jobs, shares[k]), time.monotonic() - sent)
            now = time.monotonic()
            late = [k for k in pending.values() if now - sent >= limit(k)]
            if late:
                k = late[0]
                why = self._stall.overrun(fixed, k, task_examples(jobs, shares[k]))
                self.close()  # kills the actors: their work will never be read
                raise RayWorkerError(
                    f"a Ray actor was still training devices {name_devices(jobs, shares[k])} "
                    f"after {why}; the actors were killed"
                )
        results: list[JobResult | None] = [None] * len(jobs)
        for share, out in zip(shares, outs, strict=True):
            for i, res in zip(share, out, strict=True):
                results[i] = res
        return [r for r in results if r is not None]

    def evaluate(self, params: npt.NDArray[np.float32]) -> tuple[float, float] | None:
        """(accuracy, mean loss) of `params` on the context's test set, its rows split over
        the actors as the pool splits them over its workers (`ProcessPoolBackend.evaluate`),
        or None when the context has none. The caller checks the test set first
        (`sdk.trainer.check_evaluation_data`); `params` are checked here, as `train` checks
        them (`check_round`: a 1-D float array of the model's length, else `ValueError`, the
        actors left running). An actor's error is raised as Ray raises it; a
        share still running past the automatic stall limit for its rows (`StallLimit`; never
        `job_timeout_s`, which bounds a training task) kills the actors, as in `train`."""
        import ray

        if not self._actors:
            raise RuntimeError("backend not started")
        # Params only (no jobs), before any actor is asked: a wrong length used to come back
        # as the actor's traceback from `set_flat_params`.
        check_round(params, (), self._num_examples, size=self._model_size())
        if self._test_rows == 0:
            return None
        chunks = eval_chunks(self._test_rows, len(self._actors), EVAL_BATCH)
        params_ref = ray.put(params)
        refs = [
            actor.evaluate.remote(params_ref, lo, hi, EVAL_BATCH)
            for actor, (lo, hi) in zip(self._actors, chunks, strict=False)
        ]
        # The automatic limit for the share's rows, not job_timeout_s (a training task's).
        limit = max(self._stall.task_limit(None, k, hi - lo) for k, (lo, hi) in enumerate(chunks))
        try:
            parts = ray.get(refs, timeout=limit)
        except ray.exceptions.GetTimeoutError:
            self.close()  # kills the actors: their work will never be read
            raise RayWorkerError(
                f"a Ray actor was still evaluating test rows after {limit:.3g} s (the stall "
                "limit); the actors were killed"
            ) from None
        return join_evaluations(parts, self._test_predictions)

    def _model_size(self) -> int:
        """The model's parameter count, asked of the first actor once per `start` (every actor
        built the same model): `check_round` holds params to it in the driver."""
        import ray

        if self._size is None:
            self._size = int(ray.get(self._actors[0].num_params.remote(), timeout=_START_TIMEOUT_S))
        return self._size

    def close(self) -> None:
        if not self._actors and not self._owns_runtime:
            return
        import ray

        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
        if self._owns_runtime:
            ray.shutdown()
            self._owns_runtime = False
