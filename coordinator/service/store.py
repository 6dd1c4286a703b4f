"""The coordinator's SQLite store (WAL): devices, tasks, rounds, accepted updates, versions, ledger.

Every state change the service acknowledges is committed here first, in one transaction, so a
`kill -9` at any moment leaves a database from which the service resumes exactly (see
docs/operations.md, "Persistence and recovery"). Kept deliberately small: plain SQL, one
connection, explicit transactions.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import logging
import math
import os
import re
import secrets
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from protocol.messages import MAX_TRAIN_LOSS

from ._ratelimit import EveryFew

__all__ = [
    "Store",
    "StoreError",
    "DamagedRow",
    "RoundStateError",
    "TaskRow",
    "RoundRow",
    "UpdateRow",
    "PruneResult",
    "SCHEMA_VERSION",
    "LockHeld",
    "lock_path",
    "take_lock",
    "schema_version_problem",
    "schema_version_of",
    "table_names",
    "new_incarnation",
    "INCARNATION_KEY",
]

log = logging.getLogger("plume.coordinator")

# 1: no tasks.agg_state; 2: no updates.pruned_len / pruned_sha256; 3: no versions.params (a
# task stored then keeps no initial model); 4: no updates.train_loss (its accepted updates
# carry no training loss). Each migrates on open.
SCHEMA_VERSION = 5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    public_key BLOB NOT NULL,
    registered_unix REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    task_id INTEGER PRIMARY KEY AUTOINCREMENT,
    config_json TEXT NOT NULL,
    state TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT -1,
    params BLOB,
    residual BLOB,
    agg_state BLOB,
    digest TEXT NOT NULL DEFAULT '',
    created_unix REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    task_id INTEGER NOT NULL,
    version INTEGER NOT NULL,
    round_id INTEGER,
    delta_frame BLOB,
    digest TEXT NOT NULL,
    created_unix REAL NOT NULL,
    params BLOB,
    PRIMARY KEY (task_id, version)
);
CREATE TABLE IF NOT EXISTS rounds (
    round_id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    base_version INTEGER NOT NULL,
    selected_json TEXT NOT NULL,
    target INTEGER NOT NULL,
    min_reports INTEGER NOT NULL,
    opened_unix REAL NOT NULL,
    deadline_unix REAL NOT NULL,
    closed_unix REAL,
    version_after INTEGER,
    measurements_json TEXT NOT NULL DEFAULT '{}',
    UNIQUE (task_id, seq)
);
CREATE TABLE IF NOT EXISTS updates (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    round_id INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    frame BLOB NOT NULL,
    accepted_unix REAL NOT NULL,
    pruned_len INTEGER,
    pruned_sha256 BLOB,
    train_loss REAL,
    UNIQUE (round_id, device_id)
);
CREATE TABLE IF NOT EXISTS ledger (
    round_id INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    direction TEXT NOT NULL,
    payload_bytes INTEGER NOT NULL,
    wire_bytes INTEGER NOT NULL,
    dense_bytes INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    PRIMARY KEY (round_id, device_id, direction)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nonces (
    device_id TEXT NOT NULL,
    nonce TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    PRIMARY KEY (device_id, nonce)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS nonces_ts ON nonces (ts_ms);
CREATE INDEX IF NOT EXISTS rounds_task_state ON rounds (task_id, state);
"""


@dataclass(frozen=True, slots=True)
class TaskRow:
    task_id: int
    config: dict[str, Any]
    state: str
    version: int
    digest: str


@dataclass(frozen=True, slots=True)
class RoundRow:
    round_id: int
    task_id: int
    seq: int
    state: str
    base_version: int
    selected: list[str]
    target: int
    min_reports: int
    opened_unix: float
    deadline_unix: float
    closed_unix: float | None
    version_after: int | None
    measurements: dict[str, Any]


@dataclass(frozen=True, slots=True)
class UpdateRow:
    seq: int
    round_id: int
    device_id: str
    idempotency_key: str
    frame: bytes
    # The device's mean local training loss sent with the upload (`?train_loss=`), or None.
    train_loss: float | None = None


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What one `Store.prune_frames` call did: frames emptied, and their bytes (now free pages
    SQLite reuses; the file itself does not shrink without VACUUM)."""

    frames: int
    bytes_freed: int


# The frames `prune_frames` empties per transaction: each commit is short, so uploads to the
# open round wait for a batch at most, never for a whole backlog.
_PRUNE_BATCH = 256

# How long the checkpoint after a prune (`Store._truncate_wal`) waits for another connection
# before it leaves the -wal to the next prune (the busy timeout is 5 s otherwise).
_WAL_TRUNCATE_WAIT_MS = 200

# SQLite's integers are 64-bit: a Python int outside binds as an OverflowError.
_SQL_INT_MAX = 2**63 - 1


def _sql_int(n: int) -> int:
    """`n` clamped to SQLite's integer range (a bound in a query: the same rows match)."""
    return max(-_SQL_INT_MAX - 1, min(n, _SQL_INT_MAX))


# Version numbers `first_missing_frame` reads per query.
_VERSION_PAGE = 4096

# Rows whose frame is still stored: the partial index keeps the search for frames to prune to
# the rows not yet pruned (a pruned table of millions of rows is not rescanned at every close).
_UNPRUNED_INDEX = (
    "CREATE INDEX IF NOT EXISTS updates_unpruned ON updates (round_id) WHERE pruned_len IS NULL"
)


# The task state a round's close writes: it finishes an active task ('done'), and otherwise
# leaves the stored state alone. The close reads the task's state on a worker thread before
# committing; a pause or resume committed in between must not be overwritten by what it read.
_CLOSE_STATE = "CASE WHEN ? = 'done' AND state = 'active' THEN 'done' ELSE state END"

_ROUND_COLS = (
    "round_id, task_id, seq, state, base_version, selected_json, target, min_reports, "
    "opened_unix, deadline_unix, closed_unix, version_after, measurements_json"
)


# The `meta` key of the nonce horizon (`Store.nonce_horizon_ms`): a row, not a column, so a
# store written before it opens as it is (no row: no horizon yet), and an older coordinator
# that opens this one ignores it.
_NONCE_HORIZON = "nonce_horizon_ms"
# ... and of the newest timestamp of a nonce a prune deleted (`Store.clamp_nonce_horizon`): no
# row in a store written before it was kept, or before its first prune.
_NONCE_FORGOTTEN = "nonce_forgotten_ms"

# The `meta` key of the database's incarnation (`Store.incarnation`): 16 random bytes in hex,
# made with the database, given to a database without one when it is opened (a store an
# older coordinator wrote), and made anew by `plume coordinator restore`. Devices key what
# they keep per round and task id on it: a database whose ids are handed out again (a new
# or reset one at the same address, or one restored from a backup, whose counters rewind)
# has another. A row, not a column: an older coordinator that opens the store ignores it.
INCARNATION_KEY = "incarnation"
_INCARNATION = re.compile(r"[0-9a-f]{32}")


def new_incarnation() -> str:
    """A new database incarnation: 16 random bytes, as 32 lower-case hex digits."""
    return secrets.token_hex(16)


# The schema versions `_open` migrates to SCHEMA_VERSION in place, and the columns that
# migration adds where they are missing: (table, column).
_MIGRATED_FROM = ("1", "2", "3", "4")
_ADDED_BY_MIGRATION = frozenset(
    {
        ("tasks", "agg_state"),
        ("updates", "pruned_len"),
        ("updates", "pruned_sha256"),
        ("updates", "train_loss"),
        ("versions", "params"),
    }
)


def _write_meta_ms(db: sqlite3.Connection, key: str, value_ms: int) -> None:
    db.execute(
        "INSERT INTO meta(key, value) VALUES (?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
        (key, str(value_ms)),
    )


def _warn_horizon_ahead(path: str, ahead_ms: int, lowered_ms: int, now_ms: int, when: str) -> None:
    log.warning(
        "the nonce horizon of the database %s was %.1f s ahead of the clock (%s): a nonce prune "
        "ran while the clock was ahead, and it has been set back since. Lowered to %.1f s "
        "before now (%s), so correctly timestamped signed requests are accepted again",
        path,
        ahead_ms / 1000,
        when,
        (now_ms - lowered_ms) / 1000,
        "just after the newest timestamp whose nonce was pruned"
        if lowered_ms < now_ms
        else "the newest pruned timestamp is not before now, or is unknown",
    )


def _stored_forgotten(row: tuple[Any, ...] | None, path: str) -> int | None:
    """The newest pruned nonce timestamp a `meta` row holds; None for no row or a value that
    is not an integer of -1 or more (a hand edit, with a warning): unknown."""
    if row is None:
        return None
    text = str(row[0])
    digits = text[1:] if text.startswith("-") else text
    if digits.isascii() and digits.isdigit() and len(text) < 20 and int(text) >= -1:
        return int(text)
    log.warning(
        "the database %s holds a %s of %r, not a time in ms: ignored",
        path,
        _NONCE_FORGOTTEN,
        text[:40],
    )
    return None


