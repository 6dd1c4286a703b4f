"""Run reports: the per-round table, CSV and JSON files, and PNG plots."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import platform
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runner import RoundRecord, SimResult

__all__ = [
    "table_header",
    "table_row",
    "format_bytes",
    "machine_info",
    "load_average_1m",
    "code_info",
    "git_info",
    "write_run",
    "rounds_csv",
    "plot_accuracy_vs_bytes",
    "summary",
    "control_traffic",
    "control_traffic_total",
    "control_traffic_text",
    "CONTROL_KEYS",
    "CONTROL_COLUMNS",
    "CONTROL_TOTALS",
    "dp_pool_warning",
    "dp_unaccounted_note",
    "ort_note",
    "robust_guarantee_warning",
]

_COLUMNS = (
    ("round", 5),
    ("accuracy", 8),
    ("loss", 7),
    ("bytes up", 10),
    ("bytes down", 10),
    ("ratio vs dense", 14),
    ("wall s", 7),
    ("sim s", 8),
    ("wait s", 8),
)


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _log_bytes_axis(axis: Any, values: Iterable[float]) -> None:
    """Put `axis` (a matplotlib x or y axis of byte counts) on a log scale labelled as the table
    is (B, KB, MB: powers of 1000), at 1-2-5 steps over up to three decades.

    The view spans at least a decade around the positive `values`: a log axis fitted to two
    downloads 0.4 % apart drew them as a steep line under tick labels like 5.5775x10^4. When
    no value is positive (a log axis would have nothing to show) the axis stays linear, from
    0 B to 1 B.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    got = [float(v) for v in values if v > 0]
    ax, is_x = axis.axes, axis.axis_name == "x"
    if not got:
        # Nothing moved (every round abandoned): a linear axis from 0 B, not one that
        # matplotlib centres on the zeros (-0.04 to 0.04 bytes).
        from matplotlib.ticker import MaxNLocator

        (ax.set_xlim if is_x else ax.set_ylim)(0, 1)
        axis.set_major_locator(MaxNLocator(nbins=1, integer=True))
        axis.set_major_formatter(FuncFormatter(lambda v, _pos: format_bytes(v)))
        return
    (ax.set_xscale if is_x else ax.set_yscale)("log")
    lo, hi = min(got), max(got)
    if hi < 10 * lo:
        mid = math.sqrt(lo * hi)
        lo, hi = mid / 10**0.6, mid * 10**0.6
        (ax.set_xlim if is_x else ax.set_ylim)(lo, hi)
    subs = (1.0, 2.0, 5.0) if hi <= 1000 * lo else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: format_bytes(v)))
    axis.set_minor_formatter(NullFormatter())


def table_header(label: str = "") -> str:
    head = " ".join(name.rjust(w) for name, w in _COLUMNS)
    rule = "-" * len(head)
    return (f"[{label}]\n" if label else "") + head + "\n" + rule


def table_row(rec: RoundRecord | Mapping[str, Any]) -> str:
    """One line of the per-round table: of a `RoundRecord` as the run prints it, or of a round
    as rounds.json holds it (`plume sim report` prints the same lines from the file; a field
    the file lacks is "-", and a round without `committed` counts as committed)."""

    def get(name: str, default: Any = None) -> Any:
        if isinstance(rec, Mapping):
            return rec.get(name, default)
        return getattr(rec, name, default)

    accuracy, loss_, ratio_up = get("accuracy"), get("loss"), get("ratio_up")
    sim_s, wait_s = get("sim_s"), get("wait_s")
    acc = f"{accuracy:.4f}" if accuracy is not None else "-"
    loss = f"{loss_:.4f}" if loss_ is not None else "-"
    ratio = f"{ratio_up:.1f}x" if ratio_up else "-"
    sim = f"{sim_s:.1f}" if sim_s is not None else "-"
    wait = f"{wait_s:.1f}" if wait_s is not None else "-"
    cells = (
        str(get("round")) + ("" if get("committed", True) else "*"),
        acc,
        loss,
        format_bytes(get("bytes_up")),
        format_bytes(get("bytes_down")),
        ratio,
        f"{get('wall_s'):.2f}",
        sim,
        wait,
    )
    return " ".join(c.rjust(w) for c, (_, w) in zip(cells, _COLUMNS, strict=True))


