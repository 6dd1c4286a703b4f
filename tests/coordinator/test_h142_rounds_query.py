"""`GET /v1/admin/tasks/{id}/rounds` with a query key given twice (`?last=5&last=1`): 422
`validation` naming it, not the last value taken silently (helper-140's review)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.store import Store

from .test_service_support import ADMIN, create_task, task_config

AUTH = {"authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, list[int]]]:
    """(url, task id, its round ids by seq) of a running coordinator with 4 abandoned rounds."""
    db = tmp_path_factory.mktemp("h142") / "p.db"
    with ServerThread(ServiceConfig(db_path=str(db), admin_token=ADMIN)) as url:
        with httpx.Client(base_url=url) as http:
            task_id = create_task(http, task_config(rounds=100))
        yield url, task_id, abandoned_rounds(db, task_id, 4)


def abandoned_rounds(db: Path, task_id: int, n: int) -> list[int]:
    """`n` rounds of the task, opened and abandoned in the store itself: their ids by seq."""
    store = Store(db)
    ids = []
    try:
        for seq in range(1, n + 1):
            rid = store.open_round(task_id, seq, 0, ["d"], 1, 1, float(seq), seq + 1.0)
            store.abandon(rid, task_id, {"reason": f"r{seq}"}, "active", seq + 1.0)
            ids.append(rid)
    finally:
        store.close()
    return ids


def _get(url: str, path: str) -> httpx.Response:
    with httpx.Client(base_url=url) as http:
        return http.get(path, headers=AUTH)


@pytest.mark.parametrize(
    ("query", "key", "times"),
    [
        ("last=5&last=1", "last", 2),
        ("last=1&last=1", "last", 2),
        ("before={b}&last=2&before={b}", "before", 2),
        ("last=2&before={b}&last=3&last=4", "last", 3),
    ],
)
def test_a_key_given_twice_is_refused(
    served: tuple[str, int, list[int]], query: str, key: str, times: int
) -> None:
    url, task_id, ids = served
    r = _get(url, f"/v1/admin/tasks/{task_id}/rounds?" + query.format(b=ids[3]))
    assert r.status_code == 422, r.text
    assert r.json() == {
        "reason": "validation",
        "detail": f"query.{key}: given {times} times; give it once",
    }


def test_each_key_once_still_answers_the_page(served: tuple[str, int, list[int]]) -> None:
    url, task_id, ids = served
    r = _get(url, f"/v1/admin/tasks/{task_id}/rounds?last=2&before={ids[3]}")
    assert r.status_code == 200, r.text
    assert [row["round_id"] for row in r.json()] == ids[1:3]


def test_an_unknown_key_given_twice_is_still_unknown(served: tuple[str, int, list[int]]) -> None:
    url, task_id, _ = served
    r = _get(url, f"/v1/admin/tasks/{task_id}/rounds?lats=1&lats=2")
    assert r.status_code == 422
    assert r.json()["detail"] == "query.lats: unknown parameter; this route takes last and before"
