"""A task's rounds, paged: `plume coordinator status --task ID --before ROUND` pages backwards
as `AdminClient.rounds(before=)` does (the command had --last only, so an operator could
read the newest N rounds but none older)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from coordinator.cli import main
from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.store import Store

from .test_h126_rounds_page import _status_usage_error
from .test_service_support import ADMIN, create_task, task_config

AUTH = {"authorization": f"Bearer {ADMIN}"}
ROUNDS = 6


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, list[int]]]:
    """(url, task id, its round ids by seq) of a running coordinator; the task has ROUNDS
    abandoned rounds, and another task's rounds are interleaved with them."""
    db = tmp_path_factory.mktemp("h137") / "p.db"
    with ServerThread(ServiceConfig(db_path=str(db), admin_token=ADMIN)) as url:
        with httpx.Client(base_url=url) as http:
            task_id = create_task(http, task_config(rounds=100))
            other = create_task(http, task_config(rounds=100))
        store = Store(db)
        ids = []
        try:
            for seq in range(1, ROUNDS + 1):
                for task in (task_id, other):
                    rid = store.open_round(task, seq, 0, ["d"], 1, 1, float(seq), seq + 1.0)
                    store.abandon(rid, task, {"reason": f"r{seq}"}, "active", seq + 1.0)
                    if task == task_id:
                        ids.append(rid)
        finally:
            store.close()
        yield url, task_id, ids


def _status(url: str, task_id: int, *flags: str) -> list[str]:
    return ["coordinator", "status", "--url", url, "--admin-token", ADMIN, "--task",
            str(task_id), *flags]  # fmt: skip


def test_status_before_pages_backwards(
    served: tuple[str, int, list[int]], capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    url, task_id, ids = served
    assert main(_status(url, task_id)) == 0
    whole = json.loads(capsys.readouterr().out)

    # Execute: the two rounds before seq 5, then the page before that one, then all before seq 4
    code = main(_status(url, task_id, "--last", "2", "--before", str(ids[4])))
    page = json.loads(capsys.readouterr().out)
    older = main(
        _status(url, task_id, "--last", "2", "--before", str(page["rounds"][0]["round_id"]))
    )
    page2 = json.loads(capsys.readouterr().out)
    code_all = main(_status(url, task_id, "--before", str(ids[3])))
    page3 = json.loads(capsys.readouterr().out)

    # Assert: the same JSON as without, the rounds cut to the slice
    assert (code, older, code_all) == (0, 0, 0)
    assert page == {"task": whole["task"], "rounds": whole["rounds"][2:4]}
    assert page2 == {"task": whole["task"], "rounds": whole["rounds"][0:2]}
    assert page3 == {"task": whole["task"], "rounds": whole["rounds"][0:3]}
    assert [r["seq"] for r in page["rounds"]] == [3, 4]


def test_status_before_the_first_round_prints_no_rounds(
    served: tuple[str, int, list[int]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, task_id, ids = served
    assert main(_status(url, task_id, "--before", str(ids[0]))) == 0
    assert json.loads(capsys.readouterr().out)["rounds"] == []


def test_status_before_a_round_not_of_the_task_is_the_coordinators_404(
    served: tuple[str, int, list[int]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, task_id, ids = served
    code = main(_status(url, task_id, "--before", str(ids[-1] + 1)))  # the other task's round
    err = capsys.readouterr().err
    assert code == 1
    assert f"round {ids[-1] + 1} is not one of task {task_id}'s rounds" in err, err
    assert "unknown_round" in err, err


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--before", "81"], "--before needs --task"),
        (["--last", "3", "--before", "81"], "error: --last and --before need --task"),
        (["--task", "1", "--before", "0"], "argument --before: a round id is 1 to"),
        (["--task", "1", "--before", "x"], "argument --before: expected a round id, got 'x'"),
        (["--task", "1", "--before", str(2**63)], "argument --before: a round id is 1 to"),
    ],
)
def test_status_refuses_a_bad_before_before_any_request(
    flags: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert says in _status_usage_error(capsys, *flags)


def test_status_help_shows_before() -> None:
    from coordinator.cli import build_parser, iter_parsers

    status = next(p for p in iter_parsers(build_parser()) if p.prog.endswith("status"))
    text = status.format_help()
    assert "--before ROUND_ID" in text
    assert "plume coordinator status --task 1 --last 20 --before 81" in text


# -- the route refuses a query key it does not take -------------------------------------------


def _get(url: str, path: str, **headers: str) -> httpx.Response:
    with httpx.Client(base_url=url) as http:
        return http.get(path, headers={**AUTH, **headers})


@pytest.mark.parametrize(
    ("query", "key"),
    [
        ("lats=2", "lats"),  # a typo of last: answered every round, as without a query
        ("last=2&befor=3", "befor"),
        ("Last=2", "Last"),
        ("last=2&x=", "x"),
        ("limit=5&offset=2", "limit"),
    ],
)
def test_an_unknown_query_key_is_422_validation_naming_it(
    served: tuple[str, int, list[int]], query: str, key: str
) -> None:
    url, task_id, _ = served
    r = _get(url, f"/v1/admin/tasks/{task_id}/rounds?{query}")
    assert r.status_code == 422, r.text
    assert r.json() == {
        "reason": "validation",
        "detail": f"query.{key}: unknown parameter; this route takes last and before",
    }


def test_known_keys_still_answer(served: tuple[str, int, list[int]]) -> None:
    url, task_id, ids = served
    path = f"/v1/admin/tasks/{task_id}/rounds"
    assert [r["seq"] for r in _get(url, f"{path}?last=2").json()] == [5, 6]
    assert [r["seq"] for r in _get(url, f"{path}?before={ids[2]}&last=1").json()] == [2]
    assert len(_get(url, f"{path}?").json()) == ROUNDS


def test_the_admin_token_is_checked_before_the_query(served: tuple[str, int, list[int]]) -> None:
    url, task_id, _ = served
    with httpx.Client(base_url=url) as http:
        r = http.get(f"/v1/admin/tasks/{task_id}/rounds?lats=2")
    assert r.status_code == 401, r.text


def test_other_routes_keep_ignoring_unknown_keys(served: tuple[str, int, list[int]]) -> None:
    url, task_id, _ = served
    assert _get(url, f"/v1/admin/tasks/{task_id}?lats=2").status_code == 200
    assert _get(url, "/v1/admin/tasks?lats=2").status_code == 200
