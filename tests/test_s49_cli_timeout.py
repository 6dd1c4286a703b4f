"""Stop 49: the admin commands' `--timeout SECONDS`.

create-task, status, pause, resume, stop and get-model waited up to 60 s (AdminClient's
timeout, not settable) at each step of a request to a coordinator that did not answer, without
a word, and then said only httpx's "timed out". Now `--timeout` sets that wait (default 30 s,
a finite number > 0, checked by argparse: status 2), and running out of it is one line naming
the URL and the timeout, status 1; a request that went whole (pause, resume, stop, create-task)
adds that it may have taken effect."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coordinator import _cli as coordinator_cli
from coordinator.cli import build_parser, main
from coordinator.service import AdminError

TOKEN = "s49-timeout-token"
ADMIN_COMMANDS = (
    ["create-task", "--model", "synthetic_lr"],
    ["status"],
    ["pause", "--task", "1"],
    ["resume", "--task", "1"],
    ["stop", "--task", "1"],
    ["get-model", "--task", "1", "--out", "model.npz"],
)


@pytest.fixture
def silent_url() -> Iterator[str]:
    """The URL of a server that accepts connections, reads nothing and never answers (a
    stalled coordinator, or something else listening on its port)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    done = threading.Event()

    def hold() -> None:
        listener.settimeout(0.05)
        while not done.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        done.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


def _one_error(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"plume coordinator {command}: error: "), err
    return lines[0].split(": error: ", 1)[1]


def _run(argv: list[str]) -> int:
    try:
        return main(["coordinator", *argv])
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize("argv", ADMIN_COMMANDS, ids=lambda argv: argv[0])
def test_a_coordinator_that_does_not_answer_is_one_line_naming_url_and_timeout(
    argv: list[str],
    silent_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PLUME_ADMIN_TOKEN", TOKEN)
    started = time.monotonic()
    # Execute
    code = _run([*argv, "--url", silent_url, "--timeout", "0.3"])
    took = time.monotonic() - started
    # Assert: after about the timeout (not 60 s), one line naming the URL and the timeout
    line = _one_error(capsys, argv[0])
    assert code == 1
    assert line.startswith(
        f"the coordinator at {silent_url} did not answer within --timeout 0.3 s: "
    ), line
    assert "give a longer --timeout" in line
    sent = "the request was sent, so the"
    if argv[0] in ("pause", "resume", "stop"):
        assert line.endswith(
            f"; {sent} {argv[0]} may have taken effect: `plume coordinator status --task 1` shows"
        ), line
    elif argv[0] == "create-task":
        created = "task may have been created: `plume coordinator status` lists the tasks"
        assert line.endswith(f"; {sent} {created}"), line
    else:
        assert sent not in line
    assert took < 20, took


@pytest.mark.parametrize("argv", ADMIN_COMMANDS, ids=lambda argv: argv[0])
def test_the_timeout_defaults_to_30_seconds_and_reaches_the_client(
    argv: list[str],
    silent_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare: the client the command makes, recorded; the request then fails at once
    from coordinator.service import AdminClient

    made: list[float] = []

    class Recorded(AdminClient):
        def __init__(self, *args: object, timeout: float, **kwargs: object) -> None:
            made.append(timeout)
            super().__init__(*args, timeout=timeout, **kwargs)  # type: ignore[arg-type]

        def _call(self, *args: object, **kwargs: object) -> object:
            raise httpx.ReadTimeout("timed out")

    monkeypatch.setattr("coordinator.service.AdminClient", Recorded)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PLUME_ADMIN_TOKEN", TOKEN)
    assert build_parser().parse_args(["coordinator", *argv]).timeout == 30.0
    # Execute
    code = _run([*argv, "--url", silent_url])
    # Assert
    assert code == 1 and made == [30.0]
    assert "did not answer within --timeout 30 s" in _one_error(capsys, argv[0])


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
@pytest.mark.parametrize("argv", ADMIN_COMMANDS, ids=lambda argv: argv[0])
def test_a_timeout_that_is_not_a_positive_number_is_a_usage_mistake(
    argv: list[str], value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _run([*argv, "--timeout", value])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"plume coordinator {argv[0]}: error: argument --timeout: " in err, err
    assert value in err


def test_help_shows_the_timeout_and_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["coordinator", "status", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--timeout SECONDS" in text and "default: 30)" in text


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (httpx.ConnectTimeout("timed out"), "no connection to the coordinator at {url} within"),
        (httpx.PoolTimeout("timed out"), "no connection to the coordinator at {url} within"),
        (httpx.WriteTimeout("timed out"), "the coordinator at {url} did not take the request"),
        (httpx.ReadTimeout("timed out"), "the coordinator at {url} did not answer within"),
    ],
)
def test_each_timeout_names_the_url_and_the_timeout(error: Exception, words: str) -> None:
    url = "http://10.0.0.5:8080"
    text = coordinator_cli.admin_error_text(error, url, timeout=2.5)
    assert text.startswith(words.format(url=url)), text
    assert "--timeout 2.5 s" in text and "longer --timeout" in text
    # A caller without --timeout (`plume sim --coordinator`) keeps the unreachable line
    plain = coordinator_cli.admin_error_text(error, url, "--coordinator")
    assert plain.startswith(f"cannot reach the coordinator at {url} ("), plain
    assert "--timeout" not in plain


def test_a_created_task_whose_upload_timed_out_names_the_timeout() -> None:
    # Prepare: AdminClient's error for a task created whose model's PUT had no answer
    try:
        try:
            raise httpx.ReadTimeout("timed out")
        except httpx.ReadTimeout as cause:
            raise AdminError(
                "PUT", "/v1/admin/tasks/3/model", 0, problem="no answer (timed out)", task_id=3
            ) from cause
    except AdminError as exc:
        error = exc
    # Execute
    text = coordinator_cli._create_task_error(error, "http://h:8080", 5.0)
    # Assert
    assert text.startswith(
        "task 3 was created but its initial model's upload got no answer from http://h:8080 "
        "within --timeout 5 s; "
    ), text
    assert "`plume coordinator status --task 3`" in text
