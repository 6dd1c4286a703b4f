"""docs/devices.md, read as an app developer reads it: its concrete claims about the SDK's API,
defaults, exceptions, retries and what the app directory holds, each checked against the code
(the doc's words are quoted next to each check). Loopback coordinator where the claim is about
talking to one; `httpx.MockTransport` where it is about the client's own retry schedule."""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import stat
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import sdk
import sdk.client
import sdk.device_store
from sdk import Client
from tests.coordinator.test_service_support import (
    ADMIN,
    SoftmaxTrainer,
    create_task,
    local_data,
    loopback_url,  # noqa: F401  (the fixture `url`)
    refused_url,
    task_config,
    wait_until,
)

# ---------------------------------------------------------------------------------------------
# Defaults and constants ("The client's own defaults", "A model larger than max_model_bytes")
# ---------------------------------------------------------------------------------------------


def test_client_defaults_are_the_documented_ones() -> None:
    # "each connect, read or write may take timeout=30.0 seconds; ... retried retries=4 times
    # (5 attempts), after backoff_s=0.2 seconds ...; one response may take max_response_s=600.0
    # ...; max_model_bytes=256 MiB; The default is "fp32""
    params = inspect.signature(Client.__init__).parameters
    assert params["timeout"].default == 30.0
    assert params["retries"].default == 4
    assert params["backoff_s"].default == 0.2
    assert params["max_response_s"].default == 600.0
    assert params["max_model_bytes"].default == 256 << 20 == sdk.client.MAX_MODEL_BYTES
    assert params["model_dtype"].default == "fp32"
    async_params = inspect.signature(sdk.AsyncClient.__init__).parameters
    for name in ("timeout", "retries", "backoff_s", "max_response_s", "max_model_bytes"):
        assert async_params[name].default == params[name].default, name
    # "up to max_wait_s (600 s by default) for an assignment"
    assert inspect.signature(Client.participate).parameters["max_wait_s"].default == 600.0


def test_documented_constants() -> None:
    # "at most 60 s a wait (sdk.client.MAX_BACKOFF_S ...)", "plus 0 to 20 % more
    # (sdk.client.RETRY_AFTER_SPREAD)", "the last sdk.client.MAX_BANDWIDTH_ROUNDS (64) rounds",
    # "sdk.client.MAX_LAYOUTS (64)", "plus 1 MiB (MODEL_RESPONSE_SLACK ...)",
    # "sdk.device_store.MAX_MODELS (8, the residuals' bound)", "MAX_RESIDUALS (8)"
    assert sdk.client.MAX_BACKOFF_S == 60.0
    assert sdk.client.RETRY_AFTER_SPREAD == 0.2
    assert sdk.client.MAX_BANDWIDTH_ROUNDS == 64
    assert sdk.client.MAX_LAYOUTS == 64
    assert sdk.client.MODEL_RESPONSE_SLACK == 1 << 20
    assert sdk.device_store.MAX_MODELS == 8 == sdk.device_store.MAX_RESIDUALS
    assert sdk.client.MAX_RESIDUALS == 8
    assert sdk.client.TASK_DONE == "task_done"
    # "64 Mi float32 parameters"
    assert sdk.client.MAX_MODEL_BYTES // 4 == 64 << 20


def test_ort_from_dir_signature_is_the_documented_one() -> None:
    # "OrtTrainer.from_dir(path, threads=1, optimization="all", verify=True, max_file_bytes=None)"
    from sdk.ort import OrtTrainer

    params = inspect.signature(OrtTrainer.from_dir).parameters
    assert list(params) == ["path", "threads", "optimization", "verify", "max_file_bytes"]
    assert [params[n].default for n in list(params)[1:]] == [1, "all", True, None]


# ---------------------------------------------------------------------------------------------
# The exception family ("One exception family", the table of "What the app must handle")
# ---------------------------------------------------------------------------------------------


def test_exception_family_is_as_documented() -> None:
    # Every name the table raises imports from `sdk`, "as Client does".
    for name in (
        "ClientError",
        "ModelIntegrityError",
        "TaskEndedError",
        "SdkUnsupportedError",
        "ParticipationCancelled",
        "CoordinatorUnreachable",
        "TlsCertificateError",
        "AppDirInUse",
        "DeviceIdentityLost",
        "LayoutMismatchError",
        "ModelTooLargeError",
        "TrainingDataError",
        "TrainingCancelled",
    ):
        assert hasattr(sdk, name), name
    ce = sdk.ClientError
    # "sdk.TaskEndedError (a ClientError)", "sdk.SdkUnsupportedError (a ClientError ...)",
    # "ParticipationCancelled (a ClientError ...)", "ModelIntegrityError (a ClientError ...)",
    # "ModelTooLargeError (a ClientError ...)"
    for cls in (
        sdk.TaskEndedError,
        sdk.SdkUnsupportedError,
        sdk.ParticipationCancelled,
        sdk.ModelIntegrityError,
        sdk.ModelTooLargeError,
    ):
        assert issubclass(cls, ce), cls
    assert sdk.client.ParticipationCancelled is sdk.ParticipationCancelled
    # "sdk.LayoutMismatchError (a ClientError and a ValueError ...)"
    assert issubclass(sdk.LayoutMismatchError, ce)
    assert issubclass(sdk.LayoutMismatchError, ValueError)
    # "CoordinatorUnreachable (a ClientError ... and an httpx.TransportError)"
    assert issubclass(sdk.CoordinatorUnreachable, ce)
    assert issubclass(sdk.CoordinatorUnreachable, httpx.TransportError)
    # "TlsCertificateError, a plain ClientError (no httpx.TransportError)", "not a
    # CoordinatorUnreachable"
    assert issubclass(sdk.TlsCertificateError, ce)
    assert not issubclass(sdk.TlsCertificateError, httpx.TransportError)
    assert not issubclass(sdk.TlsCertificateError, sdk.CoordinatorUnreachable)
    # "sdk.DeviceIdentityLost (sdk.device_store.DeviceIdentityLost, a DeviceStoreError ...)"
    assert sdk.DeviceIdentityLost is sdk.device_store.DeviceIdentityLost
    assert issubclass(sdk.DeviceIdentityLost, sdk.device_store.DeviceStoreError)
    # "AppDirInUse is not a DeviceStoreError"
    assert not issubclass(sdk.AppDirInUse, sdk.device_store.DeviceStoreError)
    # "sdk.device_store.UnsupportedPlatform (a RuntimeError)"
    assert issubclass(sdk.device_store.UnsupportedPlatform, RuntimeError)
    # "sdk.TrainingDataError (a ValueError)", "(also sdk.ort.TrainingDataError ...)"
    from sdk.ort import TrainingDataError as OrtTrainingDataError

    assert issubclass(sdk.TrainingDataError, ValueError)
    assert OrtTrainingDataError is sdk.TrainingDataError
    # "SecAggError (a ValueError; protocol.secagg.ModelMismatch, one of them ...)"
    from protocol.secagg import ModelMismatch, SecAggError

    assert issubclass(SecAggError, ValueError) and issubclass(ModelMismatch, SecAggError)