def machine_info() -> dict[str, Any]:
    """What a benchmark number was measured on."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gb = None
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    import numpy as np

    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        # The widest vector ISA torch's CPU kernels dispatch to ("AVX2", "AVX512", ...): two
        # CPUs with the same model name can differ here, and kernel speeds with it.
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except ImportError:
        pass
    return info


def load_average_1m() -> float | None:
    """The 1-minute load average (None where the system has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def summary(result: SimResult) -> dict[str, Any]:
    out: dict[str, Any] = {
        "label": result.label,
        # The model that ran: the config's `model` is null when the dataset's default ran.
        "model": result.config.model_name,
        "final_accuracy": result.final_accuracy,
        "rounds": len(result.records),
        # Ctrl-C stopped it: every figure here is as of the last round that finished.
        "interrupted": result.interrupted,
        "num_params": result.num_params,
        "total_upload_bytes": result.total_up,
        "total_dense_upload_bytes": result.total_dense_up,
        "upload_ratio_vs_dense": result.upload_ratio,
        "total_download_bytes": sum(r.bytes_down for r in result.records),
        "wall_s": sum(r.wall_s for r in result.records),
        # Simulated seconds (None without the simulated clock): rounds, and idling before them.
        "sim_s": _total(r.sim_s for r in result.records),
        "wait_s": _total(r.wait_s for r in result.records),
    }
    if (control := control_traffic_total(result.records)) is not None:
        # An HTTP run's: its devices' exchanges in no round's ledger (rounds.csv's
        # `CONTROL_COLUMNS` per round), as the summary line gives them.
        out.update(zip(CONTROL_TOTALS, (control[k] for k in CONTROL_KEYS), strict=True))
    if result.interrupted or len(result.records) < result.config.rounds:
        out["rounds_planned"] = result.config.rounds
    if not result.interrupted and (why := stopped_by(result)) is not None:
        out["stopped_by"] = why
    if result.partition is not None:
        out["partition"] = result.partition  # how skewed the split really was
    # With a dp stage accounting population=N: the rounds that selected from fewer devices.
    out.update(result.dp_pool() or {})
    out.update(_dp_spent(result))
    backdoor = [
        r.measurements["attack"]["backdoor_accuracy"]
        for r in result.records
        if r.measurements.get("attack", {}).get("backdoor_accuracy") is not None
    ]
    if backdoor:
        # The last evaluated round's: a backdoor barely moves the main-task accuracy.
        out["backdoor_accuracy"] = backdoor[-1]
    if failed := _guarantee_failures(result):
        out["robust_guarantee_failed_rounds"] = [r for r, _ in failed]
    if uses_ort(result):
        # Device trainings on onnxruntime over the rounds, and the reports they made.
        out["ort_trained"] = sum(r.ort_trained or 0 for r in result.records)
        out["ort_reports"] = sum(r.ort_reports or 0 for r in result.records)
    return out


def stopped_by(result: SimResult) -> str | None:
    """Why a run that was not interrupted ended before its `--rounds`, or None:
    "epsilon_budget" when its last round spent the budget (a `dp:` stage's `eps=` or a secure
    run's `--epsilon-budget`), else "coordinator" (the task was stopped)."""
    from coordinator.engine import find_measurement

    if len(result.records) >= result.config.rounds:
        return None
    if result.secure is not None and isinstance(why := result.secure.get("stopped_by"), str):
        return why
    last = result.records[-1].measurements if result.records else {}
    return "epsilon_budget" if find_measurement(last, "budget_exhausted") is True else "coordinator"


def uses_ort(result: SimResult) -> bool:
    """Whether the run had devices training on onnxruntime (its rounds count them)."""
    return any(r.ort_trained is not None for r in result.records)


def ort_note(result: SimResult) -> str | None:
    """The summary line's part on onnxruntime devices, in a run that has them: how many of
    its reports were trained on onnxruntime (none, with --ort-tier, where no device of that
    tier was picked), and the device trainings on it."""
    if not uses_ort(result):
        return None
    reports = sum(r.reports for r in result.records)
    got = sum(r.ort_reports or 0 for r in result.records)
    trained = sum(r.ort_trained or 0 for r in result.records)
    return (
        f"{got:,} of {reports:,} reports trained on onnxruntime "
        f"({trained:,} device trainings on it)"
    )


def _guarantee_failures(result: SimResult) -> list[tuple[int, dict[str, Any]]]:
    """(round, the failing stage's measurements) of the rounds in which a robust stage (Krum,
    multi-Krum, NNM, trimmed mean, bucketing) measured `guarantee_holds: false`: too few reports for its
    f, or a fraction f (trimmed mean's beta) that resolved to 0 reports in the round. Every
    stage of the nesting is looked at (NNM's own flag sits above its inner Krum's)."""
    failed = []
    for rec in result.records:
        m = _failing(rec.measurements)
        if m is not None:
            failed.append((rec.round, m))
    return failed


def _failing(measurements: Any) -> dict[str, Any] | None:
    """The first (depth-first) measurements dict with `guarantee_holds: false`, or None."""
    if not isinstance(measurements, dict):
        return None
    if measurements.get("guarantee_holds") is False:
        return measurements
    for value in measurements.values():
        if (found := _failing(value)) is not None:
            return found
    return None


def robust_guarantee_warning(result: SimResult) -> str | None:
    """One line on the rounds in which the robust aggregator's guarantee did not hold, or None.

    Such a round still aggregates (Krum keeps one report), so without this line a run with
    too few reports for its `f` ended as if it had been defended."""
    failed = _guarantee_failures(result)
    if not failed:
        return None
    last = failed[-1][1]
    f = last.get("f")
    counts = sorted({int(m["clients"]) for _, m in failed if isinstance(m.get("clients"), int)})
    had = ""
    if len(counts) == 1:
        had = f", the round had {counts[0]}"
    elif counts:
        had = f", the rounds had {counts[0]} to {counts[-1]}"
    fix = "raise --per-round or lower f="
    if "buckets" in last:
        b = last.get("bucket_size")
        what = f"bucket:{b} left {last['buckets']} bucket means, fewer than 3: their mean"
        fix = "raise --per-round or lower the bucket size"
    elif "trimmed_each_side" in last:
        what = f"trimmed mean with beta={last.get('beta')} trims floor(beta·n) = 0 a side: the mean"
        fix = "raise --per-round or beta"
    elif last.get("f_fraction") is not None and f == 0:
        rule = "NNM" if "neighbours" in last else "Krum"
        what = f"{rule} with f={last['f_fraction']} tolerates floor(f·n) = 0 reports"
        fix = "raise --per-round or f="
    elif "neighbours" in last:
        need = f" needs more than 2f = {2 * f} reports" if isinstance(f, int) else ""
        what = f"NNM with f={f}{need}"
    else:
        need = f" needs more than 2f + 2 = {2 * f + 2} reports" if isinstance(f, int) else ""
        what = f"Krum with f={f}{need}"
    return (
        f"warning: in {len(failed)} of {len(result.records)} rounds the aggregator's robustness "
        f"guarantee did not hold ({what}{had}; measurements guarantee_holds): {fix}"
    )


def _dp_spent(result: SimResult) -> dict[str, Any]:
    """The privacy a dp stage (or a secure run's distributed DP) had spent after the last round
    that measured it: its epsilon at its delta, over the rounds it accounted; {} without one."""
    for rec in reversed(result.records):
        if (dp := _holding(rec.measurements, "epsilon")) is not None:
            rounds = dp.get("rounds")
            return {
                "dp_epsilon": dp["epsilon"],
                "dp_delta": dp.get("delta"),
                "dp_rounds": rounds if isinstance(rounds, int) else None,
            }
    return {}


def _holding(measurements: Any, name: str) -> dict[str, Any] | None:
    """The first (depth-first) measurements dict with a non-null `name`, or None."""
    if not isinstance(measurements, dict):
        return None
    if measurements.get(name) is not None:
        return measurements
    for value in measurements.values():
        if (found := _holding(value, name)) is not None:
            return found
    return None


def dp_pool_warning(result: SimResult) -> str | None:
    """One line on the rounds that a dp stage's `population=N` does not fit, or None: rounds
    that selected their cohort from fewer than N devices (their epsilon is understated), else
    rounds abandoned because the pool never held N."""
    pool = result.dp_pool()
    if not pool:
        return None
    n = pool["dp_population"]
    k = result.config.engine_config().cohort_size
    fix = (
        "lower population= to the devices really available at once, or account without "
        f"amplification (population={k},sample={k})"
    )
    if short := pool["dp_pool_short_rounds"]:
        committed = sum(r.committed for r in result.records)
        return (
            f"warning: {len(short)} of {committed} rounds selected their cohort from fewer "
            f"than the dp population={n} devices (as few as {pool['dp_pool_min']}), so the "
            f"epsilon reported for them is understated: {fix}"
        )
    if abandoned := pool["dp_pool_abandoned_rounds"]:
        most = max(r.available or 0 for r in result.records if r.round in abandoned)
        return (
            f"warning: {len(abandoned)} of {len(result.records)} rounds were abandoned: their "
            f"pool never held the dp population={n} devices at once (at most {most}): {fix}"
        )
    return None


# The engine's reason for a round closed with too few reports (coordinator/engine.py).
_ENGINE_SHORT = re.compile(r"\d+ reports < min_reports \d+")


def abandoned_warning(result: SimResult) -> str | None:
    """One line when rounds were abandoned (the model unchanged in them), or None; rounds
    that `dp_pool_warning` explains (no dp population in the pool) are left to it.

    Before, a run whose every round was abandoned (a --deadline no device meets) printed its
    summary and exited 0 as if it had trained: only the `*` after each round said otherwise."""
    pool = result.dp_pool() or {}
    told = set(pool.get("dp_pool_abandoned_rounds", ()))
    lost = [r for r in result.records if not r.committed and r.round not in told]
    if not lost:
        return None
    cfg = result.config
    reasons = [str(r.measurements.get("abandoned", "")) for r in lost]
    # Only the engine's own reason (coordinator/engine.py: "N reports < min_reports M") is a
    # deadline's doing; a round its selection abandoned ("selection: ... below min_reports M",
    # mobile_sim.runner._abandoned_selection) never opened to devices, deadline or not.
    short = all(_ENGINE_SHORT.fullmatch(why) for why in reasons)
    unpooled = all(why.startswith("selection:") and "below min_reports" in why for why in reasons)
    # A realistic run without --deadline ran with the coordinator's default (runner's
    # with_coordinator_deadline): the user passed no --deadline to blame. An HTTP run has no
    # simulated deadline (`deadline_s` None: refused) but its task's own, in wall seconds
    # (`result.http`, rounds.json's `http.deadline_s`: HttpFleetOptions.deadline_s, 120 s
    # unless a library run set it), which no flag sets.
    wall = (getattr(result, "http", None) or {}).get("deadline_s")
    deadline = cfg.deadline_s if cfg.deadline_s is not None else wall
    if deadline is None:
        before = ""
    elif cfg.deadline_s is None:
        before = f"before the HTTP task's {deadline:g} s wall-clock round deadline"
    elif getattr(cfg, "deadline_defaulted", False):
        before = f"before the coordinator's default {deadline:g} s deadline"
    else:
        before = f"before --deadline {deadline:g} s"
    if short and deadline is not None and all(r.reports == 0 for r in lost):
        why = f"no report {before}"
    elif short and deadline is not None:
        why = f"fewer than --min-reports {cfg.min_reports} reports {before}"
    elif unpooled:
        why = f"the check-in pool never held --min-reports {cfg.min_reports} devices"
    else:
        why = "measurements.abandoned in rounds.json says why"
    head = f"warning: {len(lost)} of {len(result.records)} rounds were abandoned ({why})"
    if len(lost) == len(result.records):
        return f"{head}; the model never changed"
    names = ", ".join(str(r.round) for r in lost[:5]) + (", ..." if len(lost) > 5 else "")
    return f"{head}: the model did not change in round{'s' * (len(lost) > 1)} {names}"


def dp_unaccounted_note(result: SimResult) -> str | None:
    """One line when the run's `dp:` stage added noise but accounted no epsilon, or None.

    Without `population=N,sample=k` the stage has no sampling model, so it reports no epsilon
    (docs/privacy.md); the summary line simply had no "dp epsilon", which read as if the
    number had been forgotten."""
    cfg = result.config
    if cfg._dp_stage() is None or cfg.dp_sampling() is not None:
        return None
    k = cfg.engine_config().cohort_size
    return (
        "note: the dp stage added noise but accounts no epsilon (no sampling model): add "
        f"population=N,sample={k} to its spec (N the devices each cohort is drawn from, at "
        f"most --clients {cfg.clients}) for an epsilon"
    )


# rounds.csv's columns after the RoundRecord fields: figures that are otherwise only in a
# round's `measurements`. Every run has them (empty cells where it has no such figure), so the
# files of a dp run and a clean one load as one table; appended, so the older columns keep
# their places.
CSV_EXTRA_COLUMNS = ("dp_epsilon", "dp_delta", "malicious_reports", "backdoor_accuracy")


def csv_extra(rec: RoundRecord) -> dict[str, Any]:
    """A round's `CSV_EXTRA_COLUMNS`: the epsilon a dp stage (or a secure run's distributed
    DP) had spent after it and its delta, the attackers among its accepted reports, and its
    backdoor accuracy (None where the round has no such figure)."""
    return _csv_extra_of(rec.measurements)


def _csv_extra_of(measurements: Any) -> dict[str, Any]:
    """`csv_extra` of a round's `measurements` (a RoundRecord's, or rounds.json's)."""
    if not isinstance(measurements, dict):
        measurements = {}
    dp = _holding(measurements, "epsilon") or {}
    attack = measurements.get("attack")
    attack = attack if isinstance(attack, dict) else {}
    return {
        "dp_epsilon": dp.get("epsilon"),
        "dp_delta": dp.get("delta"),
        "malicious_reports": attack.get("malicious_reports"),
        "backdoor_accuracy": attack.get("backdoor_accuracy"),
    }


# A round's `measurements.control_traffic` (HTTP runs: `http_fleet._Fleet.control_since`, and
# `secure.HttpSecureFleet.control_since` over `--secure --transport http`): its devices'
# exchanges in no round's ledger, as the devices' SDK counted them. Its keys; rounds.csv's
# columns for them (after every other column, in a run whose rounds have it: other runs' files
# are unchanged and every earlier column keeps its place); the summary's totals of them.
CONTROL_KEYS = ("up_wire_bytes", "down_wire_bytes", "requests")
CONTROL_COLUMNS = tuple(f"control_{k}" for k in CONTROL_KEYS)
CONTROL_TOTALS = tuple(f"total_control_{k}" for k in CONTROL_KEYS)


def _whole(value: Any) -> bool:
    """A whole non-negative number, as a byte or request count is (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and value >= 0 and value == int(value)


def control_traffic(measurements: Any) -> dict[str, int] | None:
    """A round's control traffic (`CONTROL_KEYS`) from its `measurements` (a RoundRecord's or
    rounds.json's), or None where it has none: in-process rounds, files written before
    4766ce4 (`report_extra` refuses a rounds.json whose measurement is not such an object)."""
    cell = measurements.get("control_traffic") if isinstance(measurements, dict) else None
    if not isinstance(cell, dict) or not all(_whole(cell.get(k)) for k in CONTROL_KEYS):
        return None
    return {k: int(cell[k]) for k in CONTROL_KEYS}


def control_traffic_total(rounds: Iterable[Any]) -> dict[str, int] | None:
    """The sums of `rounds`' control traffic (`RoundRecord`s, or rounds as rounds.json holds
    them), or None when there is no round or a round has none: a partial sum would read as
    the run's."""
    cells = [
        control_traffic(r.get("measurements") if isinstance(r, Mapping) else r.measurements)
        for r in rounds
    ]
    if not cells or any(c is None for c in cells):
        return None
    return {k: sum(c[k] for c in cells if c is not None) for k in CONTROL_KEYS}


