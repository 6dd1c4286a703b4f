"""`CodecParams.error_feedback`: a task's devices may be told to keep no error-feedback residual.

The default (None, on) is left out of the JSON, so a task, a task status and an assignment that
do not use it are the bytes they were before the field existed (the goldens below were printed
by the code before it); False or True round-trip, and anything but a JSON boolean or null is
refused, by a device (`from_json`) and by the coordinator's pydantic parsing alike."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from protocol.messages import (
    Assignment,
    CheckInResponse,
    CodecParams,
    MessageError,
    TaskConfig,
    TensorShape,
    TrainingParams,
    check_assignment,
    from_json,
    to_json,
)

CODEC_GOLDEN = (
    '{"topk":0.01,"bits":4,"block":256,"index":"auto","topk_mode":"exact","scope":"global",'
    '"zstd_level":3}'
)
TASK_GOLDEN = (
    '{"name":"t","model_name":"mlp","spec":[{"name":"w","shape":[2,3]}],"rounds":2,'
    '"clients_per_round":3,"over_selection":1.3,"deadline_s":60.0,"min_reports":1,'
    f'"selection_timeout_s":10.0,"codec":{CODEC_GOLDEN},"downlink":'
    '{"topk":0.02,"bits":8,"block":256,"index":"auto","topk_mode":"exact","scope":"global",'
    '"zstd_level":3},"aggregator":"fedavg","server_lr":1.0,"seed":0,"training":'
    '{"local_epochs":1,"batch_size":32,"lr":0.05},"max_chain":16,"retry_after_s":5.0,'
    '"secure":null}'
)
CHECK_IN_GOLDEN = (
    '{"action":"train","retry_after_s":1.0,"assignment":{"task_id":1,"round_id":2,'
    '"base_version":0,"model_name":"mlp","spec":[{"name":"w","shape":[2,3]}],'
    f'"codec":{CODEC_GOLDEN},"training":{{"local_epochs":1,"batch_size":32,"lr":0.05}},'
    '"deadline_unix":1.5,"model_path":"/m","upload_path":"/u","max_upload_bytes":100,'
    '"seed":0,"secure":false},"detail":""}'
)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _task(**codec: Any) -> TaskConfig:
    return TaskConfig(
        name="t",
        model_name="mlp",
        spec=[TensorShape("w", [2, 3])],
        rounds=2,
        clients_per_round=3,
        codec=CodecParams(**codec),
    )


def _answer(codec: CodecParams) -> CheckInResponse:
    a = Assignment(
        task_id=1,
        round_id=2,
        base_version=0,
        model_name="mlp",
        spec=[TensorShape("w", [2, 3])],
        codec=codec,
        training=TrainingParams(),
        deadline_unix=1.5,
        model_path="/m",
        upload_path="/u",
        max_upload_bytes=100,
        seed=0,
    )
    return CheckInResponse(action="train", retry_after_s=1.0, assignment=a)


def _served(answer: CheckInResponse) -> dict[str, Any]:
    """The check-in answer as coordinator/service/app.py dumps it."""
    content: dict[str, Any] = TypeAdapter(CheckInResponse).dump_python(answer, mode="json")
    del content["round_outcome"]
    del content["incarnation"]  # app.py adds the database's (test_s54a_incarnation)
    return content


def test_default_task_and_assignment_are_the_bytes_they_were() -> None:
    # Execute
    task = _task()
    # Assert: the admin client's body, the coordinator's status dump, a device's assignment
    assert _dumps(to_json(task)) == TASK_GOLDEN
    assert _dumps(TypeAdapter(TaskConfig).dump_python(task, mode="json")) == TASK_GOLDEN
    assert _dumps(_served(_answer(CodecParams()))) == CHECK_IN_GOLDEN
    assert _dumps(to_json(_answer(CodecParams()))) == CHECK_IN_GOLDEN.replace(
        '"detail":""', '"detail":"","round_outcome":null,"incarnation":null'
    )


@pytest.mark.parametrize("value", [False, True])
def test_a_set_value_is_sent_and_round_trips(value: bool) -> None:
    # Prepare
    task = _task(error_feedback=value)
    # Execute
    sent = to_json(task)
    served = TypeAdapter(TaskConfig).dump_python(task, mode="json")
    answer = _served(_answer(CodecParams(error_feedback=value)))
    # Assert: the field is the last of the codec object; everything else unchanged
    word = "true" if value else "false"
    assert _dumps(sent) == TASK_GOLDEN.replace(
        '"zstd_level":3},"downlink"', f'"zstd_level":3,"error_feedback":{word}}},"downlink"'
    )
    assert served == sent
    assert from_json(TaskConfig, sent) == task
    assert TypeAdapter(TaskConfig).validate_python(sent) == task
    parsed = from_json(CheckInResponse, answer)
    assert parsed.assignment is not None and parsed.assignment.codec.error_feedback is value
    check_assignment(parsed.assignment)  # a device acts on it


def test_a_missing_or_null_value_is_the_default() -> None:
    # Execute / Assert
    assert from_json(CodecParams, {}).error_feedback is None
    assert from_json(CodecParams, {"error_feedback": None}).error_feedback is None
    assert TypeAdapter(CodecParams).validate_python({"error_feedback": None}).error_feedback is None
    # ... and a None set explicitly is still left out
    assert "error_feedback" not in to_json(CodecParams(error_feedback=None))


@pytest.mark.parametrize("bad", ["no", "false", 0, 1, 0.0, [], {}])
def test_anything_but_a_boolean_is_refused(bad: Any) -> None:
    # Execute / Assert: a device's parser
    with pytest.raises(MessageError, match="error_feedback: expected a boolean"):
        from_json(CodecParams, {"error_feedback": bad})
    # ... and the coordinator's (pydantic's lax mode alone would read "no" or 0 as False)
    raw = to_json(_task())
    raw["codec"]["error_feedback"] = bad
    with pytest.raises(ValidationError, match="error_feedback: expected a boolean or null"):
        TypeAdapter(TaskConfig).validate_python(raw)


def test_the_openapi_schema_shows_the_field_as_an_optional_boolean() -> None:
    # Execute
    schema = TypeAdapter(TaskConfig).json_schema()
    # Assert
    prop = schema["$defs"]["CodecParams"]["properties"]["error_feedback"]
    assert prop["anyOf"] == [{"type": "boolean"}, {"type": "null"}]
    assert "error_feedback" not in schema["$defs"]["CodecParams"].get("required", [])
