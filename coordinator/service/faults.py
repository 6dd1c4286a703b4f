"""Named fault points for crash-recovery tests: pause the process so a test can `kill -9` it.

Set `PLUME_FAULT_PAUSE_AT` to a comma-separated list of point names and `PLUME_FAULT_FILE` to a
path. When the coordinator reaches a listed point it writes the point's name to that file and
blocks forever, so the test knows exactly where the process is when it sends SIGKILL. Unset (the
default), a fault point costs one dict lookup. Points: `after_accept` (an upload is committed,
its response not yet sent), `during_aggregation` (aggregate computed, nothing published),
`during_publish` (inside the publish transaction, before COMMIT).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["fault_point", "FAULT_POINTS", "PAUSE_ENV", "FILE_ENV"]

PAUSE_ENV = "PLUME_FAULT_PAUSE_AT"
FILE_ENV = "PLUME_FAULT_FILE"
FAULT_POINTS = ("after_accept", "during_aggregation", "during_publish")


def fault_point(name: str) -> None:
    """Block forever at `name` if the environment asks for it (test-only fault injection)."""
    wanted = os.environ.get(PAUSE_ENV)
    if not wanted or name not in wanted.split(","):
        return
    target = os.environ.get(FILE_ENV)
    if target:
        tmp = Path(target + ".tmp")
        tmp.write_text(name)
        tmp.replace(target)
    while True:  # the test kills us here
        time.sleep(3600)
