"""The numbers docs/operations.md gives for the coordinator's fixed limits, read from the doc's
own sentences and compared with the constants the code runs with (stop 57, audit F): a
change to either side fails here, naming the sentence. Behaviour around each number is tested
where the doc cites it; this keeps the figures themselves from drifting apart."""

from __future__ import annotations

import inspect
import json
import re
import tempfile
from pathlib import Path

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig, app, auth, rounds, server, store
from coordinator.service.faults import FAULT_POINTS, FILE_ENV, PAUSE_ENV
from coordinator.service.wire import SEND_PART
from protocol.messages import MAX_RETRY_AFTER_S

from .test_service_support import ADMIN, create_task, device_client, send_signed

DOC = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
PROSE = " ".join(DOC.split())

_WORDS = {"one": 1.0, "a": 1.0, "two": 2.0, "half a": 0.5}


def _said(pattern: str) -> float:
    """The number the doc's sentence matching `pattern` (one group) gives."""
    found = re.search(pattern, PROSE)
    assert found is not None, f"the doc no longer says {pattern!r}"
    text = found.group(1).replace(",", "")
    return _WORDS[text] if text in _WORDS else float(text)


def _ratelimit_cap() -> int:
    default = inspect.signature(auth.RateLimiter.__init__).parameters["max_buckets"].default
    return int(default)


CASES = [
    # persistence and recovery
    (r"answers 503 `store_unavailable` with `Retry-After: (\d+)` and logs", app._STORE_RETRY_S),
    (r"at most one such line every (\d+) s: the next one says", app._STORE_LOG_EVERY_S),
    (r"`store_unavailable`, with `Retry-After: (\d+)` and a log line", app._DAMAGED_RETRY_S),
    (r"Every (\d+) s \(`RELOAD_RETRY_S`\)", rounds.RELOAD_RETRY_S),
    (r"the (\d+) most recently read \(`CLOSED_ROUNDS_KEPT`\)", rounds.CLOSED_ROUNDS_KEPT),
    (r"keeps the (\d+) finished-task snapshots", rounds.FINISHED_SNAPSHOTS_KEPT),
    (r"in transactions of its own \((\d+) frames each", store._PRUNE_BATCH),
    (r"it waits at most (\d+) ms, logs", store._WAL_TRUNCATE_WAIT_MS),
    (r"schema version above (\d+)\)", store.SCHEMA_VERSION),
    # readiness
    (r"held the database's write lock for more than ([\d.]+) s", app._READY_LOCK_WAIT_S),
    (r"each call \(at most (one) a second\) tries a write", app._READY_EVERY_S),
    (r"did not finish within (\d+) s", app._READY_WAIT_S),
    # stopping
    (r"still running 503 `shutting_down` with `Retry-After: (\d+)`", app._SHUTDOWN_RETRY_S),
    (r"--shutdown-grace` seconds \(default (\d+)\)", server.SHUTDOWN_GRACE_S),
    (r"(half a) second later, any connection still open", server._AFTER_GRACE_S),
    (r"is cut (one) second into the stop anyway", server._IDLE_CLOSE_S),
    (r"closed after uvicorn's (\d+) s as before", server._KEEP_ALIVE_S),
    # the flags' bounds and the timeouts' defaults
    (r"\| `--head-timeout` \| (\d+) \|", server.HEAD_TIMEOUT_S),
    (r"\| `--send-timeout` \| (\d+) \|", server.SEND_TIMEOUT_S),
    (r"accepted clock skew of signed requests, seconds \(1 to ([\d,]+), a day\)",
     rounds.MAX_SIGNATURE_WINDOW_S),
    (r"accepted clock skew of signed requests, seconds \((\d+) to", rounds.MIN_SIGNATURE_WINDOW_S),
    (r"`max_checkin_rate` is at least ([\d.]+) per second", rounds.MIN_CHECKIN_RATE),
    (r"`register_rate_per_s` is 0 or at least ([\de.-]+) per second", auth.MIN_REGISTER_RATE),
    (r"`register_burst` is at most ([\d,]+);", auth.MAX_REGISTER_BURST),
    (r"`tick_s` is at least ([\d.]+) s", rounds.MIN_TICK_S),
    (r"`--last N` \(1 to ([\d,]+)\)", rounds.MAX_ROUNDS_PAGE),
    (r"snapshots one device may download of one version of a task within an (hour)", None),
    # the upload budget
    (r"it waits up to (\d+) s for room", auth.ROOM_WAIT_S),
    (r"answered 503 `busy`, `Retry-After: (\d+)`", auth.BUSY_RETRY_S),
    (r"At most (\d+) bodies wait at once", auth.MAX_WAITING),
    (r"\(the pace that ends it within the body timeout; (\d+) s if that is off\)",
     auth.DEFAULT_PACE_S),
    (r"\| `--upload-buffer-mb` \(`upload_buffer_bytes`, in bytes\) \| (\d+) \|",
     rounds.DEFAULT_UPLOAD_BUFFER_BYTES >> 20),
    # downloads, registrations, the check-in's longest wait
    (r"handed to the connection in parts of (\d+) KiB", SEND_PART >> 10),
    (r"and at most ([\d,]+) are kept", _ratelimit_cap()),
    (r"a check-in's `retry_after_s` is at most a week \((\d+) s", MAX_RETRY_AFTER_S),
]  # fmt: skip


