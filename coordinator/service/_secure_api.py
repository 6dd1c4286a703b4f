"""The SecAgg+ stage endpoints of the durable service, mounted on the main FastAPI app.

    GET  /v1/secure/rounds/{round_id}/setup             plan bytes; digest and node in headers
    POST /v1/secure/rounds/{round_id}/stages/{stage}    one stage upload (octet-stream, capped)
    GET  /v1/secure/rounds/{round_id}/stages/{stage}    the download that follows `stage`
                                                        (425 + Retry-After while it is open)
    GET  /v1/secure/rounds/{round_id}/result            the round's `RoundStatus`

Every request is a signed device request (the same Ed25519 signature, timestamp window and
nonce cache as the plain upload), signed for the round in the URL, and its bytes go to the
round's bandwidth ledger. docs/http-api.md lists bodies and errors.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, get_args

from fastapi import Depends, FastAPI, Path, Request
from fastapi.responses import JSONResponse, Response

from protocol import auth as pauth
from protocol.messages import RoundStatus, StageReceipt
from protocol.names import ContentType, Reason
from protocol.names import Header as H
from protocol.secagg import SecAggPath, Stage

from .auth import RequestVerifier
from .errors import ApiError, StoreId
from .metrics import Metrics
from .rounds import Coordinator, ServiceConfig
from .secure import SECURE_STAGES
from .wire import STATE_KEY, Attribution

__all__ = ["add_secure_routes"]

Dependency = Callable[..., Awaitable[Any]]


# The stage names the stage routes take: the upload stages (`SECURE_STAGES`), not `done` or
# `aborted`, which `Stage` also holds. Typed so, FastAPI's 422 for another name and the OpenAPI
# spec list these four only (s25/http: they listed all six, then refused two).
UploadStage = Literal["advertise-keys", "share-keys", "masked-input", "unmask"]
if set(get_args(UploadStage)) != {str(s) for s in SECURE_STAGES}:  # pragma: no cover
    raise AssertionError("UploadStage must name the SECURE_STAGES")
# The `{stage}` of the URL, as `UploadStage` (the route's own variable is the `Stage`).
StageInPath = Annotated[UploadStage, Path(alias="stage")]


def _stage(name: UploadStage) -> Stage:
    return Stage(name)


def _same_round(fields: pauth.SignedFields, round_id: int) -> None:
    if fields.round_id != round_id:
        raise ApiError(403, Reason.ROUND_MISMATCH, "signed round differs from the URL")


def add_secure_routes(
    app: FastAPI,
    *,
    coordinator: Coordinator,
    verifier: RequestVerifier,
    config: ServiceConfig,
    metrics: Metrics,
    device: Dependency,
    device_or_admin: Dependency,
    errors: dict[int | str, dict[str, Any]],
    target: Callable[[Request], str],
    headers_of: Callable[[Request], dict[str, str]],
) -> None:
    """Mount the stage endpoints; `device` is the app's signed-request dependency."""
    binary: dict[int | str, dict[str, Any]] = {
        200: {"content": {ContentType.OCTET_STREAM: {}}, "description": "stage bytes"}
    }
    gone: dict[int | str, dict[str, Any]] = {
        410: {
            "description": "the secure round (or, grouped, the device's group) aborted while "
            "the round runs (too few devices at some stage); once the round is closed, "
            "409 round_closed"
        },
    }
    still_open: dict[int | str, dict[str, Any]] = {  # the stage download's alone
        425: {
            "description": "the stage is still open; poll again after the body's "
            "`retry_after_s` seconds (`Retry-After`: the same, rounded up to whole seconds)"
        },
    }

    @app.get(
        SecAggPath.SETUP,
        response_class=Response,
        responses={**errors, **binary, **gone},
        tags=["secure"],
    )
    async def secure_setup(
        request: Request,
        round_id: StoreId,
        fields: pauth.SignedFields = Depends(device),  # noqa: B008
    ) -> Response:
        """The round's plan (`SecurePlan` bytes); `x-plume-secagg-digest` is the (model, plan)
        digest the device must recompute and `x-plume-secagg-node` its node index."""
        _same_round(fields, round_id)
        body, headers = coordinator.secure_setup(round_id, fields.device_id)
        att: Attribution = getattr(request.state, STATE_KEY)
        att.payload_down = len(body)
        return Response(body, media_type=ContentType.OCTET_STREAM, headers=headers)

    receipt: dict[int | str, dict[str, Any]] = {
        200: {"model": StageReceipt, "description": "the stage message is held by the round"}
    }

    @app.post(
        SecAggPath.STAGE,
        responses={**errors, **gone, **receipt},
        tags=["secure"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {ContentType.OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}},
            },
            "parameters": [
                {"in": "header", "name": h, "required": False, "schema": {"type": "string"}}
                for h in (H.DEVICE, H.ROUND, H.TIMESTAMP, H.NONCE, H.SIGNATURE)
            ],
        },
    )  # fmt: skip
    async def secure_upload(
        request: Request, round_id: StoreId, stage_name: StageInPath
    ) -> JSONResponse:
        """One stage message; answered once it is checked and held by the round."""
        stage = _stage(stage_name)
        fields, body = await verifier.read_signed_body(
            method=request.method,
            target=target(request),
            headers=headers_of(request),
            chunks=request.stream(),
            cap=coordinator.secure_upload_cap(round_id, stage) or config.json_body_cap,
            what=f"{stage} upload",
        )
        # Before the attribution, as for a plain upload: a refusal is control traffic (the
        # wire middleware's membership check, on the URL's round, also makes it so).
        _same_round(fields, round_id)
        att = Attribution(fields.device_id, fields.round_id, payload_up=len(body))
        if stage == Stage.MASKED_INPUT:
            # The masked input is what replaces the dense fp32 update.
            att.dense_up = coordinator.dense_bytes_for_round(round_id)
        setattr(request.state, STATE_KEY, att)
        # plume_upload_seconds: from here, after the body was read and its signature verified
        # (the link's speed would dominate the read), to the upload taken; not on a refusal.
        t0 = asyncio.get_running_loop().time()
        duplicate, reports, to_close = coordinator.secure_upload(
            round_id, stage, fields.device_id, body
        )
        metrics.upload_seconds.observe(asyncio.get_running_loop().time() - t0)
        if to_close is not None:
            coordinator.schedule_close(to_close)
        return JSONResponse(
            {
                "round_id": round_id,
                "device_id": fields.device_id,
                "accepted": True,
                "duplicate": duplicate,
                "payload_bytes": len(body),
                "reports": reports,
                "stage": str(stage),
            }
        )

    @app.get(
        SecAggPath.STAGE,
        response_class=Response,
        responses={**errors, **binary, **gone, **still_open},
        tags=["secure"],
    )
    async def secure_download(
        request: Request,
        round_id: StoreId,
        stage_name: StageInPath,
        fields: pauth.SignedFields = Depends(device),  # noqa: B008
    ) -> Response:
        """What follows `stage` for this device: the key directory after advertise-keys, the
        share delivery after share-keys, the unmask request after masked-input."""
        stage = _stage(stage_name)
        if stage == Stage.UNMASK:
            raise ApiError(422, Reason.VALIDATION, "nothing follows the unmask stage")
        _same_round(fields, round_id)
        body = coordinator.secure_download(round_id, stage, fields.device_id)
        if body is None:
            # Retry-After in whole seconds (RFC 9110's delay-seconds), rounded up; the poll
            # interval itself, sub-second allowed, in the body (the SDK reads it first).
            return JSONResponse(
                {
                    "reason": str(Reason.INVALID_STATE),
                    "detail": f"stage {stage} is still open",
                    "retry_after_s": config.poll_s,
                },
                status_code=425,
                headers={H.RETRY_AFTER: str(math.ceil(config.poll_s))},
            )
        att: Attribution = getattr(request.state, STATE_KEY)
        att.payload_down = len(body)
        return Response(body, media_type=ContentType.OCTET_STREAM)

    @app.get(SecAggPath.RESULT, response_model=RoundStatus, responses=errors, tags=["secure"])
    async def secure_result(
        round_id: StoreId,
        caller: str | None = Depends(device_or_admin),  # noqa: B008
    ) -> RoundStatus:
        """The round's status: its stage while open, then committed or abandoned (a device
        reads no other device's id in it, see `GET /v1/rounds/{id}`)."""
        return coordinator.round_status(round_id, only=caller)
