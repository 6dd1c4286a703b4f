"""Shared test settings: deterministic, single-threaded torch, data from ../shared/data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("PLUME_DATA", str(ROOT.parent / "shared" / "data"))
# Settings a developer's shell may carry change what the tests see (a token the admin tests
# expect to be missing, tracebacks instead of one-line errors, injected store faults): every
# test starts without them and sets what it needs itself.
for _name in ("PLUME_ADMIN_TOKEN", "PLUME_DEBUG", "PLUME_FAULT_FILE", "PLUME_FAULT_PAUSE_AT"):
    os.environ.pop(_name, None)

# Property tests draw the same examples on every run by default (`make test` is deterministic);
# PLUME_HYPOTHESIS=explore draws fresh ones each run to hunt for new counterexamples (a failure
# found that way becomes an explicit regression test).
# No per-example deadline and no too_slow health check: hypothesis' default deadline (200 ms)
# and its data-generation timing check fail a correct test on a slow or loaded machine (CI's 2
# cores after thousands of tests); a hang is still caught by pytest-timeout. (A test's own
# suppress_health_check list replaces this one: such lists name too_slow as well.)
_PATIENT = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("deterministic", derandomize=True, print_blob=True, **_PATIENT)
settings.register_profile("explore", derandomize=False, print_blob=True, **_PATIENT)
settings.load_profile(os.environ.get("PLUME_HYPOTHESIS", "deterministic"))


def _absl_on_process_stderr() -> None:
    """absl (dp_accounting imports it) builds its logging handler on the `sys.stderr` of its
    import, under pytest a capture stream. uvicorn's `dictConfig` (every ServerThread) closes
    every logging handler, and absl's close closes its stream unless it is the current
    `sys.stderr`: inside a `capsys` test that was pytest's global capture, and the session
    died with "lost sys.stderr" (tests/test_s14_absl_stream.py). The process's own stderr,
    which absl never closes, is where it would write anyway (fd capture)."""
    import sys

    import absl.logging

    absl.logging.get_absl_handler().python_handler.stream = sys.__stderr__


def _signals_not_ignored() -> None:
    """SIGINT and SIGHUP as an interactive shell gives them, in this process and so in every
    process a test starts. `nohup make test &`, or any background job of a shell without job
    control, starts the suite with SIGHUP (nohup) and SIGINT ignored, and every process inherits
    that: a coordinator the tests start keeps an ignored SIGHUP or SIGINT on purpose (docs/
    operations.md, tests/coordinator/test_s25_nohup_sighup.py, test_s54b_ignored_sigint.py),
    so the tests that stop one with either waited 30 s and failed, and a `plume` that sends
    itself SIGINT ran on (stop 61's clean-clone run, launched under nohup: test_s55o,
    test_s57f, test_s48_early_interrupt). Tests that need an ignored signal set it themselves."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


def pytest_configure(config: pytest.Config) -> None:
    _absl_on_process_stderr()
    _signals_not_ignored()
    # numpy's OpenBLAS starts one thread per CPU; under `make test -n 2` the other xdist worker
    # holds the second core and the two BLAS threads wait on each other (aggregator files ran
    # ~1.5-2x slower). In this process only (threadpoolctl, which scikit-learn requires): the
    # subprocesses tests start keep their defaults.
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
    try:
        import torch
    except ImportError:
        return
    # Two cores are shared by the suite; one intra-op thread keeps runs deterministic and fast.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _ray_log_on_process_stderr() -> None:
    """Ray's driver log handler (`ray._private.log.PlainRayHandler`, a StreamHandler) keeps
    the `sys.stderr` of its setup, under pytest the capture stream of the first test that
    started Ray, which pytest closes after it. A later test's `ray.init` then logs "Started a
    local Ray instance." into the closed stream, and logging prints "--- Logging error ---" and
    a traceback into that test's stderr (test_h206_backend_flags then
    test_h211_runtime_env_check in one process). As for absl above: the process's own stderr.
    Nothing to do until a test has imported Ray."""
    import logging
    import sys

    ray_log = sys.modules.get("ray._private.log")
    if ray_log is None:
        return
    for handler in logging.getLogger("ray").handlers:
        # Only Ray's own: pytest's capture handlers are StreamHandlers too
        if isinstance(handler, ray_log.PlainRayHandler) and handler.stream is not sys.__stderr__:
            handler.stream = sys.__stderr__  # not setStream: it flushes the old, closed stream


@pytest.fixture(autouse=True)
def _cwd_put_back() -> Iterator[None]:
    """Every test ends in the folder it started in: a test that changes it (os.chdir, not
    monkeypatch.chdir) and does not change it back would break the relative paths of the
    tests that run after it in the same xdist worker, in an order that varies (CI saw
    FileNotFoundError for bench/results/... after test_s55v's os.chdir)."""
    cwd = os.getcwd()
    yield
    if os.getcwd() != cwd:
        os.chdir(cwd)


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = Path(os.environ["PLUME_DATA"])
    if not (root / "mnist-t10k").exists():
        pytest.fail(f"test data missing at {root}; set PLUME_DATA")
    return root


@pytest.fixture
def default_sigint() -> Iterator[None]:
    """A test that sends itself SIGINT gets Python's handler, also in a process started with
    SIGINT ignored (a background job of a script or CI): tests/_sigint.py."""
    from tests._sigint import default_sigint as handled

    with handled():
        yield


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """`tests._export_cache.ExportCache` of this run: fixtures export a model once a run, each
    test gets a copy of the files (imported here lazily: torch is an optional extra)."""
    from tests._export_cache import ExportCache, run_cache_dir

    return ExportCache(run_cache_dir(tmp_path_factory))
