"""docs/operations.md's shell examples that tests/test_docs_examples.py does not run (it runs
the first block, and the TOML example is tests/coordinator/test_h113_serve_config.py's), run
for real against one `plume coordinator serve` on loopback, in the doc's order, with the
doc's paths moved to a scratch folder (stop 55, audit O): `--keep-frames 10` serve, the dp
create-task and its note, the get-model lines at version 0, the `--last`/`--before` status
lines, a `--url` with a path, a coordinator that does not answer within `--timeout`, stop,
backup of a served database, restore after the stop, backup before an upgrade, VACUUM, and
the systemd unit through `systemd-analyze verify` where that tool is installed. The JSON the
doc shows after a command is compared key by key with what the command prints."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "operations.md"
TEXT = DOC.read_text()
TOKEN = "s55o-shell-token"


def _doc_commands() -> list[tuple[int, list[str], list[str]]]:
    """(line, words, the comment lines right after it) of every `plume ...`/`python3 ...`
    command in the doc's ```sh blocks."""
    out: list[tuple[int, list[str], list[str]]] = []
    lines = TEXT.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```sh":
            i += 1
            continue
        i += 1
        while lines[i].strip() != "```":
            start = i
            line = lines[i]
            while line.endswith("\\"):
                i += 1
                line = line[:-1] + " " + lines[i].strip()
            i += 1
            comments = []
            while i < len(lines) and lines[i].startswith("# "):
                comments.append(lines[i][2:])
                i += 1
            words = shlex.split(line, comments=True)
            if words and words[0] in ("plume", "python3"):
                out.append((start + 1, words, comments))
        i += 1
    return out


COMMANDS = _doc_commands()


def _find(*prefix: str, exact: bool = False) -> tuple[list[str], list[str]]:
    """The one doc command that starts with `prefix` (words; `exact`: that is `prefix`), and
    the comment lines after it."""
    found = [
        (w, c)
        for _, w, c in COMMANDS
        if w[: len(prefix)] == list(prefix) and (not exact or len(w) == len(prefix))
    ]
    assert len(found) == 1, (prefix, found)
    return found[0]


class Scratch:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.url = ""  # the coordinator's, once `serve` started it
        (folder / "backups").mkdir()

    def localize(self, words: list[str]) -> list[str]:
        """The doc's command with its paths in the scratch folder and its URL on our port."""
        out = []
        for word in words:
            assert self.url or "http://127.0.0.1:8080" not in word, "no coordinator yet"
            word = word.replace("http://127.0.0.1:8080", self.url)
            word = word.replace("/var/lib/plume/", f"{self.folder}/")
            word = word.replace("/backups/", f"{self.folder}/backups/")
            out.append(word)
        if out[0] == "plume":
            script = Path(sys.executable).with_name("plume")
            out[:1] = (
                [str(script)] if script.exists() else [sys.executable, "-m", "coordinator.cli"]
            )
        elif out[0] == "python3":
            out[0] = sys.executable
        return out

    def run(self, words: list[str], token: str = TOKEN) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PLUME_ADMIN_TOKEN": token, "OMP_NUM_THREADS": "1"}
        return subprocess.run(
            self.localize(words),
            cwd=self.folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )

    def serve(self, words: list[str]) -> subprocess.Popen[str]:
        """The doc's serve command on port 0, once its /healthz answers; `url` is then its."""
        from .test_service_support import ServeProcess

        env = {**os.environ, "PLUME_ADMIN_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}
        proc = ServeProcess(
            [*self.localize(words), "--port", "0", "--access-log", "off"],
            cwd=self.folder,
            env=env,
        )
        try:
            self.url = proc.healthy_url()
        except BaseException:
            proc.kill()
            proc.communicate()
            raise
        return proc


def _same_shape(doc: Any, got: Any, where: str = "") -> None:
    """`got` has the keys of `doc` in the same order, recursively (values aside)."""
    if isinstance(doc, dict):
        assert isinstance(got, dict), where
        assert list(got) == list(doc), (where, list(got), list(doc))
        for key in doc:
            _same_shape(doc[key], got[key], f"{where}.{key}")
    elif isinstance(doc, list) and doc:
        assert isinstance(got, list) and got, where
        for item in got:
            _same_shape(doc[0], item, f"{where}[]")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scratch]:
    yield Scratch(tmp_path_factory.mktemp("ops"))


