"""JSON message schemas of the HTTP API, the delta-chain container, and HTTP wire-size rules.

The dataclasses here are the single definition of every JSON body: the coordinator's FastAPI
app uses them as request and response models (so they appear in the OpenAPI spec), and the SDK
parses responses back into them with `from_json`, which checks types and refuses unknown shapes.
"""

from __future__ import annotations

import dataclasses
import math
import re
import struct
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from http import HTTPStatus
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from compression import CodecConfig, SparseUpdate

from .names import CheckInAction

__all__ = [
    "MessageError",
    "TensorShape",
    "CodecParams",
    "TrainingParams",
    "RegisterRequest",
    "RegisterResponse",
    "CheckInRequest",
    "UploadOutcome",
    "Assignment",
    "CheckInResponse",
    "StageReceipt",
    "UploadReceipt",
    "RoundStatus",
    "LedgerRow",
    "BandwidthReport",
    "TaskConfig",
    "TaskStatus",
    "TaskCreated",
    "ErrorBody",
    "from_json",
    "to_json",
    "check_assignment",
    "check_check_in",
    "check_awaiting_round",
    "check_task_id",
    "check_max_model_bytes",
    "check_model_layouts",
    "check_model_names",
    "check_incarnation",
    "INCARNATION_HEX_DIGITS",
    "MAX_MODEL_NAME",
    "MAX_MODEL_LAYOUTS",
    "MAX_RETRY_AFTER_S",
    "check_train_loss",
    "format_train_loss",
    "MAX_TRAIN_LOSS",
    "chain_bytes",
    "pack_chain",
    "unpack_chain",
    "CHAIN_MAGIC",
    "request_wire_bytes",
    "response_wire_bytes",
    "expects_continue",
    "apply_delta",
]

T = TypeVar("T")


class MessageError(ValueError):
    """A JSON body or binary container does not match its schema."""


# ---------------------------------------------------------------------------------------------
# Building blocks


@dataclass(slots=True)
class TensorShape:
    """One tensor of a model layout (`compression.ModelSpec.to_json` entries)."""

    name: str
    shape: list[int]


# A dataclass field with this metadata key set is left out of the JSON while it is None (its
# default): a setting added to a message later keeps the bytes of every message that does not
# use it (`to_json`, and the coordinator's responses through `_omit_none_schema`).
_OMIT_NONE = "plume_omit_none"


@dataclass(slots=True)
class CodecParams:
    """`compression.CodecConfig` on the wire (same fields, same defaults), plus the device's
    error feedback on uploads.

    error_feedback: whether devices carry what compression drops into their next upload (a
    residual); None (left out of the JSON) is the default, on. False: each upload is the
    compressed delta alone and the device keeps no residual for the task (docs/privacy.md,
    item 5). A task setting for uploads (`TaskConfig.codec`); not for the downlink.
    """

    topk: float = 0.01
    bits: int = 4
    block: int = 256
    index: str = "auto"
    topk_mode: str = "exact"
    scope: str = "global"
    zstd_level: int = 3
    error_feedback: bool | None = field(default=None, metadata={_OMIT_NONE: True})

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        return _omit_none_schema(cls, handler(source))

    def to_config(self) -> CodecConfig:
        """The codec config; raises `ValueError` for out-of-domain fields."""
        return CodecConfig(
            topk=float(self.topk),
            bits=self.bits,
            block=self.block,
            index=self.index,
            topk_mode=self.topk_mode,
            scope=self.scope,
            zstd_level=self.zstd_level,
        )

    @classmethod
    def from_config(cls, config: CodecConfig) -> CodecParams:
        return cls(
            topk=config.topk,
            bits=config.bits,
            block=config.block,
            index=config.index,
            topk_mode=config.topk_mode,
            scope=config.scope,
            zstd_level=config.zstd_level,
        )


@dataclass(slots=True)
class TrainingParams:
    """Local training a round asks for: epochs over the device's data, batch size, SGD step."""

    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05


# ---------------------------------------------------------------------------------------------
# Device endpoints


@dataclass(slots=True)
class RegisterRequest:
    """`public_key`: the raw 32-byte Ed25519 public key, base64url without padding."""

    public_key: str


@dataclass(slots=True)
class RegisterResponse:
    """`created`: this request registered the key (false: it was registered already).

    `incarnation`: the identity of the coordinator's database (`check_incarnation`: 32
    lower-case hex digits, random), made with the database and made anew when it is restored
    from a backup: the round and task ids it hands out are its own, and one of another
    incarnation names another round or task (docs/devices.md, "A coordinator with a new
    database"). None (left out) from a coordinator before the field."""

    device_id: str
    created: bool
    incarnation: str | None = None


