"""Coordinator tests: the devices `test_service_support.device_client` made are closed when each
test ends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .test_service_support import OPEN_DEVICES


@pytest.fixture(autouse=True)
def _close_devices() -> Iterator[None]:
    yield
    while OPEN_DEVICES:
        OPEN_DEVICES.pop().close()