def test_the_doc_commands_in_order(scratch: Scratch) -> None:
    # Execute: "keep the frames of each task's 10 most recent closed rounds"
    serve, _ = _find(
        "plume", "coordinator", "serve", "--db", "/var/lib/plume/plume.db", "--keep-frames"
    )
    assert serve[-2:] == ["--keep-frames", "10"]
    server = scratch.serve(serve)
    try:
        _while_serving(scratch)
    finally:
        # "systemctl stop plume-coordinator" sends SIGTERM: exit status 0, the database closed
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=60)
    assert server.returncode == 0, err
    assert not (scratch.folder / "plume.db-wal").exists() or (
        (scratch.folder / "plume.db-wal").stat().st_size == 0
    )
    _after_the_stop(scratch)


def _while_serving(s: Scratch) -> None:
    # The dp create-task and its note (the doc elides the middle with "...")
    create, shown = _find(
        "plume",
        "coordinator",
        "create-task",
        "--url",
        "http://127.0.0.1:8080",
        "--model",
        "mlp",
        "--rounds",
    )
    done = s.run(create)
    assert done.returncode == 0, done.stderr
    doc_line = json.loads(shown[0])
    got = json.loads(done.stdout)
    _same_shape(doc_line, got)
    assert got["model"] == doc_line["model"] and got["params"] == doc_line["params"]
    assert got["task_id"] == 1  # the doc's shows 4: its coordinator had three tasks before
    note = " ".join(shown[1:]).replace("task 4:", "task 1:")
    head, tail = note.split(" ... ")
    err = " ".join(done.stderr.split())
    assert err.startswith(head), (err, head)
    assert err.endswith(tail), (err, tail)
    # "The same command with `--no-error-feedback` prints no note"
    quiet = s.run([*create, "--no-error-feedback"])
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    # The get-model lines at version 0: "It prints one JSON line: `task_id`, `version`,
    # `digest` (as `status` shows it), `format`, `out`, `bytes`, `params`"
    status = json.loads(
        s.run(["plume", "coordinator", "status", "--url", s.url, "--task", "1"]).stdout
    )
    for out, fmt in (("model.pt", "pt"), ("model.npz", "npz"), ("model.snap", "snapshot")):
        words = ["plume", "coordinator", "get-model", "--url", "http://127.0.0.1:8080"]
        words += ["--task", "1", "--out", out]
        if fmt == "snapshot":
            words += ["--format", "snapshot"]
        line, _ = _find(*words, exact=True)
        done = s.run(line)
        assert done.returncode == 0, done.stderr
        got = json.loads(done.stdout)
        assert list(got) == ["task_id", "version", "digest", "format", "out", "bytes", "params"]
        assert got["format"] == fmt and got["version"] == 0
        assert got["digest"] == status["task"]["model_digest"]
        assert got["bytes"] == (s.folder / out).stat().st_size
        # "(backups and `get-model` outputs already were)" 0600
        assert (s.folder / out).stat().st_mode & 0o777 == 0o600, out
    # "`pt` ... read it with `model.load_state_dict(torch.load(path, weights_only=True),
    # strict=True)` on `mobile_sim.models.build_model(NAME)`"; npz with allow_pickle=False
    from mobile_sim.models import build_model

    model = build_model("mlp")
    model.load_state_dict(torch.load(s.folder / "model.pt", weights_only=True), strict=True)
    with np.load(s.folder / "model.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(model.state_dict())
    # "with `--strip-prefix net.` ... (the JSON line gains `"strip_prefix"`)"
    strip = [w for _, w, _ in COMMANDS if "--strip-prefix" in w]
    assert len(strip) == 1
    done = s.run(strip[0])
    assert done.returncode == 0 and json.loads(done.stdout)["strip_prefix"] == "net."
    assert sorted(torch.load(s.folder / "model.pt", weights_only=True))[0] == "1.bias"
    # "get-model ... --out v0.npz   # at version 0"
    v0, _ = _find(
        "plume",
        "coordinator",
        "get-model",
        "--url",
        "http://127.0.0.1:8080",
        "--task",
        "1",
        "--out",
        "v0.npz",
    )
    assert s.run(v0).returncode == 0 and (s.folder / "v0.npz").exists()
    # The `--last`/`--before` lines: "in the same JSON (`{"task": ..., "rounds": [...]}`)"
    for line in (w for _, w, _ in COMMANDS if "--last" in w):
        done = s.run(line)
        if "--before" in line:
            # this task has no round 81: "a `before` that is not one of the task's rounds is
            # 404 `unknown_round`" (http-api.md), exit status 1 as any refusal
            assert done.returncode == 1 and done.stdout == ""
            assert "round 81 is not one of task 1's rounds (404 unknown_round" in done.stderr
            continue
        assert done.returncode == 0, done.stderr
        assert list(json.loads(done.stdout)) == ["task", "rounds"]
    # A --url with a path the coordinator does not serve: the doc's line, its URL ours
    path, said = _find("plume", "coordinator", "status", "--url", "http://127.0.0.1:8080/plume")
    done = s.run(path)
    assert done.returncode == 1
    want = " ".join(said).replace("http://127.0.0.1:8080", s.url)
    assert " ".join(done.stderr.split()) == want
    # A coordinator that does not answer within --timeout: the doc's first line, for a
    # listener that accepts and says nothing
    slow, said = _find("plume", "coordinator", "status", "--url", "http://10.0.0.5:8080")
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        at = f"http://127.0.0.1:{mute.getsockname()[1]}"
        line = [at if w == "http://10.0.0.5:8080" else w for w in slow]
        line[line.index("--timeout") + 1] = "1"
        done = s.run(line)
    assert done.returncode == 1
    want = (
        " ".join(said[:3])
        .replace("http://10.0.0.5:8080", at)
        .replace("--timeout 5 s", "--timeout 1 s")
    )
    assert " ".join(done.stderr.split()) == want
    # stop: "The task's state becomes `stopped`"; its one JSON line
    stop, _ = _find("plume", "coordinator", "stop")
    done = s.run(stop)
    assert json.loads(done.stdout)["state"] == "stopped"
    # the backup of the served database: the doc's JSON line, key for key
    backup, shown = _find(
        "plume",
        "coordinator",
        "backup",
        "--db",
        "/var/lib/plume/plume.db",
        "--out",
        "/backups/plume-2026-11-29.db",
    )
    done = s.run(backup)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    _same_shape(json.loads(shown[0]), got)
    assert got["tasks"] == 2 and got["schema_version"] == 5
    assert not os.path.exists(f"{s.folder}/backups/plume-2026-11-29.db-wal")


def _after_the_stop(s: Scratch) -> None:
    # "plume coordinator restore --db /var/lib/plume/plume.db --from /backups/..." after the
    # stop: the doc's JSON line, key for key
    restore, shown = _find("plume", "coordinator", "restore")
    done = s.run(restore)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    _same_shape(json.loads(shown[0]), got)
    assert got["path"] == str((s.folder / "plume.db").resolve())
    assert [t["task"] for t in got["replaced"]["task_versions"]] == [1, 2]
    assert got["replaced"]["task_versions"][0]["state"] == "stopped"
    # Upgrading: "plume coordinator backup ... --out /backups/plume-before-upgrade.db" of the
    # stopped coordinator's database
    backup, _ = _find(
        "plume",
        "coordinator",
        "backup",
        "--db",
        "/var/lib/plume/plume.db",
        "--out",
        "/backups/plume-before-upgrade.db",
    )
    done = s.run(backup)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["out"] == f"{s.folder}/backups/plume-before-upgrade.db"
    # "stop the coordinator and run, as its user (no `sqlite3` command-line tool needed)"
    (vacuum,) = [w for _, w, _ in COMMANDS if w[0] == "python3"]
    done = s.run(vacuum)
    assert done.returncode == 0, done.stderr


def test_the_systemd_unit_verifies() -> None:
    # The unit of "Under systemd", with ExecStart= pointed at this checkout's plume
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    unit = re.search(
        r"```ini\n# /etc/systemd/system/plume-coordinator.service\n(.*?)```", TEXT, re.S
    )
    assert unit is not None
    text = unit.group(1)
    assert "ExecStart=/opt/plume/.venv/bin/plume coordinator serve --config" in text
    plume = Path(sys.executable).with_name("plume")
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"s55o-unit-{os.getpid()}"
    folder.mkdir(exist_ok=True)
    try:
        path = folder / "plume-coordinator.service"
        path.write_text(text.replace("/opt/plume/.venv/bin/plume", str(plume)))
        done = subprocess.run(
            [tool, "verify", str(path)], capture_output=True, text=True, timeout=60
        )
    finally:
        shutil.rmtree(folder)
    assert done.returncode == 0 and done.stderr == "", done.stderr