@dataclass(slots=True)
class CheckInRequest:
    """`task_id` restricts the check-in to one task; `model_version` is the version held.

    `awaiting_round`: the round of this device's last accepted upload whose outcome it has not
    learnt yet (sent only then); the answer's `round_outcome` settles it (docs/http-api.md).

    `features`: what the device's SDK honours (`protocol.names.Feature` values; a name this
    side does not know is ignored). A task that needs one is not given to a device that does
    not list it (docs/http-api.md, "What the device's SDK honours").

    `max_model_bytes`: the largest model the device downloads (`check_max_model_bytes`: an
    integer in [4, 2^63)), measured as `compression.ModelSpec.dense_bytes` (4 bytes a
    parameter of the task's spec) on both sides. A task whose model is larger is not given to
    the device (docs/http-api.md, "The largest model a device takes"); None (left out of the
    JSON): no limit declared, as from an SDK before the field.

    `model_layouts`: the model layouts the device can train, each the hex of a
    `compression.ModelSpec.fingerprint` (16 lower-case hex digits: names and shapes; the
    fingerprint every update frame and snapshot carries). A task whose spec is none of them is
    not given to the device (docs/http-api.md, "The models a device trains"); None (left out
    of the JSON): any layout, as from an SDK before the field. Checked strictly as sent
    (`check_model_layouts`), in this schema's own validation: a bad value is a 422.

    `model_names`: the task model names (`TaskConfig.model_name`) the device can train, for a
    trainer whose artifacts were exported under a name (`plume export --model NAME`): two
    tasks may share a layout and differ in their layers (a Tanh for a ReLU), which the
    layout does not tell. A task with a `model_name` none of them is not given to the device;
    None (left out): any name, as from an SDK before the field. Checked as sent
    (`check_model_names`).
    """

    task_id: int | None = None
    model_version: int | None = None
    awaiting_round: int | None = None
    features: list[str] | None = field(default=None, metadata={_OMIT_NONE: True})
    max_model_bytes: int | None = field(default=None, metadata={_OMIT_NONE: True})
    model_layouts: list[str] | None = field(default=None, metadata={_OMIT_NONE: True})
    model_names: list[str] | None = field(default=None, metadata={_OMIT_NONE: True})

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        # `model_layouts` is checked on the JSON as sent, before pydantic builds the list (a
        # long array is refused by its length, not copied and then refused): a check-in route
        # that parses its body into this class refuses a bad one (422) whatever it reads next.
        from pydantic_core import core_schema

        def check(value: Any) -> Any:
            if isinstance(value, dict) and value.get("model_layouts") is not None:
                check_model_layouts(value["model_layouts"])
            if isinstance(value, dict) and value.get("model_names") is not None:
                check_model_names(value["model_names"])
            return value

        return core_schema.no_info_before_validator_function(check, handler(source))


class UploadOutcome(StrEnum):
    """`CheckInResponse.round_outcome`: what became of the asking device's accepted upload in
    its `awaiting_round`. Only `committed` means the published model holds it; after
    `abandoned`, `excluded` or `unknown` its content goes back into the residual."""

    PENDING = "pending"  # the round is still open or aggregating: ask again later
    COMMITTED = "committed"  # a published model version includes this device's upload
    ABANDONED = "abandoned"  # the round closed without publishing (the model is unchanged)
    EXCLUDED = "excluded"  # the round published without this device's upload (e.g. its
    # SecAgg+ group aborted, or this coordinator never took the upload)
    UNKNOWN = "unknown"  # this coordinator knows no such round (e.g. restored from a backup)


