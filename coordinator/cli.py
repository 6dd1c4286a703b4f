"""The `plume` command. Each package contributes subcommands from its private `_cli.py`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]

# (module, description) pairs; each module has `register(subparsers) -> None` and sets
# `func` on its parsers. Imported lazily-ish: only the registration code runs for --help.
_SUBCOMMAND_MODULES = (
    "mobile_sim._cli",
    "coordinator._cli",
    "sdk._cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plume",
        description=(
            "Plume: federated learning for phones and small devices, where the network is the "
            "scarce resource."
        ),
        epilog="Run `plume COMMAND --help` for the options of one command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # that package ships no commands in this build
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
