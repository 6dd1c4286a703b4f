"""`plume sim` flags for the pool and Ray backends' options (helper-206): --workers and
--inner-backend (pool and ray), --ray-address and --ray-runtime-env (ray). They go through
SimConfig into the backend's constructor and rounds.json's config; a flag the chosen backend
has no use for is refused in one line; the runtime_env's values are never written (only its
keys: env_vars may hold secrets). Only the last test starts Ray (a private local runtime)."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

import pytest

from coordinator.cli import main as plume
from mobile_sim import _cli
from mobile_sim.backends import ray_backend
from mobile_sim.backends.sequential import SequentialBackend
from mobile_sim.runner import SimConfig, backend_for

TINY = [
    "sim", "--dataset", "digits", "--clients", "4", "--per-round", "2", "--rounds", "1",
    "--local-epochs", "1", "--no-progress",
]  # fmt: skip
SECRET = "h206-not-for-rounds-json"
ENV = {"env_vars": {"PLUME_H206_TOKEN": SECRET}}


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("plume sim: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            ["--backend", "pool", "--ray-address", "127.0.0.1:6379"],
            "--ray-address only applies to --backend ray (this run: --backend pool)",
        ),
        (
            ["--backend", "pool", "--ray-runtime-env", "{}"],
            "--ray-runtime-env only applies to --backend ray (this run: --backend pool)",
        ),
        (
            ["--ray-address", "auto", "--ray-runtime-env", "{}"],
            "--ray-address and --ray-runtime-env only apply to --backend ray (this run: "
            "--backend sequential)",
        ),
        (
            ["--workers", "2"],
            "--workers only applies to --backend pool or ray (this run: --backend sequential)",
        ),
        (
            ["--backend", "vectorized", "--inner-backend", "vectorized"],
            "--inner-backend only applies to --backend pool or ray (this run: --backend "
            "vectorized)",
        ),
        (["--backend", "pool", "--workers", "0"], "--workers must be an integer >= 1, got 0"),
        (["--backend", "ray", "--workers", "-1"], "--workers must be an integer >= 1, got -1"),
        (
            ["--transport", "http", "--workers", "2"],
            "--workers only applies to --transport inproc",
        ),
        (
            ["--transport", "http", "--ray-address", "auto"],
            "--ray-address only applies to --transport inproc",
        ),
    ],
)
def test_a_backend_flag_the_run_cannot_use_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], expected: str
) -> None:
    # Execute
    code = plume([*TINY, *flags, "--out", str(tmp_path / "run")])

    # Assert: a usage error, before anything ran or was written
    assert code == 2
    assert expected in _error_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def _redacted() -> str:
    return str(_cli.RuntimeEnv({"env_vars": {}}, None))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("[1]", "must be a JSON object (Ray's runtime_env: py_modules, pip, env_vars, ...), "),
        ("42", "must be a JSON object"),
        ('{"env_vars": ', "argument --ray-runtime-env: not valid JSON: "),
        ("no-such-file.json", "'no-such-file.json' is neither a JSON object nor a file"),
        ("FILE:[]", "must hold a JSON object (Ray's runtime_env"),
        ("FILE:{oops", "does not hold valid JSON"),
        ("REDACTED", "this is the redaction marker rounds.json's command records"),
    ],
)
def test_a_runtime_env_that_is_not_a_json_object_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, expected: str
) -> None:
    # Prepare
    if value.startswith("FILE:"):
        path = tmp_path / "env.json"
        path.write_text(value.removeprefix("FILE:"))
        value = str(path)
    elif value == "REDACTED":  # as a rerun of a recorded command gives it
        value = _redacted()

    # Execute
    argv = [*TINY, "--backend", "ray", "--ray-runtime-env", value, "--out", str(tmp_path / "r")]
    with pytest.raises(SystemExit) as info:
        plume(argv)

    # Assert: argparse's usage error, one line naming the flag
    assert info.value.code == 2
    line = _error_line(capsys.readouterr().err)
    assert line.startswith("plume sim: error: argument --ray-runtime-env: ")
    assert expected in line
    assert not (tmp_path / "r").exists()


def test_an_invalid_inner_backend_is_refused_by_its_choices(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        plume([*TINY, "--backend", "pool", "--inner-backend", "numpy"])
    assert info.value.code == 2
    assert "argument --inner-backend: invalid choice: 'numpy'" in capsys.readouterr().err


def test_the_inner_backend_choices_are_the_workers() -> None:
    from mobile_sim import runner
    from mobile_sim.backends._worker import INNER_BACKENDS

    assert _cli._INNER_BACKENDS == runner._INNER_BACKENDS == INNER_BACKENDS


def test_help_lists_the_flags_with_the_backends_they_apply_to(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        plume(["sim", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert info.value.code == 0
    assert "--workers N pool and ray: worker processes or Ray actors" in text
    assert "--inner-backend {sequential,vectorized} pool and ray:" in text
    assert "--ray-address ADDRESS ray: the cluster to join" in text
    assert "(default: $RAY_ADDRESS, else a private Ray runtime on this machine)" in text
    assert "--ray-runtime-env JSON|FILE ray: Ray's runtime_env" in text
    assert "rounds.json records only its keys" in text


class _Recorded(SequentialBackend):
    """Stands in for RayBackend: records its constructor's arguments, trains in process."""

    calls: list[dict[str, Any]] = []

    def __init__(self, **kwargs: Any) -> None:
        type(self).calls.append(kwargs)
        super().__init__()


