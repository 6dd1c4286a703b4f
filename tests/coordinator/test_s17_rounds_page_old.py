"""`AdminClient.rounds(last=, before=)` against a coordinator that predates the parameters (it
ignores them and sends every round): an `AdminError` saying so, not the whole list taken for a
page (helper-130's review: paging backwards on it never ended)."""

from __future__ import annotations

import json
from dataclasses import asdict

import httpx
import pytest

from coordinator.service import AdminClient, AdminError
from protocol.messages import RoundStatus


def _rounds(n: int) -> list[RoundStatus]:
    return [
        RoundStatus(round_id=10 + i, task_id=1, seq=i + 1, state="closed", base_version=i,
                    selected=3, target=2, min_reports=1, reports=2, opened_unix=1.0,
                    deadline_unix=2.0, closed_unix=2.0, version_after=i + 1)
        for i in range(n)
    ]  # fmt: skip


def _client(n: int, seen: list[httpx.URL]) -> AdminClient:
    """A coordinator that answers every round whatever the query, as one before ?last did."""
    body = json.dumps([asdict(r) for r in _rounds(n)]).encode()

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    return AdminClient("http://coordinator", "t", transport=httpx.MockTransport(answer))


@pytest.mark.parametrize(("last", "before"), [(2, None), (None, 13), (3, 14), (1, 10)], ids=str)
def test_an_older_coordinator_ignoring_the_page_is_an_error(
    last: int | None, before: int | None
) -> None:
    seen: list[httpx.URL] = []
    with pytest.raises(AdminError, match="predates them") as caught:
        _client(5, seen).rounds(1, last=last, before=before)
    assert caught.value.status == 200
    assert caught.value.problem.endswith("(upgrade it, or ask without them)")
    asked = {k for k, v in (("last", last), ("before", before)) if v is not None}
    assert seen and asked == set(seen[0].params)


def test_a_page_that_fits_is_taken() -> None:
    # Every round fits in `last`, and `before` is none of them: nothing tells it apart from
    # a real page, and nothing needs to (it is the right answer).
    seen: list[httpx.URL] = []
    page = _client(3, seen).rounds(1, last=5, before=99)
    assert [r.seq for r in page] == [1, 2, 3]
    assert [r.seq for r in _client(3, seen).rounds(1)] == [1, 2, 3]


def test_before_another_tasks_round_id_is_caught() -> None:
    # Round ids are shared by every task: this task's rounds are 10, 12 and 14 (another task
    # took 11 and 13), so `before=13` is no round of this task. An older coordinator sends all
    # three; 14 is not older than 13, which no real page holds (helper-140's review: only
    # round_id == before was looked for, and the whole list passed for a page).
    rounds = [
        RoundStatus(round_id=rid, task_id=1, seq=i + 1, state="closed", base_version=i,
                    selected=3, target=2, min_reports=1, reports=2, opened_unix=1.0,
                    deadline_unix=2.0, closed_unix=2.0, version_after=i + 1)
        for i, rid in enumerate((10, 12, 14))
    ]  # fmt: skip
    body = json.dumps([asdict(r) for r in rounds]).encode()

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    client = AdminClient("http://coordinator", "t", transport=httpx.MockTransport(answer))
    with pytest.raises(AdminError, match="predates them"):
        client.rounds(1, before=13)
    # A real page before 15 holds all three: taken.
    assert [r.round_id for r in client.rounds(1, before=15)] == [10, 12, 14]
