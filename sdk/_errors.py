"""The errors `sdk.client` raises, and what builds them: `ClientError` and its kinds (a task
ended, an unsupported SDK, a model too large or of another layout, a cancelled call, an
unreachable coordinator, a failed TLS certificate). Split off `sdk/client.py`, which imports
every name here back: apps and `sdk` import them from there.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable
from typing import Any

import httpx

from protocol.tls import NAME_MISMATCH, OUT_OF_DATE

# Most characters of a refusal's `detail` and `reason` a `ClientError` keeps: the server's text
# arrives under the 4/16 MiB response caps, and a hostile one would make every logged error
# megabytes long.
MAX_ERROR_DETAIL = 1000
MAX_ERROR_REASON = 64


def _clip(text: str, limit: int) -> str:
    """`text`, or its first `limit` characters and a marker saying how many were cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}[... {len(text) - limit} more characters cut]"


class ClientError(Exception):
    """The coordinator refused a request: `status`, `reason` (protocol.names.Reason), `detail`.

    `reason` keeps at most `MAX_ERROR_REASON` characters and `detail` `MAX_ERROR_DETAIL`, then
    a marker saying how many more the server sent (`_clip`).
    """

    def __init__(self, status: int, reason: str, detail: str) -> None:
        reason, detail = _clip(reason, MAX_ERROR_REASON), _clip(detail, MAX_ERROR_DETAIL)
        super().__init__(f"{status} {reason}: {detail}")
        self.status = status
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's own pickles `args` (the message) for the constructor, which takes
        # (status, reason, detail): a refusal raised in a process pool's worker broke the pool.
        return (_remade_error, (type(self), self.args), self.__dict__)


def _remade_error(cls: type[ClientError], args: tuple[Any, ...]) -> ClientError:
    """A pickled `ClientError` (of any subclass) again: its message, then its attributes."""
    return cls.__new__(cls, *args)


class ModelIntegrityError(ClientError):
    """A downloaded model does not decode (`bad_model`), or its SHA-256 does not match the
    coordinator's digest (`digest_mismatch`). A delta chain that fails so is asked for again
    once as a snapshot, in the same call (`fetch_model`, `participate`, `fetch_current`); this
    is raised when a snapshot fails."""


# `ModelTooLargeError.reason`: the SDK's own refusal (no request made) and the coordinator's
# 409 to a check-in naming such a task (`protocol.names.Reason.MODEL_TOO_LARGE`) alike.
MODEL_TOO_LARGE = "model_too_large"


class ModelTooLargeError(ClientError):
    """The task's model is larger than the client's `max_model_bytes` allows: refused before
    any of it is downloaded or any array of its size allocated, whether it would have come as
    a snapshot or as a delta chain. `reason` `MODEL_TOO_LARGE` ("model_too_large"), `task_id`
    the task, `limit` the client's `max_model_bytes`. The app directory is as before the call.

    Two sources. The coordinator, told the limit in every check-in, refuses a check-in naming
    such a task: `status` 409, `detail` the coordinator's (it names the model's size), and
    `declared` None. Or the client itself, given such a task's round all the same (by a
    coordinator from before `max_model_bytes`, which ignores it): `status` 0, no request made
    for the model, `declared` its size as the task's spec declares it (4 bytes a parameter:
    its fp32 snapshot, and each array a round holds)."""

    def __init__(
        self, task_id: int, declared: int | None, limit: int, *, status: int = 0, detail: str = ""
    ) -> None:
        if declared is not None:
            detail = (
                f"task {task_id}'s model is {declared} bytes ({declared // 4} float32 "
                f"parameters, as its spec declares), over this client's max_model_bytes={limit}: "
                "not downloaded (raise max_model_bytes if the device can hold it)"
            )
        super().__init__(status, MODEL_TOO_LARGE, detail)
        self.task_id = task_id
        self.declared = declared
        self.limit = limit


# `TaskEndedError.reason` of a check-in answered "end" (the coordinator sends no error body
# then: the name is the SDK's, like "bad_response").
TASK_DONE = "task_done"


class _TaskError(ClientError):
    """A refusal about the task a check-in named (`task_id`): the base of `TaskEndedError` and
    `SdkUnsupportedError`, which `participate` raises with no further check-in."""

    def __init__(self, status: int, reason: str, detail: str, task_id: int | None) -> None:
        super().__init__(status, reason, detail)
        self.task_id = task_id


class TaskEndedError(_TaskError):
    """The task a check-in named runs no more rounds: stop asking for it.

    The coordinator answered "end": the task ran its rounds, or the operator stopped it
    (`detail` says which). `reason` is `TASK_DONE` ("task_done"), `status` 200, `task_id` the
    task named. `participate` raises it on that answer, without another check-in; `check_in`
    returns the answer. A 409 `task_refused` (a task this coordinator cannot run now, which
    the operator may fix) or 404 `unknown_task` stays a plain `ClientError`: not final.
    """


