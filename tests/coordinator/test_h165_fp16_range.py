"""`GET /v1/tasks/{id}/model?dtype=fp16` of a model with a parameter beyond fp16's range
(|x| > 65,504) is 409 `invalid_state` whose detail asks for dtype=fp32.

Before: `compression.encode_snapshot` raised ValueError inside the route and the device got
500 `internal_error`. A device can bring a task there itself (a legal upload of large values
with a large claimed weight), so the answer must be a client error that says what to ask.
The SDK always asks for fp32 (sdk/client.py `model_exchange`): it still gets such a model.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from compression import encode_snapshot
from coordinator.service import AdminClient, ServerThread, ServiceConfig
from coordinator.service.errors import ApiError
from coordinator.service.rounds import Coordinator
from coordinator.service.store import Store
from protocol import auth
from protocol.names import Reason
from sdk.client import Client

from .test_service_hardening import _refused, _register, _signed
from .test_service_support import ADMIN, SPEC, initial_params, task_config


def _get_model(http: httpx.Client, key: bytes, task_id: int, dtype: str) -> httpx.Response:
    target = f"/v1/tasks/{task_id}/model?dtype={dtype}"
    return http.get(target, headers=_signed(key, "GET", target, 0, b""))


def test_fp16_of_a_model_beyond_fp16_range_is_409_asking_for_fp32(tmp_path: Path) -> None:
    # Prepare: one task whose model holds 70,000 (fp16's largest finite value is 65,504), one
    # whose model fits fp16; a registered device
    big = initial_params()
    big[3] = 70000.0
    # and the edge, as the encoder rounds: 65,519.99 becomes fp16's largest value (65,504),
    # -65,520 becomes -inf
    near, over_edge = initial_params(), initial_params()
    near[0], over_edge[0] = 65519.99, -65520.0
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    key = auth.generate_private_key()
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        with AdminClient(url, ADMIN) as admin:
            over = admin.create_task(task_config(), big)
            fits = admin.create_task(task_config(), initial_params())
            edge = [admin.create_task(task_config(), p) for p in (near, over_edge)]
        assert _register(http, key).status_code == 200
        # Execute: fp16 twice (the refusal is not a cached success), fp32, and fp16 of the
        # model that fits
        refused = [_get_model(http, key, over, "fp16") for _ in range(2)]
        fp32 = _get_model(http, key, over, "fp32")
        fine = _get_model(http, key, fits, "fp16")
        at_edge = [_get_model(http, key, t, "fp16") for t in edge]
        # and the SDK's own download of the big model
        device = Client(url, str(tmp_path / "dev"))
        device.register()
        params, version, encoding = device.fetch_current(over, SPEC)
    # Assert: 409 invalid_state naming fp16's range and dtype=fp32, each time
    for r in refused:
        body = _refused(r, 409, Reason.INVALID_STATE)
        assert "fp16" in body["detail"] and "dtype=fp32" in body["detail"], body
    # fp32 serves the model exactly; fp16 still serves a model that fits
    assert fp32.status_code == 200 and fp32.headers["x-plume-model-exact"] == "1"
    assert fine.status_code == 200 and fine.headers["x-plume-model-exact"] == "0"
    assert at_edge[0].status_code == 200, at_edge[0].text
    _refused(at_edge[1], 409, Reason.INVALID_STATE)
    assert (version, encoding) == (0, "snapshot")
    np.testing.assert_array_equal(params, big)


def test_the_fp16_range_check_follows_each_published_version(tmp_path: Path) -> None:
    # The range check is cached per published version (`TaskRuntime._fits_fp16`); a new
    # version must be checked again, both ways. Without the reset in `set_published`, a model
    # that fitted and then left fp16's range went back to the encoder's ValueError (a 500).
    # Prepare: a task whose first model fits fp16
    store = Store(str(tmp_path / "p.db"))
    coord = Coordinator(store, ServiceConfig(db_path=store.path))
    task = coord.create_task(task_config())
    fits = initial_params()
    coord.set_initial_model(task, encode_snapshot(fits, SPEC, "fp32"))
    rt = coord.runtimes[task]
    big = fits.copy()
    big[0] = 1e6
    # Execute and assert: served, then refused with the new version intact, then served again
    assert rt.snapshot("fp16")
    rt.set_published(big, 1, "v1")
    with pytest.raises(ApiError) as refused:
        rt.snapshot("fp16")
    assert refused.value.status == 409
    np.testing.assert_array_equal(rt.published, big)
    rt.set_published(fits.copy(), 2, "v2")
    assert rt.snapshot("fp16")
