"""The `plume` command. Each package contributes subcommands from its private `_cli.py`."""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

__all__ = [
    "main",
    "build_parser",
    "debug_enabled",
    "HelpFormatter",
    "iter_parsers",
    "print_error",
    "when_help",
]

# Each module has `register(subparsers) -> None` and sets `func` on its parsers. Only the
# registration code runs for --help; the heavy imports happen inside the commands, and help
# text that needs one (the aggregator list, SecureConfig's defaults) is added by `when_help`.
_SUBCOMMAND_MODULES = (
    "mobile_sim._cli",
    "coordinator._cli",
    "sdk._cli",
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Wraps one-line descriptions, keeps multi-line text (the examples) as written, and
    appends `(default: X)` to an option's help unless the help already names its default."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return super()._fill_text(text, width, indent)
        return textwrap.fill(text, width, initial_indent=indent, subsequent_indent=indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            action.option_strings
            and action.default is not None
            and action.default is not False  # store_true flags; identity, so 0 still shows
            and action.default is not argparse.SUPPRESS
            and "token" not in action.dest  # a default read from the environment is a secret
            and "default" not in text
            and "%(default)" not in text
        ):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """argparse's parser, with a usage error that fits on a screen: a command with many
    options (`plume sim` has 60) shows a one-line usage and where the full one is, instead of
    a screenful above its error line, and help text completed by `when_help` hooks before it
    is first shown. Subcommand parsers are made of the same class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._help_hooks: list[Callable[[argparse.ArgumentParser], None]] = []

    def format_help(self) -> str:
        hooks, self._help_hooks = self._help_hooks, []
        for hook in hooks:
            hook(self)
        return super().format_help()

    def error(self, message: str) -> NoReturn:
        message += self._command_suggestion(message)
        usage = self.format_usage()
        if usage.count("\n") > 4:
            usage = f"usage: {self.prog} [OPTIONS] (`{self.prog} --help` lists them)\n"
        self.exit(2, f"{usage}{self.prog}: error: {message}\n")

    def _command_suggestion(self, message: str) -> str:
        """` (did you mean create-task?)` for a mistyped subcommand, as a mistyped option gets
        one (`_unrecognized`), else ""."""
        for action in self._actions:
            if not isinstance(action, argparse._SubParsersAction):
                continue
            prefix = f"argument {action.metavar or action.dest}: invalid choice: "
            if message.startswith(prefix):
                word = message[len(prefix) :].split(" (choose from", 1)[0].strip("'\"")
                close = difflib.get_close_matches(word, list(action.choices), n=1, cutoff=0.6)
                if close:
                    return f" (did you mean {close[0]}?)"
        return ""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("plume-fl")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


class _VersionAction(argparse._VersionAction):
    """`--version`, reading the installed version when asked (importlib.metadata is slow to
    import, and every other `plume` run builds this parser too)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        self.version = f"plume {_version()}"
        super().__call__(parser, *args, **kwargs)


def when_help(
    parser: argparse.ArgumentParser, hook: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Run `hook(parser)` just before `parser`'s help is first formatted, to complete its
    epilog or options' help with text that needs a slow import: building the parsers (every
    `plume` run builds all of them) then imports nothing for it. A parser of another class
    than `plume`'s (a test's own argparse parent) runs the hook at once."""
    if isinstance(parser, _Parser):
        parser._help_hooks.append(hook)
    else:
        hook(parser)


def iter_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """`parser` and every subcommand parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from iter_parsers(child)


