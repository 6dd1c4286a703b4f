"""A client's arguments are checked when it is made, before the app directory is (s49 review,
items 7 and 12).

7. `Client(url, app_dir="")` (an unset environment variable's default, say) made the current
   directory the app directory: narrowed to 0700, `device_key` written in it.
12. `backoff_s="1"`, `max_response_s="600"`, `max_stage_wait_s=None` gave Python's raw
   TypeErrors; `transport="nope"`, `clock=5`, `mods=None`, `sleep="x"` were taken and failed
   at the first request, the app directory already made; `participate(max_wait_s=-1)` returned
   None at once, as if no round had come. `app_dir` takes any os.PathLike (its hint said str).
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

from sdk import AsyncClient, Client
from tests.coordinator.test_service_support import SoftmaxTrainer, local_data

X, Y = local_data(0)
URL = "http://c.test"


def _make(cls: type[Any], app: Any, **kw: Any) -> None:
    """Make a client of `cls` on `app` with `kw`, and close it."""
    if cls is Client:
        Client(URL, app, **kw).close()
        return

    async def run() -> None:
        await AsyncClient(URL, app, **kw).aclose()

    asyncio.run(run())


CLASSES = pytest.mark.parametrize("cls", [Client, AsyncClient], ids=["Client", "AsyncClient"])


@CLASSES
def test_an_empty_app_dir_is_refused_and_the_current_directory_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cls: type[Any]
) -> None:
    # Prepare: the app's own files in the current directory, 0755
    (tmp_path / "app.py").write_text("# the app's own files\n")
    tmp_path.chmod(0o755)
    monkeypatch.chdir(tmp_path)

    # Execute
    with pytest.raises(ValueError, match="app_dir is empty: give the device's own directory"):
        _make(cls, os.environ.get("S49_UNSET_APP_DIR", ""))

    # Assert
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.py"]
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755


@CLASSES
def test_app_dir_takes_a_path_like(tmp_path: Path, cls: type[Any]) -> None:
    # Execute
    _make(cls, tmp_path / "app")

    # Assert
    assert (tmp_path / "app" / "device_key").is_file()


@CLASSES
@pytest.mark.parametrize(
    ("kw", "error", "words"),
    [
        ({"app_dir": None}, TypeError, "app_dir must be a path"),
        ({"app_dir": 5}, TypeError, "app_dir must be a path"),
        ({"backoff_s": "1"}, TypeError, "backoff_s must be a number of seconds, not str '1'"),
        ({"backoff_s": True}, TypeError, "backoff_s must be a number of seconds, not bool"),
        ({"max_response_s": "600"}, TypeError, "max_response_s must be a number of seconds"),
        ({"max_response_s": 0}, ValueError, "max_response_s must be positive, not 0"),
        ({"max_stage_wait_s": None}, TypeError, "max_stage_wait_s must be a number of seconds"),
        ({"max_stage_wait_s": -1.0}, ValueError, "max_stage_wait_s must be positive, not -1.0"),
        ({"clock": 5}, TypeError, "clock must be the wall clock.*a callable, not int 5"),
        ({"mods": None}, TypeError, "mods must be a tuple of middleware.*not NoneType None"),
        ({"mods": "m"}, TypeError, "mods must be a tuple of middleware"),
        ({"mods": (5,)}, TypeError, "mods\\[0\\] must be middleware"),
        ({"transport": "nope"}, TypeError, "transport must be an httpx\\..*not str 'nope'"),
    ],
    ids=lambda v: repr(v)[:40],
)
def test_a_bad_argument_is_refused_before_the_app_dir_is_made(
    tmp_path: Path, cls: type[Any], kw: dict[str, Any], error: type[Exception], words: str
) -> None:
    # Prepare (the parameter's dict is shared by both classes' cases: not popped)
    kw = dict(kw)
    app = kw.pop("app_dir", tmp_path / "app")

    # Execute
    with pytest.raises(error, match=words):
        _make(cls, app, **kw)

    # Assert
    assert not (tmp_path / "app").exists()


def test_a_sleep_that_is_not_callable_is_refused(tmp_path: Path) -> None:
    # Execute
    with pytest.raises(TypeError, match="sleep must be how the client waits.*not str 'x'"):
        Client(URL, tmp_path / "app", sleep="x")  # type: ignore[arg-type]

    # Assert
    assert not (tmp_path / "app").exists()


@CLASSES
def test_the_other_clients_transport_is_refused(tmp_path: Path, cls: type[Any]) -> None:
    # Prepare: a sync transport for the async client, an async one for the sync client
    other = httpx.AsyncHTTPTransport() if cls is Client else httpx.HTTPTransport()

    # Execute
    with pytest.raises(TypeError, match="transport must be an httpx"):
        _make(cls, tmp_path / "app", transport=other)

    # Assert
    assert not (tmp_path / "app").exists()


@CLASSES
def test_mods_may_be_a_list(tmp_path: Path, cls: type[Any]) -> None:
    # Execute
    _make(cls, tmp_path / "app", mods=[lambda request, nxt: nxt(request)])

    # Assert
    assert (tmp_path / "app").is_dir()


@pytest.mark.parametrize(
    ("max_wait_s", "error", "words"),
    [
        (-1, ValueError, "max_wait_s must be seconds >= 0 \\(inf: no limit\\), not -1"),
        (float("-inf"), ValueError, "max_wait_s must be seconds >= 0"),
        ("5", TypeError, "max_wait_s must be a number of seconds, not str"),
        (None, TypeError, "max_wait_s must be a number of seconds, not NoneType"),
    ],
)
def test_participate_refuses_a_bad_max_wait_before_any_request(
    tmp_path: Path, max_wait_s: Any, error: type[Exception], words: str
) -> None:
    # Prepare
    requests: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(503, json={"reason": "busy", "detail": "x"})

    transport = httpx.MockTransport(answer)
    with Client(URL, tmp_path / "app", transport=transport) as client:
        # Execute
        with pytest.raises(error, match=words):
            client.participate(SoftmaxTrainer(), X, Y, max_wait_s=max_wait_s)

    # Assert
    assert requests == []