def _stored_horizon(row: tuple[Any, ...] | None, path: str) -> int:
    """The nonce horizon a `meta` row holds: 0 for none. A value that is not a decimal
    integer (a hand edit) counts as none, with a warning."""
    if row is None:
        return 0
    text = str(row[0])
    if text.isascii() and text.isdigit() and len(text) < 20:
        return int(text)
    log.warning(
        "the database %s holds a %s of %r, not a time in ms: ignored (a replay of a request "
        "whose nonce was pruned is refused again after the next prune)",
        path,
        _NONCE_HORIZON,
        text[:40],
    )
    return 0


class DamagedRow(ValueError):
    """A stored row whose JSON column does not parse, or is not the shape this code writes (a
    hand edit, another program's write). Reading it changes nothing; the row stays as stored.

    table, column: where; key: the row's id (task or round); task_id: the task it belongs to.
    """

    def __init__(self, table: str, key: int, task_id: int, column: str, why: str) -> None:
        what = "task" if table == "tasks" else "round"
        super().__init__(f"{what} {key}: its stored {column} does not parse ({why})")
        self.table = table
        self.key = key
        self.task_id = task_id
        self.column = column


class RoundStateError(RuntimeError):
    """A round write its stored record forbids (`Store.set_round_state`, `Store.publish`,
    `Store.abandon`): the round is not in the store, or is finished (committed or abandoned:
    its record is final), or would go back (aggregating -> open), or is published without
    being frozen first, or is a round of another task than the one the write names. Raised
    inside the write's transaction, so nothing of the write is stored.

    round_id: the round; state: its stored state (None: no such round).
    """

    def __init__(self, round_id: int, state: str | None, refused: str) -> None:
        if state is None:
            super().__init__(f"no round {round_id} is in the store: {refused}")
        else:
            super().__init__(f"round {round_id} is {state} in the store: {refused}")
        self.round_id = round_id
        self.state = state


# A round's states (protocol.names.RoundState): open -> aggregating -> committed | abandoned.
_ROUND_STATES = ("open", "aggregating", "committed", "abandoned")


def _stored_round_state(
    db: sqlite3.Connection, round_id: int, task_id: int | None = None
) -> str | None:
    """A round's stored state, read inside the caller's transaction (None: no such round).
    With `task_id`, a round of another task raises `RoundStateError` naming both tasks (a
    publish or abandonment under the wrong task would store one task's state, model or
    version against another's round)."""
    row = db.execute("SELECT task_id, state FROM rounds WHERE round_id=?", (round_id,)).fetchone()
    if row is None:
        return None
    owner, state = int(row[0]), str(row[1])
    if task_id is not None and owner != task_id:
        raise RoundStateError(
            round_id, state, f"it is a round of task {owner}, not of task {task_id}"
        )
    return state


def _json_column(text: Any, kind: type, table: str, key: int, task_id: int, column: str) -> Any:
    """The JSON value of a stored column, which must be a `kind` (list or dict)."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError) as exc:  # JSONDecodeError, or a non-text value
        raise DamagedRow(table, key, task_id, column, f"{type(exc).__name__}: {exc}") from None
    if not isinstance(value, kind):
        raise DamagedRow(
            table, key, task_id, column, f"a JSON {type(value).__name__}, not a {kind.__name__}"
        )
    return value


def _stored_loss(value: Any) -> float | None:
    """A stored `updates.train_loss` as the upload's loss: None for none (NULL) and for what
    no accepted upload carries (not a finite number in [0, MAX_TRAIN_LOSS]: a hand edit),
    which a round's figures then leave out, as an upload without a loss."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) and 0.0 <= value <= MAX_TRAIN_LOSS else None


def _round(row: tuple[Any, ...]) -> RoundRow:
    """A rounds row; raises `DamagedRow` if its selected or measurements JSON does not parse."""
    selected = _json_column(row[5], list, "rounds", row[0], row[1], "selected_json")
    if not all(isinstance(d, str) for d in selected):
        raise DamagedRow("rounds", row[0], row[1], "selected_json", "not a list of device ids")
    return RoundRow(
        round_id=row[0],
        task_id=row[1],
        seq=row[2],
        state=row[3],
        base_version=row[4],
        selected=selected,
        target=row[6],
        min_reports=row[7],
        opened_unix=row[8],
        deadline_unix=row[9],
        closed_unix=row[10],
        version_after=row[11],
        measurements=_json_column(row[12], dict, "rounds", row[0], row[1], "measurements_json"),
    )


def _task(row: tuple[Any, ...]) -> TaskRow:
    """A tasks row (id, config, state, version, digest); `DamagedRow` if its config does not
    parse."""
    config = _json_column(row[1], dict, "tasks", row[0], row[0], "config_json")
    return TaskRow(row[0], config, row[2], row[3], row[4])


# The connection the checks read the file through (a `file:...?mode=ro` URI): bound here, so
# that it stays read-only whatever opens the store's own connection.
_connect_read_only = functools.partial(sqlite3.connect, uri=True, check_same_thread=False)


def _file_size(path: str) -> int | None:
    """The size of the file at `path`, None when there is none."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def _wal_marked(path: str) -> bool:
    """Whether the SQLite file at `path` is in WAL mode (its header's read and write format
    versions, bytes 18 and 19, are 2), read from the header, not through SQLite."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return False
    return head[:16] == b"SQLite format 3\x00" and head[18:20] == b"\x02\x02"


def table_names(conn: sqlite3.Connection) -> set[str]:
    """The tables of the database `conn` (SQLite's error for a file it cannot read)."""
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _schema_columns() -> dict[str, tuple[str, ...]]:
    """Every table `_SCHEMA` creates and its columns, as SQLite reads them."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(_SCHEMA)
        names = sorted(t for t in table_names(conn) if not t.startswith("sqlite_"))
        return {t: tuple(r[1] for r in conn.execute(f"PRAGMA table_info({t})")) for t in names}
    finally:
        conn.close()


# What a store of this schema version holds (read once, at import).
_SCHEMA_COLUMNS = _schema_columns()


def _missing_schema(conn: sqlite3.Connection, tables: set[str], found: str) -> list[str]:
    """The tables and columns of this coordinator's schema the Plume database `conn` (its
    tables: `tables`, its schema version: `found`) lacks: damage or a hand edit. A current
    store must have all of them; an older one, which `_open` migrates, may lack the columns
    its migration adds, and a table (created empty, as before)."""
    current = found == str(SCHEMA_VERSION)
    missing: list[str] = []
    for table, columns in _SCHEMA_COLUMNS.items():
        if table not in tables:
            if current:
                missing.append(f"table {table}")
            continue
        have = {r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')}
        missing.extend(
            f"column {table}.{column}"
            for column in columns
            if column not in have and (current or (table, column) not in _ADDED_BY_MIGRATION)
        )
    return missing


class StoreError(RuntimeError):
    """The database cannot be used by this coordinator: not a SQLite file, corrupt, read-only,
    another application's database, or written by a newer schema. Nothing was written to it
    nor to its -wal (the checks read through a read-only connection); only a hot rollback
    journal, which SQLite rolls back before anyone reads the file, was rolled back."""


# The meta row `Store.probe_write` inserts and deletes in one transaction: never left behind.
_PROBE_KEY = "plume_write_probe"


def _no_space(path: str) -> str:
    """The sentence for a file system with no space left, naming the file that needed it."""
    folder = os.path.dirname(os.path.realpath(path)) or "."
    return (
        f"no space left on the file system of {path} (see `df {folder}`); free some space "
        "and start again"
    )


def _out_of_space(path: str, exc: sqlite3.Error) -> bool:
    """Whether SQLite's error `exc` on the database `path` is a full file system: SQLITE_FULL
    ("database or disk is full"), or an I/O error (SQLite's "disk I/O error" when it cannot
    grow its -shm or -wal file) while the file system of `path` has no block left for this
    user."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name == "SQLITE_FULL" or "database or disk is full" in str(exc):
        return True
    if not (name.startswith("SQLITE_IOERR") or "disk I/O error" in str(exc)):
        return False
    try:
        fs = os.statvfs(os.path.dirname(os.path.realpath(path)) or ".")
    except OSError:
        return False
    return fs.f_bavail == 0


def _setup_error(path: str, exc: sqlite3.Error) -> StoreError:
    """A sentence for a database SQLite refuses while it is opened and checked."""
    text = str(exc)
    if _out_of_space(path, exc):
        # Else "disk I/O error", which points at the hardware (s25/ops finding 9).
        why = f"{_no_space(path)} ({text})"
    elif "readonly" in text or "read-only" in text:
        why = (
            "it is read-only (the coordinator commits every accepted upload; make the file, "
            "its -wal/-shm files and its folder writable)"
        )
    elif "not a database" in text or "malformed" in text:
        why = (
            f"it is not a SQLite database or it is corrupt ({text}); check that the path "
            "names the coordinator's database (not, say, its config file), or restore a backup"
        )
    else:
        why = text
    return StoreError(f"cannot use the database {path}: {why}")


def schema_version_problem(found: str, newer: str) -> str | None:
    """Why a database whose meta table says schema version `found` cannot be used, or None
    when this coordinator reads it (as is, or migrating it). `newer`: what to do when it
    was written by a newer Plume. One check for `Store` and `plume coordinator restore`."""
    if found in _MIGRATED_FROM + (str(SCHEMA_VERSION),):
        return None
    if found.isdigit() and int(found) > SCHEMA_VERSION:
        return (
            f"its schema version {found!r} is newer than this coordinator's {SCHEMA_VERSION} "
            f"({newer})"
        )
    return f"its schema version {found!r} is not one this coordinator reads (1 to {SCHEMA_VERSION})"