@dataclass(slots=True)
class Assignment:
    """A round to train in. Download `model_path`, train, upload to `upload_path`.

    return_refused: what the device does with the content of an upload the round did not take
    (refused for good: a straggler's, a closed round's) or handed back (its round abandoned,
    its upload excluded): None (left out of the JSON, as from a coordinator before the field)
    or True puts it back into the task's error-feedback residual, to go out with a later
    upload; False drops it as if delivered (the residual stays what acceptance leaves). A task
    with differential privacy sends False, so that no device's later upload depends on
    whether another device's data made its upload late (docs/privacy.md, item 2).

    report_loss: True asks the device to send its mean local training loss with its upload
    (the signed query `?train_loss=<decimal>`, `check_train_loss`); the coordinator reports
    the round's median and mean of them in its measurements. Sent only for a plain task
    without differential privacy: a device's loss depends on its data and is outside a dp
    stage's accounting and a secure round's promise (docs/privacy.md), so such a task and any
    coordinator from before the field leave it out (None), and the device sends no loss.
    """

    task_id: int
    round_id: int
    base_version: int
    model_name: str
    spec: list[TensorShape]
    codec: CodecParams
    training: TrainingParams
    deadline_unix: float
    model_path: str
    upload_path: str
    max_upload_bytes: int
    seed: int
    secure: bool = False  # a SecAgg+ round: run its stage endpoints (docs/http-api.md)
    return_refused: bool | None = field(default=None, metadata={_OMIT_NONE: True})
    report_loss: bool | None = field(default=None, metadata={_OMIT_NONE: True})

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        return _omit_none_schema(cls, handler(source))


@dataclass(slots=True)
class CheckInResponse:
    """`action` is "train" (with `assignment`), "wait" (come back after `retry_after_s`), or
    "end" (the task the check-in named is done: stop checking in for it; docs/http-api.md)."""

    action: str
    retry_after_s: float
    assignment: Assignment | None = None
    detail: str = ""
    # Set only when the request named an `awaiting_round` (an `UploadOutcome` value); left out
    # of the JSON otherwise, so answers to devices that did not ask carry no extra byte.
    round_outcome: str | None = None
    # The coordinator database's identity (`RegisterResponse.incarnation`), in an answer that
    # carries an assignment or a `round_outcome` (the answers a device acts on with what it
    # keeps per round and task id); left out of the JSON otherwise, and by a coordinator
    # before the field.
    incarnation: str | None = None


@dataclass(slots=True)
class UploadReceipt:
    """An accepted update. `duplicate` is true when an idempotent retry replayed the receipt."""

    round_id: int
    device_id: str
    accepted: bool
    duplicate: bool
    payload_bytes: int
    reports: int


@dataclass(slots=True)
class StageReceipt(UploadReceipt):
    """A secure-aggregation stage message held by its round: an `UploadReceipt` that also
    names the stage by its URL name (`advertise-keys`, `share-keys`, `masked-input`, `unmask`)."""

    stage: str


@dataclass(slots=True)
class RoundStatus:
    """A round's state and counts. `version_after` is the model version it published, if any."""

    round_id: int
    task_id: int
    seq: int
    state: str
    base_version: int
    selected: int
    target: int
    min_reports: int
    reports: int
    opened_unix: float
    deadline_unix: float
    closed_unix: float | None = None
    version_after: int | None = None
    measurements: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class LedgerRow:
    """Bytes one device moved in one direction in one round (payload, on the wire, dense fp32)."""

    round_id: int
    device_id: str
    direction: str
    payload_bytes: int
    wire_bytes: int
    dense_bytes: int
    requests: int


@dataclass(slots=True)
class BandwidthReport:
    round_id: int
    rows: list[LedgerRow]
    totals: dict[str, int]


# ---------------------------------------------------------------------------------------------
# Admin endpoints


@dataclass(slots=True)
class TaskConfig:
    """A federated training task. Times in seconds.

    clients_per_round: reports the round aims for (it closes as soon as it has them).
    over_selection: devices selected = ceil(clients_per_round * over_selection).
    deadline_s: after this the round closes; late uploads (stragglers) are refused.
    min_reports: fewer accepted reports than this at the deadline abandons the round.
    selection_timeout_s: how long to wait for a full pool before opening with >= min_reports.
    downlink: codec of the published model deltas (server-side error feedback).
    max_chain: longest delta chain served; older devices get a full snapshot.
    """

    name: str
    model_name: str
    spec: list[TensorShape]
    rounds: int
    clients_per_round: int
    over_selection: float = 1.3
    deadline_s: float = 60.0
    min_reports: int = 1
    selection_timeout_s: float = 10.0
    codec: CodecParams = field(default_factory=CodecParams)
    downlink: CodecParams = field(default_factory=lambda: CodecParams(topk=0.02, bits=8))
    aggregator: str = "fedavg"
    server_lr: float = 1.0
    seed: int = 0
    training: TrainingParams = field(default_factory=TrainingParams)
    max_chain: int = 16
    retry_after_s: float = 5.0
    # SecAgg+ task: `coordinator.secure.SecureConfig` fields plus the stage timing knobs
    # (docs/http-api.md, "Secure tasks"); None for a plain task.
    secure: dict[str, Any] | None = None


