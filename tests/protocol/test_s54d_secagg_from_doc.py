"""docs/secure-aggregation.md, read as a port would: its byte layouts, labels, key derivations,
PRG, mask arithmetic, share encoding, byte counts and tables, checked against `protocol.secagg`.

The doc side is written here from the document alone: message layouts from "Protocol messages",
HKDF-SHA256 by hand (RFC 5869, HMAC from the standard library), AES-256-CTR by hand from AES
block encryptions of a zero counter block, Shamir over GF(2^127 - 1) with Lagrange at 0. The
package only runs the round (real `SecAggClient`s and `SecAggServer`, every message through its
bytes); everything the doc describes is then recomputed from the devices' secrets and compared.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import zstandard
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import secagg
from protocol.secagg import (
    AdvertiseKeys,
    KeyDirectory,
    MaskedInput,
    ProtocolParams,
    SecAggClient,
    SecAggServer,
    ShareDelivery,
    ShareKeys,
    ShareKind,
    UnmaskRequest,
    UnmaskResponse,
)

DOC = (Path(__file__).resolve().parents[2] / "docs" / "secure-aggregation.md").read_text()
SETTINGS = settings(
    max_examples=40, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
U64 = npt.NDArray[np.uint64]
PRIME = (1 << 127) - 1

# "Each label above is followed by one zero byte on the wire"
ROUND_LABEL = b"plume-round-v1\0"
ENC_LABEL = b"plume-secagg-enc\0"
MASK_LABEL = b"plume-secagg-mask\0"
AAD_LABEL = b"plume-secagg-share-v1\0"
PRG_LABEL = b"plume-prg-v1\0"
COMMIT_LABEL = b"plume-shamir-commit-v1\0"
CHECK_LABEL = b"plume-shamir-share-v1\0"

# -- the doc's primitives -----------------------------------------------------------------------


def hkdf(secret: bytes, info: bytes) -> bytes:
    """HKDF-SHA256, no salt (RFC 5869: a zero salt of the hash length), 32 bytes out."""
    prk = hmac.new(bytes(32), secret, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def x25519(private: bytes, public: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(public)
    )


def prg(seed: bytes, use: bytes, nbytes: int) -> bytes:
    """AES-256-CTR under HKDF(seed, "plume-prg-v1\\0" || use), counter block 0, 1, 2, ...
    (a 128-bit big-endian integer), built from single-block AES encryptions."""
    key = hkdf(seed, PRG_LABEL + use)
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    blocks = b"".join(i.to_bytes(16, "big") for i in range(-(-nbytes // 16)))
    return (ecb.update(blocks) + ecb.finalize())[:nbytes]


def mask_words(seed: bytes, use: bytes, count: int, m: int) -> list[int]:
    """Words of 4 bytes when m <= 32, 8 bytes otherwise, little-endian, masked to m bits."""
    width = 4 if m <= 32 else 8
    raw = prg(seed, use, count * width)
    return [
        int.from_bytes(raw[i * width : (i + 1) * width], "little") & ((1 << m) - 1)
        for i in range(count)
    ]


def pack_m(values: list[int], m: int) -> bytes:
    acc = 0
    for i, v in enumerate(values):
        acc |= v << (i * m)
    return acc.to_bytes(-(-len(values) * m // 8), "little")


# -- Shamir shares ------------------------------------------------------------------------------


def parse_share(share: bytes) -> tuple[int, int, int, bytes, list[int]]:
    """`version | threshold u16 | x u16 | secret_len u16 | commit[16] | y chunks[16 each] |
    check[8]`; returns (t, x, secret_len, commit, ys) after checking `check`."""
    version, t, x, secret_len = struct.unpack_from("<BHHH", share)
    assert version == 1
    body, check = share[:-8], share[-8:]
    assert hashlib.sha256(CHECK_LABEL + body).digest()[:8] == check
    commit = body[7:23]
    ys = [int.from_bytes(body[i : i + 16], "little") for i in range(23, len(body), 16)]
    assert len(ys) == -(-secret_len // 15)
    return t, x, secret_len, commit, ys


def combine(shares: list[bytes]) -> bytes:
    """Lagrange interpolation at 0 of each 15-byte chunk, from any t shares."""
    parsed = [parse_share(s) for s in shares]
    t, _, secret_len, commit, _ = parsed[0]
    use = parsed[:t]
    out = b""
    for c in range(len(use[0][4])):
        s = 0
        for i, (_, xi, _, _, ys) in enumerate(use):
            num, den = 1, 1
            for j, (_, xj, _, _, _) in enumerate(use):
                if j != i:
                    num = num * (-xj) % PRIME
                    den = den * (xi - xj) % PRIME
            s = (s + ys[c] * num * pow(den, -1, PRIME)) % PRIME
        width = min(15, secret_len - 15 * c)
        out += s.to_bytes(width, "little")
    assert hashlib.sha256(COMMIT_LABEL + out).digest()[:16] == commit
    return out


def make_share(secret: bytes, t: int, x: int, coeffs: list[list[int]]) -> bytes:
    """A share as the doc lays it out, f(0) = the chunk read little-endian."""
    body = struct.pack("<BHHH", 1, t, x, len(secret))
    body += hashlib.sha256(COMMIT_LABEL + secret).digest()[:16]
    for c, rest in enumerate(coeffs):
        poly = [int.from_bytes(secret[15 * c : 15 * c + 15], "little"), *rest]
        body += (sum(a * x**i for i, a in enumerate(poly)) % PRIME).to_bytes(16, "little")
    return body + hashlib.sha256(CHECK_LABEL + body).digest()[:8]


# -- messages: "PSA1" | kind u8 | round_id u64 | body ------------------------------------------


def head(kind: int, round_id: int) -> bytes:
    return b"PSA1" + struct.pack("<BQ", kind, round_id)


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def blob(b: bytes) -> bytes:
    return u32(len(b)) + b


def read_head(msg: bytes, kind: int) -> tuple[int, bytes]:
    assert msg[:4] == b"PSA1" and msg[4] == kind
    return struct.unpack_from("<Q", msg, 5)[0], msg[13:]


def read_pairs(body: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """u32 count, then (u32, u32-length-prefixed bytes) each; returns the rest."""
    (n,) = struct.unpack_from("<I", body)
    pos, out = 4, []
    for _ in range(n):
        a, ln = struct.unpack_from("<II", body, pos)
        out.append((a, body[pos + 8 : pos + 8 + ln]))
        pos += 8 + ln
    return out, body[pos:]


keys = st.binary(min_size=32, max_size=32)
nodes = st.integers(0, 2**32 - 1)
rounds = st.integers(0, 2**64 - 1)
blobs = st.binary(max_size=40)


@SETTINGS
@given(
    r=rounds,
    node=nodes,
    k1=keys,
    k2=keys,
    entries=st.lists(st.tuples(nodes, keys, keys), max_size=4),
    cts=st.lists(st.tuples(nodes, blobs), max_size=4),
    length=st.integers(0, 30),
    bits=st.integers(1, 64),
    alive=st.lists(nodes, max_size=4),
    dropped=st.lists(nodes, max_size=4),
    shares=st.lists(st.tuples(nodes, st.sampled_from([1, 2]), blobs), max_size=4),
)
def test_every_message_is_laid_out_as_the_table_says(
    r: int,
    node: int,
    k1: bytes,
    k2: bytes,
    entries: list[tuple[int, bytes, bytes]],
    cts: list[tuple[int, bytes]],
    length: int,
    bits: int,
    alive: list[int],
    dropped: list[int],
    shares: list[tuple[int, int, bytes]],
) -> None:
    packed = bytes(-(-length * bits // 8))
    cases = [
        (AdvertiseKeys(r, node, k1, k2), head(1, r) + u32(node) + k1 + k2),
        (
            KeyDirectory(r, tuple(entries)),
            head(2, r) + u32(len(entries)) + b"".join(u32(n) + e + m for n, e, m in entries),
        ),
        (
            ShareKeys(r, node, tuple(cts)),
            head(3, r) + u32(node) + u32(len(cts)) + b"".join(u32(d) + blob(c) for d, c in cts),
        ),
        (
            ShareDelivery(r, tuple(cts)),
            head(4, r) + u32(len(cts)) + b"".join(u32(s) + blob(c) for s, c in cts),
        ),
        (
            MaskedInput(r, node, length, bits, packed),
            head(5, r) + u32(node) + u32(length) + bytes([bits]) + packed,
        ),
        (
            UnmaskRequest(r, tuple(alive), tuple(dropped)),
            head(6, r)
            + u32(len(alive))
            + b"".join(map(u32, alive))
            + u32(len(dropped))
            + b"".join(map(u32, dropped)),
        ),
        (
            UnmaskResponse(r, node, tuple((a, ShareKind(k), s) for a, k, s in shares)),
            head(7, r)
            + u32(node)
            + u32(len(shares))
            + b"".join(u32(a) + bytes([k]) + blob(s) for a, k, s in shares),
        ),
    ]
    for msg, doc_bytes in cases:
        assert msg.to_bytes() == doc_bytes, type(msg).__name__
        if isinstance(msg, MaskedInput):
            assert MaskedInput.from_bytes(doc_bytes, length, bits) == msg
        elif isinstance(msg, AdvertiseKeys):
            assert AdvertiseKeys.from_bytes(doc_bytes) == msg
        else:
            assert type(msg).from_bytes(doc_bytes, 8) == msg  # type: ignore[attr-defined]
        with pytest.raises(secagg.MalformedMessage):  # "refuse trailing bytes"
            if isinstance(msg, MaskedInput):
                MaskedInput.from_bytes(doc_bytes + b"\0", length, bits)
            elif isinstance(msg, AdvertiseKeys):
                AdvertiseKeys.from_bytes(doc_bytes + b"\0")
            else:
                type(msg).from_bytes(doc_bytes + b"\0", 8)  # type: ignore[attr-defined]


@SETTINGS
@given(
    seed=keys,
    use=st.sampled_from([b"self-mask", b"pair-mask", b"graph", b"x"]),
    m=st.sampled_from([1, 7, 24, 32, 33, 40, 63, 64]),
    count=st.integers(0, 40),
)
def test_the_prg_and_its_words_are_the_documented_ones(
    seed: bytes, use: bytes, m: int, count: int
) -> None:
    assert secagg.prg_bytes(seed, 3 * count + 5, use) == prg(seed, use, 3 * count + 5)
    got = secagg.expand_mask(seed, count, m, use)
    assert got.tolist() == mask_words(seed, use, count, m)


@SETTINGS
@given(
    secret=st.binary(min_size=1, max_size=64),
    t=st.integers(1, 5),
    extra=st.integers(0, 3),
    data=st.data(),
)
def test_shares_are_encoded_as_documented(
    secret: bytes, t: int, extra: int, data: st.DataObject
) -> None:
    # Prepare: the doc's shares, from coefficients we choose
    n = t + extra
    chunks = -(-len(secret) // 15)
    coeffs = [[data.draw(st.integers(0, PRIME - 1)) for _ in range(t - 1)] for _ in range(chunks)]
    ours = [make_share(secret, t, x, coeffs) for x in range(1, n + 1)]
    # Execute + Assert: the package reads ours, we read the package's
    assert secagg.combine_shares(ours) == secret
    assert secagg.combine_shares(ours[extra:]) == secret
    theirs = secagg.create_shares(secret, t, n)
    assert [parse_share(s)[:3] for s in theirs] == [(t, x, len(secret)) for x in range(1, n + 1)]
    assert combine(theirs[extra:]) == secret
    assert len(theirs[0]) == 7 + 16 + 16 * chunks + 8


# -- one round, recomputed from the doc --------------------------------------------------------


def _round(n: int, drop_after_share: int, ring: int, length: int):  # type: ignore[no-untyped-def]
    k = secagg.choose_degree(n)
    p = ProtocolParams(
        round_id=0x0102030405060708,
        num_nodes=n,
        degree=k,
        threshold=secagg.choose_threshold(k),
        ring_bits=ring,
        vector_len=length,
        graph_seed=bytes(range(32)),
        digest=hashlib.sha256(b"s54d").digest(),
    )
    rng = np.random.default_rng(5)
    inputs = [rng.integers(0, 1 << min(ring, 20), length, dtype=np.uint64) for _ in range(n)]
    clients = [SecAggClient(p, i, p.digest) for i in range(n)]
    server = SecAggServer(p)
    wire: dict[str, dict[int, bytes]] = {s: {} for s in ("adv", "dir", "sk", "dl", "mi", "um")}
    for i, c in enumerate(clients):
        wire["adv"][i] = c.advertise().to_bytes()
        server.receive_advertise(AdvertiseKeys.from_bytes(wire["adv"][i]))
    for i, d in server.close_advertise().items():
        wire["dir"][i] = d.to_bytes()
        wire["sk"][i] = clients[i].share_keys(KeyDirectory.from_bytes(wire["dir"][i], n)).to_bytes()
        server.receive_share_keys(ShareKeys.from_bytes(wire["sk"][i], n))
    for i, dl in server.close_share_keys().items():
        wire["dl"][i] = dl.to_bytes()
        if i == drop_after_share:
            continue
        msg = clients[i].masked_input(ShareDelivery.from_bytes(wire["dl"][i], n), inputs[i])
        wire["mi"][i] = msg.to_bytes()
        server.receive_masked_input(MaskedInput.from_bytes(wire["mi"][i], length, ring))
    request = server.close_masked_input().to_bytes()
    for i in UnmaskRequest.from_bytes(request, n).alive:
        wire["um"][i] = clients[i].unmask(UnmaskRequest.from_bytes(request, n)).to_bytes()
        server.receive_unmask(UnmaskResponse.from_bytes(wire["um"][i], n))
    return p, clients, inputs, wire, request, server.finish()


@pytest.mark.parametrize(("n", "ring", "length"), [(5, 10, 17), (6, 40, 9), (9, 64, 5)])
def test_a_round_is_what_the_doc_says_byte_for_byte(n: int, ring: int, length: int) -> None:
    # Prepare + Execute: node 1 drops after share-keys
    p, clients, inputs, wire, request, result = _round(n, 1, ring, length)
    st_ = [c.state for c in clients]
    k, t, digest, rid = p.degree, p.threshold, p.digest, p.round_id
    nbrs = {i: sorted(read_pairs(read_head(wire["dl"][i], 4)[1])[0]) for i in range(n)}
    nbrs_of = {i: [s for s, _ in nbrs[i]] for i in range(n)}
    # advertise: node u32, enc_public[32], mask_public[32]; 81 bytes
    for i in range(n):
        assert read_head(wire["adv"][i], 1) == (
            rid,
            u32(i) + st_[i].enc_public + st_[i].mask_public,
        )
        assert len(wire["adv"][i]) == 81
    # share-keys: 21 + 206 k; each bundle 198 bytes, decrypting under the doc's key and AAD
    secrets_of: dict[int, dict[int, tuple[bytes, bytes]]] = {i: {} for i in range(n)}
    for i in range(n):
        assert len(wire["sk"][i]) == 21 + 206 * k
        (node,) = struct.unpack_from("<I", read_head(wire["sk"][i], 3)[1])
        bundles, rest = read_pairs(read_head(wire["sk"][i], 3)[1][4:])
        assert node == i and rest == b"" and len(bundles) == k
        for x, (dest, ct) in enumerate(bundles, start=1):
            assert len(ct) == 198
            key = hkdf(x25519(st_[i].enc_private, st_[dest].enc_public), ENC_LABEL + digest)
            aad = AAD_LABEL + digest + struct.pack("<QII", rid, i, dest)
            plain = AESGCM(key).decrypt(ct[:12], ct[12:], aad)
            src, dst, l1 = struct.unpack_from("<IIH", plain)
            ks = plain[10 : 10 + l1]
            (l2,) = struct.unpack_from("<H", plain, 10 + l1)
            ss = plain[12 + l1 :]
            assert (src, dst, l1, l2, len(ss)) == (i, dest, 79, 79, 79)
            # holders numbered 1, 2, ... in the order of the sorted directory
            assert parse_share(ks)[:3] == parse_share(ss)[:3] == (t, x, 32)
            secrets_of[i][dest] = (ks, ss)
        # any t of the holders give back the mask private key and the self-mask seed
        held = list(secrets_of[i].values())
        assert combine([h[0] for h in held[-t:]]) == st_[i].mask_private
        assert combine([h[1] for h in held[:t]]) == st_[i].self_seed
    # masked input: x + PRG(b_i, "self-mask") +- PRG(pair seed, "pair-mask") mod 2^m
    for i, msg in wire["mi"].items():
        y = [int(v) for v in inputs[i]]
        for pos, w in enumerate(mask_words(st_[i].self_seed, b"self-mask", length, ring)):
            y[pos] += w
        for j in nbrs_of[i]:
            seed = hkdf(x25519(st_[i].mask_private, st_[j].mask_public), MASK_LABEL + digest)
            sign = 1 if i < j else -1  # the lower-numbered node adds
            for pos, w in enumerate(mask_words(seed, b"pair-mask", length, ring)):
                y[pos] += sign * w
        want = pack_m([v % (1 << ring) for v in y], ring)
        body = u32(i) + u32(length) + bytes([ring]) + want
        assert read_head(msg, 5) == (rid, body)
        assert len(msg) == 22 + -(-length * ring // 8)
    # unmask request and answers: kind 2 for an alive neighbour, kind 1 for the dropped one
    alive = [i for i in range(n) if i != 1]
    assert read_head(request, 6)[1] == u32(n - 1) + b"".join(map(u32, alive)) + u32(1) + u32(1)
    for i, msg in wire["um"].items():
        body = read_head(msg, 7)[1]
        (node, count) = struct.unpack_from("<II", body)
        pos, answers = 8, []
        for _ in range(count):
            about, kind, ln = struct.unpack_from("<IBI", body, pos)
            answers.append((about, kind, body[pos + 9 : pos + 9 + ln]))
            pos += 9 + ln
        assert node == i and pos == len(body)
        assert answers == [
            (j, 1 if j == 1 else 2, secrets_of[j][i][0 if j == 1 else 1]) for j in nbrs_of[i]
        ]
        assert len(msg) == 21 + 88 * count
    # the fixed part of a device's upload: 123 + 294 k
    assert secagg.key_stage_bytes(k) == 123 + 294 * k
    assert len(wire["adv"][0]) + len(wire["sk"][0]) + len(wire["um"][0]) == 123 + 294 * k
    # the server's sum is the sum of the alive inputs mod 2^m; the doc's unmask gives it too
    want_sum = [sum(int(inputs[i][pos]) for i in alive) % (1 << ring) for pos in range(length)]
    assert result.total.tolist() == want_sum
    total = [0] * length
    for i in alive:
        packed = int.from_bytes(read_head(wire["mi"][i], 5)[1][9:], "little")
        for pos in range(length):
            total[pos] += packed >> (pos * ring) & ((1 << ring) - 1)
    answers_about: dict[int, list[bytes]] = {}
    for msg in wire["um"].values():
        body = read_head(msg, 7)[1]
        pos = 8
        while pos < len(body):
            about, _, ln = struct.unpack_from("<IBI", body, pos)
            answers_about.setdefault(about, []).append(body[pos + 9 : pos + 9 + ln])
            pos += 9 + ln
    for i in alive:
        seed = combine(answers_about[i])
        for pos, w in enumerate(mask_words(seed, b"self-mask", length, ring)):
            total[pos] -= w
    dropped_key = combine(answers_about[1])
    for j in nbrs_of[1]:
        if j in alive:
            seed = hkdf(x25519(dropped_key, st_[j].mask_public), MASK_LABEL + digest)
            sign = 1 if j < 1 else -1  # what j added with the dropped node, removed
            for pos, w in enumerate(mask_words(seed, b"pair-mask", length, ring)):
                total[pos] -= sign * w
    assert [v % (1 << ring) for v in total] == want_sum


def test_the_round_digest_and_the_plan_header_are_the_documented_bytes() -> None:
    # Prepare
    idx = np.array([3, 4, 9, 100, 101], dtype=np.int64)
    plan = secagg.SecurePlan(
        round_id=77, num_nodes=10, degree=8, threshold=5, ring_bits=9, value_bits=3,
        max_weight=1, model_size=200, indices=idx, clip_norm=1.5, coord_bound=0.5,
        graph_seed=b"\x01" * 32, rotation_seed=b"\x02" * 32, rotate=True, dither=True,
        sketch_bits=2, sketch_segments=((0, 10, 10, 1),),
    )  # fmt: skip
    model = np.arange(200, dtype=np.float32)
    raw = plan.to_bytes()
    # Execute + Assert: SHA-256("plume-round-v1\0" || SHA-256(model fp32) || plan bytes)
    model_hash = hashlib.sha256(model.astype("<f4").tobytes()).digest()
    want = hashlib.sha256(ROUND_LABEL + model_hash + raw).digest()
    assert plan.protocol_params(secagg.model_digest(model)).digest == want
    # the plan's fields in the documented order, little-endian
    fixed = struct.Struct("<4sQIIIBBIQddBBdQ32s32sI")
    got = fixed.unpack_from(raw)
    assert got == (
        b"PSP1", 77, 10, 8, 5, 9, 3, 1, 200, 1.5, 0.5, 0b11, 0, 0.0, 0, b"\x01" * 32,
        b"\x02" * 32, 5,
    )  # fmt: skip
    pos = fixed.size
    assert struct.unpack_from("<BI", raw, pos) == (2, 1)
    assert struct.unpack_from("<QIII", raw, pos + 5) == (0, 10, 10, 1)
    (clen,) = struct.unpack_from("<I", raw, pos + 25)
    gaps = np.frombuffer(zstandard.ZstdDecompressor().decompress(raw[pos + 29 :]), "<u4")
    assert clen == len(raw) - pos - 29 and gaps.tolist() == [3, 1, 5, 91, 1]  # first from 0


def _table(heading: str) -> list[list[str]]:
    start = DOC.index(heading)
    lines = DOC[start:].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[first + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_the_failure_probability_table_is_the_union_bound() -> None:
    rows = _table("n · P[Binomial(k, 1 − δ) < t]")
    assert len(rows) == 6
    for n, k, t, *probs, m3, m6 in rows:
        nn, kk, tt = int(n), int(k), int(t)
        assert (kk, tt) == (secagg.choose_degree(nn), secagg.choose_threshold(kk))
        assert kk == min(nn - 1, 2 * math.ceil(1.5 * math.log2(nn)))
        for delta, cell in zip((0.05, 0.10, 0.20), probs, strict=True):
            want = nn * sum(
                math.comb(kk, j) * (1 - delta) ** j * delta ** (kk - j) for j in range(tt)
            )
            assert float(cell) == pytest.approx(want, rel=0.05), (n, delta)
            assert secagg.reconstruction_failure_probability(nn, kk, tt, delta) == pytest.approx(
                want
            )
        for b, cell in ((3, m3), (6, m6)):
            assert int(cell) == (nn * (2**b - 1)).bit_length()
            assert int(cell) == secagg.required_ring_bits(nn, 1, b)


def test_the_complete_graph_sizes_the_doc_gives() -> None:
    # "up to 13 devices at the default f = 1.5, of up to 47 at f = 4 and of up to 145 at f = 10"
    for f, top in ((1.5, 13), (4.0, 47), (10.0, 145)):
        assert all(secagg.choose_degree(n, f) == n - 1 for n in range(3, top + 1))
        assert secagg.choose_degree(top + 1, f) < top
    assert secagg.choose_degree(10**6) == 60  # "60 at n = 10^6"
    # the doc's byte figures: 2,769 B at n = 10 (k = 9), 6,003 B at n = 100 (k = 20)
    assert secagg.key_stage_bytes(9) == 2769 and secagg.key_stage_bytes(20) == 6003
    assert 21 + 20 * 206 == 4141 and 21 + 20 * 88 == 1781


def test_the_labels_the_doc_names_are_the_ones_on_the_wire() -> None:
    for label in (ROUND_LABEL, ENC_LABEL, MASK_LABEL, PRG_LABEL, COMMIT_LABEL, CHECK_LABEL):
        assert label[:-1].decode() in DOC
    assert secagg.share_associated_data(b"d" * 32, 5, 6, 7) == (
        AAD_LABEL + b"d" * 32 + struct.pack("<QII", 5, 6, 7)
    )


def _hadamard(size: int) -> npt.NDArray[np.float64]:
    h = np.ones((1, 1))
    while h.shape[0] < size:
        h = np.block([[h, h], [h, -h]])
    return h


@SETTINGS
@given(seed=keys, k=st.integers(1, 70))
def test_the_rotation_is_the_documented_one(seed: bytes, k: int) -> None:
    # Prepare: signs MSB first from PRG(seed, "rotation-signs"), blocks by k's binary digits
    v = np.random.default_rng(k).standard_normal(k)
    raw = prg(seed, b"rotation-signs", -(-k // 8))
    signs = np.array([-1.0 if raw[i // 8] >> (7 - i % 8) & 1 else 1.0 for i in range(k)])
    x, out, start = v * signs, [], 0
    for b in range(k.bit_length() - 1, -1, -1):
        if k >> b & 1:
            size = 1 << b
            out.append(_hadamard(size) @ x[start : start + size] / math.sqrt(size))
            start += size
    # Execute + Assert
    got = secagg.rotate(v, seed)
    assert np.allclose(got, np.concatenate(out), rtol=0, atol=1e-12)
    assert np.allclose(secagg.unrotate(got, seed), v, rtol=0, atol=1e-12)


@SETTINGS
@given(seed=keys, node=st.integers(0, 9), count=st.integers(0, 30))
def test_the_dither_is_the_documented_one(seed: bytes, node: int, count: int) -> None:
    plan = secagg.SecurePlan(
        round_id=1, num_nodes=10, degree=8, threshold=5, ring_bits=9, value_bits=3,
        max_weight=1, model_size=40, indices=np.arange(3, dtype=np.int64), clip_norm=1.0,
        coord_bound=0.5, graph_seed=bytes(32), rotation_seed=seed, dither=True,
    )  # fmt: skip
    for label in (b"values", b"sketch"):
        raw = prg(seed, b"dither-" + label + struct.pack("<I", node), 4 * count)
        want = [(w + 0.5) / 2**32 for (w,) in struct.iter_unpack("<I", raw)]
        assert secagg.dither_uniforms(plan, node, count, label).tolist() == want


@SETTINGS
@given(seed=keys, n=st.integers(3, 60), factor=st.sampled_from([1.0, 1.5, 4.0]))
def test_the_graph_is_the_documented_harary_graph(seed: bytes, n: int, factor: float) -> None:
    k = secagg.choose_degree(n, factor)
    if k == n - 1:
        want = [tuple(j for j in range(n) if j != i) for i in range(n)]
    else:
        words = [w for (w,) in struct.iter_unpack("<Q", prg(seed, b"graph", 8 * n))]
        perm = sorted(range(n), key=lambda i: words[i])  # stable
        place = {node: p for p, node in enumerate(perm)}
        want = [
            tuple(sorted(perm[(place[i] + d) % n] for d in range(-k // 2, k // 2 + 1) if d))
            for i in range(n)
        ]
    assert secagg.neighbours(n, k, seed) == want


def test_the_sketch_of_a_bias_has_one_entry_more_than_its_size() -> None:
    # "a bias or other 1-D tensor of s values is an s x 1 matrix, so it has s + 1 entries"
    assert secagg.sketch_length(secagg.sketch_segments_for([(32,)])) == 33
    # and the intro's figure for sklearn digits' 2,410-parameter MLP at n = 10: 30
    # coordinates, 182 sketch entries (96 + 33 + 42 + 11), m = 7, so 2,978 B a device
    segments = secagg.sketch_segments_for([(32, 64), (32,), (10, 32), (10,)])
    assert secagg.sketch_length(segments) == 182
    m = secagg.required_ring_bits(10, 1, 3)
    assert secagg.device_upload_bytes(9, 30 + 182 + 1, m) == 2978
    assert "2,978 B a device, 2,769 B of it key stages" in DOC.replace("\n", " ")
