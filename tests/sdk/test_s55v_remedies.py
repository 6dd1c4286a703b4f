"""docs/devices.md's remedies, followed as an app developer would, against a loopback
coordinator: the `DeviceIdentityLost` message is the doc's text block word for word, and
"remove state.json alone" keeps the device (same key, same id at the coordinator) and its
residual, with the held model forgotten (the next download a whole snapshot)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import sdk
from sdk import Client
from tests.coordinator.test_service_support import (
    SoftmaxTrainer,
    create_task,
    local_data,
    loopback_url,  # noqa: F401  (the fixture `url`)
    task_config,
)

DOC = (Path(__file__).resolve().parents[2] / "docs" / "devices.md").read_text()


def _doc_block(first: str) -> str:
    """The doc's ```text block whose line starts with `first`."""
    for block in re.findall(r"```text\n(.*?)\n```", DOC, flags=re.DOTALL):
        if block.startswith(first):
            return str(block)
    raise AssertionError(f"no text block starting {first!r}")


def test_the_identity_lost_message_is_the_docs(url: str, tmp_path: Path) -> None:
    app = tmp_path / "plume-app"
    with Client(url, app) as client:
        client.register()
        device_id = client.device_id
    (app / "device_key").rename(tmp_path / "kept_key")
    with pytest.raises(sdk.DeviceIdentityLost) as caught:
        Client(url, app)
    shown = _doc_block("DeviceIdentityLost: plume-app/device_key: ")
    doc_id = re.search(r"registered device ([0-9a-f]{32})\.", shown).group(1)  # type: ignore[union-attr]
    expected = shown.replace("plume-app/", f"{app}/").replace(doc_id, device_id)
    assert f"DeviceIdentityLost: {caught.value}" == expected
    # "with the directory left as it is"
    assert not (app / "device_key").exists()
    # "The app can restore that device's device_key (the same 32 bytes) into app_dir"
    (tmp_path / "kept_key").rename(app / "device_key")
    with Client(url, app) as client:
        assert client.device_id == device_id


def test_removing_state_json_alone_keeps_the_device_and_its_residual(
    url: str, tmp_path: Path
) -> None:
    # "Without state.json (keep device_key ...) the models held are forgotten (each task's next
    # download is a whole snapshot) and the next register() records the device again (the
    # coordinator takes the same key again); the residuals and uploads are kept."
    task_id = create_task(url, task_config(rounds=3, clients_per_round=1))
    app = tmp_path / "app"
    with Client(url, app) as client:
        client.register()
        device_id = client.device_id
        first = client.participate(SoftmaxTrainer(), *local_data(5), task_id=task_id)
        assert first is not None and first.download_encoding == "snapshot"
    residual = (app / f"residual-{task_id}.bin").read_bytes()
    os.remove(app / "state.json")
    with Client(url, app) as client:
        assert client.device_id == device_id
        assert (app / f"residual-{task_id}.bin").read_bytes() == residual
        client.register()
        report = client.participate(SoftmaxTrainer(), *local_data(5), task_id=task_id)
        assert report is not None
        assert report.download_encoding == "snapshot"  # the model held was forgotten
        assert report.round_id > first.round_id
