"""Service hardening: no slash redirects, a media-type gate on bodies, a registration rate limit."""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator import _cli
from coordinator.service import ServerThread, ServiceConfig, create_app
from coordinator.service.auth import RateLimiter, client_key
from coordinator.service.errors import ApiError, require_media_type
from protocol import auth
from protocol.messages import Assignment
from protocol.names import ContentType, Reason
from sdk.client import Client
from tests import _clock

from .test_service_support import (
    ADMIN,
    SPEC,
    admin_get,
    create_task,
    device_client,
    serve_cli,
    signed_headers,
    task_config,
    task_server,
)

OCTET = "application/octet-stream"
# Media types a binary route must refuse: none, the JSON one, near misses of octet-stream.
WRONG_BINARY = [
    None,
    "",
    "application/json",
    "text/plain",
    "application/octet-streamx",
    "application/octet",
    "octet-stream",
    "multipart/form-data; boundary=x",
    "application/x-www-form-urlencoded",
]


class FakeClock(_clock.Clock):
    """Monotonic seconds that move only when a test says so."""

    start = 1000.0


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with task_server(tmp_path_factory.mktemp("hardening")) as client:
        yield client


def _url(http: httpx.Client) -> str:
    return str(http.base_url).rstrip("/")


_signed = signed_headers  # (key, method, target, round_id, body); test_h165_* import it


def _with_type(headers: dict[str, str], content_type: str | None) -> dict[str, str]:
    return headers if content_type is None else {**headers, "content-type": content_type}


def _refused(r: httpx.Response, status: int, reason: Reason) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body: dict[str, Any] = r.json()
    assert body["reason"] == str(reason) and body["detail"], body
    return body


def _assigned(http: httpx.Client, tmp_path: Path) -> tuple[int, Client, Assignment, bytes]:
    """A one-report task; device A registered and assigned to its round; A's valid frame."""
    task_id = create_task(http, task_config(rounds=1, clients_per_round=1, deadline_s=60.0))
    a = device_client(_url(http), str(tmp_path / "a"))
    a.register()
    assignment = a.check_in(task_id).assignment
    assert assignment is not None
    params, _ = a.fetch_model(assignment)
    frame = a._core.encode(assignment, SPEC, params, params + 0.05, 40).frame
    return task_id, a, assignment, frame


# -- 1. a trailing slash is an unknown path, not a redirect ------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/devices/"),
        ("POST", "/v1/checkin/"),
        ("GET", "/healthz/"),
        ("GET", "/v1/rounds/1/"),
        ("GET", "/v1/admin/tasks/1/"),
        ("PUT", "/v1/admin/tasks/1/model/"),
        ("POST", "/v1/rounds/1/updates/"),
    ],
)
def test_a_trailing_slash_is_a_json_404_not_a_redirect(
    http: httpx.Client, method: str, path: str
) -> None:
    # Prepare: admin credentials and a JSON body, so nothing but the path can be wrong
    headers = {"authorization": f"Bearer {ADMIN}", "content-type": "application/json"}
    # Execute
    r = http.request(method, path, headers=headers, content=b"{}" if method != "GET" else None)
    # Assert: the JSON not_found every unknown path gets; no Location to follow
    _refused(r, 404, Reason.NOT_FOUND)
    assert "location" not in r.headers


def test_the_paths_without_the_slash_still_answer(http: httpx.Client, tmp_path: Path) -> None:
    # Execute
    health = http.get("/healthz")
    device = device_client(_url(http), str(tmp_path / "d"))
    registered = device.register()
    answer = device.check_in(None)
    device.close()
    # Assert
    assert health.status_code == 200 and health.json()["ok"] is True
    assert registered and answer.action in ("train", "wait")


# -- 2. binary bodies must say application/octet-stream ---------------------------------------


@pytest.mark.parametrize("content_type", WRONG_BINARY)
def test_an_upload_without_octet_stream_is_415_and_changes_nothing(
    http: httpx.Client, tmp_path: Path, content_type: str | None
) -> None:
    # Prepare: A's valid, signed upload
    task_id, a, assignment, frame = _assigned(http, tmp_path)
    rid = assignment.round_id
    path = f"/v1/rounds/{rid}/updates"
    headers = {**_signed(a._core.key, "POST", path, rid, frame), "idempotency-key": "k"}
    # Execute: the request with a wrong (or no) Content-Type, then the very same signed request
    # with the right one
    refused = http.post(path, content=frame, headers=_with_type(headers, content_type))
    status = admin_get(http, f"/v1/rounds/{rid}")
    accepted = http.post(path, content=frame, headers=_with_type(headers, OCTET))
    a.close()
    # Assert: refused before the signature was checked (its nonce is still fresh), the round
    # held nothing, and the correct upload is accepted as the first one
    body = _refused(refused, 415, Reason.UNSUPPORTED_MEDIA_TYPE)
    assert OCTET in body["detail"]
    assert (status["state"], status["reports"]) == ("open", 0)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["duplicate"] is False and accepted.json()["reports"] == 1


