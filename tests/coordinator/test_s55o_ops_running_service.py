"""docs/operations.md read as an operator would, checked against a real `plume coordinator
serve` process on loopback (stop 55, audit O). Each test quotes the claim it checks; the
claims are the doc's words, not the code's, and a test that fails names a doc/code mismatch.

One coordinator serves the module (`coordinator`); the tests that need other flags or a second
process start their own. Everything is loopback and seconds each."""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import pytest

from protocol import auth

from .test_service_hardening import _register
from .test_service_support import ADMIN, ServeProcess, create_task, task_config

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "operations.md").read_text()
TOKEN = ADMIN


def _plume() -> list[str]:
    script = Path(sys.executable).with_name("plume")
    return [str(script)] if script.exists() else [sys.executable, "-m", "coordinator.cli"]


@dataclass
class Served:
    url: str
    port: int
    folder: Path
    proc: subprocess.Popen[str]

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str, str]:
        """Send `sig`, wait for the exit: (status, stdout, stderr)."""
        self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, out, err


def _start(
    folder: Path,
    *flags: str,
    token: str | None = TOKEN,
    umask: int = 0o022,
    logged: bool = True,
) -> Served:
    """`plume coordinator serve --db plume.db --port 0 *flags` started in `folder` under
    `umask`, once its /healthz answers (`logged=False`: `flags` set a log level that hides
    uvicorn's `Uvicorn running on` line, which gives the port)."""
    env = {k: v for k, v in os.environ.items() if k != "PLUME_ADMIN_TOKEN"}
    if token is not None:
        env["PLUME_ADMIN_TOKEN"] = token
    old = os.umask(umask)
    try:
        proc = ServeProcess(
            [*_plume(), "coordinator", "serve", "--db", "plume.db", "--port", "0", *flags],
            cwd=folder,
            env=env,
        )
    finally:
        os.umask(old)
    try:
        url = proc.healthy_url(logged=logged)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return Served(url, int(url.rsplit(":", 1)[1]), folder, proc)


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = _start(tmp_path_factory.mktemp("served"))
    try:
        yield served
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.communicate()


