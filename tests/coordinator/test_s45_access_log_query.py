"""The access log carries no query value (s45/privacy finding 3). An upload's training loss
travels as its query (`?train_loss=2.4576562643051147`), and uvicorn's access line printed the
whole target: `"POST /v1/rounds/1/updates?train_loss=2.4576562643051147 HTTP/1.1" 200`, each
device's loss, a function of its data, in the coordinator's log. Each value is `<redacted>`
now; the keys stay."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.server import redact_query

LOSS = "2.4576562643051147"


@pytest.mark.parametrize(
    ("target", "shown"),
    [
        (f"/v1/rounds/1/updates?train_loss={LOSS}", "/v1/rounds/1/updates?train_loss=<redacted>"),
        ("/v1/tasks/1/model?have=3&x=", "/v1/tasks/1/model?have=<redacted>&x=<redacted>"),
        (f"/v1/rounds/1/updates?{LOSS}", "/v1/rounds/1/updates?<redacted>"),
        ("/healthz", "/healthz"),
    ],
)
def test_each_query_value_is_redacted_and_the_keys_stay(target: str, shown: str) -> None:
    assert redact_query(target) == shown


@pytest.fixture()
def access_log_at_info() -> Iterator[None]:
    """uvicorn's access log at INFO, as serve's (a ServerThread's uvicorn logs at WARNING)."""
    logger = logging.getLogger("uvicorn.access")
    level = logger.level
    yield
    logger.setLevel(level)


@pytest.mark.usefixtures("access_log_at_info")
def test_a_loopback_uploads_access_line_shows_no_train_loss(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a coordinator on loopback, its access log at INFO (after uvicorn's set-up)
    config = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token="t")
    with ServerThread(config) as url:
        logging.getLogger("uvicorn.access").setLevel(logging.INFO)
        # Execute: an upload's target as the SDK sends it (unsigned: refused, still logged)
        answer = httpx.post(f"{url}/v1/rounds/1/updates?train_loss={LOSS}", content=b"x")
    # Assert: uvicorn's own line (stdout) names the route and the key, not the loss
    assert answer.status_code >= 400
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "/v1/rounds/1/updates" in line]
    assert len(lines) == 1, out
    assert lines[0].startswith("INFO:")
    assert '"POST /v1/rounds/1/updates?train_loss=<redacted> HTTP/1.1"' in lines[0]
    assert LOSS not in out