def test_octet_stream_with_parameters_in_any_case_is_accepted(
    http: httpx.Client, tmp_path: Path
) -> None:
    # Prepare
    _, a, assignment, frame = _assigned(http, tmp_path)
    rid = assignment.round_id
    path = f"/v1/rounds/{rid}/updates"
    headers = {**_signed(a._core.key, "POST", path, rid, frame), "idempotency-key": "k"}
    # Execute
    r = http.post(
        path, content=frame, headers={**headers, "content-type": "Application/Octet-Stream ; x=1"}
    )
    a.close()
    # Assert
    assert r.status_code == 200 and r.json()["accepted"] is True, r.text


@pytest.mark.parametrize("content_type", ["text/plain", None])
def test_a_secure_stage_upload_without_octet_stream_is_415(
    http: httpx.Client, tmp_path: Path, content_type: str | None
) -> None:
    # Prepare: a registered device's signed stage message (the round need not exist: the media
    # type is judged before anything else)
    device = device_client(_url(http), str(tmp_path / "s"))
    device.register()
    path = "/v1/secure/rounds/7/stages/advertise-keys"
    body = b"\x00" * 81
    headers = _signed(device._core.key, "POST", path, 7, body)
    device.close()
    # Execute
    r = http.post(path, content=body, headers=_with_type(headers, content_type))
    # Assert
    _refused(r, 415, Reason.UNSUPPORTED_MEDIA_TYPE)


@pytest.mark.parametrize("content_type", ["application/json", None])
def test_an_initial_model_without_octet_stream_is_415_and_the_task_still_waits(
    http: httpx.Client, content_type: str | None
) -> None:
    # Prepare: a task awaiting its model, and that model's snapshot
    from compression import encode_snapshot

    from .test_service_support import initial_params

    auth_h = {"authorization": f"Bearer {ADMIN}"}
    created = http.post("/v1/admin/tasks", json=json.loads(_task_json()), headers=auth_h)
    task_id = created.json()["task_id"]
    snap = encode_snapshot(initial_params(), SPEC, "fp32")
    path = f"/v1/admin/tasks/{task_id}/model"
    # Execute
    refused = http.put(path, content=snap, headers=_with_type(auth_h, content_type))
    waiting = admin_get(http, f"/v1/admin/tasks/{task_id}")
    accepted = http.put(path, content=snap, headers=_with_type(auth_h, OCTET))
    # Assert: refused, the task untouched; the same bytes with the right type start it
    _refused(refused, 415, Reason.UNSUPPORTED_MEDIA_TYPE)
    assert waiting["state"] == "awaiting_model"
    assert accepted.status_code == 200 and accepted.json()["state"] == "active", accepted.text


def _task_json() -> str:
    from protocol.messages import to_json

    return json.dumps(to_json(task_config()))


@pytest.mark.parametrize("content_type", ["text/plain", OCTET, None])
def test_json_routes_refuse_other_media_types_with_415(
    http: httpx.Client, content_type: str | None
) -> None:
    # Execute: a valid task config, labelled as something else
    r = http.post(
        "/v1/admin/tasks",
        content=_task_json().encode(),
        headers=_with_type({"authorization": f"Bearer {ADMIN}"}, content_type),
    )
    # Assert: a clear 415 (FastAPI alone said 422 "Input should be a dictionary")
    body = _refused(r, 415, Reason.UNSUPPORTED_MEDIA_TYPE)
    assert "application/json" in body["detail"]


def test_a_check_in_with_the_wrong_type_is_415_before_its_nonce_is_used(
    http: httpx.Client, tmp_path: Path
) -> None:
    # Prepare: a registered device's signed check-in
    device = device_client(_url(http), str(tmp_path / "c"))
    device.register()
    body = b"{}"
    headers = _signed(device._core.key, "POST", "/v1/checkin", 0, body)
    device.close()
    # Execute: sent as text/plain, then the same signed request as JSON
    refused = http.post("/v1/checkin", content=body, headers=_with_type(headers, "text/plain"))
    accepted = http.post(
        "/v1/checkin", content=body, headers=_with_type(headers, "application/json; charset=utf-8")
    )
    # Assert
    _refused(refused, 415, Reason.UNSUPPORTED_MEDIA_TYPE)
    assert accepted.status_code == 200, accepted.text


