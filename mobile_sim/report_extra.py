"""A run's plots, and reading them back: bytes per round (up and down), the distribution of
round durations, and `plot_runs`, which draws those two and the accuracy plot.

``plume sim`` draws them from its runs; ``plume sim report RUN_DIR`` redraws them from the run
folder's ``rounds.json`` files alone (`read_run_dir`, each file parsed once), and writes each
run's ``rounds.csv`` again from its ``rounds.json`` (`rebuild_rounds_csv`).

A file that is not a run's as `report.write_run` writes it is refused with one `RunDirError`
naming the file (and the round and field): not JSON (or nested too deep, or an integer of
over 4300 digits), no `rounds` list of objects, `config` or `summary` that is not an object, `summary.interrupted` that is not true or false, a round
number that is not an integer or that two rounds share, a byte count or duration that is not
a finite number or is negative, a byte count that is not a whole number, an `accuracy`
outside [0, 1], a `loss` or `ratio_up` that is neither null nor a finite number, a
`committed` that is not true or false, or a `measurements.control_traffic` (an HTTP round's)
that is not an object of whole non-negative `up_wire_bytes`, `down_wire_bytes` and
`requests`. A round without that measurement (in process, a file written before 4766ce4) is
read as before. ``plume sim report`` prints it as one error line with exit status 2.

A run with an empty `rounds` list (a ``--transport http`` task its operator stopped before
round 1) is a run's file: it is read, its lines in the plots are empty, the figures with
nothing at all to show say "no round to draw" (no legend), and `RunDir.notes` has a line
for it (``LABEL: no round finished, nothing to draw``), which ``plume sim report`` prints
under its table.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._proc import process_start, running

__all__ = [
    "process_start",
    "RunDir",
    "RunDirError",
    "RunDirNotFound",
    "RunDirMixed",
    "RunInProgress",
    "RunKilled",
    "in_progress_path",
    "read_run_dir",
    "plot_runs",
    "load_runs",
    "run_title",
    "printable",
    "plot_bytes_per_round",
    "plot_round_durations",
    "plot_run_dir",
    "rebuild_run_dir",
    "rebuild_rounds_csv",
    "missing_ledgers",
    "compare_table",
    "interrupted_notes",
]

Run = tuple[str, list[dict[str, Any]]]

# The schema below is what `report.write_run` writes (`RoundRecord` fields, `summary`); a
# file that breaks it is refused, one `RunDirError` naming the file, the round and the field.
# What every round row must hold for the plots.
_ROUND_KEYS = ("round", "bytes_up", "bytes_down", "wall_s")
# Fields the plots read as numbers: required ones, and optional ones that may also be null.
_NUMBERS = ("bytes_up", "bytes_down", "wall_s")
_NUMBERS_OR_NULL = ("accuracy", "dense_up", "sim_s", "wait_s")
# Read by the per-round table (`report.table_row`) only: a finite number or null when present.
_TABLE_NUMBERS = ("loss", "ratio_up")
# Byte counts (`RoundRecord`'s ints): whole numbers.
_COUNTS = ("bytes_up", "bytes_down", "dense_up")
# A top-level key that, when present, must be a JSON object (the writer's dicts).
_OBJECTS = ("config", "summary")


# The largest magnitude a figure of a run may have: 2^53 (bytes, seconds, counts). 1e308 bytes
# passed as finite, then overflowed the cumulative sums and the plots' axes (helper-345).
_MAX_FIGURE = float(2**53)


def _is_number(value: object) -> bool:
    """A finite int or float of magnitude at most 2^53, not a bool."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value) and abs(value) <= _MAX_FIGURE
    except OverflowError:  # an int beyond float's range (10**400): no plot can draw it
        return False


def _shown(r: dict[str, Any], keys: list[str]) -> str:
    """`key=value, ...` of round `r`, each value cut to 40 characters (10**400 is 401 digits)."""
    return ", ".join(f"{k}={_cut(r[k])}" for k in keys)


