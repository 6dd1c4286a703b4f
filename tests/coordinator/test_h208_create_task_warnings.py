"""The warnings a new task is created with reach the operator who creates it.

A `dp` stage whose delta is below 1/N but above 1/(10 N) (N = its `population=`) is taken
with a warning that the coordinator logs (`delta_note`, helper-204), and so is a `dp` stage
with a noise `seed=` (no accounting, or a coordinator that allows seeded dp). Before, neither
reached the operator: `POST /v1/admin/tasks` answered `{"task_id", "state"}` only, and
`plume coordinator create-task` printed only the error-feedback note, which it computed
itself. Now the answer carries `warnings` (the lines the coordinator logs for the task,
`rounds.creation_warnings`), `AdminClient.create_task` keeps them in `created_warnings`, and
create-task prints each on stderr (for a coordinator older than the field, the same checks
run locally). Every test here fails on the code before (the reader's because `_task_created`
is new).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from coordinator import _cli
from coordinator.aggregators import build_aggregator
from coordinator.aggregators._dp import delta_note, find_dp, seed_note
from coordinator.cli import main
from coordinator.service import AdminClient, ServerThread, ServiceConfig
from coordinator.service.admin_client import _task_created
from coordinator.service.rounds import creation_warnings, unproven_feedback_note
from protocol.messages import CodecParams, to_json

from .test_service_support import ADMIN, task_config

AUTH = {"authorization": f"Bearer {ADMIN}"}
N = 1000
# delta = 1/(5 N): below 1/N (refused from there), above 1/(10 N) (warned about).
FIFTH = f"dp:clip=1,z=1,population={N},sample=2,delta={1 / (5 * N):g}+fedavg"
SEEDED = "dp:clip=1,z=1,denom=2,seed=3+fedavg"  # no accounting: allowed, with a warning
PROG = "plume coordinator create-task"


def _service(tmp_path: Path, **over: Any) -> ServiceConfig:
    return ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token=ADMIN, **over)


def _post(url: str, aggregator: str, **over: Any) -> httpx.Response:
    body = to_json(task_config(aggregator=aggregator, **over))
    with httpx.Client(base_url=url, timeout=30) as http:
        return http.post("/v1/admin/tasks", json=body, headers=AUTH)


def test_the_creation_answer_carries_the_delta_warning(tmp_path: Path) -> None:
    # Prepare: error feedback off, so the delta warning is the only one due
    off = CodecParams(topk=0.25, bits=8, error_feedback=False)
    note = delta_note(find_dp(build_aggregator(FIFTH)))  # type: ignore[arg-type]
    assert note is not None and "delta 0.0002 is below 1/N = 1/1000" in note
    with ServerThread(_service(tmp_path)) as url:
        # Execute
        r = _post(url, FIFTH, codec=off)
        plain = _post(url, "fedavg")
        schema = httpx.get(f"{url}/openapi.json").json()
    # Assert: the existing fields as before, and the warning (none for a plain task)
    assert r.status_code == 201, r.text
    assert r.json() == {"task_id": 1, "state": "awaiting_model", "warnings": [note]}
    assert plain.status_code == 201 and plain.json()["warnings"] == []
    created = schema["paths"]["/v1/admin/tasks"]["post"]["responses"]["201"]
    ref = created["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    fields = schema["components"]["schemas"][ref]["properties"]
    assert {"task_id", "state", "warnings"} <= fields.keys()


def test_every_warning_in_the_order_the_coordinator_logs_them(tmp_path: Path) -> None:
    # Prepare: a seeded, amplified dp stage with a delta of 1/(5 N), error feedback on,
    # on a coordinator that allows seeded dp (tests and simulations only)
    spec = FIFTH.replace("+fedavg", ",seed=5+fedavg")
    with ServerThread(_service(tmp_path, allow_seeded_dp=True)) as url:
        # Execute
        r = _post(url, spec)
        seeded = _post(url, SEEDED)
    # Assert
    assert r.status_code == 201, r.text
    warnings = r.json()["warnings"]
    assert len(warnings) == 3
    assert warnings[0].startswith("dp: delta 0.0002 is below 1/N")
    assert warnings[1].startswith("its dp stage has seed=5")
    assert warnings[2] == unproven_feedback_note(task_config(aggregator=spec))
    assert warnings == creation_warnings(task_config(aggregator=spec))
    assert seeded.status_code == 201, seeded.text
    assert seeded.json()["warnings"] == [seed_note(find_dp(build_aggregator(SEEDED)))]


def test_the_admin_client_keeps_the_warnings(tmp_path: Path) -> None:
    params = np.zeros(170, np.float32)
    with ServerThread(_service(tmp_path)) as url, AdminClient(url, ADMIN) as admin:
        assert admin.created_warnings is None
        task_id = admin.create_task(task_config(aggregator=FIFTH), params)
        first = admin.created_warnings
        admin.create_task(task_config(), params)
        second = admin.created_warnings
    assert task_id == 1
    assert first is not None and len(first) == 2  # the delta and the error-feedback notes
    assert first[0].startswith("dp: delta 0.0002 is below 1/N")
    assert second == []


def test_create_task_prints_the_delta_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: no error feedback, so before nothing was printed at all
    flags = ["--model", "mlp", "--clients-per-round", "2", "--over-selection", "1"]
    flags += ["--aggregator", FIFTH, "--no-error-feedback"]
    with ServerThread(_service(tmp_path)) as url:
        # Execute
        code = main(["coordinator", "create-task", "--url", url, "--admin-token", ADMIN, *flags])
    out = capsys.readouterr()
    # Assert: the task's id on stdout, then the warning on stderr, once
    assert code == 0, out.err
    assert '"task_id": 1' in out.out
    lines = out.err.splitlines()
    assert len(lines) == 1, out.err
    assert lines[0].startswith(f"{PROG}: note: task 1: dp: delta 0.0002 is below 1/N = 1/1000")
    assert "1/(10 N) = 0.0001" in lines[0]


def test_create_task_prints_each_warning_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The error-feedback note, which create-task printed itself before, is now among the
    # coordinator's warnings: printed once, after the delta warning.
    flags = ["--model", "mlp", "--clients-per-round", "2", "--over-selection", "1"]
    with ServerThread(_service(tmp_path)) as url:
        code = main(
            ["coordinator", "create-task", "--url", url, "--admin-token", ADMIN]
            + [*flags, "--aggregator", FIFTH]
        )
    err = capsys.readouterr().err
    assert code == 0, err
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith(f"{PROG}: note: task 1: dp: delta 0.0002 is below 1/N")
    assert lines[1].startswith(f"{PROG}: note: task 1: its dp stage accounts epsilon")
    assert err.count("rests on an unproven assumption") == 1


class _OlderAdmin:
    """An AdminClient of a coordinator older than `warnings`: no `created_warnings`."""

    def __enter__(self) -> _OlderAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def create_task(self, config: object, params: object) -> int:
        return 7


def test_an_older_coordinator_gets_the_same_checks_run_locally(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_cli, "_admin", lambda _args: _OlderAdmin())
    code = main(
        ["coordinator", "create-task", "--url", "http://127.0.0.1:9", "--admin-token", "t"]
        + ["--model", "mlp", "--clients-per-round", "2", "--over-selection", "1"]
        + ["--aggregator", FIFTH, "--no-error-feedback"]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert err.startswith(f"{PROG}: note: task 7: dp: delta 0.0002 is below 1/N")


@pytest.mark.parametrize(
    ("answer", "warnings"),
    [
        ({"task_id": 3, "state": "awaiting_model"}, None),
        ({"task_id": 3, "warnings": None}, None),
        ({"task_id": 3, "warnings": "dp: delta"}, None),
        ({"task_id": 3, "warnings": ["a", 1, None, "b"]}, ["a", "b"]),
        ({"task_id": 3, "warnings": []}, []),
    ],
)
def test_the_client_reads_warnings_leniently(answer: dict[str, Any], warnings: Any) -> None:
    # The task exists once its id is read: a warning field the client cannot read must not
    # stop the initial model's upload.
    assert _task_created(answer) == (3, warnings)
