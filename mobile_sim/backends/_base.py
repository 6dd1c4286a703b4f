"""The backend seam: how a batch of local-training jobs gets run (inline, pool, Ray, ...)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import numbers
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from sdk._data import check_start_params

__all__ = [
    "TrainContext",
    "TrainJob",
    "JobResult",
    "Backend",
    "job_rng",
    "job_torch_seed",
    "TORCH_STREAM",
    "check_round",
    "num_params",
    "import_plugins",
    "PluginError",
    "ModelFailed",
    "usable_cpus",
]


def usable_cpus() -> int:
    """The CPUs this process may run on: its CPU affinity (a Slurm allocation, `taskset`,
    `docker --cpuset-cpus`), capped by a cgroup v2 CPU quota (`docker --cpus`, a Kubernetes
    limit) rounded up, else `os.cpu_count()`. The pool's default worker count and a private
    Ray runtime's CPUs come from it: `os.cpu_count()` alone counts every core of the host."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            cpus = min(cpus, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):  # no cgroup v2 file, or one that does not parse
        pass
    return max(1, cpus)


class PluginError(ValueError):
    """A plugin module that could not be imported: `spec` as given, `reason` one line
    ("ModuleNotFoundError: No module named 'x'", "no such file ...")."""

    def __init__(self, spec: str, reason: str) -> None:
        super().__init__(f"plugin {spec!r} did not import: {reason}")
        self.spec = spec
        self.reason = reason


class ModelFailed(RuntimeError):
    """The model raised while the simulator ran it in this process (a device's local
    training, or the FLOP count of one sample at the start): a plugin model whose forward
    fails on the data, say. One line naming where and the model's own exception (chained as
    `__cause__`), as a pool or Ray worker's failure is (`plume sim` prints it as one line;
    PLUME_DEBUG=1 shows the traceback). Errors the simulator already words (ValueError: a
    bad value, data that does not fit) are not wrapped."""


def model_failed(where: str, exc: BaseException) -> ModelFailed:
    """`ModelFailed` for `exc`, raised `where` ("training device 7 in round 3"): the
    exception's type and its message's first line."""
    text = str(exc).strip().partition("\n")[0]
    return ModelFailed(
        f"{where} failed: {type(exc).__name__}: {text}"
        if text
        else f"{where} failed: {type(exc).__name__}"
    )


