"""`fetch_current(task_id, spec)` refuses a `spec` that is not the task's own
(`LayoutMismatchError`, docs/devices.md) also when the model held for the task is current.

Before, the download then asked with `have=` the held version and was answered with an empty
delta chain, which carries no layout: any spec of the model's size was taken, and the app got
the task's parameters under its own names and shapes. A test that fetched right after a round
passed or failed by whether the coordinator had committed the round yet (a stop-59 run failed
it under load). Now the app directory records each held model's layout as its download
showed it (a snapshot's header, a delta frame's; `state.json` `model_layout`, or `layout`
under `models`), and `fetch_current` asks with `have=` only when the held model is known to be
of the spec's layout; else it asks for a snapshot, whose header is checked."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

import sdk
from compression import ModelSpec
from sdk import AsyncClient, Client
from sdk.device_store import DeviceStore
from tests.coordinator.test_service_support import (
    SPEC,
    SoftmaxTrainer,
    create_task,
    local_data,
    loopback_url,  # noqa: F401  (the fixture `url`)
    task_config,
)

# Same size as SPEC (w (10, 16), b (10,)), another name: another layout.
RENAMED = ModelSpec.from_shapes([("w2", (10, 16)), ("b", (10,))])


def _files(app: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in app.iterdir() if p.is_file()}


def test_a_wrong_spec_is_refused_when_the_held_model_is_current(url: str, tmp_path: Path) -> None:
    # Prepare: the task's model held at its current version (no round has run since)
    task_id = create_task(url, task_config(rounds=3, clients_per_round=1))
    app = tmp_path / "app"
    with Client(url, app) as client:
        client.register()
        held, version, encoding = client.fetch_current(task_id, SPEC)
        assert encoding == "snapshot"
        before = _files(app)

        # Execute
        with pytest.raises(sdk.LayoutMismatchError) as caught:
            client.fetch_current(task_id, RENAMED)

        # Assert: refused from the snapshot's header (before: an empty delta chain, no error);
        # nothing saved, the model held kept; the task's own spec still fetches it
        assert caught.value.status == 0 and caught.value.task_id == task_id
        assert "fetch_current" in str(caught.value)
        assert _files(app) == before
        again, again_version, _ = client.fetch_current(task_id, SPEC)
        assert again_version == version and np.array_equal(again, held)


def test_the_tasks_own_spec_still_asks_from_the_held_version(url: str, tmp_path: Path) -> None:
    # Prepare: the model fetched once (a snapshot, its layout recorded)
    task_id = create_task(url, task_config(rounds=3, clients_per_round=1))
    app = tmp_path / "app"
    with Client(url, app) as client:
        client.register()
        client.fetch_current(task_id, SPEC)

        # Execute
        _, _, encoding = client.fetch_current(task_id, SPEC)

    # Assert: an (empty) delta chain from the held version, not a second snapshot
    assert encoding == "delta-chain"
    assert DeviceStore(app).held_layout(task_id) == SPEC.fingerprint


def test_a_round_records_the_layout_and_fetch_current_then_asks_a_delta(
    url: str, tmp_path: Path
) -> None:
    # Prepare: one round taken part in (its model downloaded as the round's)
    task_id = create_task(url, task_config(rounds=3, clients_per_round=1))
    app = tmp_path / "app"
    with Client(url, app) as client:
        client.register()
        assert client.participate(SoftmaxTrainer(), *local_data(3), task_id=task_id)
        layout = DeviceStore(app).held_layout(task_id)

        # Execute
        _, _, encoding = client.fetch_current(task_id, SPEC)

    # Assert: the round's download recorded the task's layout, so fetch_current asked with
    # have= (a delta chain, empty or not, whether or not the round had committed yet)
    assert layout == SPEC.fingerprint
    assert encoding == "delta-chain"


@pytest.mark.parametrize("recorded", [None, "not hex", 5, "00" * 8], ids=str)
def test_a_held_model_without_a_known_layout_is_fetched_as_a_snapshot_once(
    url: str, tmp_path: Path, recorded: object
) -> None:
    # Prepare: the model held, its state.json entry written by an SDK from before the layout
    # was recorded (no field), or holding a foreign value or another layout
    task_id = create_task(url, task_config(rounds=3, clients_per_round=1))
    app = tmp_path / "app"
    with Client(url, app) as client:
        client.register()
        client.fetch_current(task_id, SPEC)
    state = json.loads((app / "state.json").read_text())
    state.pop("model_layout")
    if recorded is not None:
        state["model_layout"] = recorded
    (app / "state.json").write_text(json.dumps(state))
    with Client(url, app) as client:
        # Execute
        with pytest.raises(sdk.LayoutMismatchError):
            client.fetch_current(task_id, RENAMED)
        first = client.fetch_current(task_id, SPEC)[2]
        second = client.fetch_current(task_id, SPEC)[2]

    # Assert: a snapshot (whose header refused the wrong spec) until a download showed the
    # layout, then delta chains again
    assert (first, second) == ("snapshot", "delta-chain")


def test_the_layout_of_a_model_under_models_is_kept_across_an_empty_chain(
    tmp_path: Path,
) -> None:
    # Prepare: two tasks' models (the second under `models`), the second saved with a layout
    store = DeviceStore(tmp_path / "app")
    params = np.zeros(SPEC.size, dtype=np.float32)
    digest = "0" * 64
    store.save_model(1, params, 3, digest, True, SPEC.fingerprint)
    store.save_model(2, params, 3, digest, True, RENAMED.fingerprint)

    # Execute: saved again without a layout (an empty delta chain), then the first re-saved
    store.save_model(2, params, 3, digest, True, None)
    store.save_model(1, params, 4, digest, True, None)

    # Assert: each keeps the layout its last download that showed one recorded
    assert store.held_layout(2) == RENAMED.fingerprint
    assert store.held_layout(1) == SPEC.fingerprint
    assert store.held_layout(3) is None


def test_the_async_client_refuses_a_wrong_spec_when_the_held_model_is_current(
    url: str, tmp_path: Path
) -> None:
    # Prepare: as the first test, with AsyncClient (the same download flow)
    task_id = create_task(url, task_config(rounds=3, clients_per_round=1))
    app = tmp_path / "app"

    async def run() -> tuple[str, type[BaseException] | None, str]:
        async with AsyncClient(url, app) as client:
            await client.register()
            first = (await client.fetch_current(task_id, SPEC))[2]
            refused: type[BaseException] | None = None
            try:
                # Execute
                await client.fetch_current(task_id, RENAMED)
            except sdk.LayoutMismatchError as exc:
                refused = type(exc)
            again = (await client.fetch_current(task_id, SPEC))[2]
            return first, refused, again

    first, refused, again = asyncio.run(run())

    # Assert: refused (before: an empty delta chain, no error); the task's spec then asks a
    # delta chain from the held version
    assert (first, refused, again) == ("snapshot", sdk.LayoutMismatchError, "delta-chain")