@dataclass(slots=True)
class TaskCreated:
    task_id: int
    state: str


@dataclass(slots=True)
class TaskStatus:
    """A task's state (`protocol.names.TaskState`: awaiting_model, active, paused, done, stopped
    by the operator, refused). `refused`: why this coordinator will not run a stored task (its
    state is then "refused"); `config` is then the stored JSON object as is if it no longer
    parses."""

    task_id: int
    state: str
    version: int
    rounds_closed: int
    rounds_committed: int
    current_round: int | None
    model_digest: str
    config: TaskConfig | dict[str, Any]
    refused: str | None = None
    # Devices in the selection pool now, and how many a round waits for: the cohort size, or a
    # `dp` stage's population=N (docs/privacy.md). 0 for a task this coordinator does not run.
    pool: int = 0
    pool_needed: int = 0


@dataclass(slots=True)
class ErrorBody:
    """Every 4xx/5xx body: a machine-readable `reason` (protocol.names.Reason) and a sentence."""

    reason: str
    detail: str


# ---------------------------------------------------------------------------------------------
# JSON <-> dataclass


def to_json(obj: Any) -> Any:
    """A message dataclass as JSON-ready builtins (dicts, lists, numbers, strings); a field
    marked to be left out while None is left out then."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: to_json(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if not (f.metadata.get(_OMIT_NONE) and getattr(obj, f.name) is None)
        }
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    return obj


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except MessageError as exc:
                errors.append(str(exc))
        raise MessageError("; ".join(errors) or f"{where}: unexpected null")
    if origin is list:
        if not isinstance(value, list):
            raise MessageError(f"{where}: expected a list")
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise MessageError(f"{where}: expected an object")
        _, vt = typing.get_args(tp)
        return {str(k): _convert(vt, v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_json(tp, value, where)  # type: ignore[arg-type]
    if tp is bool:
        if not isinstance(value, bool):
            raise MessageError(f"{where}: expected a boolean")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MessageError(f"{where}: expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MessageError(f"{where}: expected a number")
        try:
            return float(value)
        except OverflowError:  # a JSON integer past float's range (1 and 400 zeros)
            raise MessageError(f"{where}: number out of range") from None
    if tp is str:
        if not isinstance(value, str):
            raise MessageError(f"{where}: expected a string")
        return value
    raise MessageError(f"{where}: unsupported type {tp!r}")


def _omit_none_schema(cls: type, schema: Any) -> Any:
    """`schema` (pydantic's core schema of message dataclass `cls`, as the coordinator's app
    builds it) with `cls`'s fields marked `_OMIT_NONE` left out of dumps while None, and
    refused in input unless a JSON boolean or null: pydantic's lax mode would read "no", 0 or
    "off" as a boolean, and `from_json` on a device refuses them."""
    from pydantic_core import core_schema

    names = [f.name for f in dataclasses.fields(cls) if f.metadata.get(_OMIT_NONE)]

    def check(value: Any) -> Any:
        if isinstance(value, dict):
            for name in names:
                v = value.get(name)
                if v is not None and not isinstance(v, bool):
                    raise ValueError(f"{name}: expected a boolean or null, got {v!r}")
        return value

    def dump(value: Any, nxt: Any) -> Any:
        out = nxt(value)
        if isinstance(out, dict):
            for name in names:
                if name in out and out[name] is None:
                    del out[name]
        return out

    schema["serialization"] = core_schema.wrap_serializer_function_ser_schema(dump)
    return core_schema.no_info_before_validator_function(check, schema)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    # Resolving postponed annotations compiles them; once per message class is enough.
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def from_json(cls: type[T], data: Any, where: str = "$") -> T:
    """Parse JSON builtins into message dataclass `cls`, checking every field's type.

    Unknown keys are ignored (a newer coordinator may add fields); missing required ones raise.
    """
    if not isinstance(data, dict):
        raise MessageError(f"{where}: expected an object for {cls.__name__}")
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise MessageError(f"{where}: missing field {f.name!r}")
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------------
# What a device accepts from a coordinator, beyond the types `from_json` checks

# Ids, versions and seeds live in SQLite INTEGER columns on the coordinator and are signed as
# decimal numbers below 2^63 (`protocol.auth`); the training ranges are the ones the
# coordinator's task validation allows, so a real coordinator never sends anything outside them.
MAX_ID = 2**63
MAX_LOCAL_EPOCHS = 1000
MAX_BATCH_SIZE = 1_000_000
# Longest wait a check-in answer tells a device (a week, the longest `retry_after_s` a task
# takes): the coordinator answers no more, and a device waits no more whatever it is told (a
# `retry_after_s` of 1e9 had it sleep 31 years; 1e300 raised OverflowError from the sleep).
MAX_RETRY_AFTER_S = 7 * 86_400.0


# Longest value a refusal echoes, as sent (coordinator/service/rounds.py's `_shown` cuts
# check-in `features` the same way): a JSON integer may have 4,300 digits, and a string
# anything up to the body's size.
SHOWN_CHARS = 80


def _cut(text: str) -> str:
    """`text` as a refusal shows it: whole up to SHOWN_CHARS characters, else its first
    SHOWN_CHARS and "..."."""
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."


def _shown(value: int | float) -> str:
    """A number a refusal echoes, as sent, cut at SHOWN_CHARS characters (`_cut`). An int too
    long for Python to write out (more than 4,300 digits: only a caller's own, JSON does not
    parse one) is named by its size instead."""
    try:
        text = str(value)
    except ValueError:  # past sys.get_int_max_str_digits(); writing it out is quadratic
        return f"an integer of {int(value).bit_length()} bits"
    return _cut(text)


def _in_range(value: int, where: str, low: int = 0, high: int = MAX_ID) -> None:
    if not low <= value < high:
        raise MessageError(f"{where} = {_shown(value)} is outside [{low}, {high})")


def check_assignment(a: Assignment, where: str = "$.assignment") -> None:
    """Refuse (`MessageError`) an assignment no coordinator sends: ids, version, seed or upload
    cap outside [0, 2^63), a non-finite deadline, training outside 1..1000 epochs,
    1..1000000 batch size and a positive finite lr, or codec fields the codec refuses."""
    for name in ("task_id", "round_id", "base_version", "seed", "max_upload_bytes"):
        _in_range(getattr(a, name), f"{where}.{name}")
    if not math.isfinite(a.deadline_unix):
        raise MessageError(
            f"{where}.deadline_unix = {_shown(a.deadline_unix)} is not a finite time"
        )
    t = a.training
    _in_range(t.local_epochs, f"{where}.training.local_epochs", 1, MAX_LOCAL_EPOCHS + 1)
    _in_range(t.batch_size, f"{where}.training.batch_size", 1, MAX_BATCH_SIZE + 1)
    if not (math.isfinite(t.lr) and t.lr > 0):
        raise MessageError(f"{where}.training.lr = {_shown(t.lr)} is not a positive finite number")
    try:
        a.codec.to_config()
    except (ValueError, TypeError) as exc:
        # compression's refusals end ", got <the value's repr>": a string field may be as long
        # as the body, so the value is cut as `_shown` cuts a number.
        what, got, value = str(exc).partition(", got ")
        raise MessageError(f"{where}.codec: {what}{got}{_cut(value)}") from exc


def check_awaiting_round(value: Any, where: str = "$.awaiting_round") -> int:
    """`value` as a round id a device may ask about: a JSON integer (not a boolean, a float or a
    string) in [1, 2^63), the range of the coordinator's round ids; else `MessageError`."""
    if type(value) is not int:
        raise MessageError(f"{where}: expected an integer round id, got {type(value).__name__}")
    _in_range(value, where, 1)
    return value