class SdkUnsupportedError(_TaskError):
    """The task a check-in named needs something this SDK does not do: update the app's SDK.

    The coordinator's 409 `sdk_unsupported` (`Reason.SDK_UNSUPPORTED`); `detail` names the
    feature the task needs (one this SDK does not list in `FEATURES`, from a newer
    coordinator) and `task_id` the task named. `check_in` and `participate` raise it and check
    in no more: asking again, this SDK is refused again. Other tasks are not affected.
    """


# `LayoutMismatchError.reason`: the SDK's own refusal of an assignment (no request made) and
# the coordinator's 409 to a check-in naming such a task
# (`protocol.names.Reason.MODEL_LAYOUT_MISMATCH`) alike.
MODEL_LAYOUT_MISMATCH = "model_layout_mismatch"


class LayoutMismatchError(_TaskError, ValueError):
    """The task's model is not one this device's trainer can train: its layout (tensor shapes,
    and for artifacts exported under a model name, that name) is not the trainer's. A trainer
    whose model is fixed (an `sdk.ort.OrtTrainer`'s artifacts) cannot take such a task: not a
    setup error of the app, which goes on checking in for other tasks (or names its own with
    `task_id`). `reason` `MODEL_LAYOUT_MISMATCH` ("model_layout_mismatch"), `task_id` the
    task. Also a `ValueError`, the type this refusal had before it had a class of its own.

    Two sources. The coordinator, told the trainer's layout in the check-in (`model_layouts`,
    sent when the trainer has a `spec`: `_declared_layouts`), refuses a check-in naming
    another task: `status` 409, `detail` the coordinator's (it names the task's layout).
    Naming no task, such a coordinator never gives the device one. Or the client itself,
    given such a task's round all the same (by a coordinator from before `model_layouts`,
    which ignores it, or for a trainer that declares no layout): `status` 0, raised before the
    model is downloaded, nothing trained or sent, the app directory as before; the round's
    slot stays empty until its deadline (the coordinator is not told)."""


# `ParticipationCancelled.reason` (no request was refused: the name is the SDK's).
CANCELLED = "cancelled"


class ParticipationCancelled(ClientError):
    """The app set the `cancel` event it passed (`Client.participate`, `train_round`,
    `run_secure_round`, `secure_round`, and `AsyncClient`'s): the call stopped and left the app directory as a
    crash at that point would, never half-changed.

    `status` 0, `reason` `CANCELLED` ("cancelled"); `phase` says where it stopped, `detail`
    what it left: "resend" (re-sending an upload an earlier round left pending: it stays
    pending), "check-in" or "wait" (nothing changed), "download" or "training" (nothing was
    trained or encoded: the error-feedback residual is as before the round), "upload" (the
    upload stays pending: the next `participate` re-sends it, its idempotency key making a
    second copy harmless), "secure" (the device drops out of the secure round: the residual
    is as before the round unless its masked input may have reached the coordinator, whose
    record a later check-in settles). `round_id` is the round it was in, None before one.
    """

    def __init__(self, phase: str, detail: str, round_id: int | None) -> None:
        where = f" in round {round_id}" if round_id is not None else ""
        super().__init__(0, CANCELLED, f"cancelled at {phase}{where}: {detail}")
        self.phase = phase
        self.round_id = round_id


# `CoordinatorUnreachable.reason` (no answer came: the name is the SDK's).
UNREACHABLE = "unreachable"


class CoordinatorUnreachable(ClientError, httpx.TransportError):
    """No connection to the coordinator, or one lost, after every attempt a call made.

    Both a `ClientError` (`status` 0, `reason` `UNREACHABLE` ("unreachable"), `detail` the
    message) and an `httpx.TransportError` with the `request` of the last attempt, so either
    `except` catches it. The message names the coordinator, the request and the attempts
    (`could not reach the coordinator at http://127.0.0.1:8080 for POST /v1/checkin in 5
    attempts: [Errno 111] Connection refused`), and `__cause__` is httpx's own error. Raised
    as a subclass of that error's class too (`_unreachable_class`): an app that catches
    `httpx.ConnectError` or `httpx.TimeoutException` still catches what it did.
    """

    def __init__(self, message: str, *, request: httpx.Request | None = None) -> None:
        # httpx's constructor, not ClientError's "status reason: detail" message: the next one
        # after ClientError, the httpx class mixed in (`_unreachable_class`) or TransportError.
        init: Callable[..., None] = super(ClientError, self).__init__
        init(message, request=request)
        self.status, self.reason, self.detail = 0, UNREACHABLE, message

    def __reduce__(self) -> tuple[Any, ...]:
        # By the httpx class it was made with, not by its own (a `_unreachable_class` class is
        # no module attribute: pickle refused it, and a process pool broke on the error).
        made = type(self)
        kind = next((b for b in made.__bases__ if b is not CoordinatorUnreachable), None)
        if made is CoordinatorUnreachable or kind is None:
            kind = httpx.TransportError
        return (_remade_unreachable, (kind, self.args), self.__dict__)


