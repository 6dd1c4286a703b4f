"""The coordinator client a device app embeds: `Client` (sync) and `AsyncClient` (asyncio).

Both speak the HTTP API of docs/http-api.md through an httpx transport seam: pass
`transport=httpx.MockTransport(handler)` (or any `httpx.BaseTransport` /
`httpx.AsyncBaseTransport`) to test or simulate without a network. Every request is signed
with the device's Ed25519 key; transient failures (connection errors, 429, 5xx) are retried
with exponential backoff, and uploads carry an idempotency key so a retry is never counted
twice. The key, the model version, the error-feedback residual and any unacknowledged upload
live in the app directory (`sdk.device_store`), so a restarted app resumes where it stopped.

No torch here: the ONNX-runtime device imports this module.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import errno
import hashlib
import inspect
import ipaddress
import itertools
import json
import logging
import math
import numbers
import os
import random
import re
import socket
import ssl
import sys
import threading
import time
import uuid
import warnings
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpcore
import httpx
import numpy as np
import numpy.typing as npt

from compression import (
    CodecConfig,
    CodecError,
    ErrorFeedback,
    ModelSpec,
    NonFiniteValues,
    SpecMismatch,
    UpdateCodec,
    decode_snapshot,
    model_digest,
)
from compression._snapshot import SNAPSHOT_HEADER_LEN, snapshot_dtype
from protocol import auth
from protocol.messages import (
    MAX_ID,
    MAX_MODEL_NAME,
    MAX_RETRY_AFTER_S,
    Assignment,
    CheckInResponse,
    MessageError,
    RegisterResponse,
    UploadOutcome,
    UploadReceipt,
    apply_delta,
    check_check_in,
    check_incarnation,
    check_train_loss,
    expects_continue,
    format_train_loss,
    from_json,
    request_wire_bytes,
    response_wire_bytes,
    unpack_chain,
)
from protocol.names import CheckInAction, Feature, Header, ModelEncoding, Path, Query, Reason
from protocol.secagg import RoundAborted, SecAggError, SecAggHeader, SecAggPath, Stage
from protocol.tls import certificate_failure
from protocol.tls import tls_verify as _tls_verify

# The async sockets and the errors live in modules of their own; every name is imported back,
# so that `sdk.client.X` stays what it was (tests and apps import private names from here).
from ._async_streams import _TLS_READ_BYTES as _TLS_READ_BYTES
from ._async_streams import _AsyncSocket
from ._async_streams import _AsyncStream as _AsyncStream
from ._async_streams import _AsyncTls as _AsyncTls
from ._async_streams import _socket_readable as _socket_readable
from ._errors import _UNREACHABLE_CLASSES as _UNREACHABLE_CLASSES
from ._errors import _UNREACHABLE_LOCK as _UNREACHABLE_LOCK
from ._errors import CANCELLED as CANCELLED
from ._errors import MAX_ERROR_DETAIL as MAX_ERROR_DETAIL
from ._errors import MAX_ERROR_REASON as MAX_ERROR_REASON
from ._errors import MODEL_LAYOUT_MISMATCH as MODEL_LAYOUT_MISMATCH
from ._errors import MODEL_TOO_LARGE as MODEL_TOO_LARGE
from ._errors import TASK_DONE as TASK_DONE
from ._errors import TLS_CERTIFICATE as TLS_CERTIFICATE
from ._errors import UNREACHABLE as UNREACHABLE
from ._errors import ClientError as ClientError
from ._errors import CoordinatorUnreachable as CoordinatorUnreachable
from ._errors import LayoutMismatchError as LayoutMismatchError
from ._errors import ModelIntegrityError as ModelIntegrityError
from ._errors import ModelTooLargeError as ModelTooLargeError
from ._errors import ParticipationCancelled as ParticipationCancelled
from ._errors import SdkUnsupportedError as SdkUnsupportedError
from ._errors import TaskEndedError as TaskEndedError
from ._errors import TlsCertificateError as TlsCertificateError
from ._errors import _certificate_error, _clip, _Stop, _unreachable_class
from ._errors import _remade_error as _remade_error
from ._errors import _remade_unreachable as _remade_unreachable
from ._errors import _TaskError as _TaskError
from ._types import CancelFlag, LocalTrainer, TrainingCancelled
from .device import UpdateEncoder
from .device_store import (
    MAX_RESIDUALS,
    MAX_SPEC_JSON_BYTES,
    AcceptedUpload,
    DeviceStore,
    DeviceStoreError,
    PendingUpload,
)
from .secure import SecureParticipant, _check_settled

# What the client works around rather than raises (the app directory's logger too).
_log = logging.getLogger("plume.sdk")

# httpcore's own socket stream (private): writes on it poll a cancel event. On an httpcore
# without it, a cancel is looked at between 64 KiB pieces instead.
_SyncStream: type | None
try:
    from httpcore._backends.sync import SyncStream as _HttpcoreSyncStream

    _SyncStream = _HttpcoreSyncStream
except ImportError:
    _SyncStream = None

# httpcore's default async backend (private): `AsyncClient` puts its own sockets in its place
# (`_AsyncSocketBackend`). On an httpcore without it, only a pool given httpcore's
# `AnyIOBackend` is changed.
_AutoBackend: type | None
try:
    from httpcore._backends.auto import AutoBackend as _HttpcoreAutoBackend

    _AutoBackend = _HttpcoreAutoBackend
except ImportError:
    _AutoBackend = None

__all__ = [
    "Client",
    "AsyncClient",
    "ClientError",
    "ModelIntegrityError",
    "ModelTooLargeError",
    "MODEL_TOO_LARGE",
    "TaskEndedError",
    "TASK_DONE",
    "SdkUnsupportedError",
    "FEATURES",
    "ParticipationCancelled",
    "CANCELLED",
    "CoordinatorUnreachable",
    "UNREACHABLE",
    "TlsCertificateError",
    "TLS_CERTIFICATE",
    "RoundReport",
    "SecureRoundReport",
    "UpdateFn",
    "Mod",
    "AsyncMod",
]

_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
# A response's `extensions` key: the attempts `_send` made when it returns one of
# `_RETRY_STATUS` because the retries ran out (`_error` names them).
_ATTEMPTS = "plume_attempts"
_LEDGER_HEADER = "x-plume-ledger-round"
# The interim response a server sends before reading the body of a request that carried
# `Expect: 100-continue`; httpx reads past it, so it is counted from the request.
_CONTINUE_WIRE_BYTES = len(b"HTTP/1.1 100 Continue\r\n\r\n")
# Response bodies are read in chunks and refused past a cap, so a hostile or broken server
# cannot make a phone buffer gigabytes: JSON answers, secure-stage messages, and the model
# (its dense fp32 size plus 1 MiB: a snapshot's header, or a delta chain, which the server
# sends only when it is smaller than the snapshot).
MAX_JSON_RESPONSE = 4 << 20
MAX_SECURE_RESPONSE = 16 << 20
MODEL_RESPONSE_SLACK = 1 << 20
# The default of `max_model_bytes`: the largest model (4 bytes a parameter, as the task's spec
# declares it) a client downloads, 64 Mi parameters. The spec alone allows 2^31 (8 GiB): a
# hostile or broken coordinator could make a device read, and allocate arrays of, that much.
# About 40 times `mnist_cnn` (6.7 MB); a round holds the model and more arrays of its size
# (the trained parameters, the delta, and with error feedback the residual): ~1 GiB at the cap.
MAX_MODEL_BYTES = 256 << 20
# Shortest wait between polls of a secure stage that is still open (425), seconds.
_MIN_POLL_S = 0.05
# Longest a device polls one secure stage by default, seconds: the coordinator closes a stage
# at most `stage_timeout_s` (at most one day) after it opened.
MAX_STAGE_WAIT_S = 86400.0
# Longest one response may take to arrive whole by default, seconds (a server trickling bytes
# just inside the per-read timeout would otherwise hold the device for cap x timeout).
MAX_RESPONSE_S = 600.0
# Longest exponential-backoff wait before one retry, seconds: `backoff_s` doubles with each
# attempt, so `retries=12` at the default 0.2 s waited 435 s before its last attempt (and a
# huge `retries` overflowed the float). A `Retry-After` is capped at 30 s separately.
MAX_BACKOFF_S = 60.0
# A `Retry-After` is waited at least as asked and up to this fraction more, drawn per wait
# from the client's own random source: a fleet told the same wait does not return at once.
RETRY_AFTER_SPREAD = 0.2
# Most rounds `bandwidth` keeps, the least recently counted dropped first: it grew by one entry
# per round for the life of the process.
MAX_BANDWIDTH_ROUNDS = 64
# The counts of each direction of a `bandwidth` row and of `control_bandwidth`, in this order.
_CELL = ("payload_bytes", "wire_bytes", "dense_bytes", "requests")
# A request body is handed to the transport in pieces of at most this many bytes
# (`_CountedBody`), so that the client can count what it sent of a body the coordinator answered
# before reading it all (a 503 `busy`, a 413).
_BODY_PIECE_BYTES = 64 << 10
# Most tasks whose model layout the client remembers (`_Core._layouts`): more than the task
# residuals the app directory holds (MAX_RESIDUALS), a few bytes each.
MAX_LAYOUTS = 64
# Most rounds whose deadline the client keeps as read at the check-in that assigned them
# (`_Core.note_round`), the least recently noted dropped first.
MAX_ROUND_DEADLINES = 64
# The most a device's clock can differ from the coordinator's and its signed check-in still be
# answered: the longest `--signature-window` (docs/operations.md), one day. A `Date` header
# further from the device's clock than this (plus its 1 s resolution and the round trip) is not
# the coordinator's clock (a proxy's, a broken one) and is not used.
MAX_CLOCK_SKEW_S = 86400.0
# How long past a plain round's deadline (as the check-in's `Date` showed it) its model download
# and upload may still end, seconds: that estimate may be early by up to 1 s and the check-in's
# round trip.
ROUND_DEADLINE_SLACK_S = 5.0


def _boot_clock() -> Callable[[], float]:
    """The clock every bound of the SDK is measured on: `CLOCK_BOOTTIME` where the platform has
    it (Linux, Android), else `time.monotonic`. Both are steady (a wall-clock change moves
    neither), but `time.monotonic` (CLOCK_MONOTONIC on Linux) stops while the device is
    suspended, so a phone asleep for ten minutes found a round's deadline, a `max_wait_s` or
    a response's budget ten minutes further off than it was; CLOCK_BOOTTIME counts the sleep."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is None:
        return time.monotonic
    try:
        time.clock_gettime(boottime)
    except OSError:  # a kernel or sandbox that refuses it
        return time.monotonic
    return lambda: time.clock_gettime(boottime)


_BOOT_CLOCK = _boot_clock()


def _tick() -> float:
    """Seconds on the SDK's steady clock (`_boot_clock`): every deadline and wait bound in
    this module and `sdk.secure` reads it, and only it (tests replace it)."""
    return _BOOT_CLOCK()


Send = Callable[[httpx.Request], httpx.Response]
Mod = Callable[[httpx.Request, Send], httpx.Response]
"""Client middleware (STYLE §5): `mod(request, next) -> response`, e.g. logging or shaping."""
AsyncSend = Callable[[httpx.Request], Any]
AsyncMod = Callable[[httpx.Request, AsyncSend], Any]

# Upload refusals after which the round will never take this upload: its content goes back into
# the residual (error feedback sends it in a later round) instead of waiting as pending, where
# the next round's encode would overwrite it. A task the coordinator refuses (`task_refused`)
# is one: its rounds do not run, and a pending upload would block nothing but lose its content.
# So is `duplicate_upload`: the device reported in that round under another idempotency key,
# and this upload, which the coordinator refuses before storing it (a re-send of a stored one,
# same key, gets its receipt again), was never taken; its content is not the other's (each
# encode takes the residual the one before left).
_REFUSED_FOR_GOOD = frozenset(
    {
        Reason.ROUND_CLOSED, Reason.UNKNOWN_ROUND, Reason.NOT_SELECTED, Reason.TASK_REFUSED,
        Reason.DUPLICATE_UPLOAD,
    }
)  # fmt: skip


# Refusals of a re-sent upload that prove the coordinator never took it (decided after its
# idempotency lookup, or on the frame itself, which a re-send does not change): before a new
# round's upload replaces it, its content goes back into the residual. Other failures leave its
# fate unknown (an earlier attempt may have been accepted), so the new round waits.
_NEVER_TAKEN = frozenset({Reason.BAD_FRAME, Reason.TOO_LARGE, Reason.INVALID_STATE})


MODEL_DTYPES = ("fp32", "fp16")
"""The `model_dtype` values: the snapshot dtype a client asks for (docs/devices.md)."""


def _check_model_dtype(value: object) -> str:
    """`value` as a `model_dtype`: "fp32" or "fp16"; `ValueError` else."""
    if not isinstance(value, str) or value not in MODEL_DTYPES:
        raise ValueError(f"model_dtype must be 'fp32' or 'fp16', not {value!r}")
    return value


def _fp16_refused(ex: _Exchange, response: httpx.Response) -> bool:
    """Whether `response` is the coordinator's 409 `invalid_state` to an fp16 download (a model
    with a parameter beyond fp16's range, docs/http-api.md): asked again with fp32, once."""
    if ex.params.get("dtype") != "fp16" or response.status_code != 409:
        return False
    try:
        body = _json(response)
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("reason") == Reason.INVALID_STATE