def _cli(*argv: str, cwd: Path, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PLUME_ADMIN_TOKEN"}
    if token is not None:
        env["PLUME_ADMIN_TOKEN"] = token
    return subprocess.run(
        [*_plume(), "coordinator", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value of every sample line of a Prometheus text scrape."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def _families(text: str) -> set[str]:
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def _raw(port: int, request: bytes) -> bytes:
    """The bytes the coordinator answers `request` with, until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


# --- the probes: /healthz, /readyz, HEAD, headers -------------------------------------------


def test_healthz_and_readyz_answer_the_documented_bodies(coordinator: Served) -> None:
    # "`GET /healthz` answers `{"ok": true, "journal_mode": "wal", "tasks": N, "tasks_refused":
    # M, "dp_all_tasks": {...}}`"; "Readiness is `GET /readyz`: 200 `{"ready": true,
    # "store_writable": true, "store_error": null, "tasks_unloaded": 0}`"
    health = httpx.get(f"{coordinator.url}/healthz")
    ready = httpx.get(f"{coordinator.url}/readyz")
    assert health.status_code == 200
    body = health.json()
    assert list(body)[:4] == ["ok", "journal_mode", "tasks", "tasks_refused"]
    assert body["ok"] is True and body["journal_mode"] == "wal"
    # "the ids of the N tasks in it (`composed`) and left out (`not_accounted`)", "`not_running`
    # lists the tasks the coordinator has but does not run", "`partial` is true" then
    for key in ("composed", "not_accounted", "not_running", "partial"):
        assert key in body["dp_all_tasks"], body
    assert ready.status_code == 200
    assert ready.json() == {
        "ready": True,
        "store_writable": True,
        "store_error": None,
        "tasks_unloaded": 0,
    }


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_the_three_probes_take_head(coordinator: Served, path: str) -> None:
    # "The three also take `HEAD`, for probes and uptime checkers that send it: GET's status
    # and headers, no body"
    get = httpx.get(f"{coordinator.url}{path}")
    head = httpx.head(f"{coordinator.url}{path}")
    assert head.status_code == get.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]


def test_other_routes_take_no_head(coordinator: Served) -> None:
    # "The other routes take no `HEAD` (405, `allow: GET`)"
    r = httpx.head(f"{coordinator.url}/v1/tasks/1/model")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET"


def test_answers_carry_a_date_header_and_no_server_header(coordinator: Served) -> None:
    # "Uvicorn runs with its `server` and `date` headers off ... The wire middleware sends its
    # own `date` header instead (RFC 9110's IMF-fixdate, e.g. `date: Sun, 29 Nov 2026 08:03:17
    # GMT`, 37 bytes with its CRLF) on every answer"
    raw = _raw(coordinator.port, b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    lines = head.split("\r\n")[1:]
    names = [line.split(":", 1)[0].lower() for line in lines]
    assert "server" not in names
    (date,) = [line for line in lines if line.lower().startswith("date:")]
    assert len(date) + 2 == 37
    assert re.fullmatch(r"date: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", date), date
    assert abs(parsedate_to_datetime(date[6:]).timestamp() - time.time()) < 120


def test_a_get_with_a_body_over_64_kib_is_413_and_closed(coordinator: Served) -> None:
    # "A GET carries no body: one sent with any GET ... is held to the 64 KiB JSON cap (413
    # `too_large`, connection closed) before authentication"
    body = b"x" * 70_000
    raw = _raw(
        coordinator.port,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n" + body,
    )
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in head.lower()
    assert json.loads(payload)["reason"] == "too_large"


def test_an_http10_answer_carries_connection_close(coordinator: Served) -> None:
    # "the 19-byte `connection: close` header it adds to a response to an HTTP/1.0 ... request"
    raw = _raw(coordinator.port, b"GET /readyz HTTP/1.0\r\n\r\n")
    lines = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    (close,) = [line for line in lines if line.lower() == b"connection: close"]
    assert len(close) + 2 == 19


# --- /metrics ----------------------------------------------------------------------------------


def test_labelled_counters_have_every_series_at_zero_from_the_start(coordinator: Served) -> None:
    # "The labelled counters whose label values are known have every such series from the
    # start, at 0: `plume_rounds_total` (committed, abandoned), `plume_auth_failures_total`
    # (the seven reasons ...), `plume_check_ins_total` (train, wait, end), `plume_bytes_total`
    # (up and down, by kind)"; kind is "payload/wire/dense"
    samples = _samples(httpx.get(f"{coordinator.url}/metrics").text)
    wanted = [f'plume_rounds_total{{outcome="{o}"}}' for o in ("committed", "abandoned")]
    wanted += [
        f'plume_auth_failures_total{{reason="{r}"}}'
        for r in (
            "unsigned",
            "unregistered",
            "bad_signature",
            "stale_timestamp",
            "replayed_nonce",
            "round_mismatch",
            "bad_admin_token",
        )
    ]
    wanted += [f'plume_check_ins_total{{action="{a}"}}' for a in ("train", "wait", "end")]
    wanted += [
        f'plume_bytes_total{{direction="{d}",kind="{k}"}}'
        for d in ("up", "down")
        for k in ("payload", "wire", "dense")
    ]
    for series in wanted:
        assert series in samples, series
    rounds = [s for s in wanted if s.startswith(("plume_rounds", "plume_check", "plume_bytes"))]
    assert all(samples[s] == 0 for s in rounds)
    seven = [s for s in samples if s.startswith("plume_auth_failures_total{")]
    assert len(seven) == 7


def test_build_info_names_the_version_schema_and_python(coordinator: Served) -> None:
    # "`plume_build_info` | `version` (plume), `schema` (the database schema it runs),
    # `python` | always 1 ... the version and schema the start log line gives"
    samples = _samples(httpx.get(f"{coordinator.url}/metrics").text)
    (line,) = [k for k in samples if k.startswith("plume_build_info{")]
    labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
    assert samples[line] == 1.0
    assert set(labels) == {"version", "schema", "python"}
    assert labels["python"] == platform.python_version()
    assert labels["schema"] == "5"  # "A database once opened by this version has schema version 5"


def test_every_metric_the_table_names_is_scraped_once_a_task_exists(coordinator: Served) -> None:
    # The metrics table: each name in its first column is a family of /metrics ("every task
    # has the families, with zeros until its first round")
    table = DOC.split("| metric | labels | meaning |", 1)[1].split("\n\n", 1)[0]
    named = set()
    for row in table.splitlines()[2:]:
        named |= set(re.findall(r"`(plume_[a-z_]+)`", row.split("|")[1]))
    assert len(named) > 40
    create_task(coordinator.url, task_config(rounds=2))
    text = httpx.get(f"{coordinator.url}/metrics").text
    families = _families(text)
    # prometheus_client names a counter's family without its `_total`
    scraped = families | {f"{f}_total" for f in families}
    assert named - scraped == set()


def test_scrapes_add_their_answers_to_the_control_wire_bytes(coordinator: Served) -> None:
    # "`/metrics`: each scrape adds its whole answer ... to `direction="down"`, so the counter
    # grows with the scrape interval even with no device about"
    key = 'plume_control_wire_bytes_total{direction="down"}'
    first = httpx.get(f"{coordinator.url}/metrics")
    second = httpx.get(f"{coordinator.url}/metrics")
    grew = _samples(second.text)[key] - _samples(first.text)[key]
    assert grew >= len(first.content)


def test_a_wrong_admin_token_is_counted_and_refused_with_the_documented_line(
    coordinator: Served,
) -> None:
    # "From then on an admin command with the old token is refused, exit status 1, and each
    # such request counts in `plume_auth_failures_total{reason="bad_admin_token"}`", with the
    # doc's error line
    key = 'plume_auth_failures_total{reason="bad_admin_token"}'
    before = _samples(httpx.get(f"{coordinator.url}/metrics").text)[key]
    done = _cli(
        "status", "--url", coordinator.url, "--task", "1", cwd=coordinator.folder, token="old"
    )
    after = _samples(httpx.get(f"{coordinator.url}/metrics").text)[key]
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip() == (
        "plume coordinator status: error: the coordinator refused the admin token (wrong admin "
        "token; 403 bad_admin_token); pass the token `plume coordinator serve` was started with "
        "(--admin-token or PLUME_ADMIN_TOKEN)"
    )
    assert after == before + 1


# --- files, log, second process, backup -------------------------------------------------------


def test_the_database_files_are_the_users_alone_under_umask_022(coordinator: Served) -> None:
    # "A database serve creates ... is created with mode 0600 before SQLite opens it, whatever
    # the umask, and SQLite gives its `-wal` and `-shm` the file's mode; the `.lock` file is
    # 0600 too" (the module's coordinator started under umask 022)
    for name in ("plume.db", "plume.db-wal", "plume.db-shm", "plume.db.lock"):
        mode = stat.S_IMODE((coordinator.folder / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))
    # "`serve` holds an advisory lock (`flock`) on `<db>.lock` (which holds its pid)"
    assert (coordinator.folder / "plume.db.lock").read_text().strip() == str(coordinator.proc.pid)


def test_a_second_serve_on_the_database_is_refused(coordinator: Served) -> None:
    # "a second `serve` on the same `--db` stops with `another coordinator (pid N) is serving
    # it; stop that one first`" ... "a `--db` that is a symlink to a served database is
    # refused too"; a start that fails on the database exits with status 1
    link = coordinator.folder / "link.db"
    link.symlink_to(coordinator.folder / "plume.db")
    for db in ("plume.db", "link.db"):
        done = _cli(
            "serve",
            "--db",
            db,
            "--port",
            "0",
            "--log-level",
            "warning",
            cwd=coordinator.folder,
        )
        assert done.returncode == 1
        assert (
            f"another coordinator (pid {coordinator.proc.pid}) is serving it; stop that one first"
            in done.stderr
        ), done.stderr


def test_backup_of_a_served_database_and_restore_refused_while_it_serves(
    coordinator: Served,
) -> None:
    # "`plume coordinator backup --db plume.db --out FILE` copies the database with SQLite's
    # online backup, consistent while the coordinator serves it ... as one file with no `-wal`
    # beside it and without the database's incarnation ..., and prints one JSON line"
    folder = coordinator.folder
    done = _cli("backup", "--db", "plume.db", "--out", "b.db", cwd=folder)
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stdout)
    assert list(line) == ["db", "out", "bytes", "schema_version", "tasks"]
    assert line["db"] == "plume.db" and line["out"] == "b.db"
    assert line["bytes"] == (folder / "b.db").stat().st_size and line["schema_version"] == 5
    assert not (folder / "b.db-wal").exists()
    with sqlite3.connect(f"file:{folder / 'b.db'}?immutable=1", uri=True) as db:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    assert "incarnation" not in meta and meta["schema_version"] == "5"
    # "the `.lock` file is 0600 too (backups and `get-model` outputs already were)"
    assert stat.S_IMODE((folder / "b.db").stat().st_mode) == 0o600
    # "`restore` is refused while `plume coordinator serve` serves the database ...: `a
    # coordinator (pid N) is serving --db ...; stop it first`"
    refused = _cli("restore", "--db", "plume.db", "--from", "b.db", cwd=folder)
    assert refused.returncode == 1
    assert (
        f"a coordinator (pid {coordinator.proc.pid}) is serving --db plume.db; stop it first"
        in (refused.stderr)
    )
    # "one `serve` serves (its `.lock` held: `--out plume.db is a database a coordinator (pid N)
    # serves: backup does not write over a database in use; ...`)"
    over = _cli("backup", "--db", "b.db", "--out", "plume.db", cwd=folder)
    assert over.returncode == 1
    assert (
        f"--out plume.db is a database a coordinator (pid {coordinator.proc.pid}) serves: backup "
        "does not write over a database in use; " in over.stderr
    ), over.stderr
    # `restore` of the backup to a new path: "`replaced` is the database that was there,
    # `null` if there was none"; "`path` is the file written, absolute"; a new incarnation
    fresh = _cli("restore", "--db", "fresh.db", "--from", "b.db", cwd=folder)
    assert fresh.returncode == 0, fresh.stderr
    out = json.loads(fresh.stdout)
    assert out["replaced"] is None and out["path"] == str((folder / "fresh.db").resolve())
    assert re.fullmatch(r"[0-9a-f]{32}", out["incarnation"])
    # "A database serve creates (or `restore`, for a `--db` that did not exist) is created with
    # mode 0600 ...; the `.lock` file is 0600 too"
    for name in ("fresh.db", "fresh.db.lock"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name


def test_status_of_a_coordinator_with_no_task_is_a_note(tmp_path: Path) -> None:
    # "A coordinator with no task prints nothing on stdout and a `note:` on stderr saying it
    # has no task yet and that `create-task` makes one"; and the start log: "(before it,
    # `creating a new database at PATH` when there was none ...)", then "plume V (database
    # schema 5) serving the database PATH: N tasks loaded, 0 refused", then uvicorn's line.
    served = _start(tmp_path)
    try:
        done = _cli("status", "--url", served.url, cwd=tmp_path)
    finally:
        code, out, err = served.stop(signal.SIGTERM)
    assert done.returncode == 0 and done.stdout == ""
    assert "has no task yet" in done.stderr and "create-task" in done.stderr
    # "the exit status is 0 for SIGTERM"
    assert code == 0, err
    db = tmp_path / "plume.db"
    lines = [line for line in err.splitlines() if line.startswith("INFO:")]
    assert lines[0] == f"INFO:     creating a new database at {db}"
    assert re.fullmatch(
        rf"INFO:     plume \S+ \(database schema 5\) serving the database {re.escape(str(db))}: "
        r"0 tasks loaded, 0 refused",
        lines[1],
    ), lines[1]
    assert lines[2] == (
        f"INFO:     Uvicorn running on http://127.0.0.1:{served.port} (Press CTRL+C to quit)"
    )
    # "uvicorn's access lines (`127.0.0.1:45972 - "POST ..."`) go to stdout, the rest to stderr"
    assert '"GET /healthz HTTP/1.1" 200' in out
    assert "GET /healthz" not in err


def test_access_log_off_and_log_level_warning(tmp_path: Path) -> None:
    # "`--access-log off` drops them and keeps every other line"; "`--log-level warning` keeps
    # what needs the operator"; a start on an existing database readable by others: "`WARNING:
    # the database /var/lib/plume/plume.db may be read by other users (mode 0644), and with it
    # every device's updates and ledger rows; chmod 600 ...`"
    db = tmp_path / "plume.db"
    with sqlite3.connect(db):
        pass  # an empty file: "a new or empty file is initialised"
    db.chmod(0o644)
    served = _start(tmp_path, "--access-log", "off", "--log-level", "warning", logged=False)
    try:
        httpx.get(f"{served.url}/readyz")
    finally:
        code, out, err = served.stop(signal.SIGTERM)
    assert code == 0
    assert out == ""
    assert not [line for line in err.splitlines() if line.startswith("INFO:")], err
    warnings = [line for line in err.splitlines() if line.startswith("WARNING:")]
    assert warnings == [
        f"WARNING:  the database {db} may be read by other users (mode 0644), and with it every "
        f"device's updates and ledger rows; chmod 600 {db} {db}-wal {db}-shm"
    ], err


def test_register_rate_limit_on_a_running_coordinator(tmp_path: Path) -> None:
    # "`--register-rate R --register-burst B` gives every client address a token bucket: B
    # registrations at once, then R per second. Over it, `POST /v1/devices` answers 429
    # `rate_limited` with `Retry-After` (whole seconds, at least 1), nothing is stored, and
    # `plume_registrations_rate_limited_total` counts the refusal"; `--upload-buffer-mb`
    # shows as `plume_upload_buffer_limit_bytes` ("the upload budget in bytes")
    served = _start(
        tmp_path, "--register-rate", "0.1", "--register-burst", "2", "--upload-buffer-mb", "3"
    )
    try:
        with httpx.Client(base_url=served.url) as http:
            answers = [_register(http, auth.generate_private_key()) for _ in range(3)]
            samples = _samples(http.get("/metrics").text)
    finally:
        code, _, err = served.stop(signal.SIGHUP)
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[2].json()["reason"] == "rate_limited"
    assert answers[2].headers["retry-after"].isdigit()
    assert int(answers[2].headers["retry-after"]) >= 1
    assert samples["plume_registrations_rate_limited_total"] == 1
    assert samples["plume_registered_devices"] == 2
    assert samples["plume_upload_buffer_limit_bytes"] == 3 << 20
    # "the exit status is 0 for SIGTERM and SIGHUP"
    assert code == 0, err