def test_a_registration_with_the_wrong_type_is_415_and_creates_no_device(
    http: httpx.Client,
) -> None:
    # Prepare
    key = auth.generate_private_key()
    body = _register_body(key)
    headers = _signed(key, "POST", "/v1/devices", 0, body)
    # Execute
    refused = http.post("/v1/devices", content=body, headers=_with_type(headers, "text/plain"))
    probe = _signed(key, "POST", "/v1/checkin", 0, b"{}")
    after = http.post("/v1/checkin", content=b"{}", headers=_with_type(probe, "application/json"))
    # Assert
    _refused(refused, 415, Reason.UNSUPPORTED_MEDIA_TYPE)
    _refused(after, 401, Reason.UNREGISTERED)


_HEADER_TEXT = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40)
_NOT_OCTET = st.one_of(
    _HEADER_TEXT,
    st.sampled_from(["application/json", "text/plain", "image/png", "application/zstd"]),
    st.builds(
        lambda t, p: f"{t}; {p}",
        st.sampled_from(["text/plain", "application/x"]),
        _HEADER_TEXT.filter(bool),
    ),
    # near misses: octet-stream with something glued on
    st.builds(lambda p: OCTET + p, _HEADER_TEXT.filter(bool)),
).filter(lambda v: v.split(";", 1)[0].strip().lower() != OCTET)


def test_no_other_media_type_reaches_the_decoder(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # Prepare: a server whose submit() records every call; A's signed upload, signed once
    root = tmp_path_factory.mktemp("media")
    app = create_app(ServiceConfig(db_path=str(root / "plume.db"), admin_token=ADMIN))
    submitted: list[int] = []
    real_submit = app.state.coordinator.submit

    def recording_submit(*args: Any, **kw: Any) -> Any:
        submitted.append(len(args[3]))
        return real_submit(*args, **kw)

    app.state.coordinator.submit = recording_submit
    with ServerThread(ServiceConfig(), app=app) as url, httpx.Client(base_url=url) as http:
        create_task(http)
        _, a, assignment, frame = _assigned(http, root)
        rid = assignment.round_id
        path = f"/v1/rounds/{rid}/updates"
        headers = {**_signed(a._core.key, "POST", path, rid, frame), "idempotency-key": "k"}

        @given(content_type=_NOT_OCTET)
        @settings(max_examples=40, deadline=None, derandomize=True, database=None)
        def refused(content_type: str) -> None:
            # Execute: the same signed upload under a generated Content-Type
            r = http.post(path, content=frame, headers={**headers, "content-type": content_type})
            # Assert: 415, and the coordinator never saw the bytes
            assert r.status_code == 415, (content_type, r.text)
            assert submitted == []

        refused()
        ok = http.post(path, content=frame, headers={**headers, "content-type": OCTET})
        a.close()
    # Assert: the signed request was valid all along
    assert ok.status_code == 200, ok.text
    assert submitted == [len(frame)]


@given(
    case=st.text(st.sampled_from("aA"), min_size=1, max_size=1),
    spaces=st.sampled_from(["", " ", "  "]),
    params=st.lists(st.sampled_from(["charset=binary", "x=1", 'q="a;b"', ""]), max_size=3),
)
@settings(max_examples=60, deadline=None, derandomize=True, database=None)
def test_octet_stream_is_matched_case_blind_with_any_parameters(
    case: str, spaces: str, params: list[str]
) -> None:
    # Prepare: application/octet-stream, letters' case flipped at random, with parameters
    essence = "".join(c.upper() if case == "A" and i % 2 else c for i, c in enumerate(OCTET))
    value = ";".join([spaces + essence + spaces, *params])
    # Execute + Assert: accepted
    require_media_type(value, ContentType.OCTET_STREAM)


@pytest.mark.parametrize("value", WRONG_BINARY)
def test_require_media_type_refuses_with_415(value: str | None) -> None:
    with pytest.raises(ApiError) as caught:
        require_media_type(value, ContentType.OCTET_STREAM)
    assert caught.value.status == 415 and caught.value.reason == Reason.UNSUPPORTED_MEDIA_TYPE


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("application/merge-patch+json", True),
        ("application/jsonx", False),
        ("text/json", False),
        ("application/octet-stream", False),
        (None, False),
    ],
)
def test_json_media_types(value: str | None, ok: bool) -> None:
    if ok:
        require_media_type(value, ContentType.JSON)
    else:
        with pytest.raises(ApiError):
            require_media_type(value, ContentType.JSON)


