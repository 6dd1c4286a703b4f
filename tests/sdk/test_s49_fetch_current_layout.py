"""`fetch_current(task, spec)` with a spec that is not the task's (s49 review, item 2).

An app passing its own module's spec (`spec_from_module(model)`: names '1.weight' where the
task's model-zoo spec says 'net.1.weight') got `ModelIntegrityError`, which the docs say means
a proxy altered the model, and the task's held model was forgotten (the next round downloaded
a whole snapshot). The model's frames name their layout in their headers, compared before
anything is inflated: such a spec is now `LayoutMismatchError` (status 0), the app directory
untouched; a real corruption is still `ModelIntegrityError`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compression import ModelSpec
from sdk import AsyncClient, Client, LayoutMismatchError, ModelIntegrityError
from sdk.client import MODEL_LAYOUT_MISMATCH
from tests.coordinator.test_service_support import SHAPES, SoftmaxTrainer, local_data
from tests.sdk.test_h177_chain_fallback import _Corrupter, coordinator  # noqa: F401 (a fixture)

X, Y = local_data(0)
SPEC = ModelSpec.from_shapes(SHAPES)  # the task's: w (10, 16), b (10,)
RENAMED = ModelSpec.from_shapes([("net.w", (10, 16)), ("net.b", (10,))])  # same shapes
RESHAPED = ModelSpec.from_shapes([("w", (16, 10)), ("b", (10,))])  # same size
SMALLER = ModelSpec.from_shapes([("w", (10, 16))])
MODES = pytest.mark.parametrize("asynchronous", [False, True], ids=["Client", "AsyncClient"])


def _held(root: Path) -> list[tuple[str, bytes]]:
    """The app directory's files and their bytes (the model held, state.json, ...)."""
    return sorted((p.name, p.read_bytes()) for p in root.iterdir() if p.is_file())


def _fetch(
    url: str, root: Path, task: int, specs: list[ModelSpec], asynchronous: bool, train: bool
) -> list[Any]:
    """Optionally one round (so a model is held), then `fetch_current` with each spec in turn;
    each call's result or error, and the app directory's files before each."""
    out: list[Any] = []
    if not asynchronous:
        with Client(url, root) as client:
            client.register()
            if train:
                assert client.participate(SoftmaxTrainer(), X, Y, task_id=task, max_wait_s=20)
            for spec in specs:
                before = _held(root)
                try:
                    out.append((before, client.fetch_current(task, spec)))
                except Exception as exc:  # noqa: BLE001 (the test looks at it)
                    out.append((before, exc))
        return out

    async def run() -> None:
        async with AsyncClient(url, root) as client:
            await client.register()
            if train:
                assert await client.participate(SoftmaxTrainer(), X, Y, task_id=task, max_wait_s=20)
            for spec in specs:
                before = _held(root)
                try:
                    out.append((before, await client.fetch_current(task, spec)))
                except Exception as exc:  # noqa: BLE001
                    out.append((before, exc))

    asyncio.run(run())
    return out


@MODES
@pytest.mark.parametrize("train", [True, False], ids=["model-held", "nothing-held"])
def test_a_spec_that_is_not_the_tasks_is_a_layout_mismatch_and_the_store_is_kept(
    coordinator: tuple[str, int],  # noqa: F811
    tmp_path: Path,
    asynchronous: bool,
    train: bool,
) -> None:
    # Prepare
    url, task = coordinator
    root = tmp_path / "app"

    # Execute: renamed, reshaped and smaller specs, then the task's own
    results = _fetch(url, root, task, [RENAMED, RESHAPED, SMALLER, SPEC], asynchronous, train)

    # Assert: each wrong one refused as the app's layout, nothing in the app directory changed
    for (before, got), after in zip(results[:3], results[1:], strict=True):
        assert isinstance(got, LayoutMismatchError), got
        assert not isinstance(got, ModelIntegrityError)
        assert (got.status, got.reason, got.task_id) == (0, MODEL_LAYOUT_MISMATCH, task)
        assert "is not of the layout of the spec given to fetch_current" in got.detail
        assert "the model held for the task is kept" in got.detail
        assert after[0] == before
    # The task's own spec then downloads it (a delta chain from the model held, if any)
    params, version, encoding = results[3][1]
    assert params.shape == (SPEC.size,) and params.dtype == np.float32
    assert version == (1 if train else 0)
    if train:
        assert encoding == "delta-chain"


def test_a_corrupt_snapshot_is_still_a_model_integrity_error(
    coordinator: tuple[str, int],  # noqa: F811
    tmp_path: Path,
) -> None:
    # Prepare: every model answer's body altered on the way
    url, task = coordinator
    corrupter = _Corrupter("snapshot")
    corrupter.on = True

    with Client(url, tmp_path / "app", mods=(corrupter.sync_mod,)) as client:
        client.register()

        # Execute / Assert
        with pytest.raises(ModelIntegrityError) as info:
            client.fetch_current(task, SPEC)
        assert not isinstance(info.value, LayoutMismatchError)