def control_traffic_text(total: Mapping[str, int], *, secure: bool = False) -> str:
    """The summary line's words for a run's control traffic (`control_traffic_total`), which
    `plume sim report` prints too. A `--secure` run's devices make no outcome check-in (only
    the devices drawn for a round check in, none after it), so its words name none."""
    kinds = (
        "registrations, idle check-ins" if secure else "registrations, idle and outcome check-ins"
    )
    return (
        f"control traffic outside the rounds {total['up_wire_bytes']:,} B up, "
        f"{total['down_wire_bytes']:,} B down in {total['requests']:,} requests ({kinds})"
    )


def _control_cells(measurements: Any) -> dict[str, Any]:
    """A round's `CONTROL_COLUMNS` (None each where it has no control traffic)."""
    cell = control_traffic(measurements) or {}
    return {col: cell.get(k) for col, k in zip(CONTROL_COLUMNS, CONTROL_KEYS, strict=True)}


def _total(values: Iterable[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return float(sum(got)) if got else None


def _record_dict(rec: RoundRecord) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(rec)


def _finite_or_null(value: Any) -> Any:
    """`value` with every NaN or infinite float as None (an abandoned round's `train_loss`,
    a measurement that had nothing to measure)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(v) for v in value]
    return value


def git_info(repo: Path) -> dict[str, Any]:
    """`git_commit` (HEAD) and `git_dirty` (whether tracked files differ from it) of the git
    checkout whose top folder is `repo`; both None when `repo` is not the top of one (a
    package installed into a virtualenv inside some other project's checkout must not report
    that project's commit) or git cannot answer."""
    import subprocess

    def git(*words: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(repo), *words],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    info: dict[str, Any] = {"git_commit": None, "git_dirty": None}
    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != repo.resolve():
        return info
    info["git_commit"] = git("rev-parse", "HEAD")
    if info["git_commit"] is not None:
        status = git("status", "--porcelain", "--untracked-files=no")
        info["git_dirty"] = None if status is None else bool(status)
    return info


def code_info() -> dict[str, Any]:
    """Which code ran: `plume`, the installed version, and `git_info` of the checkout this
    package runs from (None for both where it is not the top of one)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        plume = version("plume-fl")
    except PackageNotFoundError:
        plume = None
    return {"plume": plume, **git_info(Path(__file__).resolve().parent.parent)}


def write_run(
    result: SimResult,
    out_dir: str | Path,
    *,
    command: str | None = None,
    argv: list[str] | None = None,
    load_average_start: float | None = None,
    busy_cpu_warning: str | None = None,
) -> dict[str, Path]:
    """Write rounds.json, rounds.csv and ledger.csv for one run into `out_dir`.

    `command`: the `plume sim ...` line that reruns it (`plume sim` passes its own), kept in
    rounds.json as `command`; `argv`: the words of the command as it was typed (credentials
    redacted), kept as `argv`; None leaves each key out (a run started from Python).
    `load_average_start`: the 1-minute load average when the run started (`plume sim` reads
    it before each run), rounds.json's `machine.load_average_start`; `machine` also has
    `load_average_end`, read now. Either is null where it was not read (no load average on
    this system, or a run started from Python). `busy_cpu_warning`: the warning `plume sim`
    gave at the start for a machine whose CPUs were all busy (its wall times are skewed),
    kept as `machine.busy_cpu_warning` (left out without one): it is printed on a terminal
    only, and `plume sim report` shows it from here."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [_record_dict(r) for r in result.records]
    doc: dict[str, Any] = {}
    if command is not None:
        doc["command"] = command
    if argv is not None:
        doc["argv"] = list(argv)
    doc["config"] = result.config.as_dict()
    if result.dp_seed is not None:
        # Only dp runs have the key: other runs record the config they did before it.
        doc["config"]["dp_seed"] = result.dp_seed
    if result.secure is not None:
        # A secure run's own settings: `config`'s codec fields (topk, bits, ...) are unused.
        doc["secure"] = result.secure
    if result.http is not None:
        # An HTTP run's wall-clock settings (its task's round deadline, ...) that `config`,
        # in simulated seconds, has no field for; in-process runs record none, as before.
        doc["http"] = result.http
    if result.ray_cluster is not None:
        # The cluster a Ray run joined by address, and where the address came from: `config`
        # records only a given one (ray_address), not one from the RAY_ADDRESS variable.
        # Private runtimes and other backends record none, as before.
        doc["ray_cluster"] = result.ray_cluster
    doc.update(
        {
            "summary": summary(result),
            "rounds": rows,
            "ledger_totals": result.ledger.totals(),
            "machine": {
                **machine_info(),
                "load_average_start": load_average_start,
                "load_average_end": load_average_1m(),
                **({} if busy_cpu_warning is None else {"busy_cpu_warning": busy_cpu_warning}),
            },
            "code": code_info(),
            "started_at": result.started_at,
            "finished_at": utc_now(),
        }
    )
    paths = {
        "json": out / "rounds.json",
        "csv": out / "rounds.csv",
        "ledger": out / "ledger.csv",
    }
    # Each file is written whole under a temporary name and then renamed, rounds.json (what
    # `plume sim report` reads) last and an earlier run's removed first: a second Ctrl-C while
    # an interrupted run writes its rounds leaves no half-written file, and no rounds.json of
    # another run beside this one's CSV files.
    paths["json"].unlink(missing_ok=True)
    # allow_nan=False: NaN and Infinity are not JSON (jq and JSON.parse refuse the file)
    text = json.dumps(_finite_or_null(doc), indent=2, default=str, allow_nan=False) + "\n"
    # rounds.csv is made from the rounds as rounds.json holds them, so that `plume sim
    # report` rebuilds it byte for byte from the JSON (`rounds_csv`).
    _replace_with(paths["csv"], rounds_csv(json.loads(text)["rounds"]))
    _replace_with(paths["ledger"], result.ledger.to_csv())
    _replace_with(paths["json"], text)
    return paths


def rounds_csv(rounds: Sequence[Mapping[str, Any]]) -> str:
    """rounds.csv's text for `rounds`, the round objects as rounds.json holds them: one row
    per round without its `measurements`, then `CSV_EXTRA_COLUMNS` taken from them. What
    `write_run` writes and `plume sim report` writes again from rounds.json.

    Columns: the `RoundRecord` fields, then the extra figures, then (in a run with
    onnxruntime devices only) how many trained on it, then where wall_s went (added after
    both: every earlier column keeps its place), then (in a run whose rounds record control
    traffic: over HTTP) `CONTROL_COLUMNS`, each round's `measurements.control_traffic`, last
    for the same reason. A value that is null, missing (a file written before its field
    existed) or not a finite number is an empty cell (an abandoned round's train_loss was
    written "nan")."""
    from dataclasses import fields

    from .runner import ORT_FIELDS, WALL_PHASES, RoundRecord

    late = {"measurements", *ORT_FIELDS, *WALL_PHASES}
    columns = [f.name for f in fields(RoundRecord) if f.name not in late]
    ort = [*ORT_FIELDS] if any(r.get("ort_trained") is not None for r in rounds) else []
    has_control = any(control_traffic(r.get("measurements")) is not None for r in rounds)
    control = [*CONTROL_COLUMNS] if has_control else []
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf,
        fieldnames=[*columns, *CSV_EXTRA_COLUMNS, *ort, *WALL_PHASES, *control],
        extrasaction="ignore",
        lineterminator="\n",
    )
    writer.writeheader()
    for row in rounds:
        measurements = row.get("measurements")
        cells = {**row, **_csv_extra_of(measurements), **_control_cells(measurements)}
        writer.writerow(_finite_or_null(cells))
    return buf.getvalue()


def replace_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Have `write(tmp)` write the whole of `path` under a temporary name beside it, then
    rename it to `path`: an interruption leaves the old file or the new one, never a part.

    An OSError about the temporary file (a folder that cannot be written) is raised naming
    `path`, the file that was asked for: the error line named `.rounds.csv.123.tmp`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.strerror is None or str(exc.filename) != str(tmp):
            raise
        raise type(exc)(exc.errno, exc.strerror, str(path)) from exc
    finally:
        with contextlib.suppress(OSError):  # a temporary file that cannot go (a folder there)
            tmp.unlink(missing_ok=True)


def _replace_with(path: Path, text: str) -> None:
    replace_atomically(path, lambda tmp: tmp.write_text(text, newline=""))


def plot_accuracy_vs_bytes(
    runs: Sequence[tuple[str, Sequence[dict[str, Any]]]], path: str | Path, title: str = ""
) -> Path:
    """Accuracy against cumulative bytes, one line per run, in two panels (log x axes): the
    upload bytes (what compression shrinks), and the upload and download bytes together
    (everything the run moved: the dense model's broadcast is most of it).

    `runs` holds `(label, rounds)` where each round dict has `accuracy`, `bytes_up` and
    `bytes_down`. `title` (the run's "dataset / model") heads the figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_up, ax_all) = plt.subplots(1, 2, figsize=(13, 4.6), dpi=110, sharey=True)
    plotted: dict[str, list[int]] = {"up": [], "all": []}
    for label, rounds in runs:
        up = both = 0
        xs_up, xs_all, ys = [], [], []
        for r in rounds:
            up += int(r["bytes_up"])
            both += int(r["bytes_up"]) + int(r["bytes_down"])
            if r.get("accuracy") is not None:
                xs_up.append(up)
                xs_all.append(both)
                ys.append(float(r["accuracy"]))
        plotted["up"] += xs_up
        plotted["all"] += xs_all
        ax_up.plot(xs_up, ys, marker="o", markersize=3, label=label)
        ax_all.plot(xs_all, ys, marker="o", markersize=3, label=label)
    for ax, key, what in (
        (ax_up, "up", "upload bytes"),
        (ax_all, "all", "upload + download bytes"),
    ):
        _log_bytes_axis(ax.xaxis, plotted[key])  # linear for runs that moved no bytes
        ax.set_xlabel(f"cumulative {what} (all devices)")
        ax.set_title(f"accuracy vs cumulative {what}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    ax_up.set_ylabel("test accuracy")
    fig.suptitle(title or "accuracy vs bytes")
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        replace_atomically(p, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return p
