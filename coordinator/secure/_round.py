"""One SecAgg+ instance on the server, addressed by device id and driven with wire bytes.

Transport-independent: the in-process simulator and an HTTP router both call `receive(stage,
device_id, body)` for each upload and `close(stage)` when a stage's deadline passes, and send
each device the bytes `close` returned for it. Upload and download bytes are counted per device
(and written to a `BandwidthLedger` if one is given).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from coordinator.ledger import BandwidthLedger
from coordinator.secure._config import group_count
from protocol.secagg import (
    AdvertiseKeys,
    MalformedMessage,
    MaskedInput,
    ProtocolViolation,
    RoundAborted,
    SecAggServer,
    SecurePlan,
    ShareKeys,
    Stage,
    UnmaskResponse,
    WrongAddress,
    WrongStage,
    decode_ring_sum,
    decode_sketch_sum,
    prg_bytes,
)
from protocol.secagg._crypto import KEY_BYTES, NONCE_BYTES, TAG_BYTES
from protocol.secagg._shamir import share_size

__all__ = ["SecureRound", "GroupResult", "BUNDLE_BYTES", "group_reason"]

# Every share bundle has one length: AES-GCM (nonce, tag) over `source u32 | dest u32 |
# u16 + share(mask key) | u16 + share(self-mask seed)`, both secrets 32 bytes. The server
# cannot decrypt a bundle, but it can refuse one of another length before relaying it (a
# neighbour would refuse it, and with it the whole round).
BUNDLE_BYTES = NONCE_BYTES + 8 + 2 * (2 + share_size(KEY_BYTES)) + TAG_BYTES


@dataclass(frozen=True, slots=True)
class GroupResult:
    """The decoded outcome of one SecAgg instance.

    mean: float64[k], the weighted mean of the contributors' dequantized values at S_r (noise
    included); weight: sum of their integer weights; unmask_s: server time in `finish`.
    """

    mean: npt.NDArray[np.float64]
    weight: int
    contributors: tuple[str, ...]
    dropped: tuple[str, ...]
    unmask_s: float
    sketch: npt.NDArray[np.float64] | None = None
    suspects: tuple[str, ...] = ()  # survivors whose unmask shares were wrong (set aside)


@dataclass
class SecureRound:
    """Server half of one secure aggregation over `device_ids` (node i is device_ids[i])."""

    plan: SecurePlan
    model_digest: bytes
    device_ids: tuple[str, ...]
    ledger: BandwidthLedger | None = None
    min_survivors: int | None = None
    bytes_up: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    bytes_down: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    stage_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    # Contributors whose noisy sum the server has unmasked (None until it has): under DP that
    # sum is released to the server even if the checks below then abort the group.
    unmasked: int | None = field(default=None, init=False)
    # Called once the masked-input stage closed without an abort; may abort the group
    # (`RoundAborted`). `SecureCoordinator.open_round` sets it to apply the round's
    # `min_contributors` (min_reports) before any unmask stage runs.
    after_masked_input: Callable[[], None] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if len(self.device_ids) != self.plan.num_nodes or len(set(self.device_ids)) != len(
            self.device_ids
        ):
            raise ValueError("device_ids must be plan.num_nodes distinct ids")
        self.params = self.plan.protocol_params(self.model_digest)
        self.server = SecAggServer(self.params, self.min_survivors)
        self._node = {d: i for i, d in enumerate(self.device_ids)}

    @property
    def plan_bytes(self) -> bytes:
        """The plan's canonical bytes, built when asked: the groups of a round share one copy
        of S_r's packed bytes (in their plans) instead of each keeping all of them."""
        return self.plan.to_bytes()

    @property
    def digest(self) -> bytes:
        """The per-round (model, plan) digest announced to devices."""
        return self.params.digest

    @property
    def stage(self) -> Stage:
        return self.server.stage

    def node_of(self, device_id: str) -> int:
        try:
            return self._node[device_id]
        except KeyError:
            raise ProtocolViolation(f"device {device_id!r} is not in this secure round") from None

    def _count(
        self, device_id: str, direction: Literal["up", "down"], nbytes: int, dense: int = 0
    ) -> None:
        """`dense`: the ledger's dense fp32 baseline of the message (only a masked input has
        one: it stands for the device's update)."""
        (self.bytes_up if direction == "up" else self.bytes_down)[device_id] += nbytes
        if self.ledger is not None:
            self.ledger.record(self.plan.round_id, device_id, direction, nbytes, None, dense)

    def announce(self) -> dict[str, bytes]:
        """The setup download: plan bytes (the digest goes alongside) for every device."""
        body = self.plan_bytes
        for d in self.device_ids:
            self._count(d, "down", len(body) + len(self.digest))
        return dict.fromkeys(self.device_ids, body)

    def announce_one(self, device_id: str) -> bytes:
        """The setup download of one device (plan bytes; the digest goes alongside)."""
        self.node_of(device_id)
        body = self.plan_bytes
        self._count(device_id, "down", len(body) + len(self.digest))
        return body

    def receive(self, stage: Stage, device_id: str, body: bytes) -> None:
        """One upload. Raises a `SecAggError` (and changes nothing) if it is refused."""
        node = self.node_of(device_id)
        p, n = self.params, self.plan.num_nodes
        t0 = time.perf_counter()
        if stage == Stage.ADVERTISE_KEYS:
            adv = AdvertiseKeys.from_bytes(body)
            self._check_sender(adv.node, node)
            self.server.receive_advertise(adv)
        elif stage == Stage.SHARE_KEYS:
            sk = ShareKeys.from_bytes(body, n)
            self._check_sender(sk.node, node)
            self._check_bundles(sk, node)
            self.server.receive_share_keys(sk)
        elif stage == Stage.MASKED_INPUT:
            mi = MaskedInput.from_bytes(body, p.vector_len, p.ring_bits)
            self._check_sender(mi.node, node)
            self.server.receive_masked_input(mi)
        elif stage == Stage.UNMASK:
            ur = UnmaskResponse.from_bytes(body, n)
            self._check_sender(ur.node, node)
            self.server.receive_unmask(ur)
        else:
            raise WrongStage(f"no uploads in stage {stage}")
        self.stage_seconds[str(stage)] += time.perf_counter() - t0
        # A masked input replaces the device's dense fp32 update: its dense baseline is the
        # whole model at 4 bytes a parameter, as the plain engine counts an accepted upload
        # (`ModelSpec.dense_bytes`) and the service counts a masked-input request.
        dense = 4 * self.plan.model_size if stage == Stage.MASKED_INPUT else 0
        self._count(device_id, "up", len(body), dense)

    def _check_bundles(self, sk: ShareKeys, node: int) -> None:
        """A share-keys upload holds one bundle of the one legal length for each live
        neighbour, no more and no fewer. The server relays bundles it cannot read; a short
        list would leave a neighbour without this node's shares (it then refuses to unmask,
        and the pairwise masks of the two would not cancel), a bundle of another length
        would make its recipient refuse the round."""
        for dest, ct in sk.ciphertexts:
            if len(ct) != BUNDLE_BYTES:
                raise MalformedMessage(
                    f"share bundle for node {dest} is {len(ct)} bytes, not {BUNDLE_BYTES}"
                )
        state = self.server.state
        if state.stage != Stage.SHARE_KEYS or node not in state.keys:
            return  # the server refuses it with the reason (wrong stage, no keys advertised)
        live = {j for j in state.graph[node] if j in state.keys}
        dests = [d for d, _ in sk.ciphertexts]
        if len(dests) != len(live) or set(dests) != live:
            raise WrongAddress(
                f"node {node} sent {len(dests)} share bundles; it must send one to each of its "
                f"{len(live)} neighbours with keys"
            )

    @staticmethod
    def _check_sender(claimed: int, actual: int) -> None:
        if claimed != actual:
            raise ProtocolViolation(f"message claims node {claimed}, sender is node {actual}")

    def close(self, stage: Stage) -> dict[str, bytes]:
        """End `stage`; returns the next download per device (empty after the unmask stage).

        Raises `RoundAborted` when too few devices are left.
        """
        t0 = time.perf_counter()
        out: dict[str, bytes]
        try:
            if stage == Stage.ADVERTISE_KEYS:
                closed = self.server.close_advertise()
                out = {self.device_ids[i]: m.to_bytes() for i, m in closed.items()}
            elif stage == Stage.SHARE_KEYS:
                delivered = self.server.close_share_keys()
                out = {self.device_ids[i]: m.to_bytes() for i, m in delivered.items()}
            elif stage == Stage.MASKED_INPUT:
                req = self.server.close_masked_input().to_bytes()
                out = {self.device_ids[i]: req for i in self.server.state.alive}
                if self.after_masked_input is not None:
                    self.after_masked_input()
            else:
                raise WrongStage(f"stage {stage} is closed by finish()")
        except RoundAborted as exc:
            raise self._naming_short(exc) from exc
        self.stage_seconds[f"close-{stage}"] += time.perf_counter() - t0
        for d, body in out.items():
            self._count(d, "down", len(body))
        return out

    @property
    def masked_inputs(self) -> int:
        """Masked inputs the server holds (fixed once the masked-input stage closed): the
        devices whose noise `finish` would unmask."""
        return len(self.server.state.contributors)

    def finish(self) -> GroupResult:
        """End the unmask stage: reconstruct, unmask the sum, decode it (or `RoundAborted`)."""
        t0 = time.perf_counter()
        try:
            res = self.server.finish()
        except RoundAborted as exc:
            raise self._naming_suspects(exc) from exc
        c, w_max = len(res.contributors), self.plan.max_weight
        self.unmasked = c
        reason = None
        if not c <= int(res.total[-1]) <= c * w_max:
            # Each device sends a weight in 1..w_max; any other total is a forged or corrupt
            # input, which would scale the mean (or, under dither, not decode at all).
            reason = (
                f"total weight {int(res.total[-1])} outside {c}..{c * w_max} ({c} inputs; "
                "forged or corrupt: a masked input whose masks do not cancel)"
            )
        elif bad := self._out_of_range(res.total, c):
            reason = f"{bad} level sums outside what {c} devices can send (forged or corrupt)"
        if reason is not None:
            self.server.abort(reason)
            raise RoundAborted(reason)
        mean, weight = decode_ring_sum(res.total, self.plan, res.contributors)
        sketch = (
            decode_sketch_sum(res.total, self.plan, res.contributors)
            if self.plan.sketch_bits
            else None
        )
        dt = time.perf_counter() - t0
        self.stage_seconds["unmask"] += dt
        return GroupResult(
            mean,
            weight,
            tuple(self.device_ids[i] for i in res.contributors),
            tuple(self.device_ids[i] for i in res.dropped),
            dt,
            sketch,
            tuple(self.device_ids[i] for i in res.suspects),
        )

    def _naming_short(self, exc: RoundAborted) -> RoundAborted:
        """`exc` (a stage close's abort), its reason followed by the device ids of the nodes
        the server found with fewer than t live neighbours, if it names any; the server's own
        `abort_reason` is set to the same text."""
        short = self.server.state.short_nodes
        if not short:
            return exc
        devices = [self.device_ids[i] for i in short[:5]]
        more = ", ..." if len(short) > 5 else ""
        reason = f"{exc}; devices, in node order: {devices}{more}"
        self.server.state.abort_reason = reason
        return RoundAborted(reason)

    def _naming_suspects(self, exc: RoundAborted) -> RoundAborted:
        """`exc` (the server's unmask abort), its reason followed by the device ids of the
        suspects it may name by node number (the error-correction budget's abort), so that a
        caller without the plan (mobile_sim, a log) can tell who lied; unchanged without
        suspects. The server's own `abort_reason` is set to the same text."""
        suspects = sorted(self.server.state.suspects)
        if not suspects:
            return exc
        devices = [self.device_ids[i] for i in suspects]
        reason = f"{exc}; suspect devices, in node order: {devices}"
        self.server.state.abort_reason = reason
        return RoundAborted(reason)

    def _out_of_range(self, total: npt.NDArray[np.uint64], contributors: int) -> int:
        """How many ring sums no honest cohort sends: values above W (2^b - 1) + headroom and
        below the top `headroom` ring values (read as negatives), sketch entries above
        c (2^sb - 1)."""
        p = self.plan
        values = total[: p.k]
        bad = values > np.uint64(int(total[-1]) * ((1 << p.value_bits) - 1) + p.noise_headroom)
        if p.noise_headroom:
            bad &= values < np.uint64((1 << p.ring_bits) - p.noise_headroom)
        sketch = total[p.k : p.k + p.sketch_len]
        top = contributors * ((1 << p.sketch_bits) - 1)
        return int(np.count_nonzero(bad)) + int(np.count_nonzero(sketch > np.uint64(top)))

    def abort(self, reason: str) -> None:
        self.server.abort(reason)


def group_reason(index: int, groups: int, why: str) -> str:
    """An aborted group's reason as a round records it: named ("group 2 of 4: ...") when the
    round has more than one group, so that each reason says which group it is for."""
    return why if groups <= 1 else f"group {index + 1} of {groups}: {why}"


def split_groups(
    device_ids: Sequence[str], group_size: int | None, seed: bytes
) -> list[tuple[str, ...]]:
    """Cohort -> groups of `group_size` (the last takes the remainder), shuffled by a public seed."""
    ids = list(device_ids)
    if group_size is None or group_size >= len(ids):
        return [tuple(ids)]
    keys = np.frombuffer(prg_bytes(seed, 8 * len(ids), b"groups"), dtype="<u8")
    order = [ids[i] for i in np.argsort(keys, kind="stable")]
    n_groups = group_count(len(ids), group_size)
    groups = [order[g * group_size : (g + 1) * group_size] for g in range(n_groups)]
    groups[-1].extend(order[n_groups * group_size :])
    return [tuple(g) for g in groups]
