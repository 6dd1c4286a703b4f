"""What every bench script shares: where a `--quick` run writes, and the command it records.

The rule for `--quick` (a smoke run, `make bench-quick`): it never writes a canonical results
file unless `--out` names one explicitly. A script whose `--out` is a file writes
`<name>_quick.json` beside the canonical `<name>.json` when `--out` is not given; a script whose
`--out` is a folder writes `<name>_quick.json` in it. Every file a quick run writes records
`"quick": true`, and bench/summarize.py refuses a results file (or a section of one) marked
quick, so a smoke run's numbers are never published.

Every results file records `command`: the command line as run, `python bench/<script>.py ...`,
runnable from the repository root, and `git_commit` / `git_dirty`: the commit the code that
wrote it was checked out at and whether tracked files differed from it (`write_results`; both
null outside a git checkout). A file whose parts were run separately (sim_throughput.json's
sections, explore_cnn_speed's experiments, secagg.json's timing and accuracy parts) records
the code of each part beside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
QUICK_SUFFIX = "_quick"


_GIT: dict[str, Any] | None = None


def git_provenance() -> dict[str, Any]:
    """`git_commit` and `git_dirty` of this checkout (mobile_sim.report.git_info), read on the
    first call and kept: a bench script calls it as it starts, so a run records the code it
    started from even if the checkout changes while it runs."""
    global _GIT
    if _GIT is None:
        from mobile_sim.report import git_info

        _GIT = git_info(ROOT)
    return dict(_GIT)


def write_results(
    path: str | Path,
    doc: dict[str, Any],
    *,
    indent: int = 2,
    default: Any = None,
    stamp: bool = True,
) -> Path:
    """Write a results document as JSON (and a final newline), its folder made if missing.
    `stamp`: first set the document's `git_commit` and `git_dirty` to `git_provenance()`'s;
    False for a caller that sets them itself (a file rewritten from runs of other code)."""
    if stamp:
        doc.update(git_provenance())
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=indent, default=default) + "\n")
    return out


def config_matches(
    recorded: dict[str, Any], current: dict[str, Any], defaults: dict[str, Any]
) -> bool:
    """Whether a results file's recorded config is `current`: a key the recorded config lacks
    (a field the config gained after that run, e.g. SimConfig's selection_timeout_s) counts
    at its value in `defaults` (today's defaults); a recorded key `current` lacks differs."""
    old = {k: recorded.get(k, defaults.get(k)) for k in current}
    return old == current and set(recorded) <= set(current)


def quick_stem(stem: str, quick: bool) -> str:
    """The file stem a run writes: `stem`, or `stem_quick` for a --quick run."""
    return stem + QUICK_SUFFIX if quick and not stem.endswith(QUICK_SUFFIX) else stem


def out_file(out: str | Path | None, canonical: Path, quick: bool) -> Path:
    """The results file of a script whose --out is a file: `out` when given; otherwise the
    canonical path, or `<stem>_quick<suffix>` beside it for a --quick run."""
    if out is not None:
        return Path(out)
    return canonical.with_name(quick_stem(canonical.stem, quick) + canonical.suffix)


def command_line(script: str | Path, argv: list[str] | None = None) -> str:
    """`python bench/<script>.py ARGS` as run (ARGS: `argv`, or sys.argv[1:] when None),
    quoted for a POSIX shell, runnable from the repository root."""
    path = Path(script).resolve()
    try:
        rel = path.relative_to(ROOT).as_posix()
    except ValueError:
        rel = f"bench/{path.name}"
    words = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["python", rel, *words])


def is_quick(doc: Any, name: str = "") -> bool:
    """Whether a results document (or a section of one, by its key `name`) is from a --quick
    run: `"quick": true`, `settings.quick` true, or a name ending in `_quick` or `.quick`."""
    if name.endswith(QUICK_SUFFIX) or name.endswith(".quick"):
        return True
    if not isinstance(doc, dict):
        return False
    if doc.get("quick") is True:
        return True
    settings = doc.get("settings")
    return isinstance(settings, dict) and settings.get("quick") is True


def free_port() -> int:
    """A TCP port free on loopback now. Another process may take it before the caller binds
    it: `start_serve` uses it only where there is no /proc to read the port `--port 0` got."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Linux's table of the TCP sockets of a process's network namespace (`listening_port`)
_PROC_TCP = Path("/proc/self/net/tcp")


def listening_port(pid: int) -> int | None:
    """The port of a TCP socket that process `pid` listens on, from Linux's /proc (its file
    descriptors' socket inodes, looked up in its network namespace's tables), or None while
    it has none (or is gone). tests/coordinator/test_service_support.py's `ServeProcess` uses
    it too, for a coordinator whose log level hides uvicorn's `Uvicorn running on` line."""
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # gone
        return None
    for fd in fds:
        with contextlib.suppress(OSError):  # closed meanwhile
            inodes.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            # local address (hex IP:hex port), state (0A: LISTEN), inode
            if fields[3] == "0A" and f"socket:[{fields[9]}]" in inodes:
                return int(fields[1].rsplit(":", 1)[1], 16)
    return None


def start_serve(
    db: str | Path,
    token: str,
    *,
    poll_s: float,
    stderr: int | IO[Any] = subprocess.DEVNULL,
    timeout_s: float = 120.0,
) -> tuple[str, subprocess.Popen[bytes]]:
    """`plume coordinator serve` on `db` and a free loopback port, in its own process, returned
    once its /healthz answers: (its URL, the process). RuntimeError, the process stopped, if it
    does not answer within `timeout_s`.

    It is started on `--port 0` and its URL has the port it listens on, read from /proc (its
    `--log-level warning` hides uvicorn's `Uvicorn running on` line). A port found free here
    and given to it raced: another process could bind it before the coordinator did (which
    then exited, or this found that process's server). Without /proc (not Linux) it still
    gets a `free_port()`."""
    import httpx

    by_proc = _PROC_TCP.exists()
    port = 0 if by_proc else free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordinator.cli", "coordinator", "serve", "--db", str(db),
         "--port", str(port), "--admin-token", token, "--poll", str(poll_s),
         "--log-level", "warning"],
        cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=stderr,
    )  # fmt: skip
    url = None if by_proc else f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        if url is None and (listening := listening_port(proc.pid)) is not None:
            url = f"http://127.0.0.1:{listening}"
        if url is not None:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    return url, proc
            except httpx.TransportError:
                pass
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            raise RuntimeError("the coordinator did not start")
        time.sleep(0.1 if url is not None else 0.02)


def stop_serve(proc: subprocess.Popen[bytes]) -> None:
    """Stop a `start_serve` coordinator gracefully with SIGTERM, as systemd does (killed after
    20 s). Not SIGINT: a benchmark run from a script's background job (`nohup ... &`) passes
    SIGINT on ignored, and the coordinator then keeps it ignored (docs/operations.md)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
