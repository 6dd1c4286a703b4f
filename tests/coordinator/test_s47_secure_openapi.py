"""Stop 47 (helper-402's HTTP API review): the OpenAPI schema lists 425 (stage still open) only
on the stage download, the one route that sends it; the stage upload and the setup listed it
too. Every secure route still lists 410 for an abort while the round runs."""

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
