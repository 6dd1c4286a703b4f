"""The server side of SecAgg+: relays keys and shares, sums masked inputs, unmasks only the sum.

The server keeps a running sum of masked inputs (never an individual vector), and reconstructs
secrets only after checking that every needed secret has at least t shares; otherwise the round
aborts with nothing reconstructed. A share that does not parse, or whose x is not its
sender's, or written for another threshold, is set aside on arrival (the rest of that answer
counts); wrong share values are corrected (Reed-Solomon decoding, up to (m - t) / 2 of m shares per
secret, and one of t + 1 by leaving each out in turn) and their senders named in
`SecAggResult.suspects`, so one lying survivor cannot abort the round unless dropouts left a
secret it lies about with exactly t shares (nothing to correct with).

Error correction is bounded in count and in size. One corrected secret costs O(m^2) field
operations per 15-byte chunk (syndromes and Berlekamp-Massey, `_shamir._berlekamp_welch`), the
order of the strict reconstruction every secret goes through anyway; the Berlekamp-Welch linear
system used before cost m^3 (m = 240: 12 s per secret), so 8 liars stretched a k = 240 unmask
from 4 s to 2 minutes. Once a sender is a suspect its shares are left out and the strict
reconstruction is tried first (a liar costs at most one corrected secret, not one per share it
holds), and at most `MAX_ROBUST_DECODES` secrets per instance are error-corrected; one more
aborts the round, naming the suspects found so far.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ._client import pair_mask_seed, pair_mask_sign, self_mask
from ._crypto import KEY_BYTES, agree, public_key_of
from ._errors import (
    DuplicateKey,
    ProtocolViolation,
    RoundAborted,
    SecAggError,
    WrongAddress,
    WrongStage,
)
from ._graph import neighbours
from ._packing import unpack_bits
from ._plan import ProtocolParams
from ._prg import expand_mask, ring_mask
from ._shamir import combine_shares, combine_shares_robust, share_params
from ._wire import (
    AdvertiseKeys,
    KeyDirectory,
    MaskedInput,
    ShareDelivery,
    ShareKeys,
    ShareKind,
    Stage,
    UnmaskRequest,
    UnmaskResponse,
)

__all__ = ["MAX_ROBUST_DECODES", "ServerState", "SecAggServer", "SecAggResult"]

# Secrets one instance may reconstruct with error correction (O(m^2) each). With suspects'
# shares left out first, each needs a liar the earlier ones did not catch, so an honest round
# uses none and a round with a few liars a few.
MAX_ROBUST_DECODES = 8


@dataclass(slots=True)
class ServerState:
    """What the server holds. `masked_sum` is the only vector, and it is always masked until
    `_finish` removes the masks from the sum as a whole."""

    params: ProtocolParams
    graph: list[tuple[int, ...]]
    min_survivors: int
    stage: Stage = Stage.ADVERTISE_KEYS
    keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # U1
    # `_fingerprint` of every advertised key: equal exactly when two keys agree the same
    # secrets with every private key (one point, or one point and a "twin", `_advertise`).
    fingerprints: set[bytes] = field(default_factory=set)
    outbox: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)
    senders: set[int] = field(default_factory=set)  # U2
    masked_sum: npt.NDArray[np.uint64] | None = None
    contributors: set[int] = field(default_factory=set)  # U3
    alive: tuple[int, ...] = ()
    dropped: tuple[int, ...] = ()
    responders: set[int] = field(default_factory=set)  # U4
    shares: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)  # (sender, share)
    holder_x: dict[int, dict[int, int]] = field(default_factory=dict)  # dealer -> holder -> x
    abort_reason: str = ""
    max_robust_decodes: int = MAX_ROBUST_DECODES
    robust_decodes: int = 0  # secrets `_finish` reconstructed with error correction
    suspects: set[int] = field(default_factory=set)  # responders with a share found wrong
    # Nodes a stage's close found with fewer than t live neighbours (`_short_of_neighbours`)
    short_nodes: tuple[int, ...] = ()
    # (holder, dealer, why) of each share set aside on arrival (`_unmask_response`)
    set_aside: list[tuple[int, int, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SecAggResult:
    """The unmasked sum (uint64[L] in Z_{2^m}) over exactly the nodes in `contributors`."""

    total: npt.NDArray[np.uint64]
    contributors: tuple[int, ...]
    dropped: tuple[int, ...]
    suspects: tuple[int, ...] = ()  # responders with a share set aside as wrong


def _abort(state: ServerState, reason: str) -> RoundAborted:
    state.stage = Stage.ABORTED
    state.abort_reason = reason
    state.masked_sum = None
    state.shares.clear()
    state.outbox.clear()
    return RoundAborted(reason)


# Any fixed scalar: X25519 with a low-order point gives the all-zero secret for every clamped
# scalar, so one trial agreement finds the keys that every neighbour's agreement would refuse.
_PROBE = bytes(range(1, 33))


def _fingerprint(key: bytes) -> bytes:
    """The server's probe agreement with `key`: `KeyAgreementFailed` for a key that is not
    canonical or is a low-order point, and equal for two keys exactly when they agree the same
    secret with every private key.

    X25519 clamps every private scalar to a multiple of 8, so a key P and P + T (T of order
    2, 4 or 8; adding the order-2 point (0, 0) maps u to 1/u mod 2^255 - 19) are different
    canonical bytes yet "the same key": a neighbour holding such a twin of a victim's mask key
    gets the victim the same pairwise seed as its original, with the opposite sign, so the
    two masks cancel in the victim's masked input. The probe scalar is not a multiple of
    either prime subgroup order, so its agreements differ for any two keys that are not twins.
    """
    return agree(_PROBE, key, b"plume-secagg-probe")


def _advertise(state: ServerState, msg: AdvertiseKeys) -> None:
    if msg.node in state.keys:
        raise ProtocolViolation(f"node {msg.node} advertised twice")
    # Compared by fingerprint, not bytes: a key's aliases (bit 255 set, u >= p) are refused as
    # not canonical, and its twins (same secrets, other bytes) fingerprint alike.
    enc_fp, mask_fp = _fingerprint(msg.enc_public), _fingerprint(msg.mask_public)
    if enc_fp in state.fingerprints or mask_fp in state.fingerprints or enc_fp == mask_fp:
        raise DuplicateKey(f"node {msg.node} advertised a public key already in use")
    state.keys[msg.node] = (msg.enc_public, msg.mask_public)
    state.fingerprints.update((enc_fp, mask_fp))


def _short_of_neighbours(
    state: ServerState, needed: set[int], live: set[int], what: str, stage: str
) -> None:
    """Abort at once (`RoundAborted`) if a node in `needed` has fewer than t neighbours in
    `live`: it refuses the next stage, or its secrets cannot be rebuilt from t shares, so the
    round cannot finish and the next stage is not opened for it. The nodes are kept in
    `state.short_nodes` (node numbers) so that a caller can name its devices."""
    t = state.params.threshold
    short = sorted(n for n in needed if sum(j in live for j in state.graph[n]) < t)
    if short:
        state.short_nodes = tuple(short)
        raise _abort(
            state,
            f"{len(short)} nodes have fewer than t={t} {what} at the close of {stage} "
            f"(e.g. {short[:5]}): the round cannot finish",
        )


def _directories(state: ServerState) -> dict[int, KeyDirectory]:
    p = state.params
    if len(state.keys) < state.min_survivors:
        raise _abort(state, f"{len(state.keys)} nodes advertised keys, need {state.min_survivors}")
    # A node shares only with t or more neighbours with keys, and masks only with t or more
    # that shared with it: peel off the nodes that cannot, until every one left can. If fewer
    # than the floor are left, no node set can get through the share-keys stage.
    able = set(state.keys)
    while short := {n for n in able if sum(j in able for j in state.graph[n]) < p.threshold}:
        able -= short
    if len(able) < state.min_survivors:
        lacking = sorted(set(state.keys) - able)
        state.short_nodes = tuple(lacking)
        raise _abort(
            state,
            f"{len(lacking)} of {len(state.keys)} nodes with keys have fewer than "
            f"t={p.threshold} neighbours with keys that can share (e.g. {lacking[:5]}); "
            f"{len(able)} can, need {state.min_survivors}: the round cannot finish",
        )
    out = {}
    for node in sorted(state.keys):
        entries = tuple((j, *state.keys[j]) for j in state.graph[node] if j in state.keys)
        out[node] = KeyDirectory(p.round_id, entries)
    state.stage = Stage.SHARE_KEYS
    return out


def _share_keys(state: ServerState, msg: ShareKeys) -> None:
    if msg.node not in state.keys:
        raise ProtocolViolation(f"node {msg.node} sent shares without advertising keys")
    if msg.node in state.senders:
        raise ProtocolViolation(f"node {msg.node} sent shares twice")
    allowed = {j for j in state.graph[msg.node] if j in state.keys}
    dests = [d for d, _ in msg.ciphertexts]
    # Exactly one bundle for each live neighbour: a neighbour left out never gets this node's
    # shares, so it does not mask with it, yet `_finish` would remove their pairwise mask if
    # this node drops (a wrong sum), and that neighbour refuses to unmask.
    if len(set(dests)) != len(dests) or set(dests) != allowed:
        raise WrongAddress(
            f"node {msg.node} sent {len(dests)} share bundles; it must send one to each of its "
            f"{len(allowed)} neighbours with keys, and to no other node"
        )
    for dest, ct in msg.ciphertexts:
        state.outbox.setdefault(dest, []).append((msg.node, ct))
    state.senders.add(msg.node)


def _deliveries(state: ServerState) -> dict[int, ShareDelivery]:
    p = state.params
    if len(state.senders) < state.min_survivors:
        raise _abort(state, f"{len(state.senders)} nodes shared keys, need {state.min_survivors}")
    # Every node that shared is needed at unmask, and only its neighbours that shared hold
    # its shares (and a device refuses to mask with fewer than t bundles).
    _short_of_neighbours(
        state, state.senders, state.senders, "neighbours that shared keys", "share keys"
    )
    out = {}
    for node in sorted(state.senders):
        cts = tuple(sorted((s, ct) for s, ct in state.outbox.get(node, []) if s in state.senders))
        out[node] = ShareDelivery(p.round_id, cts)
    state.outbox.clear()
    state.masked_sum = np.zeros(p.vector_len, dtype=np.uint64)
    state.stage = Stage.MASKED_INPUT
    return out


def _masked_input(state: ServerState, msg: MaskedInput) -> None:
    p = state.params
    if msg.node not in state.senders:
        raise ProtocolViolation(f"node {msg.node} sent a masked input without sharing keys")
    if msg.node in state.contributors:
        raise ProtocolViolation(f"node {msg.node} sent its masked input twice")
    if (msg.length, msg.bits) != (p.vector_len, p.ring_bits):
        raise ProtocolViolation("masked input has the wrong shape")
    y = unpack_bits(msg.packed, p.vector_len, p.ring_bits)
    assert state.masked_sum is not None
    state.masked_sum = (state.masked_sum + y) & np.uint64(ring_mask(p.ring_bits))
    state.contributors.add(msg.node)


def _unmask_request(state: ServerState) -> UnmaskRequest:
    p = state.params
    if len(state.contributors) < state.min_survivors:
        raise _abort(state, f"{len(state.contributors)} masked inputs, need {state.min_survivors}")
    # Each alive or dropped node's secret needs t shares from its alive neighbours, and an
    # alive device refuses the unmask request with fewer than t live neighbours.
    _short_of_neighbours(
        state, state.senders, state.contributors, "live neighbours", "masked input"
    )
    state.alive = tuple(sorted(state.contributors))
    state.dropped = tuple(sorted(state.senders - state.contributors))
    state.stage = Stage.UNMASK
    return UnmaskRequest(p.round_id, state.alive, state.dropped)


def _unmask_response(state: ServerState, msg: UnmaskResponse) -> None:
    if msg.node not in state.contributors:
        raise ProtocolViolation(f"node {msg.node} is not alive but sent unmask shares")
    if msg.node in state.responders:
        raise ProtocolViolation(f"node {msg.node} answered the unmask request twice")
    alive = set(state.alive)
    neighbours = set(state.graph[msg.node])  # a set: a tuple search per share is O(k^3) a group
    checked = []
    aside = []  # committed with `checked` once the whole answer passed: a refusal keeps nothing
    if len({about for about, _, _ in msg.shares}) != len(msg.shares):
        # A repeated share carries a repeated x: every reconstruction of that node would fail.
        raise ProtocolViolation(f"node {msg.node} sent two shares about one node")
    for about, kind, share in msg.shares:
        if about not in state.senders or about not in neighbours:
            raise ProtocolViolation(f"node {msg.node} sent a share about non-neighbour {about}")
        want = ShareKind.SELF_MASK if about in alive else ShareKind.MASK_KEY
        if kind != want:
            raise ProtocolViolation(f"node {msg.node} sent a {kind.name} share for node {about}")
        # The dealer numbered its holders 1.. in the order of its key directory (sorted ids of
        # its neighbours that advertised keys); any other x is a forgery or corruption.
        holders = state.holder_x.get(about)
        if holders is None:
            live = sorted(j for j in state.graph[about] if j in state.keys)
            holders = state.holder_x[about] = {j: x for x, j in enumerate(live, start=1)}
        # A share `_share_fault` finds is set aside, the rest of the answer kept: it counts as
        # if its holder had not sent it. The holder may have forged it, but an honest holder
        # relays what the dealer gave it (it cannot check a share), so refusing the whole
        # answer let one hostile dealer abort the round with honest holders named (helper-334).
        if (why := _share_fault(share, holders[msg.node], state.params.threshold)) is not None:
            aside.append((msg.node, about, why))
        else:
            checked.append((about, share))
    state.set_aside.extend(aside)
    for about, share in checked:
        state.shares.setdefault(about, []).append((msg.node, share))
    state.responders.add(msg.node)


def _share_fault(share: bytes, x_held: int, threshold: int) -> str | None:
    """Why a share cannot count, or None: it does not parse, carries another x than its
    holder's, or was written for another threshold or secret length. A share kept for t = 1
    would be a "group" of its own that recovers the sender's chosen secret when a node's
    honest shares are fewer than t (a wrong sum)."""
    try:
        t, x, secret_len = share_params(share)
    except SecAggError as exc:
        return f"malformed ({exc})"
    if x != x_held:
        return f"another holder's x ({x})"
    if (t, secret_len) != (threshold, KEY_BYTES):
        return f"threshold {t} of a {secret_len}-byte secret"
    return None


def _finish(state: ServerState) -> SecAggResult:
    p = state.params
    t = p.threshold
    needed = list(state.alive) + list(state.dropped)
    short = [n for n in needed if len(state.shares.get(n, ())) < t]
    if short:
        aside = ""
        if state.set_aside:
            shown = ", ".join(f"{h}->{d}: {why}" for h, d, why in state.set_aside[:3])
            aside = (
                f"; {len(state.set_aside)} shares set aside on arrival (holder->dealer: "
                f"{shown}{', ...' if len(state.set_aside) > 3 else ''})"
            )
        raise _abort(
            state, f"{len(short)} nodes have fewer than t={t} shares (e.g. {short[:5]}){aside}"
        )
    suspects = state.suspects

    def recover(node: int) -> bytes:
        pairs = state.shares[node]
        # A known suspect's shares left out, the strict reconstruction first (O(m t)): it
        # needs every share kept to be on the dealer's polynomial, and its commitment.
        kept = [share for sender, share in pairs if sender not in suspects]
        if len(kept) >= t:
            try:
                return combine_shares(kept)
            except SecAggError:
                pass
        if state.robust_decodes >= state.max_robust_decodes:
            raise _abort(
                state,
                f"unmask shares of more than {state.max_robust_decodes} secrets needed error "
                f"correction (the most one group corrects); suspect nodes, each with a share "
                f"off its dealer's polynomial: {sorted(suspects)}",
            )
        state.robust_decodes += 1
        secret, unused = combine_shares_robust([share for _, share in pairs], t)
        suspects.update(pairs[i][0] for i in unused)
        return secret

    try:
        seeds = {n: recover(n) for n in state.alive}
        keys = {n: recover(n) for n in state.dropped}
    except RoundAborted:
        raise
    except SecAggError as exc:
        raise _abort(state, f"share reconstruction failed: {exc}") from exc
    for n, sk in keys.items():
        if public_key_of(sk) != state.keys[n][1]:
            raise _abort(state, f"reconstructed mask key of node {n} does not match its public key")
    assert state.masked_sum is not None
    total = state.masked_sum.copy()
    for n in state.alive:
        total -= self_mask(seeds[n], p.vector_len, p.ring_bits)
    alive = set(state.alive)
    for d in state.dropped:
        for i in state.graph[d]:
            if i in alive:
                seed = pair_mask_seed(keys[d], state.keys[i][1], p.digest)
                pm = expand_mask(seed, p.vector_len, p.ring_bits, b"pair-mask")
                # Node i added sign(i, d) * pm; take it back out.
                total = total - pm if pair_mask_sign(i, d) > 0 else total + pm
    total &= np.uint64(ring_mask(p.ring_bits))
    state.masked_sum = None
    state.shares.clear()
    state.stage = Stage.DONE
    return SecAggResult(total, state.alive, state.dropped, tuple(sorted(suspects)))


class SecAggServer:
    """The server's half of one secure round. Messages from nodes that dropped are simply never
    passed in; the `close_*` calls end a stage with whoever answered."""

    def __init__(
        self,
        params: ProtocolParams,
        min_survivors: int | None = None,
        max_robust_decodes: int | None = None,
    ) -> None:
        """`max_robust_decodes`: secrets `finish` may reconstruct with error correction before
        it aborts (default `MAX_ROBUST_DECODES`, read when the server is made)."""
        if max_robust_decodes is None:
            max_robust_decodes = MAX_ROBUST_DECODES
        if max_robust_decodes < 0:
            raise ValueError(f"max_robust_decodes must be >= 0, got {max_robust_decodes}")
        graph = neighbours(params.num_nodes, params.degree, params.graph_seed)
        floor = params.threshold if min_survivors is None else min_survivors
        self.state = ServerState(
            params, graph, max(2, floor), max_robust_decodes=max_robust_decodes
        )

    @property
    def stage(self) -> Stage:
        return self.state.stage

    def _expect(self, stage: Stage, round_id: int | None = None, node: int | None = None) -> None:
        if self.state.stage != stage:
            raise WrongStage(f"server is in stage {self.state.stage}, message is for {stage}")
        p = self.state.params
        if round_id is not None and round_id != p.round_id:
            raise ProtocolViolation(f"message for round {round_id}, this is round {p.round_id}")
        if node is not None and not 0 <= node < p.num_nodes:
            raise ProtocolViolation(f"node {node} outside 0..{p.num_nodes - 1}")

    def receive_advertise(self, msg: AdvertiseKeys) -> None:
        self._expect(Stage.ADVERTISE_KEYS, msg.round_id, msg.node)
        _advertise(self.state, msg)

    def close_advertise(self) -> dict[int, KeyDirectory]:
        """End stage 1: per live node, the keys of its live neighbours."""
        self._expect(Stage.ADVERTISE_KEYS)
        return _directories(self.state)

    def receive_share_keys(self, msg: ShareKeys) -> None:
        self._expect(Stage.SHARE_KEYS, msg.round_id, msg.node)
        _share_keys(self.state, msg)

    def close_share_keys(self) -> dict[int, ShareDelivery]:
        """End stage 2: per node that shared, the bundles addressed to it."""
        self._expect(Stage.SHARE_KEYS)
        return _deliveries(self.state)

    def receive_masked_input(self, msg: MaskedInput) -> None:
        self._expect(Stage.MASKED_INPUT, msg.round_id, msg.node)
        _masked_input(self.state, msg)

    def close_masked_input(self) -> UnmaskRequest:
        """End stage 3: the alive and dropped lists every survivor receives."""
        self._expect(Stage.MASKED_INPUT)
        return _unmask_request(self.state)

    def receive_unmask(self, msg: UnmaskResponse) -> None:
        self._expect(Stage.UNMASK, msg.round_id, msg.node)
        _unmask_response(self.state, msg)

    def finish(self) -> SecAggResult:
        """End stage 4: reconstruct, remove all masks from the sum, return it (or abort)."""
        self._expect(Stage.UNMASK)
        return _finish(self.state)

    def abort(self, reason: str) -> None:
        """Give up the round, dropping every secret share and the masked sum."""
        _abort(self.state, reason)