# Kept as written by HelpFormatter (multi-line text); each example is checked to parse
# (tests/coordinator/test_h231_top_level_help.py).
_EXAMPLES = """\
examples:
  plume sim --dataset digits --rounds 30 --lr 0.2     # a simulated fleet, seconds long
  plume coordinator serve --db plume.db                # the HTTP coordinator
  plume coordinator create-task --model mlp --rounds 20   # token: $PLUME_ADMIN_TOKEN
  plume export --model mnist_cnn --out artifacts/mnist_cnn   # for devices without torch

Run `plume COMMAND --help` for the options and examples of one command. Errors print one
line; set PLUME_DEBUG=1 to see the Python traceback of an error too.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="plume",
        description=(
            "Plume: federated learning for phones and small devices, where the network is the "
            "scarce resource."
        ),
        epilog=_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # that package ships no commands in this build
            raise
        module.register(sub)
    for p in iter_parsers(parser):
        # One look for every command's help, and each command knows its own name for its
        # error lines (`plume coordinator serve: error: ...`); the deepest parser's wins.
        p.formatter_class = HelpFormatter
        p.set_defaults(_prog=p.prog)
    return parser


# PLUME_DEBUG values that mean off (after strip().lower()); anything else asks for tracebacks.
_DEBUG_OFF = frozenset({"", "0", "false", "no", "off"})


def debug_enabled() -> bool:
    """Whether PLUME_DEBUG asks for tracebacks: set to anything but "", "0", "false", "no"
    or "off" (any case, spaces around ignored)."""
    return os.environ.get("PLUME_DEBUG", "").strip().lower() not in _DEBUG_OFF


def print_error(prog: str, message: str) -> None:
    """The one line every `plume` command ends a user mistake with: `PROG: error: MESSAGE`.

    Called while an exception is being handled (`except ... as exc: print_error(...)`) with
    PLUME_DEBUG on, it prints that exception's traceback first, as `plume --help` promises for
    every error. The line and the caller's exit status stay as they are: a usage mistake is
    still status 2 under PLUME_DEBUG, which a service manager's "do not restart on 2" relies
    on. A mistake found without an exception (a flag check) prints its line alone."""
    handled = sys.exc_info()[1]
    if isinstance(handled, Exception) and debug_enabled():
        import traceback

        traceback.print_exception(handled, file=sys.stderr)
    print(f"{prog}: error: {message}", file=sys.stderr)


def _error_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    return text.splitlines()[0] if text else type(exc).__name__


# The simulator's worker errors, by (module, class): looked up in sys.modules, so neither the
# simulator nor Ray is imported to check (an error of a module never imported is none of them).
_WORKER_ERRORS = (
    ("mobile_sim.backends.process_pool", "PoolWorkerError"),
    ("mobile_sim.backends.ray_backend", "RayWorkerError"),
    ("ray.exceptions", "RayError"),  # an actor's exception (RayTaskError), a dead actor, ...
    ("mobile_sim.backends._base", "ModelFailed"),  # the model raised in this process
)


# `ModelFailed`'s line already names the model's own exception: a worker's traceback ends in
# it under its qualified name, which says nothing to a user.
_MODEL_FAILED = "ModelFailed"
_MODEL_FAILED_QUALIFIED = f"mobile_sim.backends._base.{_MODEL_FAILED}: "


def _worker_error_line(exc: BaseException) -> str | None:
    """The one line for a simulator worker's failure (`plume sim --backend pool|ray`), or None
    when `exc` is not one. The traceback a worker sends along is left for PLUME_DEBUG=1: the
    line keeps its last line (the exception itself)."""
    for module, name in _WORKER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            break
    else:
        return None
    cause = getattr(exc, "cause", None)  # RayTaskError: the actor's own exception
    if name == "RayError" and isinstance(cause, BaseException):
        said = _error_line(cause)
        if type(cause).__name__ != _MODEL_FAILED:  # its line names the model's exception
            said = f"{type(cause).__name__}: {said}"
        return _clause(f"a Ray actor failed: {said}")
    head, _, rest = str(exc).strip().partition("\n")
    lines = [line.strip() for line in rest.splitlines() if line.strip()]
    died = getattr(sys.modules.get("ray.exceptions"), "ActorDiedError", None)
    if isinstance(died, type) and isinstance(exc, died):
        if getattr(exc, "actor_init_failed", False) and lines:  # its __init__ raised
            return _clause(f"a Ray actor failed to start: {lines[-1]}")
        return _actor_died_line(lines)
    if head.endswith(":") and lines:  # "a worker failed:" and the worker's traceback
        return _clause(f"{head} {lines[-1].removeprefix(_MODEL_FAILED_QUALIFIED)}")
    return _clause(head) or type(exc).__name__


# Ray's reason in an ActorDiedError for an actor whose process died (an OOM kill, a crash,
# `os._exit`): after its first line ("The actor died unexpectedly before finishing this task.")
# and fields ("\tpid: N", "\tip: A", ...), "The actor is dead because its worker process has
# died. Worker exit type: ...".
_RAY_DEAD_BECAUSE = "The actor is dead because "


def _actor_died_line(lines: list[str]) -> str:
    """The line for Ray's ActorDiedError (`lines`: its message's lines after the first,
    stripped): which process died where, and Ray's reason, as one sentence ("a Ray actor died
    (pid 13403 on 192.0.2.2): its worker process has died"). Ray's first line alone ended in
    a full stop, and `plume sim` adds "; wrote its ... finished rounds" after the line."""
    fields = {key: value for key, sep, value in (line.partition(": ") for line in lines) if sep}
    place = [f"pid {fields['pid']}"] if "pid" in fields else []
    place += [fields["ip"]] if "ip" in fields else []
    where = f" ({' on '.join(place)})" if place else ""
    because = next((line for line in lines if line.startswith(_RAY_DEAD_BECAUSE)), "")
    why = because.removeprefix(_RAY_DEAD_BECAUSE).partition(". ")[0]
    return _clause(f"a Ray actor died{where}: {why}" if why else f"a Ray actor died{where}")


def _clause(text: str) -> str:
    """`text` without a full stop at its end (an ellipsis is kept): a worker's error line is
    printed as `PROG: error: LINE`, or followed by "; wrote its ... finished rounds"."""
    text = text.strip()
    return text[:-1] if text.endswith(".") and not text.endswith("..") else text


# The same setting under each command's name for it: `plume sim` and `plume coordinator
# create-task` grew their flags apart (a simulation's --per-round is a task's
# --clients-per-round; a task's secure noise flags carry a --secure- prefix). A flag of the
# other command is answered with this command's name for it, which the closest spelling can
# miss (create-task --per-round is closest to --rounds).
_SIM_PROG = "plume sim"
_TASK_PROG = "plume coordinator create-task"
_SAME_SETTING = (
    ("--per-round", "--clients-per-round"),
    ("--dp-noise", "--secure-noise"),
    ("--noise-multiplier", "--secure-noise-multiplier"),
    ("--group-size", "--secure-group-size"),
    ("--group-aggregator", "--secure-group-aggregator"),
)
OTHER_COMMANDS_NAME = {
    _SIM_PROG: {task: sim for sim, task in _SAME_SETTING},
    _TASK_PROG: dict(_SAME_SETTING),
}


# `plume sim report A B`: the report reads one folder, and runs are compared through a folder
# holding them (docs/simulator.md's `plume sim report runs/topk` sweep).
_REPORT_ONE_FOLDER = (
    " (`plume sim report` takes one run folder; to compare runs, give it a sweep folder, one "
    "holding each run's folder: `plume sim report runs/topk` for runs/topk/k0.01, "
    "runs/topk/k0.2, ...)"
)


def _unrecognized(
    parser: argparse.ArgumentParser,
    prog: str,
    extras: list[str],
    args: argparse.Namespace | None = None,
) -> NoReturn:
    """Refuse `extras` as the command they were typed for (`plume sim: error: ...`, with its
    usage), not as `plume`'s, and suggest that command's name for another command's flag
    (`OTHER_COMMANDS_NAME`), else its closest option. More folders after `plume sim report`'s
    one say so, under the report's usage, and how runs are compared."""
    command = next((p for p in iter_parsers(parser) if p.prog == prog), parser)
    message = f"unrecognized arguments: {' '.join(extras)}"
    report = prog == _SIM_PROG and getattr(args, "action", None) == "report"
    if report and not any(word.startswith("-") for word in extras):
        from mobile_sim._cli import _REPORT_HELP

        usage = _REPORT_HELP.splitlines()[0]  # usage: plume sim report [-h] RUN_DIR
        command.exit(2, f"{usage}\n{prog}: error: {message}{_REPORT_ONE_FOLDER}\n")
    options = [o for a in command._actions for o in a.option_strings if o.startswith("--")]
    for word in extras:
        if word.startswith("--"):
            flag = word.split("=", 1)[0]
            same = OTHER_COMMANDS_NAME.get(prog, {}).get(flag)
            if same in options:
                other = _TASK_PROG if prog == _SIM_PROG else _SIM_PROG
                message += f" ({flag} is {other}'s name; {prog} calls it {same})"
                break
            close = difflib.get_close_matches(flag, options, n=1, cutoff=0.6)
            if close:
                message += f" (did you mean {close[0]}?)"
            break
    command.error(message)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `plume ARGV`; returns the exit status (0 success, 2 usage error, 1 other errors)."""
    try:
        # Building the parsers imports every command's module: a Ctrl-C then was a
        # KeyboardInterrupt traceback and a SIGINT death.
        parser = build_parser()
        args, extras = parser.parse_known_args(argv)
    except KeyboardInterrupt:
        print("plume: interrupted", file=sys.stderr)
        return 130
    prog: Any = getattr(args, "_prog", "plume")
    if extras:
        _unrecognized(parser, prog, extras, args)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        # A command that knows what an interruption leaves behind says so itself.
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (`plume sim ... | head`): not the command's error.
        # stdout goes to /dev/null so that the flush at exit does not fail again; the status
        # is a SIGPIPE death's, as for other programs in a pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as exc:
        # A simulator's worker that failed, died or stalled (pool, Ray): one line, status 1.
        # Checked first: Ray's error for an actor's exception is also an instance of that
        # exception's class (a ValueError in an actor would pass for a usage mistake).
        worker = _worker_error_line(exc)
        if worker is not None:
            if debug_enabled():
                raise
            print_error(prog, worker)
            return 1
        if not isinstance(exc, (ValueError, OSError)):
            raise
        # The commands turn the mistakes they expect into sentences; this is the net under
        # them, so a bad value or an unreadable file still ends in one line, not a traceback.
        if debug_enabled():
            raise
        print_error(prog, _error_line(exc))
        return 2 if isinstance(exc, ValueError) else 1


if __name__ == "__main__":
    raise SystemExit(main())