def _check_max_model_bytes(value: object) -> int:
    """`value` as a `max_model_bytes`: an integer >= 4 (one parameter); `ValueError` else."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 4:
        raise ValueError(f"max_model_bytes must be an integer number of bytes >= 4, not {value!r}")
    return value


def _next_wait(answer: CheckInResponse, task_id: int | None, min_poll_s: float) -> float:
    """The wait before the next check-in after `answer` (no round to train): `TaskEndedError`
    for "end"; else at least _MIN_POLL_S (a "wait 0" must not make the device spin) and the
    app's `min_poll_s`, and the coordinator's `retry_after_s` taken as at most
    `MAX_RETRY_AFTER_S` (a week: no coordinator asks for more)."""
    if answer.action == CheckInAction.END:
        raise _ended(answer, task_id)
    return max(min(answer.retry_after_s, MAX_RETRY_AFTER_S), _MIN_POLL_S, min_poll_s)


def _ended(answer: CheckInResponse, task_id: int | None) -> TaskEndedError:
    """The error `participate` raises on a check-in answered "end"."""
    return TaskEndedError(200, TASK_DONE, answer.detail or "the task is done", task_id)


# What this SDK honours, declared in every check-in's `features` (docs/http-api.md, "What the
# device's SDK honours"): a coordinator gives a task that needs a feature only to devices that
# declare it. `error_feedback_off`: an assignment's `codec.error_feedback` false is honoured
# (each upload the compressed delta alone, no residual kept: `_Core.encoder`).
FEATURES: tuple[Feature, ...] = (Feature.ERROR_FEEDBACK_OFF,)


# `ParticipationCancelled.detail`: what the call left, by where it stopped.
_SECURE_DROPPED = (
    "the device dropped out of the secure round; the residual is as before the round unless "
    "its masked input may have reached the coordinator, whose record a later check-in settles"
)
_UNTRAINED = "nothing was trained or encoded; the error-feedback residual is as before the round"
_STAYS_PENDING = "the upload stays pending; the next participate re-sends it"
_EARLIER_PENDING = f"an upload an earlier round left stays pending; {_UNTRAINED}"


@dataclass
class RoundReport:
    """What one participation did. `bytes_up` and `bytes_down` are the wire bytes of this
    call's exchanges that the coordinator counted in the round, as this client counts them
    (`bandwidth`): the check-in that handed it the assignment (`participate`'s, or the last
    `check_in` that returned it), the model download and the upload (a secure round's stages),
    retries included. For a device's one call in a round they are its row in `bandwidth`
    (and the coordinator's ledger row for the device); the row also holds any earlier call's
    exchanges in the same round.

    `loss` is the mean training loss `trainer.train` (or `update`) returned; NaN, never 0.0,
    when there is none: nothing was trained (a secure round that ended before its update was
    computed, `num_examples` 0) or the trainer counted no target (docs/devices.md). NaN, not
    None, so that `loss: float` holds for every caller, and a mean over reports that counts
    one is NaN rather than a plausible number. A plain round that cannot train raises instead.

    `resent` is True when the update accepted is one an earlier call trained for this same
    round and left pending (its upload failed), which this call re-sent (`receipt` is that
    re-send's): this call downloaded and trained nothing, as the coordinator holds the
    device's update for the round and refuses a second (409 `duplicate_upload`). That
    earlier training's loss and example count were not kept: `loss` NaN, `num_examples` 0,
    `download_encoding` "" (nothing downloaded); `model_version` is the round's base version;
    `bytes_down` and `bytes_up` the assigning check-in's and the re-send's.
    """

    round_id: int
    task_id: int
    receipt: UploadReceipt
    loss: float
    num_examples: int
    model_version: int
    download_encoding: str
    bytes_down: int
    bytes_up: int
    resent: bool = False


@dataclass
class SecureRoundReport(RoundReport):
    """What one secure (SecAgg+) participation did.

    `receipt` is the masked-input upload's (`accepted` False if the device never sent one);
    `stages` lists the stages this device uploaded; `completed` is True when it answered the
    unmask request too; `detail` says why it stopped early (stage timeout, aborted round).
    `loss` and `num_examples` are the training's whenever it ran, also in a round that then
    ended early: `completed`, not `loss`, says whether the update took part in the round.
    """

    stages: list[str] = field(default_factory=list)
    completed: bool = False
    detail: str = ""


UpdateFn = Callable[[npt.NDArray[np.float32]], tuple[npt.NDArray[np.float32], int, float]]
"""`update(params float32[d]) -> (delta float32[d], num_examples, loss)`: the local step."""

_SECURE_ORDER = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK)


@dataclass
class _Exchange:
    """One attempt of one request, prepared for signing."""

    method: str
    path: str
    round_id: int
    body: bytes = b""
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    payload_up: int = 0
    dense_up: int = 0
    dense_down_on_ok: int = 0
    count_payload_down: bool = False
    max_response_bytes: int = MAX_JSON_RESPONSE
    awaiting_round: int | None = None  # a check-in's `awaiting_round`, if it named one
    # Set by `_send`: an attempt that has ended may have reached the coordinator without a
    # refusal (4xx) answering it (a read timeout, a 5xx, a 200 or a response refused by the
    # client's caps). The last attempt's 4xx does not set it, so a request answered by a 4xx
    # with this unset was never taken (the coordinator refuses before it stores).
    maybe_taken: bool = False
    # When every attempt and wait before a retry must have ended (`_tick`): a secure
    # round's stage requests end by its deadline. The secure drivers pass it to `_send`.
    deadline: float = math.inf
    # `_tick()` when the last attempt started (set by `_send`): a check-in answer's
    # `Date` was made between then and its arrival.
    sent_at: float = math.nan
    # Wire bytes ("up", "down") its answered attempts put in each round's row (`account`).
    in_rounds: dict[int, dict[str, int]] = field(default_factory=dict)
    # A model download's: the model held that `model_exchange` read (and checked against its
    # digest) to ask from, when it read one (`held_read`), for `apply_model_digest` to apply a
    # delta chain to rather than read and hash the file again.
    held: tuple[npt.NDArray[np.float32], int, bool] | None = None
    held_read: bool = False


class _CountedBody(httpx.ByteStream):
    """A request's body as the transport takes it: in pieces of at most _BODY_PIECE_BYTES,
    counting in `sent` each piece once the transport comes back for the next one (httpcore
    writes a piece to the socket before it asks for the next), so a piece that did not go out
    is not counted. httpcore stops asking when a write fails because the coordinator answered
    early and closed the connection (a 503 `busy` at the body's first part, a 413): `sent` is
    then what the client handed to its kernel, which the socket's buffers may still have held.
    The request keeps its `content` (its signature is over it, and `Content-Length` declares
    its length), so a transport that takes the body whole from `request.content` instead
    (`httpx.MockTransport`, a `mods=` middleware's own request) never iterates this:
    `pulled` stays False and the whole body counts, as before."""

    def __init__(self, body: bytes) -> None:
        super().__init__(body)
        self.pulled = False
        self.sent = 0

    def _pieces(self) -> Iterator[bytes]:
        self.pulled = True
        body = self._stream
        for at in range(0, len(body), _BODY_PIECE_BYTES):
            piece = body[at : at + _BODY_PIECE_BYTES]
            yield piece
            self.sent += len(piece)  # asked for more: the piece was written

    def __iter__(self) -> Iterator[bytes]:
        return self._pieces()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self._pieces():
            yield piece


def _sent_body_bytes(request: httpx.Request) -> int:
    """The body bytes of `request` the transport took (`_CountedBody`), else its whole body."""
    stream = request.stream
    if isinstance(stream, _CountedBody) and stream.pulled:
        return stream.sent
    return len(request.content)


# Failures of an attempt that never sent a byte of the request: no connection was opened.
_NEVER_SENT = (
    httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol
)  # fmt: skip


def _json(response: httpx.Response) -> Any:
    """The body as JSON; `ValueError` for anything that is not, including nesting too deep for
    the parser (json raises `RecursionError` for "[[[[..." within the response cap)."""
    try:
        return response.json()
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _poll_hint(response: httpx.Response) -> float | None:
    """A 425's poll interval from its JSON body's `retry_after_s` (the coordinator's `--poll`,
    sub-second allowed; its `Retry-After` header holds whole seconds only, as RFC 9110 says),
    capped at 30 s as a Retry-After is; None when the body has no finite number >= 0 there (a
    coordinator before it: the header then applies)."""
    try:
        body = _json(response)
    except ValueError:
        return None
    value = body.get("retry_after_s") if isinstance(body, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:  # an integer of hundreds of digits
        return None
    if not (math.isfinite(seconds) and seconds >= 0):
        return None
    return min(seconds, 30.0)


def _error(response: httpx.Response) -> ClientError:
    try:
        body = _json(response)
        reason, detail = str(body.get("reason", "")), str(body.get("detail", ""))
    except (ValueError, AttributeError):
        reason, detail = "", response.text[:200]
    if response.status_code == 404 and reason in ("", Reason.NOT_FOUND):
        # No such route (the coordinator's own 404s carry their reason: unknown_task, ...):
        # a base_url with a path the coordinator does not serve, or a proxy not routing it.
        # "404 not_found: Not Found" named neither the URL nor what to check.
        try:
            asked = f"{response.request.method} {response.request.url}: "
        except RuntimeError:  # a response a `mods=` middleware built, with no request
            asked = ""
        detail = _clip(detail, 200) + (
            f" ({asked}no such endpoint; is base_url the coordinator's address?)"
        )
    attempts = response.extensions.get(_ATTEMPTS)
    if isinstance(attempts, int) and response.status_code in _RETRY_STATUS:
        # The retries ran out on it (`_send`): said as `CoordinatorUnreachable` says its
        # attempts, after the coordinator's detail (cut so that the count is never cut).
        plural = "" if attempts == 1 else "s"
        detail = _clip(detail, MAX_ERROR_DETAIL - 100) + f" (after {attempts} attempt{plural})"
    return ClientError(response.status_code, reason, detail)


def _refusal(response: httpx.Response) -> ClientError:
    """The error of an answer that is not the expected 200: a 4xx/5xx as the coordinator's
    refusal, any other status (1xx, a 2xx other than 200, a redirect) as `bad_response`."""
    if response.status_code >= 400:
        return _error(response)
    where = response.headers.get("location")
    return _bad(
        response,
        f"HTTP {response.status_code} where 200 was expected"
        + (f" (redirect to {where[:200]!r}, not followed)" if where else ""),
    )


def _bad(response: httpx.Response, detail: str) -> ClientError:
    """The coordinator answered something this client cannot act on (reason `bad_response`)."""
    return ClientError(response.status_code, "bad_response", detail)


def _decimal(text: str | None) -> int | None:
    """A header's non-negative decimal integer below 2^63, or None. Only ASCII digits count:
    `str.isdigit` also takes "²" or "١", which `int()` then refuses or reads as another number.
    """
    if text is None or not (text.isascii() and text.isdigit()) or len(text) > 19:
        return None
    value = int(text)
    return value if value < MAX_ID else None


class _Core:
    """Everything but I/O: signing, accounting, parsing and the device's persistent state."""

    def __init__(
        self,
        app_dir: str | os.PathLike[str],
        *,
        retries: int,
        backoff_s: float,
        clock: Callable[[], float],
        max_stage_wait_s: float = MAX_STAGE_WAIT_S,
        max_response_s: float = MAX_RESPONSE_S,
        max_model_bytes: int = MAX_MODEL_BYTES,
        rng: random.Random | None = None,
        model_dtype: str = "fp32",
    ) -> None:
        self.max_model_bytes = _check_max_model_bytes(max_model_bytes)
        self.model_dtype = _check_model_dtype(model_dtype)
        if rng is not None and not isinstance(rng, random.Random):
            raise TypeError(f"retry_rng must be a random.Random, not {type(rng).__name__}")
        _check_seconds("max_stage_wait_s", max_stage_wait_s)
        if not (max_stage_wait_s > 0):  # NaN included
            raise ValueError(f"max_stage_wait_s must be positive, not {max_stage_wait_s!r}")
        _check_seconds("max_response_s", max_response_s)
        if not (max_response_s > 0):
            raise ValueError(f"max_response_s must be positive, not {max_response_s!r}")
        # Checked here, not at the first retry: -1 made every request fail with "unreachable",
        # and a NaN or negative backoff made the first retry's sleep raise mid-request.
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative integer, not {retries!r}")
        _check_seconds("backoff_s", backoff_s)
        if not (math.isfinite(backoff_s) and backoff_s >= 0):
            raise ValueError(f"backoff_s must be finite seconds >= 0, not {backoff_s!r}")
        # Called at the first signed request, not here: a non-callable failed there.
        _check_callable("clock", clock, "the wall clock, seconds since the epoch (time.time)")
        self.store = DeviceStore(app_dir)
        try:
            # One client per app directory in a process too (an app and its background worker
            # often share a process): claimed until the client closes or is collected.
            self.store.claim(self)
            self.key = self.store.private_key()
        except BaseException:
            self.store.close()
            raise
        self.public_key = auth.public_key_bytes(self.key)
        self.device_id = auth.device_id_for(self.public_key)
        self.retries = retries
        self.backoff_s = backoff_s
        # The jitter of the waits before retries (`delay`): each client its own, seeded from
        # the OS unless the app gives one (`retry_rng`), so devices do not retry in step.
        self.rng = rng if rng is not None else random.Random(os.urandom(16))
        self.clock = clock
        self.max_stage_wait_s = max_stage_wait_s
        self.max_response_s = max_response_s
        self.bandwidth: dict[int, dict[str, dict[str, int]]] = {}
        # Every answered exchange the coordinator counted in no round (`control_bandwidth`):
        # registration, check-ins answered without an assignment, refusals, `fetch_current`.
        # One row of fixed size, counted since the client was made, as a round's in `bandwidth`.
        self.control_bandwidth: dict[str, dict[str, int]] = {
            d: dict.fromkeys(_CELL, 0) for d in ("up", "down")
        }
        # The last check-in answer acted on (`last_check_in`): why `participate` returned None.
        self.last_check_in: CheckInResponse | None = None
        # Each holds at most MAX_RESIDUALS entries, the least recently used first (the app
        # directory holds as many task residuals): one dropped is read again from the app
        # directory, which holds its residual, at its next use.
        self._encoders: dict[int, UpdateEncoder] = {}
        # Keyed by (task id, model size): each task's secure residual is its own.
        self._participants: dict[tuple[int | None, int], SecureParticipant] = {}
        # Per task, the layout (`ModelSpec.fingerprint`) of the model its residual is of, as
        # far as this process knows (it ran a round of the task), the last used at most
        # MAX_LAYOUTS. A task id can name another model of the same size (a coordinator
        # restored from a backup hands ids out again); the app directory keeps no layout with
        # a residual, so only this tells the two apart.
        self._layouts: dict[int, bytes] = {}
        # Rounds of accepted records named in a check-in since every held record was last
        # named: one still `pending` then waits while the others are asked about in turn.
        self._asked: set[int] = set()
        # Per assignment (task id, round id, deadline_unix), when its round's deadline falls on
        # `_tick()`, as the check-in answer that carried it showed the coordinator's
        # clock (`note_round`); at most MAX_ROUND_DEADLINES, the least recently noted first.
        # Each with whether a usable `Date` gave it (else the device's clock did).
        self._round_ends: dict[tuple[int, int, float], tuple[float, bool]] = {}
        # Per assignment, as `_round_ends`: the wire bytes the check-in that carried it put in
        # its round's row (`note_round`), taken by the participation's report (`round_start`).
        self._assigning: dict[tuple[int, int, float], dict[str, int]] = {}
        # Per round (task id, round id), when this client last saw it assigned to the device (a
        # check-in answer carrying it, `note_round`) and when its upload to it was accepted
        # (`accept_upload`; task None: an upload that names no task), as numbers of one
        # sequence (`_events`); at most MAX_ROUND_DEADLINES each, the least recently noted first.
        # A round whose upload was accepted after its last assignment is one the coordinator
        # holds the device's update for (`delivered`).
        self._events = itertools.count(1)
        self._assigned_at: dict[tuple[int, int], int] = {}
        self._accepted_at: dict[tuple[int | None, int], int] = {}

    # -- requests ------------------------------------------------------------------------

    def build(self, client: httpx.Client | httpx.AsyncClient, ex: _Exchange) -> httpx.Request:
        request = client.build_request(
            ex.method, ex.path, params=ex.params or None, content=ex.body or None,
            headers=ex.headers,
        )  # fmt: skip
        target = request.url.raw_path.decode("ascii")
        signed = auth.sign_request(
            self.key,
            method=ex.method,
            target=target,
            round_id=ex.round_id,
            body=ex.body,
            timestamp_ms=int(self.clock() * 1000),
        )
        for k, v in signed.items():
            request.headers[str(k)] = v
        if ex.body:
            # Sent in counted pieces (`account`); `content` and `Content-Length` stay.
            request.stream = _CountedBody(ex.body)
        return request

    def account(self, request: httpx.Request, response: httpx.Response, ex: _Exchange) -> None:
        """Count an answered exchange: in the row of the round the coordinator says it put it
        in (`x-plume-ledger-round`), else in `control_bandwidth` (the coordinator's control
        traffic: an exchange is in one of the two, never both).

        The coordinator names a round only after reading the request's body, so a request that
        carried `Expect: 100-continue` (added by a mod) always got the interim response too.
        One refused before its body was read (control traffic) did not, but is counted with
        it all the same: the client cannot tell.

        Of the body, the bytes the transport took (`_CountedBody`): a body the coordinator
        refused before reading it all (503 `busy`, 413) counts what was sent of it, not its
        whole length. Its payload and dense bytes count only in a round's row: the coordinator
        read such an upload whole and counted it in the round, accepted or refused there (409
        `duplicate_upload`, a frame it could not decode), as its ledger does; an upload
        answered as control traffic delivered nothing to a round (the ledger counts no payload
        for it), so `control_bandwidth` counts its wire bytes only.
        """
        rid = _decimal(response.headers.get(_LEDGER_HEADER))
        up = request_wire_bytes(
            request.method, request.url.raw_path.decode("ascii"), request.headers.raw,
            _sent_body_bytes(request),
        )  # fmt: skip
        # The phrase as received (httpcore's `reason_phrase`): a coordinator on another
        # Python may send another one than this Python's HTTPStatus has (3.13 renamed three).
        phrase = response.extensions.get("reason_phrase")
        down = response_wire_bytes(
            response.status_code,
            response.headers.raw,
            len(response.content),
            phrase if isinstance(phrase, bytes) else None,
        )
        if expects_continue("1.1", (v for k, v in request.headers.raw if k.lower() == b"expect")):
            down += _CONTINUE_WIRE_BYTES
        ok = response.status_code == 200
        if rid is None:
            row = self.control_bandwidth
        else:
            # The round counted last goes last, so a round in flight is never the one dropped.
            row = self.bandwidth.pop(rid, {})
            self.bandwidth[rid] = row
            _drop_oldest(self.bandwidth, MAX_BANDWIDTH_ROUNDS)
        in_round = rid is not None
        if rid is not None:
            mine = ex.in_rounds.setdefault(rid, {"up": 0, "down": 0})
            mine["up"] += up
            mine["down"] += down
        for direction, payload, wire, dense in (
            ("up", ex.payload_up if in_round else 0, up, ex.dense_up if in_round else 0),
            (
                "down",
                len(response.content) if ok and ex.count_payload_down else 0,
                down,
                ex.dense_down_on_ok if ok and _sends_model(ex, response) else 0,
            ),
        ):
            cell = row.setdefault(direction, dict.fromkeys(_CELL, 0))
            cell["payload_bytes"] += payload
            cell["wire_bytes"] += wire
            cell["dense_bytes"] += dense
            cell["requests"] += 1

    def delay(self, attempt: int, response: httpx.Response | None) -> float:
        """Seconds to wait before attempt `attempt + 1`, drawn from the client's own `rng`:
        the response's `Retry-After` (capped at 30 s) when it is a finite non-negative number
        or an HTTP-date (`_retry_after`), plus up to RETRY_AFTER_SPREAD (20 %) of it; else
        exponential backoff, `backoff_s * 2**attempt` capped at MAX_BACKOFF_S (60 s), with
        "equal jitter": half of it, plus a uniform draw over the other half. Before, the
        jitter was a function of `attempt` alone, so every device waited the same and a fleet
        cut off by one outage retried in lock-step, and `Retry-After` was waited exactly."""
        if response is not None:
            seconds = _retry_after(response, self.clock)
            if seconds is not None:
                return min(seconds, 30.0) * (1.0 + RETRY_AFTER_SPREAD * self.rng.random())
        # 2.0 ** 64: past any cap, and a float that cannot overflow to an error.
        base = min(self.backoff_s * 2.0 ** min(attempt, 64), MAX_BACKOFF_S)
        return base * (0.5 + 0.5 * self.rng.random())

    def poll_delay(self, response: httpx.Response) -> float:
        """Seconds before polling a secure stage still open (425) again, from an answer
        without a usable `retry_after_s`: its `Retry-After` as asked (capped at 30 s, no
        spread: a poll is not a retry of a failure, and the coordinator paces its polls),
        else the first backoff wait (`delay`)."""
        seconds = _retry_after(response, self.clock)
        return self.delay(0, None) if seconds is None else min(seconds, 30.0)

    # -- round deadlines -----------------------------------------------------------------

    def note_round(self, a: Assignment, response: httpx.Response, ex: _Exchange) -> None:
        """Keep what the check-in `ex` that carried `a` put in `a`'s round's row, for the
        participation's report (`round_start`), and when `a`'s deadline falls on `_tick()`
        (`_note_deadline`)."""
        key = (a.task_id, a.round_id, a.deadline_unix)
        self._assigning.pop(key, None)
        self._assigning[key] = dict(ex.in_rounds.get(a.round_id, {}))
        _drop_oldest(self._assigning, MAX_ROUND_DEADLINES)
        self._note_deadline(a, response, ex.sent_at)
        _note_event(self._assigned_at, (a.task_id, a.round_id), next(self._events))

    def delivered(self, a: Assignment) -> bool:
        """Whether the coordinator holds this device's update for `a`'s round: an upload to
        it (of `a`'s task, or naming none) was accepted after the last check-in of this client
        that assigned the round, or, with no such check-in (an assignment kept across a
        restart), the app directory holds the accepted record of the round. A check-in that
        assigns the round after the acceptance says it does not: the coordinator assigns no
        round whose update from the device it holds (a round id handed out again, by a
        coordinator restored from a backup, is another round)."""
        r = a.round_id
        at = self._accepted_at
        accepted = max(at.get((a.task_id, r), 0), at.get((None, r), 0))
        assigned = self._assigned_at.get((a.task_id, r))
        if accepted:
            return assigned is None or accepted > assigned
        if assigned is not None:
            return False
        record = self.store.load_accepted(r)
        return record is not None and record.task_id in (None, a.task_id)

    def round_start(self, a: Assignment) -> dict[str, int]:
        """The wire bytes (per direction) of `a`'s round's row before the check-in that carried
        `a`, as a participation's report counts from (`_delta`): its report then holds that
        check-in too, as the round's row does. Taken once: a later call for the same assignment
        (or one this client did not receive) counts from the row as it is now."""
        noted = self._assigning.pop((a.task_id, a.round_id, a.deadline_unix), {})
        now = _wire(self.bandwidth.get(a.round_id, {}))
        return {d: max(0, now.get(d, 0) - noted.get(d, 0)) for d in ("up", "down")}

    def _note_deadline(self, a: Assignment, response: httpx.Response, sent_at: float) -> None:
        """Keep when `a`'s deadline falls on `_tick()`: `deadline_unix` less the
        coordinator's clock when `response` (the check-in answer carrying `a`, its last attempt
        sent at `sent_at`, `_tick()`) arrived, read from its `Date` (`_server_now`).
        The device's own clock then counts only if the header is missing or unusable, so a
        phone whose clock is minutes off still ends its round's requests by the round's
        deadline, neither minutes early (clock fast) nor late (slow)."""
        arrived = _tick()
        device_now = self.clock()
        now = _server_now(_http_date(response.headers.get("date")), device_now, arrived - sent_at)
        key = (a.task_id, a.round_id, a.deadline_unix)
        self._round_ends.pop(key, None)
        end = arrived + (a.deadline_unix - (device_now if now is None else now))
        self._round_ends[key] = (end, now is not None)
        _drop_oldest(self._round_ends, MAX_ROUND_DEADLINES)

    def round_end(self, a: Assignment) -> float:
        """When `a`'s round ends on `_tick()`: as its check-in showed (`note_round`),
        else (an assignment this client did not receive, or one noted too long ago) by the
        device's clock now."""
        noted = self._round_ends.get((a.task_id, a.round_id, a.deadline_unix))
        if noted is None:
            return _tick() + (a.deadline_unix - self.clock())
        return noted[0]

    def plain_round_end(self, a: Assignment) -> float:
        """When a plain round's download and upload must have ended (`_tick`): its
        deadline as the check-in's `Date` showed it plus ROUND_DEADLINE_SLACK_S; no bound (inf)
        when only the device's clock tells it. The coordinator refuses a new upload past the
        deadline (409 `round_closed`), so a device still retrying then only holds its upload
        back; but a device clock minutes fast would make a bound by it give up uploads the
        coordinator still takes, where these requests had no deadline before."""
        noted = self._round_ends.get((a.task_id, a.round_id, a.deadline_unix))
        if noted is None or not noted[1]:
            return math.inf
        return noted[0] + ROUND_DEADLINE_SLACK_S

    # -- messages ------------------------------------------------------------------------

    def register_exchange(self) -> _Exchange:
        body = b'{"public_key":"' + base64.urlsafe_b64encode(self.public_key).rstrip(b"=") + b'"}'
        return _Exchange(
            "POST", Path.REGISTER, 0, body, headers={"content-type": "application/json"}
        )

    def check_in_exchange(
        self,
        task_id: int | None,
        layouts: Sequence[str] | None = None,
        names: Sequence[str] | None = None,
    ) -> _Exchange:
        """The check-in request; `layouts` (`_declared_layouts`) the model layouts the
        trainer trains, sent as `model_layouts` after `features`, and `names`
        (`_declared_names`) the task model names, sent as `model_names` after them; None sends
        no such key (the bytes an SDK before the field sent)."""
        parts = []
        if task_id is not None:
            parts.append(f'"task_id":{int(task_id)}')
        # The version held of the task named (with none named, of the model written last).
        version = self.store.model_version(task_id)
        if version is not None and version < MAX_ID:
            parts.append(f'"model_version":{version}')
        awaiting = self.awaiting_round()
        if awaiting is not None:
            parts.append(f'"awaiting_round":{awaiting}')
        # The largest model this client downloads, so the coordinator gives it no task whose
        # model is larger (it would be refused in `model_exchange`, and hold a selection slot
        # for nothing). A setting of 2^63 or more limits nothing: sent as 2^63 - 1, the most
        # the field takes. In the signed body, not a header (headers are not signed). A
        # coordinator before `max_model_bytes` or `features` ignores the key, as it ignores any
        # it does not know.
        parts.append(f'"max_model_bytes":{min(self.max_model_bytes, MAX_ID - 1)}')
        parts.append('"features":[' + ",".join(f'"{f}"' for f in FEATURES) + "]")
        if layouts:
            # The model this device's trainer trains, so the coordinator gives it no task of
            # another layout (it would be refused in `_check_layout` after the selection, its
            # slot empty till the round's deadline). Ignored by a coordinator before the field.
            parts.append('"model_layouts":[' + ",".join(f'"{h}"' for h in layouts) + "]")
        if names:
            # The model name the artifacts were exported under: a task of the same layout and
            # another name has other layers, refused after the selection otherwise.
            parts.append('"model_names":' + json.dumps(list(names)))
        body = ("{" + ",".join(parts) + "}").encode()
        return _Exchange(
            "POST", Path.CHECK_IN, 0, body, headers={"content-type": "application/json"},
            awaiting_round=awaiting,
        )  # fmt: skip

    def awaiting_round(self) -> int | None:
        """The round a check-in asks about: of the accepted records held (oldest first), the
        first not yet named since all were; None without a record. A check-in carries one
        `awaiting_round`, so a round still `pending` (or one a coordinator never answers)
        does not hold back the records behind it."""
        rounds = self.store.accepted_rounds()
        self._asked &= set(rounds)  # settled records leave it: it holds at most MAX_ACCEPTED
        if not rounds:
            return None
        if self._asked.issuperset(rounds):
            self._asked.clear()
        for r in sorted(rounds, key=lambda r: r in self._asked):  # stable: oldest first
            if self.store.load_accepted(r) is not None:  # its id is in [1, 2^63) when it loads
                self._asked.add(r)
                return r
        return None

    def set_aside_uploads(self, coordinator: str) -> None:
        """The coordinator at `coordinator` has just registered this device (`created`): it
        holds none of its uploads, as it takes none from an unregistered device. So the pending
        upload and the accepted records held were sent to another coordinator, or to another
        database of this one (replaced or reset: its round ids start again at 1), whose rounds
        of the same ids are unrelated: each is forgotten as delivered (the residual left its
        content out, as for a record past MAX_ACCEPTED), never re-sent to or settled against
        those rounds, and one warning names them. A pending.json that does not read is left
        for the round that re-sends it to name."""
        held = self._forget_uploads()
        if held:
            _log.warning(
                "%s: the coordinator at %s registered this device anew, so it holds none of "
                "its uploads: %s %s sent to another coordinator or database (replaced or "
                "reset, its round ids start again), and %s set aside: forgotten as delivered, "
                "not sent to or settled against this coordinator's rounds of the same ids",
                self.store.root, coordinator, "; ".join(held),
                "was" if len(held) == 1 else "were", "it is" if len(held) == 1 else "they are",
            )  # fmt: skip

    def _forget_uploads(self) -> list[str]:
        """Forget the pending upload and every accepted record as delivered (their content is
        not added back: the residual already left it out); what was held, each as "the
        pending upload to round 3 of task 1" or "the accepted upload to round 2 of task 1"."""
        held = []
        try:
            pending = self.store.load_pending()
        except DeviceStoreError:
            pending = None
        if pending is not None:
            held.append(f"the pending upload to round {pending.round_id}{_of_task(pending)}")
            self.store.clear_pending(pending.key)
        for r in self.store.accepted_rounds():
            record = self.store.load_accepted(r)
            held.append(f"the accepted upload to round {r}{_of_task(record)}")
            self.store.forget_accepted(r)
        self._accepted_at.clear()
        self._asked.clear()
        return held

    def note_incarnation(self, incarnation: str | None, coordinator: str) -> bool:
        """Act on the incarnation an answer of the coordinator at `coordinator` names (its
        database's identity, checked; None: the answer has none, from a coordinator before the
        field, and nothing changes). The app directory keeps its pending upload, its accepted
        records, and its residuals and models by round and task ids, which are the database's
        own: under another incarnation than the one state.json names (a new or reset database
        at this address, or one restored from a backup, which hands the same ids out again for
        other rounds and tasks) they are set aside before anything else of the answer is acted
        on. The pending upload and the records are forgotten as delivered (never re-sent to or
        settled against the new database's rounds of the same ids; their content is not added
        back), every task's residual and held model are dropped (never added to or trained
        from for the new database's tasks of the same ids), with one warning naming them; the
        new incarnation is written last, so a crash midway leaves the rest to the next answer.
        The first incarnation a directory hears (a new one, one an older SDK wrote, one that
        only heard coordinators before the field) is written and nothing is set aside: the
        state may be of that very database. True when state was set aside."""
        if incarnation is None:
            return False
        known = self.store.incarnation()
        if known == incarnation:
            return False
        if known is not None:
            self._set_aside_database(coordinator, known, incarnation)
        self.store.update_state(incarnation=incarnation)
        return known is not None

    def _set_aside_database(self, coordinator: str, known: str, incarnation: str) -> None:
        """`note_incarnation`'s step for a database of incarnation `incarnation` where the
        app directory's state is of `known`'s."""
        uploads = self._forget_uploads()
        residuals = self.store.residual_tasks()
        models = self.store.model_tasks()
        self.store.drop_residuals()
        self.store.forget_model(None)
        # What this process holds of them: each task's encoder and secure participant hold its
        # residual, and the layouts known are of the old database's tasks.
        self._encoders.clear()
        self._participants.clear()
        self._layouts.clear()
        parts = []
        if uploads:
            parts.append(
                f"{' and '.join(uploads)} {'is' if len(uploads) == 1 else 'are'} forgotten as "
                "delivered (not sent to or settled against its rounds of the same ids)"
            )
        if residuals:
            parts.append(
                f"the error-feedback residual{_plural(residuals)} of {_tasks(residuals)} "
                f"{'is' if len(residuals) == 1 else 'are'} dropped (not added to the updates "
                "of its tasks of the same ids)"
            )
        if models:
            parts.append(
                f"the model{_plural(models)} held of {_tasks(models)} "
                f"{'is' if len(models) == 1 else 'are'} dropped (the next download of "
                f"{'that task' if len(models) == 1 else 'each'} is a whole snapshot)"
            )
        if parts:
            _log.warning(
                "%s: the coordinator at %s serves another database than the one this app "
                "directory's state is of (incarnation %s, was %s: a new or reset database, or "
                "one restored from a backup, which hands the same round and task ids out again "
                "for other rounds and tasks), so that state is set aside: %s",
                self.store.root, coordinator, incarnation, known, "; ".join(parts),
            )  # fmt: skip

    def settle_outcome(self, round_id: int, outcome: str | None) -> None:
        """Act on a check-in's `round_outcome` for the accepted upload of `round_id`: forget it
        once `committed`, add its content back into the residual (once, crash-safe) after
        `abandoned`, `excluded` or `unknown`; keep waiting on `pending`, on no answer (a
        coordinator that ignores `awaiting_round`) and on a value this client does not know."""
        if outcome == UploadOutcome.COMMITTED:
            self.store.forget_accepted(round_id)
            return
        if outcome not in (UploadOutcome.ABANDONED, UploadOutcome.EXCLUDED, UploadOutcome.UNKNOWN):
            return
        self._return_record(round_id)

    def _return_record(self, round_id: int) -> tuple[int | None, npt.NDArray[np.float32]] | None:
        """Add the content of the record of `round_id` back into its task's residual (stored
        and in memory) and drop the record; (the task whose residual took it, the content
        float32[d]), or None when nothing was added."""
        record = self.store.load_accepted(round_id)
        if record is None:
            return None
        if not record.return_refused:
            # Its task has DP (`Assignment.return_refused` false): dropped as delivered, so the
            # device's later uploads do not depend on whether this round took it.
            self.store.forget_accepted(round_id)
            return None
        if self._other_layout(record.task_id, record.spec):
            # Its model's residual is gone (as for another size): dropped as delivered.
            self.store.forget_accepted(round_id)
            return None
        try:
            sent = UpdateCodec(record.spec, _any_config()).decode(record.frame).to_dense()
        except CodecError:
            self.store.forget_accepted(round_id)  # cannot be restored: as before records
            return None
        with self._reload_on_error(record.task_id):
            ef = self.store.return_accepted(round_id, sent, record.spec.size)
        if ef is None:
            return None
        self._adopt(record.task_id, record.spec, ef)
        owner = record.task_id if record.task_id is not None else self.store.legacy_claimer()
        return owner, sent

    def _layout_changed(self, task_id: int | None, spec: ModelSpec) -> bool:
        """Note that `task_id`'s residual is now of `spec`'s model; True if it was known to be
        of a model of another layout (its residual, of the same size or not, is then not one
        of this model's)."""
        if task_id is None:
            return False
        known = self._layouts.pop(task_id, None)
        self._layouts[task_id] = spec.fingerprint
        _drop_oldest(self._layouts, MAX_LAYOUTS)
        if known is None or known == spec.fingerprint:
            return False
        # The app directory's residual too, at once: one read again later (the holder dropped
        # from memory before the round saved) would otherwise be the other model's.
        with self._reload_on_error(task_id):
            self.store.save_residual(ErrorFeedback(spec.size), task_id, spec)
        return True

    def _other_layout(self, task_id: int | None, spec: ModelSpec) -> bool:
        """Whether the residual of `task_id` (None: of the task that claimed the legacy one) is
        known to be of a model of another layout than `spec`'s: an upload or record of `spec`
        must not go into it (another size is the store's check)."""
        owner = task_id if task_id is not None else self.store.legacy_claimer()
        known = self._layouts.get(owner) if owner is not None else None
        return known is not None and known != spec.fingerprint

    def _adopt(self, task_id: int | None, spec: ModelSpec, ef: ErrorFeedback) -> None:
        """Make `task_id`'s in-memory encoder and secure participant hold its stored residual
        `ef` (None: the legacy residual, which belongs to the task that claimed it, if any)."""
        if task_id is None:
            task_id = self.store.legacy_claimer()
            if task_id is None:
                return  # no task holds it yet: the first to claim it loads it from the store
        enc = self._encoders.get(task_id)
        if enc is not None and enc.spec.fingerprint == spec.fingerprint:
            enc.set_feedback(ef)
        p = self._participants.get((task_id, spec.size))
        if p is not None:
            p.residual = ef.residual.astype(np.float32, copy=True)

    def model_exchange(
        self,
        task_id: int,
        spec: ModelSpec,
        round_id: int,
        max_version: int | None,
        snapshot: bool = False,
        fp32: bool = False,
        app_spec: bool = False,
    ) -> _Exchange:
        """The model download; from the version held of `task_id` (`have=`, a delta chain if
        the coordinator has one; the app directory holds a model per task) unless `snapshot`:
        then no `have=`, so a whole snapshot. A snapshot in the client's `model_dtype` unless
        `fp32` (the coordinator refused fp16 for this model: `_fp16_refused`). Only an exact
        held model (not an fp16 snapshot's) is asked from. `ModelTooLargeError` first, before anything is
        read or asked for, for a model over `max_model_bytes`: it also bounds the answer read
        (the model's size plus `MODEL_RESPONSE_SLACK`) and so every delta chain's frames.
        With `app_spec` (`fetch_current`'s spec, the app's: it may not be the task's) the
        answer may be as large as any model the client takes (`max_model_bytes`, plus the
        slack), so that a spec smaller than the task's model is told from the snapshot's
        header (`LayoutMismatchError`) rather than refused as an answer too large."""
        if spec.dense_bytes > self.max_model_bytes:
            raise ModelTooLargeError(task_id, spec.dense_bytes, self.max_model_bytes)
        # An empty delta chain (the held model is current) carries no layout, so the app's
        # spec (`app_spec`) could not be checked against the task's: ask for a snapshot, whose
        # header is, unless the held model is known to be of the spec's layout. Checked from
        # state.json first, so a model that would not be asked from is not read and hashed.
        known = not app_spec or self.store.held_layout(task_id) == spec.fingerprint
        held = self.store.load_model(task_id, spec.size) if known and not snapshot else None
        params = {"format": "auto", "dtype": "fp32" if fp32 else self.model_dtype}
        if held is not None and held[2] and (max_version is None or held[1] <= max_version):
            params["have"] = str(held[1])
        return _Exchange(
            "GET",
            Path.MODEL.format(task_id=task_id),
            round_id,
            params=params,
            dense_down_on_ok=spec.dense_bytes,
            count_payload_down=True,
            max_response_bytes=(
                max(spec.dense_bytes, self.max_model_bytes) if app_spec else spec.dense_bytes
            )
            + MODEL_RESPONSE_SLACK,
            held=held,
            held_read=not snapshot,
        )

    def apply_model(
        self, task_id: int, spec: ModelSpec, response: httpx.Response, app_spec: bool = False
    ) -> tuple[npt.NDArray[np.float32], int, str]:
        """`apply_model_digest` without the digest: (params, version, encoding)."""
        params, version, encoding, _ = self.apply_model_digest(task_id, spec, response, app_spec)
        return params, version, encoding

    def apply_model_digest(
        self,
        task_id: int,
        spec: ModelSpec,
        response: httpx.Response,
        app_spec: bool = False,
        ex: _Exchange | None = None,
    ) -> tuple[npt.NDArray[np.float32], int, str, bytes]:
        """Decode a download, check its digest, persist it; returns (params, version,
        encoding, the SHA-256 of params' bytes in memory: `_buffer_digest`, which the round's
        trainer check takes as its "before" rather than hashing the model again). `ModelIntegrityError` (the held model forgotten) for one that does not
        decode, or whose digest is not the coordinator's. With `app_spec` (`spec` is the app's,
        given to `fetch_current`, not an assignment's): a model whose frames name another
        layout (`SpecMismatch`, from the headers, before anything is inflated) is
        `LayoutMismatchError`, the store untouched: the spec is the app's mistake, not a body
        altered on the way. `ex`: the download's exchange, whose model held (read when it was
        made) a delta chain applies to."""
        encoding = response.headers.get(Header.MODEL_ENCODING, "")
        digest = response.headers.get(Header.MODEL_DIGEST, "")
        raw_version = response.headers.get(Header.MODEL_VERSION)
        version = _decimal(raw_version)
        if version is None:
            # Saved with the model, it is the `have` and `model_version` of every later
            # request, so a version the coordinator refuses would stick the device.
            raise _bad(response, f"model version {raw_version!r} is not an integer in [0, 2^63)")
        # An fp16 snapshot is not the coordinator's model, whatever the header says: never
        # the base of a delta chain (`model_exchange` asks with `have=` from exact ones only).
        inexact = encoding == ModelEncoding.SNAPSHOT and snapshot_dtype(response.content) == "fp16"
        exact = response.headers.get(Header.MODEL_EXACT, "1") == "1" and not inexact
        try:
            if encoding == ModelEncoding.DELTA_CHAIN:
                if ex is not None and ex.held_read:
                    held = ex.held  # the model asked from: not read and hashed again
                else:
                    held = self.store.load_model(task_id, spec.size)
                if held is None or not held[2]:
                    raise ModelIntegrityError(
                        409, "no_base", "delta chain without an exact base model"
                    )
                params = held[0]
                codec = UpdateCodec(spec, _any_config())
                frames = unpack_chain(
                    response.content, max_frames=1000, max_frame_bytes=4 * spec.size + 65536
                )
                # Each frame's header names the layout the decode checks; none, none shown.
                layout = spec.fingerprint if frames else None
                # Finite frames can still sum to inf; a snapshot with inf would be refused too.
                with np.errstate(over="ignore", invalid="ignore"):
                    for frame in frames:
                        params = apply_delta(params, codec.decode(frame))
                if not np.all(np.isfinite(params)):
                    raise NonFiniteValues("the delta chain makes the held model non-finite")
            elif encoding == ModelEncoding.SNAPSHOT:
                if app_spec:
                    _check_snapshot_layout(response.content, spec)
                params = decode_snapshot(response.content, spec)
                layout = spec.fingerprint  # the header's, checked by the decode
            else:
                raise ClientError(response.status_code, "bad_encoding", f"unknown {encoding!r}")
        except (CodecError, MessageError) as exc:
            if app_spec and isinstance(exc, SpecMismatch):
                raise _not_the_task_spec(task_id, spec, exc) from exc
            self.store.forget_model(task_id)  # this task's only: other tasks' models stay
            raise ModelIntegrityError(200, "bad_model", str(exc)) from exc
        in_memory = _buffer_digest(params)
        # The canonical bytes (little-endian float32) are the array's own on a little-endian
        # machine: one pass serves this check and the trainer check's "before" (`_train`).
        canonical = in_memory if params.dtype == np.dtype("<f4") else model_digest(params)
        got = canonical.hex()
        # An fp16 snapshot's values were checked against the digest in its own header
        # (`decode_snapshot`); the coordinator's header may name its exact fp32 model instead.
        if got != digest and not inexact:
            self.store.forget_model(task_id)
            raise ModelIntegrityError(
                200, "digest_mismatch", f"model digest {got} != coordinator's {digest}"
            )
        self.store.save_model(task_id, params, version, got, exact, layout)
        return params, version, encoding, in_memory

    def encoder(self, a: Assignment, spec: ModelSpec) -> UpdateEncoder:
        other = self._layout_changed(a.task_id, spec)
        enc = self._encoders.get(a.task_id)
        if enc is None or enc.spec.fingerprint != spec.fingerprint:
            enc = UpdateEncoder(spec, a.codec.to_config())
            # A residual of another model's layout is not this model's (as for another size).
            ef = None if other else self.store.load_residual(spec.size, a.task_id, spec)
            if ef is not None:
                enc.set_feedback(ef)
        self._encoders.pop(a.task_id, None)  # the last used goes last
        self._encoders[a.task_id] = enc
        _drop_oldest(self._encoders)
        # One holder of a task's residual in memory: a secure participant kept would miss what
        # this encoder's upload takes from it (and send it again).
        for key in [k for k in self._participants if k[0] == a.task_id]:
            del self._participants[key]
        enc.set_config(a.codec.to_config())
        # A task's `codec.error_feedback` false: each upload is the compressed delta alone
        # (docs/privacy.md, item 5). Set every time, as the codec is: the encoder is cached.
        enc.error_feedback = a.codec.error_feedback is not False
        return enc

    def encode(
        self,
        a: Assignment,
        spec: ModelSpec,
        params: npt.NDArray[np.float32],
        trained: npt.NDArray[np.float32],
        num_examples: int,
        loss: float = math.nan,
    ) -> PendingUpload:
        # The round's own path checked both against its trainer (`_trained_result`); an app's
        # `encode_update` is checked here, before the encoder is touched.
        params = np.asarray(params)
        if params.shape != (spec.size,):
            raise ValueError(
                f"encode_update: params of shape {params.shape}; task {a.task_id}'s model has "
                f"{spec.size} parameters (float32[{spec.size}])"
            )
        trained = _checked_trained(trained, params, "encode_update: trained")
        num_examples = _checked_examples(num_examples, None, "encode_update: num_examples")
        enc = self.encoder(a, spec)
        delta = (trained - params).astype(np.float32)
        rng = np.random.default_rng([a.seed, a.round_id, int(self.device_id[:12], 16), 2])
        # With error feedback off the encoder drops the residual (an earlier task of this id's,
        # an upload of this task refused or abandoned since): saved zero with the pending upload.
        frame, _ = enc.encode(delta, rng, float(num_examples))
        pending = PendingUpload(
            a.round_id,
            uuid.uuid4().hex,
            frame,
            spec.dense_bytes,
            spec,
            a.task_id,
            a.return_refused is not False,
            # Only when asked (a plain task without DP) and a loss there is: not NaN (nothing
            # trained), finite, in [0, MAX_TRAIN_LOSS]. Saved with the upload (pending.json),
            # so a re-send after the app restarts carries it too.
            format_train_loss(loss) if a.report_loss is True else None,
        )
        with self._reload_on_error(a.task_id):
            self.store.save_pending(pending, enc.feedback)
        return pending

    @contextlib.contextmanager
    def _reload_on_error(self, task_id: int | None) -> Iterator[None]:
        """A store step on `task_id`'s residual that raises (a full disk, a foreign file) did
        not happen, or happened whole, in the app directory; which one, only the directory
        knows. The task's encoder and secure participants are dropped, so its next round
        loads the residual from there instead of one in memory that assumes an upload the
        directory never kept (its content then never sent) or misses a return it finished."""
        try:
            yield
        except BaseException:
            owner = task_id if task_id is not None else self.store.legacy_claimer()
            if owner is not None:
                self._encoders.pop(owner, None)
            for key in [k for k in self._participants if k[0] in (task_id, owner)]:
                del self._participants[key]
            raise

    def upload_exchange(self, pending: PendingUpload, dense_bytes: int) -> _Exchange:
        loss = pending.train_loss
        if loss is not None:
            # One the coordinator would refuse (422) must not cost the upload: an app's own
            # `PendingUpload`; the SDK's are checked when saved and when read back.
            check_train_loss(loss, "PendingUpload.train_loss")
        return _Exchange(
            "POST",
            Path.UPLOAD.format(round_id=pending.round_id),
            pending.round_id,
            pending.frame,
            # In the signed target (the query is signed), the same on every attempt.
            params={} if loss is None else {Query.TRAIN_LOSS: loss},
            headers={
                "content-type": "application/octet-stream",
                Header.IDEMPOTENCY_KEY: pending.key,
            },
            payload_up=len(pending.frame),
            dense_up=dense_bytes,
        )

    def settle_upload(self, pending: PendingUpload, spec: ModelSpec | None, refused: bool) -> None:
        """Forget a pending upload. If the coordinator refused it for good (round closed), put
        what it carried back into the residual, in one crash-safe step: error feedback then
        sends it next time; unless its task said `return_refused` false (a task with DP): then
        it is dropped as if delivered, the residual left as acceptance leaves it. `spec`
        defaults to the layout stored with the upload (a resumed one after a restart)."""
        spec = spec if spec is not None else pending.spec
        # Of another layout than the task's residual: dropped as delivered (`_return_record`).
        if (
            not refused
            or not pending.return_refused
            or spec is None
            or self._other_layout(pending.task_id, spec)
        ):
            self.store.clear_pending(pending.key)
            return
        try:
            sent = UpdateCodec(spec, _any_config()).decode(pending.frame).to_dense()
        except CodecError:
            self.store.clear_pending(pending.key)
            return
        with self._reload_on_error(pending.task_id):
            ef = self.store.refuse_pending(sent, spec.size, pending.key)
        if ef is not None:
            self._adopt(pending.task_id, spec, ef)

    def accept_upload(self, pending: PendingUpload, spec: ModelSpec | None) -> None:
        """The coordinator accepted `pending`: keep what it carried until a check-in says its
        round committed (`settle_outcome`); it stops being pending."""
        if (spec if spec is not None else pending.spec) is not None:
            self._return_replaced(pending.round_id, pending.frame)
        self.store.accept_pending(pending, spec)
        _note_event(self._accepted_at, (pending.task_id, pending.round_id), next(self._events))

    def _return_replaced(
        self, round_id: int, frame: bytes
    ) -> tuple[int | None, npt.NDArray[np.float32]] | None:
        """Before a new record of `round_id` replaces a held one of other bytes: that one was an
        upload to an earlier round of the same id, which a coordinator restored from a backup
        hands out again (ids continue from the backup's). The restored coordinator holds no
        such upload (it would answer `unknown`), and the new round took this device's new
        upload, not that one: its content goes back into its task's residual, once (see
        `_return_record`)."""
        held = self.store.load_accepted(round_id)
        if held is None or held.frame == frame:
            return None
        return self._return_record(round_id)

    # -- secure rounds -------------------------------------------------------------------

    def secure_participant(
        self, size: int, task_id: int | None = None, spec: ModelSpec | None = None
    ) -> SecureParticipant:
        """This device's secure-mode state in task `task_id` for a model of `size` scalars; its
        residual (the task's, as for plain rounds) persists in the app directory. `task_id`
        None: the older SDK's residual (`DeviceStore.load_residual`). With the model's `spec`
        (its layout), a residual known to be of another layout's model is not used."""
        other = spec is not None and self._layout_changed(task_id, spec)
        p = None if other else self._participants.get((task_id, size))
        if p is None:
            p = SecureParticipant(size)
            ef = None if other else self.store.load_residual(size, task_id, spec)
            if ef is not None:
                p.residual = ef.residual.astype(np.float32, copy=True)
        self._participants.pop((task_id, size), None)  # the last used goes last
        self._participants[(task_id, size)] = p
        _drop_oldest(self._participants)
        if task_id is not None:  # one holder of its residual in memory, as in `encoder`
            self._encoders.pop(task_id, None)
        return p

    def save_secure_residual(
        self,
        participant: SecureParticipant,
        task_id: int | None = None,
        spec: ModelSpec | None = None,
    ) -> None:
        ef = ErrorFeedback(participant.size)
        ef.residual = participant.residual
        self.store.save_residual(ef, task_id, spec)

    def keep_secure_input(
        self,
        round_id: int,
        spec: ModelSpec,
        participant: SecureParticipant,
        task_id: int | None = None,
        return_refused: bool = True,
    ) -> bool:
        """Save the residual a secure round's masked input leaves, before the input is sent,
        with what the input stands for as the record of `round_id` (a lossless sparse fp32
        frame) while the round's outcome is unknown: `settle_outcome` forgets it once the round
        commits with the input and adds it back if the round ends without it (with
        `return_refused` false, a task with DP, it forgets it then too). False, with
        nothing saved and the participant as it was, when no record can be built: the input
        must not be sent then (its content could not go back if the round ends without it)."""
        ef = ErrorFeedback(participant.size)
        ef.residual = participant.residual
        sent = participant.sent_dense()
        if sent is None:
            self.store.save_residual(ef, task_id, spec)
            return True
        nonzero = int(np.count_nonzero(sent))
        # k_for rounds (nonzero + 0.5) to nonzero or nonzero + 1: never fewer than the nonzeros.
        config = CodecConfig(topk=min(1.0, (nonzero + 0.5) / spec.size), bits=32)
        try:
            frame, _ = UpdateCodec(spec, config).encode(sent, np.random.default_rng(0), weight=0.0)
        except (CodecError, ValueError):  # not expected (finite values)
            return False
        mine = participant.residual
        returned = self._return_replaced(round_id, frame)
        # A return into this task put the stored residual (from before this round) into its
        # participants: this round's is the one to keep, with the returned content added.
        if returned is not None and returned[0] == task_id and returned[1].size == mine.size:
            participant.residual = (mine + returned[1]).astype(np.float32)
        ef.residual = participant.residual
        with self._reload_on_error(task_id):
            self.store.save_accepted(
                AcceptedUpload(round_id, frame, spec, task_id, return_refused), ef
            )
        participant.forget_sent()  # the app directory holds it now
        return True

    def return_secure_input(
        self, round_id: int, back: npt.NDArray[np.float64] | None = None
    ) -> None:
        """After `keep_secure_input`, the secure round `round_id` aborted (`back` None: add
        what the input stood for back into its task's residual) or did not take the input
        (`back`: the residual from before the round minus the one the input left, float64, so
        the residual is again the one from before the round, exactly), stored and in memory,
        in one crash-safe step that drops the record (once: a second call adds nothing)."""
        if back is None:
            self._return_record(round_id)
            return
        record = self.store.load_accepted(round_id)
        if record is None:
            return
        if not record.return_refused:
            # A task with DP: dropped as if taken (the residual the input left stays), whether
            # the round took the input or not (see `_return_record`).
            self.store.forget_accepted(round_id)
            return
        with self._reload_on_error(record.task_id):
            ef = self.store.return_accepted(round_id, back, record.spec.size)
        if ef is not None:
            self._adopt(record.task_id, record.spec, ef)

    def secure_setup_exchange(self, round_id: int) -> _Exchange:
        return _Exchange(
            "GET",
            SecAggPath.SETUP.format(round_id=round_id),
            round_id,
            count_payload_down=True,
            max_response_bytes=MAX_SECURE_RESPONSE,
        )

    def stage_upload_exchange(
        self, round_id: int, stage: Stage, body: bytes, dense_bytes: int
    ) -> _Exchange:
        return _Exchange(
            "POST",
            SecAggPath.STAGE.format(round_id=round_id, stage=stage),
            round_id,
            body,
            headers={"content-type": "application/octet-stream"},
            payload_up=len(body),
            # The masked input is what stands in for the dense fp32 update.
            dense_up=dense_bytes if stage == Stage.MASKED_INPUT else 0,
        )

    def stage_download_exchange(self, round_id: int, stage: Stage) -> _Exchange:
        return _Exchange(
            "GET",
            SecAggPath.STAGE.format(round_id=round_id, stage=stage),
            round_id,
            count_payload_down=True,
            max_response_bytes=MAX_SECURE_RESPONSE,
        )


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# RFC 9110's IMF-fixdate, the only form a server may send: "Sun, 06 Nov 1994 08:49:37 GMT".
_IMF_FIXDATE = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d\d) (" + "|".join(_MONTHS) + r") (\d{4}) "
    r"(\d\d):(\d\d):(\d\d) GMT",
    re.ASCII,  # "\d" would take other scripts' digits, which int() reads
)


def _http_date(text: str | None) -> float | None:
    """An HTTP `Date` header in IMF-fixdate form as unix seconds; None for anything else (no
    header, two joined, another form, an impossible date). Parsed by hand: `strptime`'s month
    names follow the device's locale, and `email.utils` reads a date without a zone as local."""
    m = None if text is None else _IMF_FIXDATE.fullmatch(text)
    if m is None:
        return None
    try:
        when = datetime(
            int(m[3]), _MONTHS.index(m[2]) + 1, int(m[1]), int(m[4]), int(m[5]), int(m[6]),
            tzinfo=UTC,
        )  # fmt: skip
    except ValueError:  # 31 Feb, 25:00, 0000, a leap second
        return None
    return when.timestamp()


def _retry_after(response: httpx.Response, clock: Callable[[], float]) -> float | None:
    """The seconds `response`'s `Retry-After` asks to wait: its delay-seconds when a finite
    number >= 0 (NaN, inf and negative values would make `time.sleep` raise, or never return);
    or, for an HTTP-date (IMF-fixdate, `_http_date`), that date less the response's own `Date`
    (both the coordinator's clock), less the device's `clock()` when the response has no
    usable `Date`; a date already past is 0. None for no header or anything else."""
    ra = response.headers.get(Header.RETRY_AFTER)
    if ra is None:
        return None
    try:
        seconds = float(ra)
    except ValueError:
        when = _http_date(ra)
        if when is None:
            return None
        now = _http_date(response.headers.get("date"))
        return max(when - (clock() if now is None else now), 0.0)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _server_now(date: float | None, device_now: float, rtt: float) -> float | None:
    """The coordinator's clock (unix seconds) when its answer arrived, from the answer's `Date`
    (`_http_date`) and the device's clock then, `rtt` seconds after the request was sent.

    The header was made while the request was in flight and is cut to the second, so the
    coordinator then read between `date` and `date + 1 + rtt`: a device clock inside that
    interval is taken as it is (it agrees with the coordinator as far as the header shows),
    one outside it is moved to the interval's nearer end. None without a usable header (None,
    a round trip that is not a finite duration, or one more than MAX_CLOCK_SKEW_S outside the
    interval: not the coordinator's clock)."""
    if date is None or not (rtt >= 0) or not math.isfinite(rtt):
        return None
    if not abs(device_now - date) <= MAX_CLOCK_SKEW_S + 1.0 + rtt:
        return None
    return min(max(device_now, date), date + 1.0 + rtt)


def _sends_model(ex: _Exchange, response: httpx.Response) -> bool:
    """False for a model download answered with the empty chain (`have=` the current version):
    no model came, so no dense bytes are counted, as the coordinator's ledger counts them."""
    have = ex.params.get("have")
    return not (
        have is not None
        and response.headers.get(Header.MODEL_ENCODING) == ModelEncoding.DELTA_CHAIN
        and response.headers.get(Header.MODEL_VERSION) == have
    )


def _drop_oldest(held: dict[Any, Any], limit: int = MAX_RESIDUALS) -> None:
    """Drop the first (least recently used) entries of `held` past `limit`."""
    for key in list(held)[: max(0, len(held) - limit)]:
        del held[key]


def _note_event(held: dict[Any, int], key: Any, event: int) -> None:
    """`held[key] = event`, last in `held`, which keeps at most MAX_ROUND_DEADLINES."""
    held.pop(key, None)
    held[key] = event
    _drop_oldest(held, MAX_ROUND_DEADLINES)


def _too_large(response: httpx.Response, cap: int) -> ClientError:
    return ClientError(
        response.status_code, "too_large", f"response body above the {cap}-byte cap; not read"
    )


def _refuse_declared(response: httpx.Response, cap: int) -> None:
    """`too_large` before any byte is read when the declared length is already past `cap`."""
    declared = response.headers.get("content-length")
    if declared is None:
        return
    if declared.isascii() and declared.isdigit() and (len(declared) > 19 or int(declared) > cap):
        raise _too_large(response, cap)


# The device asks for bodies as they are (its payloads are zstd frames already) and reads them
# raw. httpx would otherwise inflate a gzip/zstd body a whole network chunk at a time, before
# any cap applies: a few kilobytes of zstd can inflate to gigabytes.
_ACCEPT_IDENTITY = {"accept-encoding": "identity"}


def _raw_chunks(response: httpx.Response) -> Iterator[bytes]:
    """The body as sent (never inflated): whole if it was read already (a response a `mods=`
    middleware or a mock transport built in memory), else the stream's raw chunks."""
    try:
        content = response.content
    except httpx.ResponseNotRead:
        yield from response.iter_raw()
        return
    yield content


async def _araw_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """`_raw_chunks` of an async response."""
    try:
        content = response.content
    except httpx.ResponseNotRead:
        async for chunk in response.aiter_raw():
            yield chunk
        return
    yield content


def _refuse_encoded(response: httpx.Response) -> None:
    """`bad_response` for a body sent with a Content-Encoding (the device asked for identity),
    before a byte of it is read or inflated."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise _bad(
            response,
            f"a body with Content-Encoding {encoding!r}: the device asks for identity and does "
            "not inflate answers (an inflated body is unbounded before any cap applies)",
        )


def _too_slow(status: int, seconds: float) -> ClientError:
    return ClientError(
        status, "too_slow", f"response not received whole within {seconds:g} s; abandoned"
    )


def _chain_failed(response: httpx.Response) -> bool:
    """Whether `response`, whose model failed its integrity check, was a delta chain: the base
    it applies to (the model the device held, now forgotten) may be what is wrong, or the
    chain, so a snapshot is worth asking for; a snapshot that fails would fail again."""
    return bool(response.headers.get(Header.MODEL_ENCODING, "") == ModelEncoding.DELTA_CHAIN)


def _check_base_url(base_url: str) -> str:
    """`base_url` as the clients name it in errors (no trailing slash); `ValueError` unless it
    is an http:// or https:// URL with a host. Without this, `"127.0.0.1:8080"` failed at the
    first request with a signing error about the request target, and `ftp://` was retried as
    a transient failure."""
    try:
        url = httpx.URL(base_url)
    except (TypeError, httpx.InvalidURL):
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise ValueError(
            "base_url must be an http:// or https:// URL with a host, such as "
            f"'http://127.0.0.1:8080', not {base_url!r}"
        )
    return str(url).rstrip("/")


def _check_timeout(timeout: object) -> None:
    """`ValueError` or `TypeError` unless `timeout` is a finite number of seconds > 0, at
    construction: -1 and NaN failed at the first request with httpx's bare "Timeout value out
    of range", "5" with a `TypeError` from a comparison, and 0 made every connect fail, which
    the retries then reported as an outage (`CoordinatorUnreachable`)."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be finite seconds > 0, not {timeout!r}")


def _url_hint(
    request: httpx.Request, exc: BaseException, outer: BaseException | None = None
) -> str:
    """What to check in `base_url` when `exc` (or an error it was raised from) shows a mistake
    in it rather than an outage, else "": an https:// URL answered in plain HTTP (OpenSSL's
    "wrong version number"), a host name that does not resolve (`socket.gaierror`, except
    EAI_AGAIN, the resolver not answering: a device offline). The retries are unchanged; the
    hint only keeps "call again later" from being the app's one idea. (A plain http:// URL
    sent to a TLS port is not told apart: h11 reports the TLS bytes as "illegal request
    line", with no trace of them.)"""
    seen: set[int] = set()
    chain = outer
    while chain is not None and id(chain) not in seen:  # the app's, not this request's
        seen.add(id(chain))
        chain = chain.__cause__ or chain.__context__
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        tls = isinstance(cause, ssl.SSLError) and request.url.scheme == "https"
        if tls and "WRONG_VERSION_NUMBER" in f"{getattr(cause, 'reason', '')} {cause}":
            return "the server does not speak TLS: is base_url http://?"
        if isinstance(cause, socket.gaierror) and cause.errno != socket.EAI_AGAIN:
            # Some systems report a device with no network so too (Android's EAI_NODATA, say).
            return (
                f"could not resolve the host {request.url.host!r}: check base_url (or whether "
                "the device is online)"
            )
        if isinstance(cause, _LookupFailed):
            cause = cause.error
        else:
            cause = cause.__cause__ or cause.__context__
    return ""


def _unreachable(
    base: str,
    request: httpx.Request,
    exc: httpx.TransportError,
    attempts: int,
    outer: BaseException | None = None,
) -> CoordinatorUnreachable:
    """`exc`, the last attempt's transport failure, as `CoordinatorUnreachable` that is still
    of `exc`'s own class (apps catch `httpx.TransportError`, some `httpx.ConnectError`) but
    naming the coordinator, the request and the attempts made: httpx's own text (`[Errno 111]
    Connection refused`) names none of them. The caller chains `exc` (`raise ... from exc`)."""
    what = "could not reach" if isinstance(exc, _NEVER_SENT) else "lost the connection to"
    tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
    reason = str(exc) or type(exc).__name__
    hint = _url_hint(request, exc, outer)
    if hint:
        reason = f"{reason}; {hint}"
    text = f"{what} the coordinator at {base} for {request.method} {request.url.path} in {tries}"
    try:
        return _unreachable_class(type(exc))(f"{text}: {reason}", request=request)
    except TypeError:  # an app transport's own subclass with another constructor
        return CoordinatorUnreachable(f"{text}: {reason}", request=request)


class _WaitOver(Exception):
    """`participate`'s `max_wait_s` ran out during a check-in: in its request or before a retry.
    `unreachable`: when the last attempt failed on the transport (no answer came), the
    `CoordinatorUnreachable` it would have been after the retries (chained from httpx's
    error), for `participate` to raise when none of its check-ins was answered."""

    def __init__(self, unreachable: CoordinatorUnreachable | None = None) -> None:
        super().__init__()
        self.unreachable = unreachable


def _attempt_budget(
    core: _Core, deadline: float, failed: CoordinatorUnreachable | None = None
) -> float:
    """Seconds the next attempt's response may take: `max_response_s`, or what is left before
    `deadline` (`_tick`) when that is less; `_WaitOver` (carrying `failed`, the previous
    attempt's transport failure) once nothing is left."""
    left = deadline - _tick()
    if not left > 0:
        raise _WaitOver(failed)
    return min(core.max_response_s, left)


def _retry_pause(
    seconds: float, deadline: float, failed: CoordinatorUnreachable | None = None
) -> float:
    """`seconds`, the wait before a retry, unless it would end past `deadline`: `_WaitOver`
    (carrying `failed`, as `_attempt_budget`) then, at once (as `participate` does with a
    check-in's wait)."""
    if _tick() + seconds > deadline:
        raise _WaitOver(failed)
    return seconds


def _failed(
    base: str,
    request: httpx.Request,
    exc: httpx.TransportError,
    attempts: int,
    outer: BaseException | None = None,
) -> CoordinatorUnreachable:
    """`_unreachable(...)` chained from `exc`, as `raise ... from exc` leaves it, for a
    `_WaitOver` to carry: an attempt that failed on the transport before the retries ran out."""
    err = _unreachable(base, request, exc, attempts, outer)
    err.__cause__ = exc
    return err


def _already_delivered(a: Assignment) -> ClientError:
    """A plain round whose upload from this device the coordinator holds (`_Core.delivered`):
    training it again would only have its upload refused (409 `duplicate_upload`) and that
    update's content put into the residual, to go out with a later round."""
    return ClientError(
        0, Reason.DUPLICATE_UPLOAD,
        f"round {a.round_id} of task {a.task_id}: this device's upload to it was accepted "
        "already, and the coordinator takes one update per device and round; nothing was "
        "downloaded or trained, and the error-feedback residual is as before the call",
    )  # fmt: skip


def _past_deadline(a: Assignment, what: str, then: str) -> ClientError:
    """A plain round's request that could not end by `_Core.plain_round_end`."""
    return ClientError(
        0, "deadline_passed",
        f"round {a.round_id}: the {what} could not end by the round's deadline (+"
        f"{ROUND_DEADLINE_SLACK_S:g} s); {then}",
    )  # fmt: skip


def _cut_by_wait(core: _Core, err: ClientError, budget_s: float) -> bool:
    """Whether `err` is a response abandoned because the wait's deadline, not
    `max_response_s`, bounded it."""
    return err.reason == "too_slow" and budget_s < core.max_response_s


class _Deadline(threading.local):
    """When the response this thread is receiving must be whole (`_tick`; inf: no
    bound), and the budget that set it (seconds, for the `too_slow` message)."""

    at = math.inf
    budget_s = math.inf
    # The app's cancel event for the call this thread runs (`Client._cancel_scope`), or None.
    cancel: CancelFlag | None = None


_T = TypeVar("_T")


def _within(deadline: _Deadline, timeout: float | None, io: Callable[[float | None], _T]) -> _T:
    """One socket operation `io(timeout)`, its timeout cut to what is left before `deadline`;
    `too_slow` when nothing is left or the cut timeout passes. httpcore closes the connection
    on any error in a request, so the pool holds no half-read one afterwards."""
    left = deadline.at - _tick()
    if not left < (math.inf if timeout is None else timeout):
        return io(timeout)
    if left <= 0:
        raise _too_slow(0, deadline.budget_s)
    try:
        return io(left)
    except httpcore.TimeoutException:
        raise _too_slow(0, deadline.budget_s) from None


# While the thread's call can be cancelled (`_Deadline.cancel`), a socket read, or a send's
# wait for room in the socket's buffer, lasts at most this long (seconds) before the event is
# looked at again: a cancel ends a request in flight within about that.
_CANCEL_POLL_S = 0.05
# A TLS socket's send while the call can be cancelled: one TLS record's worth (RFC 8446's
# largest), so that each completed send is progress (see `_DeadlineStream._send_polled`).
_CANCEL_TLS_BYTES = 16 << 10
# A stream that is not httpcore's own socket stream (TLS in TLS through a proxy, an app's
# network backend) is written in pieces of at most this many bytes, the event read between them.
_CANCEL_WRITE_BYTES = 64 << 10


def _until_cancelled(
    open_stream: Callable[[], httpcore.NetworkStream],
    cancel: CancelFlag,
    cut_short: Callable[[], None] | None = None,
) -> httpcore.NetworkStream:
    """`open_stream()` (a TCP connect or a TLS handshake: neither can be taken up again once cut
    short) on a daemon thread, waited for _CANCEL_POLL_S at a time: `_Stop` once `cancel` is
    set, after calling `cut_short` (if given), which makes `open_stream` fail at once. Without
    it (a TCP connect: its socket is not reachable from here) the thread ends by the connect's
    own timeout; either way it closes any stream it opened after all."""
    result: list[httpcore.NetworkStream | BaseException] = []
    abandoned = False
    lock = threading.Lock()
    done = threading.Event()

    def run() -> None:
        try:
            opened: httpcore.NetworkStream | BaseException = open_stream()
        except BaseException as exc:  # noqa: BLE001 - raised again by the waiting thread
            opened = exc
        with lock:
            if abandoned and isinstance(opened, httpcore.NetworkStream):
                with contextlib.suppress(Exception):
                    opened.close()
            result.append(opened)
        done.set()

    threading.Thread(target=run, name="plume-connect", daemon=True).start()
    while not done.wait(_CANCEL_POLL_S):
        if cancel.is_set():
            with lock:
                if not result:
                    abandoned = True
            if abandoned:
                if cut_short is not None:
                    with contextlib.suppress(Exception):
                        cut_short()
                raise _Stop
    got = result[0]
    if isinstance(got, BaseException):
        raise got
    return got


def _ends_at(timeout: float | None) -> float:
    """When an operation given `timeout` seconds (None: unbounded) must end (`_tick`)."""
    return math.inf if timeout is None else _tick() + timeout


class _DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose reads, writes and TLS handshake end by the thread's deadline, and
    stop (`_Stop`) within about _CANCEL_POLL_S of the thread's cancel event being set."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        cancel = self._deadline.cancel
        if cancel is None:
            return _within(self._deadline, timeout, lambda t: self._inner.read(max_bytes, t))
        # A read that times out has consumed nothing (a plain socket's recv, or TLS, whose
        # partial record stays in the SSL object), so it is tried again after looking at the
        # event; the request's own timeout still ends it where it would have.
        end = _ends_at(timeout)
        while True:
            if cancel.is_set():
                raise _Stop
            left = end - _tick()
            if not left > 0:
                raise httpcore.ReadTimeout("timed out")
            slice_s = min(left, _CANCEL_POLL_S)
            try:
                return _within(self._deadline, slice_s, lambda t: self._inner.read(max_bytes, t))
            except httpcore.ReadTimeout:
                continue

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        cancel = self._deadline.cancel
        sock = self._inner.get_extra_info("socket") if type(self._inner) is _SyncStream else None
        if cancel is not None and isinstance(sock, socket.socket):
            self._send_polled(sock, memoryview(buffer), timeout, cancel)
        elif cancel is None and not isinstance(sock, ssl.SSLSocket):
            _within(self._deadline, timeout, lambda t: self._inner.write(buffer, t))
        else:
            # Python's SSL send gives `timeout` to the whole buffer (one deadline): a TLS
            # record at a time. Another stream while cancellable: 64 KiB pieces, the event
            # read between them.
            size = _CANCEL_TLS_BYTES if cancel is None else _CANCEL_WRITE_BYTES
            self._write_pieces(buffer, size, timeout, cancel)

    def _write_pieces(
        self, buffer: bytes, size: int, timeout: float | None, cancel: CancelFlag | None
    ) -> None:
        """`buffer` in pieces of at most `size` bytes, each sent whole with the full `timeout`
        (as httpcore gives each send that makes progress); `_Stop` between pieces once `cancel`
        is set. A piece that timed out part-way cannot be tried again (what was sent is
        unknown): it ends the request (httpcore closes the connection on any error)."""
        view = memoryview(buffer)
        for at in range(0, len(view), size):
            if cancel is not None and cancel.is_set():
                raise _Stop
            piece = bytes(view[at : at + size])
            _within(
                self._deadline, timeout,
                lambda t: self._inner.write(piece, t),  # noqa: B023 - called at once
            )  # fmt: skip

    def _send_polled(
        self, sock: socket.socket, view: memoryview, timeout: float | None, cancel: CancelFlag
    ) -> None:
        """`view` sent on httpcore's own socket as its write would (each send that makes
        progress has the whole `timeout`; the thread's deadline bounds all, `_within`), but no
        send waits more than _CANCEL_POLL_S for room in the socket's buffer before the event is
        looked at again, so a cancel ends a write whose peer stopped reading. A plain socket's
        send that timed out sent nothing. A TLS socket sends one record at a time, and one that
        timed out is sent again with the same bytes: OpenSSL's rule for retrying a write, which
        keeps what it already wrote and sends the rest, so nothing is lost or sent twice."""
        tls = isinstance(sock, ssl.SSLSocket)
        piece = view

        def send(t: float | None) -> int:
            sock.settimeout(t)
            try:
                return sock.send(piece)
            except TimeoutError:
                raise httpcore.WriteTimeout("timed out") from None
            except OSError as exc:  # as httpcore maps it
                raise httpcore.WriteError(str(exc) or type(exc).__name__) from exc

        end = _ends_at(timeout)
        while view:
            if cancel.is_set():
                raise _Stop
            left = end - _tick()
            if not left > 0:
                raise httpcore.WriteTimeout("timed out")
            piece = view[:_CANCEL_TLS_BYTES] if tls else view
            try:
                sent = _within(self._deadline, min(left, _CANCEL_POLL_S), send)
            except httpcore.WriteTimeout:
                continue
            if sent > 0:
                view, end = view[sent:], _ends_at(timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        def handshake(t: float | None) -> httpcore.NetworkStream:
            return self._inner.start_tls(ssl_context, server_hostname, t)

        cancel = self._deadline.cancel
        if cancel is None:
            return _DeadlineStream(_within(self._deadline, timeout, handshake), self._deadline)
        # httpcore does not close the TCP stream when start_tls raises (httpcore 1.0.9's
        # `_connect`), and the handshake's thread would wait out its timeout: a cancel shuts the
        # connection down through a duplicate of its socket (the handshake moves the socket's
        # own descriptor to the TLS socket it makes), which ends the handshake at once; its
        # failure closes the TLS socket (ssl's wrap_socket does). The duplicate is closed after.
        sock = self._inner.get_extra_info("socket")
        twin: socket.socket | None = None
        if isinstance(sock, socket.socket):
            # SSLSocket.dup() refuses (TLS in TLS through an https proxy): dup the descriptor.
            with contextlib.suppress(OSError):
                twin = socket.socket(fileno=os.dup(sock.fileno()))

        def cut_short() -> None:
            if twin is not None:
                twin.shutdown(socket.SHUT_RDWR)

        try:
            tls = _within(
                self._deadline, timeout,
                lambda t: _until_cancelled(lambda: handshake(t), cancel, cut_short),
            )  # fmt: skip
        finally:
            if twin is not None:
                twin.close()
        return _DeadlineStream(tls, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _LookupFailed(httpcore.ConnectError):
    """`_lookup`'s failure, keeping the resolver's error (`error`, a `socket.gaierror` mostly)
    for `_url_hint`: httpcore's pool re-raises with `from None`, which drops the chain, and the
    lookup ran in another thread, so no `__context__` holds it either."""

    def __init__(self, message: str, error: BaseException | None = None) -> None:
        super().__init__(message)
        self.error = error


def _lookup(
    host: str, port: int, timeout: float | None, cancel: CancelFlag | None = None
) -> list[str]:
    """The addresses `host` names, in `_interleaved` order (RFC 8305: families taking turns,
    `socket.getaddrinfo`'s first answer's first; an IP address: itself), each once, looked up
    within `timeout` seconds (None: unbounded). getaddrinfo takes no timeout and
    cannot be interrupted, and httpcore calls it inside `socket.create_connection`, so a stalled
    resolver held a request past any deadline: a bounded lookup runs in a daemon thread, which
    is left to end on its own (the resolver's own timeout, seconds) once `timeout` passes
    (`httpcore.ConnectTimeout`). A failed lookup is `httpcore.ConnectError`, as in httpcore."""
    try:
        ipaddress.ip_address(host)
        return [host]
    except ValueError:
        pass
    answer: list[Any] = []
    done = threading.Event()

    def resolve() -> None:
        try:
            answer.append(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM))
        except (OSError, UnicodeError) as exc:  # gaierror; a label over 63 characters
            answer.append(exc)
        finally:
            done.set()

    if timeout is None and cancel is None:
        resolve()
    else:
        threading.Thread(target=resolve, name=f"plume-lookup-{host}", daemon=True).start()
        end = _ends_at(timeout)
        # A cancel (`_Stop`) is seen within _CANCEL_POLL_S; the lookup is left to end alone.
        while not done.wait(max(min(end - _tick(), _CANCEL_POLL_S), 0.0)):
            if cancel is not None and cancel.is_set():
                raise _Stop
            if not _tick() < end:
                raise httpcore.ConnectTimeout(f"{host!r}: no address within {timeout:g} s")
    if isinstance(answer[0], (OSError, UnicodeError)):
        raise _LookupFailed(f"{host!r}: {answer[0]}", answer[0]) from answer[0]
    addresses: list[str] = []
    for family, _, _, _, sockaddr in _interleaved(answer[0]):
        address = str(sockaddr[0])
        if family == socket.AF_INET6 and sockaddr[3] and "%" not in address:
            address = f"{address}%{sockaddr[3]}"  # a link-local address keeps its interface
        if address not in addresses:
            addresses.append(address)
    return addresses


def _ip_version(address: str) -> int:
    """4 or 6, for an address `_lookup` gave (an IPv6 one may carry its %interface)."""
    return ipaddress.ip_address(address.split("%")[0]).version


def _race_connect(
    connect: Callable[[str, float | None], httpcore.NetworkStream],
    addresses: list[str],
    timeout: float | None,
    cancel: CancelFlag | None,
) -> httpcore.NetworkStream:
    """`connect(address, timeout)` raced over `addresses` (RFC 8305's Happy Eyeballs, as
    `AsyncClient`'s `_dial`), each attempt on a daemon thread of its own: the next address is
    dialled once the last one's attempt failed or had not connected within `_NEXT_ADDRESS_S`,
    the first stream to connect is returned, and every other attempt closes its stream when
    it ends (an attempt cannot be cut short: its socket is the inner backend's). The race and
    its attempts share `timeout`: each attempt gets what is left of it when it starts, so no
    thread outlives the race's end by more than scheduling; `httpcore.ConnectTimeout` when it
    ends the race, even when some attempts failed before (a refused address and one that never
    answers: ConnectTimeout, as `AsyncClient`'s `_dial`). When every attempt fails
    (`ConnectError`, `ConnectTimeout`) before that: the error of the last address in that
    order, as `socket.create_connection` raises. Any other error an
    attempt ends with is raised at once. `_Stop` within _CANCEL_POLL_S of `cancel` being set."""
    end = _ends_at(timeout)
    lock = threading.Condition()
    ended: list[tuple[int, httpcore.NetworkStream | BaseException]] = []
    over = False  # set under `lock` when the race returned or raised: attempts close theirs

    def attempt(index: int, address: str, left: float | None) -> None:
        try:
            outcome: httpcore.NetworkStream | BaseException = connect(address, left)
        except BaseException as exc:  # noqa: BLE001 - the race raises it
            outcome = exc
        with lock:
            if not over:
                ended.append((index, outcome))
                lock.notify()
                return
        if isinstance(outcome, httpcore.NetworkStream):
            with contextlib.suppress(Exception):
                outcome.close()

    winner: httpcore.NetworkStream | None = None
    failed: dict[int, BaseException] = {}
    started = 0
    next_at = _tick()
    try:
        with lock:
            while True:
                stray: BaseException | None = None
                for index, outcome in ended:
                    if not isinstance(outcome, httpcore.NetworkStream):
                        if isinstance(outcome, httpcore.ConnectError | httpcore.ConnectTimeout):
                            failed[index] = outcome
                        elif stray is None:  # a socket option of the wrong type, say
                            stray = outcome
                    elif winner is None:
                        winner = outcome
                    else:  # connected in the same step as the winner
                        with contextlib.suppress(Exception):
                            outcome.close()
                ended.clear()
                if stray is not None:
                    raise stray
                if winner is not None:
                    return winner
                now = _tick()
                if started < len(addresses) and (
                    started == 0 or started - 1 in failed or now >= next_at
                ):
                    left = None if timeout is None else end - now
                    if left is not None and left <= 0:
                        raise httpcore.ConnectTimeout("timed out")
                    threading.Thread(
                        target=attempt, args=(started, addresses[started], left),
                        name="plume-connect", daemon=True,
                    ).start()  # fmt: skip
                    started += 1
                    next_at = now + _NEXT_ADDRESS_S
                    continue
                if len(failed) == started == len(addresses):
                    raise failed[max(failed)]
                if cancel is not None and cancel.is_set():
                    raise _Stop
                if not now < end:
                    raise httpcore.ConnectTimeout("timed out")
                wait = end - now
                if started < len(addresses):
                    wait = min(wait, next_at - now)
                if cancel is not None:
                    wait = min(wait, _CANCEL_POLL_S)
                lock.wait(None if wait == math.inf else max(wait, 0.0))
    except BaseException:
        if winner is not None:
            with contextlib.suppress(Exception):
                winner.close()
        raise
    finally:
        with lock:
            over = True
            for _, outcome in ended:  # ended after the race's last look
                if isinstance(outcome, httpcore.NetworkStream):
                    with contextlib.suppress(Exception):
                        outcome.close()


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network backend with `_DeadlineStream` sockets (connecting bounded too)."""

    def __init__(self, inner: httpcore.NetworkBackend, deadline: _Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        cancel = self._deadline.cancel

        def connect(address: str, t: float | None) -> httpcore.NetworkStream:
            return self._inner.connect_tcp(address, port, t, local_address, socket_options)

        # The inner backend would look `host` up itself, unbounded (`_lookup`), then dial its
        # addresses one after another, each with the whole timeout (`socket.create_connection`):
        # it is given the addresses instead, raced as `AsyncClient`'s `_dial` races them, the
        # lookup and the race within one connect timeout. A thread without a deadline (an
        # unbounded `max_response_s`) connects so too: the connect timeout still bounds it.
        # TLS still names `host` (httpcore takes the server name from the request's URL), as
        # does `Host`.
        end = _ends_at(timeout)
        addresses = _within(self._deadline, timeout, lambda t: _lookup(host, port, t, cancel))
        try:
            addresses = _of_local_family(addresses, _ip_version, host, local_address)
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        if not addresses:
            raise httpcore.ConnectError(f"{host!r}: no address to connect to")
        left = None if timeout is None else end - _tick()
        if left is not None and left <= 0:
            raise httpcore.ConnectTimeout(f"{host!r}: the lookup took the connect timeout")
        if len(addresses) == 1:  # nothing to race: dialled in this thread
            address = addresses[0]
            stream = _within(
                self._deadline, left,
                (lambda t: connect(address, t)) if cancel is None
                else lambda t: _until_cancelled(lambda: connect(address, t), cancel),
            )  # fmt: skip
        else:
            stream = _within(
                self._deadline, left, lambda t: _race_connect(connect, addresses, t, cancel)
            )
        return _DeadlineStream(stream, self._deadline)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        stream = _within(
            self._deadline, timeout,
            lambda t: self._inner.connect_unix_socket(path, t, socket_options),
        )  # fmt: skip
        return _DeadlineStream(stream, self._deadline)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _backend_pool(transport: Any) -> Any | None:
    """The httpcore pool under an httpx transport, whose network backend can be wrapped; None,
    with a warning, on an httpx without it (private attributes, pinned below 1.0 in
    pyproject). stacklevel points at the Client being built."""
    pool = getattr(transport, "_pool", None)
    if isinstance(getattr(pool, "_network_backend", None), httpcore.NetworkBackend):
        return pool
    warnings.warn(
        f"httpx {httpx.__version__}: no httpcore network backend in {transport!r}; "
        "max_response_s bounds response bodies only, not trickled headers",
        RuntimeWarning,
        stacklevel=4,
    )
    return None


def _bound_sockets(http: httpx.Client, deadline: _Deadline) -> bool:
    """Make the sockets of the transports httpx built for `http` (its default one and any
    environment proxy's) honour `deadline`, headers included: httpx's per-read timeout starts
    again with every byte. httpx takes no network backend, but the httpcore pool under each of
    its transports does; that backend is wrapped in place. These are httpx's private attributes
    (pinned below 1.0 in pyproject): on an httpx without them this warns once and returns False,
    and responses are bounded between body chunks only, as with an injected transport other
    than `httpx.HTTPTransport` (`_bound_transport`); the device keeps working.
    tests/sdk/test_client_deadlines.py fails if the bound is lost."""
    pools: list[Any] = []
    for transport in (getattr(http, "_transport", None), *getattr(http, "_mounts", {}).values()):
        if transport is None:  # a NO_PROXY host: the default transport
            continue
        pool = _backend_pool(transport)
        if pool is None:
            return False
        pools.append(pool)
    for pool in pools:
        pool._network_backend = _DeadlineBackend(pool._network_backend, deadline)
    return True


def _bound_transport(transport: httpx.HTTPTransport, deadline: _Deadline) -> _Deadline:
    """`_bound_sockets` for an `httpx.HTTPTransport` the app passed as `transport=`: its pool's
    backend is wrapped in place, once. A transport already wrapped (shared by several clients)
    keeps its wrapper, and its deadline is returned for the client to set: the deadline is per
    thread, and a thread receives one response at a time. For threads with no deadline set
    (another httpx client on the same transport) reads and writes pass through; their connects
    are looked up and raced as the client's own (`_DeadlineBackend.connect_tcp`). Returns
    `deadline` unchanged, with the warning of `_bound_sockets`, on an httpx without the pool."""
    pool = _backend_pool(transport)
    if pool is None:
        return deadline
    if isinstance(pool._network_backend, _DeadlineBackend):
        return pool._network_backend._deadline
    pool._network_backend = _DeadlineBackend(pool._network_backend, deadline)
    return deadline


def _read_capped(
    response: httpx.Response,
    cap: int,
    deadline: float = math.inf,
    budget_s: float = math.inf,
    cancel: CancelFlag | None = None,
) -> httpx.Response:
    """Read a streamed response's body, refusing it (`too_large`) once it passes `cap` bytes,
    and (`too_slow`) once a chunk arrives after `deadline` (`_tick`; `budget_s` is
    what it allowed, for the message): each read is bounded by the client's timeout. `_Stop`
    between chunks once `cancel` is set (an injected transport's body: the client's own
    sockets see it within their reads)."""
    try:
        _refuse_encoded(response)
        _refuse_declared(response, cap)
        chunks, size = [], 0
        for chunk in _raw_chunks(response):
            size += len(chunk)
            if size > cap:
                raise _too_large(response, cap)
            if _tick() > deadline:
                raise _too_slow(response.status_code, budget_s)
            if cancel is not None and cancel.is_set():
                raise _Stop
            chunks.append(chunk)
    finally:
        response.close()
    response._content = b"".join(chunks)  # what Response.read() stores
    return response


async def _aread_capped(response: httpx.Response, cap: int) -> httpx.Response:
    """`_read_capped` for an async response."""
    try:
        _refuse_encoded(response)
        _refuse_declared(response, cap)
        chunks, size = [], 0
        async for chunk in _araw_chunks(response):
            size += len(chunk)
            if size > cap:
                raise _too_large(response, cap)
            chunks.append(chunk)
    finally:
        await response.aclose()
    response._content = b"".join(chunks)
    return response


def _any_config() -> Any:
    from compression import CodecConfig

    return CodecConfig.dense()  # decoding reads everything from the frame header


def _spec(a: Assignment) -> ModelSpec:
    try:
        spec = ModelSpec.from_json([{"name": t.name, "shape": list(t.shape)} for t in a.spec])
    except ValueError as exc:  # a coordinator's answer, so a bad_response, not a crash
        raise ClientError(200, "bad_response", f"assignment spec: {exc}") from exc
    # The layout is kept with a pending upload; one too large to read back would stick it.
    stored = len(json.dumps(spec.to_json()))
    if stored > MAX_SPEC_JSON_BYTES:
        raise ClientError(
            200, "bad_response",
            f"assignment spec: {stored} bytes of JSON (tensor names included), over the "
            f"{MAX_SPEC_JSON_BYTES}-byte cap",
        )  # fmt: skip
    return spec


def _parse(cls: type[Any], response: httpx.Response) -> Any:
    """The 200 answer's JSON body as message `cls`; a refusal (4xx/5xx) as its `ClientError`,
    and anything else (another status, a body that is not that message) as `bad_response`."""
    if response.status_code != 200:
        raise _refusal(response)
    try:
        return from_json(cls, _json(response))
    except (ValueError, MessageError) as exc:
        raise _bad(response, f"not a {cls.__name__}: {str(exc)[:300]}") from exc


def _check_in_answer(
    core: _Core, ex: _Exchange, response: httpx.Response, task_id: int | None
) -> CheckInResponse:
    if response.status_code != 200:
        err = _refusal(response)
        if err.reason == Reason.SDK_UNSUPPORTED:
            raise SdkUnsupportedError(err.status, err.reason, err.detail, task_id)
        if err.reason == Reason.MODEL_TOO_LARGE and task_id is not None:
            limit = core.max_model_bytes
            raise ModelTooLargeError(task_id, None, limit, status=err.status, detail=err.detail)
        if err.reason == Reason.MODEL_LAYOUT_MISMATCH and task_id is not None:
            raise LayoutMismatchError(err.status, err.reason, err.detail, task_id)
        raise err
    answer: CheckInResponse = _parse(CheckInResponse, response)
    # First of all: under another database's incarnation the records, residuals and models
    # are set aside, and the `round_outcome` (of that database's round of the id asked
    # about) then settles nothing.
    core.note_incarnation(
        _incarnation(response, answer.incarnation, "check-in answer"), _coordinator(response)
    )
    # Before the rest is looked at: `round_outcome` answers `awaiting_round` whatever the
    # assignment. Refusing the whole answer first left the record unsettled for as long as the
    # coordinator answered with another task's assignment (every check-in, for one with
    # several tasks open) or one this SDK refuses (a newer codec option), till MAX_ACCEPTED
    # newer records pushed it out as delivered.
    if ex.awaiting_round is not None:
        core.settle_outcome(ex.awaiting_round, answer.round_outcome)
    try:
        check_check_in(answer)
    except MessageError as exc:
        raise _bad(response, f"check-in answer: {exc}") from exc
    a = answer.assignment
    if a is not None and task_id is not None and a.task_id != task_id:
        raise _bad(
            response, f"an assignment for task {a.task_id!r}; this device asked for {task_id!r}"
        )
    # Only "train" assigns: an assignment another action carries (a newer coordinator's,
    # read as a wait) notes no round, so a round whose update was accepted stays delivered.
    if a is not None and answer.action == CheckInAction.TRAIN:
        core.note_round(a, response, ex)
    core.last_check_in = answer
    return answer


def _check_snapshot_layout(data: bytes, spec: ModelSpec) -> None:
    """`SpecMismatch` if the header of snapshot `data` names another layout than `spec`.
    `decode_snapshot` checks the snapshot's size against `spec` first, so a snapshot of a
    larger model than a (wrong) `spec` was refused as too large (`SizeLimitExceeded`, read as a
    corrupt body) before its header was read: the header alone is decoded here, which reads
    the layout and then stops, short (any other fault is the whole decode's to report)."""
    try:
        decode_snapshot(data[:SNAPSHOT_HEADER_LEN], spec)
    except SpecMismatch:
        raise
    except CodecError:
        pass


def _not_the_task_spec(task_id: int, spec: ModelSpec, exc: CodecError) -> LayoutMismatchError:
    """`fetch_current`'s error for a spec that is not the task's (the model's frames name
    another layout): the app's to fix, nothing about the download or the store."""
    names = [e.name for e in spec.entries]
    shown = f"{names[:3]}{'...' if len(names) > 3 else ''}"
    return LayoutMismatchError(
        0,
        MODEL_LAYOUT_MISMATCH,
        f"task {task_id}'s model is not of the layout of the spec given to fetch_current "
        f"({spec.size} parameters in {len(names)} tensors named {shown}): {exc}. The layout "
        "is the tensor names and shapes in order, and fetch_current needs the task's own: "
        "the spec the task was created with (a model-zoo task's names start with 'net.', "
        "'net.1.weight' where the app's module says '1.weight'); nothing was saved, and the "
        "model held for the task is kept",
        task_id,
    )


def _registered(response: httpx.Response, device_id: str) -> RegisterResponse:
    resp: RegisterResponse = _parse(RegisterResponse, response)
    # The id is derived from this device's key, so any other answer is not about this device
    # (and is never written to the app directory).
    if resp.device_id != device_id:
        raise _bad(response, f"registered device id {resp.device_id[:80]!r}, not {device_id}")
    return resp


def _receipt(response: httpx.Response, round_id: int) -> UploadReceipt:
    """The receipt of an upload to `round_id` in a 200 answer; `bad_response` (a plain upload
    stays pending) for a body that is not one, e.g. a captive portal's page, or one for
    another round, or not accepted."""
    receipt: UploadReceipt = _parse(UploadReceipt, response)
    if receipt.round_id != round_id or not receipt.accepted:
        raise _bad(
            response,
            f"receipt for round {receipt.round_id} (accepted: {receipt.accepted}) answering "
            f"an upload to round {round_id}",
        )
    return receipt


def _unsettled(core: _Core, pending: PendingUpload, err: ClientError) -> None:
    """Before a new round's upload replaces `pending`, whose re-send failed with `err`: a
    refusal that proves it was never taken (`_NEVER_TAKEN`) returns its content to the
    residual (one for good, `duplicate_upload` included, `upload` returned already); anything
    else (a 5xx, a bad answer, an authentication refusal, 429) leaves its fate unknown, so
    `err` is raised and the pending upload kept: the coordinator answers `round_closed`
    (content back to the residual) once its round has closed."""
    refusal = err.reason if 400 <= err.status < 500 else None
    if refusal in _REFUSED_FOR_GOOD:
        return  # `upload` settled it already
    if refusal in _NEVER_TAKEN:
        core.settle_upload(pending, None, refused=True)
    else:
        raise err


def _of_task(upload: PendingUpload | AcceptedUpload | None) -> str:
    """The words " of task <t>" for an upload that names its task; "" else."""
    task_id = None if upload is None else upload.task_id
    return "" if task_id is None else f" of task {task_id}"


def _plural(tasks: list[int | None] | list[int]) -> str:
    return "" if len(tasks) == 1 else "s"


def _tasks(tasks: list[int | None] | list[int]) -> str:
    """ "task 1", "tasks 1, 2" (None: the older SDK's residual, kept for no task yet)."""
    named = [str(t) for t in tasks if t is not None]
    shown = []
    if named:
        shown.append(f"task{'' if len(named) == 1 else 's'} {', '.join(named)}")
    if None in tasks:
        shown.append("the older SDK's residual.bin")
    return " and ".join(shown)


def _coordinator(response: httpx.Response) -> str:
    """The coordinator's address an answer came from, as a warning names it ("base_url" for
    an answer a `mods=` middleware built, which names no request)."""
    try:
        return str(response.request.url.copy_with(path="/", query=None))
    except RuntimeError:
        return "base_url"


def _incarnation(response: httpx.Response, value: str | None, what: str) -> str | None:
    """An answer's `incarnation`, checked (`check_incarnation`); a malformed one makes the
    answer `bad_response`, before anything of it is acted on."""
    try:
        return check_incarnation(value, "$.incarnation")
    except MessageError as exc:
        raise _bad(response, f"{what}: {exc}") from exc


def _same_round(pending: PendingUpload, a: Assignment) -> bool:
    """Whether `pending` is an upload to `a`'s round (of its task, when the upload names one):
    once the coordinator accepted it, it holds this device's update for the round, and a
    second upload to it is refused (409 `duplicate_upload`)."""
    return pending.round_id == a.round_id and pending.task_id in (None, a.task_id)


def _resent_report(
    core: _Core, a: Assignment, receipt: UploadReceipt, before: dict[str, int]
) -> RoundReport:
    """The report of round `a` whose update an earlier call trained, and this call's re-send
    (`receipt`) delivered (`RoundReport.resent`): nothing downloaded or trained now, so no
    loss (NaN), no examples, no download encoding; the bytes are the assigning check-in's and
    the re-send's, counted from `before` (`_Core.round_start`)."""
    row = core.bandwidth.get(a.round_id, {})
    return RoundReport(
        a.round_id, a.task_id, receipt, math.nan, 0, a.base_version, "",
        _delta(row, before, "down"), _delta(row, before, "up"), resent=True,
    )  # fmt: skip


def _refused_for_good(response: httpx.Response, err: ClientError) -> bool:
    # Only a refusal (4xx) means it: a 5xx or 3xx naming the reason is not the coordinator's.
    return 400 <= response.status_code < 500 and err.reason in _REFUSED_FOR_GOOD


def _trainer_layout(trainer: LocalTrainer) -> list[tuple[int, ...]] | None:
    """The shapes, in flat order, of the model a trainer trains, where it tells: an ORT
    trainer's `spec`, a torch trainer's `module` (its trainable parameters, the order of
    `sdk.flat`); None for other trainers. Read without importing torch."""
    spec = getattr(trainer, "spec", None)
    if isinstance(spec, ModelSpec):
        return [tuple(e.shape) for e in spec.entries]
    named = getattr(getattr(trainer, "module", None), "named_parameters", None)
    if callable(named):
        return [tuple(p.shape) for _, p in named() if p.requires_grad]
    return None


def _frozen_hint(trainer: LocalTrainer) -> str:
    """For a torch trainer whose module has frozen parameters (``requires_grad=False``, no
    part of its layout: `sdk.flat.spec_from_module`, as the coordinator's spec is made): the
    end of a layout refusal's message naming them; else ''."""
    named = getattr(getattr(trainer, "module", None), "named_parameters", None)
    if not callable(named):
        return ""
    frozen = [name for name, p in named() if not p.requires_grad]
    if not frozen:
        return ""
    shown = f"{frozen[:6]}{'...' if len(frozen) > 6 else ''}"
    return (
        f". The trainer's module has {len(frozen)} frozen parameters (requires_grad=False), "
        f"which are no part of its layout: {shown}. Frozen parameters are not supported "
        "against a task whose model has them: unfreeze them (p.requires_grad_(True)) to train "
        "this task, or train a task whose spec leaves them out (sdk.flat.spec_from_module of the "
        "model with them frozen)"
    )


def _check_trainer(trainer: LocalTrainer) -> None:
    """`TypeError` unless `trainer.train` can take the call `_train` makes, before any request:
    a torch module passed as the trainer (`Module.train(mode)`) checked in, took a round slot
    and downloaded the model before failing on `epochs`."""
    train = getattr(trainer, "train", None)
    fits = callable(train)
    if fits:
        try:
            inspect.signature(train).bind(  # type: ignore[arg-type]
                None, None, None, epochs=1, batch_size=1, lr=0.0, rng=None
            )
        except TypeError:
            fits = False
        except ValueError:  # no signature to read (a builtin): its call will say
            pass
    if not fits:
        kind = type(trainer)
        hint = (
            "; wrap a torch module: TorchTrainer(module)" if hasattr(trainer, "parameters") else ""
        )
        raise TypeError(
            "trainer must be a LocalTrainer, with train(params, x, y, *, epochs, batch_size, lr, "
            "rng), such as sdk.trainer.TorchTrainer(module) or sdk.ort.OrtTrainer.from_dir(path)"
            f"; got {kind.__module__}.{kind.__qualname__}{hint}"
        )


def _check_data(trainer: LocalTrainer, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> None:
    """The trainer's own check of its data, where it has one (`TorchTrainer.check_data`):
    raises its `TrainingDataError` before the device asks for a round."""
    check = getattr(trainer, "check_data", None)
    if callable(check):
        check(x, y)


def _declared_layouts(trainer: LocalTrainer) -> tuple[str, ...] | None:
    """The check-in's `model_layouts` for `trainer`: the hex of its `spec`'s fingerprint
    (`compression.ModelSpec.fingerprint`, names and shapes) when it has one (an `OrtTrainer`,
    whose artifacts fix its model), else None (no field sent: any task, as before). A torch
    trainer declares none: its module's parameter names need not be the task's spec's (the
    SDK's own check, `_check_layout`, compares shapes), so declaring them could keep it from
    a task it trains today; such an app names its task (`participate(task_id=...)`)."""
    spec = getattr(trainer, "spec", None)
    if isinstance(spec, ModelSpec):
        return (spec.fingerprint.hex(),)
    return None


def _declared_names(trainer: LocalTrainer) -> tuple[str, ...] | None:
    """The check-in's `model_names` for `trainer`: the name its artifacts were exported under
    (`plume export --model NAME`, the manifest's `model` with `model_named`), which
    `_check_layout` compares with the task's `model_name`; else None (no field sent)."""
    name = _exported_name(trainer)
    return (name,) if name is not None and len(name) <= MAX_MODEL_NAME else None


def _exported_name(trainer: LocalTrainer) -> str | None:
    """The name the trainer's artifacts were exported under (the manifest's `model`, when it
    has `model_named`: `plume export --model NAME`), or None: an export without a name (its
    class name stands in) names nothing the task could be compared with."""
    manifest = getattr(trainer, "manifest", None)
    exported = getattr(manifest, "model", None)
    if getattr(manifest, "model_named", False) is True and isinstance(exported, str) and exported:
        return exported
    return None


def _shapes_shown(shapes: list[tuple[int, ...]]) -> str:
    """The first 4 shapes of a layout, and "..." only when there are more."""
    return f"{shapes[:4]}{'...' if len(shapes) > 4 else ''}"


def _check_layout(a: Assignment, trainer: LocalTrainer) -> None:
    """`LayoutMismatchError` (a `ValueError`, `status` 0) if the trainer's model (where it
    tells its layout) is not the task's."""
    task_layout = [tuple(t.shape) for t in a.spec]
    layout = _trainer_layout(trainer)
    if layout is not None and layout != task_layout:
        # Same size in another layout would load, train and upload a silently wrong update.
        raise LayoutMismatchError(
            0,
            MODEL_LAYOUT_MISMATCH,
            f"the trainer's model ({len(layout)} tensors, shapes {_shapes_shown(layout)}) does "
            f"not have the layout of task {a.task_id}'s model {a.model_name!r} "
            f"({len(task_layout)} tensors, shapes {_shapes_shown(task_layout)}): this device "
            f"cannot train this task (nothing downloaded or trained){_frozen_hint(trainer)}",
            a.task_id,
        )
    # Artifacts exported under a name (`plume export --model`) name the model they train; the
    # same layout with other layers (a Tanh where the task's model has a ReLU) would train a
    # silently wrong update. An export without a name (the class name stands in) is not
    # compared: nothing says what the task calls that model.
    exported = _exported_name(trainer)
    if exported is not None and a.model_name and exported != a.model_name:
        raise LayoutMismatchError(
            0,
            MODEL_LAYOUT_MISMATCH,
            f"the trainer's artifacts were exported from model {exported!r}, task "
            f"{a.task_id} trains model {a.model_name!r}: this device cannot train this task "
            f"(export it with `plume export --model {a.model_name}`)",
            a.task_id,
        )


def _takes_cancel(trainer: LocalTrainer) -> bool:
    """Whether `trainer.train` names a keyword `cancel` (`TorchTrainer`, `OrtTrainer`): one
    taking only `**kwargs` is not passed it, as it may not know what to do with it."""
    try:
        param = inspect.signature(trainer.train).parameters.get("cancel")
    except (TypeError, ValueError):
        return False
    return param is not None and param.kind in (param.KEYWORD_ONLY, param.POSITIONAL_OR_KEYWORD)


def _train(
    core: _Core,
    a: Assignment,
    params: npt.NDArray[np.float32],
    trainer: LocalTrainer,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    cancel: CancelFlag | None = None,
    digest: bytes | None = None,
) -> tuple[npt.NDArray[np.float32], int, float]:
    """Train the round `a` from `params`. With `cancel` set before, during (a trainer that
    takes it stops within one step) or right after the training: `ParticipationCancelled`
    ("training"), nothing trained kept. `digest`: `_buffer_digest(params)` if the caller has
    it (the download's, `_Core.apply_model_digest`), so the params are not hashed again."""
    _check_layout(a, trainer)
    rng = np.random.default_rng([a.seed, a.round_id, int(core.device_id[:12], 16), 1])
    settings: dict[str, Any] = {
        "epochs": a.training.local_epochs, "batch_size": a.training.batch_size,
        "lr": a.training.lr, "rng": rng,
    }  # fmt: skip
    if cancel is not None:
        if cancel.is_set():
            raise ParticipationCancelled("training", _UNTRAINED, a.round_id)
        if _takes_cancel(trainer):
            settings["cancel"] = cancel
    # The trainer gets a read-only view of the client's own array: the delta is computed
    # against it, so a trainer that updated it in place and returned it sent a zero update,
    # weighted by its examples, silently (LocalTrainer's rule: `params` is read only).
    given = params.view()
    given.flags.writeable = False
    before = _buffer_digest(params) if digest is None else digest
    try:
        res = trainer.train(given, x, y, **settings)
    except TrainingCancelled as exc:
        raise ParticipationCancelled("training", f"{exc}; {_UNTRAINED}", a.round_id) from exc
    except ValueError as exc:
        if type(exc) is ValueError and str(exc).endswith("is read-only"):  # numpy's words
            raise _wrote_params(trainer, x, y, f"it raised {exc!r}") from exc
        raise
    if _buffer_digest(params) != before:  # a write numpy's flag did not stop (torch.from_numpy)
        raise _wrote_params(trainer, x, y, "the array changed during its train call")
    if cancel is not None and cancel.is_set():  # a trainer that does not take `cancel`
        raise ParticipationCancelled("training", _UNTRAINED, a.round_id)
    return _trained_result(trainer, res, params, _examples(x))


def _trainer_name(trainer: object) -> str:
    """How messages name a trainer: its class's qualified name."""
    return f"trainer {type(trainer).__qualname__}"


def _buffer_digest(params: npt.NDArray[np.float32]) -> bytes:
    """SHA-256 of `params`' bytes as they are in memory (no copy for a contiguous array):
    whether a trainer wrote into them, whatever it wrote through."""
    return hashlib.sha256(np.ascontiguousarray(params).view(np.uint8).data).digest()


def _wrote_params(trainer: LocalTrainer, x: object, y: object, how: str) -> ValueError:
    """The error for a trainer that updated the `params` it was given in place (`how`)."""
    others = [
        name
        for name, v in (("x", x), ("y", y))
        if isinstance(v, np.ndarray) and not v.flags.writeable
    ]
    maybe = f" (or into {' and '.join(others)}, the app's own read-only data)" if others else ""
    return ValueError(
        f"{_trainer_name(trainer)} wrote into the params array it was given{maybe}: {how}. "
        "A LocalTrainer must not update `params` in place (sdk.Client passes a read-only view "
        "of the round's model and computes the update as trained - params, so an in-place "
        "update would be sent as zero): train a copy (params.copy()) and return it as "
        "TrainResult.params; nothing was encoded or sent"
    )


def _examples(x: object) -> int | None:
    """How many examples the app passed (`len(x)`), or None when `x` has no length."""
    try:
        return len(x)  # type: ignore[arg-type]
    except TypeError:
        return None


def _trained_result(
    trainer: LocalTrainer,
    res: object,
    params: npt.NDArray[np.float32],
    examples: int | None,
) -> tuple[npt.NDArray[Any], int, float]:
    """(trained params, num_examples, loss) of `trainer`'s result `res`, checked before the
    delta is computed: `TypeError` or `ValueError` naming the trainer for a result that is no
    `TrainResult`, params that are the client's own or not float[d], or a `num_examples` that
    is not an int from 1 to `examples` (the update's FedAvg weight)."""
    who = _trainer_name(trainer)
    try:
        trained, n, loss = res.params, res.num_examples, res.loss  # type: ignore[attr-defined]
    except AttributeError:
        raise TypeError(
            f"{who}.train returned {type(res).__qualname__}, not a "
            "sdk.TrainResult(params, num_examples, loss)"
        ) from None
    checked = _checked_trained(trained, params, f"{who} returned params")
    return checked, _checked_examples(n, examples, f"{who} returned num_examples"), loss


def _checked_trained(
    trained: object, params: npt.NDArray[np.float32], what: str
) -> npt.NDArray[Any]:
    """`trained` as an array of `params`' shape and a float32-castable dtype, not sharing
    memory with `params`: checked before `trained - params`, which would broadcast a column
    (d, 1) into a d x d array, or be zero for the same array."""
    d = params.size
    try:
        arr = np.asarray(trained)
    except (TypeError, ValueError, RuntimeError) as exc:  # a ragged list, a tensor needing grad
        raise TypeError(f"{what} that are not an array ({exc}): return float32[{d}]") from None
    if np.shares_memory(arr, params):
        raise ValueError(
            f"{what} that are (a view of) the params array it was given: the update would be "
            "zero. Return a new array (train a copy: params.copy())"
        )
    if arr.dtype.kind not in "fiu":
        raise TypeError(
            f"{what} of dtype {arr.dtype}: return float32[{d}], the trained flat parameters "
            "(a float array is cast to float32)"
        )
    if arr.shape != params.shape:
        raise ValueError(
            f"{what} of shape {arr.shape}; the task's model has {d} parameters: return them "
            f"as one flat float32[{d}] vector, in the order of the task's spec (not a column, "
            "a matrix or per-tensor arrays)"
        )
    return arr


def _checked_examples(n: object, examples: int | None, what: str) -> int:
    """`n` as an int from 1 to `examples` (no upper bound when None), else `TypeError` (not
    an int: a bool, a float) or `ValueError` naming `what`: the update's FedAvg weight."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(
            f"{what}={n!r} ({type(n).__name__}): it must be an int, the number of examples "
            "the update was trained on (its weight in the round's average)"
        )
    count = int(n)
    top = "" if examples is None else f" to {examples}, the examples passed in"
    if count < 1 or (examples is not None and count > examples):
        raise ValueError(
            f"{what}={count} (from {examples if examples is not None else 'the'} examples): "
            f"it must be from 1{top}; it is the update's weight in the round's average, so a "
            "larger one outweighs every other device and 0 drops the update while the device "
            "counts it as sent. A trainer with nothing to train on must raise, not return 0"
        )
    return count


@dataclass(frozen=True)
class _Sleep:
    """A step of a flow: wait this long (seconds) before the next request."""

    seconds: float


@dataclass(frozen=True)
class _Attempt:
    """A step of `_send_flow`: one attempt of a request, its whole answer (at most `cap`
    bytes) read within `budget` seconds, headers and body together."""

    request: httpx.Request
    cap: int
    budget: float


# A device's protocol written once for `Client` and `AsyncClient`: a generator that yields each
# `_Exchange` to send (every attempt, and each wait before a retry, ending by its `deadline`)
# and receives its response, or yields a `_Sleep` (and receives None), and returns the call's
# result. Whatever a request or a wait raises (`_WaitOver`, `_Stop`, a `ClientError`, ...) is
# raised in the flow where it waits, so its `except` and `finally` clauses see it as a method
# calling `_send` would. `Client._run` drives one with blocking I/O, `AsyncClient._run` awaits.
_Flow = Generator["_Exchange | _Attempt | _Sleep", "httpx.Response | None", _T]
_SecureFlow = _Flow[SecureRoundReport]


def _delta_update(
    core: _Core,
    a: Assignment,
    trainer: LocalTrainer,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    cancel: CancelFlag | None = None,
) -> Callable[[npt.NDArray[np.float32]], tuple[npt.NDArray[np.float32], int, float]]:
    """The secure flow's `update`: train on (x, y) from the round's params and return
    (delta float32[d], examples, loss)."""

    def update(params: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], int, float]:
        trained, n, loss = _train(core, a, params, trainer, x, y, cancel)
        return (trained - params).astype(np.float32), n, loss

    return update


def _not_started(
    core: _Core, a: Assignment, before: dict[str, int], encoding: str, detail: str
) -> SecureRoundReport:
    """The report of a secure round that ended for this device before its update was computed
    (`completed` False, `detail` saying why): no receipt, no examples, a NaN loss."""
    row = core.bandwidth.get(a.round_id, {})
    return SecureRoundReport(
        a.round_id, a.task_id, UploadReceipt(a.round_id, core.device_id, False, False, 0, 0),
        math.nan, 0, a.base_version, encoding, _delta(row, before, "down"),
        _delta(row, before, "up"), detail=detail,
    )  # fmt: skip


def _stage_download(
    core: _Core, round_id: int, stage: Stage, stop: float
) -> _Flow[httpx.Response | None]:
    """Poll the download that follows `stage` while it is open (425), until `stop` (`_tick`)
    at the latest: a secure flow's part (`yield from`). The last answer, or None when a poll
    (its retries and their backoff included) would have ended past `stop`."""
    while True:
        ex = core.stage_download_exchange(round_id, stage)
        ex.deadline = stop
        try:
            response = yield ex
        except _WaitOver:  # this poll (or its retries) would end past `stop`
            return None
        assert response is not None
        if response.status_code != 425:
            return response
        now = _tick()
        if not now < stop:
            return response
        # The answer's sub-second `retry_after_s` if it has one (Retry-After holds whole
        # seconds only), else its Retry-After. At least _MIN_POLL_S: a "Retry-After: 0" must
        # not make the device spin.
        hint = _poll_hint(response)
        wait = core.poll_delay(response) if hint is None else hint
        yield _Sleep(min(max(wait, _MIN_POLL_S), stop - now))


def _download_end(
    response: httpx.Response | None, stage: Stage, again: bool = False
) -> tuple[str, bool] | None:
    """Why a secure round ends for the device at the download after `stage` (`_stage_download`'s
    answer; `again`: the fetch of it again after a refused copy): (the report's `detail`,
    whether the round aborted); None for a 200, whose body is the download. Any other refusal
    is raised."""
    if again and (response is None or response.status_code == 425):
        # The stage had closed (its first copy was a 200 that did not decode or check).
        return (
            f"{stage}: a refused copy's re-fetch did not come back before the round deadline "
            "(or max_stage_wait_s)",
            False,
        )
    if response is None or response.status_code == 425:
        return f"{stage} did not close before the round deadline (or max_stage_wait_s)", False
    if response.status_code != 200:
        err = _refusal(response)
        if err.reason in (Reason.ROUND_CLOSED, Reason.NOT_SELECTED):
            aborted = response.status_code == 410 and err.reason == Reason.ROUND_CLOSED
            return f"after {stage}: {err.detail}", aborted
        raise err
    return None


# A secure round's setup or stage upload answered so ends the round for the device with a
# report, never an exception: the round closed (409 `round_closed`; 410 when its group aborted
# or the round's close cut it short) or a stage closed without it (403 `not_selected`).
_SECURE_ROUND_OVER = {409: Reason.ROUND_CLOSED, 410: Reason.ROUND_CLOSED, 403: Reason.NOT_SELECTED}


def _secure_flow(
    core: _Core,
    a: Assignment,
    update: UpdateFn,
    participant: SecureParticipant | None,
    rng: np.random.Generator | None,
    drop_at: Stage | None,
) -> _SecureFlow:
    """One device's secure round as a generator of requests, so that `Client` and
    `AsyncClient` share it: it yields each `_Exchange` to send (and receives the response) or a
    `_Sleep`, and returns the `SecureRoundReport`. See `Client.secure_round`."""
    if not a.secure:
        raise ValueError("not a secure assignment; use train_round")
    if participant is not None:
        _check_settled(participant)  # before any request: its input would overwrite the record
    spec = _spec(a)
    before = core.round_start(a)
    # The round's deadline on the clock `_send` bounds requests by (`_tick`): every request of
    # the round, the model download and the setup included, retries and their backoff too,
    # ends by it, or the round ends for this device, not completed. Before, a server answering
    # 5xx held a stage poll (and, until the download and setup were bounded too, those) for up
    # to retries x (max_response_s + backoff) past it. Read against the coordinator's clock at
    # the check-in that assigned the round where its answer showed it (`_Core.note_round`).
    round_end = core.round_end(a)
    encoding = ""
    try:
        snapshot = False  # a delta chain that fails is asked for again as a snapshot
        # fp32 whatever `model_dtype` says: the setup's digest binds the coordinator's exact
        # model, which an fp16 snapshot is not (the round would end in `ModelMismatch`).
        fp32 = True
        while True:
            ex = core.model_exchange(a.task_id, spec, a.round_id, a.base_version, snapshot, fp32)
            ex.deadline = round_end
            response = yield ex
            assert response is not None
            if response.status_code != 200:
                raise _refusal(response)
            try:
                params, _, encoding, _ = core.apply_model_digest(a.task_id, spec, response, ex=ex)
                break
            except ModelIntegrityError:
                if snapshot or not _chain_failed(response):
                    raise
                snapshot = True
        own = participant is None
        held = participant
        # A plan that does not decode or check (a body rewritten on the way, a digest that is
        # not the device's) is asked for again once, at once, as a corrupt delta chain is;
        # nothing was sent for it. Refused again: that `SecAggError` (`ModelMismatch`, ...).
        for attempt in (0, 1):
            ex = core.secure_setup_exchange(a.round_id)
            ex.deadline = round_end
            response = yield ex
            assert response is not None
            if response.status_code != 200:
                err = _refusal(response)
                if _SECURE_ROUND_OVER.get(response.status_code) == err.reason:
                    # The round is over for this device before it trained (closed, its group
                    # aborted, or advertise-keys closed without it): a report, as a stage
                    # upload so refused ends with, not an exception.
                    return _not_started(core, a, before, encoding, f"setup: {err.detail}")
                raise err
            try:
                digest = bytes.fromhex(response.headers[SecAggHeader.DIGEST])
            except (KeyError, ValueError) as exc:
                raise _bad(response, f"secure setup: digest {exc!r}") from exc
            node = _decimal(response.headers.get(SecAggHeader.NODE))
            if node is None:
                raise _bad(
                    response, f"secure setup: node {response.headers.get(SecAggHeader.NODE)!r}"
                )
            if held is None:
                held = core.secure_participant(spec.size, a.task_id, spec)
            try:
                session = held.join(response.content, digest, params, node)
                break
            except SecAggError:
                if attempt:
                    raise
    except _WaitOver:
        # Before any stage, nothing was trained and no residual taken: nothing to put back.
        what = "setup" if encoding else "model download"
        return _not_started(core, a, before, encoding, f"{what}: the round's deadline passed")
    part = session.participant
    delta, n, loss = update(params)
    # Before any stage: a non-finite update would be quantized to arbitrary levels (NaN cast
    # to an integer) and leave a NaN residual, as the plain path refuses it (`ValueError`).
    if np.shape(delta) != (spec.size,):
        raise ValueError(f"update of shape {np.shape(delta)}, model has {spec.size} scalars")
    if not np.all(np.isfinite(delta)):
        raise ValueError("update contains NaN or Inf")
    if rng is None:
        rng = np.random.default_rng([a.seed, a.round_id, int(core.device_id[:12], 16), 3])
    report = SecureRoundReport(
        a.round_id, a.task_id, UploadReceipt(a.round_id, core.device_id, False, False, 0, 0),
        loss, n, a.base_version, encoding, 0, 0,
    )  # fmt: skip
    # The residual as it was before the masked input: put back if the input was not sent
    # because saving it failed (own participant; the directory is then reread, see
    # `_reload_on_error`), or, for a caller's participant, if it was surely not taken.
    restore: npt.NDArray[np.float32] | None = None
    taken: SecureParticipant | None = None  # the holder `restore` was read from
    # Set when the coordinator answers 410 (the round aborted) after it took the masked input.
    aborted = False
    # Set once the app directory holds this round's residual and the record of the input;
    # `back` then takes that residual back to `restore` (exact in float64).
    kept = False
    back: npt.NDArray[np.float64] | None = None
    # The masked-input upload once it is sent: whether the coordinator may hold the input.
    masked: _Exchange | None = None
    try:
        down = b""
        # The stage whose download `down` is (None before the first), and when its polls end.
        after: Stage | None = None
        stop = round_end
        for stage in _SECURE_ORDER:
            if drop_at == stage:
                report.detail = f"dropped before {stage}"
                break
            body: bytes | None = None
            for again in (False, True):
                try:
                    if stage == Stage.ADVERTISE_KEYS:
                        body = session.advertise()
                    elif stage == Stage.SHARE_KEYS:
                        body = session.share_keys(down)
                    elif stage == Stage.MASKED_INPUT:
                        if own:
                            # The participant taken at setup may have left memory while the
                            # round waited (an AsyncClient's other rounds past MAX_RESIDUALS, a
                            # failed store step): a record of the task settled since then
                            # reached the app directory, not it, and an input computed from it
                            # (its residual saved over the directory's) would lose that
                            # content. The task's current holder (itself, or one read again
                            # from the directory) takes it.
                            part = core.secure_participant(spec.size, a.task_id, spec)
                            session.participant = part
                        if restore is None or part is not taken:
                            restore, taken = part.residual.copy(), part
                        else:
                            # The attempt after a refused share delivery, on the holder the
                            # refused one used: from the residual from before that attempt,
                            # whatever it changed before it was refused (nothing was sent or
                            # kept for it), so that the update enters once and `restore` stays
                            # the residual from before the round. (A holder read again from the
                            # app directory since then never held that attempt's change.)
                            part.residual = restore.copy()
                            part.forget_sent()
                        body = session.masked_input(down, delta, n, rng)
                        if own:
                            assert restore is not None
                            back = restore.astype(np.float64) - part.residual.astype(np.float64)
                            # Saved before it is sent: once the coordinator takes the input,
                            # the app directory must not hold the residual it carried (a
                            # process killed before a later save would send that content
                            # again).
                            if not core.keep_secure_input(
                                a.round_id, spec, part, a.task_id, a.return_refused is not False
                            ):
                                # Not sent: the `finally` puts the residual back to `restore`.
                                report.detail = f"{stage}: no record of the input could be kept"
                                body = None
                                break
                            kept = True
                    else:
                        body = session.unmask(down)
                    break
                except RoundAborted as exc:  # too few neighbours left: it cannot complete
                    report.detail = f"{stage}: {exc}"
                    break
                except SecAggError:
                    # The download this stage answers did not decode or check (a body
                    # rewritten on the way: a proxy, a bit error), before anything of the
                    # stage was sent or kept: fetched again once, at once, as a corrupt delta
                    # chain is (`_download_flow`). Refused again: that `SecAggError`.
                    if again or after is None:
                        raise
                got = yield from _stage_download(core, a.round_id, after, stop)
                end = _download_end(got, after, again=True)
                if end is not None:
                    report.detail, aborted = end
                    break
                assert got is not None
                down = bytes(got.content)
            if body is None:
                break
            ex = core.stage_upload_exchange(a.round_id, stage, body, spec.dense_bytes)
            ex.deadline = round_end
            if stage == Stage.MASKED_INPUT:
                masked = ex
            try:
                response = yield ex
            except _WaitOver:
                # The upload (its retries included) would have ended past the round's
                # deadline; the `finally` settles a kept record as for any input whose
                # answer is missing (returned at once if no attempt started).
                report.detail = f"{stage}: the round's deadline passed"
                break
            assert response is not None
            said = _SECURE_ROUND_OVER.get(response.status_code)
            if said is not None and _error(response).reason == said:
                # The round closed (409/410 round_closed), or the stage closed without this
                # upload (403 not_selected: the device is out of the round, whichever moment
                # closed the stage): its part ends with a report, never an exception.
                report.detail = f"{stage}: {_error(response).detail}"
                aborted = response.status_code == 410
                break
            receipt = _receipt(response, a.round_id)
            report.stages.append(str(stage))
            if stage == Stage.MASKED_INPUT:
                report.receipt = receipt
            if stage == Stage.UNMASK:
                report.completed = True
                break
            # Poll the download that follows the stage until it closes (425 while open), until
            # the round's deadline at the latest, and never longer than max_stage_wait_s
            # whatever deadline the coordinator named (`_tick`, as `round_end`). The
            # same bound for each poll's request, its retries and their backoff, and for a
            # download fetched again. A NaN stop ends the polling at once.
            stop = min(round_end, _tick() + core.max_stage_wait_s)
            got = yield from _stage_download(core, a.round_id, stage, stop)
            end = _download_end(got, stage)
            if end is not None:
                report.detail, aborted = end
                break
            assert got is not None
            down = bytes(got.content)
            after = stage
    finally:
        if kept:
            # The record settles what the input stood for: at once if the input was surely
            # not taken (never sent, refused by a 4xx, no attempt before it unanswered: the
            # residual is again the one from before the round, as before the save) or the
            # round aborted (it publishes nothing), else by a check-in's `round_outcome`: also
            # when the answer was lost (a read timeout, a 5xx, a 200 that is no receipt),
            # since the coordinator may hold the input and commit it (a process killed here
            # leaves the record to that too).
            if Stage.MASKED_INPUT in report.stages:
                if aborted:
                    core.return_secure_input(a.round_id)
            elif aborted or masked is None or not masked.maybe_taken:
                core.return_secure_input(a.round_id, back)
        elif not own:
            # A caller's participant (no record: the caller settles a masked input by the
            # round's outcome) is settled here as far as the round's end settles it. A task
            # with DP (`return_refused` false) drops the input instead, as the record would be:
            # the residual stays the one the input left.
            if Stage.MASKED_INPUT in report.stages:
                if aborted:
                    # An aborted round publishes nothing: what the masked input stood for
                    # goes back into the residual now (a 409 round_closed may still commit it).
                    if a.return_refused is False:
                        part.forget_sent()
                    else:
                        part.return_sent()
            elif masked is not None and (aborted or not masked.maybe_taken):
                # This round's input was surely not taken (a 410 at its upload, a 4xx, no
                # connection opened): the residual is the one from before it, as the app
                # directory's is then. It stayed unsettled, out of the residual.
                assert restore is not None
                if a.return_refused is not False:
                    part.residual = restore
                part.forget_sent()
        elif restore is not None:
            part.residual = restore
            part.forget_sent()  # computed, never taken
        row = core.bandwidth.get(a.round_id, {})
        report.bytes_down = _delta(row, before, "down")
        report.bytes_up = _delta(row, before, "up")
    return report


def _send_flow(
    core: _Core,
    base: str,
    http: httpx.Client | httpx.AsyncClient,
    ex: _Exchange,
    deadline: float,
    cancel: CancelFlag | None,
) -> _Flow[httpx.Response]:
    """`ex` sent, retrying transient failures: each `_Attempt` it yields is answered with the
    read response or raises in it (a transport failure, a `ClientError` of the client's caps).
    With a `deadline` (`_tick`), every attempt and wait before a retry ends by then, else
    `_WaitOver`; `_Stop` before an attempt once `cancel` is set, and for a failure while it is
    set (perhaps what cut the request). Run by `Client._send` and `AsyncClient._send`."""
    # The last attempt's transport failure, for a `_WaitOver` (`participate`).
    failed: CoordinatorUnreachable | None = None
    outer = sys.exc_info()[1]  # what the app was handling: not this request's cause
    for attempt in range(core.retries + 1):
        if cancel is not None and cancel.is_set():  # before `maybe_taken` is set
            raise _Stop
        budget = _attempt_budget(core, deadline, failed)
        request = core.build(http, ex)  # fresh timestamp and nonce per attempt
        # Until this attempt's end says otherwise (anything raised past this loop too).
        before, ex.maybe_taken = ex.maybe_taken, True
        ex.sent_at = _tick()
        try:
            response = yield _Attempt(request, ex.max_response_bytes, budget)
        except httpx.TransportError as exc:
            if isinstance(exc, _NEVER_SENT):
                ex.maybe_taken = before
            if cancel is not None and cancel.is_set():  # perhaps what cut the request
                raise _Stop from exc
            cert = certificate_failure(exc)
            if cert is not None:  # the same at every attempt: a setting, not an outage
                raise _certificate_error(base, request, cert) from exc
            if attempt == core.retries:
                raise _unreachable(base, request, exc, attempt + 1, outer) from exc
            failed = _failed(base, request, exc, attempt + 1, outer)
            yield _Sleep(_retry_pause(core.delay(attempt, None), deadline, failed))
            continue
        except ClientError as err:
            if _cut_by_wait(core, err, budget):
                raise _WaitOver(failed) from None
            raise
        assert response is not None
        core.account(request, response, ex)
        failed = None  # answered (a 5xx is an answer, not an outage)
        if 400 <= response.status_code < 500:  # refused before the coordinator stored it
            ex.maybe_taken = before
        if response.status_code in _RETRY_STATUS:
            if attempt < core.retries:
                yield _Sleep(_retry_pause(core.delay(attempt, response), deadline))
                continue
            response.extensions[_ATTEMPTS] = attempt + 1
        return response
    raise AssertionError("unreachable")


def _request(ex: _Exchange, deadline: float = math.inf) -> _Flow[httpx.Response]:
    """A flow's one request: `ex` sent, every attempt and retry ending by `deadline` (`_tick`),
    else `_WaitOver`; its response (after retries, a 5xx included)."""
    ex.deadline = deadline
    response = yield ex
    assert response is not None
    return response


def _register_flow(core: _Core, device_id: str) -> _Flow[str]:
    """`Client.register`."""
    core.store.check_registration(device_id)
    response = yield from _request(core.register_exchange())
    answer = _registered(response, device_id)
    incarnation = _incarnation(response, answer.incarnation, "registration answer")
    # Another database's incarnation sets aside the uploads with the rest; `created` alone
    # (the same incarnation or none) sets aside the uploads.
    coordinator = _coordinator(response)
    if not core.note_incarnation(incarnation, coordinator) and answer.created:
        core.set_aside_uploads(coordinator)
    core.store.update_state(device_id=device_id, registered=True)
    return device_id


def _check_in_flow(
    core: _Core,
    task_id: int | None,
    deadline: float,
    layouts: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
) -> _Flow[CheckInResponse]:
    """`Client.check_in`, every attempt ending by `deadline`."""
    ex = core.check_in_exchange(task_id, layouts, names)
    return _check_in_answer(core, ex, (yield from _request(ex, deadline)), task_id)


def _download_flow(
    core: _Core,
    task_id: int,
    spec: ModelSpec,
    round_id: int,
    max_version: int | None,
    deadline: float = math.inf,
    app_spec: bool = False,
) -> _Flow[tuple[npt.NDArray[np.float32], int, str]]:
    """`_download_digest_flow` without the digest: (params, version, encoding)."""
    params, version, encoding, _ = yield from _download_digest_flow(
        core, task_id, spec, round_id, max_version, deadline, app_spec
    )
    return params, version, encoding


def _download_digest_flow(
    core: _Core,
    task_id: int,
    spec: ModelSpec,
    round_id: int,
    max_version: int | None,
    deadline: float = math.inf,
    app_spec: bool = False,
) -> _Flow[tuple[npt.NDArray[np.float32], int, str, bytes]]:
    """The model, applied and saved (`_Core.apply_model_digest`, `app_spec` passed on), with
    the SHA-256 of its bytes in memory; a delta chain
    that fails its integrity check is asked for again once as a snapshot (`_chain_failed`), in
    the same call, so a round is not lost (and `fetch_current` does not fail for a chain). A
    snapshot that fails is `ModelIntegrityError`."""
    snapshot = False
    fp32 = False
    while True:
        ex = core.model_exchange(task_id, spec, round_id, max_version, snapshot, fp32, app_spec)
        response = yield from _request(ex, deadline)
        if not fp32 and _fp16_refused(ex, response):
            fp32 = True  # a model beyond fp16's range: asked again as fp32, once
            continue
        if response.status_code != 200:
            raise _refusal(response)
        try:
            return core.apply_model_digest(task_id, spec, response, app_spec, ex)
        except ModelIntegrityError:
            if snapshot or not _chain_failed(response):
                raise
            snapshot = True


def _upload_flow(
    core: _Core, pending: PendingUpload, spec: ModelSpec | None, deadline: float
) -> _Flow[UploadReceipt]:
    """`Client.upload`, every attempt ending by `deadline`."""
    dense = spec.dense_bytes if spec is not None else pending.dense_bytes
    response = yield from _request(core.upload_exchange(pending, dense), deadline)
    if response.status_code == 200:
        receipt = _receipt(response, pending.round_id)  # before it is forgotten
        core.accept_upload(pending, spec)
        return receipt
    err = _refusal(response)
    if _refused_for_good(response, err):
        core.settle_upload(pending, spec, refused=True)
    raise err


def _resume_pending_flow(core: _Core, deadline: float) -> _Flow[UploadReceipt | None]:
    """`Client.resume_pending`, every attempt ending by `deadline` (`_tick`), else
    `_WaitOver` with the upload still pending (its idempotency key makes the next re-send
    harmless if this one landed)."""
    pending = core.store.load_pending()
    if pending is None:
        return None
    try:
        return (yield from _upload_flow(core, pending, None, deadline))
    except (CoordinatorUnreachable, TlsCertificateError):
        raise  # not a refusal: the upload stays pending, as the app must hear
    except ClientError:
        return None


def _settle_pending_flow(core: _Core) -> _Flow[tuple[PendingUpload, UploadReceipt] | None]:
    """Re-send a pending upload before a new one replaces it; see `_unsettled`. The upload
    and its receipt when the coordinator accepted it; None when none was pending or it
    was refused (and settled)."""
    pending = core.store.load_pending()
    if pending is None:
        return None
    try:
        return pending, (yield from _upload_flow(core, pending, None, math.inf))
    except ClientError as err:
        _unsettled(core, pending, err)
        return None


def _train_round_flow(
    core: _Core,
    a: Assignment,
    trainer: LocalTrainer,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    cancel: CancelFlag | None,
) -> _Flow[RoundReport]:
    """`Client.train_round` of a plain assignment; `cancel`: the call's cancel event, which
    the training reads."""
    spec = _spec(a)
    # Before the download: a model this device cannot train must not replace the one held.
    _check_layout(a, trainer)
    r = a.round_id
    if core.delivered(a):
        raise _already_delivered(a)
    before = core.round_start(a)
    try:
        settled = yield from _settle_pending_flow(core)
    except _Stop:
        raise ParticipationCancelled("resend", _EARLIER_PENDING, r) from None
    if settled is not None and _same_round(settled[0], a):
        return _resent_report(core, a, settled[1], before)
    end = core.plain_round_end(a)
    try:
        params, _, encoding, digest = yield from _download_digest_flow(
            core, a.task_id, spec, a.round_id, a.base_version, end
        )
    except _WaitOver:
        raise _past_deadline(a, "model download", "nothing was trained") from None
    except _Stop:
        raise ParticipationCancelled("download", _UNTRAINED, r) from None
    # Checked before, during and after the training: not once the update is encoded. (An
    # `AsyncClient` trains on the event loop's thread: only the cancel event stops it.)
    trained, n, loss = _train(core, a, params, trainer, x, y, cancel, digest)
    pending = core.encode(a, spec, params, trained, n, loss)
    try:
        receipt = yield from _upload_flow(core, pending, spec, end)
    except _WaitOver:
        raise _past_deadline(a, "upload", "it stays pending") from None
    except _Stop:
        raise ParticipationCancelled("upload", _STAYS_PENDING, r) from None
    row = core.bandwidth.get(a.round_id, {})
    return RoundReport(
        a.round_id, a.task_id, receipt, loss, n, a.base_version, encoding,
        _delta(row, before, "down"), _delta(row, before, "up"),
    )  # fmt: skip


def _secure_round_flow(
    core: _Core,
    a: Assignment,
    update: UpdateFn,
    participant: SecureParticipant | None = None,
    rng: np.random.Generator | None = None,
    drop_at: Stage | None = None,
) -> _SecureFlow:
    """`Client.secure_round`: `_secure_flow`, a cancel seen before a request or during a wait
    ending it where it waits (its `finally` settles the residual as for any request that
    raised) as `ParticipationCancelled` ("secure")."""
    try:
        return (yield from _secure_flow(core, a, update, participant, rng, drop_at))
    except _Stop:
        raise ParticipationCancelled("secure", _SECURE_DROPPED, a.round_id) from None


def _run_secure_round_flow(
    core: _Core,
    a: Assignment,
    trainer: LocalTrainer,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    cancel: CancelFlag | None,
) -> _SecureFlow:
    """`Client.run_secure_round`; `cancel` as for `_train_round_flow`."""
    _check_layout(a, trainer)
    update = _delta_update(core, a, trainer, x, y, cancel)
    return (yield from _secure_round_flow(core, a, update))


def _participate_flow(
    core: _Core,
    trainer: LocalTrainer,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    task_id: int | None,
    max_wait_s: float,
    min_poll_s: float,
    cancel: CancelFlag | None,
) -> _Flow[RoundReport | None]:
    """`Client.participate`, its arguments checked."""
    give_up = _tick() + max_wait_s
    # This call's answers only: a None return never comes with an earlier call's answer.
    core.last_check_in = None
    try:
        yield from _resume_pending_flow(core, give_up)
    except _WaitOver as over:
        _raise_outage(over)
        return None
    except _Stop:
        raise ParticipationCancelled("resend", _EARLIER_PENDING, None) from None
    mine: CheckInResponse | None = None  # this call's last answer
    layouts, names = _declared_layouts(trainer), _declared_names(trainer)
    while True:
        try:
            answer = yield from _check_in_flow(core, task_id, give_up, layouts, names)
        except _WaitOver as over:
            if mine is None:
                _raise_outage(over)
            core.last_check_in = mine
            return None
        except _Stop:
            raise ParticipationCancelled("check-in", "nothing changed", None) from None
        a = answer.assignment
        if answer.action == CheckInAction.TRAIN and a is not None:
            if a.secure:
                return (yield from _run_secure_round_flow(core, a, trainer, x, y, cancel))
            return (yield from _train_round_flow(core, a, trainer, x, y, cancel))
        mine = answer
        wait = _next_wait(answer, task_id, min_poll_s)
        if _tick() + wait > give_up:
            core.last_check_in = mine
            return None
        try:
            yield _Sleep(wait)
        except _Stop:
            raise ParticipationCancelled("wait", "nothing changed", None) from None


class _ClientBase:
    """What `Client` and `AsyncClient` share beyond the flows: the device's state (`_Core`)
    and the calls that need no I/O."""

    _core: _Core

    @property
    def device_id(self) -> str:
        """This device's id (hex), derived from its key in `app_dir`; the same after a restart."""
        return self._core.device_id

    @property
    def bandwidth(self) -> dict[int, dict[str, dict[str, int]]]:
        """Bytes this client moved per round and direction, as the coordinator counts them:
        `{round_id: {"up" | "down": {"payload_bytes", "wire_bytes", "dense_bytes",
        "requests"}}}`, for the `MAX_BANDWIDTH_ROUNDS` (64) rounds counted last (the least
        recently counted round is dropped past that). Exchanges the coordinator counts in no
        round are in `control_bandwidth` instead."""
        return self._core.bandwidth

    @property
    def control_bandwidth(self) -> dict[str, dict[str, int]]:
        """Bytes this client moved, since it was made, in the exchanges the coordinator counts
        in no round (its control traffic): `{"up" | "down": {"payload_bytes", "wire_bytes",
        "dense_bytes", "requests"}}`. Its `wire_bytes` and `requests` are counted as
        `bandwidth` counts a round's: every answered attempt; HTTP/1.1 request and response
        heads and bodies, not TLS; a request body by the bytes handed to the socket, so an
        upload answered before it was all sent (503 `busy`, 413) counts the pieces written, not
        the whole body. Its `up` `payload_bytes` and `dense_bytes` are always 0: an upload
        answered here delivered nothing to a round (a round's row counts them). That is
        registration, check-ins answered without an assignment ("wait", "end", refusals; a
        check-in answered with one is in its round's row), a `fetch_current` download, and
        requests answered outside a round's ledger (a re-sent upload past its round's grace,
        a 5xx from a proxy). The same size for the client's life. Each exchange is in exactly
        one of `bandwidth` and `control_bandwidth`, so the two add up to every answered byte
        (docs/devices.md, "The device's network traffic")."""
        return self._core.control_bandwidth

    @property
    def last_check_in(self) -> CheckInResponse | None:
        """The coordinator's last check-in answer this client acted on (None before one).
        `participate` resets it when it starts, so it is always that call's last answer, never
        an earlier call's. When `participate` returns None its `detail` says why: "not selected
        yet" (a round still gathering), "no active task" (no task named and none running, or
        the task named is paused or awaits its model), ...; None itself when no check-in of the
        call was answered usably (the coordinator said 5xx or 429 for the whole wait, or nothing
        came in time, a connection not made in time included; a failed connection is
        `CoordinatorUnreachable`, not None). After a
        `TaskEndedError` on an "end" answer, it is that answer."""
        return self._core.last_check_in

    def encode_update(
        self,
        a: Assignment,
        params: npt.NDArray[np.float32],
        trained: npt.NDArray[np.float32],
        num_examples: int,
        *,
        loss: float = math.nan,
    ) -> PendingUpload:
        """Encode `trained - params` with error feedback and persist it as pending (send it
        with `upload`). Unlike `train_round`, an earlier unacknowledged upload is not settled
        first: the new one replaces it in the app directory (docs/devices.md).

        `trained` must be a float array of `params`' shape that is not `params` (nor a view of
        it: the update would be zero), and `num_examples` (the update's weight in the round's
        average) an int >= 1; else `TypeError` or `ValueError` before anything is encoded.

        `loss`: the training's mean loss, sent with the upload when `a.report_loss` asks for
        it (a plain task without DP) and it is a finite number in [0, 1e6]; NaN (the default)
        sends none. Kept with the pending upload (`PendingUpload.train_loss`, saved in the
        app directory): every attempt sends the same, and so does a re-send after the app
        restarts (`resume_pending`)."""
        return self._core.encode(a, _spec(a), params, trained, num_examples, loss)


class Client(_ClientBase):
    """Synchronous coordinator client.

    >>> client = Client("http://127.0.0.1:8080", app_dir="~/.myapp/plume")  # doctest: +SKIP
    >>> client.register(); report = client.participate(trainer, x, y)       # doctest: +SKIP

    Arguments (docs/http-api.md has the full contract):

    - `base_url`: the coordinator, `http://` or `https://` with a host (`ValueError` else).
    - `app_dir`: the device's own directory, a str or an `os.PathLike` (`~` expanded; made
      0700 if missing; "" is a `ValueError`, not the current directory): its
      Ed25519 key, the models held (one per task, at most 8), error-feedback residuals and
      any unacknowledged upload, so a restarted app resumes where it stopped. Give each
      device (app install) its own. The key is made once: a directory whose state.json names
      a registered device whose key is gone (missing, unreadable, or another device's)
      raises `sdk.device_store.DeviceIdentityLost` (a `DeviceStoreError`) here, nothing sent
      (docs/devices.md, "The device's identity").
    - `transport`: an `httpx.BaseTransport` instead of the network (tests, simulation).
      `transport`, `mods`, `clock` and `sleep` of another type, and a `backoff_s`,
      `max_stage_wait_s` or `max_response_s` that is no number, are a `TypeError` at
      construction, before the app directory is made.
    - `timeout`: seconds for each connect, read and write of a request (httpx's timeout); a
      finite number > 0, else `ValueError` (`TypeError` for a non-number) at construction.
    - `retries`: further attempts after a transport error (no connection, a timeout, a
      connection lost), a 429 or a 5xx (so 5 attempts by default); the last one's outcome
      is raised: a 429 or 5xx as its `ClientError`, `detail` ending "(after N attempts)".
      No connection (or one lost) on the last attempt is `CoordinatorUnreachable`
      (a `ClientError` and an `httpx.TransportError`), naming the coordinator and the attempts.
      A TLS certificate that fails verification is not retried: `TlsCertificateError` (a
      `ClientError`, reason `tls_certificate`) at the first attempt.
    - `backoff_s`: the first wait before a retry, doubling each attempt up to
      `MAX_BACKOFF_S` (60 s) per wait, each wait drawn between half of that and all of it;
      a `Retry-After` (capped at 30 s; seconds, or an HTTP-date read against the answer's
      `Date`) takes its place, waited up to 20 % longer (`RETRY_AFTER_SPREAD`), never less.
    - `retry_rng`: the `random.Random` those waits are drawn from (default: one seeded from
      `os.urandom`, so that devices do not retry in step); give a seeded one for tests or a
      reproducible simulation. Not a `random.Random`: `TypeError` at construction.
    - `verify`: TLS verification: `True` (httpx's default: the `certifi` bundle, or
      `SSL_CERT_FILE`/`SSL_CERT_DIR` when set; not the system store), `False` (none: for
      tests only), an `ssl.SSLContext`, or the path of the coordinator's CA bundle (a PEM
      file, or a directory of hashed certificates), read into a context at construction: a
      path that is empty, missing, unreadable or holds no certificate is a `ValueError`
      naming it.
    - `mods`: client middleware, `mod(request, next) -> response`, outermost first.
    - `clock`: the device's wall clock, seconds since the epoch: request signatures, and a
      round's deadline when the coordinator's answer carries no usable `Date`.
    - `sleep`: how the client waits (between check-ins, before a retry). A call given a
      `cancel` event waits on the event instead while `sleep` is the default `time.sleep`, so
      that setting it ends the wait at once; with another `sleep`, when that returns.
    - `max_stage_wait_s`: the longest a secure round polls one stage (default one day).
    - `max_response_s`: the longest one response may take to arrive whole, headers and body
      (default 600 s); a slower one is abandoned (`ClientError` `too_slow`).
    - `max_model_bytes`: the largest model the client downloads, 4 bytes a parameter as the
      task's spec declares it (default `MAX_MODEL_BYTES`, 256 MiB); a larger one is refused
      before any request or allocation for it (`ModelTooLargeError`). Every check-in tells the
      coordinator, which then assigns no task whose model is larger (docs/devices.md). An
      integer >= 4, else `ValueError` at construction.
    - `model_dtype`: the values of a model snapshot the client asks for: "fp32" (default:
      the coordinator's model exactly) or "fp16" (about half the bytes; not the coordinator's
      model, so the next download is a snapshot again, never a delta chain from it; a model
      beyond fp16's range is asked for again as fp32, in the same call; a secure round's
      download is always fp32, its setup binding the exact model). Anything else:
      `ValueError` at construction (docs/devices.md).

    Threads: one call at a time. Calls may come from different threads one after another
    (each thread's deadline and cancel event are its own, `_Deadline`), but two calls running
    at once on one client (two threads, or an app and its worker sharing it) are not supported:
    the device's state (the pending upload, the error-feedback residual, the model held, the
    per-round `bandwidth`) is read and written with no lock, so both could spend the same
    residual or overwrite each other's pending upload. Serialise calls with a lock of the app's.
    Setting a call's `cancel` event from another thread is supported, and is how to stop it;
    `close()` from another thread while a call runs is not (docs/devices.md).
    """

    def __init__(
        self,
        base_url: str,
        app_dir: str | os.PathLike[str],
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
        retries: int = 4,
        backoff_s: float = 0.2,
        verify: bool | str | os.PathLike[str] | ssl.SSLContext = True,
        mods: tuple[Mod, ...] = (),
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        max_stage_wait_s: float = MAX_STAGE_WAIT_S,
        max_response_s: float = MAX_RESPONSE_S,
        max_model_bytes: int = MAX_MODEL_BYTES,
        retry_rng: random.Random | None = None,
        model_dtype: str = "fp32",
    ) -> None:
        self._base = _check_base_url(base_url)  # before the app directory is made
        _check_timeout(timeout)  # so too, and the rest (`_Core` checks its own first)
        _check_transport(transport, httpx.BaseTransport)
        mods = _check_mods(mods, "mod(request, next) -> response")
        _check_callable("sleep", sleep, "how the client waits, sleep(seconds) (time.sleep)")
        tls_verify = _tls_verify(verify)
        self._core = _Core(
            app_dir, retries=retries, backoff_s=backoff_s, clock=clock,
            max_stage_wait_s=max_stage_wait_s, max_response_s=max_response_s,
            max_model_bytes=max_model_bytes, rng=retry_rng, model_dtype=model_dtype,
        )  # fmt: skip
        try:
            self._http = httpx.Client(
                base_url=base_url, transport=transport, timeout=timeout, verify=tls_verify,
                headers=_ACCEPT_IDENTITY,
            )  # fmt: skip
        except BaseException:
            self._core.store.close()  # its claim and lock: this client never was
            raise
        # The response being received must be whole by this thread's deadline, headers
        # included, on the sockets of httpx's own transports, an injected `httpx.HTTPTransport`
        # included; any other injected `transport=` is bounded between body chunks only
        # (`_read_capped`): its headers arrive when that transport returns.
        self._deadline = _Deadline()
        if transport is None:
            _bound_sockets(self._http, self._deadline)
        elif isinstance(transport, httpx.HTTPTransport):
            self._deadline = _bound_transport(transport, self._deadline)
        self._mods = mods
        self._sleep = sleep

    def close(self) -> None:
        """Close the HTTP connections and release the app directory's lock (another process
        may then use `app_dir`); the client cannot be used after."""
        try:
            self._http.close()
        finally:
            self._core.store.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _dispatch(self, request: httpx.Request, cap: int, budget: float) -> httpx.Response:
        def last(r: httpx.Request) -> httpx.Response:
            # Headers and body together, `budget` seconds from now (as `AsyncClient`).
            deadline = _tick() + budget
            self._deadline.at, self._deadline.budget_s = deadline, budget
            try:
                return _read_capped(
                    self._http.send(r, stream=True), cap, deadline, budget, self._deadline.cancel
                )
            finally:
                self._deadline.at = math.inf

        def call(i: int) -> Send:
            if i == len(self._mods):
                return last
            return lambda r: self._mods[i](r, call(i + 1))

        return call(0)(request)

    def _send(self, ex: _Exchange, deadline: float = math.inf) -> httpx.Response:
        """Send `ex`, retrying transient failures (`_send_flow`)."""
        flow = _send_flow(self._core, self._base, self._http, ex, deadline, self._deadline.cancel)
        return self._run(flow)

    def _run(self, flow: _Flow[_T]) -> _T:
        """Run `flow` (see `_Flow`) to its result: send each exchange it yields, pause when
        it asks, and raise what either raises in it where it waits. A flow left early (an
        error it did not catch) is closed before this returns, so its `finally` runs now
        (a secure round's settles the residual), not at collection."""
        try:
            step = next(flow)
            while True:
                got: httpx.Response | None = None
                try:
                    if isinstance(step, _Sleep):
                        self._pause(step.seconds)
                    elif isinstance(step, _Attempt):
                        got = self._dispatch(step.request, step.cap, step.budget)
                        got.read()
                    else:
                        got = self._send(step, step.deadline)
                except BaseException as exc:
                    step = flow.throw(exc)
                else:
                    step = flow.send(got)
        except StopIteration as done:
            result: _T = done.value
            return result
        finally:
            flow.close()

    def _pause(self, seconds: float) -> None:
        """Wait `seconds` (between check-ins, before a retry, between secure-stage polls); `_Stop`
        once the thread's cancel event is set, at once when it is set during the wait if the
        client waits with the default `sleep` (`time.sleep`: the wait is then the event's
        `wait`), else when the app's `sleep` returns."""
        cancel = self._deadline.cancel
        if cancel is None:
            self._sleep(seconds)
            return
        if self._sleep is time.sleep and isinstance(cancel, threading.Event):
            cancel.wait(seconds)
        else:
            self._sleep(seconds)
        if cancel.is_set():
            raise _Stop

    @contextlib.contextmanager
    def _cancel_scope(self, cancel: threading.Event | None) -> Iterator[None]:
        """Make `cancel` the event this thread's requests and waits read (`_Stop`), for the
        call; an outer call's stays when `cancel` is None."""
        outer = self._deadline.cancel
        if cancel is not None:
            self._deadline.cancel = cancel
        try:
            yield
        finally:
            self._deadline.cancel = outer

    def register(self) -> str:
        """Register this device's key (idempotent); returns the device id.
        `sdk.device_store.DeviceIdentityLost`, with nothing sent, if the app directory names
        another device or its key file is no longer this client's (see `Client`).

        An answer naming another database incarnation than the app directory's (a new, reset
        or restored database: its round and task ids are handed out again) has the pending
        upload and the records of accepted uploads set aside (forgotten as delivered), and every
        task's residual and held model dropped, with one warning on the "plume.sdk" logger
        naming them (`_Core.note_incarnation`; check-in answers too). Without an incarnation (a
        coordinator before the field), a coordinator that registers the device anew (`created`
        true) holds none of its uploads: the pending upload and the records are set aside the
        same way, with a warning (`_Core.set_aside_uploads`)."""
        return self._run(_register_flow(self._core, self.device_id))

    def check_in(self, task_id: int | None = None) -> CheckInResponse:
        """One check-in: "train" with an assignment, "wait" `retry_after_s` seconds, or "end"
        (the task named is done or stopped; returned, not raised). A task named that this
        coordinator refuses or does not know is its `ClientError` (409 `task_refused`, 404
        `unknown_task`); one that needs a feature this SDK does not honour is
        `SdkUnsupportedError` (409 `sdk_unsupported`: update the SDK); one whose model is over
        this client's `max_model_bytes` is `ModelTooLargeError` (409 `model_too_large`). An
        answer a device
        cannot act on (see
        `protocol.messages.check_check_in`, or an assignment for another task than `task_id`)
        is a `ClientError` `bad_response`; such an answer, if it parses as a check-in answer,
        still settles its `round_outcome`. `task_id`: None or an int in [1, 2^63) (not a bool,
        a float or a str: `TypeError`; out of range: `ValueError`; before any request)."""
        task_id = _check_optional_task_id(task_id)
        return self._run(_check_in_flow(self._core, task_id, math.inf))

    def fetch_model(self, a: Assignment) -> tuple[npt.NDArray[np.float32], str]:
        """The round's base model (delta chain from the held version, or a snapshot)."""
        flow = _download_flow(self._core, a.task_id, _spec(a), a.round_id, a.base_version)
        params, _, encoding = self._run(flow)
        return params, encoding

    def fetch_current(
        self, task_id: int, spec: ModelSpec
    ) -> tuple[npt.NDArray[np.float32], int, str]:
        """The task's latest model outside any round (e.g. to evaluate or serve it):
        (params float32[d], version, encoding). `spec` must be the task's own layout: its
        tensor names and shapes, in order, as the task was created (a model-zoo task's names
        start with "net."); another one is `LayoutMismatchError` (`status` 0), told from the
        model's headers before anything is decoded, with the model held for the task kept.
        As a round's download, a delta chain that fails its integrity check is asked for again
        once as a snapshot in the same call; a snapshot that fails is `ModelIntegrityError`
        (the held model forgotten). `task_id` must be an int in [1, 2^63) (`TypeError`, or
        `ValueError`, before any request)."""
        task_id = _check_task_id(task_id)
        _check_spec(spec)
        return self._run(_download_flow(self._core, task_id, spec, 0, None, app_spec=True))

    def upload(self, pending: PendingUpload, spec: ModelSpec | None = None) -> UploadReceipt:
        """Send a pending upload; idempotent across retries and restarts."""
        return self._run(_upload_flow(self._core, pending, spec, math.inf))

    def resume_pending(self) -> UploadReceipt | None:
        """Re-send an upload a previous run encoded but never saw acknowledged."""
        return self._run(_resume_pending_flow(self._core, math.inf))

    def train_round(
        self,
        a: Assignment,
        trainer: LocalTrainer,
        x: npt.NDArray[np.float32],
        y: npt.NDArray[np.int64],
        *,
        cancel: threading.Event | None = None,
    ) -> RoundReport:
        """Download, train locally, encode with error feedback, upload.

        An upload an earlier call left unacknowledged (offline) is settled first: its content
        must reach the coordinator or go back into the residual before a new one replaces it.
        While its fate is unknown (its re-send fails with a 5xx, a bad answer, ...), this
        raises that `ClientError` and trains nothing; once its round closes, the coordinator's
        `round_closed` settles it. One of `a`'s own round that is accepted now is the round's
        update: nothing is downloaded or trained, and the report says so (`resent`).

        A round whose update the coordinator holds already (this client's upload to it was
        accepted after the check-in that assigned it, or, for an assignment kept across a
        restart, the app directory holds the round's accepted record: `_Core.delivered`) is
        refused before any request, with nothing trained and the residual untouched:
        `ClientError` `status` 0, `reason` `duplicate_upload`, `detail` naming the round and
        task. Training it again would only have the upload refused (409 `duplicate_upload`)
        and that second update's content put into the residual.

        When the check-in that carried `a` showed the coordinator's clock (a usable `Date`,
        `_Core.note_round`), the model download and the upload, retries and backoff included,
        end by the round's deadline plus `ROUND_DEADLINE_SLACK_S` (5 s), else `ClientError`
        `deadline_passed` (an upload cut so stays pending): the coordinator refuses a new
        upload past its deadline. By the device's clock alone they are not bounded.

        `cancel`: see `participate`; set, it ends the call with `ParticipationCancelled`.
        """
        if a.secure:
            raise ValueError("a secure assignment: use run_secure_round or secure_round")
        with self._cancel_scope(cancel):
            return self._run(_train_round_flow(self._core, a, trainer, x, y, self._deadline.cancel))

    def secure_round(
        self,
        a: Assignment,
        update: UpdateFn,
        *,
        participant: SecureParticipant | None = None,
        rng: np.random.Generator | None = None,
        drop_at: Stage | None = None,
        cancel: threading.Event | None = None,
    ) -> SecureRoundReport:
        """Take part in the secure round `a` (an assignment with `secure` set).

        Downloads the model (digest-verified), then the plan, checks the (model, plan) digest
        (`protocol.secagg.ModelMismatch` if the coordinator's differs), computes `update`, and
        runs the four SecAgg+ stages, each a signed request counted in the round's ledger.
        The masked input carries delta + the device's residual; the new residual (what was not
        sent) is saved in the app directory unless a `participant` is given (a simulator holds
        its own). `drop_at` makes the device go silent before that stage (simulated dropout).
        A round that ends early for this device (stage deadline or `max_stage_wait_s` of
        polling, abort, too few neighbours left) returns a report with `completed` False and
        the reason in `detail`: every request of the round (the model download, the setup,
        each stage upload and poll), its retries and their backoff included, ends by the
        round's deadline (a poll also by `max_stage_wait_s`), else the round ends there (one
        ended at the download or setup, `detail` "model download: ..." or "setup: ...", trained
        nothing: `num_examples` 0, `loss` NaN, the residual untouched). The deadline is read against the coordinator's clock as the `Date` of
        the check-in answer that carried `a` showed it (`_Core.note_round`), so a device clock
        minutes off moves it by at most the header's 1 s and that check-in's round trip; by the
        device's clock only without a usable header or for an assignment this client did not
        receive. A setup refused as the end of the round for this device (403 `not_selected`:
        advertise-keys closed without it; 409 or 410 `round_closed`: the round closed or its
        group aborted) also ends it so, `detail` "setup: " and the coordinator's detail,
        untrained. Other refusals raise `ClientError`, and stage bytes the protocol
        refuses raise `protocol.secagg.SecAggError`: a plan or stage download refused is
        fetched again once, at once (a body rewritten on the way), and this is raised when
        that copy is refused too. The residual the masked input leaves is
        saved before the input is sent, with a record of what the input stands for. If the
        input was surely not taken (no connection opened, or a 4xx refusal with no earlier
        attempt unanswered), the residual is again the one from before the round; if the round
        aborts, what the input stood for goes back into it; else a later check-in settles the
        record (`round_outcome`): also when the input's answer was lost (a read timeout, a 5xx,
        a 200 that is no receipt), as the coordinator may hold it, and after a process killed.
        An assignment with `return_refused` false (a task with distributed DP) drops the input
        in all of these cases instead, as if taken: the residual stays the one it left.
        A given `participant` is settled the same way, except that an input the coordinator may
        hold stays in `participant.unsettled` for the caller to settle by the round's outcome
        (`forget_sent` / `return_sent`; `forget_sent` alone when `a.return_refused` is false);
        one still unsettled is a `ValueError` before any request, as the next input would
        overwrite it.

        `cancel` (see `participate`) is read before each request and during each wait between
        stage polls: once set, the device drops out of the round there, settled as above (as
        `drop_at` would), and `ParticipationCancelled` ("secure") is raised; `update` is not
        interrupted (`run_secure_round`'s training is, within one step: "training").
        """
        with self._cancel_scope(cancel):
            return self._run(_secure_round_flow(self._core, a, update, participant, rng, drop_at))

    def run_secure_round(
        self,
        a: Assignment,
        trainer: LocalTrainer,
        x: npt.NDArray[np.float32],
        y: npt.NDArray[np.int64],
        *,
        cancel: threading.Event | None = None,
    ) -> SecureRoundReport:
        """Download, train locally, and send the update through the secure round `a`;
        `cancel` as in `secure_round` (the training stops within one step)."""
        with self._cancel_scope(cancel):
            cancelled = self._deadline.cancel
            return self._run(_run_secure_round_flow(self._core, a, trainer, x, y, cancelled))

    def participate(
        self,
        trainer: LocalTrainer,
        x: npt.NDArray[np.float32],
        y: npt.NDArray[np.int64],
        *,
        task_id: int | None = None,
        max_wait_s: float = 600.0,
        min_poll_s: float = _MIN_POLL_S,
        cancel: threading.Event | None = None,
    ) -> RoundReport | None:
        """Check in until assigned (sleeping as told), then train one round; None on timeout
        (`last_check_in`, this call's last answer, says why);
        `TaskEndedError` at once when the task named runs no more rounds (done or stopped),
        `SdkUnsupportedError` when it needs a feature this SDK does not honour, and
        `ModelTooLargeError` when its model is over `max_model_bytes`, with no further
        check-in. Naming no task, the coordinator gives the device no task whose model is over
        `max_model_bytes` (each check-in tells it the limit). A trainer that declares its model
        (an `OrtTrainer`, through its `spec`: `_declared_layouts`) has each check-in tell the
        coordinator its layout (`model_layouts`), which then gives it no task of another model,
        and refuses a check-in naming one: `LayoutMismatchError` (`status` 409). A round of
        another model assigned all the same (a coordinator before the field, or a trainer that
        declares nothing) is `LayoutMismatchError` (`status` 0) before its download.

        `task_id` (None: any task the coordinator gives) must be an int in [1, 2^63), not a
        bool, a float or a str (`TypeError`, `ValueError` out of range), and `max_wait_s`
        seconds >= 0 (`ValueError` for a negative one), checked before any request.

        `max_wait_s` bounds the re-send of an upload an earlier run left pending (which comes
        first), the check-ins, their retries and the waits between them: a wait, a backoff or a
        request that would end past it is not started, or abandoned, and None is returned (an
        abandoned re-send stays pending); but when no check-in of the call was answered and
        the last attempt failed on the network (refused, unreachable, lost), the wait ending
        early is an outage: `CoordinatorUnreachable`, naming the attempts made, whatever
        `max_wait_s`. Training and uploading after the assignment are not counted in it.

        The trainer gets a read-only view of the round's model, and what it returns is checked
        before the update is computed: trained params of the model's shape that are not that
        array, `num_examples` an int from 1 to ``len(x)`` (see `sdk.LocalTrainer`); else a
        `TypeError` or `ValueError` naming the trainer, nothing encoded or sent.

        A secure task's round runs through `run_secure_round` (a `SecureRoundReport`). Data
        the trainer refuses (`sdk.trainer.TrainingDataError`, from a trainer with `check_data`)
        is refused before the check-in, so the device never takes a slot it cannot fill.
        `min_poll_s` is the app's floor on the time between two check-ins: while a round
        gathers the coordinator says "wait" for its `--poll` (0.25 s by default), four signed
        requests a second; `min_poll_s=5.0` makes it one every 5 s (a longer wait the
        coordinator asks for still wins). The default, 0.05 s, only stops a "wait 0" spin;
        above a week (`MAX_RETRY_AFTER_S`) it is refused.

        `cancel` is for an app whose OS stops its background work (Android's `onStopJob`, an
        iOS task's expiration handler): set the event from any thread and the call raises
        `ParticipationCancelled` (a `ClientError`, `reason` "cancelled"; `phase` says where),
        leaving the app directory consistent. It is read before every request and retry, and
        a wait between check-ins or before a retry ends as soon as it is set (with the default
        `sleep`); a trainer that takes `cancel` (`TorchTrainer`, `OrtTrainer`) stops within
        one minibatch step, any other is checked when it returns. A request on the client's own
        sockets stops within about 50 ms, wherever it is (host lookup, connect, TLS handshake,
        sending, waiting for or reading its answer: `_DeadlineStream`, `_until_cancelled`);
        through another injected transport, when that returns. Giving `cancel` changes no
        timeout, and a request that fails while it is set ends the call with
        `ParticipationCancelled`. Set before the update is encoded, the residual is
        as before the round; set later, the upload stays pending and the next `participate`
        re-sends it. An upload answered before the cancel is seen is a round done: the
        `RoundReport` is returned (docs/devices.md, "Stopping when the OS says so")."""
        task_id = _check_optional_task_id(task_id)
        _check_wait(max_wait_s, min_poll_s)
        _check_trainer(trainer)
        _check_data(trainer, x, y)
        with self._cancel_scope(cancel):
            flow = _participate_flow(
                self._core, trainer, x, y, task_id, max_wait_s, min_poll_s, self._deadline.cancel
            )
            return self._run(flow)


def _check_task_id(task_id: object) -> int:
    """`task_id` as an int, checked before any request: `TypeError` unless an int (a bool, a
    float or a str is not: "1" was selected, then refused its own assignment, and True read as
    task 1), `ValueError` outside [1, 2^63), the ids a coordinator gives."""
    if isinstance(task_id, bool) or not isinstance(task_id, numbers.Integral):
        hint = ": convert a task id read as text with int(...)" if isinstance(task_id, str) else ""
        raise TypeError(
            f"task_id must be an int, the coordinator's task id, not {type(task_id).__name__} "
            f"{task_id!r}{hint}"
        )
    if not 1 <= int(task_id) < MAX_ID:
        raise ValueError(f"task_id must be from 1 to 2^63 - 1, got {task_id!r}")
    return int(task_id)


def _check_optional_task_id(task_id: object) -> int | None:
    """`_check_task_id`, None (no task named) allowed."""
    return None if task_id is None else _check_task_id(task_id)


def _check_spec(spec: object) -> None:
    """`TypeError` unless `spec` is a `compression.ModelSpec` (`fetch_current`'s)."""
    if not isinstance(spec, ModelSpec):
        raise TypeError(
            "spec must be the task's compression.ModelSpec (its tensor names and shapes), not "
            f"{type(spec).__name__}"
        )


def _check_seconds(name: str, value: object) -> None:
    """`TypeError` unless `value` is a number of seconds (a real number, not a bool: a str
    such as "600" from a config file failed in a comparison with Python's own words)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__} {value!r}")


def _check_callable(name: str, value: object, what: str) -> None:
    """`TypeError` unless `value` can be called (`what` says what it stands for)."""
    if not callable(value):
        raise TypeError(f"{name} must be {what}, a callable, not {type(value).__name__} {value!r}")


def _check_mods(mods: object, kind: str) -> tuple[Any, ...]:
    """A client's `mods` as a tuple: `TypeError` unless a sequence (a tuple, a list) of
    callables (None, or one middleware not in a sequence, failed at the first request)."""
    if isinstance(mods, str | bytes) or not isinstance(mods, Sequence):
        raise TypeError(
            f"mods must be a tuple of middleware, {kind}, outermost first ((): none), not "
            f"{type(mods).__name__} {mods!r}"
        )
    for i, mod in enumerate(mods):
        if not callable(mod):
            raise TypeError(f"mods[{i}] must be middleware, {kind}, not {type(mod).__name__}")
    return tuple(mods)


def _check_transport(transport: object, kind: type[Any]) -> None:
    """`TypeError` unless `transport` is None or an instance of httpx's `kind` (it failed at
    the first request, after the app directory was made)."""
    if transport is not None and not isinstance(transport, kind):
        raise TypeError(
            f"transport must be an httpx.{kind.__name__} (or None: the network), not "
            f"{type(transport).__name__} {transport!r}"
        )


def _raise_outage(over: _WaitOver) -> None:
    """End `participate` with the `CoordinatorUnreachable` `over` carries, if any: its wait
    ended with the last attempt failed on the transport before any check-in of the call was
    answered. Returning None then (the default retries' backoff, 1.5 to 3 s in all,
    outlasts a `max_wait_s` under that) told an outage from "not selected yet" only by a
    `last_check_in` left from an earlier call."""
    if over.unreachable is not None:
        raise over.unreachable from over.unreachable.__cause__


def _check_wait(max_wait_s: float, min_poll_s: float) -> None:
    _check_seconds("max_wait_s", max_wait_s)
    _check_seconds("min_poll_s", min_poll_s)
    if math.isnan(max_wait_s):  # every comparison with it is False: it would never end
        raise ValueError("max_wait_s must be a number of seconds, not NaN")
    if max_wait_s < 0:  # returned None at once, as if no round had come
        raise ValueError(f"max_wait_s must be seconds >= 0 (inf: no limit), not {max_wait_s!r}")
    if not 0 <= min_poll_s <= MAX_RETRY_AFTER_S:  # NaN fails both comparisons
        raise ValueError(
            f"min_poll_s must be seconds from 0 to {MAX_RETRY_AFTER_S:g} (a week),"
            f" not {min_poll_s!r}"
        )


def _wire(row: dict[str, dict[str, int]]) -> dict[str, int]:
    return {d: cell["wire_bytes"] for d, cell in row.items()}


def _delta(row: dict[str, dict[str, int]], before: dict[str, int], d: str) -> int:
    return row.get(d, {}).get("wire_bytes", 0) - before.get(d, 0)


# The app's cancel event for the `AsyncClient` call the asyncio task runs (`_async_cancel_scope`),
# or None: each task reads its own (a context variable, as `_Deadline` is a thread's).
_ASYNC_CANCEL: contextvars.ContextVar[CancelFlag | None] = contextvars.ContextVar(
    "plume_async_cancel", default=None
)


@contextlib.contextmanager
def _async_cancel_scope(cancel: threading.Event | None) -> Iterator[None]:
    """As `Client._cancel_scope`, for the running asyncio task."""
    if cancel is None:
        yield
        return
    token = _ASYNC_CANCEL.set(cancel)
    try:
        yield
    finally:
        _ASYNC_CANCEL.reset(token)


async def _apause(seconds: float) -> None:
    """As `Client._pause`: `asyncio.sleep(seconds)`, in _CANCEL_POLL_S slices while the task's
    call has a cancel event, `_Stop` as soon as it is seen set."""
    cancel = _ASYNC_CANCEL.get()
    if cancel is None:
        await asyncio.sleep(seconds)
        return
    end = _tick() + seconds
    while True:
        if cancel.is_set():
            raise _Stop
        left = end - _tick()
        if not left > 0:
            return
        await asyncio.sleep(min(left, _CANCEL_POLL_S))


async def _unless_cancelled(aw: Coroutine[Any, Any, _T], cancel: CancelFlag) -> _T:
    """Await `aw` in a task of its own, looking at `cancel` every _CANCEL_POLL_S: once it is
    set, that task is cancelled (the request let go, as the task's own cancel would) and waited
    for, then `_Stop`. An answer that arrived first is returned, and so is one the let-go
    request still ended with (a transport or mod that answers instead of being cancelled); an
    error it ended with is retrieved, then `_Stop`. A cancel of the calling task cancels the
    inner one too."""
    inner = asyncio.ensure_future(aw)
    try:
        while True:
            done, _ = await asyncio.wait({inner}, timeout=_CANCEL_POLL_S)
            if done:
                return inner.result()
            if cancel.is_set():
                break
    finally:
        if not inner.done():
            inner.cancel()
            await asyncio.wait({inner})
    if not inner.cancelled() and inner.exception() is None:  # exception(): retrieved
        return inner.result()
    raise _Stop


# How long `_dial` (and `Client`'s `_race_connect`) waits for an address's connect before
# dialling the next as well: RFC 8305's Connection Attempt Delay, anyio's
# `happy_eyeballs_delay` (which `AsyncClient` used before).
_NEXT_ADDRESS_S = 0.25

_AddrInfo = tuple[int, int, int, str, Any]


def _interleaved(infos: Iterable[_AddrInfo]) -> list[_AddrInfo]:
    """getaddrinfo's answers with their families taking turns, the first answer's family first
    (RFC 8305 section 4, as asyncio's `create_connection`): its order within a family kept."""
    families: dict[int, list[_AddrInfo]] = {}
    for info in infos:
        families.setdefault(info[0], []).append(info)
    turns = itertools.zip_longest(*families.values())
    return [info for turn in turns for info in turn if info is not None]


async def _dial_one(
    info: _AddrInfo, local_address: str | None, options: Iterable[httpcore.SOCKET_OPTION]
) -> socket.socket:
    """A non-blocking TCP socket connected to one of getaddrinfo's answers, closed if that
    fails or is cancelled; `options` set before connecting, and TCP_NODELAY as asyncio's
    transports set it."""
    family, kind, proto, _, address = info
    sock: socket.socket | None = None
    try:  # a family the host has no support for (IPv6 off): EAFNOSUPPORT, the next address
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for option in options:
            sock.setsockopt(*option)
        if local_address is not None:
            sock.bind((local_address, 0))
        await asyncio.get_running_loop().sock_connect(sock, address)
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    return sock


def _drop_connected(attempt: asyncio.Future[socket.socket]) -> None:
    """Close the socket of an attempt that connected after another won (its error read, so
    that asyncio does not log it)."""
    if not attempt.cancelled() and attempt.exception() is None:
        attempt.result().close()


def _of_local_family(
    items: Sequence[_T], version_of: Callable[[_T], int], host: str, local_address: str | None
) -> list[_T]:
    """`host`'s addresses (`items`, each of IP version `version_of(item)`) of the family of
    `local_address`, the IP address every attempt's socket binds to, as anyio looks up only
    those: one of the other family would fail at its bind, and as the last address dialled its
    bind error ("Address family ... not supported") would hide the real one. All of them with
    no local address, or a local name. `OSError` (EAFNOSUPPORT) when none is of that family."""
    if local_address is None:
        return list(items)
    try:
        version = ipaddress.ip_address(local_address).version
    except ValueError:
        return list(items)
    kept = [item for item in items if version_of(item) == version]
    if not kept and items:
        raise OSError(
            errno.EAFNOSUPPORT,
            f"{host!r} has no IPv{version} address, the family of local_address {local_address}",
        )
    return kept


async def _dial(
    host: str,
    port: int,
    timeout: float | None,
    local_address: str | None,
    options: Iterable[httpcore.SOCKET_OPTION],
) -> socket.socket:
    """A non-blocking TCP socket connected to `host`, as anyio's `connect_tcp` (httpx's
    default) connects: `host` looked up, its addresses raced (RFC 8305's Happy Eyeballs),
    the lookup and the race within `timeout` as a whole. The addresses are dialled in
    `_interleaved` order, the next once the last one's attempt failed or had not connected
    within `_NEXT_ADDRESS_S`; the first to connect wins and the other attempts are cancelled,
    their sockets closed. When every one fails: the error of the last address in that
    order, as `socket.create_connection` (`Client`'s) raises (`TimeoutError` when the
    timeout ends the race)."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        infos = _interleaved(
            _of_local_family(
                found, lambda i: 6 if i[0] == socket.AF_INET6 else 4, host, local_address
            )
        )
        running: dict[asyncio.Future[socket.socket], int] = {}
        failed: dict[int, OSError] = {}
        latest: asyncio.Future[socket.socket] | None = None
        next_at = loop.time()
        winner: socket.socket | None = None
        try:
            while winner is None:
                started = len(running) + len(failed)
                if started < len(infos) and (
                    latest is None or latest.done() or loop.time() >= next_at
                ):
                    latest = asyncio.ensure_future(
                        _dial_one(infos[started], local_address, options)
                    )
                    running[latest] = started
                    next_at = loop.time() + _NEXT_ADDRESS_S
                    continue
                if not running:
                    raise failed[max(failed)] if failed else OSError(f"{host!r}: no address")
                wait = max(0.0, next_at - loop.time()) if started < len(infos) else None
                done, _ = await asyncio.wait(
                    running, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                )
                for attempt in done:
                    exc = attempt.exception()
                    if exc is None and winner is None:
                        del running[attempt]
                        winner = attempt.result()
                    elif isinstance(exc, OSError):
                        failed[running.pop(attempt)] = exc
                    elif exc is not None:  # a socket option of the wrong type, say
                        if winner is not None:  # connected in this same step: not returned
                            winner.close()
                        raise exc
        finally:
            for attempt in running:  # the losers (an attempt done with them: its socket)
                attempt.cancel()
                attempt.add_done_callback(_drop_connected)
            try:
                if running:
                    await asyncio.wait(running)
            except BaseException:  # the caller cancelled meanwhile, or the timeout ended
                if winner is not None:
                    winner.close()
                raise
    return winner


class _AsyncSocketBackend(httpcore.AsyncNetworkBackend):
    """httpcore's async backend with `_AsyncSocket` TCP connections (TLS: `_AsyncTls`): an
    upload the coordinator answers before reading its body gets that answer, as `Client`'s
    does, where anyio's connection lost it. Unix sockets are `inner`'s (anyio's raw sockets,
    which keep an early answer), and so is everything outside an asyncio event loop."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # another event loop (trio) running a transport shared with it
            return await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        try:
            sock = await _dial(host, port, timeout, local_address, socket_options or ())
        except TimeoutError as exc:  # the timeout's, or the kernel's (ETIMEDOUT), as anyio's
            raise httpcore.ConnectTimeout(str(exc) or "timed out") from exc
        except OSError as exc:  # a lookup's failure too (`socket.gaierror`), as anyio's
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        return _AsyncSocket(sock)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return await self._inner.connect_unix_socket(path, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _early_answer_sockets(http: httpx.AsyncClient) -> None:
    """Put `_AsyncSocketBackend` in place of the default async backend of the httpcore pools
    under `http`'s transports (its own, an injected `httpx.AsyncHTTPTransport`, and any
    environment proxy's), in place, once (a transport shared by several clients keeps the
    first wrapper). These are httpx's and httpcore's private attributes (pinned below 1.0 in
    pyproject): a transport without them, or whose pool has another backend (an app's own),
    is left as it is, its connections anyio's."""
    defaults = tuple(t for t in (_AutoBackend, httpcore.AnyIOBackend) if t is not None)
    for transport in (getattr(http, "_transport", None), *getattr(http, "_mounts", {}).values()):
        pool: Any = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if isinstance(backend, httpcore.AsyncNetworkBackend) and type(backend) in defaults:
            pool._network_backend = _AsyncSocketBackend(backend)


class AsyncClient(_ClientBase):
    """The asyncio twin of `Client` (same methods, awaited), for simulations and async apps.

    Its arguments are `Client`'s, less `sleep` (it awaits `asyncio.sleep`): `base_url`,
    `app_dir`, `transport` (an `httpx.AsyncBaseTransport`), `timeout`, `retries`, `backoff_s`,
    `verify`, `mods` (each `async mod(request, next) -> response`), `clock`,
    `max_stage_wait_s`, `max_response_s`, which here bounds any transport,
    `max_model_bytes`, `retry_rng` and `model_dtype`. As `Client`, one
    call at a time: two tasks running calls on one client at once interleave at their awaits
    over the same unlocked device state.

    An upload the coordinator answers before reading its body (413, 503 `busy`) gets that
    answer, as `Client`'s does: httpx's own transport, an injected `httpx.AsyncHTTPTransport`
    and an environment proxy's connect through `_AsyncSocketBackend`, whose sockets keep an
    answer that came before a failed write (anyio's, httpx's default, lost it: the attempt
    failed as unreachable). An app's own transport keeps its behaviour. An answer the server's
    kernel, or a proxy, dropped when it reset the connection is lost to both clients: that
    attempt fails as unreachable and is retried on the client's backoff.
    """

    def __init__(
        self,
        base_url: str,
        app_dir: str | os.PathLike[str],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
        retries: int = 4,
        backoff_s: float = 0.2,
        verify: bool | str | os.PathLike[str] | ssl.SSLContext = True,
        mods: tuple[AsyncMod, ...] = (),
        clock: Callable[[], float] = time.time,
        max_stage_wait_s: float = MAX_STAGE_WAIT_S,
        max_response_s: float = MAX_RESPONSE_S,
        max_model_bytes: int = MAX_MODEL_BYTES,
        retry_rng: random.Random | None = None,
        model_dtype: str = "fp32",
    ) -> None:
        self._base = _check_base_url(base_url)  # before the app directory is made
        _check_timeout(timeout)  # so too, and the rest (`_Core` checks its own first)
        _check_transport(transport, httpx.AsyncBaseTransport)
        mods = _check_mods(mods, "async mod(request, next) -> response")
        tls_verify = _tls_verify(verify)
        self._core = _Core(
            app_dir, retries=retries, backoff_s=backoff_s, clock=clock,
            max_stage_wait_s=max_stage_wait_s, max_response_s=max_response_s,
            max_model_bytes=max_model_bytes, rng=retry_rng, model_dtype=model_dtype,
        )  # fmt: skip
        try:
            self._http = httpx.AsyncClient(
                base_url=base_url, transport=transport, timeout=timeout, verify=tls_verify,
                headers=_ACCEPT_IDENTITY,
            )  # fmt: skip
        except BaseException:
            self._core.store.close()  # its claim and lock: this client never was
            raise
        _early_answer_sockets(self._http)
        self._mods = mods

    async def aclose(self) -> None:
        """As `Client.close`: the HTTP connections, then the app directory's lock."""
        try:
            await self._http.aclose()
        finally:
            self._core.store.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _dispatch(self, request: httpx.Request, cap: int, budget: float) -> httpx.Response:
        async def read(r: httpx.Request) -> httpx.Response:
            return await _aread_capped(await self._http.send(r, stream=True), cap)

        async def last(r: httpx.Request) -> httpx.Response:
            # Headers and body together: a server that trickles either is cut off. In this
            # task, not `asyncio.wait_for`'s: on Python 3.11 that returns an answer read in the
            # same step as the task's cancel, and the cancel is lost (the task runs on).
            try:
                async with asyncio.timeout(budget if math.isfinite(budget) else None):
                    return await read(r)
            except TimeoutError:
                raise _too_slow(0, budget) from None

        def call(i: int) -> AsyncSend:
            if i == len(self._mods):
                return last
            return lambda r: self._mods[i](r, call(i + 1))

        response: httpx.Response = await call(0)(request)
        return response

    async def _send(self, ex: _Exchange, deadline: float = math.inf) -> httpx.Response:
        """As `Client._send`; with a cancel event (`_ASYNC_CANCEL`) each attempt runs in a
        task of its own, let go once the event is set (`_unless_cancelled`)."""
        cancel = _ASYNC_CANCEL.get()
        return await self._run(_send_flow(self._core, self._base, self._http, ex, deadline, cancel))

    async def _run(self, flow: _Flow[_T]) -> _T:
        """As `Client._run`: each exchange `flow` yields sent and awaited, each pause awaited
        (`_apause`)."""
        try:
            step = next(flow)
            while True:
                got: httpx.Response | None = None
                try:
                    if isinstance(step, _Sleep):
                        await _apause(step.seconds)
                    elif isinstance(step, _Attempt):
                        read = self._read(step.request, step.cap, step.budget)
                        cancel = _ASYNC_CANCEL.get()
                        got = await (read if cancel is None else _unless_cancelled(read, cancel))
                    else:
                        got = await self._send(step, step.deadline)
                except BaseException as exc:
                    step = flow.throw(exc)
                else:
                    step = flow.send(got)
        except StopIteration as done:
            result: _T = done.value
            return result
        finally:
            flow.close()

    async def _read(self, request: httpx.Request, cap: int, budget: float) -> httpx.Response:
        """One attempt: send `request` and read its whole answer."""
        response = await self._dispatch(request, cap, budget)
        await response.aread()
        return response

    async def register(self) -> str:
        """As `Client.register`: register this device's key (idempotent); the device id. An
        answer of another database incarnation sets aside the app directory's uploads, and
        drops its residuals and models; without one, a coordinator that registers the device
        anew has the pending upload and accepted records set aside; either with a warning."""
        return await self._run(_register_flow(self._core, self.device_id))

    async def check_in(self, task_id: int | None = None) -> CheckInResponse:
        """As `Client.check_in`: one check-in, "train" with an assignment, "wait" or "end"."""
        task_id = _check_optional_task_id(task_id)
        return await self._run(_check_in_flow(self._core, task_id, math.inf))

    async def fetch_model(self, a: Assignment) -> tuple[npt.NDArray[np.float32], str]:
        """As `Client.fetch_model`: the round's base model and how it came (encoding)."""
        flow = _download_flow(self._core, a.task_id, _spec(a), a.round_id, a.base_version)
        params, _, encoding = await self._run(flow)
        return params, encoding

    async def fetch_current(
        self, task_id: int, spec: ModelSpec
    ) -> tuple[npt.NDArray[np.float32], int, str]:
        """The task's latest model outside any round: (params, version, encoding); as
        `Client.fetch_current`, a spec that is not the task's is `LayoutMismatchError`, a
        delta chain that fails its integrity check is asked for again once as a snapshot, and
        a snapshot that fails is `ModelIntegrityError`."""
        task_id = _check_task_id(task_id)
        _check_spec(spec)
        return await self._run(_download_flow(self._core, task_id, spec, 0, None, app_spec=True))

    async def upload(self, pending: PendingUpload, spec: ModelSpec | None = None) -> UploadReceipt:
        """As `Client.upload`: send a pending upload; idempotent across retries and restarts."""
        return await self._run(_upload_flow(self._core, pending, spec, math.inf))

    async def resume_pending(self) -> UploadReceipt | None:
        """As `Client.resume_pending`: re-send an upload a previous run left unacknowledged."""
        return await self._run(_resume_pending_flow(self._core, math.inf))

    async def train_round(
        self,
        a: Assignment,
        trainer: LocalTrainer,
        x: npt.NDArray[np.float32],
        y: npt.NDArray[np.int64],
        *,
        cancel: threading.Event | None = None,
    ) -> RoundReport:
        """As `Client.train_round` (an unacknowledged earlier upload is settled first; a round
        whose update the coordinator holds already is refused before any request), `cancel`
        too."""
        if a.secure:
            raise ValueError("a secure assignment: use run_secure_round or secure_round")
        with _async_cancel_scope(cancel):
            flow = _train_round_flow(self._core, a, trainer, x, y, _ASYNC_CANCEL.get())
            return await self._run(flow)

    async def secure_round(
        self,
        a: Assignment,
        update: UpdateFn,
        *,
        participant: SecureParticipant | None = None,
        rng: np.random.Generator | None = None,
        drop_at: Stage | None = None,
        cancel: threading.Event | None = None,
    ) -> SecureRoundReport:
        """`Client.secure_round`, awaited (the same requests, bytes and refusals; `cancel`
        too)."""
        with _async_cancel_scope(cancel):
            flow = _secure_round_flow(self._core, a, update, participant, rng, drop_at)
            return await self._run(flow)

    async def run_secure_round(
        self,
        a: Assignment,
        trainer: LocalTrainer,
        x: npt.NDArray[np.float32],
        y: npt.NDArray[np.int64],
        *,
        cancel: threading.Event | None = None,
    ) -> SecureRoundReport:
        """Download, train locally, and send the update through the secure round `a`;
        `cancel` as in `Client.run_secure_round`."""
        with _async_cancel_scope(cancel):
            flow = _run_secure_round_flow(self._core, a, trainer, x, y, _ASYNC_CANCEL.get())
            return await self._run(flow)

    async def participate(
        self,
        trainer: LocalTrainer,
        x: npt.NDArray[np.float32],
        y: npt.NDArray[np.int64],
        *,
        task_id: int | None = None,
        max_wait_s: float = 600.0,
        min_poll_s: float = _MIN_POLL_S,
        cancel: threading.Event | None = None,
    ) -> RoundReport | None:
        """As `Client.participate` (`max_wait_s` bounds the check-ins the same way, and
        `min_poll_s` spaces them).

        `cancel` as there: set from any thread (an OS callback), the call raises
        `ParticipationCancelled` with the phase it stopped in and the app directory left as a
        crash there would. It is read before every request and retry, every _CANCEL_POLL_S
        (50 ms) of a wait, and of a request in flight (run in a task of its own, cancelled
        then: through any transport); a trainer that takes `cancel` stops within one step.
        The training runs on the event loop's thread, so the task's own `cancel()` does not
        stop it: this event does. Cancelling the task works as before, with or without it."""
        task_id = _check_optional_task_id(task_id)
        _check_wait(max_wait_s, min_poll_s)
        _check_trainer(trainer)
        _check_data(trainer, x, y)
        with _async_cancel_scope(cancel):
            flow = _participate_flow(
                self._core, trainer, x, y, task_id, max_wait_s, min_poll_s, _ASYNC_CANCEL.get()
            )
            return await self._run(flow)