def _cut(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_round(path: Path, r: dict[str, Any]) -> None:
    """Refuse a round row the plots cannot read, or whose figures cannot be a run's (a negative
    byte count or duration, an accuracy outside [0, 1], a fraction of a byte), naming the
    file, the round and the field."""
    missing = [k for k in _ROUND_KEYS if k not in r]
    if missing:
        raise RunDirError(f"{path}: round {r.get('round', '?')} lacks {missing}")
    if not isinstance(r["round"], int) or isinstance(r["round"], bool):
        raise RunDirError(f"{path}: a round number is {_cut(r['round'])}, not an integer")
    if not 0 <= r["round"] <= _MAX_FIGURE:
        raise RunDirError(f"{path}: a round number is {_cut(r['round'])}, not in [0, 2^53]")
    bad = [k for k in _NUMBERS if not _is_number(r[k])]
    bad += [
        k
        for k in (*_NUMBERS_OR_NULL, *_TABLE_NUMBERS)
        if r.get(k) is not None and not _is_number(r[k])
    ]
    if bad:
        raise RunDirError(
            f"{path}: round {r['round']} has {_shown(r, bad)}, not a finite number of magnitude "
            "at most 2^53"
        )
    if not isinstance(r.get("committed", True), bool):
        raise RunDirError(
            f"{path}: round {r['round']} has {_shown(r, ['committed'])}, not true or false"
        )
    present = [k for k in (*_NUMBERS, *_NUMBERS_OR_NULL) if r.get(k) is not None]
    if negative := [k for k in present if k != "accuracy" and r[k] < 0]:
        raise RunDirError(
            f"{path}: round {r['round']} has {_shown(r, negative)}: byte counts and seconds "
            "cannot be negative"
        )
    if fractional := [k for k in present if k in _COUNTS and r[k] != int(r[k])]:
        raise RunDirError(
            f"{path}: round {r['round']} has {_shown(r, fractional)}, not a whole number of bytes"
        )
    if "accuracy" in present and not 0.0 <= r["accuracy"] <= 1.0:
        raise RunDirError(
            f"{path}: round {r['round']} has {_shown(r, ['accuracy'])}, outside [0, 1]"
        )
    _check_control(path, r)
    if _depth(r.get("measurements")) > _MAX_DEPTH:
        # Walked recursively when the CSV is written: a RecursionError traceback after the
        # plots were redrawn (helper-345).
        raise RunDirError(
            f"{path}: round {r['round']} has measurements nested deeper than {_MAX_DEPTH} "
            "levels, which no run writes"
        )


# The deepest `measurements` a round may hold (a run's are a few levels).
_MAX_DEPTH = 32


def _depth(value: object) -> int:
    """How deeply `value` nests JSON objects and arrays (0 for a scalar), found without
    recursion, stopping once past _MAX_DEPTH."""
    deepest, stack = 0, [(value, 0)]
    while stack and deepest <= _MAX_DEPTH:
        node, level = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, level + 1)
            items = node.values() if isinstance(node, dict) else node
            stack.extend((child, level + 1) for child in items)
    return deepest


def _check_control(path: Path, r: dict[str, Any]) -> None:
    """Refuse a round whose `measurements.control_traffic` is there but is not what an HTTP
    run records (`report.control_traffic` would read it as absent: its plot line and CSV
    cells would silently miss the round)."""
    from .report import CONTROL_KEYS, control_traffic

    measurements = r.get("measurements")
    if not isinstance(measurements, dict) or "control_traffic" not in measurements:
        return
    if control_traffic(measurements) is None:
        raise RunDirError(
            f"{path}: round {r['round']} has measurements.control_traffic="
            f"{_cut(measurements['control_traffic'])}, not an object of whole non-negative "
            f"{', '.join(CONTROL_KEYS)}"
        )