# `TlsCertificateError.reason` (no request was refused: the name is the SDK's).
TLS_CERTIFICATE = "tls_certificate"


class TlsCertificateError(ClientError):
    """The coordinator's TLS certificate failed verification: the device does not trust it
    (self-signed, or issued by a CA not in the bundle `verify=` gives), it does not name
    `base_url`'s host, or it is expired or not yet valid (or the device's clock is off).

    A configuration (or security) problem, not an outage: it fails the same way at every
    attempt, so it is raised at the first one, never retried, and is not a
    `CoordinatorUnreachable` ("call again later"). `status` 0, `reason` `TLS_CERTIFICATE`
    ("tls_certificate"); `detail` names the coordinator, the request, OpenSSL's reason and
    what to check (`verify=`: the path of the coordinator's CA bundle or an `ssl.SSLContext`;
    the host in `base_url`). `__cause__` is httpx's own error. A network that intercepts TLS (a
    captive portal before its login, a corporate proxy) fails so too, which is why the message
    says which check failed.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(0, TLS_CERTIFICATE, detail)


def _certificate_error(
    base: str, request: httpx.Request, cert: ssl.SSLCertVerificationError
) -> TlsCertificateError:
    """`TlsCertificateError` for `cert`, the verification failure of a request to `base`, with
    what to check for its kind of failure. The caller chains httpx's error."""
    code = getattr(cert, "verify_code", None)
    why = getattr(cert, "verify_message", None) or str(cert)
    if code in NAME_MISMATCH:
        fix = (
            f"the certificate does not name the host {request.url.host!r}: use a base_url "
            "whose host the certificate names (or reissue it with that name)"
        )
    elif code in OUT_OF_DATE:
        fix = "check the certificate's validity dates and the device's clock"
    else:
        fix = (
            "pass verify= the coordinator's CA bundle (the path of its PEM file, or an "
            "ssl.SSLContext that trusts it); verify=True trusts certifi's bundle (or "
            "SSL_CERT_FILE / SSL_CERT_DIR when set), not a CA added to the system's store"
        )
    return TlsCertificateError(
        f"the coordinator at {base} presented a TLS certificate that failed verification "
        f"for {request.method} {request.url.path} ({why}); not retried: {fix}"
    )


_UNREACHABLE_CLASSES: dict[type[httpx.TransportError], type[CoordinatorUnreachable]] = {}
_UNREACHABLE_LOCK = threading.Lock()


def _unreachable_class(kind: type[httpx.TransportError]) -> type[CoordinatorUnreachable]:
    """`CoordinatorUnreachable` that is also a `kind` (httpx's `ConnectError`, `ReadTimeout`,
    an app transport's own class), made once per class; plain `CoordinatorUnreachable` for
    `httpx.TransportError` itself and for a class it cannot be mixed with."""
    if issubclass(kind, CoordinatorUnreachable):
        return kind
    if kind is httpx.TransportError:
        return CoordinatorUnreachable
    with _UNREACHABLE_LOCK:
        made = _UNREACHABLE_CLASSES.get(kind)
        if made is None:
            try:
                made = type(
                    "CoordinatorUnreachable", (CoordinatorUnreachable, kind),
                    {"__module__": __name__, "__doc__": CoordinatorUnreachable.__doc__},
                )  # fmt: skip
            except TypeError:  # a layout or MRO conflict: an app's class, not httpx's
                made = CoordinatorUnreachable
            _UNREACHABLE_CLASSES[kind] = made
        return made


def _remade_unreachable(
    kind: type[httpx.TransportError], args: tuple[Any, ...]
) -> CoordinatorUnreachable:
    """A pickled `CoordinatorUnreachable` again, of `_unreachable_class(kind)` (its attributes,
    `request` included, follow from the pickled state)."""
    made = _unreachable_class(kind)
    return made.__new__(made, *args)


class _Stop(Exception):
    """The thread's cancel event (an `AsyncClient` task's: `_ASYNC_CANCEL`) was seen set before
    or during a request, or during a wait (the entry points turn it into
    `ParticipationCancelled`). Not a `ClientError`: the handlers that settle a refused upload
    must not take it for a refusal."""