# ---------------------------------------------------------------------------------------------
# Setup mistakes: the `ValueError` row ("all raised by Client(...), before app_dir is made")
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kw"),
    [
        (("coordinator:8080",), {}),  # no http:// or https:// URL with a host
        (("ftp://coordinator",), {}),
        (("http://",), {}),
        (("http://c",), {"timeout": 0}),
        (("http://c",), {"timeout": math.nan}),
        (("http://c",), {"timeout": math.inf}),
        (("http://c",), {"max_model_bytes": 3}),
        (("http://c",), {"model_dtype": "fp8"}),
        (("http://c",), {"backoff_s": -1.0}),
        (("http://c",), {"backoff_s": math.inf}),
        (("http://c",), {"max_stage_wait_s": 0.0}),
        (("http://c",), {"max_response_s": 0.0}),
        (("http://c",), {"verify": "/nonexistent/ca.pem"}),
        (("http://c",), {"verify": ""}),
        (("http://c",), {"verify": "NO_CERT"}),  # a file that holds no certificate
    ],
)
def test_setup_mistakes_are_value_errors_before_app_dir_is_made(
    tmp_path: Path, args: tuple[str, ...], kw: dict[str, Any]
) -> None:
    app = tmp_path / "app"
    if kw.get("verify") == "NO_CERT":
        (tmp_path / "junk.pem").write_text("not a certificate\n")
        kw = {"verify": str(tmp_path / "junk.pem")}
    with pytest.raises(ValueError):
        Client(*args, app, **kw)
    assert not app.exists()


def test_an_empty_app_dir_is_a_value_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # "An empty one (os.environ.get("APP_DIR", "") with the variable unset) is a ValueError"
    monkeypatch.chdir(tmp_path)  # put back after: later tests in the worker use relative paths
    with pytest.raises(ValueError):
        Client("http://c", "")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kw", [{"transport": object()}, {"mods": 1}, {"clock": 5}, {"sleep": "no"}, {"timeout": "5"}]
)
def test_wrong_types_are_type_errors_before_app_dir_is_made(
    tmp_path: Path, kw: dict[str, Any]
) -> None:
    # "TypeError for any of these, or a transport, mods, clock or sleep, of the wrong type"
    app = tmp_path / "app"
    with pytest.raises(TypeError):
        Client("http://c", app, **kw)
    assert not app.exists()


def _no_requests(tmp_path: Path) -> tuple[Client, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(500)

    return Client("http://c", tmp_path / "app", transport=httpx.MockTransport(handler)), seen


class _Never:
    def train(self, params: Any, x: Any, y: Any, **_: Any) -> Any:
        raise AssertionError("never trained")


def test_task_ids_and_waits_are_checked_before_any_request(tmp_path: Path) -> None:
    # "participate(task_id=...), check_in(task_id) and fetch_current(task_id, spec) take an int
    # in [1, 2^63), and refuse anything else before any request"; "(`"1"` read from a config
    # file, `True`, `1.0`: `task_id must be an int, ... not str '1': convert a task id read as
    # text with int(...)`)"; "a negative max_wait_s (raised by participate ...)"
    from compression import ModelSpec

    client, seen = _no_requests(tmp_path)
    x, y = local_data(0, 8)
    spec = ModelSpec.from_shapes([("w", (4,))])
    with client:
        with pytest.raises(TypeError, match=r"not str '1': convert a task id read as text with"):
            client.participate(_Never(), x, y, task_id="1")  # type: ignore[arg-type]
        for bad in (True, 1.0):
            with pytest.raises(TypeError, match="task_id must be an int"):
                client.check_in(bad)  # type: ignore[arg-type]
        for bad_id in (0, -1, 2**63):
            with pytest.raises(ValueError):
                client.check_in(bad_id)
            with pytest.raises(ValueError):
                client.fetch_current(bad_id, spec)
            with pytest.raises(ValueError):
                client.participate(_Never(), x, y, task_id=bad_id)
        with pytest.raises(ValueError):
            client.participate(_Never(), x, y, task_id=1, max_wait_s=-1.0)
        # "a floor below 0 or above a week ... is refused with a ValueError"
        for floor in (-0.1, 7 * 86400.0 + 1):
            with pytest.raises(ValueError, match="min_poll_s"):
                client.participate(_Never(), x, y, task_id=1, min_poll_s=floor)
        # "the torch module itself instead of TorchTrainer(module) says ... wrap a torch
        # module: TorchTrainer(module)" is covered elsewhere; a non-trainer is a TypeError:
        with pytest.raises(TypeError):
            client.participate(object(), x, y, task_id=1)  # type: ignore[arg-type]
    assert seen == []


# ---------------------------------------------------------------------------------------------
# Retries and backoff ("a transport error ..., a 429 or a 5xx is retried retries=4 times (5
# attempts), after backoff_s=0.2 seconds doubling each time, at most 60 s a wait, each wait drawn
# between half of that and all of it ("equal jitter": the default retries wait 1.5 to 3 s in
# all), or the answer's Retry-After (taken as at most 30 s), waited as asked plus 0 to 20 % more")
# ---------------------------------------------------------------------------------------------


def _answering(
    tmp_path: Path, response: httpx.Response, **kw: Any
) -> tuple[Client, list[httpx.Request], list[float]]:
    seen: list[httpx.Request] = []
    waits: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            response.status_code, headers=response.headers, content=response.content
        )

    client = Client(
        "http://c",
        tmp_path / "app",
        transport=httpx.MockTransport(handler),
        sleep=waits.append,
        **kw,
    )
    return client, seen, waits


_BUSY = json.dumps({"reason": "store_unavailable", "detail": "busy"}).encode()


