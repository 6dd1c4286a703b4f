"""A runtime_env Ray refuses ends in one line naming the key, never quoting a value (helper-210:
`plume sim --backend ray --ray-runtime-env '{"env_vars":{"API_TOKEN":12345678}}'` ended in a
47-line traceback whose last line was Ray's TypeError quoting 12345678, while env_vars may
hold secrets). `--ray-runtime-env` checks the shape Ray takes at parse time; RayBackend.start
runs Ray's own check before Ray starts and turns what Ray's runtime_env code raises in ray.init,
making the actors or setting them up into one line without Ray's message. Only the last test
starts Ray (a private local runtime, about 5 s)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coordinator.cli import main as plume
from mobile_sim import _cli
from mobile_sim.backends import ray_backend
from tests.mobile_sim.test_h192_ray_address import tiny_context

TINY = [
    "sim", "--dataset", "digits", "--clients", "4", "--per-round", "2", "--rounds", "1",
    "--local-epochs", "1", "--no-progress",
]  # fmt: skip
SECRET = "h211-secret-value"
URL = f"https://alice:{SECRET}@pypi.example/simple"

# (a runtime_env, what the parse-time line says): Ray refuses every one of them too
REFUSED: list[tuple[dict[str, Any], str]] = [
    (
        {"env_vars": {"API_TOKEN": 12345678}},
        'env_vars["API_TOKEN"] must be a string (Ray sets it as an environment variable: quote '
        "it), not a number",
    ),
    ({"env_vars": {"A": "1", "B": None}}, 'env_vars["B"] must be a string'),
    ({"env_vars": {"A": True}}, "not true or false"),
    ({"env_vars": {"A": [SECRET]}}, 'env_vars["A"] must be a string'),
    ({"env_vars": f"A={SECRET}"}, "env_vars must be an object of variable names to strings"),
    ({"py_modules": SECRET}, "py_modules must be an array of strings, not a string"),
    (
        {"py_modules": ["x", 1]},
        "py_modules must be an array of strings, not an array holding a number",
    ),
    ({"working_dir": 1}, "working_dir must be a string, not a number"),
    ({"excludes": SECRET}, "excludes must be an array of strings, not a string"),
    ({"pip": 1}, "pip must be a requirements file's path, an array of strings or an object"),
    (
        {"pip": [SECRET, 1]},
        "pip must be a requirements file's path, an array of strings or an object, not an array holding a number",
    ),
    ({"pip": {"pip_install_options": ["--index-url", URL]}}, "pip must include packages"),
    ({"pip": {"packages": ["x"], "index": URL}}, "pip takes only the fields packages, "),
    ({"pip": {"packages": 1}}, "pip.packages must be an array of strings or a requirements"),
    ({"pip": {"packages": ["x"], "pip_check": "yes"}}, "pip.pip_check must be true or false"),
    ({"pip": {"packages": ["x"], "pip_install_options": URL}}, "pip.pip_install_options must"),
    ({"uv": {"packages": SECRET}}, "uv.packages must be an array of strings, not a string"),
    ({"uv": {"packages": ["x"], "uv_version": 1}}, "uv.uv_version must be a string"),
    ({"pip": ["x"], "conda": SECRET}, "pip and conda cannot be given together"),
    ({"conda": 1}, "conda must be the name of a conda environment, a .yaml file or an object"),
    ({"container": {"image": "x"}, "pip": ["x"]}, "container takes only config and env_vars"),
    ({"config": 1}, "config must be an object, not a number"),
]
# Accepted at parse time, and by Ray's own check too
ACCEPTED: list[dict[str, Any]] = [
    {},
    {"env_vars": {"OMP_NUM_THREADS": "1", "API_TOKEN": SECRET}},
    {"env_vars": {}},
    {"env_vars": None, "pip": None},
    {"pip": ["numpy"]},
    {"pip": {"packages": ["numpy"], "pip_check": False, "pip_install_options": ["-q"]}},
    {"pip": {"packages": ["numpy"], "pip_version": "==24.0"}},
    {"uv": ["numpy"]},
    {"uv": {"packages": ["numpy"], "uv_check": True, "uv_pip_install_options": []}},
    {"conda": "an-env"},
    {"conda": {"dependencies": ["numpy"]}},
    {"py_modules": ["s3://bucket/plume.zip"]},
    {"working_dir": "s3://bucket/plume.zip"},
    {"excludes": ["*.pyc"]},
    {"container": {"image": "x"}, "env_vars": {"A": "1"}, "config": {}},
    {"config": {"setup_timeout_seconds": 60}},
    {"worker_process_setup_hook": "my.module"},
]


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("plume sim: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_the_reported_command_is_one_usage_line_without_the_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # helper-210's command, as given
    argv = [*TINY, "--backend", "ray", "--out", str(tmp_path / "run")]
    argv += ["--ray-runtime-env", '{"env_vars":{"API_TOKEN":12345678}}']

    with pytest.raises(SystemExit) as info:
        plume(argv)

    assert info.value.code == 2
    err = capsys.readouterr().err
    assert _error_line(err) == (
        'plume sim: error: argument --ray-runtime-env: env_vars["API_TOKEN"] must be a string '
        "(Ray sets it as an environment variable: quote it), not a number"
    )
    assert "12345678" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("env", "expected"), REFUSED)
@pytest.mark.parametrize("given", ["inline", "file"])
def test_a_runtime_env_of_a_shape_ray_refuses_is_a_usage_error_naming_the_key(
    env: dict[str, Any],
    expected: str,
    given: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare
    value = json.dumps(env)
    if given == "file":
        path = tmp_path / "env.json"
        path.write_text(value)
        value = str(path)

    # Execute
    argv = [*TINY, "--backend", "ray", "--ray-runtime-env", value, "--out", str(tmp_path / "r")]
    with pytest.raises(SystemExit) as info:
        plume(argv)

    # Assert: argparse's one line, naming the key (and the file), quoting no value
    assert info.value.code == 2
    err = capsys.readouterr().err
    head = "plume sim: error: argument --ray-runtime-env: "
    if given == "file":
        head += f"{value}: "
    line = _error_line(err)
    assert line.startswith(head) and expected in line
    assert SECRET not in err and "12345678" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("env", "expected"), REFUSED)
def test_ray_refuses_each_of_them_too(env: dict[str, Any], expected: str) -> None:
    # The parse-time check is no stricter than Ray's own (the version installed here)
    pytest.importorskip("ray", reason="the Ray backend needs `pip install .[ray]`")
    from ray.runtime_env import RuntimeEnv

    with pytest.raises((TypeError, ValueError)):
        RuntimeEnv(**env)


@pytest.mark.parametrize("env", ACCEPTED)
def test_a_runtime_env_ray_takes_is_accepted(env: dict[str, Any]) -> None:
    assert _cli._runtime_env(json.dumps(env)).env == env
    ray = pytest.importorskip("ray", reason="the Ray backend needs `pip install .[ray]`")
    ray.runtime_env.RuntimeEnv(**env)  # and Ray's own check takes it


class _NoRay(Exception):
    """Raised by the stand-in ray.init: the check should have refused the env before it."""


def _backend_start(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch, *, initialized: bool = False
) -> list[str]:
    """Start a RayBackend with `env`, ray.init and ray.remote replaced; the calls made."""
    ray = pytest.importorskip("ray", reason="the Ray backend needs `pip install .[ray]`")
    calls: list[str] = []

    def init(**kwargs: Any) -> None:
        calls.append("init")
        raise _NoRay

    def remote(**kwargs: Any) -> Any:
        calls.append("remote")
        raise _NoRay

    monkeypatch.setattr(ray, "is_initialized", lambda: initialized)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "remote", remote)
    monkeypatch.setattr(ray, "available_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray_backend.RayBackend(workers=1, runtime_env=env).start(tiny_context())
    return calls


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"env_vars": {"API_TOKEN": 12345678}}, "its env_vars (TypeError; "),
        ({"env_vars": {"A": "1"}, "pip": {"pip_install_options": [URL]}}, "its pip (ValueError"),
        ({"pip": ["x"], "conda": SECRET}, "its keys conda, pip together (ValueError"),
        ({"pip": f"/no/such/requirements-{SECRET}.txt"}, "its pip (ValueError"),
        ({"env_vars": {"A": 1}, "pip": 1}, "its env_vars and pip (TypeError"),
    ],
)
@pytest.mark.parametrize("initialized", [False, True])
def test_start_checks_the_runtime_env_with_rays_own_check_before_ray_starts(
    env: dict[str, Any], named: str, initialized: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # From Python (no --ray-runtime-env parse), in a runtime of its own or the caller's: refused
    # in one line naming the key, before ray.init or any actor
    with pytest.raises(ray_backend.RuntimeEnvRefused) as info:
        _backend_start(env, monkeypatch, initialized=initialized)
    text = str(info.value)
    assert text.startswith(f"RayBackend(runtime_env=...): Ray refuses {named}")
    assert "Ray's message is left out, as it may quote a value such as a secret)" in text
    assert "\n" not in text and SECRET not in text and "12345678" not in text
    assert isinstance(info.value, ValueError)


def test_a_runtime_env_ray_takes_goes_on_to_ray_init(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(_NoRay):
        _backend_start({"env_vars": {"A": "1"}}, monkeypatch)


def _raise_from_rays_runtime_env_code() -> None:
    """What ray.init does with a bad env_vars after it uploaded py_modules (a frame in Ray's
    runtime_env code raises, quoting the value)."""
    from ray._private.runtime_env.validation import parse_and_validate_env_vars

    parse_and_validate_env_vars({"API_TOKEN": 12345678})  # type: ignore[dict-item]


@pytest.mark.parametrize("where", ["init", "remote"])
def test_an_error_of_rays_runtime_env_code_while_starting_is_one_line(
    where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ray = pytest.importorskip("ray", reason="the Ray backend needs `pip install .[ray]`")
    shutdowns: list[bool] = []
    state = {"up": where == "remote"}

    def init(**kwargs: Any) -> None:
        _raise_from_rays_runtime_env_code()

    def remote(**kwargs: Any) -> Any:
        _raise_from_rays_runtime_env_code()

    monkeypatch.setattr(ray, "is_initialized", lambda: state["up"])
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "remote", remote)
    monkeypatch.setattr(ray, "shutdown", lambda: shutdowns.append(True))
    monkeypatch.setattr(ray, "available_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # py_modules (an S3 URI here) is left to ray.init: Ray uploads local ones before checking
    env = {"py_modules": ["s3://bucket/plume.zip"], "env_vars": {"A": "1"}}
    backend = ray_backend.RayBackend(workers=1, runtime_env=env)

    with pytest.raises(ray_backend.RuntimeEnvRefused) as info:
        backend.start(tiny_context())

    text = str(info.value)
    assert text.startswith(
        "RayBackend(runtime_env=...): Ray refused one of its keys (env_vars, py_modules) "
        "while starting (TypeError; "
    )
    assert "12345678" not in text and "\n" not in text
    assert shutdowns == ([True] if where == "init" else [])  # a half-started runtime ends


def test_an_error_from_elsewhere_in_ray_init_is_left_as_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ray = pytest.importorskip("ray", reason="the Ray backend needs `pip install .[ray]`")

    def init(**kwargs: Any) -> None:
        raise RuntimeError("no room for the object store")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    backend = ray_backend.RayBackend(workers=1, runtime_env={"env_vars": {"A": "1"}})
    with pytest.raises(RuntimeError, match="^no room for the object store$"):
        backend.start(tiny_context())


class _Actor:
    class _Ready:
        def remote(self) -> str:
            return "ready"

    __ray_ready__ = _Ready()


def test_a_runtime_env_the_nodes_cannot_set_up_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Ray's RuntimeEnvSetupError (a pip install that failed, say) carries Ray's whole account,
    # which may quote the env; it becomes one line naming the keys and where Ray's logs are
    ray = pytest.importorskip("ray", reason="the Ray backend needs `pip install .[ray]`")
    killed: list[object] = []
    state = {"up": False}

    def get(refs: Any, timeout: float | None = None) -> Any:
        raise ray.exceptions.RuntimeEnvSetupError(f"pip install --index-url {URL} failed")

    def remote(**kwargs: Any) -> Any:
        return lambda cls: type("ActorClass", (), {"remote": staticmethod(lambda *a: _Actor())})

    monkeypatch.setattr(ray, "is_initialized", lambda: state["up"])
    monkeypatch.setattr(ray, "init", lambda **kwargs: state.update(up=True))
    monkeypatch.setattr(ray, "shutdown", lambda: state.update(up=False))
    monkeypatch.setattr(ray, "available_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(ray, "remote", remote)
    monkeypatch.setattr(ray, "put", lambda value: "ref")
    monkeypatch.setattr(ray, "get", get)
    monkeypatch.setattr(ray, "kill", killed.append)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    env = {"pip": {"packages": ["x"], "pip_install_options": ["--index-url", URL]}}
    backend = ray_backend.RayBackend(workers=2, runtime_env=env)

    with pytest.raises(ray_backend.RuntimeEnvSetupFailed) as info:
        backend.start(tiny_context())

    text = str(info.value)
    assert text.startswith(
        "RayBackend(runtime_env=...): Ray could not set up the actors' runtime_env (pip; "
    )
    assert "runtime_env_setup-*.log" in text and SECRET not in text and "\n" not in text
    assert len(killed) == 2 and not state["up"]  # the actors and the runtime are gone


def test_the_cli_says_the_flag_for_a_refusal_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A requirements file that does not exist: only Ray checks it (it reads the file), before
    # it starts; no Ray runtime is started
    pytest.importorskip("ray", reason="the Ray backend needs `pip install .[ray]`")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    env = json.dumps({"pip": str(tmp_path / f"requirements-{SECRET}.txt")})

    code = plume([*TINY, "--backend", "ray", "--ray-runtime-env", env, "--out", str(tmp_path)])

    err = capsys.readouterr().err
    assert code == 2
    assert _error_line(err).startswith(
        "plume sim: error: --ray-runtime-env: Ray refuses its pip (ValueError; Ray's message "
        "is left out"
    )
    assert SECRET not in err


def test_the_cli_says_the_flag_when_the_nodes_cannot_set_it_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def start(self: Any, ctx: Any) -> None:
        raise ray_backend.RuntimeEnvSetupFailed(
            "RayBackend(runtime_env=...): Ray could not set up the actors' runtime_env (pip; ...)"
        )

    monkeypatch.setattr(ray_backend.RayBackend, "start", start)
    monkeypatch.delenv("PLUME_DEBUG", raising=False)
    env = json.dumps({"pip": ["x"]})

    code = plume([*TINY, "--backend", "ray", "--ray-runtime-env", env, "--out", str(tmp_path)])

    assert code == 1
    assert _error_line(capsys.readouterr().err) == (
        "plume sim: error: --ray-runtime-env: Ray could not set up the actors' runtime_env "
        "(pip; ...)"
    )


@pytest.mark.ray
def test_a_missing_py_modules_folder_through_a_real_ray_init(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A private local Ray runtime: ray.init starts it, then refuses to upload the folder (a
    # ValueError of Ray's runtime_env code quoting the path); the run ends in one line, and
    # the runtime is shut down
    ray = pytest.importorskip("ray", reason="the Ray backend needs `pip install .[ray]`")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    env = json.dumps({"py_modules": [str(tmp_path / f"no-such-folder-{SECRET}")]})

    code = plume([*TINY, "--backend", "ray", "--ray-runtime-env", env, "--out", str(tmp_path)])

    err = capsys.readouterr().err
    assert code == 2
    assert _error_line(err).startswith(
        "plume sim: error: --ray-runtime-env: Ray refused its py_modules while starting "
        "(ValueError; "
    )
    assert SECRET not in err
    assert not ray.is_initialized()


@pytest.mark.parametrize("name", ["", "A=B", "A\u0000"])
def test_an_env_var_name_no_environment_takes_is_a_usage_error(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # helper-344: Ray took {"": "x"}, every worker crashed at start, and the run waited 300 s
    value = json.dumps({"env_vars": {name: "x"}})
    argv = [*TINY, "--backend", "ray", "--ray-runtime-env", value, "--out", str(tmp_path / "r")]
    with pytest.raises(SystemExit) as info:
        plume(argv)
    assert info.value.code == 2
    line = _error_line(capsys.readouterr().err)
    assert "is no environment variable name" in line, line
    assert not (tmp_path / "r").exists()
