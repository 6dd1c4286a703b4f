"""docs/devices.md, "A coordinator with a new database": "An app directory is one
coordinator's: pointed at another coordinator, the directory sets everything aside at the first
answer, and pointed back, again". Two loopback coordinators with databases of their own, one
device directory taken from one to the other and back: each move sets aside the held model, the
residual and the accepted record, logs the one warning naming them, and writes the new
incarnation (32 hex digits) to state.json."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.service import ServerThread, ServiceConfig
from sdk import Client
from tests.coordinator.test_service_support import (
    ADMIN,
    SoftmaxTrainer,
    create_task,
    local_data,
    task_config,
)


@pytest.fixture()
def two(tmp_path: Path) -> Iterator[tuple[str, str]]:
    def config(name: str) -> ServiceConfig:
        return ServiceConfig(
            db_path=str(tmp_path / f"{name}.db"), admin_token=ADMIN, poll_s=0.05, tick_s=0.02
        )

    with ServerThread(config("a")) as a, ServerThread(config("b")) as b:
        yield a, b


def _held(app: Path) -> set[str]:
    return {
        p.name
        for p in app.iterdir()
        if p.name.startswith(("model", "residual", "accepted-", "pending."))
    }


def test_an_app_directory_moved_between_coordinators_sets_its_state_aside_each_time(
    two: tuple[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = two
    app = tmp_path / "plume-app"
    incarnations = []
    for url in (a, b, a):
        task_id = create_task(url, task_config(rounds=5, clients_per_round=1))
        with Client(url, app) as client:
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="plume.sdk"):
                client.register()
            state = json.loads((app / "state.json").read_text())
            incarnations.append(state["incarnation"])
            assert re.fullmatch(r"[0-9a-f]{32}", state["incarnation"])
            warnings = [r.getMessage() for r in caplog.records if r.name == "plume.sdk"]
            if len(incarnations) == 1:
                # "The first incarnation an app directory hears ... is written and sets nothing
                # aside"
                assert warnings == []
            else:
                # "An answer that names another one is acted on before anything else in it"
                assert len(warnings) == 1, warnings
                assert warnings[0].startswith(
                    f"{app}: the coordinator at {url}/ serves another database than the one "
                    "this app directory's state is of (incarnation "
                    f"{incarnations[-1]}, was {incarnations[-2]}: "
                ), warnings[0]
                assert "the error-feedback residual of task 1 is dropped" in warnings[0]
                assert "the model held of task 1 is dropped" in warnings[0]
                assert _held(app) == set(), _held(app)  # everything set aside
            report = client.participate(SoftmaxTrainer(), *local_data(4), task_id=task_id)
            assert report is not None and report.download_encoding == "snapshot"
            assert {"model.f32", f"residual-{task_id}.bin"} <= _held(app)
    assert incarnations[0] == incarnations[2] != incarnations[1]
