"""The device side of secure rounds: error feedback, clip, rotate, quantize, noise, then SecAgg+.

Torch-free. A `SecureParticipant` lives as long as the device (it carries the error-feedback
residual from round to round); `join` starts one round's `SecureSession`, which answers the
four stages with wire bytes.

Per round, with u = delta + residual (float32[d]) and S = plan.indices:
    u_S  -> clip to L2 norm C -> rotate (if plan.rotate) -> clip to [-C', C'] and quantize to
    q in {0..2^b-1} (subtractive dither when plan.dither, else unbiased stochastic rounding)
    -> x = w q (+ integer noise) mod 2^m,
    then append w and mask.
The device reconstructs exactly what it sent, sent_S = R^T(dequantize(q, dither)) (noise excluded),
and keeps residual = u with residual[S] = u_S - sent_S: every bit of mass it did not send,
including what clipping and quantization removed, waits for a later round.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np
import numpy.typing as npt

from protocol.secagg import (
    CtrRandom,
    KeyDirectory,
    ModelMismatch,
    NoiseKind,
    ProtocolViolation,
    RoundAborted,
    SecAggClient,
    SecAggError,
    SecAggHeader,
    SecAggPath,
    SecurePlan,
    ShareDelivery,
    Stage,
    UnmaskRequest,
    dequantize,
    device_sketch,
    discrete_gaussian,
    dither_uniforms,
    model_digest,
    quantize,
    ring_mask,
    rotate,
    skellam,
    unrotate,
)

__all__ = [
    "SecureParticipant",
    "SecureSession",
    "HttpSecureDevice",
    "ResponseTooLarge",
    "encode_for_plan",
]


class ResponseTooLarge(SecAggError):
    """A download above `HttpSecureDevice.max_response_bytes`; refused before it is buffered."""


def encode_for_plan(
    u: npt.NDArray[np.float32],
    plan: SecurePlan,
    weight: int,
    rng: np.random.Generator,
    noise_rng: CtrRandom | None = None,
    node: int | None = None,
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.float64]]:
    """(vector uint64[plan.vector_len] in Z_{2^m}, sent float64[k]): ring input, what it stands for.

    `sent` is in the original coordinates of S_r, before noise; weight is clamped to
    1..plan.max_weight. A dithered plan needs the device's `node` id (its dither stream).
    """
    if u.shape != (plan.model_size,):
        raise ValueError(f"update of shape {u.shape}, plan is for {plan.model_size} values")
    value_dither = sketch_dither = None
    if plan.dither:
        if node is None:
            raise ValueError("a dithered plan needs the device's node id")
        value_dither = dither_uniforms(plan, node, plan.k, b"values")
        if plan.sketch_bits:
            sketch_dither = dither_uniforms(plan, node, plan.sketch_len, b"sketch")
    u_s = u[plan.indices].astype(np.float64)
    norm = float(np.linalg.norm(u_s))
    if norm > plan.clip_norm:
        u_s = u_s * (plan.clip_norm / norm)
    v = rotate(u_s, plan.rotation_seed) if plan.rotate else u_s
    q = quantize(v, plan.coord_bound, plan.value_bits, rng, value_dither)
    v_hat = dequantize(q, plan.coord_bound, plan.value_bits, value_dither)
    sent = unrotate(v_hat, plan.rotation_seed) if plan.rotate else v_hat
    w = max(1, min(int(weight), plan.max_weight))
    x = q * np.uint64(w)
    if plan.noise == NoiseKind.DISCRETE_GAUSSIAN:
        x = x + discrete_gaussian(plan.noise_variance, plan.k, noise_rng).astype(np.uint64)
    elif plan.noise == NoiseKind.SKELLAM:
        x = x + skellam(plan.noise_variance / 2.0, plan.k).astype(np.uint64)
    # int64 -> uint64 wraps negatives modulo 2^64; masking reduces modulo 2^m.
    sketch = (
        device_sketch(u, plan, rng, sketch_dither) if plan.sketch_bits else np.zeros(0, np.uint64)
    )
    vector = np.concatenate([x, sketch, np.array([w], dtype=np.uint64)]) & np.uint64(
        ring_mask(plan.ring_bits)
    )
    return vector, sent


def _check_settled(participant: SecureParticipant) -> None:
    if participant.unsettled is not None:
        raise ValueError(
            "an earlier masked input of this participant is still unsettled: settle it by its "
            "round's outcome (forget_sent / return_sent) before computing another"
        )


class SecureSession:
    """One device in one secure round; every method takes and returns wire bytes."""

    def __init__(
        self,
        participant: SecureParticipant,
        plan: SecurePlan,
        client: SecAggClient,
    ) -> None:
        self.participant = participant
        self.plan = plan
        self.client = client

    def advertise(self) -> bytes:
        return self.client.advertise().to_bytes()

    def share_keys(self, directory: bytes) -> bytes:
        msg = KeyDirectory.from_bytes(directory, self.plan.num_nodes)
        return self.client.share_keys(msg).to_bytes()

    def masked_input(
        self,
        delivery: bytes,
        delta: npt.NDArray[np.float32],
        weight: int,
        rng: np.random.Generator,
    ) -> bytes:
        """Encode `delta` (float32[d]) with the residual, commit the new residual, mask, pack.

        `ValueError`, with nothing changed, while the participant holds an earlier input not yet
        settled: this one would overwrite its record (`unsettled`), and that input could then
        not go back into the residual if its round ended without it."""
        p = self.participant
        _check_settled(p)
        msg = ShareDelivery.from_bytes(delivery, self.plan.num_nodes)
        if np.shape(delta) != (p.size,):  # (1,) would broadcast over the residual
            raise ValueError(f"update of shape {np.shape(delta)}, model has {p.size} values")
        with np.errstate(over="ignore", invalid="ignore"):
            u = np.asarray(delta, dtype=np.float32) + p.residual
        # Before anything changes: NaN would be cast to an arbitrary level, and the residual
        # kept (u minus what was sent) would be NaN for every later round.
        if not np.all(np.isfinite(u)):
            raise ValueError("update plus residual contains NaN or Inf")
        node = self.client.state.node
        vector, sent = encode_for_plan(u, self.plan, weight, rng, p.noise_rng, node)
        out = self.client.masked_input(msg, vector).to_bytes()
        residual = u.copy()
        residual[self.plan.indices] = (u[self.plan.indices].astype(np.float64) - sent).astype(
            np.float32
        )
        p.residual = residual
        p.unsettled = (np.asarray(self.plan.indices, dtype=np.int64), sent.astype(np.float32))
        return out

    def unmask(self, request: bytes) -> bytes:
        msg = UnmaskRequest.from_bytes(request, self.plan.num_nodes)
        return self.client.unmask(msg).to_bytes()


class SecureParticipant:
    """A device's long-lived secure-mode state: the error-feedback residual float32[size].

    `unsettled` is what the last masked input stood for, (S_r int64[k], sent float32[k]),
    until the round's outcome settles it: `return_sent` when the round ended without it in
    the model (aborted, abandoned, its group left out), `forget_sent` once it is.
    """

    def __init__(self, size: int, noise_rng: CtrRandom | None = None) -> None:
        if size <= 0:
            raise ValueError("size must be positive")
        self.size = size
        self.residual: npt.NDArray[np.float32] = np.zeros(size, dtype=np.float32)
        self.noise_rng = noise_rng or CtrRandom()
        self.unsettled: tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]] | None = None

    def sent_dense(self) -> npt.NDArray[np.float32] | None:
        """The unsettled content as float32[size] (zeros off S_r), or None."""
        if self.unsettled is None:
            return None
        out = np.zeros(self.size, dtype=np.float32)
        out[self.unsettled[0]] = self.unsettled[1]
        return out

    def return_sent(self) -> bool:
        """Add the unsettled content back into the residual (at most once); True if it did."""
        if self.unsettled is None:
            return False
        idx, sent = self.unsettled
        self.residual[idx] = (self.residual[idx] + sent).astype(np.float32)
        self.unsettled = None
        return True

    def forget_sent(self) -> None:
        """The unsettled content reached the model (or is held elsewhere): drop it."""
        self.unsettled = None

    def join(
        self,
        plan_bytes: bytes,
        announced_digest: bytes,
        params: npt.NDArray[np.float32],
        node: int,
    ) -> SecureSession:
        """Start a round: decode the plan under this device's size, check the (model, plan)
        digest against the model this device holds, and create the protocol client.

        Raises `ModelMismatch` if the server's digest is not the one this device computes.
        """
        plan = SecurePlan.from_bytes(plan_bytes, self.size)
        if plan.model_size != self.size or params.shape != (self.size,):
            raise ModelMismatch(f"plan for {plan.model_size} values, device model has {self.size}")
        pp = plan.protocol_params(model_digest(params))
        return SecureSession(self, plan, SecAggClient(pp, node, announced_digest))


class HttpSecureDevice:
    """A device in secure rounds of the loopback stage router (coordinator/service/
    _secagg_routes), which trusts the `x-plume-device` header: for tests only.

    Against the coordinator service use `sdk.client.Client.secure_round` (or `participate`),
    which signs every request with the device's key and counts it in the ledger. `client` is
    an `httpx.Client` whose transport is the only network seam; `headers` are added to every
    request (default: the device id in `x-plume-device`). Every response body is read in
    chunks and refused (`ResponseTooLarge`) past `max_response_bytes` (default: the SDK
    client's cap for secure-stage messages, `sdk.client.MAX_SECURE_RESPONSE`), so a hostile
    or broken server cannot make the device buffer more.
    """

    def __init__(
        self,
        client: Any,
        device_id: str,
        participant: SecureParticipant,
        headers: dict[str, str] | None = None,
        poll_s: float = 0.05,
        max_response_bytes: int | None = None,
    ) -> None:
        if max_response_bytes is None:
            from .client import MAX_SECURE_RESPONSE  # httpx is loaded only with this class

            max_response_bytes = MAX_SECURE_RESPONSE
        if max_response_bytes < 1:
            raise ValueError("max_response_bytes must be positive")
        ok = isinstance(poll_s, (int, float, np.floating, np.integer))
        if isinstance(poll_s, bool) or not (ok and math.isfinite(poll_s) and poll_s > 0):
            # 0 or a negative one polled a stage with no pause; NaN slept for ever.
            raise ValueError(f"poll_s must be a finite number of seconds > 0, got {poll_s!r}")
        self.client = client
        self.device_id = device_id
        self.participant = participant
        self.headers = headers if headers is not None else {"x-plume-device": device_id}
        # Bodies as they are: an inflated body is unbounded before any cap (as in sdk.client).
        self.headers = {"accept-encoding": "identity", **self.headers}
        self.poll_s = poll_s
        self.max_response_bytes = max_response_bytes

    def _capped(self, resp: Any, url: str) -> bytes:
        """A streamed response's body, refused once it passes the cap (or declares more)."""
        cap = self.max_response_bytes
        declared = resp.headers.get("content-length", "")
        # ASCII digits only: "²".isdigit() is true and int() refuses it.
        if (
            declared.isascii()
            and declared.isdigit()
            and (len(declared) > 19 or int(declared) > cap)
        ):
            raise ResponseTooLarge(f"{url}: response declares {declared} bytes, cap is {cap}")
        encoding = resp.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise ResponseTooLarge(
                f"{url}: a body with Content-Encoding {encoding!r} is refused (its inflated size "
                "is unbounded); the device asks for identity"
            )
        from .client import _raw_chunks

        chunks, size = [], 0
        for chunk in _raw_chunks(resp):
            size += len(chunk)
            if size > cap:
                raise ResponseTooLarge(f"{url}: response above the {cap}-byte cap; not read")
            chunks.append(chunk)
        return b"".join(chunks)

    def _get(self, url: str) -> tuple[int, Any, bytes]:
        """(status, headers, body) of a GET, the body read in chunks up to the cap."""
        with self.client.stream("GET", url, headers=self.headers) as resp:
            return resp.status_code, resp.headers, self._capped(resp, url)

    @staticmethod
    def _check(status: int, headers: Any, body: bytes) -> None:
        if status >= 400:
            detail: dict[str, Any] = {}
            if headers.get("content-type", "").startswith("application/json"):
                try:
                    parsed = json.loads(body)
                except (ValueError, RecursionError):  # "[[[[..." nests past the parser
                    parsed = None
                detail = parsed if isinstance(parsed, dict) else {}
            if status == 410:
                raise RoundAborted(str(detail.get("detail", "round aborted")))
            raise SecAggError(f"HTTP {status}: {detail}")

    def join(self, round_id: int, params: npt.NDArray[np.float32]) -> SecureSession:
        """Download the plan, check the digest against `params`, start the session."""
        status, headers, body = self._get(SecAggPath.SETUP.format(round_id=round_id))
        self._check(status, headers, body)
        try:
            digest = bytes.fromhex(headers[SecAggHeader.DIGEST])
            node = int(headers[SecAggHeader.NODE])
        except (KeyError, ValueError) as exc:
            raise ProtocolViolation(f"setup answer without a digest or node: {exc!r}") from exc
        return self.participant.join(body, digest, params, node)

    def upload(self, round_id: int, stage: Stage, body: bytes) -> None:
        url = SecAggPath.STAGE.format(round_id=round_id, stage=stage)
        headers = {**self.headers, "content-type": "application/octet-stream"}
        with self.client.stream("POST", url, content=body, headers=headers) as resp:
            status, answer = resp.status_code, resp.headers
            # Only an error's detail is read (capped); a 204 has no body.
            text = self._capped(resp, url) if status >= 400 else b""
        self._check(status, answer, text)

    def download(self, round_id: int, stage: Stage, timeout_s: float = 60.0) -> bytes | None:
        """The download after `stage`, polling while the stage is open (425); None once it is
        still open at `timeout_s` seconds (the last pause ends then, for a last poll)."""
        from .client import _MIN_POLL_S, _tick  # the SDK's one steady clock (CLOCK_BOOTTIME)

        url = SecAggPath.STAGE.format(round_id=round_id, stage=stage)
        deadline = _tick() + timeout_s
        # The shortest pause: a "Retry-After: 0" (or a negative one) must not make the device
        # poll as fast as the server answers (it did, for all of timeout_s).
        shortest = min(self.poll_s, _MIN_POLL_S)
        while True:
            status, headers, body = self._get(url)
            if status != 425:
                self._check(status, headers, body)
                return body
            left = deadline - _tick()
            if not left > 0:
                return None
            try:
                retry = float(headers.get("retry-after", self.poll_s))
            except ValueError:
                retry = self.poll_s
            if not math.isfinite(retry):  # time.sleep(nan) raises; max/min pass NaN through
                retry = self.poll_s
            # A pause ends at the deadline at the latest, for one last poll then: the whole
            # pause (up to 10 x poll_s) overran timeout_s.
            time.sleep(min(max(retry, shortest), self.poll_s * 10, left))

    def run_round(
        self,
        round_id: int,
        params: npt.NDArray[np.float32],
        delta: npt.NDArray[np.float32],
        weight: int,
        rng: np.random.Generator,
        timeout_s: float = 60.0,
        drop_at: Stage | None = None,
    ) -> bool:
        """All four stages, blocking; False if the device was left behind (a stage timed out).

        `drop_at` (simulation) makes the device go silent before uploading that stage. A
        participant still holding an earlier unsettled input is a `ValueError` before any
        request; the caller settles each round's input by its outcome (`forget_sent` /
        `return_sent`) after the round; this method returns it itself only when the round aborts
        (410) after the masked input.
        """
        _check_settled(self.participant)  # before joining: it would fail at the masked input
        sess = self.join(round_id, params)
        if drop_at == Stage.ADVERTISE_KEYS:
            return False
        self.upload(round_id, Stage.ADVERTISE_KEYS, sess.advertise())
        directory = self.download(round_id, Stage.ADVERTISE_KEYS, timeout_s)
        if directory is None or drop_at == Stage.SHARE_KEYS:
            return False
        self.upload(round_id, Stage.SHARE_KEYS, sess.share_keys(directory))
        delivery = self.download(round_id, Stage.SHARE_KEYS, timeout_s)
        if delivery is None or drop_at == Stage.MASKED_INPUT:
            return False
        body = sess.masked_input(delivery, delta, weight, rng)
        try:
            # An abort (410) at the upload itself publishes nothing either.
            self.upload(round_id, Stage.MASKED_INPUT, body)
            request = self.download(round_id, Stage.MASKED_INPUT, timeout_s)
            if request is None or drop_at == Stage.UNMASK:
                return False
            self.upload(round_id, Stage.UNMASK, sess.unmask(request))
        except RoundAborted:
            # Aborted (410) after the masked input: nothing of it reaches the model.
            self.participant.return_sent()
            raise
        return True