def check_task_id(value: Any, where: str = "$.task_id") -> int:
    """`value` as the task id a check-in names: a JSON integer (not a boolean, a float or a
    string) in [1, 2^63), the range of the coordinator's task ids; else `MessageError`."""
    if type(value) is not int:
        raise MessageError(f"{where}: expected an integer task id, got {type(value).__name__}")
    _in_range(value, where, 1)
    return value


# A check-in's `max_model_bytes` lies in [MIN_MODEL_CAP, MAX_ID): one float32 parameter at
# least (the SDK's own floor), and below 2^63, the range of every other integer a device sends.
# Above 8 GiB (the 2^31 parameters a spec may have) it limits nothing; the SDK sends a larger
# setting of its own as 2^63 - 1.
MIN_MODEL_CAP = 4


def check_max_model_bytes(value: Any, where: str = "$.max_model_bytes") -> int:
    """`value` as the largest model a device declares it takes: a JSON integer (not a boolean,
    a float or a string) in [4, 2^63) bytes; else `MessageError`."""
    if type(value) is not int:
        raise MessageError(
            f"{where}: expected an integer number of bytes, got {type(value).__name__}"
        )
    _in_range(value, where, MIN_MODEL_CAP)
    return value


# A check-in's `model_layouts`: at most MAX_MODEL_LAYOUTS entries (a device ships a model or
# a few; the cap bounds the work of one check-in), each the hex of a `ModelSpec.fingerprint`.
MAX_MODEL_LAYOUTS = 16
LAYOUT_HEX_DIGITS = 16  # 8 bytes
_LAYOUT_HEX = frozenset("0123456789abcdef")
# A check-in's `model_names`: as many entries, each 1..MAX_MODEL_NAME characters.
MAX_MODEL_NAME = 256


