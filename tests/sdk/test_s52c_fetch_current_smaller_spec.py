"""`fetch_current(task, spec)` with a spec smaller than the task's model (an app passing
another model's spec, say its classifier head's) is `LayoutMismatchError`, as docs/devices.md
says for any spec that is not the task's, with the model held for the task kept. Before, the
snapshot's size was checked against the wrong spec before its header: a snapshot above that
spec's cap was `ModelIntegrityError` ("snapshot ... above the cap"), blaming the network, and
the task's held model was forgotten; an answer more than 1 MiB over the spec's size was
refused unread as `too_large`. Both clients run the same download flow."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from compression import ModelSpec
from sdk import Client, LayoutMismatchError
from sdk.client import MODEL_LAYOUT_MISMATCH

SMALL = ModelSpec.from_shapes([("w", (10,))])


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[int]]]:
    """A coordinator with two tasks of incompressible random models: 6,400 parameters (a
    snapshot under the 1 MiB slack, over SMALL's cap) and 400,000 (1.6 MB, over the slack)."""
    from coordinator.service import AdminClient, ServerThread, ServiceConfig
    from protocol.messages import TaskConfig, TensorShape

    tmp = tmp_path_factory.mktemp("coordinator")
    cfg = ServiceConfig(db_path=str(tmp / "p.db"), admin_token="t", poll_s=0.05)
    rng = np.random.default_rng(0)
    with ServerThread(cfg) as url, AdminClient(url, "t") as admin:
        tasks = [
            admin.create_task(
                TaskConfig(
                    name=f"t{size}",
                    model_name="m",
                    spec=[TensorShape("w", [size])],
                    rounds=1,
                    clients_per_round=1,
                ),
                rng.standard_normal(size).astype(np.float32),
            )
            for size in (6_400, 400_000)
        ]
        yield url, tasks


def _files(root: Path) -> list[tuple[str, bytes]]:
    return sorted((p.name, p.read_bytes()) for p in root.iterdir() if p.is_file())


@pytest.mark.parametrize("which", [0, 1], ids=["under-the-slack", "over-the-slack"])
def test_a_smaller_spec_is_a_layout_mismatch_and_the_held_model_is_kept(
    tmp_path: Path, coordinator: tuple[str, list[int]], which: int
) -> None:
    # Prepare: the task's model held, from a fetch with its own spec
    url, tasks = coordinator
    task_id, size = tasks[which], (6_400, 400_000)[which]
    own = ModelSpec.from_shapes([("w", (size,))])
    with Client(url, app_dir=tmp_path / "app") as client:
        client.register()
        params, version, _ = client.fetch_current(task_id, own)
        before = _files(tmp_path / "app")

        # Execute
        with pytest.raises(LayoutMismatchError) as caught:
            client.fetch_current(task_id, SMALL)
        after = _files(tmp_path / "app")
        again = client.fetch_current(task_id, own)

    # Assert: the app's mistake named, nothing in the app directory changed, and the held
    # model still the base of the next download (an empty delta chain, not a snapshot)
    assert (caught.value.status, caught.value.reason) == (0, MODEL_LAYOUT_MISMATCH)
    assert caught.value.task_id == task_id
    assert "not of the layout of the spec given to fetch_current" in str(caught.value)
    assert after == before
    assert again[1:] == (version, "delta-chain")
    np.testing.assert_array_equal(again[0], params)