def _is_file_spec(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or os.sep in spec


def _file_module_name(path: str) -> str:
    """The sys.modules name of plugin file `path` (absolute): its stem and a digest of the
    path, so a file named like another module (json.py) shadows nothing, and every process
    that imports the same file calls it the same."""
    stem = "".join(c if c.isalnum() else "_" for c in os.path.basename(path)[: -len(".py")])
    digest = hashlib.sha256(path.encode()).hexdigest()[:10]
    return f"_plume_plugin_{stem}_{digest}"


def import_plugins(specs: Sequence[str], root: str | None = None) -> None:
    """Import each plugin, in order, so its top-level code registers models, datasets and
    aggregators (`mobile_sim.models.MODELS`, `mobile_sim.runner.DATASET_LOADERS`, ...).

    A spec is a dotted module name, looked up with `root` (default: the current directory)
    first on sys.path, as `python -m` has it; or a path to a .py file (ending in .py or
    holding a slash), relative to `root`, whose folder goes last on sys.path (it imports the
    modules beside it, but none of them hides a standard or installed module). A module
    that fails to import leaves sys.path as it was. A module already imported
    (a file also by module name, or the other way round) is not run again. Raises
    `PluginError` naming the spec and the exception its import raised (a `SystemExit` too);
    a KeyboardInterrupt goes on as it is.
    """
    if not specs:
        return
    base = os.path.abspath(root if root is not None else os.getcwd())
    for spec in specs:
        if not isinstance(spec, str) or not spec.strip():
            raise PluginError(str(spec), "a plugin is a module name or a path to a .py file")
        if _is_file_spec(spec):
            _import_file(spec, os.path.join(base, os.path.expanduser(spec)))
            continue
        added = not any(os.path.abspath(p or os.curdir) == base for p in sys.path)
        if added:
            sys.path.insert(0, base)
        try:
            if spec not in sys.modules and _same_file_loaded(spec):
                continue
            module = importlib.import_module(spec)
            if _is_namespace(module):
                # A folder without __init__.py (data/, a checkout's root): it imports as a
                # namespace package, running no code and registering nothing (taken before).
                where = ", ".join(str(p) for p in getattr(module, "__path__", []))
                raise _NamespacePlugin(
                    f"names a folder without __init__.py ({where}), whose import runs no "
                    "code; pass the module or .py file that registers the models"
                )
        # The plugin's own code may raise anything; a sys.exit() in it is no reason to end
        # the run with its status (exit 0 with nothing run, before).
        except BaseException as exc:
            # As for a file: a root left first on sys.path by a plugin that did not import
            # would hide, with its files, the modules imported later.
            if added and base in sys.path:
                sys.path.remove(base)
            if not isinstance(exc, (Exception, SystemExit)):
                raise
            reason = str(exc) if isinstance(exc, _NamespacePlugin) else _one_line(exc)
            missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
            if missing is not None and (spec == missing or spec.startswith(f"{missing}.")):
                # The plugin itself (not a module it imports) was not found: say where.
                reason += (
                    f" (looked in {base} and the installed packages; run from the folder "
                    "holding it, or pass its .py path)"
                )
            raise PluginError(spec, reason) from exc


class _NamespacePlugin(Exception):
    """A plugin spec that imported as a namespace package (its message is the reason)."""


def _is_namespace(module: ModuleType) -> bool:
    """Whether `module` is a namespace package: a folder imported without an __init__.py."""
    found = getattr(module, "__spec__", None)
    return (
        found is not None
        and found.submodule_search_locations is not None
        and found.origin in (None, "namespace")
    )


def _loaded_from(path: str) -> ModuleType | None:
    """The module already imported from file `path` (by any name), if any."""
    real = os.path.realpath(path)
    base = os.path.basename(real)
    for module in list(sys.modules.values()):
        try:
            file = getattr(module, "__file__", None)
        except Exception:  # noqa: BLE001 (a module's own __getattr__)
            continue
        if isinstance(file, str) and os.path.basename(file) == base:
            if os.path.realpath(file) == real:
                return module
    return None


def _same_file_loaded(spec: str) -> bool:
    """Whether module `spec`'s file was imported already as a .py plugin (by its path): then
    `spec` names that module, and the file's top-level code does not run twice."""
    found = importlib.util.find_spec(spec)
    if found is None or not found.has_location or not isinstance(found.origin, str):
        return False
    module = _loaded_from(found.origin)
    if module is None or not module.__name__.startswith("_plume_plugin_"):
        return False
    sys.modules[spec] = module
    return True


def _import_file(spec: str, path: str) -> None:
    path = os.path.abspath(path)
    if not path.endswith(".py"):
        raise PluginError(spec, "a plugin file must end in .py")
    if not os.path.isfile(path):
        raise PluginError(spec, f"no such file: {path}")
    # The file's folder goes last on sys.path: the plugin imports the modules beside it (here
    # and in every worker that imports it), but none of them (a compression.py, a
    # statistics.py) hides a standard or installed module imported later, as it would first.
    folder = os.path.dirname(path)
    added = not any(os.path.abspath(p or os.curdir) == folder for p in sys.path)
    if added:
        sys.path.append(folder)
    name = _file_module_name(path)
    # Imported already (also under a module name, `--plugin x --plugin ./x.py`): not again.
    if name in sys.modules or _loaded_from(path) is not None:
        return
    found = importlib.util.spec_from_file_location(name, path)
    if found is None or found.loader is None:
        raise PluginError(spec, f"cannot load {path} as a module")
    module = importlib.util.module_from_spec(found)
    sys.modules[name] = module  # as an import does: dataclasses and pickle look it up
    try:
        found.loader.exec_module(module)
    except BaseException as exc:
        # Whatever stopped it (a KeyboardInterrupt too): a half-run module left here would
        # be taken as imported, and skipped, by the next import_plugins.
        sys.modules.pop(name, None)
        if added and folder in sys.path:
            sys.path.remove(folder)
        if isinstance(exc, (Exception, SystemExit)):
            raise PluginError(spec, _one_line(exc)) from exc
        raise


def _one_line(exc: BaseException) -> str:
    """`Type: message` on one line; a SyntaxError also says where."""
    text = " ".join(str(exc).split())
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        text = f"{exc.msg} ({os.path.basename(exc.filename)}, line {exc.lineno})"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True)
class TrainContext:
    """Everything a worker needs once: the model, the training pool, the local-SGD settings.

    x_train: float32[N, ...]; y_train: int64[N]. `ort_artifacts` is a directory written by
    `plume export`, used by jobs whose `trainer` is "ort".

    `plugins`: modules a worker in another interpreter (a "spawn" or "forkserver" pool
    worker, a Ray actor) imports before it builds the model, so a model they register is
    found there too (`import_plugins`, module names looked up from `plugin_root`, the
    driver's current directory, and .py paths relative to it).

    `x_test`, `y_test`: the labelled set each round's model is evaluated on, for a backend
    that evaluates in its workers (`ProcessPoolBackend.evaluate`); both or neither.
    """

    model: str
    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int64]
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.0
    ort_artifacts: str | None = None
    plugins: tuple[str, ...] = ()
    plugin_root: str | None = None
    x_test: npt.NDArray[Any] | None = None
    y_test: npt.NDArray[Any] | None = None

    def __post_init__(self) -> None:
        # Before, epochs or batch_size <= 0 trained nothing on one backend and failed inside
        # torch on another, and a negative lr was refused by torch's SGD but used (as gradient
        # ascent) by the vectorized backend: refuse them here, for every backend alike.
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Integral) and not isinstance(value, bool)):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.lr, numbers.Real) and 0 < self.lr < math.inf):
            raise ValueError(f"lr must be finite and > 0, got {self.lr!r}")
        # Any finite momentum >= 0, as torch's SGD and `plume sim --momentum` take.
        if not (isinstance(self.momentum, numbers.Real) and 0 <= self.momentum < math.inf):
            raise ValueError(f"momentum must be finite and >= 0, got {self.momentum!r}")
        x, y = self.x_train, self.y_train
        if isinstance(x, np.ndarray) and isinstance(y, np.ndarray):
            if y.ndim != 1 or len(x) != len(y):
                raise ValueError(
                    f"y_train must be 1-D with one label per x_train row, got shapes "
                    f"{x.shape} and {y.shape}"
                )
            if y.size and not np.issubdtype(y.dtype, np.integer):
                raise ValueError(f"y_train must hold integer class labels, got {y.dtype}")
        if (self.x_test is None) != (self.y_test is None):
            raise ValueError("x_test and y_test go together: give both or neither")
        if self.x_test is not None and self.y_test is not None:
            if len(self.x_test) != len(self.y_test):
                raise ValueError(
                    f"x_test and y_test must have one label per row, got {len(self.x_test)} "
                    f"rows and {len(self.y_test)} labels"
                )


