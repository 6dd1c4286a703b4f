"""A task's own lines in /metrics: 45, and 47 once a round of it reported the devices' training
loss (s50 ops review, finding 5).

docs/operations.md said each task has 45 lines of its own; a task whose last committed round
had training losses also has the two `plume_round_train_loss` series (median, mean). The docs
now give both figures; this scrapes them from a real coordinator on loopback
(tests/coordinator/test_s45_metrics_per_task.py holds the 45 of tasks without a round).
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import httpx
import numpy as np

from ._secure_service import fast_service
from .test_service_support import (
    SPEC,
    await_assignment,
    create_task,
    device_client,
    send_signed,
    task_config,
    wait_until,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def _lines(text: str, task: int) -> list[str]:
    return [ln for ln in text.splitlines() if f'task="{task}"' in ln]


def test_a_task_whose_round_reported_a_loss_has_47_lines(tmp_path: Path) -> None:
    # Prepare: two tasks; a round of the first commits with a device's training loss
    with (
        fast_service(tmp_path / "plume.db") as url,
        httpx.Client(base_url=url) as http,
    ):
        reported = create_task(http, task_config(rounds=2, clients_per_round=1))
        fresh = create_task(http, task_config(rounds=1, clients_per_round=1))
        device = device_client(url, str(tmp_path / "dev"))
        device.register()
        a = await_assignment(device, reported)
        delta = np.random.default_rng(0).normal(0, 0.01, SPEC.size).astype(np.float32)
        frame = device.encode_update(a, np.zeros(SPEC.size, np.float32), delta, 40).frame
        r = send_signed(
            http,
            device,
            "POST",
            a.upload_path + "?train_loss=0.5",
            a.round_id,
            body=frame,
            headers={
                "content-type": "application/octet-stream",
                "idempotency-key": uuid.uuid4().hex,
            },
        )
        assert r.status_code == 200, r.text
        assert wait_until(http, f"/v1/rounds/{a.round_id}", "state", "committed")["state"] == (
            "committed"
        )
        # Execute
        text = http.get("/metrics").text
        device.close()
    # Assert: 47 lines for the task with a loss (its two loss series), 45 for the other
    with_loss, without = _lines(text, reported), _lines(text, fresh)
    assert len(without) == 45
    assert len(with_loss) == 47
    assert sorted(ln for ln in with_loss if ln.startswith("plume_round_train_loss")) == [
        f'plume_round_train_loss{{stat="mean",task="{reported}"}} 0.5',
        f'plume_round_train_loss{{stat="median",task="{reported}"}} 0.5',
    ]
    # ... about 2.4 and 2.5 KB (a one-digit task id)
    assert 2300 < sum(len(ln) + 1 for ln in without) < 2500
    assert 2400 < sum(len(ln) + 1 for ln in with_loss) < 2600


def test_the_docs_give_both_figures() -> None:
    text = " ".join(DOCS.read_text().split())
    m = re.search(r"each task has 45 lines of its own, (.{0,200})", text)
    assert m is not None, "the sentence on each task's lines is gone"
    said = m.group(1)
    assert said.startswith("or 47 once a committed round reported"), said  # before: 45 alone
    assert "`plume_round_train_loss` series" in said, said
