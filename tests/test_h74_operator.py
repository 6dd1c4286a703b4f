"""What an operator following README.md and docs/operations.md ran into (helper-74's
walkthrough): a coordinator stopped with SIGTERM left its database file incomplete, and a
create-task whose initial model was refused left a task behind without naming it."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from coordinator.cli import main
from coordinator.service import AdminClient, ServerThread, ServiceConfig
from protocol.messages import TaskConfig, TensorShape
from tests.coordinator.test_service_support import ServeProcess

ADMIN = "s3cret-h74"


def _plume() -> list[str]:
    """The installed `plume` console script, else the same entry point through python -m."""
    script = Path(sys.executable).with_name("plume")
    return [str(script)] if script.exists() else [sys.executable, "-m", "coordinator.cli"]


def sigterm_after_one_task(
    cmd: list[str], env: dict[str, str], admin: str = ADMIN
) -> tuple[subprocess.CompletedProcess[str], int]:
    """Start a coordinator with `cmd` (serving on port 0 of 127.0.0.1 at log level info, admin
    token `admin`), create one task through the admin API, then stop it with SIGTERM as
    systemd does. The finished process (return code, stdout, stderr) and the task's id."""
    with ServeProcess(cmd, env=env) as proc:
        try:
            url = proc.healthy_url()
            task = TaskConfig(
                name="t", model_name="tiny", spec=[TensorShape("w", [10])], rounds=1,
                clients_per_round=1,
            )  # fmt: skip
            with AdminClient(url, admin) as admin_client:
                task_id = admin_client.create_task(task, np.zeros(10, np.float32))
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), task_id


def assert_database_file_complete(db: Path, task_id: int) -> None:
    """The file alone holds every commit (no -wal left to replay): a copy of it, the way an
    operator backs up a stopped coordinator, has the task."""
    assert not Path(f"{db}-wal").exists()
    copy = db.with_name("copy.db")
    shutil.copyfile(db, copy)
    with sqlite3.connect(copy) as conn:
        assert conn.execute("SELECT task_id FROM tasks").fetchall() == [(task_id,)]


def test_sigterm_stops_serve_with_its_database_file_complete(tmp_path: Path) -> None:
    # Prepare: `plume coordinator serve` as an operator runs it (systemd stops it with
    # SIGTERM), and one task created through the admin API.
    db = tmp_path / "plume.db"
    argv = [*_plume(), "coordinator", "serve", "--db", str(db), "--port", "0"]
    env = {**os.environ, "PLUME_DEBUG": "", "PLUME_ADMIN_TOKEN": ADMIN}
    # Execute
    done, task_id = sigterm_after_one_task(argv, env)
    # Assert: a graceful stop (status 0, no traceback) that closed the database
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert_database_file_complete(db, task_id)


def test_create_task_whose_model_is_refused_names_the_task_left_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the PUT of the initial model is refused (a snapshot the coordinator's codec
    # refuses), after the POST created the task.
    from coordinator.service import admin_client

    real = admin_client.encode_snapshot
    monkeypatch.setattr(admin_client, "encode_snapshot", lambda *a, **k: real(*a, **k)[:-7])
    config = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN)
    with ServerThread(config) as url:
        # Execute
        code = main([
            "coordinator", "create-task", "--url", url, "--admin-token", ADMIN,
            "--model", "digits_mlp",
        ])  # fmt: skip
        err = capsys.readouterr().err
        with AdminClient(url, ADMIN) as admin:
            left = [(t.task_id, t.state) for t in admin.tasks()]
    # Assert: one error line that names the task the POST made, and what state it is in
    assert code == 1
    lines = [line for line in err.splitlines() if "create-task: error:" in line]
    assert len(lines) == 1, err
    assert left == [(1, "awaiting_model")]
    assert "task 1 was created but its initial model was not stored" in lines[0]
    assert "awaiting_model" in lines[0] and "422 bad_frame" in lines[0]


def test_admin_client_create_task_creates_nothing_for_params_of_another_size(
    tmp_path: Path,
) -> None:
    # Prepare
    config = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN)
    task = TaskConfig(
        name="t", model_name="tiny", spec=[TensorShape("w", [10])], rounds=1,
        clients_per_round=1,
    )  # fmt: skip
    with ServerThread(config) as url, AdminClient(url, ADMIN) as admin:
        # Execute: 11 values for a 10-value spec
        with pytest.raises(ValueError):
            admin.create_task(task, np.zeros(11, np.float32))
        left = admin.tasks()
    # Assert: refused before the POST, so no task awaits a model that will never come
    assert left == []


