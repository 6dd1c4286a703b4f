"""docs/http-api.md's "Signing" section as a property (helper-57d's audit): the selected device's
real upload, with one of the five signature headers changed to any other value or left out, is
401 with one of the signing reasons (`unsigned`, `unregistered`, `bad_signature`,
`stale_timestamp`), never taken, and spends no nonce: the request as signed is then accepted."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from protocol.names import Header

from .test_service_security import World, running_world

SIGNED = [Header.DEVICE, Header.ROUND, Header.TIMESTAMP, Header.NONCE, Header.SIGNATURE]
REASONS = {"unsigned", "unregistered", "bad_signature", "stale_timestamp"}
# Values near each header's documented form: hex of other lengths and cases, decimals with a
# sign, a leading zero, a point, at and past 2^63, base64url one character short or long.
NEAR = [
    "", "0", "00", "-0", "+1", "1.0", "9223372036854775807", "9223372036854775808",
    "0" * 15, "0" * 16, "0" * 64, "0" * 65, "A" * 32, "a" * 32, "g" * 32, "0" * 31,
    "A" * 85, "A" * 86, "A" * 87, "=" * 86, "Q" * 86,
]  # fmt: skip
VALUES = st.one_of(
    st.sampled_from(NEAR),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=100),
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with running_world(tmp_path_factory.mktemp("s57d-sig")) as w:
        yield w


@pytest.fixture(scope="module")
def signed(world: World) -> dict[str, str]:
    """The selected device's upload headers, signed once for the whole module."""
    return world.signed_upload(world.frame)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), header=st.sampled_from(SIGNED))
def test_one_signature_header_changed_is_401_and_takes_nothing(
    world: World, signed: dict[str, str], data: st.DataObject, header: Header
) -> None:
    # Prepare: one header left out (None), set to another value, or with one character of
    # its signed value changed (the cases nearest to a valid one)
    own = signed[header]
    how = data.draw(st.sampled_from(["drop", "value", "edit"]), label="how")
    value: str | None = None
    if how == "value":
        value = data.draw(VALUES, label="value")
    elif how == "edit":
        i = data.draw(st.integers(0, len(own) - 1), label="at")
        c = data.draw(st.sampled_from("0189afAF-_Qgw"), label="to")
        value = own[:i] + c + own[i + 1 :]
    if value == own or (value is None and header == Header.ROUND and own == "0"):
        value = own + "0"
    headers = {k: v for k, v in signed.items() if k != header}
    if value is not None:
        headers[header] = value
    before = world.state()
    # Execute
    r = world.upload(world.frame, headers)
    # Assert
    assert r.status_code == 401, r.text
    event(f"{header} {r.json()['reason']}")
    assert r.json()["reason"] in REASONS and r.json()["detail"]
    assert world.state() == before


def test_the_request_as_signed_is_then_taken(world: World, signed: dict[str, str]) -> None:
    # Prepare: no refusal above spent the nonce or took the frame
    assert world.state()[0] == 0
    # Execute
    r = world.upload(world.frame, signed)
    # Assert
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] is True and r.json()["duplicate"] is False
