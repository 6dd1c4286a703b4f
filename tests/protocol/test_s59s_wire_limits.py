"""Decoder checks of protocol/secagg/_wire.py that no test in tests/protocol reached (a mutation
hunt, helper s59s, removed each and those tests still passed): the magic, the message kind,
the count limit and the byte-string limit, each at its bound, the masked input's shape, and an
unmask share's kind."""

from __future__ import annotations

import pytest

from protocol.secagg import (
    AdvertiseKeys,
    MalformedMessage,
    MaskedInput,
    ShareDelivery,
    ShareKeys,
    ShareKind,
    UnmaskRequest,
    UnmaskResponse,
)
from protocol.secagg._packing import packed_size
from protocol.secagg._wire import MAX_CIPHERTEXT_BYTES, MAX_SHARE_BYTES

ADVERT = AdvertiseKeys(9, 2, bytes(range(32)), bytes(range(32, 64)))


def test_a_message_without_the_magic_is_refused() -> None:
    body = ADVERT.to_bytes()
    assert body[:4] == b"PSA1" and AdvertiseKeys.from_bytes(body) == ADVERT
    with pytest.raises(MalformedMessage, match=r"^not a SecAgg message \(bad magic\)$"):
        AdvertiseKeys.from_bytes(b"PSA2" + body[4:])


def test_a_message_of_another_kind_is_refused() -> None:
    # A share delivery read as a share-keys upload: both are a count of (u32, blob) pairs
    delivery = ShareDelivery(9, ((1, b"\0" * 40),)).to_bytes()
    with pytest.raises(MalformedMessage, match=r"^message kind 4, expected 3 \(SHARE_KEYS\)$"):
        ShareKeys.from_bytes(delivery, 8)


def test_a_count_above_the_limit_is_refused_and_one_at_it_is_read() -> None:
    request = UnmaskRequest(9, (0, 1, 2), (3,))
    body = request.to_bytes()
    with pytest.raises(MalformedMessage, match="^3 entries, limit 2$"):
        UnmaskRequest.from_bytes(body, 2)
    assert UnmaskRequest.from_bytes(body, 3) == request


def test_a_ciphertext_above_the_limit_is_refused_and_one_at_it_is_read() -> None:
    at = ShareKeys(9, 2, ((1, bytes(MAX_CIPHERTEXT_BYTES)),))
    assert ShareKeys.from_bytes(at.to_bytes(), 8) == at
    over = ShareKeys(9, 2, ((1, bytes(MAX_CIPHERTEXT_BYTES + 1)),)).to_bytes()
    with pytest.raises(
        MalformedMessage, match=f"^field of {MAX_CIPHERTEXT_BYTES + 1} bytes, limit 1024$"
    ):
        ShareKeys.from_bytes(over, 8)


def test_a_share_above_the_limit_is_refused_and_one_at_it_is_read() -> None:
    at = UnmaskResponse(9, 2, ((1, ShareKind.SELF_MASK, bytes(MAX_SHARE_BYTES)),))
    assert UnmaskResponse.from_bytes(at.to_bytes(), 8) == at
    over = UnmaskResponse(9, 2, ((1, ShareKind.MASK_KEY, bytes(MAX_SHARE_BYTES + 1)),))
    with pytest.raises(
        MalformedMessage, match=f"^field of {MAX_SHARE_BYTES + 1} bytes, limit 512$"
    ):
        UnmaskResponse.from_bytes(over.to_bytes(), 8)


@pytest.mark.parametrize(("length", "bits"), [(4, 16), (3, 15), (3, 17)])
def test_a_masked_input_of_another_shape_is_refused_naming_both_shapes(
    length: int, bits: int
) -> None:
    body = MaskedInput(9, 2, length, bits, bytes(packed_size(length, bits))).to_bytes()
    with pytest.raises(
        MalformedMessage,
        match=f"^masked input of {length} x {bits} bits, round expects 3 x 16$",
    ):
        MaskedInput.from_bytes(body, 3, 16)
    ok = MaskedInput(9, 2, 3, 16, bytes(packed_size(3, 16)))
    assert MaskedInput.from_bytes(ok.to_bytes(), 3, 16) == ok


@pytest.mark.parametrize("kind", [0, 3, 255])
def test_an_unmask_share_of_an_unknown_kind_is_refused_as_malformed(kind: int) -> None:
    # Without the check ShareKind(kind) raised an untyped ValueError
    body = bytearray(UnmaskResponse(9, 2, ((1, ShareKind.MASK_KEY, b"\1" * 40),)).to_bytes())
    at = 13 + 4 + 4 + 4  # header, node, count, about: the kind byte
    assert body[at] == ShareKind.MASK_KEY
    body[at] = kind
    with pytest.raises(MalformedMessage, match=f"^unknown share kind {kind}$"):
        UnmaskResponse.from_bytes(bytes(body), 8)
