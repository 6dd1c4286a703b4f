"""docs/http-api.md's check-in answers have the fields a real coordinator's answer has (s45).

A native port is written from this example (helper-382 wrote one): it lacked `secure`,
`report_loss` and the top-level `detail`, and a port must branch on `secure`. The example's
keys are read from the doc and compared with a real answer's from a loopback coordinator.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx

from coordinator.service import ServerThread, ServiceConfig
from protocol import auth
from tests.coordinator.test_service_hardening import _register
from tests.coordinator.test_service_support import ADMIN, create_task, signed_headers

ROOT = Path(__file__).resolve().parent.parent


def _example() -> tuple[set[str], set[str], set[str]]:
    """The keys of the doc's train answer (top level, assignment) and of its wait answer."""
    text = (ROOT / "docs" / "http-api.md").read_text()
    section = text.split("## Check-in and pace steering", 1)[1]
    train_text = section.split("```json", 1)[1].split("```", 1)[0]
    # The doc abbreviates values ("[...]", ", ...}"), never fields: as JSON without them
    train = json.loads(train_text.replace("[...]", "[]").replace(", ...}", "}"))
    wait = re.search(r"or `(\{\"action\": \"wait\".*?\})`", section, re.S)
    assert wait is not None, "the wait answer's example is gone"
    return set(train), set(train["assignment"]), set(json.loads(wait.group(1)))


def _check_in(http: httpx.Client, key: bytes) -> dict[str, object]:
    body = b'{"task_id": 1}'
    headers = {
        **signed_headers(key, "POST", "/v1/checkin", 0, body),
        "content-type": "application/json",
    }
    r = http.post("/v1/checkin", content=body, headers=headers)
    assert r.status_code == 200, r.text
    answer: dict[str, object] = r.json()
    return answer


def test_the_check_in_examples_have_the_real_answers_fields(tmp_path: Path) -> None:
    # Prepare: a task wanting two devices; the first waits until the second checks in
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    keys = [auth.generate_private_key() for _ in range(2)]
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        create_task(http)
        for key in keys:
            assert _register(http, key).status_code == 200
        # Execute
        waiting = _check_in(http, keys[0])
        give_up = time.monotonic() + 20
        train = _check_in(http, keys[1])
        while train["action"] != "train":
            assert time.monotonic() < give_up, train
            time.sleep(0.05)
            train = _check_in(http, keys[1])
    # Assert: the same keys at each level (the doc abbreviates values, not fields)
    doc_top, doc_assignment, doc_wait = _example()
    assert waiting["action"] == "wait"
    assert set(waiting) == doc_wait
    assert set(train) == doc_top
    assignment = train["assignment"]
    assert isinstance(assignment, dict)
    assert set(assignment) == doc_assignment
