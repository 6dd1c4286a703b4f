"""Wire names shared by the coordinator and the SDK: paths, headers, fields, states, reasons."""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "API_PREFIX",
    "Path",
    "Header",
    "ContentType",
    "RoundState",
    "TaskState",
    "CheckInAction",
    "ModelEncoding",
    "SnapshotDType",
    "Reason",
    "Direction",
    "Query",
]

API_PREFIX = "/v1"


class Path(StrEnum):
    """URL templates of the HTTP API (FastAPI syntax). `docs/http-api.md` describes each."""

    REGISTER = "/v1/devices"
    CHECK_IN = "/v1/checkin"
    MODEL = "/v1/tasks/{task_id}/model"
    UPLOAD = "/v1/rounds/{round_id}/updates"
    ROUND = "/v1/rounds/{round_id}"
    BANDWIDTH = "/v1/rounds/{round_id}/bandwidth"
    ADMIN_TASKS = "/v1/admin/tasks"
    ADMIN_TASK = "/v1/admin/tasks/{task_id}"
    ADMIN_TASK_MODEL = "/v1/admin/tasks/{task_id}/model"
    ADMIN_PAUSE = "/v1/admin/tasks/{task_id}/pause"
    ADMIN_RESUME = "/v1/admin/tasks/{task_id}/resume"
    ADMIN_STOP = "/v1/admin/tasks/{task_id}/stop"
    ADMIN_ROUNDS = "/v1/admin/tasks/{task_id}/rounds"
    METRICS = "/metrics"
    HEALTHZ = "/healthz"


class Header(StrEnum):
    """HTTP header names (lower case, as HTTP/1.1 and ASGI compare them)."""

    DEVICE = "x-plume-device"
    TIMESTAMP = "x-plume-timestamp"
    NONCE = "x-plume-nonce"
    ROUND = "x-plume-round"
    SIGNATURE = "x-plume-signature"
    IDEMPOTENCY_KEY = "idempotency-key"
    MODEL_VERSION = "x-plume-model-version"
    MODEL_DIGEST = "x-plume-model-digest"
    MODEL_ENCODING = "x-plume-model-encoding"
    MODEL_EXACT = "x-plume-model-exact"
    # A delta chain the admin export answers (`?base=B`): the version it starts from, and that
    # version's digest, which the model it is applied to must have.
    MODEL_BASE_VERSION = "x-plume-model-base-version"
    MODEL_BASE_DIGEST = "x-plume-model-base-digest"
    RETRY_AFTER = "retry-after"
    AUTHORIZATION = "authorization"
    CONTENT_TYPE = "content-type"
    CONTENT_LENGTH = "content-length"


class ContentType(StrEnum):
    OCTET_STREAM = "application/octet-stream"
    JSON = "application/json"
    CSV = "text/csv; charset=utf-8"


class RoundState(StrEnum):
    """A round's life: open -> aggregating -> committed | abandoned."""

    OPEN = "open"
    AGGREGATING = "aggregating"
    COMMITTED = "committed"
    ABANDONED = "abandoned"


class TaskState(StrEnum):
    AWAITING_MODEL = "awaiting_model"
    ACTIVE = "active"
    PAUSED = "paused"
    DONE = "done"
    # Stopped by the operator (POST .../stop): final, never runs again; its rows stay.
    STOPPED = "stopped"
    # In the store, but this coordinator cannot run it (its config or stored state no longer
    # validates); kept intact, never run. TaskStatus.refused says why.
    REFUSED = "refused"


class CheckInAction(StrEnum):
    """What a check-in answers: train now, come back after `retry_after_s`, or stop asking.

    `end` answers only a check-in that names a task, one that is done: it runs no more rounds,
    so the device stops checking in for it. It carries `retry_after_s` as "wait" does, so a
    client that knows only "train" and "wait" reads it as the wait it was answered before.
    """

    TRAIN = "train"
    WAIT = "wait"
    END = "end"


class ModelEncoding(StrEnum):
    """How a model download body is encoded (the `x-plume-model-encoding` header)."""

    SNAPSHOT = "snapshot"
    DELTA_CHAIN = "delta-chain"


class SnapshotDType(StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"


class Query(StrEnum):
    """Query keys a device sends (the query is part of the signed target: `protocol.auth`)."""

    # An upload's mean local training loss, when its assignment asks (`Assignment.report_loss`):
    # a decimal number in [0, MAX_TRAIN_LOSS] (`protocol.messages.check_train_loss`).
    TRAIN_LOSS = "train_loss"


class Direction(StrEnum):
    UP = "up"
    DOWN = "down"


class Reason(StrEnum):
    """Machine-readable `reason` of every error body: `{"reason": ..., "detail": ...}`."""

    UNSIGNED = "unsigned"
    UNREGISTERED = "unregistered"
    BAD_SIGNATURE = "bad_signature"
    STALE_TIMESTAMP = "stale_timestamp"
    REPLAYED_NONCE = "replayed_nonce"
    ROUND_MISMATCH = "round_mismatch"
    BAD_ADMIN_TOKEN = "bad_admin_token"
    NOT_SELECTED = "not_selected"
    UNKNOWN_ROUND = "unknown_round"
    UNKNOWN_TASK = "unknown_task"
    ROUND_CLOSED = "round_closed"
    DUPLICATE_UPLOAD = "duplicate_upload"
    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    BAD_FRAME = "bad_frame"
    INVALID_STATE = "invalid_state"
    UNKNOWN_VERSION = "unknown_version"
    VERSION_GONE = "version_gone"
    VALIDATION = "validation"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    RATE_LIMITED = "rate_limited"
    REQUEST_TIMEOUT = "request_timeout"
    TASK_REFUSED = "task_refused"
    SDK_UNSUPPORTED = "sdk_unsupported"
    # A check-in naming a task whose model is larger than the `max_model_bytes` it declared.
    MODEL_TOO_LARGE = "model_too_large"
    # A check-in naming a task whose model layout is none of the `model_layouts` it declared.
    MODEL_LAYOUT_MISMATCH = "model_layout_mismatch"
    STORE_UNAVAILABLE = "store_unavailable"
    # A request still running at the end of a coordinator stop's shutdown grace (503).
    SHUTTING_DOWN = "shutting_down"
    # An upload refused before its body is read: the upload bodies the coordinator is reading
    # already fill its memory budget for them (503, `serve --upload-buffer-mb`).
    BUSY = "busy"
    # An upload carrying a training loss (`?train_loss=`) to a round whose assignment did not
    # ask for one (`Assignment.report_loss`: a task with DP, or a secure task): 422, not taken.
    TRAIN_LOSS_REFUSED = "train_loss_refused"
    INTERNAL_ERROR = "internal_error"


class Feature(StrEnum):
    """What a device's SDK honours, declared in its check-in's `features`: a task that needs
    one is given only to devices that declare it (docs/http-api.md, "What the device's SDK
    honours"). A name a coordinator does not know is taken and ignored (a newer SDK's)."""

    ERROR_FEEDBACK_OFF = "error_feedback_off"  # keeps no residual (codec.error_feedback false)
