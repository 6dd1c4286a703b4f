"""A plain task's devices send their mean local training loss with their upload, and the
coordinator reports each round's median and mean of them (helper-287).

Before, a deployed task gave the operator no signal of model quality: a round's measurements
held only `clients`, `total_weight` and `downlink_frame_bytes`, and the device's training loss
(`RoundReport.loss`) never left it. Now the assignment of a plain task without DP says
`"report_loss": true`, an upload may carry `?train_loss=<decimal>` (in the signed target), the
coordinator stores it with the accepted update (schema 5) and a round's close adds
`train_loss_median`, `train_loss_mean` (unweighted) and `train_loss_reports`, and sets
`plume_round_train_loss{task, stat}`. A task with a dp stage or a secure task does not ask,
and an upload that carries a loss to it is 422 `train_loss_refused`, not taken.

These tests drive the real service on loopback with SDK clients for registration, check-in
and encoding, and send the uploads signed by hand (so the query is exactly what is tested).
"""

from __future__ import annotations

import math
import re
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.rounds import loss_measurements
from coordinator.service.store import SCHEMA_VERSION, Store, StoreError
from protocol.messages import (
    MAX_TRAIN_LOSS,
    Assignment,
    MessageError,
    check_train_loss,
    format_train_loss,
)
from sdk.client import Client

from .test_service_support import (
    ADMIN,
    SPEC,
    admin_get,
    create_task,
    send_signed,
    signed_headers,
    task_config,
    wait_until,
)

AUTH = {"authorization": f"Bearer {ADMIN}"}
DP_PLAIN = "dp:clip=1,z=0.5+fedavg"
DP_NESTED = "avgm+dp:clip=1,z=0.5+fedavg"  # the dp stage inside a server optimizer


def _config(db: Path) -> ServiceConfig:
    return ServiceConfig(db_path=str(db), admin_token=ADMIN, poll_s=0.05, tick_s=0.02)


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[ServerThread]:
    thread = ServerThread(_config(tmp_path / "plume.db"))
    with thread:
        yield thread


@pytest.fixture()
def server(served: ServerThread) -> str:
    return served.url


