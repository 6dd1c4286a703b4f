"""FedScale-format device traces, loaded strictly from JSON or CSV (never from a pickle).

Two kinds of trace drive the simulated population when given (`PopulationConfig`'s
`capacity_trace` / `behaviour_trace`, `plume sim --capacity-trace / --behaviour-trace`):

- a capacity trace: client id -> ``{"computation": ms per sample, "communication": kbit/s}``,
  as FedScale's ``client_device_capacity`` holds, from JSON (that dict) or CSV (columns
  ``client_id,computation,communication``);
- a behaviour (availability) trace: client id -> ``{"active": [s, ...], "inactive": [s, ...],
  "finish_time": s, "duration": s, "model": str}``, as FedScale's ``client_behave_trace``
  holds, from JSON.

FedScale ships both as Python pickles. Plume never unpickles (loading a pickle runs whatever
code the file names): convert them yourself, on a file you trust, as docs/traces.md shows.

Every value is checked (capacity figures finite and in [1e-9, 1e12], integer times, sorted
and non-overlapping windows, equal active/inactive lengths, windows inside finish_time, unique
client ids, a size cap) and a refusal names the file, the client id and the field, quoting
any value shortened. A loaded trace is a handful of
flat numpy arrays (the windows in CSR form: one offsets array and one array of window
bounds), so a population of 10^6 or more devices drawing from it stays lazy; each trace
keeps the SHA-256 of its file for the run's record.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import reprlib
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "MAX_TRACE_BYTES",
    "MAX_TRACE_TIME_S",
    "MIN_CAPACITY_FIGURE",
    "MAX_CAPACITY_FIGURE",
    "KBIT",
    "TRAINING_PASSES",
    "TraceError",
    "CapacityTrace",
    "BehaviourTrace",
    "load_capacity_trace",
    "load_behaviour_trace",
]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]

# A trace file larger than this is refused before it is read: Python's json module needs
# several times the file's size in memory while it parses (a 512 MiB file, some 4-6 GiB).
MAX_TRACE_BYTES = 512 * 2**20
# Largest time (seconds) a behaviour trace may state: 10^12 s is some 31,700 years, and keeps
# every sum of finish times the lookup forms far inside int64 (and exact in float64).
MAX_TRACE_TIME_S = 10**12
# Range of a capacity trace's computation (ms per sample) and communication (kbit/s). Far
# outside any phone's figures (10^-9 ms is a femtosecond a sample, 10^12 kbit/s a petabit a
# second): a value outside is a unit mistake, and the bounds keep every speed derived from a
# figure finite and above zero (1000 / (3 x 1e308) underflows to 0 samples/s, 1e308 x 1024
# overflows to inf bits/s) for a trace_compute_scale from 1e-290 to 10^6 (PopulationConfig
# takes a scale in [10^-6, 10^6]).
MIN_CAPACITY_FIGURE = 1e-9
MAX_CAPACITY_FIGURE = 1e12
# FedScale's "kbit": it sizes a model update as bytes / 1024 * 8, so one of its kbit is
# 1024 bits, and its communication figure is in 1024-bit units per second.
KBIT = 1024.0
# FedScale's computation figure is an inference (forward pass) latency, ms per sample; it
# counts a training step as 3 of them (the backward pass costs about twice the forward).
TRAINING_PASSES = 3.0

_CAPACITY_FIELDS = ("computation", "communication")
_BEHAVIOUR_REQUIRED = ("active", "inactive", "finish_time")
_BEHAVIOUR_OPTIONAL = ("duration", "model")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_CSV_HEADER = ["client_id", "computation", "communication"]

# A refusal quotes the offending value, client id or key shortened (a 10^5-element list or a
# 10^5-character id made a message of 300,000 characters): strings to 60 characters, integers
# to 40 digits, lists and objects to 4 items and 2 levels.
_SHORT = reprlib.Repr()
_SHORT.maxstring = 60
_SHORT.maxlong = 40
_SHORT.maxother = 60
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 4
_SHORT.maxlevel = 2


def _show(value: object) -> str:
    """`value`'s repr, shortened (`_SHORT`): what a refusal quotes."""
    return _SHORT.repr(value)


