"""A bounded schemathesis run over the served OpenAPI spec: no request makes the app answer 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from compression import encode_snapshot
from coordinator.service import ServiceConfig, create_app

from .test_service_support import ADMIN, SPEC, initial_params, task_config


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root: Path = tmp_path_factory.mktemp("schemathesis")
    app = create_app(ServiceConfig(db_path=str(root / "plume.db"), admin_token=ADMIN))
    coordinator = app.state.coordinator
    coordinator.restore()
    task_id = coordinator.create_task(task_config())
    coordinator.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    app.state.store.close()


def test_no_server_errors(api_schema: Any) -> None:
    # schemathesis' pytest plugin predates this pytest, so each operation's strategy is run
    # through hypothesis directly: the same generated cases, bounded per operation.
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 14
    seen: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=6,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            # Execute: a generated request (path, query, headers, body) against the app, with
            # the admin token so admin routes get past authentication to their validation
            response = case.call(headers={"authorization": f"Bearer {ADMIN}"})
            seen.append(response.status_code)
            # Assert: refusals are 4xx with a JSON reason; nothing crashes the app
            assert response.status_code < 500, (case.method, case.path, response.text)
            if response.status_code >= 400:
                assert "reason" in response.json(), response.text

        run()
    assert any(code >= 400 for code in seen) and len(seen) >= len(operations)