def schema_version_of(conn: sqlite3.Connection, tables: set[str]) -> str | None:
    """The schema version the `meta` table of the database `conn` (its tables: `tables`)
    holds, or None when it has none: no `meta` table, one without Plume's `key` and `value`
    columns, or no version row. A file with tables and no version is another application's
    (Chrome's History has a `meta(key, value)` table). One rule for `Store` and `plume
    coordinator backup`/`restore`; SQLite's errors (a corrupt file) are raised."""
    if "meta" not in tables:
        return None
    columns = {r[1] for r in conn.execute("PRAGMA table_info(meta)")}
    if not {"key", "value"} <= columns:
        return None
    row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return None if row is None else str(row[0])


def lock_path(db_path: str | Path) -> str:
    """The lock file of the database at `db_path`: beside the file the path resolves to, so
    a symlink to the database and the database itself name one lock."""
    return os.path.realpath(os.path.expanduser(os.fspath(db_path))) + ".lock"


def _create_private(db_path: str) -> None:
    """Create the new database file at `db_path` (the file it resolves to) empty and readable
    by its owner alone (0600, whatever the umask), before SQLite opens it: SQLite creates a
    missing file 0644 under the usual umask 022, and gives the -wal and -shm it makes beside
    the file the file's own permissions. The store holds every device's update frames, train
    losses and ledger rows (s45/privacy finding 1). A file that exists is left as it is; one
    that cannot be created is left to SQLite, whose error `Store` reports."""
    if db_path == ":memory:":  # SQLite's in-memory database: no file
        return
    real = os.path.realpath(db_path)
    if os.path.lexists(real):
        return
    with contextlib.suppress(OSError):
        os.close(os.open(real, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def others_may_read(db_path: str | Path) -> str | None:
    """A sentence saying that users other than the owner may read the database at `db_path`
    (a group or other bit on the file, its -wal or -shm: made 0644 before s45/privacy finding
    1, or copied so), naming the files, the file's mode and the fix; None when none is. The
    files are the operator's and left as they are (a group may be meant): `serve` logs it
    as a WARNING at start, `restore` prints it as a note."""
    db = Path(os.path.expanduser(os.fspath(db_path)))
    real = os.path.realpath(db)  # SQLite's -wal and -shm lie beside the file a symlink names
    shown: list[str] = []
    modes: list[int] = []
    for path in (db, Path(f"{real}-wal"), Path(f"{real}-shm")):
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:
            continue
        if mode & 0o077:
            shown.append(str(path))
            modes.append(mode)
    if not shown:
        return None
    return (
        f"the database {shown[0]} may be read by other users (mode {modes[0]:04o}), and with "
        f"it every device's updates and ledger rows; chmod 600 {' '.join(shown)}"
    )


class LockHeld(RuntimeError):
    """Another process holds the database's lock; `holder` is the pid it wrote there."""

    def __init__(self, path: str, holder: str) -> None:
        super().__init__(f"{path} is locked by pid {holder}")
        self.holder = holder


def take_lock(db_path: str | Path) -> int:
    """Take the advisory lock `serve` (`Store(exclusive=True)`) and `restore` hold on the
    database at `db_path` (`lock_path`), and write this process's pid in it. Returns the
    open descriptor: closing it (or the process ending, `kill -9` included) drops the lock.
    `LockHeld` when another process holds it; `StoreError` when the file cannot be created."""
    path = lock_path(db_path)
    existed = os.path.lexists(path)
    try:
        # 0600, as the database beside it (`Store`): it holds a pid only, but nothing for
        # other users to read (s45/privacy finding 1; it was 0644).
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise StoreError(f"cannot use the database {db_path}: {_no_space(path)}") from exc
        raise StoreError(
            f"cannot use the database {db_path}: cannot create its lock file {path} "
            f"({exc.strerror or exc}); make its folder writable"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise LockHeld(path, holder) from exc
    # The pid of whoever holds it now, not of a coordinator that stopped.
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError as exc:
        # A full file system (s25/ops finding 9): before, "[Errno 28] No space left on
        # device", naming no file, and an empty lock file left behind. One this start
        # created is removed (while held: nobody else can have taken it meanwhile).
        if not existed:
            with contextlib.suppress(OSError):
                os.unlink(path)
        os.close(fd)
        why = (
            _no_space(path)
            if exc.errno == errno.ENOSPC
            else f"cannot write its lock file {path} ({exc.strerror or exc})"
        )
        raise StoreError(f"cannot use the database {db_path}: {why}") from exc
    return fd


class Store:
    """One SQLite database in WAL mode. Thread-safe through one lock (writes are short).

    Opening checks the file before writing anything: a newer schema version, another
    application's database, a corrupt or read-only file raise `StoreError`.
    """

    def __init__(self, path: str | Path, *, exclusive: bool = False) -> None:
        """Open (or create) the store at `path`.

        exclusive: hold an advisory lock on `<path>.lock` until `close()` (or the process
        ends, `kill -9` included), so that a second coordinator started on the same database
        (a restart while the old process still runs) is refused instead of running the same
        rounds twice. `serve` opens its store this way.
        """
        self.path = os.path.expanduser(os.fspath(path))  # as `lock_path` reads it
        # A lock file this start creates is removed again if the database is refused
        # (it was left beside a file of another application, which stays as it was).
        self._lock_created = exclusive and not os.path.lexists(lock_path(self.path))
        self._owner: int | None = self._take_ownership() if exclusive else None
        # The checks read the file through a read-only connection, before the store's own
        # (read-write) one is opened: closing a read-write connection on a refusal would let
        # SQLite checkpoint the -wal into the .db and delete the -wal.
        try:
            checked = self._check_file()
        except sqlite3.Error as exc:
            self._release(refused=True)
            raise _setup_error(self.path, exc) from exc
        except StoreError:
            self._release(refused=True)
            raise
        _create_private(self.path)  # a new file: 0600 before SQLite makes it 0644
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            self._release(refused=True)
            raise _setup_error(self.path, exc) from exc
        self._lock = threading.RLock()
        self._frame_bytes = 0  # see `frame_bytes`; counted in `_open`
        self._nonce_horizon_ms = 0  # see `nonce_horizon_ms`; read in `_open`
        # The database's identity for devices (`INCARNATION_KEY`); read (or made) in `_open`.
        self.incarnation = ""
        self._nonce_forgotten_ms: int | None = None  # see `clamp_nonce_horizon`; read in `_open`
        self._pending_frame_bytes = 0
        # (round, device, direction) -> [payload, wire, dense, requests]: ledger rows a write
        # the store refused kept for the next one (`ledger_add`)
        self._ledger_kept: dict[tuple[int, str, str], list[int]] = {}
        # The WARNING of a refused ledger write, at most one every 5 s: each request writes
        # the ledger, so a full disk would otherwise log a line per request (to a log that
        # may share the full disk)
        self._ledger_log = EveryFew(5.0)
        # Writes the database refused (`write_errors`), and the error of the last write while
        # none has committed since (`write_failing`); `probe_write`'s last try (monotonic).
        self._write_errors = 0
        self._write_failing: str | None = None
        self._probed = -math.inf
        # A prune's checkpoint that another connection held off (`_truncate_wal`): the next
        # prune tries again, even with nothing to prune.
        self._wal_owed = False
        try:
            self._open(checked)
        except sqlite3.Error as exc:
            self._db.close()
            self._release(refused=True)
            raise _setup_error(self.path, exc) from exc
        except StoreError:
            self._db.close()
            self._release(refused=True)
            raise

    def _take_ownership(self) -> int:
        """The open, flock-ed lock file (its descriptor), holding this process's pid."""
        try:
            return take_lock(self.path)
        except LockHeld as exc:
            raise StoreError(
                f"cannot use the database {self.path}: another coordinator (pid {exc.holder}) "
                "is serving it; stop that one first (two on one database would run the same "
                "rounds twice)"
            ) from exc

    def _release(self, refused: bool = False) -> None:
        """Drop the lock; with `refused` (the database was not opened), also remove the lock
        file if this start created it (while still held: nobody else has it meanwhile)."""
        if self._owner is not None:
            if refused and self._lock_created:
                with contextlib.suppress(OSError):
                    os.unlink(lock_path(self.path))
            os.close(self._owner)  # closing the descriptor drops the flock
            self._owner = None

    def _check_file(self) -> tuple[set[str], str | None] | None:
        """Check the file without writing to it: (its tables, its schema version or None for
        a new store), or None when a read-only connection cannot read it (a hot rollback
        journal SQLite must roll back first, or a -shm it cannot write): `_open` checks it
        then through the read-write connection. `StoreError` for a file this coordinator
        refuses, SQLite's error for one it cannot read; either way the .db and its -wal are
        left byte for byte (and an empty -wal and a -shm SQLite made to read the file are
        removed again)."""
        real = os.path.realpath(self.path)  # where SQLite puts the -wal: beside the file
        size = _file_size(real)
        if not size:
            wal = _file_size(real + "-wal")
            if wal:
                # A store's file always keeps its first page (SQLite writes it when the store
                # turns WAL on, before any -wal exists): this file was truncated or removed.
                # SQLite's first look at an empty file deletes the -wal beside it, and a new,
                # empty store would be served in place of its commits.
                what = "is empty (0 bytes)" if size == 0 else "does not exist"
                raise StoreError(
                    f"cannot use the database {self.path}: the file {what} but its -wal file "
                    f"holds {wal} bytes: the database file was truncated or removed (damage, "
                    "not a new store); restore a backup, or delete the -wal to start a new, "
                    "empty store"
                )
            return set(), None  # a new store
        # Files SQLite makes to read a WAL database (an empty -wal, a -shm indexing it),
        # removed again on a refusal; a -wal is only if it is still empty.
        made = [f for f in (real + "-wal", real + "-shm") if not os.path.lexists(f)]
        passed = False
        try:
            with contextlib.closing(
                _connect_read_only(f"file:{quote(os.fsencode(real))}?mode=ro")
            ) as conn:
                conn.execute("PRAGMA busy_timeout=5000")
                tables = table_names(conn)
                self._refuse_lost_wal(tables, made)
                found = self._check_schema(conn, tables)
            passed = True
            return tables, found
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorname", "").startswith("SQLITE_READONLY"):
                return None
            raise
        finally:
            for f in made if not passed else ():
                with contextlib.suppress(OSError):
                    if f.endswith("-shm") or os.stat(f).st_size == 0:
                        os.unlink(f)

    def _refuse_lost_wal(self, tables: set[str], made: Sequence[str] = ()) -> None:
        """`StoreError` for a file in WAL mode without a table (`tables`): a store's tables are
        created (and committed to the -wal) right after it turns WAL on, and reach the file only
        at SQLite's first checkpoint (1,000 pages of writes, or a clean stop). So it is a young
        store killed (`kill -9`, a crash) whose -wal was then lost, truncated or damaged: served,
        it would be a new, empty store, its tasks, devices and privacy spending gone and its
        task and round ids handed out again (s47 crash review). Or, rarely, a first start killed
        between the two steps, which held nothing. `made`: side files SQLite just made to read
        the file (a -wal among them was not there)."""
        real = os.path.realpath(self.path)
        if tables or not _wal_marked(real):
            return
        wal = None if real + "-wal" in made else _file_size(real + "-wal")
        side = "no -wal file is beside it" if wal is None else f"its -wal ({wal} bytes) holds none"
        raise StoreError(
            f"cannot use the database {self.path}: the file is in WAL mode but holds no table, "
            f"and {side}: a store whose -wal was lost, truncated or damaged "
            "after a crash (its tables and everything since were only there), or a first start "
            "killed before it created its tables; restore a backup, or delete the file (and its "
            "-wal) to start a new, empty store"
        )

    def _check_schema(self, conn: sqlite3.Connection, tables: set[str]) -> str | None:
        """The schema version of the database `conn` (its tables: `tables`), None for a new
        (empty) one; `StoreError` for one this coordinator does not use."""
        # A file with any table is Plume's only if its meta table has a schema version (a new
        # store is created and stamped in one transaction, below): another application's
        # `meta(key, value)` table (Chrome's History and Cookies files have one) is not.
        found = schema_version_of(conn, tables) if tables else None
        if tables and found is None:
            # Creating our tables beside another application's would rewrite its database.
            raise StoreError(
                f"cannot use the database {self.path}: it is a SQLite database of another "
                f"application (tables {', '.join(sorted(tables)[:5])}), not a Plume store; "
                "pick another --db"
            )
        problem = None if found is None else schema_version_problem(
            found,
            "it was written by a newer Plume: run that version, or restore a backup taken "
            "before the upgrade",
        )  # fmt: skip
        if problem is not None:
            raise StoreError(f"cannot use the database {self.path}: {problem}")
        if found is not None and (missing := _missing_schema(conn, tables, found)):
            # Checked before anything is created: `CREATE TABLE IF NOT EXISTS` would put an
            # empty table in place of a dropped one (a ledger gone, silently), and a missing
            # column fails every statement that names it (uploads answered 503 for ever).
            listed = ", ".join(missing[:6]) + (
                f" and {len(missing) - 6} more" if len(missing) > 6 else ""
            )
            raise StoreError(
                f"cannot use the database {self.path}: it is a Plume store (schema {found}) "
                f"that lacks {listed} of its schema: damaged, or edited by hand; restore a "
                "backup"
            )
        return found

    def _open(self, checked: tuple[set[str], str | None] | None) -> None:
        """Set WAL and create or migrate tables in the file `_check_file` passed (`checked`),
        or check it first through this connection where that could not read it."""
        db = self._db
        db.execute("PRAGMA busy_timeout=5000")  # another process's short write: wait, not fail
        if checked is None:
            tables = table_names(db)
            self._refuse_lost_wal(tables)
            found = self._check_schema(db, tables)
        else:
            found = checked[1]
        if found is not None:
            # A write rolled back: a read-only file fails here, before anything changes (a
            # read-only connection takes the lock and reads fine; only writing tells).
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("UPDATE meta SET value=value WHERE key='schema_version'")
            finally:
                if db.in_transaction:  # the error above, not a ROLLBACK's, is reported
                    db.execute("ROLLBACK")
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable against a process kill in WAL mode (only power loss can drop the
        # last commits), and it keeps an upload's commit well under a millisecond.
        db.execute("PRAGMA synchronous=NORMAL")
        # What a write deletes or empties (a pruned frame) is overwritten with zeros, in its
        # page and in the pages it frees, rather than left readable in free space until a
        # page is reused (s45/privacy finding 2). The default of most Linux builds; its cost
        # is writing the freed pages once, at the prune.
        db.execute("PRAGMA secure_delete=ON")
        if found is None:
            # A new file: its tables and schema version in one transaction, never tables
            # without a version (refused as another application's). A creation that fails
            # leaves a file with no table and out of WAL mode again, initialised at the next
            # start; one killed midway leaves a file in WAL mode with no table, which is what
            # a young store that lost its -wal looks like, so the next start refuses it
            # (`_refuse_lost_wal`: delete it, it held nothing).
            try:
                db.executescript(
                    f"BEGIN IMMEDIATE;\n{_SCHEMA}"
                    "INSERT OR IGNORE INTO meta(key, value) "
                    f"VALUES ('schema_version', '{SCHEMA_VERSION}');\nCOMMIT;"
                )
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                with contextlib.suppress(sqlite3.Error):
                    db.execute("PRAGMA journal_mode=DELETE")
                raise
        else:
            db.executescript(_SCHEMA)
        migrated_from = None
        with self.transaction() as tx:
            row = tx.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                tx.execute(
                    "INSERT INTO meta(key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif str(row[0]) in _MIGRATED_FROM:
                # Version 1 had no aggregator state; its tasks resume from the initial state.
                columns = {r[1] for r in tx.execute("PRAGMA table_info(tasks)").fetchall()}
                if "agg_state" not in columns:
                    tx.execute("ALTER TABLE tasks ADD COLUMN agg_state BLOB")
                # Versions 1 and 2 kept every frame: no row is pruned (both columns NULL).
                columns = {r[1] for r in tx.execute("PRAGMA table_info(updates)").fetchall()}
                if "pruned_len" not in columns:
                    tx.execute("ALTER TABLE updates ADD COLUMN pruned_len INTEGER")
                if "pruned_sha256" not in columns:
                    tx.execute("ALTER TABLE updates ADD COLUMN pruned_sha256 BLOB")
                # Versions 1 to 4 took no training loss with an upload: none is stored (NULL).
                if "train_loss" not in columns:
                    tx.execute("ALTER TABLE updates ADD COLUMN train_loss REAL")
                # Versions 1 to 3 kept no initial model: their tasks have none (NULL), and
                # an older version of theirs is rebuilt from the operator's copy, as before.
                columns = {r[1] for r in tx.execute("PRAGMA table_info(versions)").fetchall()}
                if "params" not in columns:
                    tx.execute("ALTER TABLE versions ADD COLUMN params BLOB")
                tx.execute(
                    "UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),)
                )
                migrated_from = str(row[0])
            tx.execute(_UNPRUNED_INDEX)
            self.incarnation, given = self._incarnation(tx, found is None)
        if given is not None and found is not None:  # said once it is committed
            log.info(
                "gave the database %s the incarnation %s (%s): devices tell this database's "
                "round and task ids from another's by it",
                self.path, self.incarnation, given,
            )  # fmt: skip
        if migrated_from is not None:  # said once it is committed
            log.info(
                "migrated the database %s from schema %s to %d (older coordinators now refuse "
                "it; restore a backup taken before to go back)",
                self.path, migrated_from, SCHEMA_VERSION,
            )  # fmt: skip
        self._nonce_horizon_ms = _stored_horizon(
            db.execute("SELECT value FROM meta WHERE key=?", (_NONCE_HORIZON,)).fetchone(),
            self.path,
        )
        # A new file has forgotten no nonce; a store without the row, anything before its
        # horizon (`prune_nonces`).
        self._nonce_forgotten_ms = (
            -1
            if found is None
            else _stored_forgotten(
                db.execute("SELECT value FROM meta WHERE key=?", (_NONCE_FORGOTTEN,)).fetchone(),
                self.path,
            )
        )
        self.clamp_nonce_horizon(int(time.time() * 1000), "at open")
        # Bytes of the frames stored in `updates`, for the `plume_stored_frame_bytes` gauge:
        # one scan here (length() reads no blob content), then kept by insert and prune.
        self._frame_bytes = int(
            db.execute("SELECT COALESCE(SUM(length(frame)), 0) FROM updates").fetchone()[0]
        )

    @staticmethod
    def _incarnation(tx: sqlite3.Connection, new: bool) -> tuple[str, str | None]:
        """The database's incarnation (`INCARNATION_KEY`), written in transaction `tx` where
        it has none (a `new` database, or one an older coordinator wrote) or a value that is
        not one (a hand edit); with why it was written then, else None."""
        row = tx.execute("SELECT value FROM meta WHERE key=?", (INCARNATION_KEY,)).fetchone()
        if row is not None and _INCARNATION.fullmatch(str(row[0])):
            return str(row[0]), None
        value = new_incarnation()
        tx.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (INCARNATION_KEY, value)
        )
        if new:
            return value, "a new database"  # not said: every new database gets one
        if row is None:
            return value, (
                "it had none: a file the backup command wrote, which leaves it out, or a "
                "database of a coordinator before incarnations"
            )
        return value, f"its stored one, {str(row[0])[:40]!r}, is not 32 lower-case hex digits"

    def close(self) -> None:
        with self._lock:
            if self._ledger_kept:
                self.ledger_add([])  # a clean stop writes the ledger rows still kept
            if self._ledger_kept:
                log.error(
                    "%d ledger rows the database refused are lost at this stop (their bytes "
                    "are missing from their rounds' ledgers)",
                    len(self._ledger_kept),
                )
            self._db.close()
            self._release()

    @property
    def journal_mode(self) -> str:
        with self._lock:
            return str(self._db.execute("PRAGMA journal_mode").fetchone()[0])

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK if the block raises. A
        `sqlite3.OperationalError` on the way (the database failing to do its work: a full
        disk, a lock held past the busy timeout, a read-only file, an I/O error) is counted in
        `write_errors` and makes `write_failing` its text until a write commits."""
        with self._lock, self._writing():
            self._db.execute("BEGIN IMMEDIATE")
            self._pending_frame_bytes = 0  # frame bytes this transaction adds (or frees)
            try:
                yield self._db
            except BaseException:
                # After a full disk or an I/O error SQLite has already rolled the transaction
                # back: a second ROLLBACK would fail and its error replace the real one.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error:
                # A COMMIT refused (a full disk, an I/O error) may leave the transaction open,
                # and then every later BEGIN would fail: end it, then report the failure.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._frame_bytes += self._pending_frame_bytes

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Keep `write_errors` and `write_failing` for one write (under `_lock`). A write
        that committed no change (an INSERT OR IGNORE of a row already there) wrote nothing
        to the disk, so it does not say the store takes writes again."""
        changes = self._db.total_changes
        try:
            yield
        except sqlite3.OperationalError as exc:
            self._write_errors += 1
            self._write_failing = str(exc)
            raise
        if self._db.total_changes != changes:
            self._write_failing = None

    @property
    def write_errors(self) -> int:
        """Writes (transactions, and a nonce's insert) the database refused with
        `sqlite3.OperationalError` since the store opened: `plume_store_errors_total`."""
        return self._write_errors

    @property
    def write_failing(self) -> str | None:
        """The error of the last write when it failed and no write has committed since (the
        store refuses writes: `/readyz` answers 503), else None."""
        return self._write_failing

    def probe_write(self, every_s: float = 1.0) -> str | None:
        """While `write_failing`: try one write that leaves the database as it was (a `meta`
        row inserted and deleted in one transaction, which still appends its pages to the
        -wal as any commit does; a row rewritten with its own value writes nothing) and say
        whether the store takes writes again (`write_failing` after it). At most one try per `every_s`
        seconds; not counted in `write_errors` (it is asked by readiness probes, not
        devices). Without it, a coordinator a load balancer stopped sending requests to
        would never write again, so never be ready again."""
        with self._lock:
            now = time.monotonic()
            if self._write_failing is None or now - self._probed < every_s:
                return self._write_failing
            self._probed = now
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.execute(
                        "INSERT OR REPLACE INTO meta(key, value) VALUES (?, '1')", (_PROBE_KEY,)
                    )
                    db.execute("DELETE FROM meta WHERE key=?", (_PROBE_KEY,))
                    db.execute("COMMIT")
                finally:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
            except sqlite3.OperationalError as exc:
                self._write_failing = str(exc)
            else:
                self._write_failing = None
            return self._write_failing

    @property
    def frame_bytes(self) -> int:
        """Bytes of the accepted frames stored in `updates` (pruned ones count 0), kept
        without a table scan: counted once on open, then by each committed insert and prune."""
        with self._lock:
            return self._frame_bytes

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- devices and nonces ----------------------------------------------------------------

    def register_device(self, device_id: str, public_key: bytes, now: float) -> bool:
        """Insert a device; False if it was already registered (same id means same key)."""
        with self.transaction() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO devices(device_id, public_key, registered_unix) "
                "VALUES (?, ?, ?)",
                (device_id, public_key, now),
            )
            return cur.rowcount == 1

    def device_key(self, device_id: str) -> bytes | None:
        rows = self._query("SELECT public_key FROM devices WHERE device_id=?", (device_id,))
        return bytes(rows[0][0]) if rows else None

    def count_devices(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM devices")[0][0])

    def remember_nonce(self, device_id: str, nonce: str, ts_ms: int) -> bool:
        """Record a nonce; False if this device already used it (a replay)."""
        # One statement in autocommit mode: its own durable transaction.
        with self._lock, self._writing():
            cur = self._db.execute(
                "INSERT OR IGNORE INTO nonces(device_id, nonce, ts_ms) VALUES (?, ?, ?)",
                (device_id, nonce, ts_ms),
            )
            return cur.rowcount == 1

    def prune_nonces(self, older_than_ms: int, now_ms: int | None = None) -> int:
        """Forget the nonces timestamped before `older_than_ms`; how many. The cut-off raises
        `nonce_horizon_ms`, in the same transaction as the delete, which also keeps the newest
        timestamp deleted; a horizon after `now_ms` (the prune's clock, Unix ms; the wall
        clock if None) is first lowered as `clamp_nonce_horizon` does."""
        now = int(time.time() * 1000) if now_ms is None else int(now_ms)
        cut = int(older_than_ms)
        with self._lock:  # the commit and the attributes together
            with self.transaction() as db:
                newest = db.execute(
                    "SELECT MAX(ts_ms) FROM nonces WHERE ts_ms < ?", (cut,)
                ).fetchone()
                pruned = db.execute("DELETE FROM nonces WHERE ts_ms < ?", (cut,)).rowcount
                forgotten = self._nonce_forgotten_ms
                if forgotten is None:  # unknown: whatever earlier prunes deleted lies before both
                    forgotten = max(self._nonce_horizon_ms, cut) - 1
                if newest[0] is not None:
                    forgotten = max(forgotten, int(newest[0]))
                ahead = self._nonce_horizon_ms - now
                horizon = min(forgotten + 1, now) if ahead > 0 else self._nonce_horizon_ms
                horizon = max(horizon, cut)
                if horizon != self._nonce_horizon_ms:
                    _write_meta_ms(db, _NONCE_HORIZON, horizon)
                if forgotten != self._nonce_forgotten_ms:
                    _write_meta_ms(db, _NONCE_FORGOTTEN, forgotten)
            self._nonce_horizon_ms = horizon  # once committed
            self._nonce_forgotten_ms = forgotten
        if ahead > 0:
            _warn_horizon_ahead(self.path, ahead, horizon, now, "at a nonce prune")
        return int(pruned)

    def clamp_nonce_horizon(self, now_ms: int, when: str = "at a signed request") -> int:
        """The nonce horizon, first lowered if it lies after `now_ms` (Unix ms); `when` says
        where, for the WARNING a lowering logs.

        A horizon after the current time means a prune ran while the clock was ahead (a VM
        resumed with a fast clock, set back since). Left there, it would refuse every correctly
        timestamped signed request until real time passed it, across restarts. It is lowered to
        just after the newest timestamp a prune deleted (kept with the horizon), which lets
        through no request whose nonce was forgotten, so no replay: the requests accepted
        before the clock jumped, whose nonces that prune deleted, stay refused. If that
        timestamp is not before `now_ms` (a device signed with a clock as far ahead as the
        server's, and its nonce was pruned), or is unknown (a store from before it was kept,
        not pruned since), the horizon is lowered to `now_ms` instead: a request signed from
        then on passes, and such a request can be replayed once real time reaches its
        timestamp. A clock that never steps back by more than twice the signature window
        never puts the horizon after the current time, and then this does nothing.
        """
        now = int(now_ms)
        with self._lock:
            ahead = self._nonce_horizon_ms - now
            if ahead <= 0:
                return self._nonce_horizon_ms
            forgotten = self._nonce_forgotten_ms
            lowered = now if forgotten is None else min(forgotten + 1, now)
            with self.transaction() as db:
                _write_meta_ms(db, _NONCE_HORIZON, lowered)
            self._nonce_horizon_ms = lowered  # once committed
        _warn_horizon_ahead(self.path, ahead, lowered, now, when)
        return lowered

    @property
    def nonce_horizon_ms(self) -> int:
        """The largest cut-off `prune_nonces` deleted nonces below (Unix ms; 0 before the first
        prune), kept in the `meta` table across restarts. A prune never lowers it; only a
        horizon found after the current time is lowered (`clamp_nonce_horizon`). A signed
        request timestamped before it may have had its nonce forgotten, so it cannot be told
        from a replay: the verifier refuses it whatever its signature window (a window raised
        at a restart would otherwise let such a request through again)."""
        with self._lock:
            return self._nonce_horizon_ms

    # -- tasks and versions ----------------------------------------------------------------

    def create_task(self, config: dict[str, Any], state: str, now: float) -> int:
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO tasks(config_json, state, created_unix) VALUES (?, ?, ?)",
                (json.dumps(config, sort_keys=True), state, now),
            )
            assert cur.lastrowid is not None
            return int(cur.lastrowid)

    def tasks(self) -> list[TaskRow]:
        rows = self._query(
            "SELECT task_id, config_json, state, version, digest FROM tasks ORDER BY task_id"
        )
        return [_task(r) for r in rows]

    def task_versions(self) -> list[tuple[int, int]]:
        """(task id, current version) of every task, without parsing any stored JSON."""
        rows = self._query("SELECT task_id, version FROM tasks ORDER BY task_id")
        return [(int(r[0]), int(r[1])) for r in rows]

    def task_raw(self, task_id: int) -> tuple[str, str, int, str] | None:
        """(config JSON text, state, version, digest) of a task, exactly as stored."""
        rows = self._query(
            "SELECT config_json, state, version, digest FROM tasks WHERE task_id=?", (task_id,)
        )
        return (
            (str(rows[0][0]), str(rows[0][1]), int(rows[0][2]), str(rows[0][3])) if rows else None
        )

    def round_counts(self, task_id: int) -> tuple[int, int]:
        """(rounds closed, rounds committed) of a task."""
        row = self._query(
            "SELECT COALESCE(SUM(state IN ('committed', 'abandoned')), 0), "
            "COALESCE(SUM(state = 'committed'), 0) FROM rounds WHERE task_id=?",
            (task_id,),
        )[0]
        return int(row[0]), int(row[1])

    def task(self, task_id: int) -> TaskRow | None:
        rows = self._query(
            "SELECT task_id, config_json, state, version, digest FROM tasks WHERE task_id=?",
            (task_id,),
        )
        return _task(rows[0]) if rows else None

    def task_model(self, task_id: int) -> tuple[bytes, bytes | None]:
        """(params as little-endian float32 bytes, server residual bytes or None)."""
        rows = self._query("SELECT params, residual FROM tasks WHERE task_id=?", (task_id,))
        if not rows or rows[0][0] is None:
            raise KeyError(task_id)
        residual = None if rows[0][1] is None else bytes(rows[0][1])
        return bytes(rows[0][0]), residual

    def task_params(self, task_id: int) -> bytes:
        """The task's published model, little-endian float32 bytes (`task_model` without the
        server residual: a finished task's download reads this alone)."""
        rows = self._query("SELECT params FROM tasks WHERE task_id=?", (task_id,))
        if not rows or rows[0][0] is None:
            raise KeyError(task_id)
        return bytes(rows[0][0])

    def task_aggregator_state(self, task_id: int) -> bytes | None:
        """The aggregator state after the task's last committed round
        (`coordinator.aggregators.encode_state` bytes), None before the first."""
        rows = self._query("SELECT agg_state FROM tasks WHERE task_id=?", (task_id,))
        if not rows:
            raise KeyError(task_id)
        return None if rows[0][0] is None else bytes(rows[0][0])

    def set_task_state(self, task_id: int, state: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE tasks SET state=? WHERE task_id=?", (state, task_id))

    def finish_task(self, task_id: int) -> None:
        """Store `done` for a task stored `active` (any other state is left as it is)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE tasks SET state='done' WHERE task_id=? AND state='active'", (task_id,)
            )

    def set_initial_model(
        self, task_id: int, params: bytes, digest: str, state: str, now: float
    ) -> None:
        """Version 0 of a task: its initial parameters (little-endian float32 bytes), kept
        twice in one transaction: as the current model (`tasks.params`, which each publish
        overwrites) and with version 0's row (`versions.params`, never overwritten nor
        pruned), from which `initial_params` rebuilds older versions."""
        with self.transaction() as db:
            db.execute(
                "UPDATE tasks SET params=?, residual=NULL, agg_state=NULL, digest=?, version=0, "
                "state=? WHERE task_id=?",
                (params, digest, state, task_id),
            )
            db.execute(
                "INSERT INTO versions(task_id, version, round_id, delta_frame, digest, "
                "created_unix, params) VALUES (?, 0, NULL, NULL, ?, ?, ?)",
                (task_id, digest, now, params),
            )

    def initial_params(self, task_id: int) -> bytes | None:
        """A task's initial model (version 0) as `set_initial_model` stored it, little-endian
        float32 bytes; None for a task without a model yet, or one stored by schema 3 or
        older (which kept only the current model)."""
        rows = self._query("SELECT params FROM versions WHERE task_id=? AND version=0", (task_id,))
        return None if not rows or rows[0][0] is None else bytes(rows[0][0])

    def frame_lengths(self, task_id: int, after: int, upto: int) -> dict[int, int]:
        """The stored delta frames' lengths of versions `after`+1..`upto`, by version; a
        version whose frame is gone (pruned, or its row missing) is absent. Reads no frame
        (length() of a blob is in its record header)."""
        rows = self._query(
            "SELECT version, length(delta_frame) FROM versions WHERE task_id=? AND version>? "
            "AND version<=? AND delta_frame IS NOT NULL ORDER BY version",
            (task_id, after, upto),
        )
        return {int(ver): int(n) for ver, n in rows}

    def first_missing_frame(self, task_id: int, up_to: int) -> int | None:
        """The first version of 1..`up_to` whose delta frame is not stored (emptied by
        `prune_versions`, or its row missing), None when every one is. Reads no frame
        (length() of a blob is in its record header) and a page of version numbers at a time:
        a long history is never in memory at once."""
        after = 0
        while after < up_to:
            page = self._query(
                "SELECT version FROM versions WHERE task_id=? AND version > ? AND version <= ? "
                "AND length(delta_frame) IS NOT NULL ORDER BY version LIMIT ?",
                (task_id, after, up_to, _VERSION_PAGE),
            )
            for (got,) in page:
                if got != after + 1:
                    return after + 1
                after = got
            if len(page) < _VERSION_PAGE:
                return after + 1 if after < up_to else None
        return None

    def chain(
        self, task_id: int, after_version: int, up_to: int | None = None
    ) -> list[tuple[int, bytes | None]]:
        """Delta frames taking a model from `after_version` to version `up_to` (default: the
        task's latest), by version; None for a version whose frame `prune_versions` emptied.
        Only those versions' rows are read."""
        rows = self._query(
            "SELECT version, delta_frame FROM versions WHERE task_id=? AND version>? "
            "AND version<=? ORDER BY version",
            (task_id, after_version, (1 << 62) if up_to is None else up_to),
        )
        return [(int(v), None if f is None else bytes(f)) for v, f in rows]

    def prune_versions(self, task_id: int, up_to: int, after: int = 0) -> PruneResult:
        """Empty (set NULL) the downlink delta frames of a task's versions `after`+1..`up_to`
        (version 0 has none; its initial model stays), keeping each row and its digest. Only
        a delta chain starting before `up_to` reads them, so the caller picks `up_to` below
        every chain it still serves, and `after` at what an earlier call already emptied (the
        search then reads only the new versions, not the whole history). An older version
        whose frames are emptied can no longer be rebuilt from the initial model. Runs in
        transactions of its own, `_PRUNE_BATCH` versions each."""
        versions = [
            int(r[0])
            for r in self._query(
                "SELECT version FROM versions WHERE task_id=? AND version BETWEEN ? AND ? "
                "AND delta_frame IS NOT NULL ORDER BY version",
                (task_id, min(max(after, 0), _SQL_INT_MAX - 1) + 1, _sql_int(up_to)),
            )
        ]
        frames = freed = 0
        for start in range(0, len(versions), _PRUNE_BATCH):
            batch = versions[start : start + _PRUNE_BATCH]
            marks = ",".join("?" * len(batch))
            with self.transaction() as db:
                size = db.execute(
                    "SELECT COALESCE(SUM(length(delta_frame)), 0), COUNT(delta_frame) "
                    f"FROM versions WHERE task_id=? AND version IN ({marks})",
                    (task_id, *batch),
                ).fetchone()
                db.execute(
                    f"UPDATE versions SET delta_frame=NULL WHERE task_id=? AND version IN ({marks})",
                    (task_id, *batch),
                )
            freed += int(size[0])
            frames += int(size[1])
        return PruneResult(frames, freed)

    def version_digest(self, task_id: int, version: int) -> str | None:
        rows = self._query(
            "SELECT digest FROM versions WHERE task_id=? AND version=?", (task_id, version)
        )
        return str(rows[0][0]) if rows else None

    # -- rounds and updates ----------------------------------------------------------------

    def open_round(
        self,
        task_id: int,
        seq: int,
        base_version: int,
        selected: list[str],
        target: int,
        min_reports: int,
        now: float,
        deadline: float,
    ) -> int:
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO rounds(task_id, seq, state, base_version, selected_json, target, "
                "min_reports, opened_unix, deadline_unix) VALUES (?, ?, 'open', ?, ?, ?, ?, ?, ?)",
                (
                    task_id,
                    seq,
                    base_version,
                    json.dumps(selected),
                    target,
                    min_reports,
                    now,
                    deadline,
                ),
            )
            assert cur.lastrowid is not None
            return int(cur.lastrowid)

    def round_task(self, round_id: int) -> int | None:
        """The task id of a round, without parsing any stored JSON (None: no such round)."""
        rows = self._query("SELECT task_id FROM rounds WHERE round_id=?", (round_id,))
        return int(rows[0][0]) if rows else None

    def round_state(self, round_id: int) -> tuple[int, str] | None:
        """(task id, state) of a round, without parsing any stored JSON (None: no such
        round). Its selection and measurements grow with the cohort."""
        rows = self._query("SELECT task_id, state FROM rounds WHERE round_id=?", (round_id,))
        return (int(rows[0][0]), str(rows[0][1])) if rows else None

    def round(self, round_id: int) -> RoundRow | None:
        """A round; raises `DamagedRow` if its stored JSON does not parse."""
        rows = self._query(f"SELECT {_ROUND_COLS} FROM rounds WHERE round_id=?", (round_id,))
        return _round(rows[0]) if rows else None

    def rounds(
        self,
        task_id: int,
        states: tuple[str, ...] | None = None,
        *,
        last: int | None = None,
        before: int | None = None,
    ) -> list[RoundRow]:
        """A task's rounds by sequence, filtered in SQL (the others are not read, let alone
        parsed): only those in `states` if given, only those older than round id `before`
        (none if `before` is not one of the task's rounds), and of those the `last` newest."""
        where = "task_id=?"
        args: list[Any] = [task_id]
        if states is not None:
            where += f" AND state IN ({','.join('?' * len(states))})"
            args += states
        if before is not None:
            # A round of another task, or none, makes the subquery NULL: `seq < NULL` matches
            # no row.
            where += " AND seq < (SELECT seq FROM rounds WHERE round_id=? AND task_id=?)"
            args += [before, task_id]
        if last is None:
            rows = self._query(
                f"SELECT {_ROUND_COLS} FROM rounds WHERE {where} ORDER BY seq", tuple(args)
            )
        else:
            # Newest first through the (task_id, seq) index, so only `last` rows are read.
            rows = self._query(
                f"SELECT {_ROUND_COLS} FROM rounds WHERE {where} ORDER BY seq DESC LIMIT ?",
                (*args, last),
            )
            rows.reverse()
        return [_round(r) for r in rows]

    def count_rounds(self, task_id: int) -> int:
        """How many rounds a task has opened (its last sequence number)."""
        return int(self._query("SELECT COUNT(*) FROM rounds WHERE task_id=?", (task_id,))[0][0])

    def last_round(self, task_id: int, state: str) -> RoundRow | None:
        """A task's most recent round in `state` (None if it has none)."""
        rows = self._query(
            f"SELECT {_ROUND_COLS} FROM rounds WHERE task_id=? AND state=? "
            "ORDER BY seq DESC LIMIT 1",
            (task_id, state),
        )
        return _round(rows[0]) if rows else None

    def round_measurements(self, task_id: int) -> Iterator[tuple[str, dict[str, Any]]]:
        """(state, measurements) of each of a task's rounds, by sequence, read a page at a
        time and parsed one at a time (the selections are not read): a task's whole history
        never sits in memory at once. Raises `DamagedRow` at a measurements column that does
        not parse."""
        after = 0
        while True:
            rows = self._query(
                "SELECT round_id, seq, state, measurements_json FROM rounds WHERE task_id=? "
                "AND seq > ? ORDER BY seq LIMIT ?",
                (task_id, after, _PRUNE_BATCH),
            )
            for round_id, _, state, text in rows:
                yield (
                    str(state),
                    _json_column(text, dict, "rounds", round_id, task_id, "measurements_json"),
                )
            if len(rows) < _PRUNE_BATCH:
                return
            after = int(rows[-1][1])

    def set_round_state(self, round_id: int, state: str) -> None:
        """Store a round's new `state` (the service's one use: freezing an open round as
        aggregating before it is aggregated, `begin_close`, again after a restart for a round
        found aggregating). A finished (committed or abandoned) round's record is final and
        an aggregating round does not open again: those, and a round not in the store, raise
        `RoundStateError`, writing nothing (a closed round set back to aggregating would be
        aggregated and published again at the next start). A `state` that is none of a
        round's raises `ValueError`."""
        if state not in _ROUND_STATES:
            raise ValueError(
                f"round {round_id}: {state!r} is not a round state (one of {', '.join(_ROUND_STATES)})"
            )
        with self.transaction() as db:
            stored = _stored_round_state(db, round_id)
            if stored == "aggregating" and state == "open":
                raise RoundStateError(round_id, stored, "a frozen round does not open again")
            if stored not in ("open", "aggregating"):
                raise RoundStateError(
                    round_id, stored, f"only an open or aggregating round can be set {state}"
                )
            db.execute("UPDATE rounds SET state=? WHERE round_id=?", (state, round_id))

    def set_round_measurements(self, round_id: int, measurements: dict[str, Any]) -> bool:
        """Overwrite an unfinished (open or aggregating) round's measurements, durable before
        this returns; False, writing nothing, if the round is finished or unknown (a finished
        round's record is final)."""
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE rounds SET measurements_json=? WHERE round_id=? "
                "AND state IN ('open', 'aggregating')",
                (json.dumps(measurements, sort_keys=True, default=str), round_id),
            )
            return cur.rowcount > 0

    def updates(self, round_id: int) -> list[UpdateRow]:
        """A round's accepted updates in acceptance order (only open rounds' are re-decoded:
        a pruned frame, of a closed round, is empty)."""
        rows = self._query(
            "SELECT seq, round_id, device_id, idempotency_key, frame, train_loss FROM updates "
            "WHERE round_id=? ORDER BY seq",
            (round_id,),
        )
        return [UpdateRow(r[0], r[1], r[2], r[3], bytes(r[4]), _stored_loss(r[5])) for r in rows]

    def has_update(self, round_id: int, device_id: str) -> bool:
        """Whether a device has an accepted update in a round (its frame is not read)."""
        return bool(
            self._query(
                "SELECT 1 FROM updates WHERE round_id=? AND device_id=? LIMIT 1",
                (round_id, device_id),
            )
        )

    def find_update(
        self, round_id: int, device_id: str, frame: bytes
    ) -> tuple[str, int, bool] | None:
        """(idempotency key, frame bytes, whether the stored frame equals `frame`) of a device's
        accepted update in a round, if any. The same answer before and after `prune_frames`:
        a pruned row is compared by the SHA-256 and length it kept."""
        rows = self._query(
            "SELECT idempotency_key, length(frame), frame=?, pruned_len, pruned_sha256 "
            "FROM updates WHERE round_id=? AND device_id=?",
            (frame, round_id, device_id),
        )
        if not rows:
            return None
        key, size, same, pruned_len, pruned_sha256 = rows[0]
        if pruned_len is not None:
            size = pruned_len
            same = len(frame) == pruned_len and hashlib.sha256(frame).digest() == pruned_sha256
        return str(key), int(size), bool(same)

    def prune_frames(self, task_id: int, keep_rounds: int) -> PruneResult:
        """Empty the stored frames of a task's closed rounds (committed or abandoned) older than
        its `keep_rounds` most recent closed ones (0: every closed round), keeping each row's
        key, device, round and time, and the frame's length and SHA-256 (`find_update` answers
        as before). Open and aggregating rounds are never touched: their frames are re-decoded
        on start.

        Runs in transactions of its own, `_PRUNE_BATCH` frames each; every row is pruned whole
        or not at all, so an interrupted prune leaves a consistent store (the rest is pruned
        next time).
        """
        if keep_rounds < 0:
            raise ValueError(f"keep_rounds must be >= 0, got {keep_rounds}")
        # SQLite binds 64-bit integers (a larger Python int is an OverflowError): no task has
        # that many rounds, so a larger count keeps every frame, as this one does.
        keep_rounds = min(keep_rounds, _SQL_INT_MAX)
        # The newest closed round to prune: the (keep_rounds + 1)-th most recent (walking the
        # (task_id, seq) index from the top), then the unpruned rows of closed rounds up to it,
        # found from the partial index of unpruned rows (CROSS JOIN keeps that the outer loop):
        # a few recent rounds' rows, not the task's whole history at every close.
        newest = self._query(
            "SELECT seq FROM rounds WHERE task_id=? AND state IN ('committed', 'abandoned') "
            "ORDER BY seq DESC LIMIT 1 OFFSET ?",
            (task_id, keep_rounds),
        )
        if not newest:
            return PruneResult(0, 0)
        seqs = sorted(  # sorted here: an ORDER BY would walk the whole table in seq order
            int(r[0])
            for r in self._query(
                "SELECT u.seq FROM updates AS u CROSS JOIN rounds AS r "
                "ON r.round_id = u.round_id WHERE u.pruned_len IS NULL AND r.task_id=? "
                "AND r.state IN ('committed', 'abandoned') AND r.seq <= ?",
                (task_id, int(newest[0][0])),
            )
        )
        frames = freed = 0
        for start in range(0, len(seqs), _PRUNE_BATCH):
            batch = seqs[start : start + _PRUNE_BATCH]
            marks = ",".join("?" * len(batch))
            with self.transaction() as db:
                # Checked again inside the transaction: only closed rounds' rows, not yet pruned.
                rows = db.execute(
                    f"SELECT seq, frame FROM updates WHERE seq IN ({marks}) "
                    "AND pruned_len IS NULL AND (SELECT state FROM rounds WHERE "
                    "rounds.round_id = updates.round_id) IN ('committed', 'abandoned')",
                    batch,
                ).fetchall()
                db.executemany(
                    "UPDATE updates SET frame=x'', pruned_len=?, pruned_sha256=? WHERE seq=?",
                    [(len(f), hashlib.sha256(f).digest(), s) for s, f in rows],
                )
                size = sum(len(f) for _, f in rows)
                self._pending_frame_bytes -= size
            frames += len(rows)
            freed += size
        if frames or self._wal_owed:
            self._truncate_wal()
        return PruneResult(frames, freed)

    def _truncate_wal(self) -> None:
        """Checkpoint the -wal into the database and truncate it to 0 bytes, after a prune:
        the -wal still holds the page images the frames were written in (and, up to its
        largest size, older ones past the point SQLite writes from), readable while the
        coordinator runs although the rows are emptied and the freed pages zeroed (s45/privacy
        finding 2). Waits at most `_WAL_TRUNCATE_WAIT_MS` for another connection (a backup
        reading the database, the readiness check's write lock): the store's lock, which
        requests wait on, is held meanwhile; held off, it is tried again at the next prune."""
        with self._lock:
            db = self._db
            db.execute(f"PRAGMA busy_timeout={_WAL_TRUNCATE_WAIT_MS}")
            try:
                busy = bool(db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0])
                why = "another connection reads or writes the database"
            except sqlite3.OperationalError as exc:
                busy, why = True, str(exc)
            finally:
                db.execute("PRAGMA busy_timeout=5000")
            self._wal_owed = busy
        if busy:
            log.info(
                "the frames just pruned stay in %s-wal until the next prune truncates it (%s)",
                self.path,
                why,
            )

    def accepted_frame_sizes(self, round_id: int) -> list[tuple[str, int]]:
        """(device id, frame bytes) of each update a round accepted, each once: a pruned
        frame by the length it kept (`prune_frames`)."""
        rows = self._query(
            "SELECT device_id, COALESCE(pruned_len, length(frame)) FROM updates "
            "WHERE round_id=? ORDER BY device_id",
            (round_id,),
        )
        return [(str(r[0]), int(r[1])) for r in rows]

    def count_updates(self, round_id: int) -> int:
        return int(self._query("SELECT COUNT(*) FROM updates WHERE round_id=?", (round_id,))[0][0])

    def count_all_updates(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM updates")[0][0])

    def insert_update(
        self,
        db: sqlite3.Connection,
        round_id: int,
        device_id: str,
        key: str,
        frame: bytes,
        now: float,
        train_loss: float | None = None,
    ) -> None:
        """Insert inside a caller's transaction (so the round-state check shares it).
        `train_loss`: the device's training loss sent with the upload, if any."""
        db.execute(
            "INSERT INTO updates(round_id, device_id, idempotency_key, frame, accepted_unix, "
            "train_loss) VALUES (?, ?, ?, ?, ?, ?)",
            (round_id, device_id, key, frame, now, train_loss),
        )
        self._pending_frame_bytes += len(frame)

    def publish(
        self,
        *,
        task_id: int,
        round_id: int,
        version: int,
        delta_frame: bytes,
        digest: str,
        params: bytes,
        residual: bytes,
        measurements: dict[str, Any],
        task_state: str,
        now: float,
        agg_state: bytes | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        """Commit a round and its new model version atomically (never applied twice), with
        the aggregator state that round left (None: the task keeps none). Only an aggregating
        round is published (frozen first, so no upload lands after its aggregate): one open,
        finished (its record is final), not in the store or of another task than `task_id`
        raises `RoundStateError`, and nothing of the publish is stored."""
        with self.transaction() as db:
            stored = _stored_round_state(db, round_id, task_id)
            if stored != "aggregating":
                raise RoundStateError(
                    round_id,
                    stored,
                    f"only an aggregating round is published (not as version {version} of "
                    f"task {task_id})",
                )
            db.execute(
                "INSERT INTO versions(task_id, version, round_id, delta_frame, digest, "
                "created_unix) VALUES (?, ?, ?, ?, ?, ?)",
                (task_id, version, round_id, delta_frame, digest, now),
            )
            db.execute(
                "UPDATE tasks SET params=?, residual=?, agg_state=?, digest=?, version=?, "
                f"state={_CLOSE_STATE} WHERE task_id=?",
                (params, residual, agg_state, digest, version, task_state, task_id),
            )
            if before_commit is not None:
                before_commit()
            db.execute(
                "UPDATE rounds SET state='committed', closed_unix=?, version_after=?, "
                "measurements_json=? WHERE round_id=?",
                (now, version, json.dumps(measurements, sort_keys=True, default=str), round_id),
            )

    def abandon(
        self, round_id: int, task_id: int, measurements: dict[str, Any], task_state: str, now: float
    ) -> bool:
        """Abandon an unfinished (open or aggregating) round with `measurements`, and store
        `task_state` as a close does (`_CLOSE_STATE`), in one transaction; False, writing
        nothing, if the round is finished or unknown. A closed round's record is final: a
        close that fails after its publish committed (the snapshot encoded after it) must not
        turn the committed round, whose version the task serves, into an abandoned one and
        drop its measurements (a dp round's epsilon record among them). A round of another
        task than `task_id` raises `RoundStateError`, writing nothing (its abandonment would
        store `task_state` on the wrong task)."""
        with self.transaction() as db:
            _stored_round_state(db, round_id, task_id)
            cur = db.execute(
                "UPDATE rounds SET state='abandoned', closed_unix=?, measurements_json=? "
                "WHERE round_id=? AND state IN ('open', 'aggregating')",
                (now, json.dumps(measurements, sort_keys=True, default=str), round_id),
            )
            if cur.rowcount == 0:
                return False
            db.execute(
                f"UPDATE tasks SET state={_CLOSE_STATE} WHERE task_id=?", (task_state, task_id)
            )
            return True

    # -- ledger ----------------------------------------------------------------------------

    def ledger_add(self, rows: list[tuple[int, str, str, int, int, int]]) -> None:
        """Add `(round_id, device_id, direction, payload, wire, dense)` rows (one request
        each) in one transaction, with any rows kept from an earlier write the store refused.

        The ledger is written after the answer went out (wire.py), which has told the device
        the exchange counts (`x-plume-ledger-round`). When the store refuses the write (a full
        disk, a lock held past the busy timeout, an I/O error: `sqlite3.OperationalError`),
        the rows are kept in memory: `ledger_rows` reads them with the stored ones, and the
        next ledger write that commits, or a clean `close`, writes them. Only a crash before
        then loses them. Any other error (a bug) raises.
        """
        with self._lock:
            merged = {k: list(v) for k, v in self._ledger_kept.items()}
            for round_id, device_id, direction, payload, wire, dense in rows:
                cell = merged.setdefault((round_id, device_id, direction), [0, 0, 0, 0])
                for i, v in enumerate((payload, wire, dense, 1)):
                    cell[i] += v
            try:
                with self.transaction() as db:
                    db.executemany(
                        "INSERT INTO ledger(round_id, device_id, direction, payload_bytes, "
                        "wire_bytes, dense_bytes, requests) VALUES (?, ?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT(round_id, device_id, direction) DO UPDATE SET "
                        "payload_bytes = payload_bytes + excluded.payload_bytes, "
                        "wire_bytes = wire_bytes + excluded.wire_bytes, "
                        "dense_bytes = dense_bytes + excluded.dense_bytes, "
                        "requests = requests + excluded.requests",
                        [(*k, *v) for k, v in merged.items()],
                    )
            except sqlite3.OperationalError as exc:
                self._ledger_kept = merged
                if (skipped := self._ledger_log()) is not None:
                    log.warning(
                        "the database refused a ledger write (%s): %d ledger rows kept in "
                        "memory, written with the next ledger write (lost if the process dies "
                        "first)%s",
                        exc,
                        len(merged),
                        self._ledger_log.since(skipped),
                    )
                return
            self._ledger_kept = {}

    def ledger_rows(self, round_id: int) -> list[tuple[int, str, str, int, int, int, int]]:
        """A round's ledger by device and direction: the stored rows plus any `ledger_add`
        keeps in memory after a write the store refused."""
        with self._lock:
            rows = self._query(
                "SELECT round_id, device_id, direction, payload_bytes, wire_bytes, dense_bytes, "
                "requests FROM ledger WHERE round_id=? ORDER BY device_id, direction",
                (round_id,),
            )
            kept = {k: v for k, v in self._ledger_kept.items() if k[0] == round_id}
        if not kept:
            return [tuple(r) for r in rows]  # type: ignore[misc]
        merged = {(r[0], r[1], r[2]): list(r[3:]) for r in rows}
        for k, v in kept.items():
            cell = merged.setdefault(k, [0, 0, 0, 0])
            for i, x in enumerate(v):
                cell[i] += x
        return [(*k, *v) for k, v in sorted(merged.items())]  # type: ignore[misc]