@pytest.fixture(scope="module")
def refusing_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One coordinator for the cases of a refused upload: each creates its own task and device
    (its check-ins name its task), and a refused upload changes nothing another case reads."""
    with ServerThread(_config(tmp_path_factory.mktemp("h287") / "plume.db")) as url:
        yield url


class Answers:
    """A client mod keeping the raw JSON of every check-in answer with an assignment."""

    def __init__(self) -> None:
        self.assignments: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request, nxt: Any) -> Any:
        response = nxt(request)
        if request.url.path == "/v1/checkin":
            response.read()
            body = response.json()
            if body.get("assignment"):
                self.assignments.append(body["assignment"])
        return response


def _clients(url: str, root: Path, n: int, answers: Answers | None = None) -> list[Client]:
    mods = (answers,) if answers is not None else ()
    clients = [Client(url, str(root / f"d{i}"), mods=mods) for i in range(n)]
    for c in clients:
        c.register()
    return clients


def _assign_all(clients: list[Client], task_id: int) -> list[Assignment]:
    """Check every client in, round-robin, until each holds an assignment of one round."""
    out: dict[int, Assignment] = {}
    give_up = time.monotonic() + 30
    while len(out) < len(clients):
        for i, c in enumerate(clients):
            if i not in out:
                answer = c.check_in(task_id)
                if answer.assignment is not None:
                    out[i] = answer.assignment
        assert time.monotonic() < give_up, "no assignment"
        time.sleep(0.02)
    assert len({a.round_id for a in out.values()}) == 1
    return [out[i] for i in range(len(clients))]


def _frame(client: Client, a: Assignment, seed: int) -> bytes:
    """An update frame of `client` for `a` (a small seeded delta from zero)."""
    delta = np.random.default_rng(seed).normal(0, 0.01, SPEC.size).astype(np.float32)
    zero = np.zeros(SPEC.size, np.float32)
    return client.encode_update(a, zero, delta, 40).frame


def _upload(
    http: httpx.Client,
    client: Client,
    a: Assignment,
    frame: bytes,
    *,
    query: str = "",
    key: str | None = None,
) -> httpx.Response:
    """`frame` posted to `a`'s upload path with `query` (e.g. "?train_loss=0.5") in the signed
    target, as a device sends it."""
    return send_signed(
        http,
        client,
        "POST",
        a.upload_path + query,
        a.round_id,
        body=frame,
        headers={
            "content-type": "application/octet-stream",
            "idempotency-key": key or uuid.uuid4().hex,
        },
    )


def _gauges(http: httpx.Client, task_id: int) -> dict[str, float]:
    text = http.get("/metrics").text
    out = {}
    for labels, value in re.findall(r"^plume_round_train_loss\{([^}]*)\} (\S+)$", text, re.M):
        got = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if got["task"] == str(task_id):
            out[got["stat"]] = float(value)
    return out


def test_a_plain_round_reports_the_median_and_mean_of_its_devices_losses(
    server: str, tmp_path: Path
) -> None:
    # Prepare: four devices in one round; three send a loss, one (an older SDK) none
    with httpx.Client(base_url=server) as http:
        task_id = create_task(http, task_config(rounds=1, clients_per_round=4))
        answers = Answers()
        clients = _clients(server, tmp_path, 4, answers)
        assigned = _assign_all(clients, task_id)
        losses = ["0.5", "0.75", "3.0", None]
        # Execute
        for i, (c, a, loss) in enumerate(zip(clients, assigned, losses, strict=True)):
            query = "" if loss is None else f"?train_loss={loss}"
            r = _upload(http, c, a, _frame(c, a, i), query=query)
            assert r.status_code == 200, r.text
        status = wait_until(http, f"/v1/rounds/{assigned[0].round_id}", "state", "committed")
        # Assert: every assignment asked for the loss, on the wire and parsed
        assert len(answers.assignments) == 4
        assert all(raw["report_loss"] is True for raw in answers.assignments)
        assert all(a.report_loss is True for a in assigned)
        # ... the round's figures are those of the three losses sent (the old SDK's upload counts
        # in the model, not in them)
        meas = status["measurements"]
        assert status["reports"] == 4 and meas["clients"] == 4
        assert meas["train_loss_reports"] == 3
        assert meas["train_loss_median"] == 0.75
        assert meas["train_loss_mean"] == math.fsum([0.5, 0.75, 3.0]) / 3
        # ... and the gauge says the same
        assert _gauges(http, task_id) == {"median": 0.75, "mean": meas["train_loss_mean"]}
        for c in clients:
            c.close()


def test_a_round_abandoned_below_min_reports_publishes_no_loss_figures(
    served: ServerThread, tmp_path: Path
) -> None:
    # Prepare: two devices selected, two reports needed; only one uploads (with its loss)
    # before the deadline: the round is abandoned holding one report
    server = served.url
    with httpx.Client(base_url=server) as http:
        cfg = task_config(rounds=1, clients_per_round=2, min_reports=2, deadline_s=30.0)
        task_id = create_task(http, cfg)
        clients = _clients(server, tmp_path, 2)
        assigned = _assign_all(clients, task_id)
        # Execute
        r = _upload(
            http,
            clients[0],
            assigned[0],
            _frame(clients[0], assigned[0], 0),
            query="?train_loss=1.25",
        )
        assert r.status_code == 200, r.text
        # ... the deadline passes on the coordinator's clock (its ticker abandons the round
        # there), without waiting it out
        coordinator = served.app.state.coordinator
        real_clock = coordinator.clock
        coordinator.clock = lambda: real_clock() + cfg.deadline_s
        path = f"/v1/rounds/{assigned[0].round_id}"
        status = wait_until(http, path, "state", "abandoned", timeout=30.0)
        seen_by_device = send_signed(http, clients[1], "GET", path, assigned[0].round_id)
        # Assert: no loss figure, to the operator or to another device (with one report, the
        # figure would be that device's own loss), and no gauge series
        assert status["state"] == "abandoned"
        assert not [k for k in status["measurements"] if k.startswith("train_loss")]
        assert seen_by_device.status_code == 200, seen_by_device.text
        assert "train_loss" not in seen_by_device.text
        assert _gauges(http, task_id) == {}
        for c in clients:
            c.close()


def test_a_round_without_any_loss_has_no_loss_figures(server: str, tmp_path: Path) -> None:
    # Prepare: two devices of an older SDK (no train_loss)
    with httpx.Client(base_url=server) as http:
        task_id = create_task(http, task_config(rounds=1, clients_per_round=2))
        clients = _clients(server, tmp_path, 2)
        assigned = _assign_all(clients, task_id)
        # Execute
        for i, (c, a) in enumerate(zip(clients, assigned, strict=True)):
            assert _upload(http, c, a, _frame(c, a, i)).status_code == 200
        status = wait_until(http, f"/v1/rounds/{assigned[0].round_id}", "state", "committed")
        # Assert: accepted as before, and no train_loss key, no gauge series
        assert status["state"] == "committed" and status["reports"] == 2
        assert not [k for k in status["measurements"] if k.startswith("train_loss")]
        assert _gauges(http, task_id) == {}
        for c in clients:
            c.close()


@pytest.mark.parametrize("aggregator", [DP_PLAIN, DP_NESTED])
def test_a_dp_task_does_not_ask_and_refuses_a_loss_leaving_the_round_untouched(
    server: str, tmp_path: Path, aggregator: str
) -> None:
    # Prepare: a task with a dp stage (outermost, or inside a server optimizer)
    with httpx.Client(base_url=server) as http:
        task_id = create_task(
            http, task_config(rounds=1, clients_per_round=2, aggregator=aggregator)
        )
        before = admin_get(http, f"/v1/admin/tasks/{task_id}")["model_digest"]
        answers = Answers()
        clients = _clients(server, tmp_path, 2, answers)
        assigned = _assign_all(clients, task_id)
        frame = _frame(clients[0], assigned[0], 0)
        # Execute: a forged loss on an otherwise good upload
        refused = _upload(http, clients[0], assigned[0], frame, query="?train_loss=0.25", key="k0")
        after_refusal = admin_get(http, f"/v1/rounds/{assigned[0].round_id}")
        # Assert: the assignment did not ask; 422 train_loss_refused, nothing taken
        assert all("report_loss" not in raw for raw in answers.assignments)
        assert all(a.report_loss is None for a in assigned)
        assert refused.status_code == 422, refused.text
        assert refused.json()["reason"] == "train_loss_refused"
        assert "differential privacy" in refused.json()["detail"]
        assert after_refusal["reports"] == 0 and after_refusal["state"] == "open"
        assert admin_get(http, f"/v1/admin/tasks/{task_id}")["model_digest"] == before
        # ... and the same update without the loss is then taken (same idempotency key), the
        # round closing with no loss figures
        assert _upload(http, clients[0], assigned[0], frame, key="k0").status_code == 200
        f1 = _frame(clients[1], assigned[1], 1)
        assert _upload(http, clients[1], assigned[1], f1).status_code == 200
        status = wait_until(http, f"/v1/rounds/{assigned[0].round_id}", "state", "committed")
        assert status["reports"] == 2
        assert not [k for k in status["measurements"] if k.startswith("train_loss")]
        for c in clients:
            c.close()


def test_a_secure_task_does_not_ask_for_the_loss(server: str, tmp_path: Path) -> None:
    # Prepare: a SecAgg+ task without noise (no dp stage, but a secure round promises that no
    # single device's update is seen)
    with httpx.Client(base_url=server) as http:
        cfg = task_config(
            rounds=1, clients_per_round=3, min_reports=3, selection_timeout_s=30.0,
            secure={"coord_fraction": 0.5, "stage_timeout_s": 30.0},
        )  # fmt: skip
        task_id = create_task(http, cfg)
        answers = Answers()
        clients = _clients(server, tmp_path, 3, answers)
        # Execute
        assigned = _assign_all(clients, task_id)
        # Assert
        assert all(a.secure for a in assigned)
        assert all("report_loss" not in raw for raw in answers.assignments)
        assert all(a.report_loss is None for a in assigned)
        for c in clients:
            c.close()


@pytest.mark.parametrize(
    "query, words",
    [
        ("?train_loss=nan", "is not a decimal number"),
        ("?train_loss=inf", "is not a decimal number"),
        ("?train_loss=-1", "is not a decimal number"),
        ("?train_loss=1e999", "is above the largest loss taken"),
        ("?train_loss=1000000.5", "is above the largest loss taken"),
        ("?train_loss=", "is not a decimal number"),
        ("?train_loss=0x10", "is not a decimal number"),
        ("?train_loss=1_0", "is not a decimal number"),
        ("?train_loss=%201", "is not a decimal number"),
        ("?train_loss=" + "1" * 33, "at most 32 characters"),
        ("?train_loss=0.5&train_loss=0.5", "given 2 times"),
        ("?train_los=0.5", "unknown parameter"),
    ],
)
def test_a_malformed_loss_is_422_before_the_body_is_read(
    refusing_server: str, tmp_path: Path, query: str, words: str
) -> None:
    # Prepare: a task and a device of this case's own
    server = refusing_server
    with httpx.Client(base_url=server) as http:
        task_id = create_task(http, task_config(rounds=1, clients_per_round=1))
        (client,) = _clients(server, tmp_path, 1)
        (a,) = _assign_all([client], task_id)
        frame = _frame(client, a, 0)
        req = http.build_request(
            "POST",
            a.upload_path + query,
            content=frame,
            headers={"content-type": "application/octet-stream", "idempotency-key": "k"},
        )
        req.headers.update(
            signed_headers(client._core.key, "POST", req.url.raw_path.decode(), a.round_id, frame)
        )
        # Execute: the same signed request twice
        first, again = http.send(req), http.send(req)
        # Assert: 422 validation naming the query, both times (the nonce was not spent), and the
        # round took nothing
        for r in (first, again):
            assert r.status_code == 422, r.text
            assert r.json()["reason"] == "validation"
            assert r.json()["detail"].startswith("query.train_lo"), r.json()
            assert words in r.json()["detail"]
        status = admin_get(http, f"/v1/rounds/{a.round_id}")
        assert status["reports"] == 0 and status["state"] == "open"
        client.close()


def test_a_restart_keeps_the_losses_of_accepted_updates(tmp_path: Path) -> None:
    # Prepare: three devices in a round; two upload with a loss, then the coordinator restarts
    db = tmp_path / "plume.db"
    with ServerThread(_config(db)) as url:
        with httpx.Client(base_url=url) as http:
            task_id = create_task(http, task_config(rounds=1, clients_per_round=3))
            clients = _clients(url, tmp_path, 3)
            assigned = _assign_all(clients, task_id)
            for i, loss in ((0, "2.0"), (1, "0.5")):
                r = _upload(http, clients[i], assigned[i], _frame(clients[i], assigned[i], i),
                            query=f"?train_loss={loss}")  # fmt: skip
                assert r.status_code == 200, r.text
            frame2 = _frame(clients[2], assigned[2], 2)
            for c in clients:
                c.close()
    # Execute: the third upload reaches the restarted coordinator
    with ServerThread(_config(db)) as url:
        with httpx.Client(base_url=url) as http:
            r = _upload(http, clients[2], assigned[2], frame2, query="?train_loss=1.25")
            assert r.status_code == 200, r.text
            status = wait_until(http, f"/v1/rounds/{assigned[0].round_id}", "state", "committed")
            gauges = _gauges(http, task_id)
    # Assert: the losses accepted before the restart are in the round's figures
    meas = status["measurements"]
    assert meas["train_loss_reports"] == 3
    assert meas["train_loss_median"] == 1.25
    assert meas["train_loss_mean"] == math.fsum([2.0, 0.5, 1.25]) / 3
    assert gauges == {"median": 1.25, "mean": meas["train_loss_mean"]}
    # ... and a start sets the gauge from the last committed round
    with ServerThread(_config(db)) as url:
        with httpx.Client(base_url=url) as http:
            assert _gauges(http, task_id) == gauges


def _as_schema_4(db: Path) -> None:
    """Make the store at `db` one a coordinator of schema 4 wrote: no updates.train_loss."""
    con = sqlite3.connect(db)
    con.execute("ALTER TABLE updates DROP COLUMN train_loss")
    con.execute("UPDATE meta SET value='4' WHERE key='schema_version'")
    con.commit()
    con.close()


def test_a_schema_4_store_with_an_open_round_migrates_and_its_round_closes(
    tmp_path: Path,
) -> None:
    # Prepare: a round with one accepted update (no loss), the store turned into schema 4's
    db = tmp_path / "plume.db"
    with ServerThread(_config(db)) as url:
        with httpx.Client(base_url=url) as http:
            task_id = create_task(http, task_config(rounds=1, clients_per_round=2))
            clients = _clients(url, tmp_path, 2)
            assigned = _assign_all(clients, task_id)
            r = _upload(http, clients[0], assigned[0], _frame(clients[0], assigned[0], 0))
            assert r.status_code == 200, r.text
            frame1 = _frame(clients[1], assigned[1], 1)
            for c in clients:
                c.close()
    _as_schema_4(db)
    # Execute: a coordinator of this schema opens it; the second upload carries a loss
    with ServerThread(_config(db)) as url:
        with httpx.Client(base_url=url) as http:
            r = _upload(http, clients[1], assigned[1], frame1, query="?train_loss=0.5")
            assert r.status_code == 200, r.text
            status = wait_until(http, f"/v1/rounds/{assigned[0].round_id}", "state", "committed")
    # Assert: migrated in place, the old update replayed (no loss), the new one's loss kept
    con = sqlite3.connect(db)
    assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (
        str(SCHEMA_VERSION),
    )
    rows = con.execute("SELECT train_loss FROM updates ORDER BY seq").fetchall()
    con.close()
    assert SCHEMA_VERSION == 5 and rows == [(None,), (0.5,)]
    assert status["reports"] == 2
    meas = status["measurements"]
    assert (meas["train_loss_reports"], meas["train_loss_median"]) == (1, 0.5)


def test_a_schema_5_store_without_the_column_is_refused_as_damaged(tmp_path: Path) -> None:
    # Prepare: a current store whose train_loss column was dropped by hand
    db = tmp_path / "plume.db"
    Store(db).close()
    con = sqlite3.connect(db)
    con.execute("ALTER TABLE updates DROP COLUMN train_loss")
    con.commit()
    con.close()
    # Execute + Assert
    with pytest.raises(StoreError, match="lacks column updates.train_loss"):
        Store(db)


def test_the_store_keeps_an_updates_loss(tmp_path: Path) -> None:
    # Prepare
    store = Store(tmp_path / "plume.db")
    with store.transaction() as db:
        db.execute(
            "INSERT INTO rounds(task_id, seq, state, base_version, selected_json, target, "
            "min_reports, opened_unix, deadline_unix) VALUES (1, 1, 'open', 0, '[]', 2, 1, 0, 9)"
        )
        store.insert_update(db, 1, "a", "ka", b"fa", 1.0, 0.125)
        store.insert_update(db, 1, "b", "kb", b"fb", 1.0)
    # Execute
    rows = store.updates(1)
    store.close()
    # Assert
    assert [(u.device_id, u.train_loss) for u in rows] == [("a", 0.125), ("b", None)]


def test_loss_figures() -> None:
    assert loss_measurements([]) == {}
    assert loss_measurements([1.0, 100.0, 2.0, 3.0]) == {
        "train_loss_median": 2.5,  # robust: the liar's 100 moves it no further than 3 would
        "train_loss_mean": 26.5,
        "train_loss_reports": 4,
    }


# -- the query value's parser -----------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.floats(min_value=0.0, max_value=MAX_TRAIN_LOSS, allow_nan=False))
def test_every_loss_in_range_goes_out_and_reads_back_exactly(loss: float) -> None:
    text = format_train_loss(loss)
    assert text is not None and len(text) <= 32 and "+" not in text
    assert check_train_loss(text) == loss


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).filter(
            lambda x: not (0.0 <= x <= MAX_TRAIN_LOSS)
        ),
        st.none(),
        st.booleans(),
        st.text(max_size=4),
    )
)
def test_a_loss_that_is_not_sent(loss: Any) -> None:
    assert format_train_loss(loss) is None


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.text(max_size=40),
        st.text(alphabet="0123456789.eE+-", max_size=40),
        st.from_regex(r"[0-9]{1,20}(\.[0-9]{1,10})?([eE][-+]?[0-9]{1,4})?", fullmatch=True),
    )
)
def test_the_parser_takes_only_plain_decimals_in_range(text: str) -> None:
    try:
        value = check_train_loss(text)
    except MessageError as exc:
        assert str(exc).startswith("query.train_loss")
        return
    assert re.fullmatch(r"[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?", text) and len(text) <= 32
    assert math.isfinite(value) and 0.0 <= value <= MAX_TRAIN_LOSS
    assert value == float(text)


def test_the_parser_refuses_what_float_would_take() -> None:
    for text in ["nan", "inf", "Infinity", " 1", "1 ", "1_0", "+1", "-0", "0x1", ".5", "1.", "١"]:
        with pytest.raises(MessageError):
            check_train_loss(text)
    with pytest.raises(MessageError, match="expected a decimal number"):
        check_train_loss(0.5)
