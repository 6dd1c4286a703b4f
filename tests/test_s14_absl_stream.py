"""A session that imports absl (dp_accounting does, lazily) in one test and starts a uvicorn
config (every ServerThread) inside a `capsys` test died with "lost sys.stderr": uvicorn's
logging dictConfig closed absl's handler, whose stream was pytest's capture stream. The
conftest points absl's handler at the process's stderr (`_absl_on_process_stderr`). This runs
two such tests in a fresh pytest with the suite's conftest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PAIR = """
import logging.config

def test_a_imports_absl():
    import absl.logging  # noqa: F401  (first import: under pytest's capture)

def test_b_configures_logging_inside_capsys(capsys):
    logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
    print("still writable")
    assert capsys.readouterr().out == "still writable\\n"
"""


def test_a_uvicorn_style_dictconfig_after_absl_keeps_the_capture_alive(tmp_path: Path) -> None:
    # Prepare: the pair inside a copy of the suite's conftest, so the fresh interpreter
    # imports absl for the first time inside test_a.
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tmp_path / "test_pair.py").write_text(PAIR)
    # Execute
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    # Assert
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