# -- 3. a per-address rate limit on registration ------------------------------------------------


def _register_body(key: bytes) -> bytes:
    public = base64.urlsafe_b64encode(auth.public_key_bytes(key)).rstrip(b"=")
    return b'{"public_key":"' + public + b'"}'


def _register(http: httpx.Client, key: bytes) -> httpx.Response:
    body = _register_body(key)
    headers = _signed(key, "POST", "/v1/devices", 0, body)
    return http.post(
        "/v1/devices", content=body, headers={**headers, "content-type": "application/json"}
    )


def _metric(http: httpx.Client, name: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_registrations_over_the_rate_get_429_with_retry_after(tmp_path: Path) -> None:
    # Prepare: 2 registrations of burst, refilled at one per 100 s, on a clock that only the
    # test moves
    clock = FakeClock()
    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"), register_rate_per_s=0.01, register_burst=2
    )
    app = create_app(cfg, rate_clock=clock)
    keys = [auth.generate_private_key() for _ in range(4)]
    with ServerThread(cfg, app=app) as url, httpx.Client(base_url=url) as http:
        # Execute
        first = [_register(http, k) for k in keys[:3]]
        probe = _signed(keys[2], "POST", "/v1/checkin", 0, b"{}")
        unregistered = http.post(
            "/v1/checkin", content=b"{}", headers={**probe, "content-type": "application/json"}
        )
        refused_count = _metric(http, "plume_registrations_rate_limited_total")
        devices = _metric(http, "plume_registered_devices")
        clock.now += 99.5
        still = _register(http, keys[2])
        clock.now += 1.0
        later = _register(http, keys[2])
    # Assert: the burst passes; the third is 429 with a whole-second Retry-After, the device
    # was not created, and one token later it registers
    assert [r.status_code for r in first[:2]] == [200, 200]
    _refused(first[2], 429, Reason.RATE_LIMITED)
    assert first[2].headers["retry-after"] == "100"
    _refused(unregistered, 401, Reason.UNREGISTERED)
    assert (refused_count, devices) == (1.0, 2.0)
    _refused(still, 429, Reason.RATE_LIMITED)
    assert still.headers["retry-after"] == "1"
    assert later.status_code == 200 and later.json()["created"] is True, later.text


def test_registration_is_unlimited_by_default(tmp_path: Path) -> None:
    # Prepare: the default config, as `plume sim --http` and `make demo` use it
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"))
    assert cfg.register_rate_per_s == 0
    keys = [auth.generate_private_key() for _ in range(40)]
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        # Execute: 40 devices from one address, back to back
        codes = [_register(http, k).status_code for k in keys]
    # Assert
    assert codes == [200] * 40


def test_the_bucket_refills_at_the_rate_and_caps_at_the_burst() -> None:
    # Prepare
    clock = FakeClock()
    limiter = RateLimiter(2.0, 3, clock=clock)
    # Execute + Assert: three at once, then one per half second, never more than three saved
    assert [limiter.admit("a") for _ in range(3)] == [0, 0, 0]
    assert limiter.admit("a") == 1  # 0.5 s to the next token, rounded up to a whole second
    clock.now += 0.5
    assert limiter.admit("a") == 0
    clock.now += 3600.0
    assert [limiter.admit("a") for _ in range(4)] == [0, 0, 0, 1]
    assert limiter.admit("b") == 0  # another address has its own bucket


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    clock = FakeClock()
    limiter = RateLimiter(0.3, 1, clock=clock)
    assert limiter.admit("a") == 0
    assert limiter.admit("a") == math.ceil(1 / 0.3)  # 3.33 s -> 4
    clock.now += 3.3
    assert limiter.admit("a") == 1


def test_a_zero_rate_means_unlimited() -> None:
    limiter = RateLimiter(0.0, 1, clock=FakeClock())
    assert all(limiter.admit("a") == 0 for _ in range(1000))
    assert len(limiter) == 0


@pytest.mark.parametrize(("rate", "burst"), [(-1.0, 1), (math.nan, 1), (math.inf, 1), (1.0, 0)])
def test_bad_limits_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate, burst)


