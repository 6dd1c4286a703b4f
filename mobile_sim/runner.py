"""The simulated fleet in one process: real training, real encoded bytes, the real round engine.

`run_simulation(cfg)` drives `coordinator.engine.RoundEngine` directly (transport "inproc"):
each round the engine selects a cohort, the backend trains the selected devices, each device
encodes its delta with its own error-feedback state, the engine decodes the frames under its
limits and aggregates, and the new model is evaluated on the held-out test set.
"""

from __future__ import annotations

import copy
import math
import numbers
import os
import re
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import numpy.typing as npt

from compression import CodecConfig, ModelSpec, encode_snapshot, feedback_step_many
from coordinator.aggregators import AggregatorFactory, FedAvg
from coordinator.aggregators._dp import (
    DPMean,
    amplified_population,
    delta_refusal,
    find_dp,
    returns_refused,
)
from coordinator.aggregators._registry import split_stages
from coordinator.engine import EngineConfig, RoundEngine, RoundPlan, Strategy
from coordinator.ledger import BandwidthLedger
from coordinator.privacy import FixedSizeSampling, PoissonSampling, Sampling
from protocol.messages import CodecParams, TaskConfig, chain_bytes
from protocol.names import SnapshotDType
from sdk.device import UpdateEncoder, clip_l2

from ._residuals import DEFAULT_RESIDUAL_MEMORY_MB, ResidualStore, budget_bytes
from .attacks import BackdoorAttack, backdoor_accuracy
from .backends import Backend, JobResult, TrainContext, TrainJob, build_backend, job_rng
from .backends._base import import_plugins
from .backends._seeding import RngPool
from .clock import COORDINATOR_DEADLINE_S, COORDINATOR_MAX_S, COORDINATOR_OVER_SELECTION
from .data import DataError, FederatedData, data_root, load_digits_data, load_mnist
from .partition import natural, partition, partition_stats
from .population import DEFAULT_TIERS
from .status import clear, note, say

if TYPE_CHECKING:
    from .fleet import Selection

__all__ = [
    "SimConfig",
    "RoundRecord",
    "SimResult",
    "RunInterrupted",
    "NoEligibleDevices",
    "ORT_FIELDS",
    "run_simulation",
    "prepare",
    "SimSetup",
    "load_dataset",
    "DATASET_LOADERS",
    "build_aggregator",
    "dp_seed_for",
    "AGGREGATORS",
    "DEFAULT_MODEL",
    "dataset_family",
    "encode_reports",
    "backend_for",
    "WALL_PHASES",
    "TASK_DOWNLINK",
]


def _task_default(name: str) -> Any:
    """The default of `TaskConfig` field `name`: what `plume coordinator create-task` gives a
    task when its flag is left out."""
    spec = next(f for f in fields(TaskConfig) if f.name == name)
    if spec.default is not MISSING:
        return spec.default
    assert spec.default_factory is not MISSING
    return spec.default_factory()


# A coordinator task's downlink and longest delta chain when create-task is not told (2 %,
# 8-bit; 16 versions): a downlink flag given alone takes the other from here.
TASK_DOWNLINK: CodecParams = _task_default("downlink")
TASK_MAX_CHAIN: int = _task_default("max_chain")

DEFAULT_MODEL = {
    "mnist": "mnist_cnn",
    "digits": "digits_mlp",
    "shakespeare": "shakespeare_lstm_small",
    "synthetic": "synthetic_lr",
}


def dataset_family(dataset: str) -> str:
    """A dataset name without its parameters or variant: "synthetic" for synthetic(1,1) and
    synthetic_iid, the name itself otherwise (the key of `DEFAULT_MODEL`)."""
    return re.split(r"[(_]", dataset, maxsplit=1)[0]


def default_model(dataset: str) -> str | None:
    """The model a run of `dataset` trains without --model (`SimConfig.model_name`): the name's
    own `DEFAULT_MODEL` entry first (a registered dataset "my_data" has the family "my"), else
    its family's; None when neither has one."""
    return DEFAULT_MODEL.get(dataset) or DEFAULT_MODEL.get(dataset_family(dataset))


# Backends whose jobs run in other processes, where a stuck worker can be stopped.
_TIMED_BACKENDS = ("pool", "ray")
# What a pool or Ray worker runs inside (backends._worker.INNER_BACKENDS, not imported here:
# it imports torch).
_INNER_BACKENDS = ("sequential", "vectorized")


def backend_for(cfg: SimConfig) -> Backend:
    """The backend `cfg` names, with the options it sets: the stall limit (`job_timeout_s`),
    the worker count (`workers`) and what the workers run (`inner_backend`) of the pool and
    Ray, and Ray's `ray_address` and `ray_runtime_env`. An option left None is left to the
    backend's own default."""
    options = {
        "job_timeout_s": cfg.job_timeout_s,
        "workers": cfg.workers,
        "inner": cfg.inner_backend,
        "address": cfg.ray_address,
        "runtime_env": None if cfg.ray_runtime_env is None else dict(cfg.ray_runtime_env),
    }
    return build_backend(cfg.backend, **{k: v for k, v in options.items() if v is not None})


def _ray_cluster(backend: Backend) -> dict[str, str] | None:
    """`SimResult.ray_cluster` of a run on `backend`, once started: the Ray backend's
    `cluster` (a new dict each time it is read); None for any other backend."""
    cluster = getattr(backend, "cluster", None) if backend.name == "ray" else None
    return cluster if isinstance(cluster, dict) else None


# Integer fields that count something a run needs at least one of.
_AT_LEAST_1 = (
    "clients",
    "per_round",
    "rounds",
    "local_epochs",
    "batch_size",
    "shards_per_client",
    "min_reports",
    "eval_every",
)
_INT_FIELDS = (*_AT_LEAST_1, "warmup_rounds", "seed")


