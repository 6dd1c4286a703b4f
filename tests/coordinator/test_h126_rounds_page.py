"""`GET /v1/admin/tasks/{id}/rounds?last=N&before=ROUND`: a page of a task's rounds, limited in
SQL. Without a parameter the route answered (and still answers) every round, each row's JSON
parsed, so a task with 10,000+ rounds made every `plume coordinator status --task` slow and
large; `last` was refused as unknown nowhere and ignored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.cli import main
from coordinator.service import AdminClient, ServerThread, ServiceConfig
from coordinator.service import store as store_module
from coordinator.service.store import Store

from .test_service_support import ADMIN, create_task, task_config

AUTH = {"authorization": f"Bearer {ADMIN}"}
ROUNDS = 7


def _add_rounds(store: Store, task_id: int, n: int, first_seq: int = 1) -> list[int]:
    """`n` abandoned rounds of `task_id` (seq first_seq...), as a close leaves them; their ids."""
    ids = []
    for seq in range(first_seq, first_seq + n):
        rid = store.open_round(task_id, seq, 0, ["d"], 1, 1, float(seq), float(seq) + 1)
        store.abandon(rid, task_id, {"reason": f"r{seq}"}, "active", float(seq) + 1)
        ids.append(rid)
    return ids


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, list[int], int]]:
    """(url, task id, its round ids by seq, another task's round id) of a running coordinator."""
    db = tmp_path_factory.mktemp("h126") / "p.db"
    with ServerThread(ServiceConfig(db_path=str(db), admin_token=ADMIN)) as url:
        with httpx.Client(base_url=url) as http:
            task_id = create_task(http, task_config(rounds=100))
            other = create_task(http, task_config(rounds=100))
        store = Store(db)
        try:
            ids = _add_rounds(store, task_id, ROUNDS)
            other_ids = _add_rounds(store, other, 2)
        finally:
            store.close()
        yield url, task_id, ids, other_ids[0]


def _get(url: str, path: str) -> httpx.Response:
    with httpx.Client(base_url=url) as http:
        return http.get(path, headers=AUTH)


def test_without_last_the_answer_is_every_round_as_before(
    served: tuple[str, int, list[int], int],
) -> None:
    url, task_id, ids, _ = served
    body = _get(url, f"/v1/admin/tasks/{task_id}/rounds").json()
    assert [r["round_id"] for r in body] == ids
    assert [r["seq"] for r in body] == list(range(1, ROUNDS + 1))


@pytest.mark.parametrize(("last", "seqs"), [(1, [7]), (3, [5, 6, 7]), (7, list(range(1, 8))),
                                            (100_000, list(range(1, 8)))])  # fmt: skip
def test_last_answers_the_newest_rounds_oldest_first(
    served: tuple[str, int, list[int], int], last: int, seqs: list[int]
) -> None:
    # Prepare
    url, task_id, _, _ = served
    whole = _get(url, f"/v1/admin/tasks/{task_id}/rounds")

    # Execute
    page = _get(url, f"/v1/admin/tasks/{task_id}/rounds?last={last}")

    # Assert: the same items, byte for byte, as the tail of the whole list
    assert page.status_code == 200
    assert [r["seq"] for r in page.json()] == seqs
    assert page.json() == whole.json()[-last:]


def test_before_pages_backwards(served: tuple[str, int, list[int], int]) -> None:
    url, task_id, ids, _ = served
    path = f"/v1/admin/tasks/{task_id}/rounds"
    page = _get(url, f"{path}?last=3&before={ids[4]}").json()  # before seq 5
    assert [r["seq"] for r in page] == [2, 3, 4]
    page = _get(url, f"{path}?last=3&before={page[0]['round_id']}").json()
    assert [r["seq"] for r in page] == [1]
    assert _get(url, f"{path}?last=3&before={ids[0]}").json() == []
    assert [r["seq"] for r in _get(url, f"{path}?before={ids[3]}").json()] == [1, 2, 3]


@pytest.mark.parametrize(
    ("query", "status", "reason", "says"),
    [
        ("last=0", 422, "validation", "query.last: Input should be greater than or equal to 1"),
        ("last=-2", 422, "validation", "query.last: a number in the query is decimal digits"),
        ("last=100001", 422, "validation", "less than or equal to 100000"),
        ("last=abc", 422, "validation", "with no sign, space, point or leading zero (got 'abc')"),
        ("last=1_0", 422, "validation", "(got '1_0')"),
        ("last=01", 422, "validation", "(got '01')"),
        ("last=1.5", 422, "validation", "query.last"),
        ("before=0", 422, "validation", "query.before"),
        ("before=9223372036854775808", 422, "validation", "query.before"),
        ("before=999999", 404, "unknown_round", "round 999999 is not one of task"),
    ],
)
def test_bad_values_are_refused_with_a_reason(
    served: tuple[str, int, list[int], int], query: str, status: int, reason: str, says: str
) -> None:
    url, task_id, _, _ = served
    r = _get(url, f"/v1/admin/tasks/{task_id}/rounds?{query}")
    assert r.status_code == status, r.text
    assert r.json()["reason"] == reason and says in r.json()["detail"], r.text


def test_a_round_of_another_task_is_no_page_mark(served: tuple[str, int, list[int], int]) -> None:
    url, task_id, _, other_round = served
    r = _get(url, f"/v1/admin/tasks/{task_id}/rounds?before={other_round}")
    assert r.status_code == 404 and r.json() == {
        "reason": "unknown_round",
        "detail": f"round {other_round} is not one of task {task_id}'s rounds",
    }


def test_unknown_task_is_still_404_with_last(served: tuple[str, int, list[int], int]) -> None:
    url, *_ = served
    r = _get(url, "/v1/admin/tasks/999/rounds?last=5")
    assert r.status_code == 404 and r.json()["reason"] == "unknown_task"


def test_admin_client_passes_last_and_before(served: tuple[str, int, list[int], int]) -> None:
    url, task_id, ids, _ = served
    with AdminClient(url, ADMIN) as admin:
        assert [r.seq for r in admin.rounds(task_id)] == list(range(1, ROUNDS + 1))
        assert [r.seq for r in admin.rounds(task_id, last=2)] == [6, 7]
        assert [r.seq for r in admin.rounds(task_id, last=2, before=ids[2])] == [1, 2]


def test_status_last_prints_the_newest_rounds_only(
    served: tuple[str, int, list[int], int], capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    url, task_id, _, _ = served
    base = ["coordinator", "status", "--url", url, "--admin-token", ADMIN, "--task", str(task_id)]
    assert main(base) == 0
    whole = json.loads(capsys.readouterr().out)

    # Execute
    code = main([*base, "--last", "2"])

    # Assert: the same shape, the rounds cut to the newest two
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out == {"task": whole["task"], "rounds": whole["rounds"][-2:]}


def _status_usage_error(capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    """`plume coordinator status *flags` refused with a usage error (status 2): its stderr.
    Nothing listens at its URL: a request would fail differently (status 1)."""
    argv = ["coordinator", "status", "--url", "http://127.0.0.1:9", "--admin-token", ADMIN]
    with pytest.raises(SystemExit) as info:
        main([*argv, *flags])
    assert info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--task", "1", "--last", "0"], "argument --last: a number of rounds is 1 to 100000"),
        (["--task", "1", "--last", "x"], "argument --last: expected a number of rounds, got 'x'"),
        (["--task", "1", "--last", "100001"], "a number of rounds is 1 to 100000, got 100001"),
        (["--last", "3"], "--last needs --task"),
    ],
)
def test_status_refuses_a_bad_last_before_any_request(
    flags: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert says in _status_usage_error(capsys, *flags)


# -- the store: limited in SQL, only the page parsed ------------------------------------------


@pytest.fixture(scope="module")
def store_of_30(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, list[int]]]:
    store = Store(tmp_path_factory.mktemp("h126s") / "s.db")
    task_id = store.create_task({"name": "t"}, "active", 0.0)
    other = store.create_task({"name": "u"}, "active", 0.0)
    ids: list[int] = []
    for seq in range(1, 31):  # the two tasks' rounds interleaved, as two tasks open them
        ids += _add_rounds(store, task_id, 1, seq)
        _add_rounds(store, other, 1, seq)
    try:
        yield store, ids
    finally:
        store.close()


def test_store_parses_only_the_page(
    store_of_30: tuple[Store, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    store, ids = store_of_30
    parsed: list[Any] = []
    real = store_module._round
    monkeypatch.setattr(store_module, "_round", lambda row: parsed.append(row) or real(row))

    # Execute
    page = store.rounds(1, last=4)

    # Assert
    assert [r.round_id for r in page] == ids[-4:]
    assert len(parsed) == 4


@given(last=st.none() | st.integers(1, 40), before=st.none() | st.integers(0, 31))
def test_store_page_is_the_slice_of_the_whole(
    store_of_30: tuple[Store, list[int]], last: int | None, before: int | None
) -> None:
    # Prepare: `before` drawn as a seq (0 and 31: no page mark)
    store, ids = store_of_30
    whole = store.rounds(1)
    mark, older = None, whole
    if before is not None and 1 <= before <= 30:
        mark, older = ids[before - 1], [r for r in whole if r.seq < before]

    # Execute
    page = store.rounds(1, last=last, before=mark)

    # Assert
    assert page == (older if last is None else older[-last:])


def test_the_cli_bound_is_the_coordinators() -> None:
    from coordinator import _cli
    from coordinator.service import rounds

    assert _cli._MAX_LAST == rounds.MAX_ROUNDS_PAGE
