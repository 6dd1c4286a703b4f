"""Stop 47 (helper-402's HTTP API review): the OpenAPI schema lists 425 (stage still open) only
on the stage download, the one route that sends it; the stage upload and the setup listed it
too. Every secure route still lists 410 for an abort while the round runs. The stage upload's
receipt is documented with its `stage` field (stop 48)."""

from __future__ import annotations

from pathlib import Path

from coordinator.service import ServiceConfig, create_app

from .test_service_support import ADMIN


def test_only_the_stage_download_documents_425(tmp_path: Path) -> None:
    # Prepare
    app = create_app(ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN))
    try:
        # Execute
        paths = app.openapi()["paths"]
    finally:
        app.state.coordinator.store.close()

    # Assert
    secure = {
        (path, method): set(op["responses"])
        for path, ops in paths.items()
        if path.startswith("/v1/secure/")
        for method, op in ops.items()
        if "410" in op["responses"]
    }
    assert len(secure) == 3, secure
    with_425 = {key for key, codes in secure.items() if "425" in codes}
    assert with_425 == {(p, "get") for p, _ in secure if p.endswith("/stages/{stage}")}, secure


def test_the_stage_upload_documents_its_receipt_with_the_stage(tmp_path: Path) -> None:
    # Prepare
    app = create_app(ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN))
    try:
        # Execute
        spec = app.openapi()
    finally:
        app.state.coordinator.store.close()

    # Assert: the schema names the `stage` field every stage receipt carries
    (op,) = [ops["post"] for path, ops in spec["paths"].items() if path.endswith("/stages/{stage}")]
    ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    schema = spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    assert "stage" in schema["required"], schema
    assert {"round_id", "device_id", "duplicate", "payload_bytes"} <= set(schema["required"])


def test_every_numeric_range_in_the_schema_is_json_schema_minimum_and_maximum(
    tmp_path: Path,
) -> None:
    # Prepare
    app = create_app(ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN))
    try:
        # Execute
        spec = app.openapi()
    finally:
        app.state.coordinator.store.close()

    # Assert: no `ge`/`le` (not JSON Schema keywords) anywhere, and the ranges are kept
    def keys(node: object) -> list[str]:
        if isinstance(node, dict):
            return [*node, *(k for v in node.values() for k in keys(v))]
        if isinstance(node, list):
            return [k for v in node for k in keys(v)]
        return []

    assert not {"ge", "le", "gt", "lt"} & set(keys(spec))
    params = {
        (path, p["name"]): p["schema"]
        for path, ops in spec["paths"].items()
        for op in ops.values()
        for p in op.get("parameters", [])
    }
    page = params[("/v1/admin/tasks/{task_id}/rounds", "last")]["anyOf"][0]
    assert (page["minimum"], page["maximum"]) == (1, 100_000)
    round_id = params[("/v1/rounds/{round_id}", "round_id")]
    assert (round_id["minimum"], round_id["maximum"]) == (0, 2**63 - 1)
