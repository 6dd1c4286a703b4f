"""A task may turn its devices' error feedback off (`codec.error_feedback` false), and the one
combination whose accounted epsilon has no proof is named when such a task is created.

docs/privacy.md, item 5: under fixed-size sampling with amplification (a `dp:` stage with
population=N > sample=k) a device's error-feedback residual ties other devices' later reports to
the target's participation. `create_task` logs a warning for exactly that combination (a lossy
upload codec, error feedback on, not secure) and `plume coordinator create-task` prints it;
neither refuses the task. Before, a task could not turn error feedback off, and nothing said so.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator.cli import main
from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.rounds import unproven_feedback_note, validate_task
from protocol.messages import CodecParams, to_json
from sdk import Client

from .test_h79_stop import _start
from .test_service_support import ADMIN, admin_get, await_assignment, create_task, task_config

AMPLIFIED = "dp:clip=1,z=2.0,population=20,sample=2,denom=2,eps=8+fedavg"
UNAMPLIFIED = "dp:clip=1,z=2.0,population=2,sample=2,denom=2,eps=8+fedavg"
NOTE = "the accounted epsilon rests on an unproven assumption"

# (aggregator, task_config overrides, whether the note is due)
CASES: list[tuple[str, dict[str, Any], bool]] = [
    (AMPLIFIED, {}, True),
    (AMPLIFIED, {"codec": CodecParams(topk=0.25, bits=8, error_feedback=True)}, True),
    (AMPLIFIED, {"codec": CodecParams(topk=1.0, bits=16)}, True),  # fp16 is lossy
    (AMPLIFIED, {"codec": CodecParams(topk=0.25, bits=8, error_feedback=False)}, False),
    # lossless too: an upload refused for good goes back into the residual (helper-105)
    (AMPLIFIED, {"codec": CodecParams(topk=1.0, bits=32)}, True),
    (UNAMPLIFIED, {}, False),  # population=k,sample=k: participation is not hidden
    ("dp:clip=1,z=2.0+fedavg", {}, False),  # no epsilon claimed
    ("fedavg", {}, False),
    ("fedavg", {"secure": {}, "clients_per_round": 3}, False),  # secure claims no amplification
]


@pytest.mark.parametrize(("aggregator", "over", "due"), CASES)
def test_the_note_is_due_for_exactly_the_unproven_combination(
    aggregator: str,
    over: dict[str, Any],
    due: bool,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Prepare
    cfg = task_config(aggregator=aggregator, **over)
    validate_task(cfg)
    coord = _start(tmp_path / "p.db")
    caplog.set_level(logging.WARNING, logger="plume.coordinator")
    # Execute
    note = unproven_feedback_note(cfg)
    task_id = coord.create_task(cfg)  # never refused
    # Assert
    logged = [r.getMessage() for r in caplog.records if NOTE in r.getMessage()]
    if due:
        assert note is not None and NOTE in note
        assert "population=20 > sample=2" in note and "--no-error-feedback" in note
        assert logged == [f"task {task_id}: {note}"]
        assert all(r.levelno == logging.WARNING for r in caplog.records if NOTE in r.message)
    else:
        assert note is None and logged == []


@pytest.mark.parametrize(
    ("over", "message"),
    [
        (
            {"downlink": CodecParams(topk=0.5, bits=8, error_feedback=False)},
            "downlink.error_feedback is not a setting",
        ),
        (
            {
                "codec": CodecParams(topk=0.25, bits=8, error_feedback=False),
                "secure": {},
                "clients_per_round": 3,
            },
            "codec.error_feedback false is for plain tasks",
        ),
        ({"codec": CodecParams(topk=0.25, bits=8, error_feedback=1)}, "true, false or null"),  # type: ignore[arg-type]
    ],
)
def test_settings_no_device_honours_are_refused(over: dict[str, Any], message: str) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        validate_task(task_config(**over))


def _codec_of(status: dict[str, Any]) -> dict[str, Any]:
    codec: dict[str, Any] = status["config"]["codec"]
    return codec


def test_over_http_the_setting_reaches_the_device_and_the_default_stays_out(
    tmp_path: Path,
) -> None:
    # Prepare
    off = task_config(
        clients_per_round=1, codec=CodecParams(topk=0.25, bits=8, error_feedback=False)
    )
    auth = {"authorization": f"Bearer {ADMIN}"}
    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        # Execute: a task with the default, one with error feedback off, one with a bad value
        plain = create_task(http, task_config(rounds=1))
        task_id = create_task(http, off)
        bad = to_json(off)
        bad["codec"]["error_feedback"] = "no"
        refused = http.post("/v1/admin/tasks", json=bad, headers=auth)
        with Client(url, str(tmp_path / "dev")) as device:
            device.register()
            assignment = await_assignment(device, task_id)
        # Assert
        assert refused.status_code == 422, refused.text
        assert refused.json()["reason"] == "validation"
        assert "error_feedback: expected a boolean or null" in refused.json()["detail"]
        assert "error_feedback" not in _codec_of(admin_get(http, f"/v1/admin/tasks/{plain}"))
        assert _codec_of(admin_get(http, f"/v1/admin/tasks/{task_id}"))["error_feedback"] is False
        listed = {t["task_id"]: _codec_of(t) for t in admin_get(http, "/v1/admin/tasks")}
        assert "error_feedback" not in listed[plain] and listed[task_id]["error_feedback"] is False
        assert assignment.codec == replace(off.codec)
        assert assignment.codec.error_feedback is False


def test_create_task_prints_the_note_and_no_error_feedback_clears_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    flags = ["--model", "mlp", "--clients-per-round", "2", "--over-selection", "1"]
    flags += ["--aggregator", AMPLIFIED]
    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token=ADMIN)
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        admin = ["--url", url, "--admin-token", ADMIN]
        # Execute
        first = main(["coordinator", "create-task", *admin, *flags])
        out_on = capsys.readouterr()
        second = main(["coordinator", "create-task", *admin, *flags, "--no-error-feedback"])
        out_off = capsys.readouterr()
        codecs = [_codec_of(admin_get(http, f"/v1/admin/tasks/{t}")) for t in (1, 2)]
    # Assert: both created; the note only for the first, on stderr, after the task's id
    assert (first, second) == (0, 0)
    assert '"task_id": 1' in out_on.out and '"task_id": 2' in out_off.out
    assert out_on.err.startswith("plume coordinator create-task: note: task 1: its dp stage")
    assert NOTE in out_on.err and NOTE not in out_off.err
    assert "error_feedback" not in codecs[0] and codecs[1]["error_feedback"] is False


def test_no_error_feedback_with_secure_names_its_flag(capsys: pytest.CaptureFixture[str]) -> None:
    # Execute: refused before any request (the URL is a closed port)
    code = main(
        ["coordinator", "create-task", "--model", "mlp", "--secure", "--no-error-feedback"]
        + ["--url", "http://127.0.0.1:9", "--admin-token", "t"]
    )
    # Assert
    err = capsys.readouterr().err
    assert code == 2  # a flag's value refused before any request (helper-231)
    assert "codec.error_feedback false is for plain tasks" in err
    assert err.rstrip().endswith("(--no-error-feedback)"), err