def test_admin_client_create_task_error_carries_the_task_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the PUT of the initial model is refused after the POST created the task
    from coordinator.service import AdminError, admin_client

    real = admin_client.encode_snapshot
    monkeypatch.setattr(admin_client, "encode_snapshot", lambda *a, **k: real(*a, **k)[:-7])
    config = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN)
    task = TaskConfig(
        name="t", model_name="tiny", spec=[TensorShape("w", [10])], rounds=1,
        clients_per_round=1,
    )  # fmt: skip
    with ServerThread(config) as url, AdminClient(url, ADMIN) as admin:
        # Execute
        with pytest.raises(AdminError) as exc:
            admin.create_task(task, np.zeros(10, np.float32))
        with pytest.raises(AdminError) as refused_post:
            admin.create_task(
                TaskConfig(name="t", model_name="tiny", spec=[TensorShape("w", [10])],
                           rounds=0, clients_per_round=1),
                np.zeros(10, np.float32),
            )  # fmt: skip
    # Assert: the PUT's refusal names the task it left awaiting its model; a refused POST
    # made none
    assert exc.value.task_id == 1 and exc.value.status == 422
    assert exc.value.path == "/v1/admin/tasks/1/model"
    assert refused_post.value.task_id is None and refused_post.value.status == 422


def test_status_without_task_lists_every_task(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: two tasks, one paused, and one the create-task above would leave behind
    # (created, no model): an operator who lost the ids has only the admin API to find them.
    import json

    config = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN)
    task = TaskConfig(
        name="t", model_name="tiny", spec=[TensorShape("w", [10])], rounds=3,
        clients_per_round=1,
    )  # fmt: skip
    with ServerThread(config) as url:
        with AdminClient(url, ADMIN) as admin:
            first = admin.create_task(task, np.zeros(10, np.float32))
            admin.create_task(task, np.zeros(10, np.float32))
            admin.pause(first)
            httpx.post(
                f"{url}/v1/admin/tasks",
                json={"name": "bare", "model_name": "tiny", "spec": [{"name": "w", "shape": [10]}],
                      "rounds": 1, "clients_per_round": 1},
                headers={"authorization": f"Bearer {ADMIN}"},
            ).raise_for_status()  # fmt: skip
        # Execute
        code = main(["coordinator", "status", "--url", url, "--admin-token", ADMIN])
        out = capsys.readouterr().out
    # Assert: one line a task, in id order, with what an operator looks for first
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["task_id"], r["name"], r["state"]) for r in rows] == [
        (1, "t", "paused"), (2, "t", "active"), (3, "bare", "awaiting_model"),
    ]  # fmt: skip
    assert rows[1] == {
        "task_id": 2, "name": "t", "model_name": "tiny", "state": "active", "version": 0,
        "rounds_closed": 0, "rounds": 3, "current_round": None, "pool": 0, "pool_needed": 2,
        "refused": None,
    }  # fmt: skip


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """An HTTPS coordinator with a self-signed certificate: (url, cert path, key path)."""
    from tests.coordinator.test_service_tls import _self_signed

    tmp = tmp_path_factory.mktemp("tls")
    cert, key = _self_signed(tmp)
    config = ServiceConfig(db_path=str(tmp / "plume.db"), admin_token=ADMIN)
    with ServerThread(config, tls_cert=cert, tls_key=key) as url:
        yield url, cert, key