@dataclass(frozen=True)
class TrainJob:
    """One device's local training in one round. `indices` select its examples.

    `data_attack` (if any) poisons the device's data before training (label flip, backdoor).
    """

    device_id: str
    device_index: int
    round_id: int
    seed: int
    indices: npt.NDArray[np.int64]
    trainer: str = "torch"
    data_attack: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobResult:
    """delta = trained - global, float32[d]; `num_examples` is the FedAvg weight."""

    device_id: str
    delta: npt.NDArray[np.float32]
    num_examples: int
    loss: float


class Backend(Protocol):
    name: str

    def start(self, ctx: TrainContext) -> None: ...

    def train(self, params: npt.NDArray[np.float32], jobs: Sequence[TrainJob]) -> list[JobResult]:
        """Results in the order of `jobs`; identical for the same seeds on every backend."""
        ...

    def close(self) -> None: ...


def job_rng(job: TrainJob, stream: int = 0) -> np.random.Generator:
    """The job's own RNG, from (seed, round, device, stream): no state shared between jobs, so
    every backend, in any order, draws the same numbers for the same job."""
    return np.random.default_rng([job.seed, job.round_id, job.device_index, stream])


# The job_rng streams: 0 the minibatch order, 1 a data attack's, 2 the codec's, 3 a model
# attack's; 4 seeds torch's RNG for the job's training (`job_torch_seed`).
TORCH_STREAM = 4


