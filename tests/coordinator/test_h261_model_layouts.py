"""Check-in `model_layouts`: a device declares the model layouts it can train (the hex of
`compression.ModelSpec.fingerprint`), and a task of another layout is not given to it
(docs/http-api.md, "The models a device trains").

The gap (s25/onnx review, finding 1): a device whose trainer trains one model (an ONNX Runtime
device's artifacts fix it) checked in naming no task, was selected for whichever task came
first, and refused the assignment in the SDK (`_check_layout`) without telling the
coordinator: its slot stayed empty till the round's deadline. With two tasks of different
models, each device was handed the other's task and both tasks' rounds were abandoned. Now a
check-in naming no task passes such a task over, one naming it is 409
`model_layout_mismatch`, and a check-in without the field is answered as before.

`Coordinator.check_in` in process with a stepped clock (the rounds closed by the test, as the
service's ticker would), and the strict refusal of bad values through the real loopback
service (`CheckInRequest`'s own schema check).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from compression import ModelSpec, UpdateCodec, encode_snapshot
from coordinator.service import ServerThread, ServiceConfig, Store
from coordinator.service.errors import ApiError
from coordinator.service.rounds import Coordinator
from protocol.messages import (
    MAX_MODEL_LAYOUTS,
    MessageError,
    TaskConfig,
    TensorShape,
    check_model_layouts,
)
from protocol.names import Reason
from sdk.client import Client

from .test_restart_midround import Clock
from .test_service_support import ADMIN, SHAPES, signed_headers, task_config

OTHER_SHAPES = [("w1", (4, 16)), ("b1", (4,)), ("w2", (10, 4)), ("b2", (10,))]
SPECS = {"softmax": ModelSpec.from_shapes(SHAPES), "other": ModelSpec.from_shapes(OTHER_SHAPES)}
LAYOUT = {name: spec.fingerprint.hex() for name, spec in SPECS.items()}


def _config(model: str, **over: object) -> TaskConfig:
    spec = SPECS[model]
    shapes = [TensorShape(e.name, list(e.shape)) for e in spec.entries]
    settings: dict[str, object] = {
        "rounds": 3, "clients_per_round": 1, "selection_timeout_s": 600.0, "deadline_s": 600.0,
        **over,
    }  # fmt: skip
    return task_config(model_name=model, spec=shapes, **settings)


def _start(db: Path, clock: Clock) -> Coordinator:
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)), clock=clock)
    coord.restore()
    return coord


def _task(coord: Coordinator, model: str, **over: object) -> int:
    """A running task of `model`, with its initial model."""
    cfg = _config(model, **over)
    task_id = coord.create_task(cfg)
    params = np.random.default_rng(task_id).normal(0, 0.1, SPECS[model].size)
    coord.set_initial_model(task_id, encode_snapshot(params.astype(np.float32), SPECS[model]))
    return task_id


def _frame(coord: Coordinator, task_id: int, seed: int) -> bytes:
    rt = coord.runtimes[task_id]
    u = np.random.default_rng(seed).normal(0, 0.01, rt.spec.size).astype(np.float32)
    frame, _ = UpdateCodec(rt.spec, rt.config.codec.to_config()).encode(
        u, np.random.default_rng(seed + 100), weight=10.0
    )
    return frame


def _counted(coord: Coordinator, task_id: int) -> float:
    value = coord.metrics.registry.get_sample_value(
        "plume_check_ins_model_layout_mismatch_total", {"task": str(task_id)}
    )
    return 0.0 if value is None else value


@pytest.fixture
def coord(tmp_path: Path) -> Iterator[Coordinator]:
    c = _start(tmp_path / "plume.db", Clock())
    yield c
    c.store.close()


def test_two_tasks_each_device_only_ever_gets_its_own_tasks_rounds_and_all_commit(
    coord: Coordinator,
) -> None:
    # Prepare: the reviewer's fleet, one device per model, checking in naming no task; the
    # other model's task first for each of them in turn (lower ids are tried first)
    tasks = {"softmax": _task(coord, "softmax"), "other": _task(coord, "other")}
    devices = {"softmax": "d-softmax", "other": "d-other"}
    given: dict[str, list[int]] = {"softmax": [], "other": []}
    # Execute: three rounds of each task; the "other" device checks in first every time
    for r in range(3):
        for model in ("other", "softmax"):
            answer = coord.check_in(devices[model], None, model_layouts=[LAYOUT[model]])
            assert answer.assignment is not None, (r, model, answer)
            a = answer.assignment
            given[model].append(a.task_id)
            receipt, to_close = coord.submit(
                a.round_id, devices[model], f"k{r}{model}", _frame(coord, a.task_id, r)
            )
            assert receipt.accepted
            closing = to_close if to_close is not None else coord.runtimes[a.task_id]
            asyncio.run(coord.close_round(closing))
    # Assert: each device only in its own task's rounds, and every round committed
    assert given == {"softmax": [tasks["softmax"]] * 3, "other": [tasks["other"]] * 3}
    for task_id in tasks.values():
        rt = coord.runtimes[task_id]
        assert (rt.rounds_closed, rt.version) == (3, 3), task_id


def test_without_the_field_a_device_is_given_the_first_task_as_before(
    coord: Coordinator,
) -> None:
    # Prepare
    first = _task(coord, "softmax")
    second = _task(coord, "other")
    # Execute: an older SDK's check-in, and None given explicitly
    answer = coord.check_in("d-old", None)
    named = coord.check_in("d-none", None, model_layouts=None)
    # Assert: the first task's round, as before the field; the next device, the second task's
    # (the first one's round is full): any layout
    assert answer.assignment is not None and answer.assignment.task_id == first
    assert named.assignment is not None and named.assignment.task_id == second
    assert _counted(coord, first) == _counted(coord, second) == 0


def test_a_check_in_naming_a_task_of_another_layout_is_refused_with_a_reason(
    coord: Coordinator,
) -> None:
    # Prepare: the device sat in the task's pool from an older check-in without the field
    task = _task(coord, "softmax", clients_per_round=2)
    coord.check_in("d", task)
    assert "d" in coord.runtimes[task].pool
    # Execute
    with pytest.raises(ApiError) as refused:
        coord.check_in("d", task, model_layouts=[LAYOUT["other"]])
    # Assert: 409 naming the task's layout and the declared one; out of the pool; counted
    assert refused.value.status == 409
    assert refused.value.reason == Reason.MODEL_LAYOUT_MISMATCH
    detail = refused.value.detail
    assert f'task {task}\'s model "softmax" has layout {LAYOUT["softmax"]}' in detail
    assert f"({LAYOUT['other']})" in detail
    assert "d" not in coord.runtimes[task].pool
    assert _counted(coord, task) == 1


def test_naming_no_task_with_only_other_layouts_running_waits_and_says_why(
    coord: Coordinator,
) -> None:
    # Prepare
    task = _task(coord, "softmax")
    # Execute
    answer = coord.check_in("d", None, model_layouts=[LAYOUT["other"]])
    # Assert: the idle wait, its detail naming the task and its layout; not in the pool
    assert answer.action == "wait" and answer.assignment is None
    assert answer.retry_after_s == coord.config.idle_retry_s
    assert answer.detail.startswith("no active task this device can run: ")
    assert f'task {task}\'s model "softmax" has layout {LAYOUT["softmax"]}' in answer.detail
    assert coord.runtimes[task].pool == {}
    assert coord.runtimes[task].current is None
    assert _counted(coord, task) == 1


def test_a_device_selected_before_it_declared_its_layout_gets_no_assignment(
    coord: Coordinator,
) -> None:
    # Prepare: selected into the round by a check-in without the field
    _task(coord, "softmax")
    first = coord.check_in("d", None)
    assert first.assignment is not None
    # Execute: the same device, now declaring another layout
    again = coord.check_in("d", None, model_layouts=[LAYOUT["other"]])
    # Assert: not assigned the round it cannot train (as for max_model_bytes)
    assert again.assignment is None
    assert "has layout" in again.detail


def test_a_task_that_is_over_is_ended_whatever_the_layout(coord: Coordinator) -> None:
    # Prepare: a one-round task, run
    task = _task(coord, "softmax", rounds=1)
    a = coord.check_in("d", task).assignment
    assert a is not None
    _, to_close = coord.submit(a.round_id, "d", "k", _frame(coord, task, 0))
    asyncio.run(coord.close_round(to_close or coord.runtimes[task]))
    # Execute
    answer = coord.check_in("e", task, model_layouts=[LAYOUT["other"]])
    # Assert: "end", as for any device
    assert answer.action == "end"


def test_one_of_several_declared_layouts_is_enough(coord: Coordinator) -> None:
    task = _task(coord, "other")
    answer = coord.check_in("d", None, model_layouts=[LAYOUT["softmax"], LAYOUT["other"]])
    assert answer.assignment is not None and answer.assignment.task_id == task


def test_the_layout_is_the_spec_fingerprint_every_frame_carries(coord: Coordinator) -> None:
    task = _task(coord, "softmax")
    assert coord.runtimes[task].layout == SPECS["softmax"].fingerprint.hex() == LAYOUT["softmax"]
    assert len(LAYOUT["softmax"]) == 16


# -- the field's strict check --------------------------------------------------------------

GOOD = LAYOUT["softmax"]
BAD_VALUES = [
    ("true", "expected an array of layout fingerprints, got a boolean"),
    (f'"{GOOD}"', "expected an array of layout fingerprints, got a string"),
    ("{}", "expected an array of layout fingerprints, got an object"),
    ("7", "expected an array of layout fingerprints, got a number"),
    ("[]", "an empty array declares no layout"),
    ("[7]", "[0]: expected a string of 16 hex digits, got a number"),
    ("[null]", "[0]: expected a string of 16 hex digits, got null"),
    (f'["{GOOD}", ["x"]]', "[1]: expected a string of 16 hex digits, got an array"),
    (f'["{GOOD.upper()}"]', "[0] = '" + GOOD.upper() + "' is not a layout fingerprint"),
    (f'["{GOOD[:-1]}"]', "is not a layout fingerprint (16 lower-case hex digits"),
    (f'["{GOOD}0"]', "is not a layout fingerprint"),
    ('["0x23456789abcdef"]', "is not a layout fingerprint"),
    ('["' + "z" * 5000 + '"]', "is not a layout fingerprint"),
    (f'["{GOOD}", "{GOOD}"]', f"[1] = '{GOOD}' is listed twice"),
    (
        "[" + ",".join(f'"{i:016x}"' for i in range(MAX_MODEL_LAYOUTS + 1)) + "]",
        f"{MAX_MODEL_LAYOUTS + 1} layouts, more than {MAX_MODEL_LAYOUTS}",
    ),
]


@pytest.mark.parametrize(("value", "says"), BAD_VALUES, ids=[v[:24] for v, _ in BAD_VALUES])
def test_check_model_layouts_refuses_bad_values_naming_the_field(value: str, says: str) -> None:
    import json

    with pytest.raises(MessageError) as refused:
        check_model_layouts(json.loads(value))
    assert str(refused.value).startswith("$.model_layouts")
    assert says in str(refused.value)
    assert len(str(refused.value)) < 300  # a long value is not echoed whole


def test_check_model_layouts_takes_up_to_the_cap() -> None:
    many = [f"{i:016x}" for i in range(MAX_MODEL_LAYOUTS)]
    assert check_model_layouts(many) == frozenset(many)
    assert check_model_layouts([GOOD]) == frozenset({GOOD})


def test_a_long_array_is_refused_by_its_length_before_its_entries_are_read() -> None:
    # Entries that would each be refused: the length is what the refusal names
    value = [object()] * 1_000_000
    with pytest.raises(MessageError, match="1000000 layouts, more than 16"):
        check_model_layouts(value)


class _Http:
    def __init__(self, url: str, root: Path) -> None:
        self.http = httpx.Client(base_url=url)
        self.device = Client(url, str(root / "d"))
        self.device.register()

    def check_in(self, body: bytes) -> httpx.Response:
        headers = signed_headers(self.device._core.key, "POST", "/v1/checkin", 0, body)
        headers["content-type"] = "application/json"
        return self.http.post("/v1/checkin", content=body, headers=headers)

    def close(self) -> None:
        self.device.close()
        self.http.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Http]:
    root = tmp_path_factory.mktemp("h261_http")
    cfg = ServiceConfig(db_path=str(root / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as url:
        h = _Http(url, root)
        yield h
        h.close()


@pytest.mark.parametrize(("value", "says"), BAD_VALUES, ids=[v[:24] for v, _ in BAD_VALUES])
def test_the_service_answers_a_bad_value_422_with_the_reason(
    served: _Http, value: str, says: str
) -> None:
    # Execute
    response = served.check_in(b'{"model_layouts":' + value.encode() + b"}")
    # Assert
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["reason"] == "validation"
    assert "$.model_layouts" in body["detail"] and says in body["detail"], body


@pytest.mark.parametrize("value", ["null", f'["{GOOD}"]'])
def test_the_service_takes_a_good_value_and_null(served: _Http, value: str) -> None:
    response = served.check_in(b'{"model_layouts":' + value.encode() + b"}")
    assert response.status_code == 200, response.text
    assert response.json()["action"] == "wait"
