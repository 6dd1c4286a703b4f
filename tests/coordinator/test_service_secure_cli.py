"""`plume coordinator create-task --secure`: the flags become `TaskConfig.secure`, bad ones are
refused before anything is created."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.cli import main
from coordinator.service import ServerThread, ServiceConfig

from .test_service_support import ADMIN, admin_get


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[str]:
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN)
    with ServerThread(cfg) as url:
        yield url


def _create(url: str, *extra: str) -> list[str]:
    return [
        "coordinator", "create-task", "--url", url, "--admin-token", ADMIN, "--model", "mlp",
        "--rounds", "2", "--clients-per-round", "5", *extra,
    ]  # fmt: skip


def test_create_secure_task_from_the_cli(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    rc = main(
        _create(
            server, "--secure", "--secure-fraction", "0.05", "--secure-bits", "8",
            "--secure-group-size", "3", "--secure-group-aggregator", "median",
            "--stage-timeout", "20", "--stage-idle", "2",
            "--clients-per-round", "9",  # three groups: a median needs 3 group sums
        )
    )  # fmt: skip
    # Assert
    assert rc == 0
    task_id = json.loads(capsys.readouterr().out)["task_id"]
    status = admin_get(server, f"/v1/admin/tasks/{task_id}")
    assert status["state"] == "active"
    assert status["config"]["secure"] == {
        "coord_fraction": 0.05,
        "value_bits": 8,
        "group_size": 3,
        "group_aggregator": "median",
        "stage_timeout_s": 20.0,
        "stage_idle_s": 2.0,
    }


def test_bad_secure_options_are_refused(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Execute + Assert: a knob without --secure, an impossible ring, too small a cohort; each
    # refused before any request, a usage mistake (status 2, helper-231)
    assert main(_create(server, "--secure-bits", "8")) == 2
    assert "--secure-bits needs --secure" in capsys.readouterr().err
    assert main(_create(server, "--secure", "--secure-bits", "17")) == 2
    assert "value_bits" in capsys.readouterr().err
    assert main(_create(server, "--secure", "--clients-per-round", "2")) == 2
    assert "clients_per_round >= 3" in capsys.readouterr().err
    # the plain upload codec, which secure devices never use (it was silently ignored)
    assert main(_create(server, "--secure", "--topk", "0.1")) == 2
    assert "--topk sets the plain upload codec" in capsys.readouterr().err
    assert main(_create(server, "--secure", "--bits", "8")) == 2
    assert "--secure-bits bits a value" in capsys.readouterr().err
    # a graph degree above MAX_DEGREE: every device's share-keys work grows with its square
    big = ["--clients-per-round", "5000", "--min-reports", "3", "--secure-degree-factor", "200"]
    assert main(_create(server, "--secure", *big)) == 2
    err = capsys.readouterr().err
    assert "graph degree 5068" in err and "above 2048" in err
    assert "lower --secure-degree-factor or use --secure-group-size" in err
    tasks = admin_get(server, "/healthz")["tasks"]
    assert tasks == 0
