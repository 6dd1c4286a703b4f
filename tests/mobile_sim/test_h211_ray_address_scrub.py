"""A Ray address's user and password never reach rounds.json or an error line (helper-210:
rounds.json's `command` scrubbed a URL's credentials, but `config.ray_address` recorded
`ray://alice:t0ken@head.example:10001` in full, and a plain `user:pass@host:port` was kept in
both). The backend itself still gets the address as given. No Ray runtime is started."""

from __future__ import annotations

import json
import shlex
import socket
from pathlib import Path
from typing import Any

import pytest

from coordinator.cli import main as plume
from mobile_sim.backends import ray_backend
from mobile_sim.backends.ray_backend import check_reachable
from mobile_sim.backends.sequential import SequentialBackend
from mobile_sim.runner import SimConfig

TINY = [
    "sim", "--dataset", "digits", "--clients", "4", "--per-round", "2", "--rounds", "1",
    "--local-epochs", "1", "--no-progress",
]  # fmt: skip
SECRET = "t0ken-h211"


@pytest.mark.parametrize(
    ("given", "recorded"),
    [
        (f"ray://alice:{SECRET}@head.example:10001", "ray://head.example:10001"),
        (f"ray://{SECRET}@head.example:10001", "ray://head.example:10001"),
        (f"alice:{SECRET}@10.0.0.5:6379", "10.0.0.5:6379"),
        (f"alice:{SECRET}@[::1]:6379", "[::1]:6379"),
        (f"ray://alice:{SECRET}@[bad:10001", "ray://[bad:10001"),  # urlsplit refuses it
        ("ray://head.example:10001", "ray://head.example:10001"),
        ("10.0.0.5:6379", "10.0.0.5:6379"),
        ("auto", "auto"),
        (" 10.0.0.5:6379\t", "10.0.0.5:6379"),  # as RayBackend strips it (stop 57)
    ],
)
def test_the_config_records_the_address_without_credentials(given: str, recorded: str) -> None:
    cfg = SimConfig(backend="ray", ray_address=given)
    assert ray_backend.public_address(given.strip()) == recorded
    assert cfg.as_dict()["ray_address"] == recorded
    assert cfg.ray_address == given  # what the backend gets is untouched


class _Recorded(SequentialBackend):
    """Stands in for RayBackend: records its constructor's arguments, trains in process."""

    calls: list[dict[str, Any]] = []

    def __init__(self, **kwargs: Any) -> None:
        type(self).calls.append(kwargs)
        super().__init__()


@pytest.mark.parametrize(
    ("given", "recorded"),
    [
        (f"ray://alice:{SECRET}@head.example:10001", "ray://head.example:10001"),
        (f"alice:{SECRET}@10.0.0.5:6379", "10.0.0.5:6379"),
    ],
)
def test_no_file_of_the_run_holds_the_credentials(
    given: str,
    recorded: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare: RayBackend replaced (no Ray is started)
    monkeypatch.setattr(_Recorded, "calls", [])
    monkeypatch.setattr(ray_backend, "RayBackend", _Recorded)

    # Execute
    code = plume([*TINY, "--backend", "ray", "--ray-address", given, "--out", str(tmp_path)])
    out, err = capsys.readouterr()

    # Assert: the backend got the address as given; rounds.json, the other files and the
    # output hold it without the credentials
    assert code == 0, err
    assert _Recorded.calls == [{"address": given}]
    doc = json.loads((tmp_path / "rounds.json").read_text())
    assert doc["config"]["ray_address"] == recorded
    words = shlex.split(doc["command"])
    assert words[words.index("--ray-address") + 1] == recorded
    for written in tmp_path.iterdir():
        assert SECRET.encode() not in written.read_bytes(), written.name
    assert SECRET not in out + err


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again on leaving: nothing listens there


def test_a_user_and_password_before_a_plain_address_is_refused_without_them() -> None:
    # Ray's GCS address takes none (ray.init would show the address in full): refused before
    # any connection is tried, the address shown without them
    address = f"alice:{SECRET}@127.0.0.1:{_closed_port()}"
    with pytest.raises(ValueError) as info:
        check_reachable(address, "RAY_ADDRESS", timeout_s=5.0)
    text = str(info.value)
    assert SECRET not in text and "\n" not in text
    assert text.startswith(f"a Ray address takes no user or password: {public(address)} ")
    assert "(given by RAY_ADDRESS, shown here without them)" in text


def public(address: str) -> str:
    return address.rpartition("@")[2]


def test_the_cli_line_for_such_an_address_has_no_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("ray", reason="the Ray backend needs `pip install .[ray]`")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    address = f"alice:{SECRET}@127.0.0.1:{_closed_port()}"

    code = plume([*TINY, "--backend", "ray", "--ray-address", address, "--out", str(tmp_path)])
    err = capsys.readouterr().err

    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("plume sim: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"takes no user or password: {public(address)} (given by --ray-address," in lines[0]
    assert SECRET not in err
