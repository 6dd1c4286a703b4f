"""An app directory keyed on the coordinator database's incarnation.

The app directory keeps its pending upload and accepted records by round id, and its
error-feedback residuals and held models by task id: ids a coordinator on a new, reset or
restored database at the same address hands out again for other rounds and tasks. Before, the
only signal was the registration's `"created": true`: lost (the answer dropped, its retry
answered `created: false`) the records were settled against the new database's rounds, and the
residual of old task 1 was added to the new task 1's first update whatever the answer. Now the
coordinator names its database's incarnation in the registration answer and in the check-in
answers a device acts on, the app directory remembers it (state.json `incarnation`), and under
another one the uploads, residuals and models are set aside with one warning.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.messages import MessageError, check_incarnation
from sdk import Client
from sdk.client import ClientError
from tests.coordinator.test_service_support import (
    SoftmaxTrainer,
    await_assignment,
    create_task,
    local_data,
    task_config,
)
from tests.sdk.test_s53a_reset_coordinator import serve  # restarts at a port, taken or not

DOC = Path(__file__).parents[2] / "docs" / "devices.md"
DOC_URL = "http://127.0.0.1:8080/"
# The incarnations docs/devices.md shows in its warning (the test's are random).
DOC_NEW, DOC_OLD = "5d1b3c0f8e2a4b6c9d7e1f0a2b3c4d5e", "0c9f4e2d7a1b3c5d6e8f9a0b1c2d3e4f"


def _task(url: str) -> int:
    with httpx.Client(base_url=url) as http:
        return create_task(
            http, task_config(clients_per_round=1, rounds=3, deadline_s=60.0,
                              selection_timeout_s=0.2),
        )  # fmt: skip


def _state(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / "state.json").read_text())
    return data


def _files(root: Path, *patterns: str) -> list[str]:
    return sorted(p.name for pattern in patterns for p in root.glob(pattern))


def _models(root: Path) -> list[str]:
    """The model files held (model.f32, model-<t>.f32)."""
    return _files(root, "model.f32", "model-*.f32")


def _residuals(root: Path) -> list[str]:
    return _files(root, "residual*.bin")


def _first_life(url: str, root: Path) -> int:
    """Round 1 of a new task of the coordinator at `url`, delivered: its accepted record is
    left (outcome not asked), with the task's residual and model. The task's id."""
    task_id = _task(url)
    x, y = local_data(1)
    with Client(url, str(root), sleep=lambda s: None) as c:
        c.register()
        c.train_round(await_assignment(c, task_id), SoftmaxTrainer(), x, y)
    assert (root / "accepted-1.json").exists() and _models(root) == ["model.f32"]
    assert _residuals(root) == [f"residual-{task_id}.bin"]
    return task_id


def _lose_first_register() -> Callable[..., Any]:
    """Middleware: the first registration reaches the coordinator, its answer is lost."""
    lost = []

    def mod(request: httpx.Request, nxt: Callable[..., Any]) -> Any:
        response = nxt(request)
        if request.url.path == "/v1/devices" and not lost:
            lost.append(response.read())
            raise httpx.ReadError("connection reset: the answer is lost", request=request)
        return response

    mod.lost = lost  # type: ignore[attr-defined]
    return mod


def _without_incarnation(request: httpx.Request, nxt: Callable[..., Any]) -> Any:
    """Middleware: answers as a coordinator before the field sends them (no `incarnation`)."""
    response = nxt(request)
    if request.url.path not in ("/v1/devices", "/v1/checkin") or response.status_code != 200:
        return response
    body = json.loads(response.read())
    body.pop("incarnation", None)
    return httpx.Response(200, json=body, request=request)


def test_a_lost_registration_answer_still_sets_the_old_database_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: round 1 delivered at the first database, then a new database at the address
    root = tmp_path / "dev"
    with serve(tmp_path / "first.db") as url:
        task_id = _first_life(url, root)
        port = httpx.URL(url).port
    old = _state(root).get("incarnation")
    lose = _lose_first_register()
    with serve(tmp_path / "second.db", port) as url2:
        assert _task(url2) == task_id  # ids start again
        with Client(url2, str(root), mods=(lose,), sleep=lambda s: None) as c:
            # Execute: the answer saying created is lost; the retry says created: false
            with caplog.at_level(logging.WARNING, logger="plume.sdk"):
                c.register()
            left = (_files(root, "accepted-*"), _residuals(root), _models(root))

    # Assert: the lost answer said created; the retry did not, and its incarnation set all aside
    assert left == ([], [], [])
    assert json.loads(lose.lost[0])["created"] is True  # type: ignore[attr-defined]
    new = json.loads(lose.lost[0])["incarnation"]
    assert new != old and _state(root)["incarnation"] == new
    warned = [r.getMessage() for r in caplog.records if r.name == "plume.sdk"]
    assert len(warned) == 1, warned
    assert f"incarnation {new}, was {old}" in warned[0]
    assert "the accepted upload to round 1 of task 1 is forgotten as delivered" in warned[0]
    # docs/devices.md shows it word for word (its app_dir, address and incarnations)
    shown = (
        warned[0].replace(str(root), "plume-app").replace(f"{url2}/", DOC_URL)
        .replace(new, DOC_NEW).replace(old, DOC_OLD)
    )  # fmt: skip
    assert shown in DOC.read_text()


def _round_at_new_database(tmp_path: Path, root: Path, db: str, port: int) -> tuple[bytes, bytes]:
    """Register `root`'s device at a new database `db` on `port`, run its task 1's round 1;
    (the frame sent, the residual after)."""
    x, y = local_data(2)
    with serve(tmp_path / db, port) as url:
        task_id = _task(url)
        with Client(url, str(root), sleep=lambda s: None) as c:
            c.register()
            held = _residuals(root)
            report = c.train_round(await_assignment(c, task_id), SoftmaxTrainer(), x, y)
            assert report.round_id == 1 and report.receipt.accepted and not report.resent
            assert held == [], "the old task's residual is still held after the registration"
    frame = (root / "accepted-1.frame").read_bytes()
    return frame, (root / f"residual-{task_id}.bin").read_bytes()


def test_the_old_residual_is_not_added_to_a_new_databases_task_of_the_same_id(
    tmp_path: Path,
) -> None:
    # Prepare: a device that ran round 1 of task 1 at a first database (residual held)
    used = tmp_path / "used"
    with serve(tmp_path / "first.db") as url:
        _first_life(url, used)
        port = httpx.URL(url).port

    # The same device with nothing else kept: its key alone (its encoding's seeds derive
    # from its id), registered nowhere yet
    fresh = tmp_path / "fresh"
    fresh.mkdir(mode=0o700)
    (fresh / "device_key").write_bytes((used / "device_key").read_bytes())
    (fresh / "device_key").chmod(0o600)

    # Execute: it takes part in a new database's task 1 (same id, same layout), and the same
    # device without its old state does the same with the same data at another new database
    sent, residual = _round_at_new_database(tmp_path, used, "second.db", port)
    fresh_sent, fresh_residual = _round_at_new_database(tmp_path, fresh, "third.db", 0)

    # Assert: the update and the residual are those of the device without its old state
    assert sent == fresh_sent
    assert residual[:-32] == fresh_residual[:-32]  # the trailer's write number may differ


def test_the_same_database_restarted_keeps_everything(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: round 1 delivered, then the coordinator restarts on its own database
    root, db = tmp_path / "dev", tmp_path / "plume.db"
    with serve(db) as url:
        task_id = _first_life(url, root)
        port = httpx.URL(url).port
    incarnation = _state(root)["incarnation"]
    residual = (root / f"residual-{task_id}.bin").read_bytes()
    with serve(db, port) as url2, Client(url2, str(root), sleep=lambda s: None) as c:
        # Execute
        with caplog.at_level(logging.WARNING, logger="plume.sdk"):
            c.register()
            answer = c.check_in(task_id)  # asks about round 1
        models = _models(root)

    # Assert: the same incarnation; nothing set aside, the record settled as before
    assert len(incarnation) == 32 and _state(root)["incarnation"] == incarnation
    assert [r for r in caplog.records if r.name == "plume.sdk"] == []
    assert answer.round_outcome == "committed" and answer.incarnation == incarnation
    assert not (root / "accepted-1.json").exists()
    assert (root / f"residual-{task_id}.bin").read_bytes() == residual
    assert models == ["model.f32"]


def test_an_old_coordinator_without_the_field_behaves_as_before(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: round 1 delivered at a coordinator that names its incarnation
    root = tmp_path / "dev"
    with serve(tmp_path / "plume.db") as url:
        task_id = _first_life(url, root)
        port = httpx.URL(url).port
    incarnation = _state(root)["incarnation"]
    residual = (root / f"residual-{task_id}.bin").read_bytes()
    # Execute: a coordinator before the field on a new database at the address (no incarnation
    # in any answer): only `created` tells, as before
    with serve(tmp_path / "second.db", port) as url2:
        _task(url2)
        mods = (_without_incarnation,)
        with Client(url2, str(root), mods=mods, sleep=lambda s: None) as c:
            with caplog.at_level(logging.WARNING, logger="plume.sdk"):
                c.register()
                answer = c.check_in(task_id)

    # Assert: the uploads set aside (created: true), the residual and model kept, as before;
    # the incarnation remembered is the last one heard
    assert answer.assignment is not None and answer.incarnation is None
    warned = [r.getMessage() for r in caplog.records if r.name == "plume.sdk"]
    assert len(warned) == 1 and "registered this device anew" in warned[0], warned
    shown = warned[0].replace(str(root), "plume-app").replace(f"{url2}/", DOC_URL)
    assert shown in DOC.read_text()  # docs/devices.md shows it word for word
    assert not (root / "accepted-1.json").exists()
    assert (root / f"residual-{task_id}.bin").read_bytes() == residual
    assert _state(root)["incarnation"] == incarnation


def test_a_check_in_answer_of_another_incarnation_sets_aside_before_settling(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: round 1 delivered; a new database at the address registered the device, and
    # that registration's answer never reached the app (it was killed): the app directory
    # still names the first database
    root = tmp_path / "dev"
    with serve(tmp_path / "first.db") as url:
        task_id = _first_life(url, root)
        port = httpx.URL(url).port
    with serve(tmp_path / "second.db", port) as url2:
        assert _task(url2) == task_id
        with Client(url2, str(tmp_path / "other"), sleep=lambda s: None) as other:
            other.register()
            await_assignment(other, task_id)  # the new database's round 1 opens for another
        lose = _lose_first_register()
        with Client(url2, str(root), mods=(lose,), retries=0, sleep=lambda s: None) as c:
            with pytest.raises(ClientError):
                c.register()
        assert _state(root).get("registered") and (root / "accepted-1.json").exists()
        with Client(url2, str(root), sleep=lambda s: None) as c:
            # Execute: a check-in asks about round 1, which the new database has (another's)
            with caplog.at_level(logging.WARNING, logger="plume.sdk"):
                answer = c.check_in(task_id)
            left = (_residuals(root), _models(root))

    # Assert: set aside first; the answer's outcome of the other round 1 settled nothing
    assert not (root / "accepted-1.json").exists() and left == ([], [])
    assert answer.round_outcome is not None and answer.incarnation is not None
    warned = [r.getMessage() for r in caplog.records if r.name == "plume.sdk"]
    assert len(warned) == 1 and "the error-feedback residual of task 1 is dropped" in warned[0]


def test_a_malformed_incarnation_is_a_bad_answer(tmp_path: Path) -> None:
    def odd(request: httpx.Request, nxt: Callable[..., Any]) -> Any:
        response = nxt(request)
        body = json.loads(response.read())
        body["incarnation"] = "ABC"
        return httpx.Response(200, json=body, request=request)

    with serve(tmp_path / "plume.db") as url:
        with Client(url, str(tmp_path / "dev"), mods=(odd,), sleep=lambda s: None) as c:
            with pytest.raises(ClientError) as caught:
                c.register()
    assert caught.value.reason == "bad_response"
    assert "$.incarnation = 'ABC' is not an incarnation (32 lower-case hex digits)" in str(
        caught.value
    )
    assert not (tmp_path / "dev" / "state.json").exists()


@given(st.one_of(st.text(max_size=40), st.text("0123456789abcdefABCDEF", min_size=30, max_size=34)))
def test_an_incarnation_is_32_lower_case_hex_digits(text: str) -> None:
    good = len(text) == 32 and set(text) <= set("0123456789abcdef")
    if good:
        assert check_incarnation(text) == text
    else:
        with pytest.raises(MessageError, match=r"^\$\.incarnation = .* is not an incarnation"):
            check_incarnation(text)


@given(st.one_of(st.integers(), st.booleans(), st.floats(), st.lists(st.integers(), max_size=2)))
def test_an_incarnation_that_is_no_string_is_named(value: object) -> None:
    with pytest.raises(MessageError, match=r"^\$\.incarnation: expected a string of hex digits"):
        check_incarnation(value)
    assert check_incarnation(None) is None