def job_torch_seed(job: TrainJob) -> int:
    """The seed torch's default generator takes for the job's training (dropout masks, any
    other draw a model makes from torch's RNG): 64 bits of the job's own seed material, on its
    own stream (`TORCH_STREAM`), so the job draws the same masks on every backend and worker,
    whichever jobs ran before it there."""
    entropy = [job.seed, job.round_id, job.device_index, TORCH_STREAM]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def num_params(module: Any) -> int:
    """The length of a torch module's flat params (`sdk.flat.get_flat_params`): its trainable
    parameters' scalars, the `size` a backend gives `check_round`."""
    return sum(int(p.numel()) for p in module.parameters() if p.requires_grad)


def check_round(
    params: npt.NDArray[Any],
    jobs: Sequence[TrainJob],
    num_examples: int,
    *,
    size: int | None = None,
) -> None:
    """Refuse a round (or, with no jobs, an evaluation's params) before any work: `params` must
    be a 1-D float array (float32[d]), of `size` values when given (the model's, `num_params`),
    and every job's `indices` a non-empty 1-D integer array in [0, num_examples).

    Without it a negative index silently trained on an example counted from the end (another
    device's), and the rest failed deep inside torch or numpy (in a pool worker, as a traceback
    that also stopped the pool: params of the wrong length too, in `train` and `evaluate`).

    A round with jobs also needs finite params (`sdk._data.check_start_params`'s ValueError,
    as `sdk.trainer.TorchTrainer` raises it): before, the sequential backend refused NaN or
    infinite params, the vectorized one trained NaN deltas from them, and the pool's worker
    failed (`PoolWorkerError`, the pool closed)."""
    if not (isinstance(params, np.ndarray) and params.ndim == 1):
        raise ValueError(f"params must be a 1-D array (float32[d]), got shape {np.shape(params)}")
    if not np.issubdtype(params.dtype, np.floating):
        raise ValueError(f"params must be floating point, got {params.dtype}")
    if size is not None and params.shape[0] != size:
        raise ValueError(
            f"params must hold the model's {size} parameters (float32[{size}]), got "
            f"{params.shape[0]} values"
        )
    if jobs:
        check_start_params(params)
    for job in jobs:
        idx = np.asarray(job.indices)
        if idx.ndim != 1 or not (idx.size == 0 or np.issubdtype(idx.dtype, np.integer)):
            raise ValueError(
                f"device {job.device_id}: indices must be a 1-D integer array, got "
                f"{idx.dtype} of shape {idx.shape}"
            )
        if idx.size == 0:
            raise ValueError(
                f"device {job.device_id}: a device needs at least one example to train"
            )
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= num_examples:
            raise ValueError(
                f"device {job.device_id}: example indices must be in [0, {num_examples}), got "
                f"range [{lo}, {hi}]"
            )