def _distinct_strings(
    value: Any, where: str, what: tuple[str, str, str, str], problem: Callable[[str], str | None]
) -> frozenset[str]:
    """`value` as a JSON array of 1 to MAX_MODEL_LAYOUTS distinct strings, each of which
    `problem` finds nothing wrong with (else it says what, after "where[i] = 'item'"); else
    `MessageError`. `what`: (what the array holds, its entries counted, one entry's kind, what
    an empty array fails to declare). The array's length is checked before any entry."""
    plural, counted, kind, declares = what
    if type(value) is not list:
        raise MessageError(f"{where}: expected an array of {plural}, got {_kind(value)}")
    if not value:
        raise MessageError(
            f"{where}: an empty array declares no {declares} the device trains; leave the "
            f"field out to take a task of any {declares}"
        )
    if len(value) > MAX_MODEL_LAYOUTS:
        raise MessageError(f"{where}: {len(value)} {counted}, more than {MAX_MODEL_LAYOUTS}")
    seen: set[str] = set()
    for i, item in enumerate(value):
        if type(item) is not str:
            raise MessageError(f"{where}[{i}]: expected {kind}, got {_kind(item)}")
        if (why := problem(item)) is not None:
            raise MessageError(f"{where}[{i}] = {_cut(repr(item))} {why}")
        if item in seen:
            raise MessageError(f"{where}[{i}] = {_cut(repr(item))} is listed twice")
        seen.add(item)
    return frozenset(seen)


def check_model_names(value: Any, where: str = "$.model_names") -> frozenset[str]:
    """`value` as the task model names a device declares it trains: a JSON array of 1 to
    MAX_MODEL_LAYOUTS (16) distinct strings of 1 to MAX_MODEL_NAME (256) characters; else
    `MessageError`. The array's length is checked before any entry is looked at."""

    def problem(item: str) -> str | None:
        if 1 <= len(item) <= MAX_MODEL_NAME:
            return None
        return f"is not a model name (1 to {MAX_MODEL_NAME} characters, got {len(item)})"

    what = ("model names", "names", "a model name (a string)", "model")
    return _distinct_strings(value, where, what, problem)


def check_model_layouts(value: Any, where: str = "$.model_layouts") -> frozenset[str]:
    """`value` as the model layouts a device declares it trains: a JSON array of 1 to
    MAX_MODEL_LAYOUTS (16) distinct strings, each 16 lower-case hex digits (the hex of a
    `compression.ModelSpec.fingerprint`, as `bytes.hex()` writes it); else `MessageError`.
    The array's length is checked before any entry is looked at."""

    def problem(item: str) -> str | None:
        if len(item) == LAYOUT_HEX_DIGITS and _LAYOUT_HEX.issuperset(item):
            return None
        return (
            f"is not a layout fingerprint ({LAYOUT_HEX_DIGITS} lower-case hex digits, "
            "compression.ModelSpec.fingerprint)"
        )

    kind = f"a string of {LAYOUT_HEX_DIGITS} hex digits"
    what = ("layout fingerprints", "layouts", kind, "layout")
    return _distinct_strings(value, where, what, problem)


# A coordinator database's identity (`RegisterResponse.incarnation`): 16 random bytes, as
# `bytes.hex()` writes them.
INCARNATION_HEX_DIGITS = 32


