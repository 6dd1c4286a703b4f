"""s53b: `plume sim --transport http` registered every device with no progress shown (one
"setting up: ... registering N devices" line, then nothing until round 1; minutes with
thousands of devices). The status line (`mobile_sim.status.say`: on a terminal only, as the
run's other set-up steps) now counts the devices as they register, at most about 100 times;
without a terminal nothing more is printed."""

from __future__ import annotations

import asyncio
import re

import pytest

from mobile_sim import http_fleet
from mobile_sim.http_fleet import HttpFleetOptions, run_http_simulation
from mobile_sim.runner import SimConfig
from mobile_sim.status import status_line

CFG = SimConfig(dataset="digits", model="digits_mlp", clients=6, per_round=3, rounds=1,
                topk=0.1, bits=8, local_epochs=1, batch_size=16, partition="iid",
                seed=0)  # fmt: skip


def _counts(err: str) -> list[str]:
    return re.findall(r"registering devices: ([\d,]+ of [\d,]+)\.\.\.", err)


def test_an_http_run_counts_its_devices_registering_on_a_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Execute: the status line on, as `plume sim` turns it on for a terminal
    with status_line(True):
        run_http_simulation(CFG, progress=False, options=HttpFleetOptions())
    err = capsys.readouterr().err

    # Assert: one count a device, in order, up to all 6
    assert _counts(err) == [f"{n} of 6" for n in range(1, 7)]


def test_without_a_terminal_nothing_is_counted(capsys: pytest.CaptureFixture[str]) -> None:
    # Execute: `plume sim` without a terminal (notes on, status line off)
    with status_line(False, notes=True):
        run_http_simulation(CFG, progress=False, options=HttpFleetOptions())
    err = capsys.readouterr().err

    # Assert: the one set-up note, no count
    assert _counts(err) == []
    assert "registering 6 devices with a loopback coordinator" in err


class _Client:
    async def register(self) -> str:
        await asyncio.sleep(0)
        return "ok"


def test_thousands_of_devices_rewrite_the_line_about_100_times(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare
    register = http_fleet._counted(2_345)

    async def main() -> list[str]:
        return await asyncio.gather(*(register(_Client()) for _ in range(2_345)))

    # Execute
    with status_line(True):
        answers = asyncio.run(main())
    err = capsys.readouterr().err

    # Assert: every answer handed back; every 23rd device counted, and the last
    counts = _counts(err)
    assert answers == ["ok"] * 2_345
    assert len(counts) == 2_345 // 23 + 1
    assert counts[0] == "23 of 2,345" and counts[-1] == "2,345 of 2,345"
