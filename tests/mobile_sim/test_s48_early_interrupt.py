"""Stop 48, helper-407's review of the simulator: a Ctrl-C as `plume sim` started (while
`plume` builds its parsers, importing every command's module) printed a
KeyboardInterrupt traceback and the process died of SIGINT (status -2 to its parent). The
`plume` entry point (coordinator/cli.py's `main`) now catches it there too: one line, exit
status 130. (A Ctrl-C still earlier, while the interpreter itself starts and imports
coordinator/cli.py's standard-library modules, comes before any Plume code can catch it.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# A real SIGINT, sent by the process to itself while `plume` imports the commands' modules:
# Python raises KeyboardInterrupt as soon as os.kill returns, at the same point every time.
_INTERRUPTED_WHILE_IMPORTING = """\
import importlib
import os
import signal
import sys

import coordinator.cli as cli

real = importlib.import_module


def import_module(name, *args):
    if name == "mobile_sim._cli":
        os.kill(os.getpid(), signal.SIGINT)
    return real(name, *args)


importlib.import_module = import_module
sys.exit(cli.main(["sim", "--dataset", "digits", "--rounds", "1"]))
"""


def test_ctrl_c_while_plume_imports_its_commands_is_one_line_and_130() -> None:
    # Execute
    done = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_WHILE_IMPORTING],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )

    # Assert
    assert done.returncode == 130, done.stderr
    assert done.stderr == "plume: interrupted\n"
    assert done.stdout == ""
