"""docs/operations.md's smaller claims, each checked from the doc's own words against the code
that honours it, in process (stop 55, audit O): the chunked framing the ledger leaves out,
`ServiceConfig`'s refusals, the serve flags' ranges, and the configuration file's rules."""

from __future__ import annotations

import contextlib
import io
import math
import re
import tempfile
from pathlib import Path

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.cli import main
from coordinator.service import ServiceConfig

ROOT = Path(__file__).resolve().parents[2]
TEXT = (ROOT / "docs" / "operations.md").read_text()
PROSE = " ".join(TEXT.split())


def _chunked(body: bytes, size: int) -> bytes:
    """`body` framed in chunks of `size` bytes as h11 (uvicorn's parser's own library)
    writes it, the last `0` chunk included."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(
        h11.Request(
            method="POST", target="/", headers=[("Host", "x"), ("Transfer-Encoding", "chunked")]
        )
    )
    out = b""
    for i in range(0, len(body), size):
        out += conn.send(h11.Data(data=body[i : i + size])) or b""
    return out + (conn.send(h11.EndOfMessage()) or b"")


@pytest.mark.parametrize("size", [1, 7, 15, 16, 255, 256, 4096, 65_536])
def test_the_chunk_framing_the_ledger_leaves_out(size: int) -> None:
    # "The chunk-size lines and the final `0` chunk are not counted: `EXPR` bytes per chunk,
    # plus 5": the doc's expression, evaluated for a chunk of `size` bytes
    found = re.search(r"are not counted: `([^`]+)` bytes per chunk[^,]*, plus 5", PROSE)
    assert found is not None, "the chunk framing sentence moved"
    per_chunk = eval(found.group(1), {}, {"size": size})  # noqa: S307 - the doc's own formula
    # Execute: two chunks of `size` bytes, framed for real
    framed = _chunked(b"x" * (2 * size), size)
    # Assert: what the framing adds to the payload is the doc's count
    assert len(framed) - 2 * size == 2 * per_chunk + 5


# --- ServiceConfig's refusals ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        # "the times and rates above must be finite numbers, > 0 (`signature_window_s`, at
        # most 86400, `tick_s`, `poll_s`, `idle_retry_s`, `pool_ttl_s`, `max_checkin_rate`)"
        ("signature_window_s", 86_400.5),
        ("signature_window_s", math.inf),
        ("tick_s", 0.0),
        ("tick_s", math.nan),
        ("poll_s", 0.0),
        ("poll_s", -1.0),
        ("idle_retry_s", 0.0),
        ("idle_retry_s", math.inf),
        ("pool_ttl_s", math.nan),
        ("max_checkin_rate", 0.0),
        # "or >= 0 (`register_rate_per_s`, `body_timeout_s`, where 0 means off)"
        ("register_rate_per_s", -1.0),
        ("register_rate_per_s", math.nan),
        ("body_timeout_s", -1.0),
        ("body_timeout_s", math.inf),
        # "and `json_body_cap` and `register_burst` integers >= 1"
        ("json_body_cap", 0),
        ("json_body_cap", 1.5),
        ("register_burst", 0),
        ("register_burst", 2.0),
        # "`tick_s` is at least 0.001 s"
        ("tick_s", 0.0009),
        ("tick_s", 5e-324),
        # "`max_checkin_rate` is at least 0.001 per second"
        ("max_checkin_rate", 0.0009),
        ("max_checkin_rate", 5e-324),
        # "`register_rate_per_s` is 0 or at least 1e-06 per second"
        ("register_rate_per_s", 5e-324),
        ("register_rate_per_s", 9e-7),
        # "and `register_burst` is at most 1,000,000"
        ("register_burst", 1_000_001),
        # "`--signature-window` of 1 s to a day", "`--pool-ttl` of at least 1 s", "a
        # `--body-timeout` of 0 or at least 1 s": "`ServiceConfig` refuses the same values"
        ("signature_window_s", 0.5),
        ("pool_ttl_s", 0.5),
        ("body_timeout_s", 0.5),
    ],
)
def test_service_config_refuses_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"^{field} "):
        ServiceConfig(db_path=":memory:", **{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tick_s", 0.001),
        ("max_checkin_rate", 0.001),
        ("register_rate_per_s", 0.0),
        ("register_rate_per_s", 1e-6),
        ("register_burst", 1_000_000),
        ("signature_window_s", 1.0),
        ("signature_window_s", 86_400.0),
        ("body_timeout_s", 0.0),
        ("body_timeout_s", 1.0),
        ("pool_ttl_s", 1.0),
        ("json_body_cap", 1),
    ],
)
def test_service_config_takes_the_bounds_themselves(field: str, value: object) -> None:
    # The same sentences' bounds are inclusive ("at least", "at most", ">= 0")
    config = ServiceConfig(db_path=":memory:", **{field: value})
    assert getattr(config, field) == value


def test_service_config_pool_ttl_above_poll() -> None:
    # "`--pool-ttl` of at least 1 s and more than `--poll`" ... "`ServiceConfig` refuses the
    # same values with a `ValueError` naming the field, its minimum and why"
    with pytest.raises(ValueError, match=r"^pool_ttl_s .*more than poll_s"):
        ServiceConfig(db_path=":memory:", poll_s=5.0, pool_ttl_s=5.0)


def test_service_config_defaults_are_the_tables() -> None:
    # The serve table's defaults, and "`ServiceConfig` also has `idle_retry_s` (30 s ...),
    # `tick_s` (0.05 s ...), `json_body_cap` (64 KiB ...) and `snapshots_per_version` (16 ...)"
    config = ServiceConfig(db_path=":memory:")
    assert (config.signature_window_s, config.poll_s, config.register_rate_per_s) == (300, 0.25, 0)
    assert (config.register_burst, config.body_timeout_s, config.pool_ttl_s) == (20, 120, 60)
    assert (config.max_checkin_rate, config.keep_frames_rounds) == (200, None)
    assert config.upload_buffer_bytes == 256 << 20
    assert (config.idle_retry_s, config.tick_s, config.json_body_cap) == (30, 0.05, 64 << 10)
    assert config.snapshots_per_version == 16


# --- serve's flags and its configuration file -------------------------------------------------


@pytest.fixture()
def served(monkeypatch: pytest.MonkeyPatch) -> list[tuple[ServiceConfig, str, int, dict]]:
    """What `plume coordinator serve` would serve: (config, host, port, keywords) per call."""
    import coordinator.service as service

    seen: list[tuple[ServiceConfig, str, int, dict]] = []
    monkeypatch.setattr(
        service, "serve", lambda config, host, port, **kw: seen.append((config, host, port, kw))
    )
    monkeypatch.delenv("PLUME_ADMIN_TOKEN", raising=False)
    return seen


def _serve(*flags: str) -> int:
    try:
        return main(["coordinator", "serve", *flags])
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize(
    ("flag", "low", "high", "out_low", "out_high"),
    [
        # "a number of seconds in [0, 3600]"
        ("--shutdown-grace", "0", "3600", "-1", "3600.5"),
        # "0 to 1,000,000; 0 = no limit"
        ("--snapshots-per-version", "0", "1000000", "-1", "1000001"),
        # "0 to 1,048,576; 0 = no limit"
        ("--upload-buffer-mb", "0", "1048576", "-1", "1048577"),
        # "N is 0 to 9223372036854775807 (SQLite's largest integer)"
        ("--keep-frames", "0", "9223372036854775807", "-1", "9223372036854775808"),
        # "1 to 86400, a day"
        ("--signature-window", "1", "86400", "0.5", "86400.5"),
        # "0 turns it off, else at least 1"
        ("--body-timeout", "0", "1", "-1", None),
        ("--head-timeout", "0", "1", "-1", None),
        ("--send-timeout", "0", "1", "-1", None),
    ],
)
def test_serve_flag_ranges(
    served: list[tuple[ServiceConfig, str, int, dict]],
    capsys: pytest.CaptureFixture[str],
    flag: str,
    low: str,
    high: str,
    out_low: str,
    out_high: str | None,
) -> None:
    for value in (low, high):
        assert _serve(flag, value) == 0, capsys.readouterr().err
    assert len(served) == 2
    capsys.readouterr()
    for value in (out_low, out_high) if out_high is not None else (out_low,):
        assert _serve(flag, value) == 2
        err = capsys.readouterr().err
        assert flag in err, err
    for between in (
        ("0.5",) if flag in ("--body-timeout", "--head-timeout", "--send-timeout") else ()
    ):
        # "else at least 1"
        assert _serve(flag, between) == 2
    assert len(served) == 2


def _conf(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "coordinator.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_the_file_is_relative_to_its_folder_and_the_command_line_wins(
    tmp_path: Path, served: list[tuple[ServiceConfig, str, int, dict]]
) -> None:
    # "a relative one is relative to the file's folder, not to the folder serve starts in";
    # "A flag given on the command line wins over the file wherever it stands, even one given
    # with its default value"; "`keep-frames` or `keep_frames`"
    folder = tmp_path / "etc"
    folder.mkdir()
    conf = _conf(folder, 'db = "plume.db"\nport = 9090\nkeep_frames = 3\npoll = "2"\n')
    assert _serve("--port", "8080", "--config", str(conf)) == 0
    config, host, port, _ = served[0]
    assert Path(config.db_path) == folder / "plume.db"
    assert (host, port) == ("127.0.0.1", 8080)
    assert config.keep_frames_rounds == 3
    assert config.poll_s == 2.0  # "A number flag takes a number (or a string of one)"


def test_home_in_a_path_of_the_file(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # "In a path in the file (`db`, `tls-cert`, `tls-key`) `~` is the home folder, as in a
    # shell"
    monkeypatch.setenv("HOME", str(tmp_path))
    conf = _conf(tmp_path / "..", 'db = "~/fleet.db"\n')
    assert _serve("--config", str(conf)) == 0
    assert served[0][0].db_path == str(tmp_path / "fleet.db")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        # "(`keep-frames` or `keep_frames`, not both)"
        ("keep-frames = 1\nkeep_frames = 2\n", "given twice"),
        # "at the top of the file (no `[section]`)"
        ("[serve]\nport = 1\n", "[serve] is a table"),
        # "a whole-number flag (...) a TOML integer, written in digits"
        ("register-burst = 20.0\n", "must be a TOML integer"),
        ("upload-buffer-mb = 1e3\n", "must be a TOML integer"),
        ("keep-frames = 1.0\n", "must be a TOML integer"),
        # "a flag that takes text (...) takes only a quoted string, so `host = 0` is refused"
        ("host = 0\n", "give a string"),
        ("db = 1\n", "give a string"),
        ("log-level = 1\n", "give a string"),
        # "an on/off flag (`access-log`) takes `"on"`/`"off"` or `true`/`false`"
        ('access-log = "yes"\n', "expected on or off"),
    ],
)
def test_the_file_refuses_what_the_doc_says_it_refuses(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],
    capsys: pytest.CaptureFixture[str],
    text: str,
    says: str,
) -> None:
    conf = _conf(tmp_path, text)
    assert _serve("--config", str(conf)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"plume coordinator serve: error: --config {conf}: "
    ), err
    assert says in err[0], err
    assert served == []


@pytest.mark.parametrize(
    ("text", "on"),
    [
        ('access-log = "off"\n', False),
        ("access-log = true\n", True),
        ("access-log = false\n", False),
    ],
)
def test_the_file_takes_on_off_and_booleans(
    tmp_path: Path, served: list[tuple[ServiceConfig, str, int, dict]], text: str, on: bool
) -> None:
    conf = _conf(tmp_path, text)
    assert _serve("--config", str(conf)) == 0
    assert served[0][3]["access_log"] is on


# --- the configuration file's values, any of them -------------------------------------------

_KEYS = [
    "db",
    "host",
    "port",
    "admin-token",
    "tls-cert",
    "tls-key",
    "signature-window",
    "poll",
    "register-rate",
    "register-burst",
    "body-timeout",
    "head-timeout",
    "send-timeout",
    "shutdown-grace",
    "keep-frames",
    "snapshots-per-version",
    "upload-buffer-mb",
    "pool-ttl",
    "max-checkin-rate",
    "log-level",
    "access-log",
]


def _toml_string(text: str) -> str:
    out = '"'
    for ch in text:
        if ch in '"\\':
            out += "\\" + ch
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out += f"\\u{ord(ch):04x}"
        elif 0xD800 <= ord(ch) <= 0xDFFF:
            out += "?"
        else:
            out += ch
    return out + '"'


def _toml_float(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = repr(value)
    mantissa, _, exponent = text.partition("e")
    return f"{mantissa}.0e{exponent}" if exponent and "." not in mantissa else text


_VALUES = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True).map(_toml_float),
    st.text(max_size=12).map(_toml_string),
    st.sampled_from(
        ["0", "1", "-1", "0.5", "1e3", "1000.0", "9223372036854775808", "1e400", "-0.0"]
        + ['""', '" "', '"0"', '"nan"', '"on"', '"::1"', '"999.1.1.1"', '"~"', '"."', '"/"']
        + ["true", "false", "[]", "[1]", "{}", "1979-05-27T07:32:00Z", "07:32:00"]
    ),
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(key=st.sampled_from(_KEYS), underscore=st.booleans(), value=_VALUES)
def test_any_value_in_the_file_is_served_or_one_line_naming_file_and_key(
    key: str, underscore: bool, value: str
) -> None:
    # "Each value is checked as its flag is, and a mistake is one line naming the file and
    # the key, before anything is opened (exit status 2)"; keys "named as the flag without
    # its dashes (`keep-frames` or `keep_frames`...)"
    import coordinator.service as service

    name = key.replace("-", "_") if underscore else key
    seen: list[object] = []
    with tempfile.TemporaryDirectory() as folder:
        conf = Path(folder) / "coordinator.toml"
        conf.write_text(f"{name} = {value}\n")
        conf.chmod(0o600)
        err = io.StringIO()
        with (
            pytest.MonkeyPatch.context() as patch,
            contextlib.redirect_stderr(err),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            patch.setattr(service, "serve", lambda *a, **kw: seen.append(a))
            patch.delenv("PLUME_ADMIN_TOKEN", raising=False)
            code = _serve("--config", str(conf))
        opened = sorted(p.name for p in Path(folder).iterdir())
    said = err.getvalue()
    assert "Traceback" not in said
    if code == 0:
        assert len(seen) == 1
        return
    lines = [line for line in said.splitlines() if "error:" in line]
    assert code == 2 and seen == [], (name, value, code, said)
    assert len(lines) == 1, said
    assert lines[0].startswith(f"plume coordinator serve: error: --config {conf}: "), lines
    assert key in lines[0] or name in lines[0], lines
    assert opened == ["coordinator.toml"]  # nothing opened or created


def test_a_tasks_series_come_with_its_initial_model(tmp_path: Path) -> None:
    # "every task has the families, with zeros until its first round, from the moment its
    # initial model is stored (a task still `awaiting_model` has no series)"; "each task has
    # 45 lines of its own"
    import httpx

    from compression import encode_snapshot
    from coordinator.service import ServerThread
    from protocol.messages import to_json

    from .test_service_support import ADMIN, SPEC, initial_params, task_config

    assert "(a task still `awaiting_model` has no series)" in PROSE
    admin = {"authorization": f"Bearer {ADMIN}"}
    config = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN)
    with ServerThread(config) as url, httpx.Client(base_url=url) as http:
        made = http.post("/v1/admin/tasks", json=to_json(task_config()), headers=admin)
        assert made.status_code == 201 and made.json()["state"] == "awaiting_model"
        task = made.json()["task_id"]
        before = http.get("/metrics").text
        put = http.put(
            f"/v1/admin/tasks/{task}/model",
            content=encode_snapshot(initial_params(), SPEC, "fp32"),
            headers={**admin, "content-type": "application/octet-stream"},
        )
        assert put.status_code == 200, put.text
        after = http.get("/metrics").text
    label = f'task="{task}"'
    assert [line for line in before.splitlines() if label in line] == []
    assert len([line for line in after.splitlines() if label in line]) == 45