@dataclass(frozen=True)
class SimConfig:
    """One simulated federated run. Defaults are the headline MNIST-CNN setting."""

    dataset: str = "mnist"
    model: str | None = None  # None: the dataset's default model
    clients: int = 100
    per_round: int = 10
    rounds: int = 20
    # compression
    topk: float = 0.01
    bits: int = 4
    block: int = 256
    index: str = "auto"
    topk_mode: str = "exact"
    scope: str = "global"
    error_feedback: bool = True
    warmup_rounds: int = 0  # first rounds sent dense (fp32), a knob to explore
    clip_norm: float | None = None
    dense: bool = False  # the dense fp32 baseline: no top-k, no quantization
    # The downlink: the codec of the published model deltas devices download, as a
    # coordinator task's `TaskConfig.downlink` (`plume coordinator create-task --downlink-topk
    # / --downlink-bits`): each round's step quantized with server-side error feedback, every
    # device training from the model it downloaded. None (both): in process the exact model
    # (no downlink compression, one fp32 snapshot a download), over HTTP the fleet's own
    # default (`http_fleet.DOWNLINK`), which an HTTP run's result records here (its config
    # says the downlink its task used), so a recorded None means exact fp32 downloads (an
    # HTTP rounds.json written before helper-297 excepted). One given alone takes the other
    # from TaskConfig's default, as create-task does (`downlink()`).
    downlink_topk: float | None = None
    downlink_bits: int | None = None
    # local training
    local_epochs: int = 5
    batch_size: int = 10
    lr: float = 0.05
    momentum: float = 0.0
    # data
    partition: str = "dirichlet"
    alpha: float = 0.5
    shards_per_client: int = 2
    data_root: str | None = None
    # round policy
    # Devices selected per round = over_selection x per_round, in [1, 10]. None (the default)
    # is filled in when the config is made: in realistic mode the coordinator's default
    # (TaskConfig.over_selection, 1.3: a coordinator task over-selects unless told otherwise;
    # `over_selection_defaulted` is then True and rounds.json's config says so), otherwise
    # 1.0. A config made from another (dataclasses.replace) keeps the value it was given.
    over_selection: float = None  # type: ignore[assignment]  # a float once made
    min_reports: int = 1
    server_lr: float = 1.0
    aggregator: str = "fedavg"
    # threats
    attack: str | None = None
    malicious: float = 0.0
    # execution
    backend: str = "sequential"
    # pool and ray: seconds one worker task may run before the round fails (None: an
    # automatic limit that scales with the work, backends._worker.StallLimit)
    job_timeout_s: float | None = None
    # pool and ray: how many workers (None: the pool's one per CPU, Ray's one actor per CPU
    # free when it starts) and what each runs inside, "sequential" or "vectorized" (None:
    # sequential)
    workers: int | None = None
    inner_backend: str | None = None
    # ray: the cluster to join ("auto", host:port, ray://...; None: $RAY_ADDRESS, else a
    # private local runtime) and the runtime_env given to ray.init (py_modules, pip,
    # env_vars, ...). rounds.json records only the runtime_env's keys: values such as
    # env_vars may be secrets; and the address without a user:password@ (`as_dict`).
    ray_address: str | None = None
    ray_runtime_env: dict[str, Any] | None = field(default=None, hash=False)
    # In-process runs: MiB of idle devices' encoder state (error-feedback residuals, d x 4
    # bytes a trained device) held in memory; beyond it the least recently used are spilled
    # to a private temporary directory ($TMPDIR) and read back bit for bit, so results do not
    # depend on it (0: spill every settled one after each round; mobile_sim/_residuals.py).
    residual_memory_mb: float = DEFAULT_RESIDUAL_MEMORY_MB
    ort_fraction: float = 0.0
    ort_artifacts: str | None = None
    ort_tier: str | None = None  # e.g. "low": that tier's phones train on onnxruntime
    eval_every: int = 1
    seed: int = 0
    # the simulated clock: "off"; "timing" (everyone available, no dropouts: only adds
    # simulated seconds); "realistic" (diurnal availability, tier dropouts, the deadline)
    fleet: str = "timing"
    # The round deadline in simulated seconds, in (0, 604800] as the coordinator's. None: in
    # realistic mode the coordinator's default (TaskConfig.deadline_s, 60 s; `run_simulation`
    # records it in its result's config), since a round that loses a device cannot fill and
    # the server waits to its deadline; in timing mode no deadline (no device drops out, so
    # every round fills and the model is the one `fleet="off"` trains). HTTP and secure runs
    # have no simulated clock, refuse it and record None: an HTTP task's deadline is in wall
    # seconds, in the result's `http` (rounds.json's `http.deadline_s`).
    deadline_s: float | None = None
    # realistic mode's selection (the HTTP coordinator's rule, on the simulated clock): a round
    # opens once the pool holds the cohort, or `selection_timeout_s` after the first check-in
    # with at least `min_reports` devices (None: only with the full cohort); eligible devices
    # check in once per `checkin_period_s`, at a uniformly random time (0: instantly). Over
    # HTTP the task's own selection timeout (wall seconds) applies, and the result records it
    # (a secure run's: a week, its rounds opening with the whole cohort).
    selection_timeout_s: float | None = 900.0
    checkin_period_s: float = 900.0
    # realistic mode: only devices with at least this much memory (MiB) are eligible
    # (`SimFleet.select`'s min_memory_mb); None: no memory floor
    min_memory_mb: float | None = None
    # FedScale-format device traces (docs/traces.md, mobile_sim.traces), by path: a capacity
    # trace (.json or .csv) sets the devices' compute speed and bandwidths (fleet timing or
    # realistic), scaled by `trace_compute_scale`; a behaviour trace (.json) their
    # availability (fleet realistic). Read and checked when the config is made; as_dict
    # records each path with its file's SHA-256 (None: the tier model, and no key).
    capacity_trace: str | None = None
    behaviour_trace: str | None = None
    trace_compute_scale: float = 1.0
    # The dataset's own draw: mnist's and digits' train/test split, synthetic's generated
    # devices. None: `seed`, as before this field. Fixed, it keeps one test set while `seed`
    # varies the partition, the cohorts and the initial weights.
    data_seed: int | None = None
    # Modules imported first (`plume sim --plugin`), whose top-level code registers models,
    # datasets and aggregators in MODELS, DATASET_LOADERS and AGGREGATORS: dotted names found
    # from the current directory, or paths to .py files (backends._base.import_plugins). The
    # backends' workers in other interpreters import them too, before building the model.
    plugins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.plugins, str):
            raise ValueError(
                f"plugins must be a sequence of module names, not the string {self.plugins!r}"
            )
        object.__setattr__(self, "plugins", tuple(self.plugins))
        if self.over_selection is None:  # the mode's default (see the field)
            realistic = self.fleet == "realistic"
            value = COORDINATOR_OVER_SELECTION if realistic else 1.0
            object.__setattr__(self, "over_selection", value)
            object.__setattr__(self, "_over_selection_defaulted", realistic)
        # The directory the plugins are found from (names and relative .py paths), taken
        # now, when they are imported here: the backends' workers import them from it too,
        # wherever run_simulation is called from (not a field: no config records it).
        object.__setattr__(self, "_plugin_root", os.getcwd() if self.plugins else None)
        if self.plugins:  # first: the checks below build the aggregator, a plugin's perhaps
            import_plugins(self.plugins, self.plugin_root)
        for name in _INT_FIELDS:
            value = getattr(self, name)
            # 1.5 clients or 2.0 epochs would fail far from here, under another name.
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        for name in _AT_LEAST_1:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.per_round > self.clients:
            raise ValueError(
                f"per_round {self.per_round} exceeds clients {self.clients}: a round cannot "
                "aggregate more devices than the fleet has"
            )
        if self.min_reports > self.per_round:
            raise ValueError(f"min_reports {self.min_reports} exceeds per_round {self.per_round}")
        if not 0.0 <= self.malicious < 1.0:
            raise ValueError("malicious must be a fraction in [0, 1)")
        if self.malicious > 0 and not self.attack:
            raise ValueError("malicious > 0 needs an attack (e.g. --attack signflip)")
        if self.attack and self.malicious > 0:
            if round(self.malicious * self.clients) == 0:
                # The runner makes round(malicious x clients) devices attack: none here, and
                # the run went ahead as a clean one.
                raise ValueError(
                    f"malicious must make at least one device attack: {self.malicious:g} of "
                    f"clients {self.clients} rounds to 0 (use at least {1 / self.clients:g})"
                )
            self.build_attack()  # a bad spec fails now, not in a round
        budget_bytes(self.residual_memory_mb)  # finite and >= 0
        if not 0.0 <= self.ort_fraction <= 1.0:
            raise ValueError("ort_fraction must be in [0, 1]")
        if self.ort_fraction > 0 and self.ort_tier is not None:
            # The tier's devices replaced the fraction's choice without a word.
            raise ValueError(
                "ort_fraction and ort_tier both choose the devices that train on onnxruntime: "
                "give one"
            )
        if self.ort_fraction > 0 and round(self.ort_fraction * self.clients) == 0:
            # The runner makes round(ort_fraction x clients) devices train on onnxruntime:
            # none here, and the run went ahead as an all-torch fleet.
            raise ValueError(
                "ort_fraction must make at least one device train on onnxruntime: "
                f"{self.ort_fraction:g} of clients {self.clients} rounds to 0 (use at least "
                f"{1 / self.clients:g})"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be finite and > 0, got {self.lr!r}")
        if not (math.isfinite(self.momentum) and self.momentum >= 0):
            raise ValueError(f"momentum must be finite and >= 0, got {self.momentum!r}")
        if self.momentum >= 1:
            # The velocity then never decays: local training diverges without an error.
            raise ValueError(f"momentum must be below 1 (0.9 is usual), got {self.momentum!r}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"alpha must be positive and finite, got {self.alpha!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.data_seed is not None and (
            isinstance(self.data_seed, bool)
            or not isinstance(self.data_seed, numbers.Integral)
            or self.data_seed < 0
        ):
            raise ValueError(f"data_seed must be an integer >= 0, got {self.data_seed!r}")
        if self.warmup_rounds < 0:
            raise ValueError(f"warmup_rounds must be >= 0, got {self.warmup_rounds}")
        if self.fleet not in ("off", "timing", "realistic"):
            raise ValueError(f"fleet must be off, timing or realistic, not {self.fleet!r}")
        if self.job_timeout_s is not None:
            if self.backend not in _TIMED_BACKENDS:
                raise ValueError(
                    f"job_timeout_s applies to the {' and '.join(_TIMED_BACKENDS)} backends, "
                    f"not {self.backend!r} (an inline backend runs in this process)"
                )
            if not 0 < self.job_timeout_s <= MAX_JOB_TIMEOUT_S:  # NaN fails it too
                # A wait past about 2^31 ms overflowed the pool's and Ray's waits (an
                # OverflowError traceback in round 1; helper-344).
                raise ValueError(
                    "job_timeout_s must be a finite number of seconds in (0, "
                    f"{MAX_JOB_TIMEOUT_S:g}] (a week), got {self.job_timeout_s!r}"
                )
        self._check_backend_options()
        # The coordinator's bound (coordinator/service/rounds.py, validate_task).
        if self.deadline_s is not None and not 0 < self.deadline_s <= COORDINATOR_MAX_S:
            raise ValueError(
                f"deadline_s must be in (0, {COORDINATOR_MAX_S:.0f}] simulated seconds, as "
                f"the coordinator's (one week at most), got {self.deadline_s}"
            )
        if self.selection_timeout_s is not None and not (
            0 < self.selection_timeout_s <= COORDINATOR_MAX_S
        ):
            raise ValueError(
                f"selection_timeout_s must be in (0, {COORDINATOR_MAX_S:.0f}] simulated "
                f"seconds, as the coordinator's, or None (open only with the full cohort), "
                f"got {self.selection_timeout_s}"
            )
        if self.min_memory_mb is not None:
            if not (math.isfinite(self.min_memory_mb) and self.min_memory_mb >= 0):
                raise ValueError(
                    f"min_memory_mb must be a finite number of MiB >= 0, got {self.min_memory_mb}"
                )
            if self.fleet != "realistic":
                raise ValueError(
                    "min_memory_mb applies to the realistic fleet's selection "
                    f"(fleet='realistic'), not fleet={self.fleet!r}"
                )
            top = max(g for t in DEFAULT_TIERS for g in t.memory_gb) * 1024.0
            if self.min_memory_mb > top:
                # Before, round 1 ran until no device had been eligible for two simulated days.
                raise ValueError(
                    f"min_memory_mb {self.min_memory_mb:g} MiB is above every device's memory "
                    f"(the largest tier's is {top:g} MiB): no device would ever be eligible"
                )
        self._check_traces()
        if not (math.isfinite(self.checkin_period_s) and 0 <= self.checkin_period_s <= 900.0):
            # One availability step (15 simulated minutes) at most: see SimFleet.select.
            raise ValueError("checkin_period_s must be in [0, 900] simulated seconds")
        self.codec()  # validates topk / bits / index / ...
        self._check_downlink()
        self.engine_config()  # validates over_selection / server_lr
        self._check_dp_sampling()

    def _check_traces(self) -> None:
        """Read and check the trace files (mobile_sim.traces), keeping their SHA-256s."""
        from .population import check_trace_compute_scale
        from .traces import TraceError, cached_behaviour_trace, cached_capacity_trace

        check_trace_compute_scale(self.trace_compute_scale, self.capacity_trace is not None)
        shas: dict[str, str] = {}
        for name, fleets, loader in (
            ("capacity_trace", ("timing", "realistic"), cached_capacity_trace),
            ("behaviour_trace", ("realistic",), cached_behaviour_trace),
        ):
            path = getattr(self, name)
            if path is None:
                continue
            if not isinstance(path, str) or not path.strip():
                raise ValueError(f"{name} must name a file, got {path!r}")
            if self.fleet not in fleets:
                what = (
                    "the simulated devices' compute speed and bandwidth"
                    if name == "capacity_trace"
                    else "the simulated devices' availability"
                )
                raise ValueError(
                    f"{name} sets {what}: it needs fleet={' or '.join(map(repr, fleets))}, "
                    f"not fleet={self.fleet!r}"
                )
            try:
                shas[name] = loader(path).sha256
            except TraceError as exc:
                # "capacity trace FILE: ..." -> "capacity_trace FILE: ..." (a flag in the CLI)
                raise ValueError(name + str(exc)[len(name) :]) from None
        object.__setattr__(self, "_trace_sha256", shas)

    @property
    def trace_sha256(self) -> dict[str, str]:
        """The SHA-256 of each trace file given ("capacity_trace", "behaviour_trace"), as it
        was when this config was made."""
        return dict(getattr(self, "_trace_sha256", {}))

    def population_traces(self) -> dict[str, Any]:
        """`PopulationConfig` arguments for the traces given (none without): the loaded
        traces, which must still be the files this config was made with."""
        from .traces import cached_behaviour_trace, cached_capacity_trace

        out: dict[str, Any] = {}
        for name, loader in (
            ("capacity_trace", cached_capacity_trace),
            ("behaviour_trace", cached_behaviour_trace),
        ):
            path = getattr(self, name)
            if path is None:
                continue
            trace = loader(path)
            if trace.sha256 != self.trace_sha256[name]:
                raise ValueError(
                    f"{name} {path} changed since the run was configured (SHA-256 "
                    f"{trace.sha256}, was {self.trace_sha256[name]})"
                )
            out[name] = trace
        if out.get("capacity_trace") is not None:
            out["trace_compute_scale"] = float(self.trace_compute_scale)
        return out

    def _check_downlink(self) -> None:
        """Fill in the downlink field left out when the other is given (TaskConfig's default,
        as create-task does), and refuse a value a coordinator task would refuse, named by its
        field, or a downlink for the dense baseline."""
        topk, bits = self.downlink_topk, self.downlink_bits
        if topk is None and bits is None:
            return
        if self.dense:
            raise ValueError(
                "downlink_topk/downlink_bits set a compressed run's model downloads; dense is "
                "the dense fp32 baseline, uncompressed both ways"
            )
        if topk is not None and (isinstance(topk, bool) or not isinstance(topk, numbers.Real)):
            raise ValueError(f"downlink_topk must be a number in (0, 1], got {topk!r}")
        if bits is not None and (isinstance(bits, bool) or not isinstance(bits, numbers.Integral)):
            raise ValueError(f"downlink_bits must be an integer, got {bits!r}")
        default = TASK_DOWNLINK
        topk = float(default.topk if topk is None else topk)
        bits = int(default.bits if bits is None else bits)
        try:
            CodecParams(topk=topk, bits=bits).to_config()
        except ValueError as exc:
            # "topk must be in (0, 1], got 2.0": the field in the codec's place.
            text = str(exc)
            for name in ("topk", "bits"):
                if text.startswith(f"{name} "):
                    text = f"downlink_{text}"
            raise ValueError(text) from None
        object.__setattr__(self, "downlink_topk", topk)
        object.__setattr__(self, "downlink_bits", bits)

    def downlink(self) -> CodecConfig | None:
        """The codec of the published model deltas, as a coordinator task builds it from
        `TaskConfig.downlink` (`CodecParams(topk, bits).to_config()`), or None: no downlink
        compression was asked for (in process, the exact model)."""
        if self.downlink_topk is None or self.downlink_bits is None:
            return None
        return CodecParams(topk=self.downlink_topk, bits=self.downlink_bits).to_config()

    def _check_backend_options(self) -> None:
        """Refuse a pool or Ray option for a backend that has no use for it (it was not
        silently dropped: there was no such option), or a value the backend would refuse."""
        workers, inner = self.workers, self.inner_backend
        for name in ("workers", "inner_backend"):
            if getattr(self, name) is not None and self.backend not in _TIMED_BACKENDS:
                raise ValueError(
                    f"{name} applies to the {' and '.join(_TIMED_BACKENDS)} backends, not "
                    f"{self.backend!r} (an inline backend runs in this process)"
                )
        from .backends.process_pool import check_workers

        # An integer in [1, 1024]; the bound per CPU is the backend's (the pool's is of the
        # machine that builds it, Ray's of the cluster it joins).
        check_workers(workers)
        if inner is not None and inner not in _INNER_BACKENDS:
            raise ValueError(f"inner_backend must be {' or '.join(_INNER_BACKENDS)}, got {inner!r}")
        for name in ("ray_address", "ray_runtime_env"):
            if getattr(self, name) is not None and self.backend != "ray":
                raise ValueError(f"{name} applies to the ray backend, not {self.backend!r}")
        if self.ray_address is not None and (
            not isinstance(self.ray_address, str) or not self.ray_address.strip()
        ):
            raise ValueError(f"ray_address must be a non-empty string, got {self.ray_address!r}")
        env = self.ray_runtime_env
        if env is not None:
            if not isinstance(env, dict) or not all(isinstance(k, str) for k in env):
                raise ValueError(
                    "ray_runtime_env must be a dict with string keys (Ray's runtime_env: "
                    f"py_modules, pip, env_vars, ...), got {type(env).__name__}"
                )
            object.__setattr__(self, "ray_runtime_env", dict(env))  # not the caller's dict

    @property
    def run_aggregator(self) -> str:
        """The spec the in-process engine builds: `aggregator`, its `dp` stage given
        `seed=dp_seed_for(seed)` when it has no seed= (docs/simulator.md, "Differential
        privacy: reading epsilon"). Without one, DPMean draws each round's noise from OS
        entropy, as a deployment must, and no rerun repeats the run. An aggregator registered
        in `AGGREGATORS` is left as it is."""
        if self.aggregator in AGGREGATORS:
            return self.aggregator
        stages = split_stages(self.aggregator)
        for i, stage in enumerate(stages):
            name, colon, params = stage.partition(":")
            if name.strip().lower() != "dp":
                continue
            keys = {
                part.partition("=")[0].strip().lower() for part in params.split(",") if "=" in part
            }
            if "seed" not in keys:
                given = params.strip()
                seed = f"seed={dp_seed_for(self.seed)}"
                stages[i] = f"{name}:{given},{seed}" if given else f"{name}:{seed}"
        return "+".join(stages)

    @property
    def dp_seed(self) -> int | None:
        """The seed of the in-process run's dp noise (its spec's seed=, else derived from
        `seed`), or None: no dp stage, or a registered aggregator's stage without a seed."""
        try:
            dp = find_dp(build_aggregator(self.run_aggregator))
        except ValueError:
            return None
        return None if dp is None or dp.seed is None else int(dp.seed)

    def _dp_stage(self) -> DPMean | None:
        """The `aggregator`'s dp stage, or None."""
        try:
            return find_dp(build_aggregator(self.aggregator))
        except ValueError as exc:
            raise ValueError(f"aggregator {self.aggregator!r}: {exc}") from None

    def dp_sampling(self) -> Sampling | None:
        """The sampling the `aggregator`'s dp stage accounts, or None (no dp stage, or one
        that accounts no epsilon)."""
        dp = self._dp_stage()
        return dp.sampling if dp is not None else None

    def dp_pool_needed(self) -> int:
        """The devices a round must select from for the dp stage's epsilon to hold: N of
        `population=N,sample=k` with N > k (amplification by sampling); 0 when there is no
        amplification to protect (no dp stage, no accounting, or N == k). The coordinator
        applies the same rule (`amplified_population`)."""
        return amplified_population(self._dp_stage())

    def _check_dp_sampling(self) -> None:
        """Refuse dp accounting that this fleet makes certainly wrong (docs/simulator.md,
        "Central DP"): Poisson sampling, which no simulated selection does, a `population=`
        larger than the whole fleet, which no round can select from, and a `sample=` below the
        cohort selected (the round engine's rule, stated here before any data loads)."""
        sampling = self.dp_sampling()
        cohort = self.engine_config().cohort_size
        if isinstance(sampling, FixedSizeSampling) and sampling.sample_size < cohort:
            defaulted = (
                f" (--fleet realistic takes the coordinator's over-selection "
                f"{self.over_selection:g}: pass --over-selection 1 to select per_round)"
                if self.over_selection_defaulted
                else ""
            )
            raise ValueError(
                f"dp accounts cohorts of sample={sampling.sample_size} but the engine selects "
                f"{cohort} (over-selection included): set sample= to the cohort{defaulted}"
            )
        fix = (
            f"population=N,sample={cohort} with N at most the devices available each round "
            f"(per_round x over_selection = {cohort} are selected), or "
            f"population={cohort},sample={cohort} to account without amplification"
        )
        if isinstance(sampling, PoissonSampling):
            raise ValueError(
                "dp accounts Poisson sampling (q=), but the simulator selects fixed-size "
                f"cohorts, so that epsilon bounds nothing: use {fix}"
            )
        if isinstance(sampling, FixedSizeSampling) and sampling.population > self.clients:
            raise ValueError(
                f"dp accounts cohorts sampled from population={sampling.population}, but the "
                f"fleet has only {self.clients} devices (clients), so epsilon would be "
                f"understated every round: use {fix}"
            )
        if (why := delta_refusal(self._dp_stage())) is not None:
            raise ValueError(why)

    def build_attack(self) -> Any:
        """The `attack` as the runner uses it: ALIE's z from the cohort size and the expected
        attackers in it, round(malicious x per_round) (at least 1)."""
        from .attacks import AlieAttack, build_attack

        n, f = self.per_round, max(1, round(self.malicious * self.per_round))
        attack = build_attack(str(self.attack), num_clients=n, num_malicious=f)
        if isinstance(attack, AlieAttack) and attack.z is None:
            try:
                attack.z_value  # noqa: B018  (computes z: ValueError when f >= n)
            except ValueError as exc:
                # Raised in the first round with two honest devices before, ending the run.
                raise ValueError(
                    f"attack {self.attack!r}: {exc}: the malicious fraction x per_round rounds "
                    f"to {f} attackers in a cohort of {n}, leaving ALIE no honest majority; "
                    "lower the malicious fraction, raise per_round, or give z= (alie:z=1.5)"
                ) from None
        return attack

    def engine_config(self) -> EngineConfig:
        """The round engine's policy for this run (cohort size, over-selection, codec)."""
        return EngineConfig(
            clients_per_round=self.per_round,
            over_selection=self.over_selection,
            min_reports=self.min_reports,
            codec=self.codec(),
            server_lr=self.server_lr,
            seed=self.seed,
        )

    @property
    def dataset_seed(self) -> int:
        """The seed of the dataset's draw and train/test split: `data_seed`, else `seed`."""
        return self.seed if self.data_seed is None else int(self.data_seed)

    @property
    def model_name(self) -> str:
        if self.model:
            return self.model
        if (name := default_model(self.dataset)) is None:
            raise ValueError(f"no default model for dataset {self.dataset!r}; pass --model")
        return name

    def codec(self) -> CodecConfig:
        if self.dense:
            return CodecConfig.dense()
        return CodecConfig(
            topk=self.topk,
            bits=self.bits,
            block=self.block,
            index=self.index,
            topk_mode=self.topk_mode,
            scope=self.scope,
        )

    @property
    def plugin_root(self) -> str | None:
        """The directory `plugins` were imported from (the current one when this config was
        made); None without plugins."""
        return getattr(self, "_plugin_root", None)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SimConfig:
        """The config `as_dict` wrote (a rounds.json's `config`, a benchmark's job): the
        `deadline_defaulted` / `over_selection_defaulted` marks say the value was realistic
        mode's default, so it is left for the new config to default again (as the run that
        wrote it did), instead of being refused as an unknown field. A config whose
        `ray_runtime_env` was recorded by its keys only cannot be rebuilt (ValueError)."""
        values = dict(values)
        if "ray_runtime_env_keys" in values:
            raise ValueError(
                "this config recorded ray_runtime_env by its keys only (its values may be "
                "secrets): give ray_runtime_env again to rebuild it"
            )
        if values.pop("deadline_defaulted", False):
            values["deadline_s"] = None
        if values.pop("over_selection_defaulted", False):
            values["over_selection"] = None
        if "plugins" in values:
            values["plugins"] = tuple(values["plugins"])
        recorded = {
            name: values.pop(f"{name}_sha256", None)
            for name in ("capacity_trace", "behaviour_trace")
        }
        cfg = cls(**values)
        for name, sha in recorded.items():
            now = cfg.trace_sha256.get(name)
            if sha is not None and now is not None and now != sha:
                raise ValueError(
                    f"{name} {getattr(cfg, name)} is not the file the recorded run used: its "
                    f"SHA-256 is {now}, the record says {sha}"
                )
        return cfg

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        if self.plugins:
            values["plugins"] = list(self.plugins)  # as rounds.json reads back
        else:
            # A run without plugins records the same config as before the field existed.
            del values["plugins"]
        if self.min_memory_mb is None:
            del values["min_memory_mb"]  # likewise
        for name in ("capacity_trace", "behaviour_trace"):
            if values[name] is None:
                del values[name]  # likewise
            else:  # which file it was: docs/traces.md
                values[f"{name}_sha256"] = self.trace_sha256[name]
        if self.capacity_trace is None and self.trace_compute_scale == 1.0:
            del values["trace_compute_scale"]  # likewise
        if self.ray_address is not None:
            from .backends.ray_backend import public_address

            # Without a user:password@ before the host: rounds.json is shared with results.
            # Stripped, as RayBackend strips the address it joins (" h:6379 " joins h:6379).
            values["ray_address"] = public_address(self.ray_address.strip())
        if self.ray_runtime_env is not None:
            # Its keys only: values such as env_vars (tokens, passwords) may be secrets, and
            # rounds.json is shared with results.
            del values["ray_runtime_env"]
            values["ray_runtime_env_keys"] = sorted(self.ray_runtime_env)
        if self.deadline_defaulted:
            # Only then: a config without the key (every rounds.json before it) had its
            # deadline, if any, given by the user.
            values["deadline_defaulted"] = True
        if self.over_selection_defaulted:
            # Likewise: realistic mode took the coordinator's over-selection.
            values["over_selection_defaulted"] = True
        return values

    @property
    def over_selection_defaulted(self) -> bool:
        """Whether `over_selection` is the coordinator's default that realistic mode filled in
        (none was given), not the user's. Not a field: a config given an over-selection (even
        1.3), or made from another by `dataclasses.replace`, has it False."""
        return bool(getattr(self, "_over_selection_defaulted", False))

    @property
    def deadline_defaulted(self) -> bool:
        """Whether `deadline_s` is the coordinator's default that `with_coordinator_deadline`
        filled in (no deadline was given), not the user's. Not a field: it is set by that
        method only, and a config built with a deadline (even 60 s) has it False."""
        return bool(getattr(self, "_deadline_defaulted", False))

    def with_coordinator_deadline(self) -> SimConfig:
        """This config with the deadline its rounds run with: realistic mode without one gets
        the coordinator's default (`TaskConfig.deadline_s`), as a coordinator task always has
        a deadline and waits to it for a round that cannot fill (`deadline_defaulted` True,
        and rounds.json's config says `"deadline_defaulted": true`); otherwise `self`."""
        if self.fleet != "realistic" or self.deadline_s is not None:
            return self
        out = replace(self, deadline_s=COORDINATOR_DEADLINE_S)
        object.__setattr__(out, "_deadline_defaulted", True)
        object.__setattr__(out, "_over_selection_defaulted", self.over_selection_defaulted)
        return out


@dataclass
class RoundRecord:
    """One row of the per-round table. Bytes are payload bytes summed over the round's devices;
    `ratio_up` is the dense fp32 upload of the same reports divided by the real upload."""

    round: int
    accuracy: float | None
    loss: float | None
    train_loss: float
    reports: int
    committed: bool
    bytes_up: int
    bytes_down: int
    dense_up: int
    dense_down: int
    wire_up: int
    wire_down: int
    ratio_up: float | None
    wall_s: float
    sim_s: float | None = None
    wait_s: float | None = None  # simulated s idled before the round (selection); not in sim_s
    # devices the cohort was selected from: the realistic fleet's pool, else every device;
    # over HTTP the simulated devices not busy with an earlier round when it opened
    available: int | None = None
    measurements: dict[str, Any] = field(default_factory=dict)
    # Where `wall_s` went (wall seconds, `WALL_PHASES`), in an in-process run: the backend's
    # training (model attacks included), encoding the uploads (`encode_reports`), the round
    # engine's decode and aggregation (`submit_many` + `close_round`), evaluation (test
    # accuracy and backdoor accuracy), and the rest (selection, the simulated clock,
    # bookkeeping), so that the five sum to `wall_s`. A phase a round did not run took 0.0 s
    # (an unevaluated round's eval, an abandoned selection's training). An in-process secure
    # round fills them in too (`secure.run_secure_simulation`: the masked inputs as the
    # encoding, the server's SecAgg+ stages and unmask as the aggregation). None where no
    # split was measured: the HTTP transport (plain: devices train concurrently, `wall_s` is
    # the coordinator's open-to-close; secure: the devices' SecAgg+ steps and the service's
    # overlap in other threads).
    wall_train_s: float | None = None
    wall_encode_s: float | None = None
    wall_aggregate_s: float | None = None
    wall_eval_s: float | None = None
    wall_other_s: float | None = None
    # In a run with onnxruntime devices (--ort-fraction or --ort-tier): how many of this
    # round's devices trained on onnxruntime (`TrainJob.trainer` "ort"), and how many of its
    # `reports` came from them (a straggler or a dropped device trains, or not, but does not
    # report). None in a run without such devices, and over HTTP or --secure, which refuse them.
    ort_trained: int | None = None
    ort_reports: int | None = None


# RoundRecord's ORT fields: in rounds.csv only for runs that have onnxruntime devices, after
# the other columns and before `WALL_PHASES` (the columns of other runs are unchanged).
ORT_FIELDS = ("ort_trained", "ort_reports")

# RoundRecord's parts of `wall_s`, in order (rounds.json and the last columns of rounds.csv).
WALL_PHASES = ("wall_train_s", "wall_encode_s", "wall_aggregate_s", "wall_eval_s", "wall_other_s")


class _WallSplit(TypedDict):
    wall_train_s: float
    wall_encode_s: float
    wall_aggregate_s: float
    wall_eval_s: float
    wall_other_s: float


def _wall_split(
    wall_s: float, train: float, encode: float, aggregate: float, evaluate: float
) -> _WallSplit:
    """`WALL_PHASES` of a round of `wall_s` seconds whose measured phases took these: the
    rest is `wall_other_s` (never below 0: the phases are disjoint spans inside `wall_s`, so
    only float rounding could make it so)."""
    other = max(0.0, wall_s - (train + encode + aggregate + evaluate))
    return _WallSplit(
        wall_train_s=train,
        wall_encode_s=encode,
        wall_aggregate_s=aggregate,
        wall_eval_s=evaluate,
        wall_other_s=other,
    )


@dataclass
class SimResult:
    config: SimConfig
    records: list[RoundRecord]
    ledger: BandwidthLedger
    num_params: int
    final_params: npt.NDArray[np.float32]
    label: str = ""
    started_at: str = ""
    # A secure run's SecureConfig and dropout (rounds.json's `secure`); None for plain rounds.
    secure: dict[str, Any] | None = None
    # partition.partition_stats of the split the run trained on (the summary's `partition`)
    partition: dict[str, Any] | None = None
    # Stopped by Ctrl-C (`RunInterrupted`): `records` are the rounds that finished before it.
    interrupted: bool = False
    # The seed of the dp stage's noise in an in-process run (`SimConfig.dp_seed`: its spec's
    # seed=, else derived from `seed`), rounds.json's `config.dp_seed`; None: no dp stage, or
    # its noise came from OS entropy (over HTTP the coordinator builds the aggregator itself).
    dp_seed: int | None = None
    # An HTTP run's wall-clock settings that `config` has no field for (rounds.json's `http`):
    # `deadline_s`, its coordinator task's round deadline in wall seconds (`config.deadline_s`
    # is simulated seconds, which HTTP runs refuse, so it stays None), and the fleet's own
    # (a secure run's `stage_idle_s` / `stage_cap_s`). None in process.
    http: dict[str, Any] | None = None
    # The Ray cluster a Ray run joined by address (rounds.json's `ray_cluster`, from
    # `RayBackend.cluster`: its address without credentials and where the address came from,
    # "RAY_ADDRESS" or "ray_address"). `config` cannot say it for RAY_ADDRESS: a config is
    # the same wherever it is built. None: a private Ray runtime, or another backend.
    ray_cluster: dict[str, str] | None = None

    @property
    def final_accuracy(self) -> float | None:
        for r in reversed(self.records):
            if r.accuracy is not None:
                return r.accuracy
        return None

    @property
    def total_up(self) -> int:
        return sum(r.bytes_up for r in self.records)

    @property
    def total_dense_up(self) -> int:
        return sum(r.dense_up for r in self.records)

    @property
    def upload_ratio(self) -> float | None:
        return self.total_dense_up / self.total_up if self.total_up else None

    def dp_pool(self) -> dict[str, Any] | None:
        """The rounds' pools against the population N a dp stage accounts (`population=N,
        sample=k`, N > k), or None without such a stage (`SimConfig.dp_pool_needed`).

        `dp_population`: N; `dp_pool_min`: the fewest devices a committed round selected
        from (None if no round recorded it: the HTTP transport); `dp_pool_short_rounds`: the
        committed rounds that selected from fewer than N, whose epsilon is understated (each
        of their devices was more likely to be sampled than k/N; the in-process runner opens
        none); `dp_pool_abandoned_rounds`: the rounds abandoned with fewer than N devices in
        their pool (a realistic fleet that never had N devices available at once).
        """
        need = self.config.dp_pool_needed()
        if not need:
            return None
        rows = [(r.round, r.committed, r.available) for r in self.records]
        pools = [n for _, committed, n in rows if committed and n is not None]
        return {
            "dp_population": need,
            "dp_pool_min": min(pools) if pools else None,
            "dp_pool_short_rounds": [
                rnd for rnd, committed, n in rows if committed and n is not None and n < need
            ],
            "dp_pool_abandoned_rounds": [
                rnd for rnd, committed, n in rows if not committed and n is not None and n < need
            ],
        }


# The longest stall limit a run takes (a week, seconds): the pool's and Ray's waits take no
# more than about 24.8 days (2^31 ms).
MAX_JOB_TIMEOUT_S = 7 * 86_400.0


class NoEligibleDevices(RuntimeError):
    """A realistic fleet's round found no device eligible (charging on unmetered wifi, with
    `min_memory_mb`) in its two simulated days of waiting: a tiny or never-available fleet."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (a KeyboardInterrupt) stopped `run_simulation`; `result` holds the rounds that
    finished before it (`result.interrupted` is True), their ledger rows and the model of the
    last committed round, so that a long run's finished rounds can still be written.

    A KeyboardInterrupt still: code that catches that (or lets it end the program) is
    unchanged."""

    def __init__(self, result: SimResult) -> None:
        super().__init__(
            f"interrupted after {len(result.records)} of {result.config.rounds} rounds"
        )
        self.result = result

    @staticmethod
    def finished(result: SimResult) -> SimResult:
        """`result` cut to its finished rounds: their ledger rows only (a round cut short may
        have recorded downloads and uploads), marked `interrupted`."""
        done = {r.round for r in result.records}
        ledger = BandwidthLedger(row for row in result.ledger.rows() if row.round_id in done)
        return replace(result, ledger=ledger, interrupted=True)

    @classmethod
    def of(cls, result: SimResult) -> RunInterrupted:
        """The interruption of a run whose rounds so far are `result` (`finished`)."""
        return cls(cls.finished(result))

    @classmethod
    def attach(cls, exc: BaseException, result: SimResult) -> None:
        """Hand the finished rounds of `result` on the error that ended its run, as its
        `finished_rounds` attribute (`finished`), for `plume sim` to write; an exception that
        takes no attributes goes on without them."""
        try:
            exc.finished_rounds = cls.finished(result)  # type: ignore[attr-defined]
        except (AttributeError, TypeError):
            pass


# Your own datasets: name -> loader(root, seed) -> FederatedData (a `NaturalData`, with
# `train_groups`, also splits by its own users). `SimConfig(dataset=name)` then loads it, in
# every backend (workers receive the arrays, not the name). docs/simulator.md, "Your own
# model or dataset".
DATASET_LOADERS: dict[str, Callable[[str | None, int], FederatedData]] = {}


def _checked(name: str, data: object) -> FederatedData:
    """A registered loader's answer, refused with its dataset's name if it is not one the
    partitioners and trainers can take."""
    if not isinstance(data, FederatedData):
        raise ValueError(
            f"dataset {name!r}: its loader returned {type(data).__name__}, not a FederatedData"
        )
    for split in ("train", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim < 2:
            got = f"{x.dtype} of shape {list(x.shape)}" if isinstance(x, np.ndarray) else None
            fix = "; return x.astype(np.float32)" if got and x.dtype.kind == "f" else ""
            raise ValueError(
                f"dataset {name!r}: x_{split} must be a float32 array [N, ...], "
                f"got {got or type(x).__name__}{fix}"
            )
        if not isinstance(y, np.ndarray) or y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"dataset {name!r}: y_{split} must be a 1-D integer array [N]")
        if len(x) != len(y):
            raise ValueError(
                f"dataset {name!r}: x_{split} has {len(x)} rows but y_{split} {len(y)} labels"
            )
        if len(y) and not (0 <= y.min() and y.max() < data.num_classes):
            raise ValueError(
                f"dataset {name!r}: y_{split} holds labels outside 0..{data.num_classes - 1} "
                "(num_classes)"
            )
    return data


def load_dataset(name: str, root: str | None = None, seed: int = 0) -> FederatedData:
    """A dataset registered in `DATASET_LOADERS`, built-in 'mnist' and 'digits', or one of
    `mobile_sim.datasets`."""
    if name in DATASET_LOADERS:
        data = _run_loader(name, root, seed)
        try:
            return _checked(name, data)
        except ValueError as exc:
            setattr(exc, _DATASET_ERROR, name)  # already names it: as it is, in any loader
            raise
    if name == "mnist":
        return load_mnist(root, seed=seed)
    if name == "digits":
        return load_digits_data(seed=seed)
    try:
        from . import datasets
    except ImportError:
        raise ValueError(f"unknown dataset {name!r}; choose mnist or digits") from None
    try:
        loaded: FederatedData = datasets.load_federated(name, root=root, seed=seed)
    except ValueError as exc:
        if str(exc).startswith("unknown dataset"):
            # One plain list (not a Python tuple), with the names registered (by a --plugin,
            # say), which the built-in list alone hid.
            names = ["mnist", "digits", *datasets.DATASETS]
            choose = f"{', '.join(names[:-1])} or {names[-1]}"
            if DATASET_LOADERS:
                registered = ", ".join(sorted(DATASET_LOADERS))
                choose = f"{', '.join(names)} or one registered: {registered}"
            raise ValueError(f"unknown dataset {name!r}; choose {choose}") from None
        raise
    return loaded


# The attribute marking an exception `load_dataset` raised naming a registered dataset (its
# value the name): a loader that loads another registered dataset raises it as it is, not
# wrapped again in its own words.
_DATASET_ERROR = "plume_dataset"


def _run_loader(name: str, root: str | None, seed: int) -> object:
    """What `DATASET_LOADERS[name]` returns for `root` (None: $PLUME_DATA, else
    ../shared/data, resolved as the built-in loaders do, `mobile_sim.data.data_root`); its
    exception is raised again naming the dataset and the loader: a `DataError` for a missing
    or unreadable file (`OSError`), a `ValueError` for any other; but one `load_dataset`
    raised for another registered dataset (a loader that loads one) goes on as it is."""
    loader = DATASET_LOADERS[name]
    try:
        return loader(str(data_root(root)), seed)
    except Exception as exc:
        if getattr(exc, _DATASET_ERROR, None) is not None:
            raise  # another registered dataset's, which names it already
        where = f"{getattr(loader, '__module__', None)}.{getattr(loader, '__qualname__', loader)}"
        text = f"dataset {name!r} (its loader {where}): {type(exc).__name__}: {exc}"
        wrapped = DataError(text) if isinstance(exc, (DataError, OSError)) else ValueError(text)
        setattr(wrapped, _DATASET_ERROR, name)
        raise wrapped from exc


def natural_client_count(name: str, root: str | None = None, seed: int = 0) -> int:
    """How many natural clients (speakers, synthetic devices) dataset `name` has; loads it.

    A `ValueError` for a dataset without them (mnist, digits)."""
    groups = getattr(load_dataset(name, root, seed), "train_groups", None)
    if not groups:
        raise ValueError(f"dataset {name!r} has no natural partition")
    return len(groups)


# Your own aggregators: name -> a function with no arguments returning an AggregatorFactory
# (`create(size)` -> a process with `initialize()` and `next(state, updates)`, as in
# coordinator.aggregators). `SimConfig(aggregator=name)` then runs it; the name is the whole
# spec (it does not compose with the built-in stages). docs/simulator.md, "Your own model,
# dataset or aggregator".
AGGREGATORS: dict[str, Callable[[], AggregatorFactory]] = {}


def dp_seed_for(seed: int) -> int:
    """The seed of a `dp` stage without seed= in an in-process run of `--seed seed`: the
    first 32-bit word of numpy's SeedSequence(seed, spawn_key=(0xD9,)), halved (below 2**31,
    so the spec's seed= carries it exactly). Not `seed` itself, nor SeedSequence([seed, 0xD9]):
    numpy pads a short entropy list with zeros, so that one was the sequence of
    default_rng([seed, 217]), the engine's round-217 selection and a secure run's round-217
    cohort. With a spawn key numpy pads `seed` to four words before appending the key, so the
    sequence is one of five words or more, [seed, 0, 0, 0, 0xD9] for a seed below 2**32, which
    none of the run's default_rng([seed, ...]) lists of two to four words makes."""
    word = np.random.SeedSequence(seed, spawn_key=(0xD9,)).generate_state(1, np.uint32)[0]
    return int(word) >> 1


def build_aggregator(spec: str) -> AggregatorFactory:
    """Aggregator from a CLI string ('fedavg', 'median', 'normbound:5+fedavg', ...), or one
    registered in `AGGREGATORS` by its name."""
    if spec in AGGREGATORS:
        return AGGREGATORS[spec]()
    try:
        from coordinator.aggregators import build_aggregator as registry
    except ImportError:
        if spec in ("fedavg", "mean"):
            return FedAvg()
        _refuse_registered_stage(spec)
        raise ValueError(f"unknown aggregator {spec!r}") from None
    # The built-in stages first: a registered aggregator named like one ("median") leaves
    # "normbound:5+median" the built-in median, as before it was registered.
    try:
        factory: AggregatorFactory = registry(spec)
    except ValueError as exc:
        _refuse_registered_stage(spec, exc)
        raise
    return factory


def _refuse_registered_stage(spec: str, cause: Exception | None = None) -> None:
    """For a '+' spec the built-in stages do not make: a ValueError naming a stage
    registered in `AGGREGATORS` that is no built-in stage (a registered "median" in a spec
    that fails for another reason leaves that reason to be told), which is a whole spec and
    does not combine."""
    try:
        from coordinator.aggregators._registry import BASES, WRAPPERS

        built_in = {*BASES, *WRAPPERS}
    except ImportError:
        built_in = set()
    for stage in split_stages(spec) if "+" in spec else ():
        name = stage.split(":", 1)[0].strip()
        if name in AGGREGATORS and name.lower() not in built_in:
            raise ValueError(
                f"{name!r} is a registered aggregator: it is the whole spec "
                f"(--aggregator {name}) and does not combine with '+' stages"
            ) from cause


class _WarmupStrategy(Strategy):
    """Dense fp32 uploads for the first `warmup` rounds, then the configured codec."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup

    def configure(self, engine: RoundEngine, round_id: int, selected: list[str]) -> RoundPlan:
        plan = super().configure(engine, round_id, selected)
        if round_id <= self.warmup:
            return replace(plan, codec=CodecConfig.dense())
        return plan


class _DownlinkStrategy(_WarmupStrategy):
    """`_WarmupStrategy` (`warmup` 0: none), with each round's model published as a coordinator
    task publishes it (`coordinator.service.downlink.DownlinkStrategy`, the service's own
    class, `publisher`): the step quantized by the task's downlink codec with server-side
    error feedback, and `engine.params` the previous model plus the decoded frame
    (`protocol.messages.apply_delta`), bit for bit the model a device builds from the frames
    it downloads."""

    def __init__(self, warmup: int, publisher: Any) -> None:
        super().__init__(warmup)
        self.publisher = publisher

    def publish(self, engine: RoundEngine, round_id: int, output: Any) -> None:
        # The service sets the durable round id before closing a round; here the engine's.
        self.publisher.round_key = round_id
        self.publisher.publish(engine, round_id, output)


def _downlink_strategy(cfg: SimConfig, spec: ModelSpec, downlink: CodecConfig) -> _DownlinkStrategy:
    """The `_DownlinkStrategy` of `cfg`'s run: the service's `DownlinkStrategy` seeded with the
    run's seed, as a task of that seed is (imported here: it brings the HTTP service)."""
    from compression import ErrorFeedback
    from coordinator.service.downlink import DownlinkStrategy

    publisher = DownlinkStrategy(spec, downlink, cfg.seed, ErrorFeedback(spec.size))
    return _DownlinkStrategy(cfg.warmup_rounds, publisher)


class _Downloads:
    """Each selected device's model download under a compressed downlink, as the coordinator
    answers an SDK client, which keeps the model it downloaded (`Coordinator.plan_model`): a
    device holding version `have` gets the delta chain of the frames published since
    (`protocol.messages.pack_chain`) when it is at most `max_chain` versions behind and the
    chain is smaller than the fp32 snapshot; otherwise, and at its first download, the fp32
    snapshot (`compression.encode_snapshot`). A device holding the current version (it
    downloaded it in a round that was abandoned) gets the empty chain: no model, so no dense
    bytes, as the coordinator's ledger counts it."""

    def __init__(self, spec: ModelSpec, max_chain: int = TASK_MAX_CHAIN) -> None:
        self.spec = spec
        self.max_chain = max_chain
        self.held: dict[str, int] = {}  # the version each device holds
        self.frames: dict[int, bytes] = {}  # version -> the frame that made it
        self._snapshot: tuple[int, int] | None = None  # (version, its fp32 snapshot's bytes)

    def published(self, version: int, frame: bytes) -> None:
        """Keep the frame that made `version`; frames no chain can reach any more go."""
        self.frames[version] = frame
        for old in [v for v in self.frames if v <= version - self.max_chain]:
            del self.frames[old]

    def snapshot_bytes(self, version: int, params: npt.NDArray[np.float32]) -> int:
        if self._snapshot is None or self._snapshot[0] != version:
            body = encode_snapshot(params, self.spec, SnapshotDType.FP32)
            self._snapshot = (version, len(body))
        return self._snapshot[1]

    def download(
        self, device: str, version: int, params: npt.NDArray[np.float32]
    ) -> tuple[int, int]:
        """(payload bytes, dense fp32 bytes) of `device`'s download of `version`, the model
        `params`; `device` holds that version from then on."""
        have = self.held.get(device)
        self.held[device] = version
        snapshot = self.snapshot_bytes(version, params)
        if have is not None and 0 <= version - have <= self.max_chain:
            chain = chain_bytes(len(self.frames[v]) for v in range(have + 1, version + 1))
            if chain < snapshot:
                return chain, self.spec.dense_bytes if have != version else 0
        return snapshot, self.spec.dense_bytes


def _fleet_test_split(cfg: SimConfig, data: FederatedData) -> FederatedData:
    """`data` with the test split the run evaluates on: with `--partition natural` over fewer
    clients than the dataset has, a `NaturalData` whose test split is per device
    (`test_groups`, as synthetic's devices and Shakespeare's speakers have) keeps only the
    test rows of the devices `_partition` kept, the first `cfg.clients` (FedProx and LEAF
    evaluate on the participating devices' own test data; the devices left out are not in the
    fleet, and in synthetic(alpha, beta) each has its own labelling model). Its groups and
    names are cut to those devices too. Every other run (iid, dirichlet, shards; a natural run
    over every device; a dataset without per-device test rows, or whose kept devices hold
    none) keeps the dataset's whole test split. Done once in `prepare`, so every backend and
    transport evaluates (and scores a backdoor) on the same rows."""
    from .datasets import NaturalData

    if cfg.partition != "natural" or not isinstance(data, NaturalData):
        return data
    if not data.test_groups or cfg.clients >= len(data.test_groups):
        return data
    kept = [np.asarray(g) for g in data.test_groups[: cfg.clients]]
    if any(g.size and not np.issubdtype(g.dtype, np.integer) for g in kept):
        raise ValueError(f"dataset {cfg.dataset!r}: test_groups hold non-integer row indices")
    rows = np.concatenate([g.astype(np.int64).reshape(-1) for g in kept])
    if rows.size == 0:
        return data
    if int(rows.min()) < 0 or int(rows.max()) >= len(data.y_test):
        raise ValueError(
            f"dataset {cfg.dataset!r}: test_groups hold row indices outside x_test's "
            f"{len(data.y_test)} rows"
        )
    starts = np.cumsum([0] + [g.size for g in kept])
    return replace(
        data,
        x_test=data.x_test[rows],
        y_test=data.y_test[rows],
        train_groups=tuple(data.train_groups[: cfg.clients]),
        test_groups=tuple(
            np.arange(starts[i], starts[i + 1], dtype=np.int64) for i in range(len(kept))
        ),
        group_names=tuple(data.group_names[: cfg.clients]),
    )


def _partition(cfg: SimConfig, data: FederatedData) -> list[npt.NDArray[np.int64]]:
    rng = np.random.default_rng([cfg.seed, 1])
    if cfg.partition == "natural":
        groups = getattr(data, "train_groups", None)
        if groups is None:
            raise ValueError(f"dataset {cfg.dataset!r} has no natural partition")
        parts = natural(groups, num_examples=len(data.y_train))
        if len(parts) < cfg.clients:
            raise ValueError(
                f"clients must be at most {len(parts)} with the natural partition: "
                f"{cfg.dataset} has {len(parts)} natural clients, got {cfg.clients}"
            )
        return parts[: cfg.clients]
    return partition(
        data.y_train,
        cfg.clients,
        cfg.partition,
        rng,
        alpha=cfg.alpha,
        shards_per_client=cfg.shards_per_client,
    )


@dataclass
class SimSetup:
    """What every transport (in-process, HTTP, secure) builds the same way from a config:
    the data and its partition, the initial model and its flat layout, a model to evaluate."""

    data: FederatedData
    parts: list[npt.NDArray[np.int64]]
    model: Any
    spec: ModelSpec
    eval_model: Any
    started_at: str


def prepare(cfg: SimConfig) -> SimSetup:
    """Seed torch, load and partition the data, and build the model for `cfg`."""
    import torch

    from sdk.flat import spec_from_module

    from .models import build_model

    torch.manual_seed(cfg.seed)
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    say(f"loading {cfg.dataset}")
    data = load_dataset(cfg.dataset, cfg.data_root, cfg.dataset_seed)
    parts = _partition(cfg, data)
    data = _fleet_test_split(cfg, data)
    say(f"building {cfg.model_name}")
    model = build_model(cfg.model_name, seed=cfg.seed)
    eval_model = build_model(cfg.model_name, seed=cfg.seed)
    spec = spec_from_module(model)
    _check_fits(eval_model, data, parts)
    if cfg.ort_artifacts is not None and (cfg.ort_fraction > 0 or cfg.ort_tier):
        _check_ort_artifacts(cfg, spec, data, parts)
    return SimSetup(data, parts, model, spec, eval_model, started_at)


def _check_fits(model: Any, data: FederatedData, parts: list[npt.NDArray[np.int64]]) -> None:
    """The trainer's check (`TrainingDataError`, a ValueError) on the first device with data,
    now: a model that does not fit its data (a --plugin's, say) is refused in the trainer's
    words, not with torch's traceback from the fleet's cost probe or a device stopped
    mid-round. One forward pass on one example; the model is left as it was."""
    from sdk.trainer import check_training_data

    part = next((p for p in parts if len(p)), None)
    if part is not None:
        check_training_data(model, data.x_train[part], data.y_train[part], allow_ignore=True)


def ort_loss_error(folder: str | os.PathLike[str], loss: str, dataset: str) -> str:
    """Why an export for `loss` (not "ce") cannot train on `dataset`: every simulated dataset
    has class labels. Shared with `plume sim`, which says it from the manifest before loading
    any data (`mobile_sim._cli._ort_loss_error`)."""
    return (
        f"ort_artifacts {folder} was exported with --loss {loss}, but the {dataset} data has "
        "class labels, which only a cross-entropy training step takes: export with --loss ce "
        "(the default)"
    )


def _check_ort_artifacts(
    cfg: SimConfig,
    spec: ModelSpec,
    data: FederatedData,
    parts: list[npt.NDArray[np.int64]],
) -> None:
    """Refuse artifacts of another model or optimizer, or that do not fit the data, now, not
    inside a worker mid-round.

    The data is checked as torch devices' is (`_check_fits`): with `OrtTrainer.check_data`
    on the first device with data, after the loss and the per-example shapes of x and y, which
    get their own words (the artifacts' folder, the dataset, and the export flag to change).
    An export for --loss mse, or for another --input-shape, used to start the run and fail at
    the first round that picked an onnxruntime device (or never, if none was picked), saying
    only "x of shape (166, 64), the model takes [B, (8, 8)]"."""
    from sdk import TrainingDataError
    from sdk.ort import ArtifactError, OrtTrainer

    folder = str(cfg.ort_artifacts)
    try:
        trainer = OrtTrainer.from_dir(folder)
        trainer.check_matches(spec, momentum=cfg.momentum)
    except ArtifactError as exc:
        raise ValueError(f"ort_artifacts: {exc}") from exc
    m = trainer.manifest
    if m.loss != "ce":
        raise ValueError(ort_loss_error(folder, m.loss, cfg.dataset))
    x_shape, y_shape = tuple(data.x_train.shape[1:]), tuple(data.y_train.shape[1:])
    if m.x_shape != x_shape:
        raise ValueError(
            f"ort_artifacts {folder} take examples x of shape {m.x_shape}, but the "
            f"{cfg.dataset} data's are {x_shape}: export with --input-shape "
            f"{','.join(map(str, x_shape))}"
        )
    if m.y_shape != y_shape:
        raise ValueError(
            f"ort_artifacts {folder} take targets y of shape {m.y_shape} for each example, "
            f"but the {cfg.dataset} data's are {y_shape}"
        )
    part = next((p for p in parts if len(p)), None)
    if part is None:
        return
    try:
        trainer.check_data(data.x_train[part], data.y_train[part])
    except TrainingDataError as exc:
        raise ValueError(
            f"ort_artifacts {folder} cannot train on the {cfg.dataset} data: {exc}"
        ) from exc


def _device_ids(n: int) -> list[str]:
    width = max(4, len(str(n - 1)))
    return [f"dev-{i:0{width}d}" for i in range(n)]


def train_context(cfg: SimConfig, data: FederatedData) -> TrainContext:
    """The context a backend is started with for `cfg` on `data`: one for the plain and the
    secure run (mobile_sim.secure), so that neither leaves out what the other passes on (the
    secure run's lacked the plugins, and a spawned pool worker found no plugin model).

    `ort_artifacts` is made absolute against the current directory, as the plugins are (their
    `plugin_root`): a Ray actor runs in the directory `ray start` ran in, where a relative
    path names another folder or none."""
    artifacts = None if cfg.ort_artifacts is None else os.path.abspath(cfg.ort_artifacts)
    return TrainContext(
        model=cfg.model_name,
        x_train=data.x_train,
        y_train=data.y_train,
        epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        momentum=cfg.momentum,
        ort_artifacts=artifacts,
        plugins=cfg.plugins,
        plugin_root=cfg.plugin_root,
        x_test=data.x_test,
        y_test=data.y_test,
    )


def model_evaluator(
    be: Backend, eval_model: Any, data: FederatedData
) -> Callable[[npt.NDArray[np.float32]], tuple[float, float]]:
    """A round's test evaluation, (accuracy, mean loss) of the params given: in the backend's
    workers when it evaluates there (`ProcessPoolBackend.evaluate`: each worker a share of the
    test rows, batched as `sdk.trainer.evaluate` batches them, the sums joined in row order),
    with the test set checked here once first, in `evaluate`'s words; else `evaluate` on
    `eval_model` in this process."""
    from sdk.trainer import check_evaluation_data, evaluate

    in_backend = getattr(be, "evaluate", None)
    if in_backend is not None:
        check_evaluation_data(eval_model, data.x_test, data.y_test)

    def run(params: npt.NDArray[np.float32]) -> tuple[float, float]:
        got = None if in_backend is None else in_backend(params)
        if got is None:  # a backend whose context holds no test set
            got = evaluate(eval_model, params, data.x_test, data.y_test)
        return got

    return run


def run_simulation(
    cfg: SimConfig,
    *,
    progress: bool = True,
    label: str = "",
    on_round: Callable[[RoundRecord], None] | None = None,
    backend: Backend | None = None,
) -> SimResult:
    """Run `cfg.rounds` rounds in this process and return every round's record and the ledger."""
    from sdk.flat import get_flat_params

    cfg = cfg.with_coordinator_deadline()  # the result's config records it
    setup = prepare(cfg)
    data, parts, model, spec, eval_model = (
        setup.data,
        setup.parts,
        setup.model,
        setup.spec,
        setup.eval_model,
    )
    started_at = setup.started_at

    factory = build_aggregator(cfg.run_aggregator)
    downlink = cfg.downlink()
    strategy: Strategy | None = None
    published: _DownlinkStrategy | None = None
    downloads: _Downloads | None = None
    if downlink is not None:
        # Every round's model is the one the coordinator would publish with this downlink
        # (and every device trains from it); each download is what it would serve.
        strategy = published = _downlink_strategy(cfg, spec, downlink)
        downloads = _Downloads(spec)
    elif cfg.warmup_rounds:
        strategy = _WarmupStrategy(cfg.warmup_rounds)
    engine = RoundEngine(
        spec, get_flat_params(model), factory, cfg.engine_config(), strategy=strategy
    )
    # With a dp stage a straggler's or an abandoned round's upload is dropped as if delivered,
    # as the SDK does for a task the coordinator marks so (`returns_refused`).
    return_refused = returns_refused(factory)

    ids = _device_ids(cfg.clients)
    index_of = {d: i for i, d in enumerate(ids)}
    sel_rng = np.random.default_rng([cfg.seed, 2])
    n_bad = int(round(cfg.malicious * cfg.clients))
    malicious = set(sel_rng.permutation(cfg.clients)[:n_bad].tolist())
    uses_ort = cfg.ort_artifacts is not None and (cfg.ort_fraction > 0 or bool(cfg.ort_tier))
    n_ort = int(round(cfg.ort_fraction * cfg.clients))
    ort_devices = set(sel_rng.permutation(cfg.clients)[:n_ort].tolist())
    attack = None
    if cfg.attack and n_bad:
        # Expected attackers in a cohort: ALIE's z depends on the cohort size n and on f.
        attack = cfg.build_attack()
        if isinstance(attack, BackdoorAttack):
            # A trigger the data cannot take (synthetic's 60 features are not an image, or
            # one too large) fails now, naming the dataset, not in round 1's first attacker.
            try:
                attack.apply_trigger(data.x_train[:1] if len(data.x_train) else data.x_test[:1])
            except ValueError as exc:
                raise ValueError(f"attack backdoor does not fit {cfg.dataset}: {exc}") from None

    own_backend = backend is None
    be = backend if backend is not None else backend_for(cfg)
    evaluate_model = model_evaluator(be, eval_model, data)
    fleet = None
    if cfg.fleet != "off":
        from .fleet import SimFleet, relative_cost

        fleet = SimFleet(
            cfg.clients,
            seed=cfg.seed,
            availability="diurnal" if cfg.fleet == "realistic" else "always",
            dropouts=cfg.fleet == "realistic",
            deadline_s=cfg.deadline_s,
            cost_per_sample=relative_cost(eval_model, data.x_train.shape[1:]),
            checkin_period_s=cfg.checkin_period_s if cfg.fleet == "realistic" else 0.0,
            **cfg.population_traces(),
        )
    if cfg.ort_tier is not None:
        if fleet is None:
            raise ValueError("--ort-tier needs the simulated fleet (--fleet timing or realistic)")
        ort_devices = ort_devices_of_tier(fleet, cfg.clients, cfg.ort_tier)
    # A dp stage accounting a uniform cohort out of N devices is only right if the engine
    # selects from that many. As the coordinator does, a realistic round opens only once N
    # devices are in the pool, selection timeout or not; every round records how many it
    # selected from (`available`; see SimResult.dp_pool).
    dp_pool = cfg.dp_pool_needed()
    pool_target = max(engine.config.cohort_size, dp_pool)
    pool_least = max(engine.config.min_reports, dp_pool)
    # Each trained device's encoder state, resident up to the budget, the rest spilled to a
    # private temporary directory that the `finally` below removes (mobile_sim/_residuals.py).
    encoders = ResidualStore(spec, budget_bytes(cfg.residual_memory_mb))
    rng_pool = RngPool()
    records: list[RoundRecord] = []
    # The model of the last round in `records`: a round cut short after its close (while it
    # is evaluated, say) has already changed the engine's. An abandoned round changes nothing.
    # Held, not copied: the engine publishes each round's model as a new array, and nothing
    # changes one in place (tests/mobile_sim/test_h112_last_params.py).
    last_params = engine.params
    bar = _progress(cfg.rounds, label or ("dense" if cfg.dense else "compressed"), progress)

    def result(params: npt.NDArray[np.float32]) -> SimResult:
        """The run's result over the rounds in `records`, with the model `params`."""
        return SimResult(
            cfg,
            records,
            engine.ledger,
            spec.size,
            params,
            label,
            started_at,
            partition=partition_stats(parts, data.y_train),
            dp_seed=cfg.dp_seed,
            ray_cluster=_ray_cluster(be),
        )

    # Started last, just before the `try` whose `finally` closes it: a set-up check that
    # fails above (a test set the model cannot take, --ort-tier without a fleet) leaves no
    # pool workers or Ray actors running.
    if be.name in ("pool", "ray"):
        # The backend's own status line says it on a terminal; this line says it in a log.
        workers = getattr(be, "workers", None)
        kind = "pool" if be.name == "pool" else "Ray"
        plural = "" if workers == 1 else "s"
        note(f"starting {workers} {kind} worker{plural}" if workers else f"starting {kind} workers")
    try:
        be.start(train_context(cfg, data))
    except BaseException:
        bar.close()
        raise
    try:
        for _ in range(cfg.rounds):
            if engine.stopped:
                break
            t0 = time.perf_counter()
            available = ids
            selection = None
            if fleet is not None and cfg.fleet == "realistic":
                # Only devices charging on unmetered wifi at this simulated time are eligible,
                # and they join the pool as they check in; the coordinator's rule opens it.
                selection = fleet.select(
                    pool_target,
                    np.random.default_rng([cfg.seed, 3, len(records) + 1]),
                    round_id=len(records) + 1,
                    min_n=pool_least,
                    selection_timeout_s=cfg.selection_timeout_s,
                    min_memory_mb=cfg.min_memory_mb or 0.0,
                )
                available = [ids[i] for i in sorted(selection.device_ids.tolist())]
                if not available:
                    # Nobody charged on unmetered wifi in two simulated days: say so rather
                    # than pretend the whole fleet was eligible.
                    raise NoEligibleDevices(
                        f"round {len(records) + 1}: no device was eligible in the simulated "
                        "wait window (a tiny or never-available fleet)"
                    )
                if not selection.opened:
                    rec = _abandoned_selection(engine, available, selection, dp_pool, t0)
                    if uses_ort:
                        rec.ort_trained = rec.ort_reports = 0
                    records.append(rec)
                    if on_round is not None:
                        on_round(rec)
                    bar.update(rec)
                    continue
            elif fleet is not None:
                # Every device is eligible at once, but a straggler still uploading an earlier
                # round's update has not checked in again: the coordinator cannot select it
                # (with fewer than the cohort free, the round waits for them to finish).
                free = fleet.wait_idle(pool_target)
                if free.size < len(ids):
                    available = [ids[i] for i in free.tolist()]
            plan = engine.open_round(available)
            params = engine.params
            down_bytes: int | list[int] = spec.dense_bytes
            if downloads is None:
                for dev in plan.selected:  # the dense model broadcast
                    engine.record_download(plan.round_id, dev, spec.dense_bytes)
            else:
                down_bytes = []
                for dev in plan.selected:  # a delta chain or a snapshot each
                    payload, dense = downloads.download(dev, engine.version, params)
                    engine.ledger.record(plan.round_id, dev, "down", payload, None, dense)
                    down_bytes.append(payload)
            cohort = [index_of[d] for d in plan.selected]
            gone = (
                fleet.dropped(plan.round_id, cohort)
                if fleet is not None and cfg.fleet == "realistic"
                else np.zeros(len(cohort), dtype=bool)
            )
            jobs = [
                TrainJob(
                    device_id=dev,
                    device_index=index_of[dev],
                    round_id=plan.round_id,
                    seed=cfg.seed,
                    indices=parts[index_of[dev]],
                    trainer="ort" if index_of[dev] in ort_devices else "torch",
                    data_attack=attack if index_of[dev] in malicious else None,
                )
                for dev, lost in zip(plan.selected, gone, strict=True)
                if not lost  # a device that drops mid-round never reports: skip its training
            ]
            if fleet is None and len(jobs) > plan.target_reports:
                # No clock: the reports that count are the first `target_reports` to arrive,
                # in an order drawn per round (seeded), and only they train. The selection is
                # sorted by device index, so its first ones were always the lowest-numbered
                # devices (helper-410: with --over-selection 2, ids 0-24 of 50 sent 367 of
                # 400 reports). A spawn key keeps this stream apart from every
                # default_rng([seed, ...]) of the run (see `dp_seed_for`).
                seq = np.random.SeedSequence(cfg.seed, spawn_key=(0xA7, plan.round_id))
                order = np.random.default_rng(seq).permutation(len(jobs))
                jobs = [jobs[i] for i in sorted(order[: plan.target_reports])]
            bar.phase(f"training {len(jobs)} devices")
            t_train = time.perf_counter()
            results = be.train(params, jobs)
            results = _apply_model_attacks(results, jobs, malicious, index_of, attack)
            t_encode = time.perf_counter()
            train_s = t_encode - t_train
            bar.phase(f"encoding {len(results)} updates")
            frames = encode_reports(
                encoders,
                jobs,
                results,
                spec,
                plan.codec,
                error_feedback=cfg.error_feedback and not cfg.dense,
                clip_norm=cfg.clip_norm,
                rng_pool=rng_pool,
            )
            encode_s = time.perf_counter() - t_encode
            losses = {res.device_id: res.loss for res in results}
            arrival = list(frames)
            sim_s: float | None = None
            if fleet is not None:
                timing = fleet.time_round(
                    plan.round_id,
                    cohort,
                    down_bytes=down_bytes,
                    up_bytes=[len(frames.get(d, b"")) for d in plan.selected],
                    samples=[len(parts[i]) for i in cohort],
                    epochs=cfg.local_epochs,
                    per_round=plan.target_reports,
                )
                arrival = [ids[i] for i in timing.kept.tolist() if ids[i] in frames]
                sim_s = timing.duration_s
                fleet.advance(timing)
            # One batched decode for the round; each upload gets what `submit` would give it.
            t_submit = time.perf_counter()
            receipts = engine.submit_many(plan.round_id, [(dev, frames[dev]) for dev in arrival])
            aggregate_s = time.perf_counter() - t_submit
            for receipt in receipts:
                if isinstance(receipt, Exception):
                    raise receipt
            train_losses = [losses[dev] for dev in arrival]
            late = frames.keys() - set(arrival)
            for dev in late:
                # A straggler: its whole update stays in its residual (dropped with DP).
                if return_refused:
                    encoders[dev].refused()
                else:
                    encoders[dev].dropped()
            t_close = time.perf_counter()
            outcome = engine.close_round(plan.round_id)
            aggregate_s += time.perf_counter() - t_close
            for dev in arrival:
                # Accepted, but only a committed round puts it in the model: an abandoned one
                # (fewer than min_reports) hands it back, as the SDK does on `abandoned` (with
                # DP it drops it, as the SDK does then).
                if outcome.committed:
                    encoders[dev].accepted()
                elif return_refused:
                    encoders[dev].refused()
                else:
                    encoders[dev].dropped()
            encoders.end_round()  # every upload settled: idle residuals beyond the budget go out
            acc: float | None = None
            loss: float | None = None
            backdoor: float | None = None
            eval_s = 0.0
            if plan.round_id % cfg.eval_every == 0 or plan.round_id == cfg.rounds:
                bar.phase("evaluating")
                t_eval = time.perf_counter()
                acc, loss = evaluate_model(engine.params)
                if isinstance(attack, BackdoorAttack):
                    backdoor = _backdoor_accuracy(eval_model, engine.params, data, attack)
                eval_s = time.perf_counter() - t_eval
            totals = engine.ledger.round_totals(plan.round_id)
            up, down = totals["up"], totals["down"]
            wall_s = time.perf_counter() - t0
            rec = RoundRecord(
                round=plan.round_id,
                accuracy=acc,
                loss=loss,
                train_loss=float(np.mean(train_losses)) if train_losses else math.nan,
                reports=outcome.reports,
                committed=outcome.committed,
                bytes_up=up["payload_bytes"],
                bytes_down=down["payload_bytes"],
                dense_up=up["dense_bytes"],
                dense_down=down["dense_bytes"],
                wire_up=up["wire_bytes"],
                wire_down=down["wire_bytes"],
                ratio_up=up["ratio_vs_dense"],
                wall_s=wall_s,
                sim_s=sim_s,
                wait_s=timing.waited_s if fleet is not None else None,
                available=len(available),
                measurements=_jsonable(outcome.measurements),
                **_wall_split(wall_s, train_s, encode_s, aggregate_s, eval_s),
            )
            if downloads is not None and published is not None and outcome.committed:
                # As the coordinator records a published round (its frame; fp32 values when
                # the step was beyond the downlink codec's range).
                frame = published.publisher.last_frame
                downloads.published(engine.version, frame)
                rec.measurements["downlink_frame_bytes"] = len(frame)
                if published.publisher.last_fallback is not None:
                    rec.measurements["downlink_bits"] = 32
            if uses_ort:
                rec.ort_trained = sum(job.trainer == "ort" for job in jobs)
                rec.ort_reports = sum(index_of[dev] in ort_devices for dev in arrival)
            if fleet is not None:
                rec.measurements["clock"] = _jsonable(timing.summary())
                # Sent on the devices' uplinks but refused, so not in the ledger's `bytes_up`.
                rec.measurements["clock"]["straggler_up_bytes"] = sum(
                    len(frames[ids[i]]) for i in timing.stragglers.tolist() if ids[i] in frames
                )
            if selection is not None:
                rec.measurements["selection"] = _jsonable(selection.summary())
            if attack is not None:
                # Cohorts are drawn at random, so how many attackers a round aggregated varies:
                # the attack's effect is read against this, round by round.
                rec.measurements["attack"] = {
                    "malicious_reports": sum(index_of[dev] in malicious for dev in arrival),
                    "malicious_devices": n_bad,
                }
                if isinstance(attack, BackdoorAttack):
                    # Main-task accuracy barely moves under a backdoor: this is its effect
                    # (None in a round that was not evaluated).
                    rec.measurements["attack"]["backdoor_accuracy"] = backdoor
            params_now = engine.params
            records.append(rec)
            last_params = params_now
            if on_round is not None:
                on_round(rec)
            bar.update(rec)
    except KeyboardInterrupt as exc:
        # The rounds that finished are kept, with the model of the last of them (a round cut
        # short leaves its downloads, perhaps uploads, in the ledger: `of` leaves them out).
        raise RunInterrupted.of(result(last_params)) from exc
    except Exception as exc:
        if records:
            # Any other error (a pool or Ray worker that failed, died or stalled, most likely
            # on a long run) goes on as it is, carrying the finished rounds, marked
            # interrupted, for `plume sim` to write (before, they were lost with it).
            RunInterrupted.attach(exc, result(last_params))
        raise
    finally:
        bar.close()
        encoders.close()
        if own_backend:
            be.close()
    return result(engine.params.copy())


# Rows per forward pass when measuring backdoor accuracy, as `sdk.trainer.evaluate` batches
# them: the activations of one pass over a whole triggered test set grew the peak memory by
# hundreds of MB (the MNIST CNN on 1,800 images) every evaluated round.
PREDICT_BATCH = 250


def _backdoor_accuracy(
    model: Any, params: npt.NDArray[np.float32], data: FederatedData, attack: BackdoorAttack
) -> float:
    """`attacks.backdoor_accuracy` of `params`: the fraction of triggered test images (true
    label not the target) classified as the target (bench/robustness.py measures it here too),
    predicted `PREDICT_BATCH` rows at a time."""
    import torch

    from sdk.flat import set_flat_params

    set_flat_params(model, params)
    model.eval()

    def predict(x: npt.NDArray[Any]) -> npt.NDArray[np.integer]:
        # PREDICT_BATCH rows per pass: each row's prediction is its own, so the labels are
        # those of one pass over all of them, without holding all the activations at once.
        with torch.no_grad():
            chunks = [
                model(torch.from_numpy(np.ascontiguousarray(x[i : i + PREDICT_BATCH])))
                .argmax(1)
                .numpy()
                for i in range(0, len(x), PREDICT_BATCH)
            ]
        out: npt.NDArray[np.integer] = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
        return out

    return backdoor_accuracy(predict, data.x_test, data.y_test, attack)


def _abandoned_selection(
    engine: RoundEngine, available: list[str], selection: Selection, dp_pool: int, t0: float
) -> RoundRecord:
    """The record of a round whose selection never met the coordinator's rule in the whole
    wait window (fewer than `min_reports` devices in the pool, or no selection timeout and
    the cohort never full, or fewer than `dp_pool` devices: the dp stage's population N).

    The coordinator would not open it; the engine numbers rounds, so it is opened over that
    pool and closed at once with no report (the engine abandons it: model unchanged). Nobody
    is told to train, so no bytes move and no device's state changes. Its wall time is the
    selection's (`wall_other_s`) and the engine's close (`wall_aggregate_s`); nothing trained,
    encoded or was evaluated (0.0 s each).
    """
    plan = engine.open_round(available)
    t_close = time.perf_counter()
    outcome = engine.close_round(plan.round_id)
    aggregate_s = time.perf_counter() - t_close
    if len(available) < dp_pool:
        why = f"short of the dp population of {dp_pool}, which a dp round needs in its pool"
    elif len(available) < selection.min_n:
        why = f"below min_reports {selection.min_n}"
    else:
        why = f"short of the cohort of {engine.config.cohort_size}, with no selection timeout"
    meas = {
        "abandoned": (
            f"selection: the pool held at most {len(available)} devices in "
            f"{selection.waited_s:.0f} simulated s, {why}"
        ),
        "selection": _jsonable(selection.summary()),
    }
    wall_s = time.perf_counter() - t0
    return RoundRecord(
        round=plan.round_id,
        accuracy=None,
        loss=None,
        train_loss=math.nan,
        reports=outcome.reports,
        committed=outcome.committed,
        bytes_up=0,
        bytes_down=0,
        dense_up=0,
        dense_down=0,
        wire_up=0,
        wire_down=0,
        ratio_up=None,
        wall_s=wall_s,
        sim_s=0.0,
        wait_s=float(selection.waited_s),
        available=len(available),
        measurements=meas,
        **_wall_split(wall_s, 0.0, 0.0, aggregate_s, 0.0),
    )


# Cohorts at least this large, of models smaller than BATCH_MAX_SIZE scalars, are encoded as
# one batch (`compression.feedback_step_many`). Bigger models gain nothing from it (their
# per-call overhead is small next to the work) and the [n, d] batch would cost memory.
BATCH_MIN = 2
BATCH_MAX_SIZE = 1 << 16


def encode_reports(
    encoders: MutableMapping[str, UpdateEncoder],
    jobs: Sequence[TrainJob],
    results: Sequence[JobResult],
    spec: ModelSpec,
    codec: CodecConfig,
    *,
    error_feedback: bool = True,
    clip_norm: float | None = None,
    rng_pool: RngPool | None = None,
) -> dict[str, bytes]:
    """Each trained device's upload frame, as its `UpdateEncoder.encode` makes it.

    `encoders` holds each device's state across rounds (created here on first use with
    `error_feedback` and `clip_norm`); `results[i]` is `jobs[i]`'s training result, and the
    codec's rng is `job_rng(job, stream=2)` (seeded through `rng_pool` when given: the same
    streams, faster).

    Returns the frames by device. Large cohorts are encoded as one batch, bit for bit what
    the per-device calls give (clip, then error feedback, then the codec), and each encoder
    holds what it encoded, so `UpdateEncoder.refused` works as after `encode`. Smaller
    cohorts and bigger models go through `UpdateEncoder.encode` itself.
    """
    encs = []
    for job in jobs:
        enc = encoders.get(job.device_id)
        if enc is None:
            enc = UpdateEncoder(spec, codec, error_feedback=error_feedback, clip_norm=clip_norm)
            encoders[job.device_id] = enc
        enc.set_config(codec)
        encs.append(enc)
    if rng_pool is not None:
        rngs = rng_pool.for_jobs(jobs, stream=2)
    else:
        rngs = [job_rng(job, stream=2) for job in jobs]
    weights = [float(res.num_examples) for res in results]
    ids = [job.device_id for job in jobs]
    if (
        len(jobs) < BATCH_MIN
        or spec.size >= BATCH_MAX_SIZE
        or len({enc.error_feedback for enc in encs}) > 1
    ):
        return {
            dev: enc.encode(res.delta, rng, w)[0]
            for dev, enc, res, rng, w in zip(ids, encs, results, rngs, weights, strict=True)
        }
    deltas = np.empty((len(jobs), spec.size), dtype=np.float32)
    for i, (enc, res) in enumerate(zip(encs, results, strict=True)):
        if res.delta.shape != (spec.size,):
            raise ValueError(f"delta of shape {res.delta.shape}, model has {spec.size} scalars")
        d = np.asarray(res.delta, dtype=np.float32)
        deltas[i] = clip_l2(d, enc.clip_norm) if enc.clip_norm is not None else d
    if encs[0].error_feedback:
        out, u = feedback_step_many(
            [enc.feedback for enc in encs], deltas, encs[0].codec, rngs, weights
        )
        for i, enc in enumerate(encs):
            enc.hold(u[i])
        return dict(zip(ids, out, strict=True))
    out = encs[0].codec.encode_many(deltas, rngs, weights)
    return dict(zip(ids, out, strict=True))


def ort_devices_of_tier(fleet: Any, clients: int, tier: str) -> set[int]:
    """Client indices whose simulated phone is of `tier` ("low", "mid", "high"): the devices
    that run the ONNX-runtime trainer instead of torch."""
    batch = fleet.population.profiles(np.arange(clients, dtype=np.int64))
    names = [str(t) for t in batch.tiers]
    if tier not in names:
        raise ValueError(f"unknown tier {tier!r}; choose one of {names}")
    return set(np.flatnonzero(batch.tier_index == names.index(tier)).tolist())


def _apply_model_attacks(
    results: list[JobResult],
    jobs: Sequence[TrainJob],
    malicious: set[int],
    index_of: dict[str, int],
    attack: Any,
) -> list[JobResult]:
    """Replace malicious devices' deltas by crafted ones (omniscient: they see benign deltas)."""
    if attack is None or not malicious:
        return results
    benign = [r.delta for r in results if index_of[r.device_id] not in malicious]
    out = []
    for job, res in zip(jobs, results, strict=True):
        if index_of[res.device_id] in malicious:
            crafted = attack.craft(res.delta, benign, job_rng(job, stream=3))
            res = replace(res, delta=np.asarray(crafted, dtype=np.float32))
        out.append(res)
    return out


def _recorded_config(cfg: SimConfig, **values: Any) -> SimConfig:
    """`cfg` with `values` (field name -> value) set: the config a result records when its run's
    transport ran with other values than `cfg` has (an HTTP task's selection timeout, say). A
    copy, not `dataclasses.replace`, which would check the config again and import its plugins
    again; its non-field marks (`deadline_defaulted`, `plugin_root`) are kept."""
    out = copy.copy(cfg)
    for name, value in values.items():
        if name not in cfg.__dataclass_fields__:
            raise TypeError(f"SimConfig has no field {name!r}")
        object.__setattr__(out, name, value)
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 64 else f"<array {value.shape}>"
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


class _progress:
    """A tqdm bar over rounds that prints each round's table row above itself."""

    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        if enabled:
            from tqdm import tqdm

            clear()  # the set-up's status line gives way to the table and the bar

            from .report import table_header

            tqdm.write(table_header(label))
            self.bar = tqdm(total=total, desc=label, unit="round", leave=False)

    def phase(self, text: str) -> None:
        """Say what the round is doing now (a long round's bar otherwise looks stuck)."""
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def update(self, rec: RoundRecord) -> None:
        if self.bar is not None:
            from tqdm import tqdm

            from .report import table_row

            tqdm.write(table_row(rec))
            self.bar.set_postfix_str("", refresh=False)  # until the next round's first phase
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
