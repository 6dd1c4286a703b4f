"""An HTTP fleet raises the soft open-file limit to what its devices need, or says why not."""

from __future__ import annotations

import resource
from typing import Any

import pytest

from mobile_sim.http_fleet import FILES_MARGIN, FILES_PER_DEVICE, ensure_open_files


class FakeResource:
    """`resource`'s limit calls on a (soft, hard) pair, recording what is set."""

    RLIMIT_NOFILE = resource.RLIMIT_NOFILE
    RLIM_INFINITY = resource.RLIM_INFINITY

    def __init__(self, soft: int, hard: int) -> None:
        self.limits = (soft, hard)
        self.set: list[Any] = []

    def getrlimit(self, which: int) -> tuple[int, int]:
        assert which == self.RLIMIT_NOFILE
        return self.limits

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        self.set.append(limits)
        self.limits = limits


def test_the_soft_limit_is_raised_to_what_the_devices_need() -> None:
    fake = FakeResource(1024, 65536)
    ensure_open_files(1000, fake)
    assert fake.set == [(FILES_PER_DEVICE * 1000 + FILES_MARGIN, 65536)]


def test_a_limit_already_high_enough_is_left_alone() -> None:
    fake = FakeResource(65536, 65536)
    ensure_open_files(1000, fake)
    assert fake.set == []


def test_a_hard_limit_too_low_is_refused_with_the_numbers() -> None:
    fake = FakeResource(1024, 2048)
    with pytest.raises(ValueError, match=r"1000 devices over HTTP need about 3256 open files") as e:
        ensure_open_files(1000, fake)
    assert "2048 at most" in str(e.value) and fake.set == []


def test_plume_sim_over_http_says_so_before_making_anything(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a process whose hard limit is far below 10,000 devices' need
    from coordinator.cli import main as plume

    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 2048))
    # Execute
    code = plume(["sim", "--transport", "http", "--clients", "10000", "--no-progress"])
    # Assert: one error line naming the numbers
    err = capsys.readouterr().err
    assert code != 0
    assert "10000 devices over HTTP need about 30256 open files" in err
