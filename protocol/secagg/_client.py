"""The device side of SecAgg+: a state dataclass, the stage enum, one private function per stage.

    advertise keys -> share keys -> masked input -> unmask

`SecAggClient` only dispatches and checks the stage; the stage functions do the work and raise a
`SecAggError` subclass whenever a refusal rule fires. A refused client sends nothing further.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ._crypto import (
    agree,
    decrypt,
    encrypt,
    generate_keypair,
    share_associated_data,
)
from ._errors import (
    DecryptionFailed,
    DuplicateKey,
    MalformedMessage,
    ModelMismatch,
    ProtocolViolation,
    RepeatedShareRequest,
    RoundAborted,
    WrongAddress,
    WrongStage,
)
from ._graph import neighbours_of
from ._packing import pack_bits
from ._plan import ProtocolParams
from ._prg import expand_mask, ring_mask
from ._shamir import create_shares
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

__all__ = ["ClientState", "SecAggClient", "pair_mask_seed", "self_mask", "pair_mask_sign"]

_PLAIN_HEAD = struct.Struct("<II")


def pair_mask_seed(mask_private: bytes, peer_mask_public: bytes, digest: bytes) -> bytes:
    """The 32-byte seed of the pairwise mask between two nodes (same at both ends)."""
    return agree(mask_private, peer_mask_public, b"plume-secagg-mask\0" + digest)


def self_mask(seed: bytes, length: int, bits: int) -> npt.NDArray[np.uint64]:
    """The self-mask PRG(b_i): uint64[length] in Z_{2^bits}."""
    return expand_mask(seed, length, bits, b"self-mask")


def pair_mask_sign(node: int, peer: int) -> int:
    """+1 for the lower-numbered node of a pair, -1 for the higher: the two masks cancel."""
    return 1 if node < peer else -1


def _enc_key(enc_private: bytes, peer_enc_public: bytes, digest: bytes) -> bytes:
    return agree(enc_private, peer_enc_public, b"plume-secagg-enc\0" + digest)


def _key_fingerprint(state: ClientState, key: bytes) -> bytes:
    """The pair seed `key` derives with this device's mask key: for a neighbour's mask key
    its pairwise mask seed. Equal for two keys exactly when they agree the same secrets with
    every private key (X25519 clamps scalars to multiples of 8, so P and P + T for T of order
    2, 4 or 8 agree alike); `KeyAgreementFailed` for a non-canonical or low-order key."""
    return pair_mask_seed(state.mask_private, key, state.params.digest)


@dataclass(slots=True)
class ClientState:
    """Everything one device holds during a secure round (secrets never leave except as shares)."""

    params: ProtocolParams
    node: int
    graph_neighbours: frozenset[int]
    stage: Stage = Stage.ADVERTISE_KEYS
    enc_private: bytes = b""
    enc_public: bytes = b""
    mask_private: bytes = b""
    mask_public: bytes = b""
    self_seed: bytes = b""
    peer_keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    held_shares: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    released: set[int] = field(default_factory=set)


def _advertise(state: ClientState) -> AdvertiseKeys:
    state.enc_private, state.enc_public = generate_keypair()
    state.mask_private, state.mask_public = generate_keypair()
    state.self_seed = os.urandom(32)
    state.stage = Stage.SHARE_KEYS
    return AdvertiseKeys(state.params.round_id, state.node, state.enc_public, state.mask_public)


def _share_keys(state: ClientState, directory: KeyDirectory) -> ShareKeys:
    p = state.params
    seen_nodes: set[int] = set()
    # Keys are compared by the pair seed each derives with this device's mask key, not by
    # bytes: a "twin" (u -> 1/u, or any key off by a point of order 2, 4 or 8) is other
    # canonical bytes that agree the same secrets. A neighbour holding a twin of another
    # neighbour's mask key would get a pairwise mask equal to that neighbour's, of the
    # opposite sign, and the two would cancel in this device's masked input. Two equal pair
    # seeds mean two equal derived encryption keys too (a twin agrees alike with every key).
    seen_keys = {
        _key_fingerprint(state, state.enc_public),
        _key_fingerprint(state, state.mask_public),
    }
    for node, epk, mpk in directory.entries:
        if node not in state.graph_neighbours:
            raise ProtocolViolation(f"node {node} is not a neighbour of {state.node}")
        if node in seen_nodes:
            raise DuplicateKey(f"node {node} listed twice in the key directory")
        seen_nodes.add(node)
        for key in (epk, mpk):
            # KeyAgreementFailed for a key not canonical (an alias) or of low order.
            fingerprint = _key_fingerprint(state, key)
            if fingerprint in seen_keys:
                raise DuplicateKey(f"public key of node {node} duplicates another key")
            seen_keys.add(fingerprint)
    if len(directory.entries) < p.threshold:
        raise RoundAborted(
            f"{len(directory.entries)} neighbours advertised keys, threshold is {p.threshold}"
        )
    entries = sorted(directory.entries)
    state.peer_keys = {node: (epk, mpk) for node, epk, mpk in entries}
    key_shares = create_shares(state.mask_private, p.threshold, len(entries))
    seed_shares = create_shares(state.self_seed, p.threshold, len(entries))
    cts = []
    for (dest, epk, _), ks, ss in zip(entries, key_shares, seed_shares, strict=True):
        plain = (
            _PLAIN_HEAD.pack(state.node, dest)
            + struct.pack("<H", len(ks)) + ks
            + struct.pack("<H", len(ss)) + ss
        )  # fmt: skip
        ad = share_associated_data(p.digest, p.round_id, state.node, dest)
        cts.append((dest, encrypt(_enc_key(state.enc_private, epk, p.digest), plain, ad)))
    state.stage = Stage.MASKED_INPUT
    return ShareKeys(p.round_id, state.node, tuple(cts))


def _parse_bundle(plain: bytes) -> tuple[int, int, bytes, bytes]:
    try:
        src, dst = _PLAIN_HEAD.unpack_from(plain)
        pos = _PLAIN_HEAD.size
        (n1,) = struct.unpack_from("<H", plain, pos)
        ks = plain[pos + 2 : pos + 2 + n1]
        pos += 2 + n1
        (n2,) = struct.unpack_from("<H", plain, pos)
        ss = plain[pos + 2 : pos + 2 + n2]
        if len(ks) != n1 or len(ss) != n2 or pos + 2 + n2 != len(plain):
            raise MalformedMessage("share bundle lengths do not add up")
    except struct.error as exc:
        raise MalformedMessage(f"share bundle truncated: {exc}") from exc
    return src, dst, ks, ss


def _masked_input(
    state: ClientState, delivery: ShareDelivery, vector: npt.NDArray[np.uint64]
) -> MaskedInput:
    p = state.params
    x = np.ascontiguousarray(vector, dtype=np.uint64).reshape(-1)
    if x.size != p.vector_len:
        raise ValueError(f"input of {x.size} elements, round expects {p.vector_len}")
    mask = np.uint64(ring_mask(p.ring_bits))
    if np.any(x > mask):
        raise ValueError(f"input element above 2^{p.ring_bits} - 1")
    held: dict[int, tuple[bytes, bytes]] = {}
    for src, ct in delivery.ciphertexts:
        if src not in state.peer_keys:
            raise WrongAddress(f"ciphertext from {src}, which is not a neighbour with keys")
        if src in held:
            raise ProtocolViolation(f"two ciphertexts from node {src}")
        ad = share_associated_data(p.digest, p.round_id, src, state.node)
        try:
            plain = decrypt(_enc_key(state.enc_private, state.peer_keys[src][0], p.digest), ct, ad)
        except DecryptionFailed as exc:
            raise WrongAddress(
                f"ciphertext labelled {src} -> {state.node} does not decrypt"
            ) from exc
        got_src, got_dst, ks, ss = _parse_bundle(plain)
        if (got_src, got_dst) != (src, state.node):
            raise WrongAddress(
                f"bundle says {got_src} -> {got_dst}, relayed as {src} -> {state.node}"
            )
        held[src] = (ks, ss)
    if len(held) < p.threshold:
        raise RoundAborted(f"shares from {len(held)} neighbours, threshold is {p.threshold}")
    state.held_shares = held
    # Wrapping uint64 arithmetic then one reduction: Z_{2^64} -> Z_{2^m} is a ring homomorphism.
    y = x + self_mask(state.self_seed, p.vector_len, p.ring_bits)
    for peer in sorted(held):
        seed = pair_mask_seed(state.mask_private, state.peer_keys[peer][1], p.digest)
        pm = expand_mask(seed, p.vector_len, p.ring_bits, b"pair-mask")
        y = y + pm if pair_mask_sign(state.node, peer) > 0 else y - pm
    y &= mask
    state.stage = Stage.UNMASK
    return MaskedInput(p.round_id, state.node, p.vector_len, p.ring_bits, pack_bits(y, p.ring_bits))


def _unmask(state: ClientState, request: UnmaskRequest) -> UnmaskResponse:
    p = state.params
    alive, dropped = set(request.alive), set(request.dropped)
    if len(alive) != len(request.alive) or len(dropped) != len(request.dropped):
        raise RepeatedShareRequest("a node is named twice in the unmask request")
    both = alive & dropped
    if both:
        raise RepeatedShareRequest(f"nodes {sorted(both)[:5]} named both alive and dropped")
    if state.node not in alive:
        raise ProtocolViolation(f"unmask request does not list node {state.node} as alive")
    held = set(state.held_shares)
    unlisted = held - alive - dropped
    if unlisted:
        raise ProtocolViolation(f"neighbours {sorted(unlisted)[:5]} are neither alive nor dropped")
    stray = (dropped - held) & state.graph_neighbours
    if stray:
        raise ProtocolViolation(f"dropped neighbours {sorted(stray)[:5]} never sent shares")
    live_neighbours = alive & held
    if len(live_neighbours) < p.threshold:
        raise RoundAborted(f"{len(live_neighbours)} live neighbours, threshold is {p.threshold}")
    out: list[tuple[int, ShareKind, bytes]] = []
    for node in sorted(held):
        if node in state.released:
            raise RepeatedShareRequest(f"a share for node {node} was already released")
        ks, ss = state.held_shares[node]
        out.append(
            (node, ShareKind.SELF_MASK, ss) if node in alive else (node, ShareKind.MASK_KEY, ks)
        )
    state.released.update(held)
    state.stage = Stage.DONE
    return UnmaskResponse(p.round_id, state.node, tuple(out))


class SecAggClient:
    """One device in one secure round.

    `announced_digest` is the digest the server sent; `params.digest` is the one this device
    computed from its own model and plan. They must agree (model-inconsistency defence).
    """

    def __init__(self, params: ProtocolParams, node: int, announced_digest: bytes) -> None:
        if announced_digest != params.digest:
            raise ModelMismatch("the server's model/plan digest differs from this device's")
        if not 0 <= node < params.num_nodes:
            # The node index comes from the server (a setup header): a typed refusal.
            raise ProtocolViolation(f"node {node} outside 0..{params.num_nodes - 1}")
        if 2 * params.threshold <= params.degree:
            # At t <= k/2 two disjoint sets of t neighbours exist: a server that tells them
            # different (each consistent) alive/dropped lists gets both of a node's secrets.
            raise ProtocolViolation(
                f"threshold {params.threshold} is not above half the degree {params.degree}"
            )
        if params.num_nodes < 3 or params.threshold < 2:
            # With two devices (k = 1, t = 1) one neighbour listed alive is enough to unmask,
            # and the sum less a colluding device's own update is this device's update. The
            # coordinator plans n >= 3, where the degree checks give t >= 2, so every unmask
            # needs t + 1 >= 3 survivors; a plan below that is a deviating server's. (After
            # the 2t > k check, which already refuses t < 2 whenever k >= 2.)
            raise ProtocolViolation(
                f"a plan of {params.num_nodes} nodes at threshold {params.threshold}: secure "
                "aggregation needs at least 3 nodes and a threshold of at least 2"
            )
        mine = neighbours_of(params.num_nodes, params.degree, params.graph_seed, node)
        self.state = ClientState(params, node, frozenset(mine))

    @property
    def stage(self) -> Stage:
        return self.state.stage

    def _expect(self, stage: Stage, round_id: int | None = None) -> None:
        if self.state.stage == Stage.DONE and stage == Stage.UNMASK:
            raise RepeatedShareRequest("a second unmask request in one round")
        if self.state.stage != stage:
            raise WrongStage(f"client is in stage {self.state.stage}, message is for {stage}")
        if round_id is not None and round_id != self.state.params.round_id:
            raise ProtocolViolation(
                f"message for round {round_id}, this is round {self.state.params.round_id}"
            )

    def advertise(self) -> AdvertiseKeys:
        """Stage 1: fresh key pairs and self-mask seed; returns the public keys to upload."""
        self._expect(Stage.ADVERTISE_KEYS)
        return _advertise(self.state)

    def share_keys(self, directory: KeyDirectory) -> ShareKeys:
        """Stage 2: check neighbours' keys, Shamir-share secrets, encrypt one bundle per neighbour."""
        self._expect(Stage.SHARE_KEYS, directory.round_id)
        return _share_keys(self.state, directory)

    def masked_input(self, delivery: ShareDelivery, vector: npt.NDArray[np.uint64]) -> MaskedInput:
        """Stage 3: decrypt and check bundles, then mask `vector` (uint64[L] in Z_{2^m}) and pack."""
        self._expect(Stage.MASKED_INPUT, delivery.round_id)
        return _masked_input(self.state, delivery, vector)

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Stage 4: one share per neighbour, self-mask seed if alive, mask key if dropped."""
        self._expect(Stage.UNMASK, request.round_id)
        return _unmask(self.state, request)