@pytest.mark.parametrize("seed", range(5))
def test_a_5xx_on_every_attempt_is_five_attempts_with_equal_jitter(
    tmp_path: Path, seed: int
) -> None:
    import random

    client, seen, waits = _answering(
        tmp_path, httpx.Response(503, content=_BUSY), retry_rng=random.Random(seed)
    )
    with client, pytest.raises(sdk.ClientError) as caught:
        client.register()
    assert len(seen) == 5
    assert len(waits) == 4
    for k, w in enumerate(waits):
        full = 0.2 * 2**k
        assert full / 2 <= w <= full, (k, w)
    assert 1.5 <= sum(waits) <= 3.0
    # "a 429 or 5xx still answered at the last attempt is raised as that answer's ClientError
    # (its status, reason and the coordinator's detail), the attempts named at the end of detail
    # ...: `503 store_unavailable: busy (after 5 attempts)`"
    assert caught.value.status == 503
    assert str(caught.value) == "503 store_unavailable: busy (after 5 attempts)"
    assert not isinstance(caught.value, sdk.CoordinatorUnreachable)


def test_a_4xx_other_than_429_is_not_retried(tmp_path: Path) -> None:
    body = json.dumps({"reason": "bad_request", "detail": "no"}).encode()
    client, seen, waits = _answering(tmp_path, httpx.Response(400, content=body))
    with client, pytest.raises(sdk.ClientError) as caught:
        client.register()
    assert (len(seen), waits, caught.value.status) == (1, [], 400)


def test_a_429_is_retried_and_its_retry_after_is_capped_at_30_s_plus_the_spread(
    tmp_path: Path,
) -> None:
    body = json.dumps({"reason": "rate_limited", "detail": "slow down"}).encode()
    client, seen, waits = _answering(
        tmp_path, httpx.Response(429, content=body, headers={"retry-after": "100"})
    )
    with client, pytest.raises(sdk.ClientError):
        client.register()
    assert len(seen) == 5
    assert all(30.0 <= w <= 36.0 for w in waits), waits
    # "waited as asked plus 0 to 20 % more ..., never less"
    client, seen, waits = _answering(
        tmp_path / "b", httpx.Response(429, content=body, headers={"retry-after": "2"})
    )
    with client, pytest.raises(sdk.ClientError):
        client.register()
    assert all(2.0 <= w <= 2.4 for w in waits), waits


def test_twelve_retries_wait_at_most_60_s_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "at most 60 s a wait (sdk.client.MAX_BACKOFF_S: retries=12 would otherwise wait up to
    # 410 s, 0.2 x 2^11, before its last attempt)"
    client, seen, waits = _answering(tmp_path, httpx.Response(503, content=_BUSY), retries=12)
    with client, pytest.raises(sdk.ClientError, match=r"\(after 13 attempts\)"):
        client.register()
    assert len(seen) == 13 and len(waits) == 12
    assert max(waits) <= 60.0
    assert waits[-1] >= 30.0  # half of the capped 60 s at least
    # without the cap ("otherwise")
    monkeypatch.setattr(sdk.client, "MAX_BACKOFF_S", math.inf)
    client, seen, waits = _answering(tmp_path / "b", httpx.Response(503, content=_BUSY), retries=12)
    with client, pytest.raises(sdk.ClientError):
        client.register()
    assert 0.2 * 2**11 / 2 <= waits[-1] <= 0.2 * 2**11 < 410


# ---------------------------------------------------------------------------------------------
# Against a real coordinator on loopback
# ---------------------------------------------------------------------------------------------


def test_the_identity_and_the_app_directory_after_register(url: str, tmp_path: Path) -> None:
    # "device_key in app_dir is the device's Ed25519 key, made by the first Client(...) on a new
    # directory. The device id derives from it (the first 16 bytes of SHA-256 of the public key,
    # as 32 hex digits), and register() writes that id to state.json with "registered": true."
    # "A new one is made 0700."
    app = tmp_path / "app"
    with Client(url, app) as client:
        assert (app / "device_key").is_file()
        assert stat.S_IMODE(app.stat().st_mode) == 0o700
        client.register()
        client.register()  # "idempotent: the key is made once and kept in app_dir"
    raw = (app / "device_key").read_bytes()
    assert len(raw) == 32  # "any 32 bytes are a key"
    public = Ed25519PrivateKey.from_private_bytes(raw).public_key()
    pub = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    device_id = hashlib.sha256(pub).digest()[:16].hex()
    state = json.loads((app / "state.json").read_text())
    assert state["registered"] is True
    assert state["device_id"] == device_id
    assert len(device_id) == 32
    # a second Client on the same directory keeps the key
    with Client(url, app) as again:
        assert again.device_id == device_id
    assert (app / "device_key").read_bytes() == raw


def test_a_round_and_what_it_leaves_on_disk(url: str, tmp_path: Path) -> None:
    task_id = create_task(url, task_config(rounds=2, clients_per_round=1, min_reports=1))
    app = tmp_path / "app"
    x, y = local_data(1)
    with Client(url, app) as client:
        client.register()
        report = client.participate(SoftmaxTrainer(), x, y, task_id=task_id, max_wait_s=20)
        assert isinstance(report, sdk.RoundReport)
        # "report.bytes_up and report.bytes_down ... For a device's one call in a round they
        # are the round's row"
        assert list(client.bandwidth) == [report.round_id]
        row = client.bandwidth[report.round_id]
        assert report.bytes_up == row["up"]["wire_bytes"]
        assert report.bytes_down == row["down"]["wire_bytes"]
        # "Its loss is the mean loss trainer.train returned"
        assert math.isfinite(report.loss) and report.num_examples == len(x)
        assert report.resent is False
        # control_bandwidth "one row of the same shape ({"up" | "down": {...}})" holding
        # at least the registration
        assert set(client.control_bandwidth) == {"up", "down"}
        assert client.control_bandwidth["up"]["requests"] >= 1
    names = {p.name for p in app.iterdir()}
    # "the first task's in model.f32", "residual-<task id>.bin", "an upload not acknowledged
    # (pending.*)": acknowledged here, so none; "the records of accepted uploads whose rounds'
    # outcome it has not learnt (accepted-<r>.*)"
    assert {"device_key", "state.json", "model.f32", f"residual-{task_id}.bin"} <= names
    assert not any(n.startswith("pending.") for n in names), names
    assert not any(n.endswith(".tmp") for n in names), names
    assert f"accepted-{report.round_id}.json" in names
    for p in app.iterdir():
        if p.is_file():
            assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, p