def test_idle_buckets_are_evicted_so_many_addresses_stay_bounded() -> None:
    # Prepare: 1 token/s, burst 5: a bucket is full again (and forgettable) 5 s after its use
    clock = FakeClock()
    limiter = RateLimiter(1.0, 5, clock=clock, max_buckets=1_000_000)
    sizes = []
    # Execute: 20,000 distinct addresses, one every millisecond
    for i in range(20_000):
        assert limiter.admit(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}") == 0
        clock.now += 0.001
        sizes.append(len(limiter))
    # Assert: only the last ~5 s of addresses (5,000) are remembered, never all 20,000
    assert max(sizes) <= 5_001


def test_the_bucket_map_has_a_hard_cap() -> None:
    # Prepare: a frozen clock, so nothing refills and nothing is idle
    limiter = RateLimiter(0.001, 1, clock=FakeClock(), max_buckets=100)
    # Execute
    for i in range(10_000):
        limiter.admit(f"addr-{i}")
    # Assert
    assert len(limiter) == 100


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("testclient", "testclient"),
        (None, ""),
    ],
)
def test_client_key_groups_an_ipv6_slash_64(host: str | None, key: str) -> None:
    # One IPv6 subscriber holds a whole /64: keying by address would give it 2^64 buckets
    assert client_key(host) == key


def test_serve_flags_reach_the_service_config(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: `serve` replaced by a recorder
    run, seen = serve_cli(monkeypatch)
    # Execute
    code = run("--register-rate", "0.5", "--register-burst", "7")
    default_code = run()
    with pytest.raises(SystemExit):
        run("--help")
    help_text = capsys.readouterr().out
    # Assert: the flags land in ServiceConfig; unset, the limit is off; --help explains both
    assert code == default_code == 0
    assert (seen[0].register_rate_per_s, seen[0].register_burst) == (0.5, 7)
    assert seen[1].register_rate_per_s == 0
    assert "--register-rate" in help_text and "--register-burst" in help_text


def test_the_new_refusals_are_in_the_spec_and_the_docs(tmp_path: Path) -> None:
    # Prepare
    app = create_app(ServiceConfig(db_path=str(tmp_path / "plume.db")))
    paths = app.openapi()["paths"]
    doc = (Path(__file__).parents[2] / "docs" / "http-api.md").read_text()
    app.state.store.close()
    # Assert: 415 on every route with a body, 429 on registration, both reasons in the table
    for path, method in [
        ("/v1/devices", "post"),
        ("/v1/checkin", "post"),
        ("/v1/rounds/{round_id}/updates", "post"),
        ("/v1/secure/rounds/{round_id}/stages/{stage}", "post"),
        ("/v1/admin/tasks", "post"),
        ("/v1/admin/tasks/{task_id}/model", "put"),
    ]:
        assert "415" in paths[path][method]["responses"], (path, method)
    assert "429" in paths["/v1/devices"]["post"]["responses"]
    for status, reason in [(415, Reason.UNSUPPORTED_MEDIA_TYPE), (429, Reason.RATE_LIMITED)]:
        assert f"| {status} | `{reason}` |" in doc


@pytest.mark.parametrize("flags", [["--register-rate", "-1"], ["--register-rate", "nan"],
                                   ["--register-burst", "0"]])  # fmt: skip
def test_bad_serve_limits_are_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    # Prepare
    import argparse

    import coordinator.service as service

    seen: list[ServiceConfig] = []
    monkeypatch.setattr(service, "serve", lambda config, *a, **kw: seen.append(config))
    parser = argparse.ArgumentParser()
    _cli.register(parser.add_subparsers())
    args = parser.parse_args(["coordinator", "serve", *flags])
    # Execute
    code = args.func(args)
    # Assert: exit 2 with a sentence, and no server started
    assert code == 2 and seen == []
    assert "--register-" in capsys.readouterr().err


def test_every_reason_a_response_can_carry_is_in_the_error_table() -> None:
    # Prepare: the error table of docs/http-api.md, one row per (status, reason).
    doc = (Path(__file__).parents[2] / "docs" / "http-api.md").read_text()
    rows = re.findall(r"^\| \d{3}(?: / \d{3})? \| ([^|]+) \|", doc, flags=re.M)
    documented = {reason for cell in rows for reason in re.findall(r"`([a-z_]+)`", cell)}

    # Assert: no reason is sent that a client cannot look up, and none is listed that the
    # service no longer sends.
    assert {str(r) for r in Reason} == documented