def _status_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    try:
        code = main(["coordinator", "status", "--admin-token", ADMIN, *argv])
    except SystemExit as exc:  # the checks made before any request end this way
        code = exc.code
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "plume coordinator status: error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def test_an_untrusted_certificate_points_at_cacert_not_at_a_server_down(
    tls_server: tuple[str, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    url, cert, _ = tls_server
    # Execute
    line = _status_error(capsys, "--url", url)
    ok = main(["coordinator", "status", "--admin-token", ADMIN, "--url", url, "--cacert", cert])
    capsys.readouterr()
    # Assert: the server is up; what is missing is trust in its certificate
    assert "is `plume coordinator serve` running there?" not in line
    assert "certificate" in line and "--cacert" in line
    assert ok == 0


def test_http_and_https_mixed_up_say_which_to_use(
    tls_server: tuple[str, str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Prepare: an HTTPS coordinator asked over http://, and a plain one asked over https://
    url, cert, _ = tls_server
    plain = ServiceConfig(db_path=str(tmp_path / "plain.db"), admin_token=ADMIN)
    with ServerThread(plain) as plain_url:
        # Execute
        to_tls = _status_error(capsys, "--url", url.replace("https://", "http://", 1))
        to_plain = _status_error(
            capsys, "--url", plain_url.replace("http://", "https://", 1), "--cacert", cert
        )
    # Assert
    assert "serving HTTPS" in to_tls and "use an https:// URL (--url)" in to_tls
    assert "plain HTTP" in to_plain and "use an http:// URL (--url)" in to_plain


def test_a_cacert_that_is_no_certificate_names_the_flag(
    tls_server: tuple[str, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the key given where the certificate goes
    url, _, key = tls_server
    # Execute
    line = _status_error(capsys, "--url", url, "--cacert", key)
    # Assert
    assert f"--cacert={key!r}" in line and "certificate" in line and "not its key" in line


def test_serve_with_a_folder_as_db_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: `--db DIR` (meant as the folder to keep the database in)
    code = main(["coordinator", "serve", "--db", str(tmp_path), "--admin-token", ADMIN])
    err = capsys.readouterr().err
    # Assert: one line naming the flag, before anything is opened (was SQLite's "unable to
    # open database file")
    assert code == 2
    lines = [line for line in err.splitlines() if "serve: error:" in line]
    assert lines == [
        f"plume coordinator serve: error: --db {tmp_path} is a folder; give the database "
        f"file's path, e.g. --db {tmp_path / 'plume.db'}"
    ]
    assert list(tmp_path.iterdir()) == []


def test_create_task_secure_notes_a_deadline_shorter_than_its_stages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the defaults (--deadline 60, --stage-timeout 30), as the README's secure
    # example runs them, and a deadline sized as operations.md says
    config = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN)
    base = ["coordinator", "create-task", "--admin-token", ADMIN, "--model", "digits_mlp",
            "--clients-per-round", "3", "--secure"]  # fmt: skip
    with ServerThread(config) as url:
        # Execute
        short = main([*base, "--url", url])
        short_err = capsys.readouterr().err
        sized = main([*base, "--url", url, "--deadline", "150"])
        sized_err = capsys.readouterr().err
    # Assert: both created; the first says why its rounds may end at the deadline
    assert (short, sized) == (0, 0)
    assert short_err.splitlines() == [
        "plume coordinator create-task: note: --deadline 60 s is shorter than 4 stages x "
        "--stage-timeout 30 s: a round whose devices drop out in two stages can reach its "
        "deadline unfinished and be abandoned; size --deadline as training time + 4 x "
        "--stage-timeout (docs/operations.md, Secure tasks)"
    ]
    assert sized_err == ""


def test_sim_help_says_how_to_trust_an_https_coordinator(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Execute
    with pytest.raises(SystemExit):
        main(["sim", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    # Assert: sim has no --cacert; httpx (the admin client and the devices) reads SSL_CERT_FILE
    assert "an https:// one with a private CA also SSL_CERT_FILE=PEM" in text


def test_create_task_whose_model_upload_got_no_answer_says_to_check_the_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the PUT of the initial model times out (a large model on a slow link); the
    # POST before it created the task
    from coordinator.service import admin_client

    real = admin_client.AdminClient._call

    def call(self: Any, method: str, path: str, *a: Any, **k: Any) -> Any:
        if method == "PUT":
            raise httpx.ReadTimeout("timed out")
        return real(self, method, path, *a, **k)

    monkeypatch.setattr(admin_client.AdminClient, "_call", call)
    config = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN)
    with ServerThread(config) as url:
        # Execute
        code = main([
            "coordinator", "create-task", "--url", url, "--admin-token", ADMIN,
            "--model", "digits_mlp",
        ])  # fmt: skip
        err = capsys.readouterr().err
    # Assert: the model may or may not have landed; the line says how to find out
    assert code == 1
    assert err.splitlines() == [
        "plume coordinator create-task: error: task 1 was created but its initial model's "
        f"upload got no answer from {url} within --timeout 30 s; `plume coordinator status "
        "--task 1` shows whether "
        "it is active or still awaiting_model (then it runs no round)"
    ]


def test_sim_names_every_file_it_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: a tiny run (2 rounds of digits_mlp on 6 devices)
    out = tmp_path / "run"
    argv = ["sim", "--dataset", "digits", "--model", "digits_mlp", "--clients", "6",
            "--per-round", "3", "--rounds", "2", "--local-epochs", "1", "--no-progress",
            "--out", str(out)]  # fmt: skip
    # Execute
    code = main(argv)
    last = capsys.readouterr().out.splitlines()[-1]
    # Assert: the last line names the two plots README.md lists beside the first one
    assert code == 0
    assert last == (
        f"wrote {out}/ (rounds.json, rounds.csv, ledger.csv) and {out / 'accuracy_vs_upload_bytes.png'}, "
        f"{out / 'bytes_per_round.png'}, {out / 'round_durations.png'}"
    )
    assert all((out / name).is_file() for name in ("bytes_per_round.png", "round_durations.png"))


def test_cacert_takes_a_folder_of_hashed_certificates_and_refuses_an_empty_path(
    tls_server: tuple[str, str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `_admin` reads --cacert as the clients read verify= (protocol.tls): before, a folder was
    # "no such file" and an empty path "--cacert : no such file" (was is_file, then a cafile).
    from tests.protocol.test_h196_tls_verify import hashed_dir

    # Prepare: the self-signed certificate under its subject hash, as `openssl rehash` names it
    url, cert, _ = tls_server
    folder = hashed_dir(cert, tmp_path / "certs")
    # Execute
    ok = main(["coordinator", "status", "--admin-token", ADMIN, "--url", url, "--cacert", folder])
    capsys.readouterr()
    line = _status_error(capsys, "--url", url, "--cacert", "")
    # Assert
    assert ok == 0
    assert "--cacert=''" in line and "empty" in line