def test_an_unknown_task_is_404_unknown_task_not_retried(url: str, tmp_path: Path) -> None:
    # "404 unknown_task: no such task, e.g. a mistyped task_id"
    with Client(url, tmp_path / "app", backoff_s=0.0) as client:
        client.register()
        with pytest.raises(sdk.ClientError) as caught:
            client.participate(SoftmaxTrainer(), *local_data(0), task_id=999, max_wait_s=5)
    assert (caught.value.status, caught.value.reason) == (404, "unknown_task")
    assert "attempts" not in str(caught.value)


def test_a_finished_task_raises_task_ended(url: str, tmp_path: Path) -> None:
    # "sdk.TaskEndedError ... raised at the first check-in that says so ...; reason task_done
    # (sdk.client.TASK_DONE), status 200, task_id the task named"
    task_id = create_task(url, task_config(rounds=1, clients_per_round=1, min_reports=1))
    with Client(url, tmp_path / "app") as client:
        client.register()
        report = client.participate(SoftmaxTrainer(), *local_data(2), task_id=task_id)
        assert report is not None
        with pytest.raises(sdk.TaskEndedError) as caught:
            for _ in range(200):  # the round commits on the coordinator's tick
                client.participate(
                    SoftmaxTrainer(), *local_data(2), task_id=task_id, max_wait_s=0.5
                )
    err = caught.value
    assert (err.status, err.reason, err.task_id) == (200, sdk.client.TASK_DONE, task_id)


def test_an_outage_is_coordinator_unreachable_naming_the_attempts(tmp_path: Path) -> None:
    # "the message names the coordinator and the attempts (`could not reach the coordinator at
    # http://127.0.0.1:8080 for POST /v1/checkin in 5 attempts: [Errno 111] Connection
    # refused`), request is the last attempt's, and __cause__ httpx's own error"; "a refused
    # connection is still an httpx.ConnectError"
    waits: list[float] = []
    with refused_url() as url, Client(url, tmp_path / "app", sleep=waits.append) as client:
        with pytest.raises(sdk.CoordinatorUnreachable) as caught:
            client.check_in(1)
    err = caught.value
    assert str(err).startswith(
        f"could not reach the coordinator at {url} for POST /v1/checkin in 5 attempts: "
    ), str(err)
    assert "Connection refused" in str(err)
    assert isinstance(err, httpx.ConnectError)
    assert isinstance(err.__cause__, httpx.TransportError)
    assert (err.status, err.reason) == (0, "unreachable")
    assert err.request.url.path == "/v1/checkin"
    assert len(waits) == 4


# ---------------------------------------------------------------------------------------------
# The trainers' settings and data checks ("train and evaluate check the data the same way")
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from torch import nn

    from sdk.onnx_export import export_training_artifacts

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("art") / "lin"
    export_training_artifacts(nn.Sequential(nn.Linear(4, 3)), torch.randn(4, 4), out, loss="ce")
    return out


