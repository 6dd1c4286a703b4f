"""docs/test-vectors/secagg.json, the secure-aggregation vectors for native ports of the device
side: rebuilt from the product code and compared with the committed file, then read back the
way a port reads them, without `protocol.secagg`: X25519, HKDF-SHA256, AES-256-GCM and
AES-256-CTR from `cryptography`, SHA-256 from hashlib, the plan's S_r section from `zstandard`,
the Shamir shares from the recorded coefficients and Lagrange interpolation written here, the
messages parsed with `struct` as docs/secure-aggregation.md "Protocol messages" lays them out.
The last test changes one byte (or number) of each field in turn and requires a read-back to
fail, so no recorded value goes unchecked."""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import itertools
import json
import math
import os
import secrets
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import zstandard
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocol import secagg
from protocol.secagg import _client as sa_client
from protocol.secagg import _crypto as sa_crypto
from protocol.secagg import _shamir as sa_shamir

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "docs" / "test-vectors"
PRIME = (1 << 127) - 1
HEAD = struct.Struct("<4sBQ")  # "PSA1" | kind u8 | round_id u64
PLAN_FIXED = struct.Struct("<4sQIIIBBIQddBBdQ32s32sI")
Doc = dict[str, Any]


def _generator() -> ModuleType:
    path = VECTORS / "make_vectors.py"
    spec = importlib.util.spec_from_file_location("plume_make_vectors_s46", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


GEN = _generator()
COMMITTED = (VECTORS / "secagg.json").read_text()
DOC: Doc = json.loads(COMMITTED)


# ---------------------------------------------------------------------------------------------
# The committed file is what the product writes


def test_committed_secagg_json_is_what_the_product_writes() -> None:
    # Execute
    built = GEN.render(GEN.secagg()) + "\n"
    # Assert: byte for byte where the zstd library is the one that wrote the file (the plan's
    # S_r section is a zstd frame, and the round digest, so every key, bundle and mask, follows
    # from the plan's bytes)
    hint = "docs/test-vectors/secagg.json differs from what protocol.secagg writes now"
    if DOC["meta"]["zstd_library"] == ".".join(map(str, zstandard.ZSTD_VERSION)):
        assert built == COMMITTED, hint
    else:
        got = json.loads(built)
        if got["plan"]["plan_hex"] != DOC["plan"]["plan_hex"]:
            pytest.skip("this libzstd writes another S_r frame; the read-backs still run")
        got["meta"].pop("zstd_library")
        want = copy.deepcopy(DOC)
        want["meta"].pop("zstd_library")
        assert got == want, hint


def test_the_generator_restores_the_randomness_it_fixes() -> None:
    # Execute
    first, second = GEN.secagg(), GEN.secagg()
    # Assert: the same vectors twice, and the modules' own randomness back in place
    assert first == second
    assert vars(sa_client)["generate_keypair"] is sa_crypto.generate_keypair
    assert vars(sa_client)["os"] is os and vars(sa_crypto)["os"] is os
    assert vars(sa_shamir)["secrets"] is secrets
    assert len({sa_crypto.encrypt(bytes(32), b"", b"")[:12] for _ in range(3)}) == 3


def test_secagg_json_is_listed_and_documented() -> None:
    assert "secagg.json" in GEN.FILES
    readme = (VECTORS / "README.md").read_text()
    assert "| `secagg.json` |" in readme
    spec = (ROOT / "docs" / "secure-aggregation.md").read_text()
    assert "test-vectors/README.md" in spec.split("## Protocol messages")[1].split("\n## ")[0]


# ---------------------------------------------------------------------------------------------
# Primitives, written from the spec with `cryptography`


def _b(hex_text: str) -> bytes:
    return bytes.fromhex(hex_text)


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def _x25519(private: bytes, public: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(public)
    )


def _public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def _label(doc: Doc, name: str) -> bytes:
    return _b(doc["labels"][f"{name}_hex"])


def _keystream(doc: Doc, seed: bytes, label: bytes, nbytes: int) -> bytes:
    """AES-256-CTR from a zero 16-byte counter block, keyed by HKDF(seed, PRG label || use)."""
    key = _hkdf(seed, _label(doc, "prg_key_info") + label)
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    return enc.update(bytes(nbytes)) + enc.finalize()


def _words(doc: Doc, seed: bytes, label: bytes, count: int, bits: int) -> list[int]:
    word = 4 if bits <= 32 else 8
    raw = _keystream(doc, seed, label, count * word)
    return [
        int.from_bytes(raw[i : i + word], "little") & ((1 << bits) - 1)
        for i in range(0, len(raw), word)
    ]


def _pack(values: list[int], bits: int) -> bytes:
    """Values of `bits` bits, least significant bit first, into ceil(n * bits / 8) bytes."""
    acc = sum(v << (i * bits) for i, v in enumerate(values))
    return acc.to_bytes((len(values) * bits + 7) // 8, "little")


def _share(doc: Doc, secret: bytes, t: int, x: int, coefficients: list[list[int]]) -> bytes:
    """`version 1 | t u16 | x u16 | secret_len u16 | commit[16] | y[16] per 15-byte chunk |
    check[8]`, y = f(x) over GF(2^127 - 1), f's constant term the chunk (little-endian)."""
    body = struct.pack("<BHHH", 1, t, x, len(secret))
    body += hashlib.sha256(_label(doc, "shamir_commit") + secret).digest()[:16]
    for c, rest in enumerate(coefficients):
        poly = [int.from_bytes(secret[15 * c : 15 * c + 15], "little"), *rest]
        body += (sum(a * x**i for i, a in enumerate(poly)) % PRIME).to_bytes(16, "little")
    return body + hashlib.sha256(_label(doc, "shamir_check") + body).digest()[:8]


def _reconstruct(shares: list[bytes]) -> bytes:
    """f(0) per chunk by Lagrange interpolation from the shares' (x, y) points."""
    xs = [struct.unpack_from("<H", s, 3)[0] for s in shares]
    size = struct.unpack_from("<H", shares[0], 5)[0]
    out = b""
    for c in range((size + 14) // 15):
        value = 0
        for j, (xj, share) in enumerate(zip(xs, shares, strict=True)):
            yj = int.from_bytes(share[23 + 16 * c : 39 + 16 * c], "little")
            num = math.prod(-xm for m, xm in enumerate(xs) if m != j)
            den = math.prod(xj - xm for m, xm in enumerate(xs) if m != j)
            value += yj * num * pow(den, -1, PRIME)
        out += (value % PRIME).to_bytes(min(15, size - 15 * c), "little")
    return out


class _Reader:
    def __init__(self, doc: Doc, data: bytes, kind: int) -> None:
        magic, got, round_id = HEAD.unpack_from(data)
        assert (magic, got, round_id) == (b"PSA1", kind, doc["plan"]["round_id"])
        self.data, self.pos = data, HEAD.size

    def take(self, n: int) -> bytes:
        assert self.pos + n <= len(self.data), "message truncated"
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "little")

    def end(self) -> None:
        assert self.pos == len(self.data), "trailing bytes"


def _directory(doc: Doc) -> dict[int, tuple[bytes, bytes]]:
    """KeyDirectory (kind 2): count, then (node u32, enc_public[32], mask_public[32])."""
    r = _Reader(doc, _b(doc["messages"]["key_directory_hex"]), 2)
    entries = [(r.u32(), r.take(32), r.take(32)) for _ in range(r.u32())]
    r.end()
    return {node: (epk, mpk) for node, epk, mpk in entries}


def _bundle_key(doc: Doc, peer: int) -> bytes:
    shared = _x25519(_b(doc["device"]["enc_private_hex"]), _directory(doc)[peer][0])
    return _hkdf(shared, _label(doc, "enc_key_info") + _b(doc["round_digest_hex"]))


def _aad(doc: Doc, source: int, dest: int) -> bytes:
    return (
        _label(doc, "share_aad")
        + _b(doc["round_digest_hex"])
        + struct.pack("<QII", doc["plan"]["round_id"], source, dest)
    )


def _open_bundle(doc: Doc, blob: bytes, source: int, dest: int) -> tuple[bytes, bytes]:
    """Decrypt `nonce[12] | ciphertext | tag[16]`, check `source u32 | dest u32`, return the two
    shares (each after a u16 length): the mask key's, then the self-mask seed's."""
    peer = dest if source == doc["device"]["node"] else source
    plain = AESGCM(_bundle_key(doc, peer)).decrypt(blob[:12], blob[12:], _aad(doc, source, dest))
    assert struct.unpack_from("<II", plain) == (source, dest)
    (n1,) = struct.unpack_from("<H", plain, 8)
    (n2,) = struct.unpack_from("<H", plain, 10 + n1)
    assert n1 == n2 == 79 and len(plain) == 12 + n1 + n2
    return plain[10 : 10 + n1], plain[12 + n1 :]


def _mine(doc: Doc) -> list[int]:
    mine: list[int] = doc["neighbours"][doc["device"]["node"]]
    return mine


# ---------------------------------------------------------------------------------------------
# Read-backs: each checks one part of the file against the spec


def check_labels(doc: Doc) -> None:
    names = {
        "round_digest": "plume-round-v1", "enc_key_info": "plume-secagg-enc",
        "mask_seed_info": "plume-secagg-mask", "share_aad": "plume-secagg-share-v1",
        "prg_key_info": "plume-prg-v1", "shamir_commit": "plume-shamir-commit-v1",
        "shamir_check": "plume-shamir-share-v1",
    }  # fmt: skip
    assert doc["labels"] == {f"{k}_hex": (v.encode() + b"\0").hex() for k, v in names.items()}


def check_prg(doc: Doc) -> None:
    assert sorted(v["bits"] <= 32 for v in doc["prg"]) == [False, True]
    for v in doc["prg"]:
        seed, label = _b(v["seed_hex"]), _b(v["label_hex"])
        assert _hkdf(seed, _label(doc, "prg_key_info") + label).hex() == v["aes_key_hex"]
        word = 4 if v["bits"] <= 32 else 8
        assert _keystream(doc, seed, label, v["count"] * word).hex() == v["keystream_hex"]
        assert _words(doc, seed, label, v["count"], v["bits"]) == v["words"]


def check_plan_and_digest(doc: Doc) -> None:
    p = doc["plan"]
    data = _b(p["plan_hex"])
    f = PLAN_FIXED.unpack_from(data)
    assert f[0] == b"PSP1"
    fields = ("round_id", "num_nodes", "degree", "threshold", "ring_bits", "value_bits",
              "max_weight", "model_size", "clip_norm", "coord_bound", "flags", "noise",
              "noise_variance", "noise_headroom")  # fmt: skip
    assert list(f[1:15]) == [p[k] for k in fields]
    assert (f[15].hex(), f[16].hex(), f[17]) == (
        p["graph_seed_hex"],
        p["rotation_seed_hex"],
        len(p["indices"]),
    )
    pos = PLAN_FIXED.size
    sketch_bits, segments = struct.unpack_from("<BI", data, pos)
    assert (sketch_bits, segments, p["sketch_segments"]) == (p["sketch_bits"], 0, [])
    (packed_len,) = struct.unpack_from("<I", data, pos + 5)
    frame = data[pos + 9 :]
    assert len(frame) == packed_len
    gaps = np.frombuffer(zstandard.ZstdDecompressor().decompress(frame), "<u4")
    assert np.cumsum(gaps).tolist() == p["indices"]
    model = _b(doc["model_f32le_hex"])
    assert len(model) == 4 * p["model_size"]
    assert hashlib.sha256(model).hexdigest() == doc["model_digest_hex"]
    digest = hashlib.sha256(_label(doc, "round_digest") + _b(doc["model_digest_hex"]) + data)
    assert digest.hexdigest() == doc["round_digest_hex"]


def check_graph(doc: Doc) -> None:
    """Harary graph of degree k over the permutation sorting the PRG's u64 keys ("graph")."""
    n, half = doc["plan"]["num_nodes"], doc["plan"]["degree"] // 2
    raw = _keystream(doc, _b(doc["plan"]["graph_seed_hex"]), b"graph", 8 * n)
    perm = np.argsort(np.frombuffer(raw, "<u8"), kind="stable").tolist()
    want = [
        sorted(perm[(perm.index(i) + d) % n] for d in range(-half, half + 1) if d) for i in range(n)
    ]
    assert doc["neighbours"] == want


def check_advertise_keys(doc: Doc) -> None:
    me = doc["device"]
    for kind in ("enc", "mask"):
        assert _public(_b(me[f"{kind}_private_hex"])).hex() == me[f"{kind}_public_hex"]
    r = _Reader(doc, _b(doc["messages"]["advertise_keys_hex"]), 1)
    assert (r.u32(), r.take(32).hex(), r.take(32).hex()) == (
        me["node"],
        me["enc_public_hex"],
        me["mask_public_hex"],
    )
    r.end()
    assert sorted(_directory(doc)) == _mine(doc)


def check_bundle(doc: Doc) -> None:
    b, me = doc["bundle"], doc["device"]["node"]
    assert b["dest"] == _mine(doc)[0]
    epk = _directory(doc)[b["dest"]][0]
    shared = _x25519(_b(doc["device"]["enc_private_hex"]), epk)
    assert shared.hex() == b["enc_shared_secret_hex"]
    key = _hkdf(shared, _label(doc, "enc_key_info") + _b(doc["round_digest_hex"]))
    assert key.hex() == b["enc_key_hex"]
    assert _aad(doc, me, b["dest"]).hex() == b["aad_hex"]
    nonce, plain = _b(b["nonce_hex"]), _b(b["plaintext_hex"])
    sealed = nonce + AESGCM(key).encrypt(nonce, plain, _b(b["aad_hex"]))
    assert sealed.hex() == b["ciphertext_hex"]
    assert struct.unpack_from("<IIH", plain) == (me, b["dest"], 79)
    assert plain[91:].hex() == doc["shamir"]["self_seed_shares_hex"][0]


def _share_keys(doc: Doc) -> dict[int, bytes]:
    """ShareKeys (kind 3): node u32, count u32, then (dest u32, u32 length, ciphertext)."""
    r = _Reader(doc, _b(doc["messages"]["share_keys_hex"]), 3)
    assert r.u32() == doc["device"]["node"]
    out = {}
    for _ in range(r.u32()):
        dest = r.u32()
        out[dest] = r.take(r.u32())
    r.end()
    return out


def check_share_keys(doc: Doc) -> None:
    me, mine, t = doc["device"]["node"], _mine(doc), doc["plan"]["threshold"]
    cts = _share_keys(doc)
    assert list(cts) == mine and {len(c) for c in cts.values()} == {198}
    assert cts[doc["bundle"]["dest"]].hex() == doc["bundle"]["ciphertext_hex"]
    opened = [_open_bundle(doc, cts[dest], me, dest) for dest in mine]
    key_shares, seed_shares = [o[0] for o in opened], [o[1] for o in opened]
    assert [s.hex() for s in seed_shares] == doc["shamir"]["self_seed_shares_hex"]
    for subset in itertools.combinations(range(len(mine)), t):
        assert (
            _reconstruct([key_shares[i] for i in subset]).hex()
            == (doc["device"]["mask_private_hex"])
        )


def check_shamir(doc: Doc) -> None:
    s = doc["shamir"]
    secret, t = _b(doc["device"]["self_seed_hex"]), s["threshold"]
    assert t == doc["plan"]["threshold"] and s["holders"] == _mine(doc)
    coefficients = [[int.from_bytes(_b(a), "little") for a in chunk] for chunk in
                    s["self_seed_coefficients_hex"]]  # fmt: skip
    assert [len(c) for c in coefficients] == [t - 1] * 3
    shares = [_share(doc, secret, t, x, coefficients) for x in range(1, len(s["holders"]) + 1)]
    assert [sh.hex() for sh in shares] == s["self_seed_shares_hex"]
    for subset in itertools.combinations(shares, t):
        assert _reconstruct(list(subset)) == secret


def check_masked_input(doc: Doc) -> None:
    p, me, mi = doc["plan"], doc["device"]["node"], doc["masked_input"]
    k, bits, ring = len(p["indices"]), p["value_bits"], p["ring_bits"]
    length = k + 1  # the values, no sketch, the weight
    assert p["flags"] == 2 and p["max_weight"] == mi["weight"] == 1  # dither, no rotation
    # the quantized input: u at S_r (inside the L2 clip norm C), clipped to [-C', C'] and
    # rounded as floor(x + U) with the public dither U of this node
    u = np.frombuffer(_b(mi["values_f32le_hex"]), "<f4").astype(np.float64)
    assert u.shape == (k,) and float(np.linalg.norm(u)) <= p["clip_norm"]  # no L2 clipping
    assert np.flatnonzero(np.abs(u) > p["coord_bound"]).tolist() == [2]  # one value clipped
    raw = _keystream(
        doc, _b(p["rotation_seed_hex"]), b"dither-values" + struct.pack("<I", me), 4 * k
    )
    dither = [(w + 0.5) / 2**32 for w in struct.unpack(f"<{k}I", raw)]
    assert dither == mi["dither"]
    levels, bound = (1 << bits) - 1, p["coord_bound"]
    x = (np.clip(u, -bound, bound) + bound) * (levels / (2.0 * bound))
    assert x.tolist() == mi["levels_x"]
    q = np.clip(np.floor(x + np.array(dither)), 0, levels).astype(np.int64)
    vector = [int(v) * mi["weight"] for v in q] + [mi["weight"]]
    assert vector == mi["vector"]
    # the masks: self, then each neighbour's pairwise mask, + for the lower node of the pair
    self_mask = _words(doc, _b(doc["device"]["self_seed_hex"]), b"self-mask", length, ring)
    assert self_mask == mi["self_mask"]
    y = [a + b for a, b in zip(vector, self_mask, strict=True)]
    directory = _directory(doc)
    assert [pm["peer"] for pm in mi["pair_masks"]] == _mine(doc)
    for pm in mi["pair_masks"]:
        shared = _x25519(_b(doc["device"]["mask_private_hex"]), directory[pm["peer"]][1])
        assert shared.hex() == pm["mask_shared_secret_hex"]
        seed = _hkdf(shared, _label(doc, "mask_seed_info") + _b(doc["round_digest_hex"]))
        assert seed.hex() == pm["seed_hex"]
        words = _words(doc, seed, b"pair-mask", length, ring)
        assert words == pm["words"]
        assert pm["sign"] == (1 if me < pm["peer"] else -1)
        y = [a + pm["sign"] * w for a, w in zip(y, words, strict=True)]
    masked = [v % (1 << ring) for v in y]
    assert masked == mi["masked"]
    # MaskedInput (kind 5): node u32, length u32, bits u8, the values bit-packed
    want = HEAD.pack(b"PSA1", 5, p["round_id"]) + struct.pack("<IIB", me, length, ring)
    assert doc["messages"]["masked_input_hex"] == (want + _pack(masked, ring)).hex()


def check_delivery_and_unmask(doc: Doc) -> None:
    me, mine = doc["device"]["node"], _mine(doc)
    # ShareDelivery (kind 4): count, then (source u32, u32 length, ciphertext)
    r = _Reader(doc, _b(doc["messages"]["share_delivery_hex"]), 4)
    delivered = {}
    for _ in range(r.u32()):
        source = r.u32()
        delivered[source] = r.take(r.u32())
    r.end()
    assert list(delivered) == mine
    held = {src: _open_bundle(doc, blob, src, me) for src, blob in delivered.items()}
    # UnmaskRequest (kind 6): the alive list, then the dropped list (u32 count, u32 nodes)
    r = _Reader(doc, _b(doc["messages"]["unmask_request_hex"]), 6)
    alive = [r.u32() for _ in range(r.u32())]
    dropped = [r.u32() for _ in range(r.u32())]
    r.end()
    assert dropped == doc["dropped"] and sorted(alive + dropped) == list(
        range(len(doc["neighbours"]))
    )
    # UnmaskResponse (kind 7): node, count, then (about u32, kind u8, u32 length, share):
    # kind 2 (self-mask seed) for an alive neighbour, kind 1 (mask key) for a dropped one
    r = _Reader(doc, _b(doc["messages"]["unmask_response_hex"]), 7)
    assert r.u32() == me
    answers = []
    for _ in range(r.u32()):
        about, kind = r.u32(), r.take(1)[0]
        answers.append((about, kind, r.take(r.u32())))
    r.end()
    want = [(j, 2, held[j][1]) if j in alive else (j, 1, held[j][0]) for j in mine]
    assert answers == want and {kind for _, kind, _ in answers} == {1, 2}
    for about, _, share in answers:
        body, check = share[:-8], share[-8:]
        assert hashlib.sha256(_label(doc, "shamir_check") + body).digest()[:8] == check
        # a dealer numbers its holders 1, 2, ... in the order of its key directory
        x = doc["neighbours"][about].index(me) + 1
        assert struct.unpack_from("<BHHH", share) == (1, doc["plan"]["threshold"], x, 32)


CHECKS: list[Callable[[Doc], None]] = [
    check_labels,
    check_prg,
    check_plan_and_digest,
    check_graph,
    check_advertise_keys,
    check_bundle,
    check_share_keys,
    check_shamir,
    check_masked_input,
    check_delivery_and_unmask,
]


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
def test_secagg_vectors_read_back(check: Callable[[Doc], None]) -> None:
    check(DOC)


@functools.cache
def _all_pass_on_the_committed_file() -> bool:
    for check in CHECKS:
        check(copy.deepcopy(DOC))
    return True


def test_the_product_decoders_read_the_recorded_messages() -> None:
    # Prepare
    p, m, n = DOC["plan"], DOC["messages"], DOC["plan"]["num_nodes"]
    plan = secagg.SecurePlan.from_bytes(_b(p["plan_hex"]), p["model_size"])
    model = np.frombuffer(_b(DOC["model_f32le_hex"]), "<f4")
    # Execute + Assert
    assert secagg.round_digest(secagg.model_digest(model), plan).hex() == DOC["round_digest_hex"]
    adv = secagg.AdvertiseKeys.from_bytes(_b(m["advertise_keys_hex"]))
    assert adv.enc_public.hex() == DOC["device"]["enc_public_hex"]
    assert len(secagg.KeyDirectory.from_bytes(_b(m["key_directory_hex"]), n).entries) == 4
    assert len(secagg.ShareKeys.from_bytes(_b(m["share_keys_hex"]), n).ciphertexts) == 4
    assert len(secagg.ShareDelivery.from_bytes(_b(m["share_delivery_hex"]), n).ciphertexts) == 4
    masked = secagg.MaskedInput.from_bytes(
        _b(m["masked_input_hex"]), plan.vector_len, p["ring_bits"]
    )
    values = secagg.unpack_bits(masked.packed, plan.vector_len, p["ring_bits"])
    assert values.tolist() == DOC["masked_input"]["masked"]
    request = secagg.UnmaskRequest.from_bytes(_b(m["unmask_request_hex"]), n)
    assert request.dropped == tuple(DOC["dropped"])
    response = secagg.UnmaskResponse.from_bytes(_b(m["unmask_response_hex"]), n)
    assert [int(kind) for _, kind, _ in response.shares] == [2, 2, 1, 2]
    seed_shares = [_b(s) for s in DOC["shamir"]["self_seed_shares_hex"]]
    assert secagg.combine_shares(seed_shares).hex() == DOC["device"]["self_seed_hex"]


# ---------------------------------------------------------------------------------------------
# Every recorded value is checked: change one and a read-back fails

NOT_CHECKED = {("meta",), ("plan", "zstd_bytes")}  # descriptions, and a flag for the reader


def _leaves(obj: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if path[:1] in NOT_CHECKED or path in NOT_CHECKED:
        return []
    if isinstance(obj, dict):
        return [leaf for k, v in obj.items() for leaf in _leaves(v, (*path, k))]
    if isinstance(obj, list):
        return [leaf for i, v in enumerate(obj) for leaf in _leaves(v, (*path, i))]
    return [path]


def _mutations() -> list[tuple[str, tuple[Any, ...], int | None]]:
    """(id, path, byte position or None): hex strings at their first, middle and last byte,
    numbers changed once."""
    out: list[tuple[str, tuple[Any, ...], int | None]] = []
    for path in _leaves(DOC):
        value: Any = DOC
        for key in path:
            value = value[key]
        name = "/".join(map(str, path))
        if isinstance(value, str):
            size = len(value) // 2
            out += [(f"{name}@{i}", path, i) for i in sorted({0, size // 2, size - 1})]
        else:
            out.append((name, path, None))
    return out


# Value 2 of the update (bytes 8 to 11) is 0.3, beyond C' = 0.25: the quantizer clips it, so a
# change that keeps it above C' (this one) changes nothing a port computes; the rebuild test
# above catches it, and check_masked_input that it stays beyond C'.
CLIPPED = ("masked_input/values_f32le_hex@8",)
MUTATIONS = [m for m in _mutations() if m[0] not in CLIPPED]


@pytest.mark.parametrize(("path", "at"), [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS])
def test_a_changed_value_fails_a_read_back(path: tuple[Any, ...], at: int | None) -> None:
    # Prepare: one byte of a hex field with bit 4 flipped (not a bit X25519 clamps), or a
    # number moved by one (the next float for a float)
    doc = copy.deepcopy(DOC)
    holder: Any = doc
    for key in path[:-1]:
        holder = holder[key]
    value = holder[path[-1]]
    if isinstance(value, str):
        assert at is not None
        raw = bytearray(bytes.fromhex(value))
        raw[at] ^= 0x10
        holder[path[-1]] = raw.hex()
    elif isinstance(value, float):
        holder[path[-1]] = math.nextafter(value, math.inf)
    else:
        assert isinstance(value, int) and not isinstance(value, bool), path
        holder[path[-1]] = value + 1
    assert _all_pass_on_the_committed_file()  # else a failure below would prove nothing
    # Execute
    failures = 0
    for check in CHECKS:
        try:
            check(doc)
        except Exception:  # an assertion, or a refusal (AES-GCM tag, struct, zstd, X25519)
            failures += 1
    # Assert
    assert failures, f"changing {'/'.join(map(str, path))} fails no read-back"
