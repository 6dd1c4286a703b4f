"""A pytest plugin that names the test which left each unclosed resource to the collector:
after every test it runs a full garbage collection with ResourceWarning shown, and appends
one line per warning (pid, test id, the warning) to the file $PLUME_LEAK_LOG
(default leaks.txt). Slow (a collection per test); for hunting leaks, not for `make test`:

    PLUME_LEAK_LOG=/tmp/leaks.txt .venv/bin/python -m pytest -p tests._leak_finder tests/sdk
"""

from __future__ import annotations

import gc
import os
import warnings
from collections.abc import Generator

import pytest


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    yield
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    lines = [
        f"{os.getpid()} {item.nodeid}: {w.message}\n"
        for w in caught
        if issubclass(w.category, ResourceWarning)
    ]
    if lines:
        with open(os.environ.get("PLUME_LEAK_LOG", "leaks.txt"), "a", encoding="utf-8") as log:
            log.writelines(lines)
