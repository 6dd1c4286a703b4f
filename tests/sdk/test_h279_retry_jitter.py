"""The waits before retries differ from device to device. Before, the backoff's "jitter" was a
function of the attempt number alone (`1 + 0.25 * ((attempt * 7919) % 4) / 4`) and a
`Retry-After` was waited exactly, so every device of a fleet cut off by the same outage (or
told the same Retry-After) retried in the same instant (thundering herd). Now each client
draws its waits from its own `random.Random` (`retry_rng=`, by default seeded from
`os.urandom`): backoff with "equal jitter" (half the capped wait plus a uniform draw over the
other half), and a `Retry-After` waited at least as asked and up to 20 % longer. Found by
helper-277 (its jitter.py). Seeded clients here, so the waits are the same on every run."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from sdk import AsyncClient, Client, ClientError
from sdk.client import MAX_BACKOFF_S, RETRY_AFTER_SPREAD

BUSY = {"reason": "store_unavailable", "detail": "busy"}
Handler = Callable[[httpx.Request], httpx.Response]


def _always(headers: dict[str, str]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, headers=headers, json=BUSY)

    return handler


def _waits(
    root: Path, headers: dict[str, str], rng: random.Random | None, retries: int = 4,
    backoff_s: float = 0.2,
) -> list[float]:  # fmt: skip
    """The waits one client sleeps before its retries of a check-in answered 503 each time."""
    slept: list[float] = []
    with Client(
        "http://coord", str(root), transport=httpx.MockTransport(_always(headers)),
        sleep=slept.append, retry_rng=rng, retries=retries, backoff_s=backoff_s,
    ) as c:  # fmt: skip
        with pytest.raises(ClientError, match=rf"\(after {retries + 1} attempts\)$") as caught:
            c.check_in(1)
    assert (caught.value.status, caught.value.reason) == (503, "store_unavailable")
    assert len(slept) == retries
    return slept


def test_two_devices_back_off_for_different_times(tmp_path: Path) -> None:
    # Execute: two devices, each with the default random source, through the same outage
    a = _waits(tmp_path / "a", {}, None)
    b = _waits(tmp_path / "b", {}, None)
    # Assert: different waits (before: the same four, 0.2, 0.475, 0.9, 1.7 s, on every device)
    assert a != b
    for waits in (a, b):
        for attempt, wait in enumerate(waits):
            full = 0.2 * 2**attempt
            assert full / 2 <= wait <= full, (attempt, waits)


def test_two_devices_told_the_same_retry_after_wait_different_times_never_less(
    tmp_path: Path,
) -> None:
    # Execute: seeded sources, so the run is the same every time
    a = _waits(tmp_path / "a", {"retry-after": "2"}, random.Random(1))
    b = _waits(tmp_path / "b", {"retry-after": "2"}, random.Random(2))
    # Assert: never less than asked, at most 20 % more, and not in step
    assert a != b
    assert all(2.0 <= w <= 2.0 * (1 + RETRY_AFTER_SPREAD) for w in a + b), (a, b)
    assert RETRY_AFTER_SPREAD == 0.2


def test_a_default_client_spreads_retry_after_too(tmp_path: Path) -> None:
    a = _waits(tmp_path / "a", {"retry-after": "1"}, None, retries=1)
    b = _waits(tmp_path / "b", {"retry-after": "1"}, None, retries=1)
    assert a != b and min(a + b) >= 1.0  # before: [1.0] and [1.0]


def test_a_fleet_spreads_its_first_retry(tmp_path: Path) -> None:
    # 50 devices' first wait after the same failure: spread over [0.1, 0.2) s, not one instant
    firsts = [_waits(tmp_path / f"d{i}", {}, random.Random(i), retries=1)[0] for i in range(50)]
    assert len(set(firsts)) == 50
    assert min(firsts) >= 0.1 and max(firsts) <= 0.2
    assert max(firsts) - min(firsts) > 0.05  # seeded: 0.097 here


def test_the_same_seed_gives_the_same_waits(tmp_path: Path) -> None:
    a = _waits(tmp_path / "a", {}, random.Random(7))
    b = _waits(tmp_path / "b", {}, random.Random(7))
    assert a == b


def test_the_caps_hold_with_the_jitter(tmp_path: Path) -> None:
    # Backoff: past the 60 s cap every wait is between half of it and all of it; a Retry-After
    # past 30 s is 30 s plus its spread
    long = _waits(tmp_path / "a", {}, random.Random(3), retries=14)
    assert all(MAX_BACKOFF_S / 2 <= w <= MAX_BACKOFF_S for w in long[10:]), long
    assert max(long) <= MAX_BACKOFF_S
    told = _waits(tmp_path / "b", {"retry-after": "3600"}, random.Random(4), retries=3)
    assert all(30.0 <= w <= 36.0 for w in told), told


def test_the_async_client_draws_from_its_own_source_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[list[float]] = [[], []]

    async def run(i: int) -> None:
        async def pause(seconds: float) -> None:
            slept[i].append(seconds)

        monkeypatch.setattr("sdk.client._apause", pause)
        async with AsyncClient(
            "http://coord", str(tmp_path / str(i)),
            transport=httpx.MockTransport(_always({"retry-after": "1"})),
            retry_rng=random.Random(10 + i), retries=3,
        ) as ac:  # fmt: skip
            with pytest.raises(ClientError, match=r"\(after 4 attempts\)$") as caught:
                await ac.check_in(1)
            assert (caught.value.status, caught.value.reason) == (503, "store_unavailable")

    for i in (0, 1):
        asyncio.run(run(i))
    assert slept[0] != slept[1] and len(slept[0]) == len(slept[1]) == 3
    assert all(1.0 <= w <= 1.2 for w in slept[0] + slept[1])


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_retry_rng_that_is_no_random_is_refused(tmp_path: Path, kind: str) -> None:
    cls = Client if kind == "sync" else AsyncClient
    with pytest.raises(TypeError, match="retry_rng must be a random.Random"):
        cls("http://coord", str(tmp_path / "d"), retry_rng=7)  # type: ignore[arg-type]
    assert not (tmp_path / "d").exists()


def test_a_secure_stage_poll_waits_its_retry_after_as_asked(tmp_path: Path) -> None:
    # A 425 "stage still open" is no failure: its Retry-After paces the polls, unspread
    with Client("http://coord", str(tmp_path), retry_rng=random.Random(5)) as c:
        open_stage = httpx.Response(425, headers={"retry-after": "2"})
        assert [c._core.poll_delay(open_stage) for _ in range(5)] == [2.0] * 5
        assert 0.1 <= c._core.poll_delay(httpx.Response(425)) <= 0.2  # no header: the backoff
