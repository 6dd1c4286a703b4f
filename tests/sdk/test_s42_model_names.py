"""Check-in `model_names` (helper-338's review): an ONNX device whose artifacts were exported
under a name (`plume export --model NAME`) also declares that name, and the coordinator gives it
no task of another model name, even of the same layout.

Before, the check-in carried only the layout (`model_layouts`): with two tasks of one layout,
"mlp_b" created first and "mlp", a device exported as "mlp" calling `participate()` without a
task was given task 1 at every call, refused it in the SDK (`LayoutMismatchError`, status 0)
and never reached task 2; task 1's round waited for its deadline each time. The docs said a
coordinator that reads `model_layouts` gives an `OrtTrainer` only tasks of its model.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from protocol.messages import MAX_MODEL_NAME, MessageError, check_model_names
from sdk import Client, LayoutMismatchError
from sdk import client as sdk_client
from sdk.client import MODEL_LAYOUT_MISMATCH
from sdk.ort import OrtTrainer
from tests.coordinator.test_h261_model_layouts import _Http, served
from tests.coordinator.test_service_support import SoftmaxTrainer, admin_get

from .test_h261_model_layouts import World, _create, _participate, _Requests, artifacts, world

__all__ = ["artifacts", "served", "world"]  # fixtures used here


def test_a_device_exported_under_a_name_gets_only_that_models_task(world: World) -> None:
    # Prepare: two tasks of the "mlp" artifacts' layout; the first says it is model "mlp_b"
    trainer = world.trainers["mlp"]
    other = _create(world.http, trainer, "mlp_b")
    mine = _create(world.http, trainer, "mlp")
    seen = _Requests()
    # Execute: two calls naming no task
    reports = [_participate(world, "dev", "mlp", seen, False, max_wait_s=20) for _ in range(2)]
    # Assert: both rounds of its own task; the other task never opened a round for it
    assert [r.task_id for r in reports] == [mine, mine]
    assert all(r.receipt.accepted for r in reports)
    assert set(seen.models) == {f"/v1/tasks/{mine}/model"}
    assert all(b'"model_names":["mlp"]' in body for body in seen.check_ins)
    assert admin_get(world.http, f"/v1/admin/tasks/{other}")["current_round"] is None


def test_naming_a_same_layout_task_of_another_name_is_409_at_the_first_check_in(
    world: World,
) -> None:
    # Prepare
    other = _create(world.http, world.trainers["mlp"], "mlp_b")
    seen = _Requests()
    # Execute
    with pytest.raises(LayoutMismatchError) as raised:
        _participate(world, "dev", "mlp", seen, False, task_id=other, max_wait_s=20)
    # Assert: the coordinator's refusal, naming both names; nothing downloaded
    err = raised.value
    assert (err.status, err.reason, err.task_id) == (409, MODEL_LAYOUT_MISMATCH, other)
    assert f'task {other}\'s model "mlp_b" is not one of the model_names' in err.detail
    assert '("mlp")' in err.detail
    assert len(seen.check_ins) == 1 and seen.models == []


def test_only_a_named_export_declares_a_name(artifacts: dict[str, Path], tmp_path: Path) -> None:
    # Prepare: the fixture's exports are named; a trainer without a manifest is not
    named = OrtTrainer.from_dir(artifacts["mlp"])
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        return httpx.Response(200, json={"action": "wait", "retry_after_s": 5.0})

    # Execute
    with Client("http://c", str(tmp_path), transport=httpx.MockTransport(handler)) as c:
        c._run(sdk_client._check_in_flow(c._core, None, float("inf"), None, ("m\u00e9lp",)))
    # Assert
    assert sdk_client._declared_names(named) == ("mlp",)
    assert sdk_client._declared_names(SoftmaxTrainer()) is None  # type: ignore[arg-type]
    cap = sdk_client.MAX_MODEL_BYTES
    assert bodies == [
        f'{{"max_model_bytes":{cap},"features":["error_feedback_off"],'
        '"model_names":["m\\u00e9lp"]}'.encode()
    ]


BAD_NAMES = [
    ('"mlp"', "expected an array of model names, got a string"),
    ("[]", "an empty array declares no model"),
    ("[7]", "[0]: expected a model name (a string), got a number"),
    ('[""]', f"[0] = '' is not a model name (1 to {MAX_MODEL_NAME} characters, got 0)"),
    ('["' + "x" * (MAX_MODEL_NAME + 1) + '"]', f"got {MAX_MODEL_NAME + 1}"),
    ('["a", "a"]', "[1] = 'a' is listed twice"),
    ("[" + ",".join(f'"m{i}"' for i in range(17)) + "]", "17 names, more than 16"),
]


@pytest.mark.parametrize(("value", "says"), BAD_NAMES, ids=[v[:20] for v, _ in BAD_NAMES])
def test_check_model_names_refuses_bad_values_naming_the_field(value: str, says: str) -> None:
    with pytest.raises(MessageError) as refused:
        check_model_names(json.loads(value))
    assert str(refused.value).startswith("$.model_names")
    assert says in str(refused.value)


@pytest.mark.parametrize(("value", "says"), BAD_NAMES[:3], ids=["string", "empty", "number"])
def test_the_service_answers_a_bad_value_422(served: _Http, value: str, says: str) -> None:
    response = served.check_in(b'{"model_names":' + value.encode() + b"}")
    assert response.status_code == 422, response.text
    assert response.json()["reason"] == "validation"
    assert says in response.json()["detail"]


@pytest.mark.parametrize("value", ["null", '["mlp"]'])
def test_the_service_takes_a_good_value_and_null(served: _Http, value: str) -> None:
    response = served.check_in(b'{"model_names":' + value.encode() + b"}")
    assert response.status_code == 200, response.text
