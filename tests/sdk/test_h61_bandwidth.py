"""`Client.bandwidth` keeps the rounds counted last (`MAX_BANDWIDTH_ROUNDS`), in its public
shape. Before, it grew by one entry per round for the life of the process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from sdk import AsyncClient, Client
from sdk.client import MAX_BANDWIDTH_ROUNDS


def _ledger_of(rounds: list[int]) -> httpx.MockTransport:
    """Check-ins answered `wait`, each counted in the next round of `rounds`."""
    left = list(rounds)

    def handler(request: httpx.Request) -> httpx.Response:
        rid = left.pop(0)
        return httpx.Response(
            200,
            json={"action": "wait", "retry_after_s": 1.0},
            headers={"x-plume-ledger-round": str(rid)},
        )

    return httpx.MockTransport(handler)


# Rounds 1..N-4, round 1 again (recent again: kept), then N-3..N+6.
N = MAX_BANDWIDTH_ROUNDS
ROUNDS = [*range(1, N - 3), 1, *range(N - 3, N + 7)]
KEPT = [*range(8, N - 3), 1, *range(N - 3, N + 7)]


def test_bandwidth_keeps_the_rounds_counted_last(tmp_path: Path) -> None:
    # Prepare
    assert len(KEPT) == MAX_BANDWIDTH_ROUNDS
    with Client("http://coord", str(tmp_path), transport=_ledger_of(ROUNDS)) as client:
        # Execute
        for _ in ROUNDS:
            client.check_in()
        # Assert: the last 64 rounds counted, least recently counted first; round 1, counted
        # twice, has both requests; the shape is as before
        assert list(client.bandwidth) == KEPT
        assert client.bandwidth[1]["up"]["requests"] == 2
        assert set(client.bandwidth[1]) == {"up", "down"}
        assert set(client.bandwidth[1]["down"]) == {
            "payload_bytes", "wire_bytes", "dense_bytes", "requests"
        }  # fmt: skip


def test_async_bandwidth_keeps_the_rounds_counted_last(tmp_path: Path) -> None:
    async def run() -> list[int]:
        async with AsyncClient(
            "http://coord", str(tmp_path), transport=_ledger_of(ROUNDS)
        ) as client:
            for _ in ROUNDS:
                await client.check_in()
            return list(client.bandwidth)

    assert asyncio.run(run()) == KEPT