def check_incarnation(value: Any, where: str = "$.incarnation") -> str | None:
    """`value` as a coordinator's incarnation: None (the field absent or null: a coordinator
    before it), or a string of INCARNATION_HEX_DIGITS (32) lower-case hex digits; else
    `MessageError`, showing the value cut at SHOWN_CHARS characters."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise MessageError(f"{where}: expected a string of hex digits, got {_kind(value)}")
    if len(value) != INCARNATION_HEX_DIGITS or not _LAYOUT_HEX.issuperset(value):
        raise MessageError(
            f"{where} = {_cut(repr(value))} is not an incarnation "
            f"({INCARNATION_HEX_DIGITS} lower-case hex digits)"
        )
    return value


# An upload's training loss (`?train_loss=`, `Assignment.report_loss`): a plain decimal
# number, as Python's `repr` of a float in range writes it ("0.6931", "1e-05"), at most
# TRAIN_LOSS_CHARS characters: no sign (a loss below 0 is not sent), no "nan", "inf", space,
# underscore or hex, which Python's `float` would take. Its value lies in [0, MAX_TRAIN_LOSS]:
# a device's mean loss beyond that (a diverged model) is not sent, and a lying device moves
# the round's mean by at most MAX_TRAIN_LOSS / reports (the median not at all, while fewer
# than half the reports lie).
MAX_TRAIN_LOSS = 1e6
TRAIN_LOSS_CHARS = 32
_TRAIN_LOSS = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")


def check_train_loss(text: Any, where: str = "query.train_loss") -> float:
    """`text` (an upload's `train_loss` query value, as decoded from the URL) as a training
    loss: a decimal number of at most 32 characters (digits, an optional fraction and an
    optional exponent; no sign), finite, at most MAX_TRAIN_LOSS; else `MessageError`, whose
    message shows the value cut at SHOWN_CHARS characters."""
    if not isinstance(text, str):
        raise MessageError(f"{where}: expected a decimal number, got {_kind(text)}")
    if len(text) > TRAIN_LOSS_CHARS or not _TRAIN_LOSS.fullmatch(text):
        raise MessageError(
            f"{where} = {_cut(repr(text))} is not a decimal number of at most "
            f"{TRAIN_LOSS_CHARS} characters (digits, an optional fraction and exponent, no sign)"
        )
    value = float(text)
    if not value <= MAX_TRAIN_LOSS:  # also inf: "1e999"
        raise MessageError(f"{where} = {text} is above the largest loss taken, {MAX_TRAIN_LOSS:g}")
    return value


def format_train_loss(loss: Any) -> str | None:
    """A device's mean training loss as its upload sends it (`check_train_loss` reads it back
    to the same float), or None when it is not sent: not a real number (a bool, None), NaN
    (nothing trained), infinite, below 0 or above MAX_TRAIN_LOSS."""
    if isinstance(loss, bool) or not isinstance(loss, int | float | np.floating | np.integer):
        return None
    value = float(loss)
    if not (math.isfinite(value) and 0.0 <= value <= MAX_TRAIN_LOSS):
        return None
    return repr(abs(value))  # abs: -0.0 is sent as 0.0 (no sign on the wire)


def _kind(value: Any) -> str:
    """A JSON value's kind, for a refusal (its content is not echoed)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def check_check_in(answer: CheckInResponse) -> None:
    """Refuse (`MessageError`) a check-in answer a device cannot act on: a `retry_after_s` that
    is negative or not finite, "train" without an assignment, "end" with one, or an assignment
    `check_assignment` refuses."""
    if not (math.isfinite(answer.retry_after_s) and answer.retry_after_s >= 0):
        raise MessageError(
            f"$.retry_after_s = {_shown(answer.retry_after_s)} is not a non-negative finite number"
        )
    if answer.action == CheckInAction.TRAIN and answer.assignment is None:
        raise MessageError('$.action is "train" but there is no assignment')
    if answer.action == CheckInAction.END and answer.assignment is not None:
        raise MessageError('$.action is "end" but there is an assignment')
    if answer.assignment is not None:
        check_assignment(answer.assignment)


# ---------------------------------------------------------------------------------------------
# Delta chain container: the body of a delta-chain model download.
#
#   magic "PLCH" | u8 version = 1 | u8 reserved = 0 | u16 count | count x u32 length | frames
#
# All integers little-endian. Each frame is a `compression` update frame taking the model from
# version v to v + 1, in order.

CHAIN_MAGIC = b"PLCH"
_CHAIN_HEAD = struct.Struct("<4sBBH")


def chain_bytes(frame_lengths: Iterable[int]) -> int:
    """The bytes of the delta chain `pack_chain` makes of frames of these lengths (its header,
    length table and frames), without building it."""
    return _CHAIN_HEAD.size + sum(4 + int(n) for n in frame_lengths)


def pack_chain(frames: Sequence[bytes]) -> bytes:
    if len(frames) > 0xFFFF:
        raise MessageError("too many frames in one chain")
    head = _CHAIN_HEAD.pack(CHAIN_MAGIC, 1, 0, len(frames))
    lengths = struct.pack(f"<{len(frames)}I", *(len(f) for f in frames))
    return head + lengths + b"".join(frames)


