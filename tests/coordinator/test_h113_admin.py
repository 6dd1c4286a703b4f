"""Admin commands an operator runs first: `status` on a coordinator with no task yet said
nothing at all (exit 0, no output), and `get-model --out` into a folder this user may not write
downloaded (and for `--version`, had the coordinator rebuild) the model before failing."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from coordinator.cli import main
from coordinator.service import ServerThread, ServiceConfig
from tests.coordinator.test_service_support import refused_url
from tests.test_h74_operator import _plume

ADMIN = "s3cret-h113a"


def test_status_of_a_coordinator_without_tasks_says_so_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ServerThread(ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token=ADMIN)) as url:
        code = main(["coordinator", "status", "--url", url, "--admin-token", ADMIN])
    out, err = capsys.readouterr()
    # stdout stays one JSON line a task (none), so a script reading it is unchanged
    assert code == 0 and out == ""
    assert err.strip() == (
        f"plume coordinator status: note: the coordinator at {url} has no task yet; "
        "`plume coordinator create-task` makes one"
    )


def test_get_model_into_a_folder_it_may_not_write_fails_before_any_request() -> None:
    # Prepare: a folder of another user (as root: root's, get-model running as nobody), and
    # a --url where nothing listens: the folder must be named before anything is asked
    folder = Path(tempfile.mkdtemp(prefix="plume-h113-ro-"))
    try:
        with refused_url() as url:
            cmd = [*_plume(), "coordinator", "get-model", "--url", url, "--admin-token", ADMIN,
                   "--task", "1", "--out", str(folder / "model.npz")]  # fmt: skip
            if os.geteuid() == 0:
                from tests.coordinator.test_h113_db_permissions import AS_NOBODY, nobody_runs_plume

                if not nobody_runs_plume():
                    pytest.skip("needs `nobody` to run plume (setpriv, a readable checkout)")
                folder.chmod(0o755)
                cmd = [*AS_NOBODY, *cmd]
            else:
                folder.chmod(0o555)
            # Execute
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=120, check=False,
                env={**os.environ, "PLUME_DEBUG": "", "HOME": "/tmp"},
            )  # fmt: skip
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)
    # Assert
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().startswith(
        f"plume coordinator get-model: error: cannot write --out {folder / 'model.npz'}: "
        f"this user may not create files in {folder}"
    ), done.stderr


def test_a_url_with_a_path_the_coordinator_does_not_serve_says_to_check_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: "error: Not Found (404 not_found, GET /plume/v1/admin/tasks)"
    with ServerThread(ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token=ADMIN)) as url:
        code = main(["coordinator", "status", "--url", f"{url}/plume", "--admin-token", ADMIN])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err == (
        f"plume coordinator status: error: {url}/plume answered GET /plume/v1/admin/tasks with "
        "404 not_found: no such route; --url is the coordinator's base URL (scheme, host and "
        "port, plus a path only if a proxy serves it under one)"
    )
    # plume sim --coordinator words it by its own flag
    from coordinator._cli import admin_error_text
    from coordinator.service import AdminError

    refused = AdminError(
        "GET", "/plume/v1/admin/tasks", 404, '{"reason": "not_found", "detail": "Not Found"}'
    )
    assert "; --coordinator is the coordinator's base URL" in admin_error_text(
        refused, "http://h:1/plume", "--coordinator"
    )