@pytest.mark.parametrize(("pattern", "real"), CASES, ids=[c[0][:48] for c in CASES])
def test_the_docs_figure_is_the_codes(pattern: str, real: float | None) -> None:
    if real is None:  # the hour of --snapshots-per-version
        assert "hour" in PROSE
        assert rounds.SNAPSHOT_WINDOW_S == 3600
        return
    assert _said(pattern) == float(real), pattern


def test_an_eighth_of_the_budget_for_waiting_first_parts() -> None:
    # "their first parts at most an eighth of the budget"
    assert "their first parts at most an eighth of the budget" in PROSE
    assert auth.WAIT_SHARE == 8


def test_the_fault_points_and_their_variables() -> None:
    # "`PLUME_FAULT_PAUSE_AT=after_accept|during_aggregation| during_publish` and
    # `PLUME_FAULT_FILE=<path>`"
    found = re.search(r"`PLUME_FAULT_PAUSE_AT=([a-z_|\s]+)` and `PLUME_FAULT_FILE=<path>`", PROSE)
    assert found is not None
    assert tuple(p.strip() for p in found.group(1).split("|")) == FAULT_POINTS
    assert (PAUSE_ENV, FILE_ENV) == ("PLUME_FAULT_PAUSE_AT", "PLUME_FAULT_FILE")


def test_the_service_config_defaults_the_doc_gives_in_prose() -> None:
    # "`ServiceConfig` also has `idle_retry_s` (30 s: ...), `tick_s` (0.05 s: ...),
    # `json_body_cap` (64 KiB: ...) and `snapshots_per_version` (16; ...)"
    config = ServiceConfig(db_path=":memory:")
    for field, unit in (("idle_retry_s", 1), ("tick_s", 1), ("json_body_cap", 1024)):
        said = _said(rf"`{field}` \(([\d.]+) (?:s|KiB)")
        assert said * unit == getattr(config, field), field
    assert _said(r"`snapshots_per_version` \((\d+);") == config.snapshots_per_version


def test_the_end_answer_waits_at_most_a_week() -> None:
    # "`idle_retry_s` (30 s: retry-after when no task is active, answered as at most a week,
    # 604,800 s, as every check-in wait is; also the `retry_after_s` of the `end` answer to a
    # check-in naming a done task)"
    assert "answered as at most a week, 604,800 s, as every check-in wait is" in PROSE
    with tempfile.TemporaryDirectory() as folder:
        config = ServiceConfig(db_path=f"{folder}/plume.db", admin_token=ADMIN, idle_retry_s=1e9)
        with ServerThread(config) as url, httpx.Client(base_url=url) as http:
            task = create_task(http)
            stop = http.post(
                f"/v1/admin/tasks/{task}/stop", headers={"authorization": f"Bearer {ADMIN}"}
            )
            assert stop.status_code == 200, stop.text
            device = device_client(url, f"{folder}/device")
            device.register()
            answers = {}
            for named in (task, None):
                body = json.dumps({} if named is None else {"task_id": named}).encode()
                r = send_signed(
                    http, device, "POST", "/v1/checkin", 0, body=body,
                    headers={"content-type": "application/json"},
                )  # fmt: skip
                assert r.status_code == 200, r.text
                answers[r.json()["action"]] = r.json()["retry_after_s"]
            device.close()
    assert answers["wait"] == MAX_RETRY_AFTER_S  # no active task: capped
    assert answers["end"] <= MAX_RETRY_AFTER_S  # the stopped task's "end": 1e9 today