def _check_doc(path: Path, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """`doc`'s rounds, once the file is checked to be a run's (`_check_round` for each round)."""
    rounds = doc.get("rounds")
    if not isinstance(rounds, list) or not all(isinstance(r, dict) for r in rounds):
        raise RunDirError(f"{path}: no 'rounds' list of objects")
    for key in _OBJECTS:
        if key in doc and not isinstance(doc[key], dict):
            raise RunDirError(
                f"{path}: '{key}' is {type(doc[key]).__name__} {_cut(doc[key])}, not an object"
            )
    summary = doc.get("summary")
    if isinstance(summary, dict) and not isinstance(summary.get("interrupted", False), bool):
        raise RunDirError(
            f"{path}: summary.interrupted is {_cut(summary['interrupted'])}, not true or false"
        )
    seen: set[int] = set()
    last: int | None = None
    for r in rounds:
        _check_round(path, r)
        if r["round"] in seen:
            raise RunDirError(f"{path}: round {r['round']} appears twice in 'rounds'")
        if last is not None and r["round"] < last:
            # Read in file order, the cumulative bytes and the final accuracy were another
            # round's, with exit status 0 (helper-345).
            raise RunDirError(
                f"{path}: round {r['round']} comes after round {last} in 'rounds': a run "
                "writes its rounds in order"
            )
        seen.add(r["round"])
        last = r["round"]
    return rounds


class RunDirError(ValueError):
    """A run folder has no readable ``rounds.json`` (missing, not JSON, or not a run's)."""


class RunDirNotFound(RunDirError, FileNotFoundError):
    """The folder does not exist or holds no ``rounds.json``."""


class RunDirMixed(RunDirError):
    """The folder's runs trained different datasets or models: one plot under one title
    cannot compare them (a sweep varies the other settings of one dataset and model)."""


class RunInProgress(RunDirError):
    """The folder is the --out of a `plume sim` run that is still running (its record,
    `in_progress_path`, names a live process): its files are written when it ends."""


class RunKilled(RunDirNotFound):
    """The folder holds no run's files, and the record of a run into it (`in_progress_path`)
    names a process that is gone: that run was killed (SIGKILL) before it wrote them."""


# The subfolders `plume sim --compare-dense` writes its runs into, named after their labels.
_RUN_LABELS = ("compressed", "secure", "dense")

# While it runs, `plume sim` keeps a record of itself (`in_progress_path` of its --out folder)
# and removes it when it ends (its rounds written, Ctrl-C, SIGTERM, a closed stdout or an
# error alike): a JSON object with the folder (`out`, resolved), its `pid` (and where the
# system tells, `pid_start`: `process_start`, so that a pid reused later is not the run),
# `started_at`, `runs` (the labels it runs, in order), `run` (the one running), `rounds`
# (that run's --rounds) and `done` (its rounds finished so far). A run writes its own files
# only when it ends, so without it a folder being written to looked like one holding no run.
# Only SIGKILL (or running out of memory) leaves it behind, naming a process that is gone. It
# is kept outside the folder, which holds the run's files and nothing else (and whose files a
# run removes and writes as tests/mobile_sim/test_s24c_out_replaced.py checks).
IN_PROGRESS = "plume-sim-running"


def in_progress_path(out: str | Path) -> Path:
    """Where a `plume sim` run into --out folder `out` keeps its record while it runs: one
    file per folder (by its resolved path) in this user's `IN_PROGRESS` folder under the
    temporary folder (`tempfile.gettempdir()`, TMPDIR)."""
    folder = Path(out).resolve()
    key = hashlib.sha256(os.fsencode(folder)).hexdigest()[:32]
    user = getattr(os, "getuid", lambda: "")()
    return Path(tempfile.gettempdir()) / f"{IN_PROGRESS}-{user}" / f"{key}.json"


def _in_progress(folder: Path) -> dict[str, Any] | None:
    """The record of a run into `folder` as written, or None without one (or one that does
    not read as a JSON object for that folder with an integer `pid`: nothing to say of it)."""
    try:
        path = in_progress_path(folder)
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("out") != str(folder.resolve()):
        return None
    if type(doc.get("pid")) is not int or doc["pid"] <= 0:
        return None
    return doc


def _alive(doc: dict[str, Any]) -> bool:
    """Whether the process a run's record names still runs: a process of that `pid` is there
    and, where the record has its `pid_start` and this system tells (`process_start`), it
    started then. A simulator killed with SIGKILL leaves its record; its pid can later be
    another process's, which is not that run (a record written before `pid_start` was kept is
    taken as alive while its pid is)."""
    start = doc.get("pid_start")
    return running(doc["pid"], start if type(start) is int else None) is True


def _progress_text(doc: dict[str, Any]) -> str:
    """`3 of 200 rounds of its compressed run finished (run 1 of 2)`, from what the file
    holds; the parts it lacks are left out."""
    done, rounds, run = doc.get("done"), doc.get("rounds"), doc.get("run")
    runs = doc.get("runs")
    text = f"{done}" if type(done) is int else "an unknown number"
    text += f" of {rounds}" if type(rounds) is int else ""
    text += " rounds"
    text += f" of its {printable(run)} run" if isinstance(run, str) else ""
    if isinstance(runs, list) and len(runs) > 1 and run in runs:
        text += f" (run {runs.index(run) + 1} of {len(runs)})"
    return text + " finished"


def _started(doc: dict[str, Any]) -> str:
    at = doc.get("started_at")
    return (
        f"started {printable(at)}, pid {doc['pid']}" if isinstance(at, str) else f"pid {doc['pid']}"
    )


def _in_progress_error(root: Path) -> RunInProgress | None:
    """The error for `root` (or, for a --compare-dense run's compressed/ or dense/, the
    folder above it) while a live run writes there; None otherwise."""
    for folder in (root, root.parent) if root.name in _RUN_LABELS else (root,):
        doc = _in_progress(folder)
        if doc is not None and _alive(doc):
            return RunInProgress(
                f"{folder} is the --out folder of a run still in progress ({_started(doc)}): "
                f"{_progress_text(doc)} so far; a run writes its files (rounds.json, "
                f"rounds.csv, ledger.csv, the plots) when it ends, then `plume sim report` "
                "reads them"
            )
    return None


def _killed_note(root: Path) -> str | None:
    """For a folder whose run's record names a process that is gone (SIGKILL, out of
    memory: nothing could remove it): a line saying so."""
    doc = _in_progress(root)
    if doc is None or _alive(doc):
        return None
    return (
        f"the run into {root} ({_started(doc)}) was killed before it wrote its files (SIGKILL "
        f"or out of memory?), with {_progress_text(doc)}"
    )


def _own_files(folder: Path) -> list[Path]:
    """The run files of one `--out` folder: its rounds.json, or its --compare-dense run's
    (`_RUN_LABELS` subfolders'); [] if it has neither. Other subfolders are not looked in."""
    top = folder / "rounds.json"
    subs = [p for p in (folder / label / "rounds.json" for label in _RUN_LABELS) if p.is_file()]
    subs.sort()
    if top.is_file() and subs:
        # A reused --out folder holds a single run's file and a --compare-dense run's
        # subfolders: the newer of the two is the run that last wrote here.
        newest_sub = max(p.stat().st_mtime_ns for p in subs)
        return subs if newest_sub > top.stat().st_mtime_ns else [top]
    return [top] if top.is_file() else subs


def _run_files(root: Path) -> tuple[list[Path], dict[Path, str]]:
    """The run files `plume sim report ROOT` reads, in the layouts `plume sim` writes (and a
    sweep of them): ROOT/rounds.json, ROOT/{compressed,secure,dense}/rounds.json, else each
    subfolder SUB's ROOT/SUB/rounds.json or ROOT/SUB/{compressed,secure,dense}/rounds.json.
    Nothing deeper: a folder such as /tmp is not searched for any rounds.json below it. With
    them, the sweep subfolders left out because a run still writes there (`_busy_subfolders`)."""
    if (running := _in_progress_error(root)) is not None:  # first: its folders may not be made
        raise running
    if not root.is_dir():
        if not root.exists():  # "is not a folder" alone read as a file in the way
            raise RunDirNotFound(f"{root} is not a folder: it does not exist")
        # A file: "(no rounds.json)" was said of runs/x/rounds.json itself too (s52b). A run's
        # own file names its folder, which is what to give instead.
        folder = root.parent
        if folder.name in _RUN_LABELS and root.parent / "rounds.json" in _own_files(
            folder.parent
        ):  # a --compare-dense run's compressed/rounds.json: its --out folder is above
            folder = folder.parent
        if _own_files(folder):
            raise RunDirNotFound(
                f"{root} is a file, not a folder: give the run's folder, `plume sim report "
                f"{folder}`"
            )
        raise RunDirNotFound(f"{root} is a file, not a folder")
    paths = _own_files(root)
    busy: dict[Path, str] = {}
    if not paths:
        # One run folder per subfolder (a sweep's settings), each holding a single run or a
        # --compare-dense pair; one a run still writes to is left out (`_busy_subfolders`).
        subs = sorted(p for p in root.iterdir() if p.is_dir())
        busy = _busy_subfolders(subs)
        paths = [path for sub in subs if sub not in busy for path in _own_files(sub)]
        if not paths and busy:
            raise RunInProgress("; ".join(busy.values()))
    if not paths:
        if (killed := _killed_note(root)) is not None:
            raise RunKilled(f"no rounds.json in {root}: {killed}; rerun it")
        raise RunDirNotFound(
            f"no rounds.json in {root} or its subfolders (nor in a subfolder's "
            f"{', '.join(_RUN_LABELS)}/){_csv_without_json(root)}"
        )
    return paths, busy


def _busy_subfolders(subs: list[Path]) -> dict[Path, str]:
    """The subfolders `subs` of a sweep folder (one without a run of its own) that a run
    still writes to, each with the line saying so (`RunInProgress`'s text)."""
    busy = {}
    for sub in subs:
        if (running := _in_progress_error(sub)) is not None:
            busy[sub] = str(running)
    return busy


def _csv_without_json(root: Path) -> str:
    """For a folder with a run's rounds.csv and no rounds.json (`plume sim` writes rounds.json
    last, so a second Ctrl-C while a run's files were written leaves the CSV files alone): a
    clause saying so, naming the first such file, else "". Before, the error read as if the
    folder were no run's at all (s52b)."""
    below = [root, *(root / label for label in _RUN_LABELS)]
    csv = next(
        (folder / "rounds.csv" for folder in below if (folder / "rounds.csv").is_file()), None
    )
    if csv is None:
        return ""
    return (
        f", only {csv}: a run writes rounds.json last, and one stopped while writing its "
        "files has none; `plume sim report` needs it (rerun the run)"
    )


def _in_subfolder(root: Path, path: Path) -> str:
    """For an error about `path`, a run file `_run_files(root)` found below `root` that was
    not asked for by name: what it was taken as. "" for ROOT/rounds.json and a --compare-dense
    run's own files (ROOT/LABEL/rounds.json beside no sweep), which name themselves."""
    if path.parent == root or (path.parent.parent == root and path.parent.name in _RUN_LABELS):
        return ""
    sub = path.relative_to(root).parts[0]
    return (
        f" ({root} has no rounds.json of its own, so its subfolder {sub}/ was read as one of "
        "a sweep's runs; name a run's own folder to report only it)"
    )


def _label(root: Path, path: Path, doc: dict[str, Any]) -> str:
    """A run's name in the plots: its folder below `root` (`k0.01`, `k0.01/dense`) when it is
    in one, else the label it ran under (`compressed`, `dense`, `secure`).

    Every run of a sweep (one `--out` folder per setting) ran as "compressed": labelled by
    that, the legend named every line the same. `--compare-dense` names its subfolders after
    its labels, so its plots are unchanged."""
    if path.parent != root:
        return printable(path.parent.relative_to(root).as_posix())
    summary = doc.get("summary")
    return printable(
        str((summary.get("label") if isinstance(summary, dict) else None) or root.name)
    )


def printable(text: object) -> str:
    """`text` with each character that `str.isprintable` refuses written as its Python escape
    (``\\x1b``, ``\\n``, ``k\\udcff``). A lone surrogate (a folder name that is not UTF-8,
    which Python hands over with surrogates, or a label holding one) made matplotlib's font
    code raise TypeError after some plots were redrawn, and printing it raise
    UnicodeEncodeError where stdout is strict UTF-8 (en_US.UTF-8; C.UTF-8 escapes). A control
    character (ESC, a newline) in a label or a note read from a rounds.json could move the
    terminal's cursor or forge another line of the report. Other text, non-ASCII included, is
    kept as it is."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _read_doc(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError as exc:  # [[[... nested deeper than the parser's stack
        raise RunDirError(f"{path}: cannot read a run's rounds.json (nested too deep)") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{path}: cannot read a run's rounds.json ({exc})") from exc
    except ValueError as exc:  # what else json.loads raises: int("9" * 5000) in a number
        limit = sys.get_int_max_str_digits()
        raise RunDirError(
            f"{path}: cannot read a run's rounds.json (an integer of over {limit} digits)"
        ) from exc
    if not isinstance(doc, dict):
        raise RunDirError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    return doc


@dataclass(frozen=True)
class RunDir:
    """A run folder as ``plume sim report`` reads it (`read_run_dir`).

    runs: (label, rounds) of each run, in the plots' order (`load_runs`).
    title: the accuracy plot's title ``plume sim`` gave it (`run_title`).
    notes: one line per sweep subfolder left out because a run still writes there, one for
        a run that was killed in the folder (its record, `in_progress_path`, names a process
        that is gone), then one per run that Ctrl-C stopped (`interrupted_notes`), one per run
        with no round (an empty `rounds` list) and one per run that recorded the Ray cluster
        it joined (`ray_clusters`), in the plots' order.
    files: the ``rounds.json`` of each run, in the order of `runs`.
    control: one line per run whose rounds record control traffic (an HTTP run's devices'
        exchanges in no round's ledger, `measurements.control_traffic`), in the plots'
        order: its totals in the words of the run's summary line (`_control_line`).
    warnings: one line per run whose rounds.json recorded a warning of its start
        (`machine.busy_cpu_warning`: every CPU was busy, so its wall times are skewed), in
        the plots' order; `plume sim` prints it on a terminal only.
    ray_clusters: the notes' lines of the Ray clusters the runs joined (`_ray_cluster_note`:
        rounds.json's `ray_cluster`, or that it is malformed), also in `notes`.
    """

    root: Path
    runs: list[Run]
    title: str
    notes: list[str]
    files: list[Path] = field(default_factory=list)
    control: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    ray_clusters: list[str] = field(default_factory=list)


def read_run_dir(run_dir: str | Path) -> RunDir:
    """``RUN_DIR/rounds.json`` or, without it, every subfolder's run: ``RUN_DIR/SUB/rounds.json``
    or ``RUN_DIR/SUB/*/rounds.json`` (when a reused folder has a top file and subfolders, the
    newer: the run that wrote there last), each file read and checked once. A run in a
    subfolder is labelled by its path below RUN_DIR, one at the top by the label it ran under.

    Runs are in folder-name order, except that a run labelled ``dense`` (the baseline that
    ``plume sim --compare-dense`` adds after the main run) comes last, as in the run itself.
    Raises `RunDirError` naming the file when the folder has no run or a file is not a run's
    (see the module's docstring), and `RunDirMixed` naming the runs when they recorded
    different datasets or models; a run with no round is read (its note says so).
    """
    root = Path(run_dir)
    # label, rounds, summary, file, control line
    found: list[tuple[str, list[dict[str, Any]], Any, Path, str | None]] = []
    warned: dict[Path, str] = {}  # file: its run's busy-CPU warning line
    clusters: dict[Path, str] = {}  # file: its run's Ray cluster line
    trained: list[tuple[str, str | None, str | None]] = []  # label, dataset, model
    title: str | None = None
    paths, busy = _run_files(root)
    # A sweep's setting still running is left out of the plots, and said so; a run that was
    # killed here (SIGKILL) is said so above what it left.
    ahead = [f"{sub.relative_to(root).as_posix()}: left out, {text}" for sub, text in busy.items()]
    if (killed := _killed_note(root)) is not None:
        ahead.append(f"{killed}; the files read here were written before it")
    for path in paths:
        try:
            doc = _read_doc(path)
            rounds = _check_doc(path, doc)
        except RunDirError as exc:
            if not (found_in := _in_subfolder(root, path)):
                raise
            raise type(exc)(f"{exc}{found_in}") from exc
        if title is None:  # the first run in folder order: the one `plume sim` titled by
            title = _title(doc)
        label = _label(root, path, doc)
        control = _control_line(label, rounds, secure=doc.get("secure") is not None)
        found.append((label, rounds, doc.get("summary"), path, control))
        if (warning := _busy_warning(doc)) is not None:
            warned[path] = f"{label}: warning at its start: {warning}"
        if (cluster := _ray_cluster_note(label, doc)) is not None:
            clusters[path] = cluster
        config = doc.get("config")
        dataset = config.get("dataset") if isinstance(config, dict) else None
        trained.append((label, str(dataset) if dataset else None, _model(doc)))
    _check_one_task(root, trained)
    # stable: folder order otherwise
    found.sort(key=lambda run: run[0].rsplit("/", 1)[-1] == "dense")
    return RunDir(
        root,
        [(label, rounds) for label, rounds, *_ in found],
        title or "",
        [printable(line) for line in ahead]
        + [
            note
            for label, rounds, summary, path, _ in found
            for note in (
                _interrupted_note(label, summary),
                _empty_note(label, rounds),
                clusters.get(path),
            )
            if note
        ],
        [path for *_, path, _ in found],
        [control for *_, control in found if control is not None],
        [printable(warned[path]) for *_, path, _ in found if path in warned],
        [clusters[path] for *_, path, _ in found if path in clusters],
    )


def _ray_cluster_note(label: str, doc: dict[str, Any]) -> str | None:
    """``LABEL: ray cluster: ADDRESS (from RAY_ADDRESS)``: the Ray cluster a run joined by
    address, from its rounds.json's `ray_cluster` (`RayBackend.cluster`: ``{"address": ...,
    "from": "RAY_ADDRESS" | "ray_address"}``); None for a run without it (a private runtime,
    another backend, a file written before it). A value that is not an object of exactly
    those two keys, each a non-empty string, is said to be malformed rather than refused:
    the plots do not read it. Control characters are escaped (`printable`)."""
    if "ray_cluster" not in doc:
        return None
    cluster = doc["ray_cluster"]
    if not (
        isinstance(cluster, dict)
        and set(cluster) == {"address", "from"}
        and all(isinstance(v, str) and v for v in cluster.values())
    ):
        return printable(f"{label}: ray_cluster in rounds.json is malformed, not shown")
    return printable(f"{label}: ray cluster: {cluster['address']} (from {cluster['from']})")


def _busy_warning(doc: dict[str, Any]) -> str | None:
    """The busy-CPU warning a run's rounds.json recorded (`machine.busy_cpu_warning`), or
    None (none recorded, or not a string)."""
    machine = doc.get("machine")
    text = machine.get("busy_cpu_warning") if isinstance(machine, dict) else None
    return text if isinstance(text, str) and text else None


def _control_line(label: str, rounds: list[dict[str, Any]], *, secure: bool) -> str | None:
    """`LABEL: control traffic outside the rounds ...`: a run's control traffic totals in the
    words of its summary line, from its rounds (so a run dir written before rounds.json's
    summary had them, by 4766ce4's code, gets the line too); None for a run without it."""
    from .report import control_traffic_text, control_traffic_total

    total = control_traffic_total(rounds)
    return None if total is None else f"{label}: {control_traffic_text(total, secure=secure)}"


def _check_one_task(root: Path, trained: list[tuple[str, str | None, str | None]]) -> None:
    """Refuse (`RunDirMixed`) runs of `root` that recorded different datasets or models: a
    folder holding unrelated runs (say `runs/`, with a digits run and an mnist one) drew them
    as one plot under the first run's title. A run whose file does not say is not compared."""
    datasets = {dataset for _, dataset, _ in trained if dataset is not None}
    models = {model for _, _, model in trained if model is not None}
    if len(datasets) <= 1 and len(models) <= 1:
        return
    runs = ", ".join(
        f"{label} ({dataset or '?'} / {model or '?'})" for label, dataset, model in trained
    )
    raise RunDirMixed(
        f"{root} holds runs of different datasets or models, which one plot cannot compare: "
        f"{runs}; report each one's own folder (a sweep folder holds runs of one dataset and "
        "model)"
    )


def load_runs(run_dir: str | Path) -> list[Run]:
    """(label, rounds) of every run in `run_dir`, in the plots' order (`read_run_dir`)."""
    return read_run_dir(run_dir).runs


def _title(doc: dict[str, Any]) -> str:
    """`dataset / model` of the run `doc` (its rounds.json), as `plume sim` titled its
    accuracy plot; "" when the file does not say."""
    config = doc.get("config")
    if not isinstance(config, dict) or not config.get("dataset"):
        return ""
    model = _model(doc)
    return printable(f"{config['dataset']} / {model}") if model else ""


def _model(doc: dict[str, Any]) -> str | None:
    """The model the run `doc` trained, as its file records it: `summary.model` (the model
    that ran), else `config.model`. Only a file that records neither (written before
    `summary.model` existed, by a run of the dataset's default) has it looked up in this
    process's registry: a plugin's model, or a default changed since, is what the file says."""
    summary, config = doc.get("summary"), doc.get("config")
    for part in (summary, config):
        model = part.get("model") if isinstance(part, dict) else None
        if model:
            return str(model)
    if not isinstance(config, dict) or not config.get("dataset"):
        return None
    from .runner import default_model  # the model `SimConfig.model_name` picked

    return default_model(str(config["dataset"]))


def run_title(run_dir: str | Path) -> str:
    """The accuracy plot's title that ``plume sim`` gave the run: "dataset / model"; "" when
    the run's config does not say."""
    return read_run_dir(run_dir).title


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bytes_per_round(runs: Sequence[Run], path: str | Path) -> Path:
    """Upload and download payload bytes of every round, one line per run (log y axis). A
    run's download line that is an earlier run's, round for round (--compare-dense's dense
    run downloads what the compressed run does), is dashed with hollow square markers, labelled
    `LABEL (same bytes as EARLIER)`, so that both show.

    A run whose rounds record control traffic (over HTTP: its devices' exchanges in no round's
    ledger, `measurements.control_traffic`) adds a dotted line of its colour in each panel,
    its up and its down wire bytes per round: a separate series, not stacked on the payload,
    which is another measure (bodies only, not HTTP heads)."""
    from matplotlib.ticker import MaxNLocator

    from .report import _log_bytes_axis, control_traffic

    plt = _pyplot()
    fig, (ax_up, ax_down) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110, sharex=True)
    plotted: dict[str, list[int]] = {"upload": [], "download": []}
    # `dense_up` may be null (the file check allows it): those rounds have no point.
    denses = [
        [(int(r["round"]), int(r["dense_up"])) for r in rounds if _is_number(r.get("dense_up"))]
        for _, rounds in runs
    ]
    # Runs of one comparison (--compare-dense) train the same cohorts, so their dense sizes
    # agree: one reference line, not one per run hiding the others.
    shared = len(runs) > 1 and all(d == denses[0] for d in denses)
    has_control = False
    drawn: dict[Any, list[tuple[str, list[int], list[int]]]] = {ax_down: []}

    def draw(ax: Any, label: str, xs: list[int], ys: list[int]) -> Any:
        # A run whose bytes are an earlier run's, round for round (--compare-dense's dense run
        # downloads the same model), was drawn exactly over it, hiding it: dashed, with hollow
        # square markers, and its legend says whose line it is on.
        same = next((other for other, x, y in drawn[ax] if (x, y) == (xs, ys) and xs), None)
        drawn[ax].append((label, xs, ys))
        if same is None:
            return ax.plot(xs, ys, marker="o", ms=3, label=label)[0]
        return ax.plot(
            xs, ys, ls="--", marker="s", ms=6, mfc="none", label=f"{label} (same bytes as {same})"
        )[0]

    for (label, rounds), dense in zip(runs, denses, strict=True):
        xs = [int(r["round"]) for r in rounds]
        up = [int(r["bytes_up"]) for r in rounds]
        down = [int(r["bytes_down"]) for r in rounds]
        # Uploads are what the runs compare, and differ; downloads of --compare-dense's runs
        # are the same model's, round for round.
        (line_up,) = ax_up.plot(xs, up, marker="o", ms=3, label=label)
        line_down = draw(ax_down, label, xs, down)
        plotted["upload"] += up + [d for _, d in dense]
        plotted["download"] += down
        if dense and not shared:
            ax_up.plot(*zip(*dense, strict=True), ls="--", lw=1, label=f"{label}: dense fp32")
        control = [
            (int(r["round"]), c) for r in rounds if (c := control_traffic(r.get("measurements")))
        ]
        if control:
            has_control = True
            what = f"{label}: control traffic (wire bytes, outside the rounds)"
            for ax, line, key, title in (
                (ax_up, line_up, "up_wire_bytes", "upload"),
                (ax_down, line_down, "down_wire_bytes", "download"),
            ):
                ys = [c[key] for _, c in control]
                ax.plot(
                    [x for x, _ in control], ys, ls=":", marker=".", ms=3,
                    c=line.get_color(), label=what,
                )  # fmt: skip
                plotted[title] += ys
    if shared and denses[0]:
        ax_up.plot(
            *zip(*denses[0], strict=True), ls="--", lw=1, c="0.4", label="dense fp32 (uncompressed)"
        )

    for ax, title in ((ax_up, "upload"), (ax_down, "download")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        # A run whose rounds all moved no bytes (every round abandoned) keeps a linear axis:
        # on a log one matplotlib would warn and draw an empty frame.
        _log_bytes_axis(ax.yaxis, plotted[title])
        ax.set_xlabel("round")
        unit = "payload bytes; control traffic: wire bytes" if has_control else "payload bytes"
        ax.set_ylabel(f"{unit} (all devices)")
        ax.set_title(f"{title} bytes per round")
        ax.grid(True, which="both", alpha=0.3)
        _legend_or_nothing(ax, bool(plotted[title]))
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_round_durations(runs: Sequence[Run], path: str | Path) -> Path:
    """Histograms of round durations: simulated seconds (when the run has a clock), the
    simulated seconds waited for a cohort before each round (when any round waited), and wall
    seconds."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    has_sim = any(r.get("sim_s") is not None for _, rounds in runs for r in rounds)
    panels = [("sim_s", "simulated seconds per round")] if has_sim else []
    if any(float(r.get("wait_s") or 0.0) > 0 for _, rounds in runs for r in rounds):
        panels.append(("wait_s", "simulated seconds waited before a round"))
    panels.append(("wall_s", "wall seconds per round"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), dpi=110)
    axes = list(axes) if len(panels) > 1 else [axes]
    for ax, (key, title) in zip(axes, panels, strict=True):
        values = {
            label: [float(r[key]) for r in rounds if r.get(key) is not None]
            for label, rounds in runs
        }
        pooled = [v for vs in values.values() for v in vs]
        if pooled:
            # One set of bins for every run of the panel: binned over its own range, each run
            # drew bars of another width, which side by side compared nothing.
            count = min(30, max(5, max(len(vs) for vs in values.values())))
            lo, hi = min(pooled), max(pooled)
            # Durations within 1 % of each other (a clock that gives every round the same
            # time, up to rounding) are one bar over a 2 % wide axis: binned over their own
            # spread of 1e-7 s, the axis' tick labels ran into one another.
            floor = 0.01 * max(abs(lo), abs(hi))
            span = (lo + hi) / 2 - floor, (lo + hi) / 2 + floor
            edges = np.histogram_bin_edges(
                pooled, bins=count, range=span if hi - lo < floor else None
            )
        for label, vs in values.items():
            if vs:
                ax.hist(vs, bins=edges, alpha=0.6, label=label)
        ax.set_xlabel("seconds")
        # At most 5 ticks: equal durations (every round timed the same, `--deadline 0.01`)
        # span 2 % of the axis, whose default 9 or more labels ("0.009900", "0.009925", ...)
        # ran into one another (stop 48, helper-407).
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        # Plain tick labels: nearly equal durations had an offset ("1e-6+2.052e-1") at the
        # axis' end that the reader had to add to every tick.
        ax.ticklabel_format(axis="x", useOffset=False)
        ax.set_ylabel("rounds")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # a count of rounds
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        _legend_or_nothing(ax, bool(pooled))
    fig.tight_layout()
    return _save(fig, plt, path)


def _legend_or_nothing(ax: Any, drawn: bool) -> None:
    """The legend of a panel that shows something; else "no round to draw" in its middle (a
    run with no round: a legend of no bars made matplotlib warn)."""
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no round to draw", transform=ax.transAxes, ha="center", va="center")


def _save(fig: Any, plt: Any, path: str | Path) -> Path:
    from .report import replace_atomically

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        replace_atomically(p, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return p


def plot_runs(runs: Sequence[Run], out: str | Path, title: str = "") -> list[Path]:
    """Every plot of `runs` into the folder `out`: ``accuracy_vs_upload_bytes.png`` (titled
    `title`), ``bytes_per_round.png`` and ``round_durations.png``; the paths written.

    How ``plume sim`` draws a run's plots (completed or interrupted) and ``plume sim report``
    (`rebuild_run_dir`) redraws them, so that a redraw is the run's bytes."""
    from .report import plot_accuracy_vs_bytes

    root = Path(out)
    accuracy = plot_accuracy_vs_bytes(runs, root / "accuracy_vs_upload_bytes.png", title)
    return [accuracy, *_plot_extras(runs, root)]


def _plot_extras(runs: Sequence[Run], root: Path) -> list[Path]:
    return [
        plot_bytes_per_round(runs, root / "bytes_per_round.png"),
        plot_round_durations(runs, root / "round_durations.png"),
    ]


def plot_run_dir(run_dir: str | Path) -> list[Path]:
    """Write ``bytes_per_round.png`` and ``round_durations.png`` into `run_dir`, from its runs."""
    root = Path(run_dir)
    return _plot_extras(load_runs(root), root)


def compare_table(runs: Sequence[Run]) -> str:
    """One line per run, in the plots' order: rounds, final accuracy (the last evaluated
    round's), total upload bytes and the upload's ratio to dense fp32, so that the runs of a
    sweep folder compare at a glance (`plume sim report` prints it)."""
    from .report import format_bytes

    head = f"{'run':<24} {'rounds':>6} {'final accuracy':>14} {'upload bytes':>12} "
    head += f"{'ratio vs dense':>14}"
    lines = [head, "-" * len(head)]
    for label, rounds in runs:
        accs = [float(r["accuracy"]) for r in rounds if r.get("accuracy") is not None]
        up = sum(int(r["bytes_up"]) for r in rounds)
        dense = sum(int(r["dense_up"]) for r in rounds if _is_number(r.get("dense_up")))
        acc = f"{accs[-1]:.4f}" if accs else "-"
        ratio = f"{dense / up:.1f}x" if up and dense else "-"
        lines.append(f"{label:<24} {len(rounds):>6} {acc:>14} {format_bytes(up):>12} {ratio:>14}")
    return "\n".join(lines)


def interrupted_notes(run_dir: str | Path) -> list[str]:
    """One line per run in `run_dir` stopped early (Ctrl-C, SIGTERM, a closed stdout, an
    error after some rounds: its rounds.json summary has
    `"interrupted": true`), in the plots' order: how far it got, and that its figures are
    those of its last finished round, not of a completed run."""
    found = read_run_dir(run_dir)
    empty = {_empty_note(label, rounds) for label, rounds in found.runs}
    return [note for note in found.notes if note not in empty and note not in found.ray_clusters]


def _empty_note(label: str, rounds: list[dict[str, Any]]) -> str | None:
    return None if rounds else f"{label}: no round finished, nothing to draw"


def _interrupted_note(label: str, summary: Any) -> str | None:
    if not isinstance(summary, dict) or summary.get("interrupted") is not True:
        return None
    done, planned = summary.get("rounds"), summary.get("rounds_planned")
    of = f" of {planned}" if isinstance(planned, int) else ""
    return (
        f"{label}: interrupted after {done}{of} rounds; its figures stop at round {done}, "
        "the last that finished"
    )


def rebuild_run_dir(run_dir: str | Path) -> list[Path]:
    """Every plot of a finished run, from its ``rounds.json`` files alone, byte for byte as
    ``plume sim`` wrote them (`plot_runs`: same runs, order and title) when the folder holds
    only that run (a subfolder an earlier run left there is drawn too). The CSV and JSON are
    left as they are (`rebuild_rounds_csv` writes rounds.csv again). Raises `RunDirError` for
    a missing or unreadable run folder, before writing anything."""
    found = read_run_dir(run_dir)
    return plot_runs(found.runs, found.root, found.title)


def rebuild_rounds_csv(found: RunDir) -> list[Path]:
    """Write each run's ``rounds.csv`` beside its ``rounds.json``, from the rounds that file
    holds (`report.rounds_csv`): byte for byte the file the run wrote. The paths written, in
    the order of `found.runs`."""
    from .report import replace_atomically, rounds_csv

    def writer(text: str) -> Callable[[Path], object]:
        return lambda tmp: tmp.write_text(text, newline="")

    paths = []
    for path, (_, rounds) in zip(found.files, found.runs, strict=True):
        target = path.parent / "rounds.csv"
        replace_atomically(target, writer(rounds_csv(rounds)))
        paths.append(target)
    return paths


def missing_ledgers(found: RunDir) -> list[str]:
    """One line per run of `found` whose folder has no ``ledger.csv``: rounds.json holds the
    ledger's totals only, not the per-device rows the file is made of, so it cannot be
    rebuilt."""
    return [
        f"{label}: no {path.parent / 'ledger.csv'}; it cannot be rebuilt (rounds.json has the "
        "ledger's totals, not its per-device rows)"
        for path, (label, _) in zip(found.files, found.runs, strict=True)
        if not (path.parent / "ledger.csv").is_file()
    ]
