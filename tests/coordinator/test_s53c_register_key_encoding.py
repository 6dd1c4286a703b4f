"""Registration takes `public_key` only as documented: the key's 32 bytes in base64url without
padding, 43 characters (helper-53c, from the hostile-input review).

Before, the coordinator decoded it with Python's lenient `urlsafe_b64decode`: standard base64's
`+` and `/`, `=` padding, and characters outside the alphabet (skipped) were taken, so a device
signing with its key registered under many spellings of it. Against a loopback coordinator:
each such spelling of a key that signs its own registration is 400 `malformed` with a detail
naming the problem, the exact spelling registers; and (hypothesis) any string, junk or a
mutation of a real key's spelling, never registers unless it is that exact spelling, and never
gets a 5xx.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Iterator

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.auth import registered_key
from coordinator.service.errors import ApiError
from protocol import auth

from .test_service_support import ADMIN, signed_headers


def _key(seed: int) -> bytes:
    """A private key from a seed (deterministic)."""
    return Ed25519PrivateKey.from_private_bytes(seed.to_bytes(32, "little")).private_bytes_raw()


def _spelled(key: bytes) -> str:
    return base64.urlsafe_b64encode(auth.public_key_bytes(key)).rstrip(b"=").decode()


# The first 6 seeds whose key's spelling has a '-'.
_DASHED = list(itertools.islice((s for s in itertools.count(1) if "-" in _spelled(_key(s))), 6))


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    root = tmp_path_factory.mktemp("register")
    cfg = ServiceConfig(db_path=str(root / "plume.db"), admin_token=ADMIN)
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as client:
        yield client


def _register(http: httpx.Client, key: bytes, public_key: object) -> httpx.Response:
    body = json.dumps({"public_key": public_key}).encode()
    headers = signed_headers(key, "POST", "/v1/devices", 0, body)
    return http.post(
        "/v1/devices", content=body, headers={**headers, "content-type": "application/json"}
    )


def _devices(http: httpx.Client) -> float:
    text = http.get("/metrics").text
    (line,) = [x for x in text.splitlines() if x.startswith("plume_registered_devices ")]
    return float(line.split()[1])


def _respell(seed: int, how: str) -> tuple[bytes, str]:
    key = _key(seed)
    text = _spelled(key)
    if how == "standard":
        text = text.replace("-", "+")  # standard base64's character for it
    elif how == "padded":
        text += "="
    elif how == "stray":
        text = text[:10] + "." + text[10:]
    elif how == "space":
        text = text[:20] + " " + text[20:]
    elif how == "newline":
        text += "\n"
    elif how == "last bits":
        last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        text = text[:-1] + last[last.index(text[-1]) + 1]  # same key bits, a padding bit set
    return key, text


@pytest.mark.parametrize(
    ("n", "how", "detail"),
    [
        (0, "standard", "public_key holds '+': base64url writes '-' for '+' and '_' for '/'"),
        (1, "padded", "public_key holds '=': the key is sent without padding (at character 44)"),
        (2, "stray", "public_key holds '.', not a base64url character (at character 11)"),
        (3, "space", "public_key holds ' ', not a base64url character (at character 21)"),
        (4, "newline", "public_key holds '\\n', not a base64url character (at character 44)"),
        (5, "last bits", "sets bits past the key's 32 bytes"),
    ],
)
def test_a_key_spelled_otherwise_is_400_and_not_registered(
    http: httpx.Client, n: int, how: str, detail: str
) -> None:
    # Prepare: a key of its own per case, whose spelling has a '-' (so that the standard
    # alphabet's differs)
    seed = _DASHED[n]
    key, text = _respell(seed, how)
    assert text != _spelled(key)
    devices = _devices(http)

    # Execute
    r = _register(http, key, text)

    # Assert: refused naming the problem; the device was not stored
    assert r.status_code == 400, r.text
    assert r.json()["reason"] == "malformed"
    assert detail in r.json()["detail"]
    assert _devices(http) == devices
    # ... and the exact spelling of the same key registers
    ok = _register(http, key, _spelled(key))
    assert ok.status_code == 200, ok.text
    answer = ok.json()
    assert len(answer.pop("incarnation")) == 32  # the database's (test_s54a_incarnation)
    assert answer == {
        "device_id": auth.device_id_for(auth.public_key_bytes(key)),
        "created": True,
    }


def test_the_wrong_length_is_named() -> None:
    for text, got in (("", 0), ("A" * 42, 42), ("A" * 44, 44), ("A" * 10_000, 10_000)):
        with pytest.raises(ApiError) as err:
            registered_key(text)
        assert err.value.status == 400
        assert err.value.detail == (
            f"public_key must be 43 base64url characters (32 bytes, no padding), got {got}"
        )


_MUTATIONS = st.sampled_from(["standard", "padded", "stray", "space", "newline", "last bits"])
_JUNK = st.one_of(
    st.text(max_size=60),
    st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/= .",
        max_size=60,
    ),
    st.integers(),
    st.none(),
    st.lists(st.integers(), max_size=3),
)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(seed=st.integers(1, 2**32), junk=_JUNK, how=_MUTATIONS, mutate=st.booleans())
def test_junk_never_registers_and_never_5xx(
    http: httpx.Client, seed: int, junk: object, how: str, mutate: bool
) -> None:
    # Prepare: a key that signs the request, and as public_key either junk or its own key
    # spelled wrong
    key, text = _respell(seed, how)
    public_key = text if mutate else junk
    assume(public_key != _spelled(key))  # a standard spelling of a key without '-' or '_'
    devices = _devices(http)

    # Execute
    r = _register(http, key, public_key)

    # Assert: a 4xx with a reason, nothing stored; only the exact spelling could register
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["reason"] in ("malformed", "validation", "bad_signature")
    assert _devices(http) == devices