class TraceError(ValueError):
    """A trace file is missing, too large, malformed, or holds a value out of range."""


@dataclass(frozen=True, eq=False)
class CapacityTrace:
    """Per-entry compute and network capacity, in FedScale's units, in file order.

    `computation_ms`: ms per sample of a forward pass on FedScale's reference model;
    `communication_kbps`: FedScale kbit/s (1024 bits), used for both directions."""

    path: str
    sha256: str
    computation_ms: F64
    communication_kbps: F64

    def __len__(self) -> int:
        return int(self.computation_ms.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by the trace's arrays."""
        return int(self.computation_ms.nbytes + self.communication_kbps.nbytes)

    def compute_sps(self, entries: I64, scale: float = 1.0) -> F64:
        """Training samples/s of `entries`: scale x 1000 / (3 x computation ms)."""
        return scale * 1000.0 / (TRAINING_PASSES * self.computation_ms[entries])

    def bandwidth_bps(self, entries: I64) -> F64:
        """Bits/s of `entries`, one figure for both directions: communication x 1024."""
        return self.communication_kbps[entries] * KBIT


@dataclass(frozen=True, eq=False)
class BehaviourTrace:
    """Per-entry availability windows, read cyclically with each entry's `finish_time`.

    Entry k's windows are ``[active[j], inactive[j]]`` (both ends included, as FedScale's
    check is) for j in ``offsets[k] .. offsets[k+1]-1``, sorted and not overlapping; a device
    on entry k is available at time t iff ``t mod finish_time[k]`` falls in one of them.
    Held as CSR: `offsets` (int64[n+1]) and the window bounds shifted onto one time line
    (`_lo`, `_hi`: entry k's times plus ``base[k]``, the sum of the earlier entries'
    finish_time + 1), so one `searchsorted` answers a whole batch of devices."""

    path: str
    sha256: str
    finish_time: I64
    offsets: I64
    _base: I64 = field(repr=False)
    _lo: I64 = field(repr=False)
    _hi: I64 = field(repr=False)

    def __len__(self) -> int:
        return int(self.finish_time.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by the trace's arrays."""
        arrays = (self.finish_time, self.offsets, self._base, self._lo, self._hi)
        return int(sum(a.nbytes for a in arrays))

    def windows(self, entry: int) -> list[tuple[int, int]]:
        """Entry `entry`'s (active, inactive) windows, in seconds of its cycle."""
        a, b = int(self.offsets[entry]), int(self.offsets[entry + 1])
        base = int(self._base[entry])
        return [
            (int(lo) - base, int(hi) - base)
            for lo, hi in zip(self._lo[a:b], self._hi[a:b], strict=True)
        ]

    def is_active(self, entries: I64, sim_time_s: float) -> B:
        """bool[n]: whether each of `entries` is inside a window at `sim_time_s` (>= 0)."""
        finish = self.finish_time[entries]
        # fmod is exact in float64, and every finish_time is an integer below 2^53. A window
        # [a, b] with integer ends holds x iff a <= floor(x) and ceil(x) <= b.
        norm = np.fmod(float(sim_time_s), finish.astype(np.float64))
        base = self._base[entries]
        lo_key = base + np.floor(norm).astype(np.int64)
        hi_key = base + np.ceil(norm).astype(np.int64)
        pos = np.searchsorted(self._lo, lo_key, side="right") - 1
        ok = pos >= self.offsets[entries]  # a window of this entry starts at or before t
        pos = np.maximum(pos, 0)
        return ok & (hi_key <= self._hi[pos])


# --- reading -----------------------------------------------------------------------------


def _read(path: str | os.PathLike[str], kind: str, max_bytes: int) -> tuple[str, bytes]:
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                # A FIFO or a device (/dev/zero) has no size to check before it is read.
                raise TraceError(f"{kind} trace {name}: not a regular file")
            size = st.st_size
            if size > max_bytes:
                raise TraceError(
                    f"{kind} trace {name}: the file is {size} bytes, over the {max_bytes}-byte "
                    f"cap ({max_bytes / 2**20:g} MiB; parsing needs several times that in "
                    "memory): split the trace or pass a larger max_bytes to the loader"
                )
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise TraceError(f"{kind} trace {name}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > max_bytes:  # grew while it was read
        raise TraceError(f"{kind} trace {name}: the file is over the {max_bytes}-byte cap")
    if not data.strip():
        raise TraceError(f"{kind} trace {name}: the file is empty")
    return name, data


def _text(name: str, kind: str, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TraceError(
            f"{kind} trace {name}: not UTF-8 text (byte {exc.start}): give the JSON or CSV "
            "conversion, not the pickle"
        ) from None


def _refuse_constant(token: str) -> Any:
    raise ValueError(f"{token} is not a number JSON allows")


def _json(name: str, kind: str, data: bytes) -> dict[str, Any]:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise ValueError(f"duplicate key {_show(key)}")
            out[key] = value
        return out

    text = _text(name, kind, data)
    try:
        doc = json.loads(text, object_pairs_hook=pairs, parse_constant=_refuse_constant)
    except RecursionError:
        raise TraceError(f"{kind} trace {name}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # json.JSONDecodeError is one; so are the hooks' refusals
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        where = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise TraceError(f"{kind} trace {name}: not valid JSON{where}: {reason}") from None
    if not isinstance(doc, dict):
        raise TraceError(
            f"{kind} trace {name}: the top level must be an object of client id -> entry, "
            f"got a JSON {type(doc).__name__}"
        )
    if not doc:
        raise TraceError(f"{kind} trace {name}: the trace is empty (no client)")
    for key in doc:
        if not key.strip():
            raise TraceError(f"{kind} trace {name}: a client id is empty")
    return doc


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _positive(where: str, fieldname: str, value: object) -> float:
    """A capacity figure: a finite number in [MIN_CAPACITY_FIGURE, MAX_CAPACITY_FIGURE]."""
    if not _is_number(value):
        raise TraceError(f"{where}: {fieldname} must be a number, got {_show(value)}")
    try:
        x = float(value)  # type: ignore[arg-type]  # checked just above
    except OverflowError:  # an integer of 309 digits or more, which JSON allows
        x = math.inf
    if not (math.isfinite(x) and x > 0):
        raise TraceError(f"{where}: {fieldname} must be finite and > 0, got {_show(value)}")
    if not MIN_CAPACITY_FIGURE <= x <= MAX_CAPACITY_FIGURE:
        raise TraceError(
            f"{where}: {fieldname} must be in [{MIN_CAPACITY_FIGURE:g}, "
            f"{MAX_CAPACITY_FIGURE:g}] (a unit mistake?), got {_show(value)}"
        )
    return x


def _time(where: str, fieldname: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TraceError(f"{where}: {fieldname} must be an integer (seconds), got {_show(value)}")
    if not 0 <= value <= MAX_TRACE_TIME_S:
        raise TraceError(
            f"{where}: {fieldname} must be in [0, {MAX_TRACE_TIME_S}] seconds, got {_show(value)}"
        )
    return value


def _fields(
    where: str, entry: object, required: tuple[str, ...], optional: tuple[str, ...]
) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise TraceError(f"{where}: an entry must be an object, got {_show(entry)}")
    missing = [k for k in required if k not in entry]
    if missing:
        raise TraceError(f"{where}: missing field {_show(missing[0])}")
    unknown = sorted(set(entry) - set(required) - set(optional))
    if unknown:
        raise TraceError(
            f"{where}: unknown field {_show(unknown[0])} (an entry has "
            f"{', '.join(required + optional)})"
        )
    return entry


def _capacity_json(name: str, data: bytes) -> tuple[list[float], list[float]]:
    doc = _json(name, "capacity", data)
    comp: list[float] = []
    comm: list[float] = []
    for cid, entry in doc.items():
        where = f"capacity trace {name}: client {_show(cid)}"
        e = _fields(where, entry, _CAPACITY_FIELDS, ())
        comp.append(_positive(where, "computation", e["computation"]))
        comm.append(_positive(where, "communication", e["communication"]))
    return comp, comm


def _capacity_csv(name: str, data: bytes) -> tuple[list[float], list[float]]:
    text = _text(name, "capacity", data)
    comp: list[float] = []
    comm: list[float] = []
    seen: set[str] = set()
    try:
        rows = csv.reader(io.StringIO(text, newline=""), strict=True)
        header = next(rows, None)
        if header is None or [h.strip() for h in header] != _CSV_HEADER:
            raise TraceError(
                f"capacity trace {name}: the first line must be the header "
                f"{','.join(_CSV_HEADER)}, got {','.join(header or [])!r:.80}"
            )
        for row in rows:
            line = rows.line_num
            if not row or row == [""]:
                continue  # a blank line
            if len(row) != 3:
                raise TraceError(
                    f"capacity trace {name}: line {line}: expected 3 columns "
                    f"({','.join(_CSV_HEADER)}), got {len(row)}"
                )
            cid = row[0].strip()
            if not cid:
                raise TraceError(f"capacity trace {name}: line {line}: the client_id is empty")
            if cid in seen:
                raise TraceError(
                    f"capacity trace {name}: line {line}: duplicate client_id {_show(cid)}"
                )
            seen.add(cid)
            where = f"capacity trace {name}: line {line}: client {_show(cid)}"
            for fieldname, cell, out in (
                ("computation", row[1], comp),
                ("communication", row[2], comm),
            ):
                if not _NUMBER.fullmatch(cell.strip()):
                    raise TraceError(f"{where}: {fieldname} must be a number, got {_show(cell)}")
                out.append(_positive(where, fieldname, float(cell)))
    except csv.Error as exc:
        raise TraceError(f"capacity trace {name}: not valid CSV: {exc}") from None
    if not comp:
        raise TraceError(f"capacity trace {name}: the trace is empty (no client)")
    return comp, comm


def _kind_of(name: str, kinds: tuple[str, ...], what: str) -> str:
    suffix = Path(name).suffix.lower().lstrip(".")
    if suffix not in kinds:
        raise TraceError(
            f"{what} trace {name}: give a {' or '.join('.' + k for k in kinds)} file "
            "(FedScale's pickles must be converted first: see docs/traces.md)"
        )
    return suffix


def load_capacity_trace(
    path: str | os.PathLike[str], *, max_bytes: int = MAX_TRACE_BYTES
) -> CapacityTrace:
    """A capacity trace from a .json (client id -> {computation, communication}) or a .csv
    (client_id,computation,communication) file; TraceError names what is wrong."""
    name = os.fspath(path)
    kind = _kind_of(name, ("json", "csv"), "capacity")
    name, data = _read(name, "capacity", max_bytes)
    comp, comm = (_capacity_json if kind == "json" else _capacity_csv)(name, data)
    return CapacityTrace(
        path=name,
        sha256=hashlib.sha256(data).hexdigest(),
        computation_ms=np.asarray(comp, dtype=np.float64),
        communication_kbps=np.asarray(comm, dtype=np.float64),
    )


def load_behaviour_trace(
    path: str | os.PathLike[str], *, max_bytes: int = MAX_TRACE_BYTES
) -> BehaviourTrace:
    """A behaviour trace from a .json file (client id -> {active, inactive, finish_time[,
    duration, model]}); TraceError names what is wrong."""
    name = os.fspath(path)
    _kind_of(name, ("json",), "behaviour")
    name, data = _read(name, "behaviour", max_bytes)
    doc = _json(name, "behaviour", data)
    finish: list[int] = []
    counts: list[int] = []
    lo: list[int] = []
    hi: list[int] = []
    for cid, entry in doc.items():
        where = f"behaviour trace {name}: client {_show(cid)}"
        e = _fields(where, entry, _BEHAVIOUR_REQUIRED, _BEHAVIOUR_OPTIONAL)
        end = _time(where, "finish_time", e["finish_time"])
        if end == 0:
            raise TraceError(f"{where}: finish_time must be > 0 (the length of its cycle), got 0")
        if "duration" in e:
            _time(where, "duration", e["duration"])
        if "model" in e and not isinstance(e["model"], str):
            raise TraceError(f"{where}: model must be a string, got {_show(e['model'])}")
        active, inactive = e["active"], e["inactive"]
        for fieldname, value in (("active", active), ("inactive", inactive)):
            if not isinstance(value, list):
                raise TraceError(
                    f"{where}: {fieldname} must be a list of seconds, got {_show(value)}"
                )
        if len(active) != len(inactive):
            raise TraceError(
                f"{where}: active has {len(active)} times and inactive {len(inactive)}: each "
                "window needs both"
            )
        if not active:
            # FedScale's own check divides by the number of windows: such an entry broke it.
            raise TraceError(f"{where}: no window (active and inactive are empty)")
        previous_end = -1
        for j, (a_raw, b_raw) in enumerate(zip(active, inactive, strict=True)):
            a = _time(where, f"active[{j}]", a_raw)
            b = _time(where, f"inactive[{j}]", b_raw)
            if b < a:
                raise TraceError(
                    f"{where}: window {j} ends before it starts: active {a} > inactive {b}"
                )
            if a < previous_end:
                raise TraceError(
                    f"{where}: windows must be sorted and must not overlap: window {j} starts at "
                    f"{a}, before window {j - 1} ends at {previous_end}"
                )
            if b > end:
                raise TraceError(
                    f"{where}: window {j} ends at {b}, after finish_time {end} (the cycle's length)"
                )
            previous_end = b
            lo.append(a)
            hi.append(b)
        finish.append(end)
        counts.append(len(active))
    finish_arr = np.asarray(finish, dtype=np.int64)
    # Each entry's times shifted past the previous entries' cycles (finish_time + 1 each), so
    # the windows of all entries are one sorted array.
    base = np.zeros(len(finish), dtype=np.int64)
    np.cumsum(finish_arr[:-1] + 1, out=base[1:])
    offsets = np.zeros(len(finish) + 1, dtype=np.int64)
    np.cumsum(np.asarray(counts, dtype=np.int64), out=offsets[1:])
    owner = np.repeat(base, counts)
    return BehaviourTrace(
        path=name,
        sha256=hashlib.sha256(data).hexdigest(),
        finish_time=finish_arr,
        offsets=offsets,
        _base=base,
        _lo=np.asarray(lo, dtype=np.int64) + owner,
        _hi=np.asarray(hi, dtype=np.int64) + owner,
    )


# --- a small cache, so a config that is checked and then run reads each file once ---------

_CACHE: dict[tuple[str, str, int, int], CapacityTrace | BehaviourTrace] = {}
_CACHE_SIZE = 4


def _cached(kind: str, path: str, loader: Callable[[str], Any]) -> Any:
    try:
        st = os.stat(path)
        key = (kind, os.path.realpath(path), st.st_size, st.st_mtime_ns)
    except OSError:
        return loader(path)  # its own error names the file
    hit = _CACHE.get(key)
    if hit is not None and hit.path == path:
        return hit
    trace = loader(path)
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = trace
    return trace


def cached_capacity_trace(path: str) -> CapacityTrace:
    """`load_capacity_trace(path)`, read again only when the file's size or mtime changed."""
    trace: CapacityTrace = _cached("capacity", path, load_capacity_trace)
    return trace


def cached_behaviour_trace(path: str) -> BehaviourTrace:
    """`load_behaviour_trace(path)`, read again only when the file's size or mtime changed."""
    trace: BehaviourTrace = _cached("behaviour", path, load_behaviour_trace)
    return trace