def test_the_flags_reach_the_ray_backend_and_rounds_json_records_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: RayBackend replaced (no Ray is started); the runtime_env in a file
    monkeypatch.setattr(_Recorded, "calls", [])
    monkeypatch.setattr(ray_backend, "RayBackend", _Recorded)
    env_file = tmp_path / "env.json"
    env_file.write_text(json.dumps(ENV))
    flags = ["--backend", "ray", "--workers", "3", "--inner-backend", "vectorized"]
    flags += ["--ray-address", "10.1.2.3:6379", "--ray-runtime-env", str(env_file)]

    # Execute
    code = plume([*TINY, *flags, "--out", str(tmp_path / "run")])
    capsys.readouterr()

    # Assert: the constructor's arguments, as RayBackend names them
    assert code == 0
    assert _Recorded.calls == [
        {"workers": 3, "inner": "vectorized", "address": "10.1.2.3:6379", "runtime_env": ENV}
    ]
    doc = json.loads((tmp_path / "run" / "rounds.json").read_text())
    config = doc["config"]
    assert (config["backend"], config["workers"], config["inner_backend"]) == (
        "ray",
        3,
        "vectorized",
    )
    assert config["ray_address"] == "10.1.2.3:6379"
    assert config["ray_runtime_env_keys"] == ["env_vars"] and "ray_runtime_env" not in config
    # The command names the file (a rerun reads it again); no file holds the secret
    words = shlex.split(doc["command"])
    assert words[words.index("--ray-runtime-env") + 1] == str(env_file)
    for written in (tmp_path / "run").iterdir():
        assert SECRET.encode() not in written.read_bytes(), written.name


def test_an_inline_runtime_env_is_left_out_of_the_recorded_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    monkeypatch.setattr(_Recorded, "calls", [])
    monkeypatch.setattr(ray_backend, "RayBackend", _Recorded)
    flags = ["--backend", "ray", "--ray-runtime-env", json.dumps(ENV)]

    # Execute
    code = plume([*TINY, *flags, "--out", str(tmp_path / "run")])
    capsys.readouterr()

    # Assert: the backend got it; the command holds a redaction marker naming its keys only
    assert code == 0
    assert _Recorded.calls == [{"runtime_env": ENV}]
    doc = json.loads((tmp_path / "run" / "rounds.json").read_text())
    words = shlex.split(doc["command"])
    assert words[words.index("--ray-runtime-env") + 1] == (
        "<inline runtime_env not recorded (keys: env_vars)>"
    )
    for written in (tmp_path / "run").iterdir():
        assert SECRET.encode() not in written.read_bytes(), written.name