def _data(n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    return rng.random((n, 4), dtype=np.float32), rng.integers(0, 3, n)


def _trainers(artifacts: Path) -> list[Any]:
    import torch

    from sdk.ort import OrtTrainer
    from sdk.trainer import TorchTrainer

    torch.manual_seed(0)
    return [
        OrtTrainer.from_dir(artifacts),
        TorchTrainer(torch.nn.Sequential(torch.nn.Linear(4, 3))),
    ]


def test_the_export_writes_the_three_documented_files(artifacts: Path) -> None:
    # "The export writes three files: train_step.onnx, infer.onnx, manifest.json"; "the opset
    # (18)"; "the file sizes and SHA-256 digests"
    assert sorted(p.name for p in artifacts.iterdir()) == [
        "infer.onnx",
        "manifest.json",
        "train_step.onnx",
    ]
    manifest = json.loads((artifacts / "manifest.json").read_text())
    assert manifest["opset"] == 18
    for name in ("train_step", "infer"):
        entry = manifest["files"][name]
        data = (artifacts / entry["path"]).read_bytes()
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("threads", [True, 2.5, "2", -1, 257])
def test_ort_threads_outside_0_to_256_name_threads(artifacts: Path, threads: Any) -> None:
    # "OrtTrainer's threads is an integer from 0 ... to 256; anything else (a bool, 2.5, "2") is
    # a ValueError naming threads"
    from sdk.ort import OrtTrainer

    with pytest.raises(ValueError, match="threads"):
        OrtTrainer.from_dir(artifacts, threads=threads)


def test_ort_threads_0_and_256_are_taken(artifacts: Path) -> None:
    from sdk.ort import OrtTrainer

    OrtTrainer.from_dir(artifacts, threads=0)
    OrtTrainer.from_dir(artifacts, threads=256)


@pytest.mark.parametrize("cap", [0, -1, True, 1.5])
def test_max_file_bytes_must_be_a_positive_integer(artifacts: Path, cap: Any) -> None:
    # "a larger integer lets bigger graphs in, anything but a positive integer is a ValueError"
    from sdk.ort import OrtTrainer

    with pytest.raises(ValueError, match="max_file_bytes"):
        OrtTrainer.from_dir(artifacts, max_file_bytes=cap)


def test_check_matches_spec_and_momentum(artifacts: Path) -> None:
    # "trainer.check_matches(spec, momentum=0.9) raises ArtifactError unless ... the training
    # step bakes in that momentum (0.0 for plain SGD)"
    from sdk.ort import ArtifactError, OrtTrainer

    trainer = OrtTrainer.from_dir(artifacts)
    trainer.check_matches(trainer.spec, momentum=0.0)
    with pytest.raises(ArtifactError, match="--optimizer|--momentum"):
        trainer.check_matches(trainer.spec, momentum=0.9)


def _train(trainer: Any, params: Any, x: Any, y: Any, **over: Any) -> Any:
    kw: dict[str, Any] = {
        "epochs": 1,
        "batch_size": 4,
        "lr": 0.1,
        "rng": np.random.default_rng(0),
    }
    kw.update(over)
    return trainer.train(params, x, y, **kw)


def test_settings_and_data_errors_in_both_trainers(artifacts: Path) -> None:
    x, y = _data()
    for trainer in _trainers(artifacts):
        params = np.zeros(15, np.float32)
        name = type(trainer).__name__
        # "epochs=True ... (`epochs must be an integer >= 0, not a bool, got True`)"
        with pytest.raises(
            ValueError, match="epochs must be an integer >= 0, not a bool, got True"
        ):
            _train(trainer, params, x, y, epochs=True)
        with pytest.raises(ValueError):
            _train(trainer, params, x, y, batch_size=0)
        # "lr must be finite and >= 0 ..., not a bool ..., and at most the largest float32"
        for lr in (True, -0.1, math.nan, math.inf, 1e39):
            with pytest.raises(ValueError):
                _train(trainer, params, x, y, lr=lr)
        # "Both trainers refuse an rng that is no numpy.random.Generator (TypeError)"
        with pytest.raises(TypeError):
            _train(trainer, params, x, y, rng=0)
        # "(float labels, even whole, are refused ...: `training data: y must hold integer class
        # labels, got float32`)"
        with pytest.raises(
            sdk.TrainingDataError,
            match="training data: y must hold integer class labels, got float32",
        ):
            _train(trainer, params, x, y.astype(np.float32))
        # "(`every label is -100 (skipped): no example to train on`)"
        with pytest.raises(
            ValueError, match=r"every label is -100 \(skipped\): no example to train on"
        ):
            _train(trainer, params, x, np.full(len(x), -100))
        # "(`params hold 1 NaN or infinite value (the first at 3)`)"
        bad = params.copy()
        bad[3] = np.nan
        with pytest.raises(
            ValueError, match=r"params hold 1 NaN or infinite value \(the first at 3\)"
        ):
            _train(trainer, bad, x, y)
        # "x and y must have one label per example, and at least one example"
        with pytest.raises(ValueError):
            _train(trainer, params, x, y[:-1])
        with pytest.raises(ValueError):
            _train(trainer, params, x[:0], y[:0])
        # "Float inputs must be finite in train"
        nan_x = x.copy()
        nan_x[2, 1] = np.inf
        with pytest.raises(ValueError):
            _train(trainer, params, nan_x, y)
        # "(12 examples, 5 of them skipped, weigh 7, not 12)"
        skipped = y.copy()
        skipped[:5] = -100
        assert _train(trainer, params, x, skipped).num_examples == 7, name
        # "With epochs=0 no step runs: the parameters come back unchanged (a copy) and the loss
        # is NaN"
        start = np.arange(15, dtype=np.float32) / 100
        result = _train(trainer, start, x, y, epochs=0)
        assert np.array_equal(result.params, start) and result.params is not start, name
        assert math.isnan(result.loss), name


def test_integer_pixels_and_float64_data(artifacts: Path) -> None:
    from sdk.ort import OrtTrainer
    from sdk.trainer import TorchTrainer

    x, y = _data(8)
    params = np.zeros(15, np.float32)
    ort = OrtTrainer.from_dir(artifacts)
    # "integer or bool x into a float graph that records no vocabulary ... is `training data: x
    # of shape [8, 64] (uint8) does not fit the model: it takes float32 inputs; scale and cast
    # integer data to floats first`"
    pixels = (x * 255).astype(np.uint8)
    with pytest.raises(
        sdk.TrainingDataError,
        match=r"^training data: x of shape \[8, 4\] \(uint8\) does not fit the model: it takes "
        r"float32 inputs; scale and cast integer data to floats first",
    ):
        _train(ort, params, pixels, y)
    # "OrtTrainer casts float inputs to its graph's dtype itself"
    a = _train(ort, params, x.astype(np.float64), y)
    b = _train(ort, params, x, y)
    assert np.array_equal(a.params, b.params)
    # "Float64 data ... is refused before the check-in with the cast that fits: ...; the model's
    # parameters are float32: pass x.astype(np.float32)"
    import torch

    torch_trainer = TorchTrainer(torch.nn.Sequential(torch.nn.Linear(4, 3)))
    with pytest.raises(sdk.TrainingDataError, match=r"pass x\.astype\(np\.float32\)"):
        _train(torch_trainer, params, x.astype(np.float64), y)


@pytest.mark.parametrize(
    "kw",
    [
        {"momentum": -0.1},
        {"momentum": math.nan},
        {"weight_decay": math.inf},
        {"threads": 0},
        {"threads": 2**31},
        {"threads": True},
    ],
)
def test_torch_trainer_settings_are_refused_when_made(kw: dict[str, Any]) -> None:
    # "TorchTrainer(momentum=..., weight_decay=...) takes finite numbers >= 0 ... and refuses
    # anything else when the trainer is made"; "anything but an integer from 1 to 2**31 - 1
    # (torch's limit) is a ValueError naming threads, raised by TorchTrainer(...)"
    import torch

    from sdk.trainer import TorchTrainer

    with pytest.raises(ValueError, match=next(iter(kw))):
        TorchTrainer(torch.nn.Linear(4, 3), **kw)


def test_torch_trainer_puts_the_module_mode_back() -> None:
    # "an app's model in eval mode, serving predictions, stays in eval mode after
    # participate(TorchTrainer(model), ...), also when training raises"
    import torch

    from sdk.trainer import TorchTrainer

    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    model.eval()
    trainer = TorchTrainer(model)
    x, y = _data(8)
    _train(trainer, np.zeros(15, np.float32), x, y)
    assert not any(m.training for m in model.modules())
    with pytest.raises(ValueError):
        _train(trainer, np.zeros(15, np.float32), x, y, lr=-1.0)
    assert not any(m.training for m in model.modules())


# ---------------------------------------------------------------------------------------------
# More against a loopback coordinator: layouts, the model cap, fetch_current, the residual file
# ---------------------------------------------------------------------------------------------


def _one_check_in(
    client: Client, trainer: Any, x: Any, y: Any, task_id: int | None = None
) -> sdk.RoundReport | None:
    """`participate` ended by its first check-in answered with no round, whenever that comes
    in 30 s (the next check-in would come 60 s later, past max_wait_s). A max_wait_s of 0.2 or
    0.3 s ended the call before a loaded machine's first answer, as None with last_check_in None
    (test_s66b_slow_check_in)."""
    return client.participate(trainer, x, y, task_id=task_id, max_wait_s=30.0, min_poll_s=60.0)


class _Declaring(SoftmaxTrainer):
    """A trainer with a `spec` attribute ("So does any trainer with a spec attribute that is a
    compression.ModelSpec")."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec


def test_a_declared_layout_of_another_model(url: str, tmp_path: Path) -> None:
    from compression import ModelSpec

    task_id = create_task(url, task_config(clients_per_round=1))
    other = _Declaring(ModelSpec.from_shapes([("w", (10, 16)), ("c", (10,))]))
    with Client(url, tmp_path / "app") as client:
        client.register()
        # "Naming a task of another model (participate(task_id=1)) raises
        # sdk.LayoutMismatchError at the first check-in (status 409), before the device is
        # selected."
        with pytest.raises(sdk.LayoutMismatchError) as caught:
            client.participate(other, *local_data(0), task_id=task_id, max_wait_s=5)
        assert (caught.value.status, caught.value.reason) == (409, "model_layout_mismatch")
        assert caught.value.task_id == task_id
        # "With no such task running, the answer is wait with detail "no active task this device
        # can run: task 1's model "mlp" has layout ..., not one of the model_layouts this device
        # declared ...""
        assert _one_check_in(client, other, *local_data(0)) is None
        answer = client.last_check_in
        assert answer is not None
        assert answer.detail.startswith(
            f'no active task this device can run: task {task_id}\'s model "softmax" has layout '
        ), answer.detail
        assert "not one of the model_layouts this device declared" in answer.detail


def test_a_task_over_max_model_bytes(url: str, tmp_path: Path) -> None:
    # "participate(task_id=3) for such a task raises ModelTooLargeError (status 409) at its first
    # check-in, before it is selected"; "declared None"; "task_id and limit say which task and
    # which limit"; and naming none: "no active task this device can run: task 3's model is ...
    # bytes ..., over the max_model_bytes=... this device declared"
    task_id = create_task(url, task_config(clients_per_round=1))
    with Client(url, tmp_path / "app", max_model_bytes=64) as client:
        client.register()
        with pytest.raises(sdk.ModelTooLargeError) as caught:
            client.participate(SoftmaxTrainer(), *local_data(0), task_id=task_id, max_wait_s=5)
        err = caught.value
        assert (err.status, err.reason, err.declared) == (409, "model_too_large", None)
        assert (err.task_id, err.limit) == (task_id, 64)
        assert _one_check_in(client, SoftmaxTrainer(), *local_data(0)) is None
        answer = client.last_check_in
        assert answer is not None
        assert answer.detail.startswith(
            f"no active task this device can run: task {task_id}'s model is "
        ), answer.detail
        assert "over the max_model_bytes=64 this device declared" in answer.detail


def test_fetch_current_and_the_residual_file(url: str, tmp_path: Path) -> None:
    from compression import ModelSpec
    from tests.coordinator.test_service_support import SPEC

    task_id = create_task(url, task_config(rounds=3, clients_per_round=1))
    app = tmp_path / "app"
    with Client(url, app) as client:
        client.register()
        report = client.participate(SoftmaxTrainer(), *local_data(3), task_id=task_id)
        assert report is not None
        # "Disk use is bounded by 8 residuals of one model each (16 + 4d bytes, plus a 32-byte
        # trailer naming the task, a write sequence number and the model's layout)"
        assert (app / f"residual-{task_id}.bin").stat().st_size == 16 + 4 * SPEC.size + 32
        before = {p.name: p.read_bytes() for p in app.iterdir() if p.is_file()}
        # "Also raised by fetch_current(task_id, spec) for a spec that is not the task's own
        # (names or shapes; status 0): the app directory is untouched, the model held is kept."
        renamed = ModelSpec.from_shapes([("w2", (10, 16)), ("b", (10,))])
        with pytest.raises(sdk.LayoutMismatchError) as caught:
            client.fetch_current(task_id, renamed)
        assert caught.value.status == 0 and caught.value.task_id == task_id
        assert {p.name: p.read_bytes() for p in app.iterdir() if p.is_file()} == before
        # "Right after the upload the round may not be committed yet, so this can still be the
        # version the round started from": the coordinator closes the round after answering
        # its upload, so the version it published is waited for before the latest model is
        # asked for (checked with the close held back: test_s66b_fetch_current_before_commit).
        published = _committed_version(url, report.round_id)
        # fetch_current returns (params, version, ...), counted in control_bandwidth
        control = client.control_bandwidth["down"]["requests"]
        params, version, _ = client.fetch_current(task_id, SPEC)
        assert params.shape == (SPEC.size,) and params.dtype == np.float32
        assert version == published == report.model_version + 1
        assert client.control_bandwidth["down"]["requests"] == control + 1


def _committed_version(url: str, round_id: int) -> int:
    """The model version round `round_id` published, once its status says "committed". Not
    before: the status says "aggregating" until the coordinator serves that version, though the
    store may already name it (`version_after`)."""
    return int(wait_until(url, f"/v1/rounds/{round_id}", "state", "committed")["version_after"])


def test_eight_mnist_cnn_models_on_disk() -> None:
    # "Disk use is bounded by 8 models, 4 bytes a parameter each (53 MB for eight
    # mnist_cnn-sized models)"; "weights: 4 bytes per parameter (6.7 MB for mnist_cnn)"
    from mobile_sim.models import MODELS

    n = sum(p.numel() for p in MODELS["mnist_cnn"]().parameters())
    assert round(4 * n / 1e6, 1) == 6.7
    assert round(8 * 4 * n / 1e6) == 53


# ---------------------------------------------------------------------------------------------
# AsyncClient, Retry-After dates, the seeded retry draws, the check-in's max_model_bytes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"timeout": 0},
        {"max_model_bytes": 3},
        {"model_dtype": "fp8"},
        {"backoff_s": -1.0},
        {"max_response_s": 0.0},
    ],
)
def test_async_client_refuses_the_same_setup_mistakes(tmp_path: Path, kw: dict[str, Any]) -> None:
    # "model_dtype ... (and AsyncClient)": the ValueError row holds for both clients
    app = tmp_path / "app"
    with pytest.raises(ValueError):
        sdk.AsyncClient("http://c", app, **kw)
    assert not app.exists()


def _dated(retry_after: str) -> httpx.Response:
    body = json.dumps({"reason": "store_unavailable", "detail": "busy"}).encode()
    return httpx.Response(
        503,
        content=body,
        headers={"retry-after": retry_after, "date": "Wed, 21 Oct 2037 07:27:50 GMT"},
    )


def test_retry_after_as_an_http_date(tmp_path: Path) -> None:
    # "an HTTP-date (`Wed, 21 Oct 2037 07:28:00 GMT`, the IMF-fixdate form), waited until as the
    # answer's Date tells the coordinator's time ...; a date past is no wait; another date form,
    # or anything else, gets the backoff"
    client, _, waits = _answering(tmp_path / "a", _dated("Wed, 21 Oct 2037 07:28:00 GMT"))
    with client, pytest.raises(sdk.ClientError):
        client.register()
    assert all(10.0 <= w <= 12.0 for w in waits), waits
    client, _, waits = _answering(tmp_path / "b", _dated("Wed, 21 Oct 2037 07:27:00 GMT"))
    with client, pytest.raises(sdk.ClientError):
        client.register()
    assert waits == [0.0] * 4
    client, _, waits = _answering(tmp_path / "c", _dated("Wednesday, 21-Oct-37 07:28:00 GMT"))
    with client, pytest.raises(sdk.ClientError):
        client.register()
    assert all(0.2 * 2**k / 2 <= w <= 0.2 * 2**k for k, w in enumerate(waits)), waits


def test_a_seeded_retry_rng_reproduces_the_waits(tmp_path: Path) -> None:
    # "give a seeded one for a reproducible test or simulation"
    import random

    runs = []
    for name in ("a", "b"):
        client, _, waits = _answering(
            tmp_path / name, httpx.Response(503, content=_BUSY), retry_rng=random.Random(7)
        )
        with client, pytest.raises(sdk.ClientError):
            client.register()
        runs.append(waits)
    assert runs[0] == runs[1] and len(set(runs[0])) == 4


def test_every_check_in_names_max_model_bytes(tmp_path: Path) -> None:
    # "The client also tells the coordinator its max_model_bytes, in every check-in (both
    # clients; 28 bytes up at the default)"
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.read())
        return httpx.Response(400, json={"reason": "bad_request", "detail": "no"})

    with Client("http://c", tmp_path / "app", transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(sdk.ClientError):
            client.check_in(1)
    body = json.loads(bodies[0])
    assert body["max_model_bytes"] == 256 << 20
    # the compact JSON the client sends, less the key, is 28 bytes shorter
    assert bodies[0] == json.dumps(body, separators=(",", ":")).encode()
    without = {k: v for k, v in body.items() if k != "max_model_bytes"}
    assert len(bodies[0]) - len(json.dumps(without, separators=(",", ":"))) == 28


# ---------------------------------------------------------------------------------------------
# OrtDevice and the artifacts' checks
# ---------------------------------------------------------------------------------------------


def _device(artifacts: Path, **kw: Any) -> Any:
    from compression import CodecConfig
    from sdk.ort import OrtDevice, OrtTrainer

    x, y = _data(20)
    trainer = OrtTrainer.from_dir(artifacts)
    return OrtDevice(trainer, x, y, codec=CodecConfig(topk=0.5, bits=4), batch_size=4, **kw)


def test_keep_params_false_sends_the_same_frame(artifacts: Path) -> None:
    # "run_round(..., keep_params=False) ... The frame and the residual are the same bit for
    # bit, but upload.result.params is then an empty array (num_examples and loss are kept)"
    start = np.random.default_rng(4).normal(0, 0.05, 15).astype(np.float32)
    uploads, residuals = [], []
    for keep in (True, False):
        device = _device(artifacts)
        for _ in range(2):  # the second round adds the first's residual
            upload = device.run_round(start, np.random.default_rng(3), keep_params=keep)
        uploads.append(upload)
        residuals.append(device.encoder.feedback.residual.copy())
    kept, dropped = uploads
    assert dropped.frame == kept.frame
    assert np.array_equal(residuals[0], residuals[1])
    assert kept.result.params.shape == (15,) and dropped.result.params.size == 0
    assert (dropped.result.num_examples, dropped.result.loss) == (
        kept.result.num_examples,
        kept.result.loss,
    )


def test_a_call_codec_is_put_back_after_the_call_and_after_a_raise(artifacts: Path) -> None:
    # "run_round(params, rng, codec=...) encodes that round's update with codec instead of the
    # device's own config, for that call only: the config is put back when the call returns or
    # raises"
    from compression import CodecConfig

    device = _device(artifacts)
    own = device.encoder.config
    start = np.zeros(15, np.float32)
    other = CodecConfig(topk=0.1, bits=8)
    device.run_round(start, np.random.default_rng(3), codec=other)
    assert device.encoder.config == own
    with pytest.raises(ValueError):
        device.run_round(start + np.nan, np.random.default_rng(3), codec=other)
    assert device.encoder.config == own


def test_ort_device_refuses_an_lr_past_float32_when_set_up(artifacts: Path) -> None:
    # "OrtDevice refuses it when set up"
    with pytest.raises(ValueError, match="lr"):
        _device(artifacts, lr=1e39)


def test_manifest_words(artifacts: Path, tmp_path: Path) -> None:
    import shutil

    from sdk.ort import ArtifactError, OrtTrainer

    folder = tmp_path / "copy"
    shutil.copytree(artifacts, folder)
    text = (artifacts / "manifest.json").read_text()
    manifest = json.loads(text)
    path = folder / "manifest.json"
    # "A key given twice in one JSON object is refused (`key 'model' appears twice in one
    # object`)"
    path.write_text(text.replace("{", '{"model": "x", ', 1))
    with pytest.raises(ArtifactError, match="key 'model' appears twice in one object"):
        OrtTrainer.from_dir(folder)
    # "Fields the format does not know are ignored"
    path.write_text(json.dumps({**manifest, "made_by": "a newer exporter"}))
    OrtTrainer.from_dir(folder)
    # "A file path naming a folder says so (`... is not a regular file`), and an empty path is
    # refused as not a plain name."
    (folder / "sub").mkdir()
    for name, words in (("sub", "is not a regular file"), ("", "must be a plain name")):
        edited = json.loads(text)
        edited["files"]["infer"]["path"] = name
        path.write_text(json.dumps(edited))
        with pytest.raises(ArtifactError, match=words):
            OrtTrainer.from_dir(folder)
    # "file sizes: at most max_file_bytes each ..., checked before anything is read"
    path.write_text(text)
    with pytest.raises(ArtifactError, match="max_file_bytes"):
        OrtTrainer.from_dir(folder, max_file_bytes=100)


def test_ort_evaluate_refuses_skipped_labels(artifacts: Path) -> None:
    # "sdk.trainer.evaluate, like OrtTrainer.evaluate, refuses labels outside the model's
    # classes (-100 included) with a TrainingDataError"; "Its batch_size must be an integer >= 1
    # (a ValueError)"
    import torch

    from sdk.ort import OrtTrainer
    from sdk.trainer import evaluate

    x, y = _data(8)
    y[0] = -100
    params = np.zeros(15, np.float32)
    with pytest.raises(sdk.TrainingDataError):
        OrtTrainer.from_dir(artifacts).evaluate(params, x, y)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    with pytest.raises(sdk.TrainingDataError):
        evaluate(model, params, x, y)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(model, params, *_data(8), batch_size=0)


def test_a_check_in_names_the_version_held_of_its_task(tmp_path: Path) -> None:
    # "A check-in naming a task names the version held of that task (model_version); one naming
    # none, the version of the model written last."
    from compression import model_digest
    from sdk.device_store import DeviceStore

    app = tmp_path / "app"
    Client("http://c", app).close()
    with DeviceStore(app) as store:
        for task, version in ((2, 9), (1, 5)):  # task 1's written last
            params = np.full(170, version, np.float32)
            store.save_model(task, params, version, model_digest(params).hex(), True)
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.read()))
        return httpx.Response(400, json={"reason": "bad_request", "detail": "no"})

    with Client("http://c", app, transport=httpx.MockTransport(handler)) as client:
        for task_id in (1, 2, None):
            with pytest.raises(sdk.ClientError):
                client.participate(SoftmaxTrainer(), *local_data(0), task_id=task_id)
    assert [b.get("model_version") for b in bodies] == [5, 9, 5]
    assert [b.get("task_id") for b in bodies] == [1, 2, None]


def test_the_device_install_line_has_pyprojects_bounds() -> None:
    # "pip install "numpy>=1.26" "onnxruntime>=1.18" ...: the bounds are pyproject.toml's"
    import re
    import tomllib

    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "devices.md").read_text()
    line = next(ln for ln in doc.splitlines() if ln.startswith('`pip install "numpy'))
    shown = re.findall(r'"([^"]+)"', line)
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    bounds = {re.match(r"[A-Za-z0-9_-]+", d).group(0): d for d in deps}  # type: ignore[union-attr]
    assert len(shown) == 6
    for requirement in shown:
        name = re.match(r"[A-Za-z0-9_-]+", requirement).group(0)  # type: ignore[union-attr]
        assert bounds[name] == requirement, (requirement, bounds.get(name))


def test_the_none_details(url: str, tmp_path: Path) -> None:
    # The None row: "`not selected yet` (a round gathers or runs without this device), `no
    # active task` (no task named and none running, or the task named ... awaits its initial
    # model)"; "last_check_in is this call's last check-in answer"
    from protocol.messages import to_json

    x, y = local_data(0)
    with Client(url, tmp_path / "app") as client:
        client.register()
        assert _one_check_in(client, SoftmaxTrainer(), x, y) is None
        assert client.last_check_in is not None
        assert client.last_check_in.detail == "no active task"
        made = httpx.post(
            f"{url}/v1/admin/tasks",
            json=to_json(task_config(clients_per_round=1)),
            headers={"authorization": f"Bearer {ADMIN}"},
        )
        waiting = int(made.json()["task_id"])  # no initial model yet
        assert _one_check_in(client, SoftmaxTrainer(), x, y, waiting) is None
        assert client.last_check_in is not None
        assert client.last_check_in.detail == "no active task"
        gathering = create_task(url, task_config(clients_per_round=3, selection_timeout_s=30.0))
        assert _one_check_in(client, SoftmaxTrainer(), x, y, gathering) is None
        assert client.last_check_in is not None
        assert client.last_check_in.detail == "not selected yet"
        # control traffic only: no round row; "one row of the same shape"
        assert client.bandwidth == {}
        for direction in ("up", "down"):
            assert sorted(client.control_bandwidth[direction]) == [
                "dense_bytes",
                "payload_bytes",
                "requests",
                "wire_bytes",
            ]
        # "its up payload and dense bytes are always 0"
        assert client.control_bandwidth["up"]["payload_bytes"] == 0
        assert client.control_bandwidth["up"]["dense_bytes"] == 0


def test_torch_threads_are_put_back_after_a_raise_and_equal_counts_are_the_same_bits() -> None:
    # "each train call sets torch.set_num_threads(2) and puts the previous count back when it
    # returns or raises"; "with threads equal to the count already set, the result is the same
    # bits as with None"
    import torch

    from sdk.trainer import TorchTrainer

    x, y = _data(12)
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    torch.manual_seed(0)
    trainer = TorchTrainer(torch.nn.Sequential(torch.nn.Linear(4, 3)), threads=other)
    with pytest.raises(ValueError, match="training diverged"):
        _train(trainer, np.full(15, 3e38, np.float32), x + np.float32(1e30), y)
    assert torch.get_num_threads() == before
    start = np.random.default_rng(1).normal(0, 0.1, 15).astype(np.float32)
    results = []
    for threads in (None, before):
        torch.manual_seed(0)
        t = TorchTrainer(torch.nn.Sequential(torch.nn.Linear(4, 3)), threads=threads)
        results.append(_train(t, start, x, y).params)
    assert np.array_equal(results[0], results[1])


def test_ort_sessions_threads_and_spinning(artifacts: Path) -> None:
    # "It is the training graph's count: the inference graph (predict, evaluate) runs on one
    # thread ... With more than one thread the pool's threads do not spin (...allow_spinning is
    # "0")"; "Training runs on one onnxruntime thread by default"
    import onnxruntime as ort

    from sdk.ort import OrtTrainer

    def options(threads: int) -> list[Any]:
        trainer = OrtTrainer.from_dir(artifacts, threads=threads)
        sessions = [v for v in vars(trainer).values() if isinstance(v, ort.InferenceSession)]
        assert len(sessions) == 2
        return [s.get_session_options() for s in sessions]

    def spin(o: Any) -> str | None:
        try:
            return str(o.get_session_config_entry("session.intra_op.allow_spinning"))
        except Exception:  # onnxruntime raises for an entry never set
            return None

    one = options(1)
    assert sorted(o.intra_op_num_threads for o in one) == [1, 1]
    three = options(3)
    assert sorted(o.intra_op_num_threads for o in three) == [1, 3]
    train = next(o for o in three if o.intra_op_num_threads == 3)
    assert spin(train) == "0"
    assert all(
        o.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL for o in three
    )