def unpack_chain(data: bytes, *, max_frames: int, max_frame_bytes: int) -> list[bytes]:
    """Split a chain body, checking every declared length before slicing."""
    if len(data) < _CHAIN_HEAD.size:
        raise MessageError("chain shorter than its header")
    magic, version, reserved, count = _CHAIN_HEAD.unpack_from(data)
    if magic != CHAIN_MAGIC:
        raise MessageError("not a delta chain")
    if version != 1:
        raise MessageError(f"unsupported chain version {version}")
    if reserved != 0:
        raise MessageError(f"chain reserved byte is {reserved}, must be 0")
    if count > max_frames:
        raise MessageError(f"chain of {count} frames exceeds the cap of {max_frames}")
    table_end = _CHAIN_HEAD.size + 4 * count
    if len(data) < table_end:
        raise MessageError("chain truncated in its length table")
    lengths = struct.unpack_from(f"<{count}I", data, _CHAIN_HEAD.size)
    if any(n > max_frame_bytes for n in lengths):
        raise MessageError(f"a chain frame exceeds the cap of {max_frame_bytes} bytes")
    if table_end + sum(lengths) != len(data):
        raise MessageError("chain lengths do not add up to the body size")
    frames, pos = [], table_end
    for n in lengths:
        frames.append(data[pos : pos + n])
        pos += n
    return frames


# ---------------------------------------------------------------------------------------------
# Bytes on the wire, counted the same way on both sides (HTTP/1.1 framing, no TLS overhead).


def _header_bytes(headers: Iterable[tuple[bytes, bytes]]) -> int:
    # "name: value\r\n" per header, then the blank line.
    return sum(len(k) + len(v) + 4 for k, v in headers) + 2


def request_wire_bytes(
    method: str, target: str, headers: Iterable[tuple[bytes, bytes]], body_bytes: int
) -> int:
    """Bytes of an HTTP/1.1 request: `METHOD SP target SP HTTP/1.1 CRLF`, headers, body."""
    return (
        len(method) + len(target) + len(" HTTP/1.1\r\n") + 1 + _header_bytes(headers) + body_bytes
    )


def response_wire_bytes(
    status: int,
    headers: Iterable[tuple[bytes, bytes]],
    body_bytes: int,
    phrase: bytes | None = None,
) -> int:
    """Bytes of an HTTP/1.1 response: `HTTP/1.1 SP code SP phrase CRLF`, headers, body.

    `phrase` is the reason phrase as received, where the caller has it (a device: httpx's
    `reason_phrase` extension); without it, this Python's `HTTPStatus` phrase, which is what
    uvicorn sends. The two differ across Python versions (3.13 renamed 413, 416 and 422's),
    so a device counting a coordinator on another Python needs the received one."""
    if phrase is None:
        try:
            phrase = HTTPStatus(status).phrase.encode("latin-1")
        except ValueError:
            phrase = b""
    status_line = len(f"HTTP/1.1 {status} \r\n") + len(phrase)
    return status_line + _header_bytes(headers) + body_bytes


def expects_continue(http_version: str, values: Iterable[bytes]) -> bool:
    """Whether an HTTP server answers a request with `100 Continue` before reading its body,
    by h11's rule (uvicorn's HTTP/1.1 parser, which the coordinator runs): an HTTP/1.1 request
    whose `Expect` headers, split at commas, hold the token `100-continue` in any case. An
    HTTP/1.0 request's expectation is ignored (RFC 9110, section 10.1.1). `http_version` as
    ASGI spells it ("1.0", "1.1"); `values`: every `Expect` header's value."""
    if http_version in ("0.9", "1.0"):
        return False
    return any(token.strip().lower() == b"100-continue" for v in values for token in v.split(b","))


def apply_delta(params: npt.NDArray[np.float32], update: SparseUpdate) -> npt.NDArray[np.float32]:
    """`params + decode(frame)` as a new float32[d] array: the ONE way a model version is
    derived from the previous one, on the coordinator and on every device alike, so both hold
    bit-identical models (same float32 additions at the same coordinates, nothing else touched).
    """
    if update.size != params.shape[0]:
        raise MessageError(f"delta of size {update.size} for a model of {params.shape[0]}")
    out = np.array(params, dtype=np.float32, copy=True)
    update.add_to(out, 1.0)
    return out
