"""TLS: the coordinator served by uvicorn with a self-signed certificate made in the test."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig
from sdk.client import Client
from tests._tls import self_signed as _self_signed

from .test_service_support import ADMIN, create_task


def test_https_with_self_signed_certificate(tmp_path: Path) -> None:
    # Prepare
    cert, key = _self_signed(tmp_path)
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg, tls_cert=cert, tls_key=key) as url:
        # Execute
        assert url.startswith("https://")
        with httpx.Client(base_url=url, verify=cert) as admin:
            task_id = create_task(admin)
        with Client(url, str(tmp_path / "dev"), verify=cert) as client:
            device_id = client.register()
            answer = client.check_in(task_id)
        # Assert: signed device traffic works over TLS; a client without the CA refuses
        assert len(device_id) == 32 and answer.action in ("train", "wait")
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/healthz")
        with pytest.raises(httpx.TransportError):  # plain HTTP is not spoken on the TLS port
            httpx.get(url.replace("https://", "http://") + "/healthz", timeout=2)


def test_admin_client_takes_a_ca_path_without_httpx_deprecation(tmp_path: Path) -> None:
    """httpx 0.28 deprecates `verify=<str>`: AdminClient turns a CA path into its context
    (as the SDK's Client does), so a path works and no DeprecationWarning is raised."""
    import warnings

    from coordinator.service.admin_client import AdminClient

    # Prepare
    cert, key = _self_signed(tmp_path)
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg, tls_cert=cert, tls_key=key) as url:
        for verify in (cert, Path(cert)):
            # Execute
            with warnings.catch_warnings():
                warnings.simplefilter("error", DeprecationWarning)
                admin = AdminClient(url, ADMIN, verify=verify)
            # Assert: the certificate is trusted through the path's context
            assert admin.tasks() == []
            admin.close()
