"""docs/http-api.md's rule for the upload route, as a property (helper-57d's audit): a signed
upload from the round's selected device whose frame the codec refuses, with any query and any
`Idempotency-Key`, is a 4xx with a JSON reason from the error table, never a 5xx or a 200, and
the round's accepted updates and the task's model stay as they were. The same for the model
download's and the rounds listing's query parameters, which are answered 200 or a 4xx."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from compression import CodecError
from coordinator.service import ServerThread, ServiceConfig
from protocol.names import Reason

from .test_service_security import World
from .test_service_support import ADMIN, admin_get, send_signed

ADMIN_H = {"authorization": f"Bearer {ADMIN}"}
# Values at and past the documented bounds: the 32-character decimal, [0, 1e6], 2^63 - 1.
EXTREMES = [
    "0", "1e6", "1000000.0000001", "1e999", "1e-400", "nan", "inf", "-0", "+1", "0x10", "1_0",
    "", " 1", "1" * 32, "1" * 33, "\u0663", "9223372036854775807", "9223372036854775808",
    "-1", "01", "4.0", "1" * 600,
]  # fmt: skip
# Everything a header value can hold as h11 sends it: printable ASCII, spaces inside only.
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=160).map(
    str.strip
)
QUERY_TEXT = st.one_of(st.sampled_from(EXTREMES), st.text(max_size=40))
LOSSES = ["0", "0.6931", "1e-05", "1e6", "1" * 6 + "." + "0" * 25]


class Served:
    """The security tests' `World` (one open round: device A selected, B not) and the
    coordinator behind it, whose codec says which frames a round must refuse."""

    def __init__(self, world: World, coordinator: Any) -> None:
        self.world = world
        self.codec = coordinator.runtimes[world.task_id].engine.codec

    def refuses(self, frame: bytes) -> bool:
        try:
            self.codec.decode_frame(frame)
        except CodecError:
            return True
        return False

    def state(self) -> tuple[Any, ...]:
        """What a refusal must leave: the round's state and reports, its accepted updates in the
        ledger, and the task's model version and digest."""
        w = self.world
        rnd = admin_get(w.http, f"/v1/rounds/{w.assignment.round_id}")
        totals = admin_get(w.http, f"/v1/rounds/{w.assignment.round_id}/bandwidth")["totals"]
        accepted = (totals["up_accepted_updates"], totals["up_accepted_payload_bytes"])
        return (rnd["state"], rnd["reports"], accepted, *w.state())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("s57d")
    cfg = ServiceConfig(db_path=str(root / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    thread = ServerThread(cfg)
    with thread as url:
        world = World(url, root)
        yield Served(world, thread.app.state.coordinator)
        for c in (world.a, world.b):
            c.close()
        world.http.close()


def _refused_with_reason(r: httpx.Response) -> None:
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    body = r.json()
    event(f"{r.status_code} {body.get('reason')}")
    assert body["reason"] in set(Reason), body
    assert isinstance(body["detail"], str) and body["detail"], body


@st.composite
def _mutated(draw: st.DrawFn, frame: bytes) -> bytes:
    """`frame` with one mutation: a bit flipped, cut short, bytes inserted or overwritten, a
    header field set to an extreme value, or bytes of no frame at all."""
    n = len(frame)
    kind = draw(st.sampled_from(["flip", "cut", "insert", "overwrite", "field", "random"]))
    if kind == "flip":
        i, bit = draw(st.integers(0, n - 1)), draw(st.integers(0, 7))
        return frame[:i] + bytes([frame[i] ^ (1 << bit)]) + frame[i + 1 :]
    if kind == "cut":
        return frame[: draw(st.integers(0, n - 1))]
    if kind == "insert":
        i = draw(st.integers(0, n))
        return frame[:i] + draw(st.binary(min_size=1, max_size=64)) + frame[i:]
    if kind == "overwrite":
        i = draw(st.integers(0, n - 1))
        patch = draw(st.binary(min_size=1, max_size=16))
        return frame[:i] + patch + frame[i + len(patch) :]
    if kind == "field":
        width = draw(st.sampled_from([1, 2, 4, 8]))
        i = draw(st.integers(0, min(64, n - width)))
        value = draw(st.sampled_from([0, 1, 2**53 + 1, 2 ** (8 * width) - 1]))
        value = min(value, 2 ** (8 * width) - 1)
        return frame[:i] + value.to_bytes(width, "little") + frame[i + width :]
    return draw(st.binary(max_size=2 * n))


@settings(
    max_examples=120, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)
@given(data=st.data())
def test_a_refused_frame_with_any_query_and_key_is_a_4xx_and_takes_nothing(
    served: Served, data: st.DataObject
) -> None:
    # Prepare: a frame the round's codec refuses, a query and an idempotency key of any form
    w = served.world
    body = data.draw(_mutated(w.frame), label="body")
    assume(served.refuses(body))
    if data.draw(st.integers(0, 3), label="hostile query and key") == 0:
        pairs = st.tuples(st.sampled_from(["train_loss", "train_loss", "loss", "x"]), QUERY_TEXT)
        query = data.draw(st.lists(pairs, max_size=3), label="query")
        keys = st.one_of(st.none(), st.just("k" * 129), HEADER_TEXT)
        key = data.draw(keys, label="key")
    else:  # well-formed, so that the frame reaches the decoder
        loss = st.lists(st.tuples(st.just("train_loss"), st.sampled_from(LOSSES)), max_size=1)
        query = data.draw(loss, label="query")
        key = data.draw(st.sampled_from(["k-57", "k" * 128]), label="key")
    headers = {"content-type": "application/octet-stream"}
    if key is not None:
        headers["idempotency-key"] = key
    before = served.state()
    # Execute
    r = send_signed(
        w.http, w.a, "POST", w.path, w.assignment.round_id, params=query, body=body,
        headers=headers,
    )  # fmt: skip
    # Assert
    _refused_with_reason(r)
    assert served.state() == before


@settings(max_examples=60)
@given(
    query=st.lists(
        st.one_of(
            st.tuples(st.sampled_from(["have", "format", "dtype", "hav"]), QUERY_TEXT),
            st.tuples(st.just("have"), st.sampled_from(["0", "1", "2"])),
            st.tuples(st.just("format"), st.sampled_from(["auto", "snapshot", "delta"])),
            st.tuples(st.just("dtype"), st.sampled_from(["fp32", "fp16"])),
        ),
        max_size=3,
    )
)
def test_any_model_download_query_is_answered_200_or_a_4xx_and_changes_nothing(
    served: Served, query: list[tuple[str, str]]
) -> None:
    # Prepare
    w = served.world
    before = served.state()
    # Execute
    r = send_signed(w.http, w.a, "GET", f"/v1/tasks/{w.task_id}/model", 0, params=query)
    # Assert
    if r.status_code != 200:
        _refused_with_reason(r)
    assert served.state() == before


@settings(max_examples=60)
@given(
    query=st.lists(
        st.one_of(
            st.tuples(st.sampled_from(["last", "before", "lats"]), QUERY_TEXT),
            st.tuples(st.just("last"), st.sampled_from(["1", "2", "100000", "100001"])),
            st.tuples(st.just("before"), st.sampled_from(["1", "2", "3"])),
        ),
        max_size=3,
    )
)
def test_any_rounds_listing_query_is_answered_200_or_a_4xx_and_changes_nothing(
    served: Served, query: list[tuple[str, str]]
) -> None:
    # Prepare
    w = served.world
    before = served.state()
    # Execute
    r = w.http.get(f"/v1/admin/tasks/{w.task_id}/rounds", params=query, headers=ADMIN_H)
    # Assert
    if r.status_code != 200:
        _refused_with_reason(r)
    else:
        assert isinstance(r.json(), list)
    assert served.state() == before


def test_the_round_still_takes_the_devices_real_upload_afterwards(served: Served) -> None:
    # Prepare: every refusal above left the round as it was
    w = served.world
    assert served.state()[:3] == ("open", 0, (0, 0))
    # Execute: the selected device's own frame, under the key the refusals tried
    r = send_signed(
        w.http, w.a, "POST", w.path, w.assignment.round_id, body=w.frame,
        headers={"content-type": "application/octet-stream", "idempotency-key": "k-57"},
    )  # fmt: skip
    # Assert
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] is True and r.json()["duplicate"] is False