def test_without_the_flags_the_backends_keep_their_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No flag: what `plume sim --backend ray` did before them (RAY_ADDRESS, else a private
    # runtime; one sequential actor per free CPU); RayBackend is only built, not started.
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray = backend_for(SimConfig(backend="ray"))
    assert isinstance(ray, ray_backend.RayBackend)
    assert (ray.address, ray.workers, ray.inner, ray.runtime_env) == (
        None,
        None,
        "sequential",
        None,
    )

    monkeypatch.setenv("RAY_ADDRESS", "10.9.9.9:6379")
    assert backend_for(SimConfig(backend="ray")).address == "10.9.9.9:6379"  # type: ignore[attr-defined]
    given = backend_for(SimConfig(backend="ray", ray_address="auto"))
    assert given.address == "auto"  # type: ignore[attr-defined]  # the flag wins

    pool = backend_for(SimConfig(backend="pool"))
    assert (pool.workers, pool.inner) == (os.cpu_count() or 1, "sequential")  # type: ignore[attr-defined]


def test_simconfig_passes_the_pool_its_workers_and_inner_backend() -> None:
    pool = backend_for(SimConfig(backend="pool", workers=3, inner_backend="vectorized"))
    assert (pool.name, pool.workers, pool.inner) == ("pool", 3, "vectorized")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"workers": 2}, "workers applies to the pool and ray backends, not 'sequential'"),
        ({"inner_backend": "vectorized", "backend": "vectorized"}, "inner_backend applies to"),
        ({"ray_address": "auto", "backend": "pool"}, "ray_address applies to the ray backend"),
        ({"ray_runtime_env": {}, "backend": "pool"}, "ray_runtime_env applies to the ray backend"),
        ({"workers": 2.0, "backend": "pool"}, "workers must be an integer >= 1, got 2.0"),
        ({"workers": True, "backend": "ray"}, "workers must be an integer >= 1, got True"),
        ({"inner_backend": "numpy", "backend": "pool"}, "inner_backend must be sequential or"),
        ({"ray_address": " ", "backend": "ray"}, "ray_address must be a non-empty string"),
        ({"ray_runtime_env": [1], "backend": "ray"}, "ray_runtime_env must be a dict"),
        ({"ray_runtime_env": {1: 2}, "backend": "ray"}, "ray_runtime_env must be a dict"),
    ],
)
def test_simconfig_refuses_an_option_its_backend_cannot_use(
    fields: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ValueError, match="^" + expected.replace("(", r"\(")):
        SimConfig(**fields)


def test_as_dict_records_the_options_given_and_only_the_runtime_env_keys() -> None:
    # Unset: null, as the backend's own default (bench scripts read a missing key as the
    # default: test_h131_bench_config, test_h141_bench_merge)
    plain = SimConfig().as_dict()
    for name in ("workers", "inner_backend", "ray_address", "ray_runtime_env"):
        assert plain[name] is None
    assert "ray_runtime_env_keys" not in plain

    env = {"pip": ["torch"], **ENV}
    cfg = SimConfig(backend="ray", workers=2, ray_address="auto", ray_runtime_env=env)
    recorded = cfg.as_dict()
    assert (recorded["workers"], recorded["ray_address"]) == (2, "auto")
    assert recorded["ray_runtime_env_keys"] == ["env_vars", "pip"]
    assert SECRET not in json.dumps(recorded)
    env["pip"].append("changed later")  # the config holds its own copy of the top level
    assert cfg.ray_runtime_env is not None and set(cfg.ray_runtime_env) == {"env_vars", "pip"}
    hash(cfg)  # still hashable: the dict is left out of the hash


# slow: ~76 s on a 2-vCPU Xeon (a runtime_env makes Ray start a worker pool of its own); the
# Ray backend's real-runtime equivalence test in tests/mobile_sim/test_backends.py keeps Ray
# in `make test`.
@pytest.mark.slow
@pytest.mark.ray
def test_a_real_run_on_one_local_ray_actor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A private local Ray runtime (no RAY_ADDRESS), one actor, vmap inside it, an env var
    # for the actor's workers: the run ends, and its files hold the keys only.
    pytest.importorskip("ray", reason="the Ray backend needs `pip install .[ray]`")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    flags = ["--backend", "ray", "--workers", "1", "--inner-backend", "vectorized"]
    flags += ["--ray-runtime-env", json.dumps(ENV)]

    code = plume([*TINY, *flags, "--out", str(tmp_path)])
    capsys.readouterr()

    assert code == 0
    doc = json.loads((tmp_path / "rounds.json").read_text())
    assert [r["committed"] for r in doc["rounds"]] == [True]
    assert doc["config"]["workers"] == 1
    assert doc["config"]["ray_runtime_env_keys"] == ["env_vars"]
    for written in tmp_path.iterdir():
        assert SECRET.encode() not in written.read_bytes(), written.name
