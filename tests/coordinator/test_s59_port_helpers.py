"""The port helpers of test_service_support.py that replace `free_port()` (a port found free,
closed, then started on later: another process could bind it between the two, as a CI run's
loopback port once was): `ServeProcess.listening_port` and `logged_port` read the port a
coordinator started on `--port 0` got from its `Uvicorn running on` line; `refused_url` holds
a port no one listens on for as long as the test uses it."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from .test_service_support import ServeProcess, logged_port, refused_url, start_logged

# A stand-in for `serve` that writes what it does: a line before, uvicorn's line, one after
FAKE = textwrap.dedent(
    """
    import sys, time
    sys.stderr.write("INFO:     before\\n")
    sys.stderr.write("INFO:     Uvicorn running on http://127.0.0.1:4321 (Press CTRL+C to quit)\\n")
    sys.stderr.flush()
    time.sleep(0.2)
    sys.stderr.write("INFO:     after\\n")
    """
)


def test_listening_port_reads_the_line_and_communicate_keeps_all_of_stderr() -> None:
    with ServeProcess([sys.executable, "-c", FAKE]) as proc:
        port = proc.listening_port(timeout=30)
        _, err = proc.communicate(timeout=30)
    assert port == 4321
    assert err.splitlines() == [
        "INFO:     before",
        "INFO:     Uvicorn running on http://127.0.0.1:4321 (Press CTRL+C to quit)",
        "INFO:     after",
    ]


# After uvicorn's line, 1 MiB on each pipe: far more than a pipe holds (64 KiB on Linux)
CHATTY = textwrap.dedent(
    """
    import sys
    sys.stderr.write("INFO:     Uvicorn running on http://127.0.0.1:4321 (Press CTRL+C to quit)\\n")
    sys.stderr.flush()
    line = "x" * 1023 + "\\n"
    for _ in range(1024):
        sys.stderr.write(line)
        sys.stdout.write(line)
    sys.stdout.flush()
    sys.stderr.flush()
    """
)


@pytest.mark.parametrize("logged", [True, False])
def test_a_server_that_logs_much_after_listening_does_not_block_on_its_pipes(
    logged: bool,
) -> None:
    # Prepare: `logged=False` finds the port in /proc, so that variant needs a real listener
    script = CHATTY
    if not logged:
        script = (
            "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n" + CHATTY
        )
    with ServeProcess([sys.executable, "-c", script]) as proc:
        # Execute: the test reads nothing itself until the process has ended
        proc.listening_port(timeout=30, logged=logged)
        try:
            status = proc.wait(timeout=20)
        finally:
            proc.kill()
        out, err = proc.communicate(timeout=30)
    # Assert: it ran to its end, and every byte of both pipes is kept
    assert status == 0
    line = "x" * 1023 + "\n"
    assert out == line * 1024
    assert err.splitlines(keepends=True)[1:] == [line] * 1024
    assert err.startswith("INFO:     Uvicorn running on http://127.0.0.1:4321")


def test_listening_port_of_a_process_that_exits_first_shows_its_output() -> None:
    script = "import sys; sys.stderr.write('error: port in use\\n'); sys.exit(1)"
    with ServeProcess([sys.executable, "-c", script]) as proc:
        with pytest.raises(AssertionError) as failed:
            proc.listening_port(timeout=30)
    assert "exited with status 1 before listening" in str(failed.value)
    assert "error: port in use" in str(failed.value)


def test_listening_port_gives_up_after_its_timeout() -> None:
    script = "import sys, time; sys.stderr.write('starting\\n'); sys.stderr.flush(); time.sleep(30)"
    with ServeProcess([sys.executable, "-c", script]) as proc:
        try:
            with pytest.raises(AssertionError) as failed:
                proc.listening_port(timeout=0.5)
        finally:
            proc.kill()
            proc.communicate()
    assert "said no listening port in 0.5 s" in str(failed.value)
    assert "starting" in str(failed.value)


def test_logged_port_reads_the_line_from_the_file(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-c", FAKE], stderr=sink)
    try:
        assert logged_port(proc, log, timeout=30) == 4321
    finally:
        proc.wait(30)


def test_logged_port_of_a_process_that_exits_first_shows_its_output(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    script = "import sys; sys.stderr.write('error: no database\\n'); sys.exit(1)"
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-c", script], stderr=sink)
    with pytest.raises(AssertionError) as failed:
        logged_port(proc, log, timeout=30)
    assert "exited with status 1 before listening" in str(failed.value)
    assert "error: no database" in str(failed.value)


def test_refused_url_refuses_connections_and_holds_its_port() -> None:
    with refused_url() as url:
        port = int(url.rsplit(":", 1)[1])
        assert url == f"http://127.0.0.1:{port}"
        # A connect is refused (nothing listens)
        with pytest.raises(httpx.ConnectError):
            httpx.get(url, timeout=5)
        # No other socket can take the port meanwhile, SO_REUSEADDR or not
        with socket.socket() as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError) as taken:
                other.bind(("127.0.0.1", port))
        assert taken.value.errno == errno.EADDRINUSE


def test_listening_port_not_logged_is_the_port_the_process_listens_on() -> None:
    # A process that says nothing on stderr (a log level that hides uvicorn's line)
    script = textwrap.dedent(
        """
        import socket, sys, time
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        time.sleep(0.3)  # bound, not listening yet: no port to find
        s.listen()
        print(s.getsockname()[1], flush=True)
        time.sleep(30)
        """
    )
    with ServeProcess([sys.executable, "-c", script]) as proc:
        try:
            port = proc.listening_port(timeout=30, logged=False)
        finally:
            proc.kill()
            out, err = proc.communicate()
    assert port == int(out.split()[0]) and err == ""


# A stand-in for `serve` on port 0 that answers /healthz, and says where as uvicorn does
HEALTHY = textwrap.dedent(
    """
    import http.server, sys

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/healthz" else 404)
            self.send_header("content-length", "0")
            self.end_headers()

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    port = server.server_address[1]
    sys.stderr.write(f"INFO:     Uvicorn running on http://127.0.0.1:{port} (Press CTRL+C)\\n")
    sys.stderr.flush()
    server.serve_forever()
    """
)


def test_start_logged_is_up_on_the_logged_port(tmp_path: Path) -> None:
    url, proc = start_logged([sys.executable, "-c", HEALTHY], tmp_path / "serve.log", timeout=30)
    try:
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        assert f"Uvicorn running on {url} " in (tmp_path / "serve.log").read_text()
    finally:
        proc.kill()
        proc.wait(10)


def test_start_logged_of_a_process_that_exits_first_shows_its_log(tmp_path: Path) -> None:
    script = "import sys; sys.stderr.write('error: no database\\n'); sys.exit(1)"
    with pytest.raises(AssertionError) as failed:
        start_logged([sys.executable, "-c", script], tmp_path / "serve.log", timeout=30)
    assert "exited with status 1 before listening" in str(failed.value)
    assert "error: no database" in str(failed.value)
