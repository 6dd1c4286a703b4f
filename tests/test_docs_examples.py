"""What a reader copies from README.md and docs/*.md: commands parse, code runs, names resolve."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator.cli import build_parser
from tests.coordinator.test_service_support import start_logged

__all__: list[str] = []

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))

# Broken examples in docs edited elsewhere (generated, or owned by another change in flight), as
# strict xfails: once the fix reaches the doc the xfail turns red, and the entry is removed.
# Keyed by (file, line of the example).
OWNED_ELSEWHERE: dict[tuple[str, int], str] = {}


def _python_child(
    args: list[str], *, cwd: Path, env: dict[str, str], timeout: float, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`python ARGS` in a child process, its output captured as text; the caller checks the
    exit status (so a failure shows what the child printed)."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# ---------------------------------------------------------------------------------------------
# Markdown scanning
# ---------------------------------------------------------------------------------------------

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<info>[^`\s]*)")


def _rel(path: Path) -> str:
    """A doc's path as the failure messages show it: relative to the repository."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its info string, and its lines (1-based numbers)."""

    path: Path
    line: int  # line of the opening fence
    lang: str
    lines: tuple[tuple[int, str], ...]

    @property
    def where(self) -> str:
        return f"{_rel(self.path)}:{self.line}"

    @property
    def code(self) -> str:
        return "\n".join(text for _, text in self.lines) + "\n"


def fenced_blocks(path: Path) -> list[Block]:
    """Fenced blocks of one Markdown file, de-indented when the fence sits in a list item."""
    blocks: list[Block] = []
    open_at: tuple[int, str, str, str] | None = None  # (line, fence, indent, info)
    body: list[tuple[int, str]] = []
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        m = _FENCE.match(text)
        if open_at is None:
            if m:
                open_at = (number, m["fence"], m["indent"], m["info"])
                body = []
            continue
        if m and m["fence"].startswith(open_at[1]) and not m["info"]:
            blocks.append(Block(path, open_at[0], open_at[3], tuple(body)))
            open_at = None
            continue
        indent = open_at[2]
        body.append((number, text[len(indent) :] if text.startswith(indent) else text))
    assert open_at is None, f"{_rel(path)}:{open_at[0]}: unclosed code fence"
    return blocks


def prose_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Lines outside fenced blocks."""
    inside: set[int] = set()
    for block in fenced_blocks(path):
        last = block.lines[-1][0] + 1 if block.lines else block.line + 1
        inside.update(range(block.line, last + 1))
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if number not in inside:
            yield number, text


def inline_code(path: Path) -> Iterator[tuple[int, str]]:
    """Inline code spans of the prose, with the line each starts on (spans may wrap a line)."""
    lines = list(prose_lines(path))
    # Join each paragraph so a span broken over two lines is read whole.
    paragraphs: list[list[tuple[int, str]]] = [[]]
    for number, text in lines:
        if text.strip():
            paragraphs[-1].append((number, text))
        else:
            paragraphs.append([])
    for para in paragraphs:
        if not para:
            continue
        joined = ""
        starts: list[tuple[int, int]] = []  # (offset, line number)
        for number, text in para:
            starts.append((len(joined), number))
            joined += text + "\n"
        for m in re.finditer(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", joined, re.S):
            line = max(n for off, n in starts if off <= m.start())
            yield line, " ".join(m.group(2).split())


# ---------------------------------------------------------------------------------------------
# Shell command lines
# ---------------------------------------------------------------------------------------------

# A word standing for "your value here" (RUN_DIR, <path>, ...): such a command is a syntax
# sketch, checked by the parser only.
_PLACEHOLDER = re.compile(r"(^|[^A-Za-z0-9_])([A-Z][A-Z0-9]*_?[A-Z0-9_]*|<[^>]*>|\.\.\.)($|[:/])")

PLUME = ("plume", ".venv/bin/plume")
PYTHONS = ("python", "python3", ".venv/bin/python", ".venv/bin/python3")
_SHELL_LANGS = ("sh", "bash", "shell", "console")
_PLAIN_LANGS = ("", "text")  # may hold commands (privacy.md) or prose; unsplittable lines skipped


@dataclass(frozen=True)
class Command:
    """One simple command from a doc, as words after shell-style splitting."""

    where: str
    words: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.where}: {shlex.join(self.words)}"

    @property
    def line(self) -> int:
        return int(self.where.rsplit(":", 1)[1])


def _strip_comment(line: str) -> str:
    """Drop a shell comment: `#` at the start of a word, outside quotes."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def _logical_lines(block: Block) -> Iterator[tuple[int, str]]:
    """Lines with `\\` continuations joined and `$ ` prompts and comments dropped."""
    pending = ""
    start = 0
    for number, raw in block.lines:
        text = raw
        if not pending:
            start = number
            stripped = text.lstrip()
            if stripped.startswith("$ "):
                text = stripped[2:]
        text = _strip_comment(text).rstrip()
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        yield start, pending + text
        pending = ""
    if pending:
        yield start, pending


def _substitute(line: str) -> str:
    """`$(...)` command substitutions (nested parentheses included) replaced by `SUBST`."""
    out, i = "", 0
    while (start := line.find("$(", i)) >= 0:
        depth, j = 0, start + 1
        while j < len(line):
            depth += {"(": 1, ")": -1}.get(line[j], 0)
            if depth == 0:
                break
            j += 1
        out += line[i:start] + "SUBST"
        i = j + 1
    return out + line[i:]


def _split_commands(line: str) -> list[list[str]]:
    """Simple commands of one shell line (split at ; & && || |), `$(...)` made one word."""
    line = _substitute(line)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = ""
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token and set(token) <= set(";&|"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def _unwrap(words: list[str]) -> list[str]:
    """The command behind leading `VAR=value` assignments, `nice [-n N]` and `time`."""
    while words:
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            words = words[1:]
        elif words[0] == "time":
            words = words[1:]
        elif words[0] == "nice":
            words = words[3:] if words[1:2] == ["-n"] else words[1:]
        else:
            break
    return words


def shell_commands(path: Path) -> list[Command]:
    """Every simple command in the shell-like fenced blocks of one file.

    A `for VAR in A B; do ... done` loop is unrolled: each body command once per value.
    """
    out: list[Command] = []
    rel = _rel(path)
    for block in fenced_blocks(path):
        if block.lang not in _SHELL_LANGS + _PLAIN_LANGS:
            continue
        loops: list[tuple[str, list[str]]] = []
        for number, line in _logical_lines(block):
            try:
                commands = _split_commands(line)
            except ValueError as exc:  # an unclosed quote
                if block.lang in _PLAIN_LANGS:
                    continue
                raise AssertionError(f"{rel}:{number}: not a shell line: {exc}") from exc
            for words in commands:
                if words[0] == "for" and len(words) >= 3 and words[2] == "in":
                    loops.append((words[1], words[3:]))
                    continue
                if words == ["done"]:
                    loops.pop()
                    continue
                if words[0] == "do":
                    words = words[1:]
                words = _unwrap(words)
                if not words:
                    continue
                variants = [words]
                for var, values in loops:
                    pattern = re.compile(r"\$(?:\{" + var + r"\}|" + var + r"\b)")
                    variants = [[pattern.sub(v, w) for w in ws] for ws in variants for v in values]
                out.extend(Command(f"{rel}:{number}", tuple(ws)) for ws in variants)
    return out


def inline_commands(path: Path) -> list[Command]:
    """Inline code spans of the prose that are a whole `plume ...` or `python bench/...` line."""
    rel = _rel(path)
    out: list[Command] = []
    for number, span in inline_code(path):
        try:
            commands = _split_commands(_strip_comment(span))
        except ValueError:  # prose in backticks, not a command
            continue
        for words in commands:
            words = _unwrap(words)
            # A bare `plume` in prose names the program; with arguments it is a command line,
            # unless it quotes the CLI's own output (`plume sim: error: ...`).
            if len(words) >= 2 and words[1].endswith(":"):
                continue
            if len(words) >= 2 and (words[0] in PLUME or _bench_script(words) is not None):
                out.append(Command(f"{rel}:{number}", tuple(words)))
    return out


def _bench_script(words: tuple[str, ...] | list[str]) -> str | None:
    if len(words) >= 2 and words[0] in PYTHONS and words[1].startswith("bench/"):
        return words[1]
    return None


def makefile_commands() -> list[Command]:
    """The `plume` and bench command lines the Makefile's recipes run (`make demo`, `make bench`,
    `make bench-quick` are README examples too): `$(BIN)/` dropped, the BENCHES loop unrolled."""
    lines: list[tuple[int, str]] = []  # (first line number, continuation lines joined)
    pending, start = "", 0
    for number, raw in enumerate((ROOT / "Makefile").read_text().splitlines(), start=1):
        if not pending:
            start = number
        if raw.endswith("\\"):
            pending += raw[:-1] + " "
            continue
        lines.append((start, pending + raw))
        pending = ""
    benches = next((line.split("=", 1)[1] for _, line in lines if line.startswith("BENCHES")), "")
    assert benches.split(), "the Makefile lost its BENCHES list"
    out: list[Command] = []
    for number, line in lines:
        if not line.startswith("\t"):
            continue
        for m in re.finditer(r"\$\(BIN\)/plume\b([^;|&]*)", line):
            out.append(Command(f"Makefile:{number}", ("plume", *shlex.split(m[1]))))
        for m in re.finditer(r"\$\(BIN\)/python bench/\$\$b\.py([^;|&]*)", line):
            out.extend(
                Command(f"Makefile:{number}", ("python", f"bench/{b}.py", *shlex.split(m[1])))
                for b in benches.split()
            )
    return out


ALL_COMMANDS = [
    *(c for doc in DOCS for c in shell_commands(doc) + inline_commands(doc)),
    *makefile_commands(),
]
PLUME_COMMANDS = [c for c in ALL_COMMANDS if c.words[0] in PLUME]
BENCH_COMMANDS = [c for c in ALL_COMMANDS if _bench_script(c.words) is not None]


def _params(commands: list[Command]) -> list[object]:
    params: list[object] = []
    for c in commands:
        marks = []
        reason = OWNED_ELSEWHERE.get((c.where.rsplit(":", 1)[0], c.line))
        if reason is not None:
            marks.append(pytest.mark.xfail(strict=True, reason=reason))
        params.append(pytest.param(c, id=str(c)[:120], marks=marks))
    return params


def plume_parse_error(argv: list[str]) -> str | None:
    """Why `plume ARGV` does not parse with the real parser (built as coordinator/cli.py builds
    it), or None when it does. `--help` parses (it exits 0); naming no subcommand does not."""
    parser = build_parser()
    stderr = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:
            return None if exc.code == 0 else stderr.getvalue().strip().splitlines()[-1]
    return None if getattr(args, "func", None) is not None else "no subcommand"


_SAMPLE_DOC = """\
Run `plume sim --rounds 2` (or `plume` itself) and `make lint`.

```sh
$ plume sim --dataset digits \\
    --rounds 2   # a comment, not --flags
for f in 0.1 0.2; do
  python bench/robustness.py --backdoor-malicious $f --name run_$(echo $f | tr -d .)
done
PLUME_DATA=/data nice -n 10 plume coordinator serve --db x.db &
export T=$(python -c "print(hex(1))") && plume --help
```

```python
print(2 + 3)
# 5
```
"""


def test_the_scanner_reads_prompts_continuations_loops_and_inline_code(tmp_path: Path) -> None:
    # Prepare
    doc = tmp_path / "sample.md"
    doc.write_text(_SAMPLE_DOC)

    # Execute
    blocks = fenced_blocks(doc)
    commands = [c.words for c in shell_commands(doc)]
    inline = [c.words for c in inline_commands(doc)]

    # Assert
    assert [b.lang for b in blocks] == ["sh", "python"]
    assert commands == [
        ("plume", "sim", "--dataset", "digits", "--rounds", "2"),
        ("python", "bench/robustness.py", "--backdoor-malicious", "0.1", "--name", "run_SUBST"),
        ("python", "bench/robustness.py", "--backdoor-malicious", "0.2", "--name", "run_SUBST"),
        ("plume", "coordinator", "serve", "--db", "x.db"),
        ("export", "T=SUBST"),
        ("plume", "--help"),
    ]
    assert inline == [("plume", "sim", "--rounds", "2")]
    assert stated_output(blocks[1]) == ["5"]


def test_the_parse_check_refuses_what_plume_refuses() -> None:
    assert plume_parse_error(["sim", "--dataset", "digits", "--rounds", "2"]) is None
    assert plume_parse_error(["--help"]) is None
    assert "unrecognized arguments: --bogus" in str(plume_parse_error(["sim", "--bogus"]))
    assert "invalid choice" in str(plume_parse_error(["simulate"]))
    assert "invalid int value" in str(plume_parse_error(["sim", "--rounds", "N"]))
    assert plume_parse_error([]) == "no subcommand"


def test_the_docs_show_commands() -> None:
    # Guards the scanner itself: a regex slip must not turn every check below into a no-op.
    assert len(PLUME_COMMANDS) >= 20
    assert len(BENCH_COMMANDS) >= 20
    assert any(c.where.startswith("README.md") for c in PLUME_COMMANDS)


@pytest.mark.parametrize("command", _params(PLUME_COMMANDS))
def test_plume_command_parses(command: Command) -> None:
    # Execute
    error = plume_parse_error(list(command.words[1:]))

    # Assert
    assert error is None, f"{command}\n{error}"


# ---------------------------------------------------------------------------------------------
# bench/*.py command lines
# ---------------------------------------------------------------------------------------------

# Each bench builds its parser inside main(argv) and parses before doing any work. This runs in
# a child process: it imports the script, makes ArgumentParser.parse_args raise right after a
# successful parse (carrying the parsed options), and calls main(argv), so every flag and value
# is checked by the script's own parser and nothing is benchmarked. Aggregator and attack specs
# among the options are then built (test_bench_command_parses); other checks a bench makes after
# parsing are not covered.
_BENCH_PROBE = textwrap.dedent(
    """
    import argparse, contextlib, importlib.util, io, json, sys

    class Parsed(Exception):
        pass

    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        flags = [o for action in self._actions for o in action.option_strings]
        raise Parsed(vars(original(self, args, namespace)), flags)

    argparse.ArgumentParser.parse_args = parse_then_stop
    results = []
    modules = {}
    for script, argv in json.load(sys.stdin):
        if script not in modules:
            spec = importlib.util.spec_from_file_location("doc_bench_" + str(len(modules)), script)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            modules[script] = module
        err = io.StringIO()
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                modules[script].main(argv)
        except Parsed as parsed:
            results.append([True, "", parsed.args[0], parsed.args[1]])
        except SystemExit as exc:
            results.append([exc.code == 0, err.getvalue(), None, []])
        else:
            results.append([False, "main() returned without parsing its arguments", None, []])
    json.dump(results, sys.stdout, default=str)
    """
)


# (accepted, the parser's message, the parsed options as JSON, every flag the script's parser
# has) for one bench command line.
_Probed = tuple[bool, str, dict[str, object] | None, list[str]]

# Two known answers ride along with the docs' commands, so the probe is seen to refuse.
_PROBE_CONTROLS = (
    ("bench/codec.py", ("--quick",), True),
    ("bench/codec.py", ("--no-such-flag",), False),
)


@pytest.fixture(scope="module")
def bench_parse_results() -> dict[tuple[str, tuple[str, ...]], _Probed]:
    """The probe's answer per (script, argv), for every bench command whose script exists and
    for the controls."""
    jobs = sorted(
        {(c.words[1], c.words[2:]) for c in BENCH_COMMANDS if (ROOT / c.words[1]).is_file()}
        | {(script, argv) for script, argv, _ in _PROBE_CONTROLS}
    )
    proc = _python_child(
        ["-c", _BENCH_PROBE],
        input=json.dumps([[script, list(argv)] for script, argv in jobs]),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    return {
        job: (bool(ok), str(msg), options, list(flags))
        for job, (ok, msg, options, flags) in zip(jobs, results, strict=True)
    }


def test_the_bench_probe_refuses_an_unknown_flag(
    bench_parse_results: dict[tuple[str, tuple[str, ...]], _Probed],
) -> None:
    for script, argv, accepted in _PROBE_CONTROLS:
        assert bench_parse_results[(script, argv)][0] is accepted, (script, argv)
    assert (
        "unrecognized arguments: --no-such-flag" in bench_parse_results[_PROBE_CONTROLS[1][:2]][1]
    )


# Bench options whose values are aggregator or attack specs, built to prove they are valid.
_AGGREGATOR_OPTIONS = ("aggregator", "aggregators", "clean_only", "backdoor_defenses", "arms")
_ATTACK_OPTIONS = ("attack", "attacks", "backdoor_attacks")


@pytest.mark.parametrize("command", _params(BENCH_COMMANDS))
def test_bench_command_parses(
    command: Command,
    bench_parse_results: dict[tuple[str, tuple[str, ...]], _Probed],
) -> None:
    from coordinator.aggregators import build_aggregator
    from mobile_sim.attacks import build_attack

    # Prepare
    script = ROOT / command.words[1]
    assert script.is_file(), f"{command}: no such script {command.words[1]}"

    # Execute
    ok, message, options, _ = bench_parse_results[(command.words[1], command.words[2:])]

    # Assert: parsed, and the specs it names build (a placeholder such as `...` is not built).
    assert ok, f"{command}\n{message}"
    for key, value in (options or {}).items():
        specs = value if isinstance(value, list) else [value]
        for spec in specs:
            if not isinstance(spec, str) or _PLACEHOLDER.search(spec):
                continue
            if key in _AGGREGATOR_OPTIONS:
                build_aggregator(spec.partition("@")[0])  # server_opt's arms: SPEC@SERVER_LR
            elif key in _ATTACK_OPTIONS:
                build_attack(spec)


# ---------------------------------------------------------------------------------------------
# What the parsed `plume` commands ask for is valid, not only well-formed
# ---------------------------------------------------------------------------------------------

# `--help` asks for no run (test_plume_command_parses checks that it exits 0).
CONCRETE_PLUME = [
    c
    for c in PLUME_COMMANDS
    if len(c.words) > 2
    and not any(_PLACEHOLDER.search(w) for w in c.words[1:])
    and not {"--help", "-h"}.intersection(c.words[1:])
]


class _FakeAdmin:
    """Stands in for AdminClient: the task is checked as the coordinator would, not sent."""

    def __init__(self) -> None:
        self.created: list[object] = []

    def __enter__(self) -> _FakeAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def create_task(self, config: object, params: object) -> int:
        from coordinator.service.rounds import validate_task

        validate_task(config)  # type: ignore[arg-type]
        self.created.append(config)
        return 1


@pytest.mark.parametrize("command", _params(CONCRETE_PLUME))
def test_plume_command_asks_for_a_valid_run(
    command: Command, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`plume sim` builds a valid SimConfig, aggregator and attack; `create-task` a valid task."""
    from coordinator.aggregators import build_aggregator
    from mobile_sim.models import MODELS

    # Prepare
    refusal = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(refusal):
            args = build_parser().parse_args(list(command.words[1:]))
    except SystemExit as exc:
        pytest.fail(f"{command}: does not parse (exit {exc.code})\n{refusal.getvalue()}")

    # Execute + Assert
    model = getattr(args, "model", None)
    if model is not None:
        assert model in MODELS, f"{command}: no zoo model {model!r}"
    if args.command == "sim" and args.action == "run":
        from mobile_sim import _cli as sim_cli
        from mobile_sim.attacks import build_attack

        cfg = sim_cli.config_from_args(args)
        assert cfg.model_name in MODELS, f"{command}: no zoo model {cfg.model_name!r}"
        build_aggregator(cfg.aggregator)
        if cfg.attack:
            build_attack(cfg.attack)
        if args.secure:
            sim_cli._secure_config(args, cfg)
    elif args.command == "coordinator" and args.func.__name__ == "_create_task":
        from coordinator import _cli as coord_cli

        admin = _FakeAdmin()
        monkeypatch.setattr(coord_cli, "_admin", lambda _args: admin)
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = args.func(args)
        assert code == 0 and len(admin.created) == 1, f"{command}\n{err.getvalue()}"


# ---------------------------------------------------------------------------------------------
# Python blocks
# ---------------------------------------------------------------------------------------------

_HTTP_API_EMBEDDING = (
    "docs/http-api.md",
    'with Client("http://127.0.0.1:8080", app_dir="plume-app") as client:',
)

# Python blocks this file does not run, each with why. Keyed by (file, a line of the block that
# names it); every key must still match exactly one block (test_skip_lists_match_the_docs).
NOT_RUN_HERE: dict[tuple[str, str], str] = {
    # README.md, first line `import numpy as np` (the SDK in ten lines)
    ("README.md", 'with Client("http://127.0.0.1:8080", app_dir="plume-app") as client:'): (
        "needs a coordinator on :8080; tests/sdk/test_client.py::"
        "test_readme_example_runs_as_written runs it against a loopback one and keeps this copy "
        "identical to docs/http-api.md's"
    ),
    # docs/http-api.md, first line `import numpy as np` (embedding the SDK)
    _HTTP_API_EMBEDDING: (
        "needs a coordinator on :8080; tests/sdk/test_client.py::"
        "test_readme_example_runs_as_written runs it against a loopback one"
    ),
    # docs/http-api.md, first line `import threading` (secure task over HTTP)
    ("docs/http-api.md", 'with ServerThread(ServiceConfig(db_path="secure.db"'): (
        "run verbatim, printed output checked, by tests/sdk/test_client_secure.py::"
        "test_docs_secure_example_runs_as_written"
    ),
    # docs/devices.md, first line `import numpy as np` (a device on onnxruntime)
    ("docs/devices.md", "report = client.participate(trainer, x, y)  # check in"): (
        "needs a coordinator on :8080 and exported artifacts; tests/sdk/test_ort_device_loop.py "
        "runs it verbatim in a torch-free process against a loopback one"
    ),
    # docs/devices.md, first line `import threading` (the participation loop)
    ("docs/devices.md", "def serve_latest(client):"): (
        "needs a coordinator on :8080 with its task; tests/sdk/test_s51_device_loop_doc.py runs "
        "it verbatim against a loopback one"
    ),
    # docs/devices.md, first line `import numpy as np` (OrtDevice without a server)
    ("docs/devices.md", "device = OrtDevice(trainer, x, y"): (
        "needs artifacts/mlp from `plume export`; tests/sdk/test_ort_device_loop.py exports them "
        "and runs it verbatim"
    ),
    # docs/wire-format.md, first line `import numpy as np` (both blocks)
    ("docs/wire-format.md", "ef = ErrorFeedback(spec.size)"): (
        "run by tests/compression/test_package.py::test_wire_format_doc_example_runs"
    ),
    ("docs/wire-format.md", "assert frame.hex() == ("): (
        "run by tests/compression/test_package.py::test_wire_format_doc_example_runs"
    ),
}

# Run, but only in `make test-all`: (file, a line of the block) -> marks.
SLOW_BLOCKS: dict[tuple[str, str], tuple[pytest.MarkDecorator, ...]] = {
    # trains 50 digits devices twice, ~25 s on a busy 2-core machine
    ("docs/simulator.md", 'for name in ("sequential", "vectorized"):'): (pytest.mark.slow,),
    # starts a local Ray runtime, ~10 s
    ("docs/simulator.md", 'ray.init(address="local", num_cpus=2, include_dashboard=False)'): (
        pytest.mark.slow,
        pytest.mark.ray,
    ),
}

PYTHON_BLOCKS = [b for doc in DOCS for b in fenced_blocks(doc) if b.lang in ("python", "py")]


def _matches(block: Block, key: tuple[str, str]) -> bool:
    return _rel(block.path) == key[0] and any(key[1] in text for _, text in block.lines)


def _python_params() -> list[object]:
    params: list[object] = []
    for block in PYTHON_BLOCKS:
        marks: list[pytest.MarkDecorator] = []
        for key, why in NOT_RUN_HERE.items():
            if _matches(block, key):
                marks.append(pytest.mark.skip(reason=why))
        for key, slow in SLOW_BLOCKS.items():
            if _matches(block, key):
                marks.extend(slow)
        rel = _rel(block.path)
        reason = OWNED_ELSEWHERE.get((rel, block.line))
        if reason is not None:
            marks.append(pytest.mark.xfail(strict=True, reason=reason))
        first = next((t for _, t in block.lines if t.strip()), "")
        params.append(pytest.param(block, id=f"{block.where}: {first}"[:100], marks=marks))
    return params


def stated_output(block: Block) -> list[str]:
    """Lines of output the doc states: comment lines right under a one-line `print(...)`."""
    out: list[str] = []
    lines = [t for _, t in block.lines]
    for i, text in enumerate(lines):
        stripped = text.strip()
        if not (stripped.startswith("print(") and stripped.count("(") == stripped.count(")")):
            continue
        indent = text[: len(text) - len(text.lstrip())]
        for follow in lines[i + 1 :]:
            if not follow.startswith(indent + "# "):
                break
            out.append(follow[len(indent) + 2 :].strip())
    return out


def test_skip_lists_match_the_docs() -> None:
    # A renamed block must not leave a stale entry that silently stops applying.
    for key in [*NOT_RUN_HERE, *SLOW_BLOCKS]:
        hits = [b.where for b in PYTHON_BLOCKS if _matches(b, key)]
        assert len(hits) == 1, f"{key} matches {hits or 'no block'}"
    assert len(PYTHON_BLOCKS) >= 10
    # An OWNED_ELSEWHERE entry whose line no longer holds an example was fixed: remove it.
    places = {c.where for c in ALL_COMMANDS} | {b.where for b in PYTHON_BLOCKS}
    for doc, line in OWNED_ELSEWHERE:
        assert f"{doc}:{line}" in places, f"OWNED_ELSEWHERE {doc}:{line} is stale: remove it"


@pytest.mark.parametrize("block", _python_params())
def test_python_block_runs(block: Block, tmp_path: Path) -> None:
    """The block runs as written in a fresh interpreter in an empty folder, and prints what the
    doc says it prints (where the doc gives the output as comment lines under a print)."""
    # Prepare: a scratch folder (blocks write artifacts/, *.db) and one thread per library.
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }

    # Execute
    proc = _python_child(
        ["-c", block.code],
        cwd=tmp_path,
        env=env,
        timeout=300,
    )

    # Assert
    assert proc.returncode == 0, f"{block.where}\n{proc.stderr[-3000:]}"
    printed = [line.strip() for line in proc.stdout.splitlines()]
    for expected in stated_output(block):
        assert expected in printed, f"{block.where}: doc says {expected!r}, printed {printed}"


# ---------------------------------------------------------------------------------------------
# make targets
# ---------------------------------------------------------------------------------------------


def makefile_targets() -> set[str]:
    """Explicit target names of the Makefile (not variables, not pattern rules)."""
    targets: set[str] = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-][A-Za-z0-9_.\- ]*):(?!=)", line)
        if m:
            targets.update(m.group(1).split())
    return targets


MAKE_COMMANDS = [c for c in ALL_COMMANDS if c.words[0] == "make"] + [
    Command(f"{_rel(doc)}:{n}", tuple(words))
    for doc in DOCS
    for n, span in inline_code(doc)
    for words in [_unwrap(span.split())]
    if words[:1] == ["make"]
]


@pytest.mark.parametrize("command", _params(MAKE_COMMANDS))
def test_make_target_exists(command: Command) -> None:
    # Prepare
    targets = makefile_targets()
    assert {"test", "demo", "lint"} <= targets  # the scanner reads this Makefile

    # Execute + Assert
    named = [w for w in command.words[1:] if not w.startswith("-") and "=" not in w]
    assert named, f"{command}: no target"
    for target in named:
        assert target in targets, f"{command}: the Makefile has no target {target!r}"


# ---------------------------------------------------------------------------------------------
# Relative links
# ---------------------------------------------------------------------------------------------


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation removed,
    spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, duplicates numbered as GitHub does."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for _, text in prose_lines(path):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", text)
        if not m:
            continue
        slug = github_slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def relative_links(path: Path) -> Iterator[tuple[int, str]]:
    """Targets of the Markdown links of the prose (inline code stripped first)."""
    for number, text in prose_lines(path):
        text = re.sub(r"(`+).*?\1", "", text)
        for m in re.finditer(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text):
            target = m.group(1)
            if not re.match(r"^[a-z][a-z0-9+.\-]*:", target):  # http:, https:, mailto:
                yield number, target


LINKS = [(f"{_rel(doc)}:{n}", doc, target) for doc in DOCS for n, target in relative_links(doc)]


def test_the_docs_link_to_each_other() -> None:
    assert len(LINKS) >= 20  # the scanner found the README's documentation list
    assert github_slug("Distributed DP (optional, per task)") == "distributed-dp-optional-per-task"
    assert github_slug("`plume sim` and [Ray](https://ray.io)") == "plume-sim-and-ray"


@pytest.mark.parametrize(("where", "doc", "target"), LINKS, ids=[f"{w} {t}" for w, _, t in LINKS])
def test_relative_link_resolves(where: str, doc: Path, target: str) -> None:
    # Prepare
    file_part, _, anchor = target.partition("#")
    dest = (doc.parent / file_part).resolve() if file_part else doc

    # Execute + Assert
    assert dest.exists(), f"{where}: {target} -> no such file {dest}"
    assert ROOT in dest.parents or dest == ROOT, f"{where}: {target} leaves the repository"
    if anchor:
        assert dest.suffix == ".md", f"{where}: {target}: anchor into a non-Markdown file"
        assert anchor in anchors(dest), f"{where}: {target}: no heading with anchor #{anchor}"


# ---------------------------------------------------------------------------------------------
# Repository paths named in the prose, and the files bench commands read
# ---------------------------------------------------------------------------------------------

# `bench/results/codec.json`, `sdk/ort/`, `bench/results/server_opt_seed*.json`: a path into the
# repository in inline code names something a reader will open. Outputs (runs/, artifacts/) are
# made by the commands, so they are not checked.
_REPO_PATH = re.compile(
    r"(bench|docs|tests|compression|coordinator|sdk|mobile_sim|protocol)/[\w./*-]*"
)
REPO_PATHS = [
    (f"{_rel(doc)}:{n}", span)
    for doc in DOCS
    for n, span in inline_code(doc)
    if _REPO_PATH.fullmatch(span)
]


def test_the_docs_name_repository_paths() -> None:
    assert len(REPO_PATHS) >= 30


@pytest.mark.parametrize(("where", "path"), REPO_PATHS, ids=[f"{w} {p}" for w, p in REPO_PATHS])
def test_repository_path_exists(where: str, path: str) -> None:
    # Execute + Assert: a glob must match something, a plain path must exist.
    found = list(ROOT.glob(path)) if "*" in path else [ROOT / path]
    assert found and all(p.exists() for p in found), f"{where}: {path} does not exist"


def _bench_outputs(words: tuple[str, ...]) -> set[str]:
    """Result files a bench command writes: its --out file, or robustness.py's --name stem."""
    out: set[str] = set()
    for flag, value in zip(words, words[1:], strict=False):
        if flag == "--out" and value.endswith(".json"):
            out.add(value)
        elif flag == "--name":
            out.add(f"bench/results/{value}.json")
    return out


@pytest.mark.parametrize("doc", DOCS, ids=[_rel(d) for d in DOCS])
def test_bench_commands_read_files_that_exist(doc: Path) -> None:
    """A result file a command reads (--merge, --plain-from, ...) is committed, or written by an
    earlier command of the same page."""
    # Prepare
    made: set[str] = set()
    commands = sorted(
        (c for c in BENCH_COMMANDS if c.where.startswith(f"{_rel(doc)}:")),
        key=lambda c: c.line,
    )

    # Execute + Assert
    for command in commands:
        reads = {w for w in command.words[2:] if w.startswith("bench/results/")}
        for path in sorted(reads - _bench_outputs(command.words)):
            assert (ROOT / path).exists() or path in made, f"{command}: reads missing {path}"
        made |= _bench_outputs(command.words)


# ---------------------------------------------------------------------------------------------
# The by-hand recipes of http-api.md and operations.md, end to end through the real `plume`
# ---------------------------------------------------------------------------------------------


def _localize(words: tuple[str, ...], port: int) -> list[str]:
    """A doc's coordinator command, moved to this test: a scratch database, loopback, the
    test's port (the docs use /var/lib/plume, 0.0.0.0 and 8080; `serve` gets 0, and the port
    it got comes from its log), and `--port`/`--url` where missing."""
    out: list[str] = []
    for i, word in enumerate(words):
        flag = words[i - 1] if i else ""
        if flag == "--db":
            word = "plume.db"
        elif flag == "--host":
            word = "127.0.0.1"
        elif flag == "--port":
            word = str(port)
        out.append(word.replace("http://127.0.0.1:8080", f"http://127.0.0.1:{port}"))
    if words[:3] == ("plume", "coordinator", "serve"):
        if "--port" not in words:
            out += ["--port", str(port)]
    elif words[:2] == ("plume", "coordinator") and "--url" not in words:
        out += ["--url", f"http://127.0.0.1:{port}"]
    return out


@contextlib.contextmanager
def _serving(serve: tuple[str, ...], cwd: Path, env: dict[str, str]) -> Iterator[int]:
    """Run a doc's `plume coordinator serve` line (localized, on port 0) until the block exits;
    the port it got, once /healthz answers there."""
    # The server imports torch first; on a busy machine that takes seconds.
    _url, server = start_logged(
        [sys.executable, "-m", "coordinator.cli", *_localize(serve, 0)[1:]],
        cwd / "serve.log",
        timeout=120,
        cwd=cwd,
        env=env,
    )
    try:
        yield int(_url.rsplit(":", 1)[1])
    finally:
        server.terminate()
        server.wait(timeout=30)


def _plume(words: tuple[str, ...], port: int, cwd: Path, env: dict[str, str]) -> str:
    """Run a doc's `plume ...` line (localized); its stdout, or fail with its stderr."""
    proc = _python_child(
        ["-m", "coordinator.cli", *_localize(words, port)[1:]],
        cwd=cwd,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, f"`{shlex.join(words)}`\n{proc.stderr[-3000:]}"
    return proc.stdout


def _recipe(doc: Path, after: str) -> list[tuple[str, ...]]:
    """The commands of the first fenced block after the line containing `after`."""
    text = doc.read_text()
    line = text[: text.index(after)].count("\n") + 1
    block = next(b for b in fenced_blocks(doc) if b.line > line)
    last = block.lines[-1][0]
    return [c.words for c in shell_commands(doc) if block.line < c.line <= last]


@pytest.mark.slow
def test_http_api_recipe_runs_by_hand(tmp_path: Path) -> None:
    """`plume coordinator serve &`, `plume coordinator create-task ...`, `python example.py` (the
    embedding block), as docs/http-api.md says, on the port `--port 0` got instead of 8080."""
    # Prepare: the recipe's commands and the example they run, from the doc itself.
    doc = ROOT / "docs" / "http-api.md"
    serve, create, run = _recipe(doc, "To run it by hand:")
    assert serve[:3] == ("plume", "coordinator", "serve") and create[2] == "create-task"
    assert run == ("python", "example.py")
    example = next(b for b in PYTHON_BLOCKS if _matches(b, _HTTP_API_EMBEDDING))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    with _serving(serve, tmp_path, env) as port:
        url = f"http://127.0.0.1:{port}"
        (tmp_path / "example.py").write_text(example.code.replace("http://127.0.0.1:8080", url))
        # Execute
        created = _plume(create, port, tmp_path, env)
        ran = _python_child(
            ["example.py"],
            cwd=tmp_path,
            env=env,
            timeout=180,
        )

    # Assert
    assert json.loads(created)["task_id"] == 1
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "accepted=True" in ran.stdout and "num_examples=64" in ran.stdout, ran.stdout


@pytest.mark.slow
def test_operations_quick_start_runs(tmp_path: Path) -> None:
    """docs/operations.md's first block: the admin token from the environment, serve,
    create-task, status, pause (and the `resume` its comment names)."""
    import secrets

    # Prepare
    doc = ROOT / "docs" / "operations.md"
    commands = _recipe(doc, "## Running it")
    serve, create, status, pause = (c for c in commands if c[0] in PLUME)
    assert [c[2] for c in (create, status, pause)] == ["create-task", "status", "pause"]
    assert any(c[:2] == ("export", "PLUME_ADMIN_TOKEN=SUBST") for c in commands)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "PLUME_ADMIN_TOKEN": secrets.token_hex(16),  # what the block's `export` line does
    }

    with _serving(serve, tmp_path, env) as port:
        # Execute
        created = json.loads(_plume(create, port, tmp_path, env))
        shown = json.loads(_plume(status, port, tmp_path, env))
        paused = json.loads(_plume(pause, port, tmp_path, env))
        resumed = json.loads(_plume((*pause[:2], "resume", *pause[3:]), port, tmp_path, env))

    # Assert
    assert created["task_id"] == 1 and created["model"] == "mnist_cnn"
    assert shown["task"]["task_id"] == 1 and shown["rounds"] == []
    assert paused["state"] == "paused" and resumed["state"] != "paused"


# ---------------------------------------------------------------------------------------------
# Python names the prose points at
# ---------------------------------------------------------------------------------------------

# `sdk.ort.OrtDevice.run_round`, `coordinator.cli:main`, `RoundEngine(...)` after a package
# path: inline code that starts with a dotted path into one of the packages names an API a reader
# will look up. The dotted part must resolve (a call's arguments are not checked).
_DOTTED = re.compile(
    r"(?P<path>(?:compression|coordinator|sdk|mobile_sim|protocol)(?:[.:][A-Za-z_]\w*)+)"
    r"(?:\(.*\))?"
)
API_NAMES = [
    (f"{_rel(doc)}:{n}", m["path"].replace(":", "."))
    for doc in DOCS
    for n, span in inline_code(doc)
    for m in [_DOTTED.fullmatch(span)]
    if m
]


def resolve_name(dotted: str) -> bool:
    """Whether `dotted` is a module, or an attribute reachable from one (an instance attribute
    counts when the class declares it: a dataclass field, an annotation or `self.name =`)."""
    import importlib
    import inspect

    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        break
    else:
        return False
    for name in parts[i:]:
        if hasattr(obj, name):
            obj = getattr(obj, name)
            continue
        declared = {
            **getattr(obj, "__dataclass_fields__", {}),
            **getattr(obj, "__annotations__", {}),
        }
        if name in declared:
            return True  # an instance field: nothing further to follow
        if inspect.isclass(obj) and f"self.{name} =" in inspect.getsource(obj):
            return True
        return False
    return True


def test_the_docs_name_python_apis() -> None:
    assert len(API_NAMES) >= 50
    assert resolve_name("sdk.ort.OrtDevice.run_round") and resolve_name("coordinator.cli.main")
    assert not resolve_name("sdk.device.Device") and not resolve_name("nosuch.module")


@pytest.mark.parametrize(("where", "name"), API_NAMES, ids=[f"{w} {n}" for w, n in API_NAMES])
def test_python_name_in_docs_exists(where: str, name: str) -> None:
    assert resolve_name(name), f"{where}: `{name}` does not resolve"


# ---------------------------------------------------------------------------------------------
# JSON bodies shown in the docs
# ---------------------------------------------------------------------------------------------

# Each ```json block is a message of protocol.messages, keyed by (file, a line of the block);
# keys the message does not have are listed per block (the secure stage receipt adds `stage`).
JSON_MESSAGES: dict[tuple[str, str], tuple[str, frozenset[str]]] = {
    ("docs/http-api.md", '{"action": "train"'): ("CheckInResponse", frozenset()),
    ("docs/http-api.md", '"payload_bytes": 8123'): ("UploadReceipt", frozenset()),
    ("docs/http-api.md", '"stage": "advertise-keys"'): ("UploadReceipt", frozenset({"stage"})),
    ("docs/http-api.md", '"awaiting_round": 7'): ("CheckInRequest", frozenset()),
    ("docs/http-api.md", '"round_outcome": "abandoned"'): ("CheckInResponse", frozenset()),
}
JSON_BLOCKS = [b for doc in DOCS for b in fenced_blocks(doc) if b.lang == "json"]


def _unknown_keys(shown: object, parsed: object, where: str = "$") -> list[str]:
    """Paths of keys in `shown` that did not survive a parse into the message (typos, renames)."""
    if isinstance(shown, dict) and isinstance(parsed, dict):
        out = [f"{where}.{k}" for k in shown if k not in parsed]
        for k in shown.keys() & parsed.keys():
            out += _unknown_keys(shown[k], parsed[k], f"{where}.{k}")
        return out
    if isinstance(shown, list) and isinstance(parsed, list):
        return [
            p
            for i, (s, q) in enumerate(zip(shown, parsed, strict=False))
            for p in _unknown_keys(s, q, f"{where}[{i}]")
        ]
    return []


@pytest.mark.parametrize("block", JSON_BLOCKS, ids=[b.where for b in JSON_BLOCKS])
def test_json_example_is_a_real_message(block: Block) -> None:
    from protocol import messages

    # Prepare: which message it shows; `...` marks elided items and fields.
    keys = [key for key in JSON_MESSAGES if _matches(block, key)]
    assert len(keys) == 1, f"{block.where}: name its message in JSON_MESSAGES"
    name, extra = JSON_MESSAGES[keys[0]]
    text = re.sub(r"\[\s*\.\.\.\s*\]", "[]", block.code)
    text = re.sub(r",\s*\.\.\.\s*(?=[}\]])", "", text)

    # Execute
    shown = json.loads(text)
    parsed = messages.to_json(messages.from_json(getattr(messages, name), shown))

    # Assert: every key is one the message has (required ones were checked by from_json).
    unknown = [p for p in _unknown_keys(shown, parsed) if p.removeprefix("$.") not in extra]
    assert not unknown, f"{block.where}: {name} has no {unknown}"


# ---------------------------------------------------------------------------------------------
# HTTP endpoints and Prometheus metrics named in the docs
# ---------------------------------------------------------------------------------------------

_ENDPOINT = re.compile(r"\b(GET|POST|PUT|DELETE|PATCH) (/[^\s`?]*)")
# Endpoints shown on purpose as paths the service does not have, with why.
NOT_ROUTES = {
    ("docs/http-api.md", "POST /v1/devices/"): "the example of a trailing slash that is a 404",
}
ENDPOINTS = [
    (f"{_rel(doc)}:{n}", f"{m[1]} {m[2]}")
    for doc in DOCS
    for n, span in inline_code(doc)
    for m in _ENDPOINT.finditer(span)
    if (_rel(doc), f"{m[1]} {m[2]}") not in NOT_ROUTES
]


@pytest.fixture(scope="module")
def service_routes(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, re.Pattern[str]]]:
    """(method, path pattern) of every route of the real coordinator app."""
    from coordinator.service import ServiceConfig, create_app

    db = tmp_path_factory.mktemp("routes") / "plume.db"
    app = create_app(ServiceConfig(db_path=str(db), admin_token="t"))
    out: list[tuple[str, re.Pattern[str]]] = []
    for route in app.routes:
        path = getattr(route, "path", "")
        # A template segment ({task_id}) matches the docs' {id} or a concrete 1.
        pattern = re.compile(re.sub(r"\\\{[^}]*\\\}", r"[^/]+", re.escape(path)))
        out.extend((method, pattern) for method in getattr(route, "methods", None) or ())
    return out


def test_the_docs_name_endpoints(service_routes: list[tuple[str, re.Pattern[str]]]) -> None:
    assert len(ENDPOINTS) >= 15
    for doc, endpoint in NOT_ROUTES:  # still in the doc, and still not served
        assert any(endpoint in span for _, span in inline_code(ROOT / doc)), endpoint
        method, path = endpoint.split(" ", 1)
        assert not any(m == method and p.fullmatch(path) for m, p in service_routes), endpoint


@pytest.mark.parametrize(("where", "endpoint"), ENDPOINTS, ids=[f"{w} {e}" for w, e in ENDPOINTS])
def test_endpoint_in_docs_is_served(
    where: str, endpoint: str, service_routes: list[tuple[str, re.Pattern[str]]]
) -> None:
    # Prepare
    method, path = endpoint.split(" ", 1)

    # Execute + Assert
    assert any(m == method and p.fullmatch(path) for m, p in service_routes), (
        f"{where}: the coordinator has no {endpoint}"
    )


def test_metric_names_in_docs_exist() -> None:
    """Every `plume_*` name in the docs is a series the coordinator exports (families of the
    service, the anomaly screen and the privacy ledger, with their sample suffixes)."""
    from coordinator.anomaly import AnomalyMetrics
    from coordinator.privacy import PrivacyMetrics
    from coordinator.service.metrics import Metrics

    # Prepare
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    exported: set[str] = set()
    for metrics in (Metrics(), AnomalyMetrics(), PrivacyMetrics()):
        for family in metrics.registry.collect():
            exported.add(family.name)
            exported.update(family.name + s for s in suffixes.get(family.type, ()))

    # Execute
    named = {
        (f"{_rel(doc)}:{n}", name)
        for doc in DOCS
        for n, text in enumerate(doc.read_text().splitlines(), start=1)
        for name in re.findall(r"\bplume_[a-z_]+\b", text)
    }

    # Assert
    assert len(named) >= 20
    missing = sorted(f"{where} {name}" for where, name in named if name not in exported)
    assert not missing, f"not exported: {missing}"


# ---------------------------------------------------------------------------------------------
# Aggregator specs in the prose
# ---------------------------------------------------------------------------------------------

_SPEC = re.compile(r"[a-z_]+(?::[\w.=,\-]+)?(?:\+[a-z_]+(?::[\w.=,\-]+)?)*")
# Specs the docs show as refused: they must keep failing to parse.
SHOWN_AS_REFUSED = frozenset(
    {"geomed:nu=inf", "cclip:tau=inf", "cosfilter+adam+fedavg", "geomed:max_iter=1e308"}
)


def _aggregator_specs() -> list[tuple[str, str]]:
    """Inline code that is a multi-stage or parameterised aggregator spec (`...` elisions out)."""
    from coordinator.aggregators import _registry

    known = _registry.BASES.keys() | _registry.WRAPPERS.keys()
    return [
        (f"{_rel(doc)}:{n}", span)
        for doc in DOCS
        for n, span in inline_code(doc)
        if _SPEC.fullmatch(span)
        and re.split(r"[:+]", span)[0] in known
        and (":" in span or "+" in span)
        and "..." not in span
    ]


AGGREGATOR_SPECS = _aggregator_specs()


def test_the_docs_show_aggregator_specs() -> None:
    assert len(AGGREGATOR_SPECS) >= 50
    assert SHOWN_AS_REFUSED <= {spec for _, spec in AGGREGATOR_SPECS}


@pytest.mark.parametrize(
    ("where", "spec"), AGGREGATOR_SPECS, ids=[f"{w} {s}" for w, s in AGGREGATOR_SPECS]
)
def test_aggregator_spec_in_docs_builds(where: str, spec: str) -> None:
    from coordinator.aggregators import AggregatorSpecError, build_aggregator

    if spec in SHOWN_AS_REFUSED:
        with pytest.raises(AggregatorSpecError):
            build_aggregator(spec)
    else:
        build_aggregator(spec)


# ---------------------------------------------------------------------------------------------
# Byte-exact examples
# ---------------------------------------------------------------------------------------------


def test_signed_message_example_is_what_protocol_auth_signs() -> None:
    """docs/http-api.md's example of the signed bytes, with its two elided fields filled in."""
    from protocol.auth import signing_message

    # Prepare: the example line, and the fields it shows.
    doc = ROOT / "docs" / "http-api.md"
    shown = [b.code.strip() for b in fenced_blocks(doc) if b.code.startswith("PLUME-SIG-V1\\n")]
    assert len(shown) == 1, "docs/http-api.md lost its signed-message example"
    device, body_hash = "5d3e" + "0" * 28, "ab" * 32

    # Execute
    message = signing_message(
        method="POST",
        target="/v1/rounds/3/updates",
        device_id=device,
        round_id=3,
        body_hash=body_hash,
        timestamp_ms=1764316800000,
        nonce="00112233445566778899aabbccddeeff",
    ).decode("ascii")

    # Assert
    as_shown = message.replace(device, "5d3e...(32 hex)").replace(body_hash, "<64 hex>")
    assert shown[0] == as_shown.replace("\n", "\\n")


def test_snapshot_hex_example_is_what_encode_snapshot_writes() -> None:
    """docs/wire-format.md's fp16 snapshot of [1.0, -2.0, 0.5], byte for byte."""
    import numpy as np

    from compression import ModelSpec, encode_snapshot

    # Prepare: the hex dump (the block that starts with the snapshot magic "PLMS").
    doc = ROOT / "docs" / "wire-format.md"
    shown = [b.code for b in fenced_blocks(doc) if b.code.startswith("504c4d53")]
    assert len(shown) == 1, "docs/wire-format.md lost its snapshot example"

    # Execute
    spec = ModelSpec.from_shapes([("w", (3,))])
    data = encode_snapshot(np.array([1.0, -2.0, 0.5], np.float32), spec, dtype="fp16")

    # Assert
    assert "".join(shown[0].split()) == data.hex()


# ---------------------------------------------------------------------------------------------
# A few cheap commands, run as written
# ---------------------------------------------------------------------------------------------

# Doc command sequences that finish in seconds, run for real in a scratch folder, with a file
# each sequence must leave behind. Each command must appear in the doc word for word.
RUN_AS_WRITTEN: dict[str, tuple[tuple[str, ...], str]] = {
    "docs/simulator.md": (
        (
            "plume sim --dataset digits --clients 10 --per-round 4 --rounds 2 --out runs/digits",
            "plume sim report runs/digits",
        ),
        "runs/digits/bytes_per_round.png",
    ),
    "docs/devices.md": (
        ("plume export --model digits_mlp --out artifacts/digits --loss mse",),
        "artifacts/digits/manifest.json",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("doc", sorted(RUN_AS_WRITTEN))
def test_cheap_commands_run_as_written(doc: str, tmp_path: Path) -> None:
    # Prepare
    lines, leaves = RUN_AS_WRITTEN[doc]
    shown = {shlex.join(c.words) for c in PLUME_COMMANDS if c.where.startswith(f"{doc}:")}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    for line in lines:
        assert line in shown, f"{doc} no longer shows `{line}`"
        # Execute
        proc = _python_child(
            ["-m", "coordinator.cli", *shlex.split(line)[1:]],
            cwd=tmp_path,
            env=env,
            timeout=300,
        )

        # Assert
        assert proc.returncode == 0, f"{doc}: `{line}`\n{proc.stderr[-3000:]}"
    assert (tmp_path / leaves).is_file(), f"{doc}: {leaves} was not written"


# ---------------------------------------------------------------------------------------------
# Keyword arguments of the calls the prose shows
# ---------------------------------------------------------------------------------------------


def _public_names() -> dict[str, list[object]]:
    """Every name in the `__all__` of the packages' public modules -> the objects it names."""
    import importlib
    import pkgutil

    out: dict[str, list[object]] = {}
    for package in ("compression", "coordinator", "sdk", "mobile_sim", "protocol"):
        root = importlib.import_module(package)
        infos = pkgutil.walk_packages(root.__path__, f"{package}.")
        names = [package] + [i.name for i in infos if "._" not in i.name and i.name != "_"]
        for name in names:
            module = importlib.import_module(name)
            for public in getattr(module, "__all__", ()):
                objs = out.setdefault(public, [])
                obj = getattr(module, public)
                if all(obj is not o for o in objs):
                    objs.append(obj)
    return out


def _shown_calls() -> list[tuple[str, str, str, str, tuple[str, ...]]]:
    """(where, span, owner name or "", callee name, keyword names) of calls with keywords in
    inline code that parses as a Python expression (`...` stands for elided values)."""
    import ast

    out = []
    for doc in DOCS:
        for n, span in inline_code(doc):
            if "=" not in span or "(" not in span:
                continue
            try:
                tree = ast.parse(span, mode="eval")
            except SyntaxError:
                continue
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and node.keywords):
                    continue
                func = node.func
                owner = ""
                if isinstance(func, ast.Attribute):
                    name = func.attr
                    owner = func.value.id if isinstance(func.value, ast.Name) else ""
                else:
                    name = getattr(func, "id", "")
                keywords = tuple(k.arg for k in node.keywords if k.arg is not None)
                out.append((f"{_rel(doc)}:{n}", span, owner, name, keywords))
    return out


SHOWN_CALLS = _shown_calls()


def _callees(public: dict[str, list[object]], owner: str, name: str) -> list[object]:
    """What a shown call may be calling: a public function or class, `Class.method` of a public
    class, or (`fleet.select(...)`, an instance) the method of that name on any public class."""
    import inspect

    if not owner and name in public:
        return public[name]
    if owner in public:
        return [getattr(o, name) for o in public[owner] if hasattr(o, name)]
    classes = [o for objs in public.values() for o in objs if inspect.isclass(o)]
    return [getattr(c, name) for c in classes if name in vars(c)]


def test_keyword_arguments_in_docs_exist() -> None:
    """`FedAvg(uniform=True)`, `fleet.select(..., min_n=5)`: each keyword a call in the prose
    passes is a parameter of a public callable of that name."""
    import inspect

    # Prepare
    public = _public_names()

    # Execute: calls to a public name that no callable of that name accepts.
    checked, wrong = 0, []
    for where, span, owner, name, keywords in SHOWN_CALLS:
        callees = _callees(public, owner, name)
        accepting = []
        for obj in callees:
            try:
                params = inspect.signature(obj).parameters  # type: ignore[arg-type]
            except (TypeError, ValueError):
                continue
            if any(p.kind is p.VAR_KEYWORD for p in params.values()):
                accepting.append(obj)
            elif all(k in params for k in keywords):
                accepting.append(obj)
        if callees:
            checked += 1
            if not accepting:
                wrong.append(f"{where}: `{span}`: {name} takes no {list(keywords)}")

    # Assert
    assert checked >= 20
    assert not wrong, "\n".join(wrong)


# ---------------------------------------------------------------------------------------------
# Flags named in the prose
# ---------------------------------------------------------------------------------------------

# Flags in inline code that belong to other tools, or a family written as a glob.
FOREIGN_FLAGS = {
    "--no-deps": "pip's (docs/devices.md installs the package without torch)",
    "--shm-size": "docker's (docs/simulator.md, Ray in a container)",
    "--head": "ray start's (docs/simulator.md, a Ray cluster)",
    "--address": "ray start's (docs/simulator.md, a Ray cluster)",
    "--temp-dir": "ray start's (docs/simulator.md, a Ray cluster on a shared machine)",
    "--secure-*": "the family of create-task's --secure-... flags",
    "--factory": "uvicorn's (docs/operations.md, create_app under another server)",
    "--no-server-header": "uvicorn's (docs/operations.md, create_app under another server)",
    "--no-date-header": "uvicorn's (docs/operations.md, create_app under another server)",
    "--old": (
        "tests/protocol/test_h224_robust_decode_cost.py's, run as a script for the figures "
        "docs/secure-aggregation.md quotes"
    ),
}


def _all_plume_flags() -> set[str]:
    """Every option string of `plume` and of all its subcommands."""
    found: set[str] = set()
    parsers = [build_parser()]
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            found.update(action.option_strings)
            choices = getattr(action, "choices", None)
            if isinstance(choices, dict):  # a subparsers action: name -> parser
                parsers.extend(choices.values())
    return found


def test_flags_named_in_docs_exist(
    bench_parse_results: dict[tuple[str, tuple[str, ...]], _Probed],
) -> None:
    """A `--flag` in inline code (`--selection-timeout`, `serve --register-rate R`) is an option
    of `plume` or of a bench script: a renamed flag is not left behind in the prose."""
    import fnmatch

    # Prepare
    known = _all_plume_flags() | {f for *_, flags in bench_parse_results.values() for f in flags}
    assert "--selection-timeout" in known and "--backdoor-defenses" in known

    # Execute
    named = [
        (f"{_rel(doc)}:{n}", flag)
        for doc in DOCS
        for n, span in inline_code(doc)
        for flag in re.findall(r"(?:^|\s)(--[a-z][a-z0-9*-]*)", span)
    ]

    # Assert
    assert len(named) >= 50
    unknown = [
        f"{where} {flag}" for where, flag in named if flag not in known | FOREIGN_FLAGS.keys()
    ]
    assert not unknown, f"no such flag: {unknown}"
    assert fnmatch.filter(known, "--secure-*"), "the --secure-* family is gone"
    assert FOREIGN_FLAGS.keys() <= {flag for _, flag in named}, "a stale FOREIGN_FLAGS entry"


# ---------------------------------------------------------------------------------------------
# Defaults stated in the docs' tables
# ---------------------------------------------------------------------------------------------


def _serve_defaults() -> dict[str, object]:
    """`plume coordinator serve` flag -> its default."""
    parsers = [build_parser()]
    while parsers:
        parser = parsers.pop()
        if parser.prog.endswith("coordinator serve"):
            return {o: a.default for a in parser._actions for o in a.option_strings}
        for action in parser._actions:
            choices = getattr(action, "choices", None)
            if isinstance(choices, dict):
                parsers.extend(choices.values())
    raise AssertionError("no `plume coordinator serve` parser")


def _dataclass_defaults(*classes: type) -> dict[str, object]:
    import dataclasses

    return {
        f.name: f.default
        for cls in classes
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING
    }


def _secure_defaults() -> dict[str, object]:
    from coordinator.secure import SecureConfig
    from coordinator.service.secure import SecureSettings

    return _dataclass_defaults(SecureConfig, SecureSettings)


def _task_defaults() -> dict[str, object]:
    from protocol.messages import TaskConfig

    return _dataclass_defaults(TaskConfig)


# (file, header row, column of the names, column of the defaults, where the real defaults are)
DEFAULT_TABLES = (
    ("docs/operations.md", "| flag | default | meaning |", 0, 1, _serve_defaults),
    ("docs/operations.md", "| flag | `secure` key | default | meaning |", 1, 2, _secure_defaults),
    ("docs/http-api.md", "| field | default | meaning |", 0, 1, _task_defaults),
    ("docs/http-api.md", "| key | default | meaning |", 0, 1, _secure_defaults),
)


def _same_default(shown: str, real: object) -> bool | None:
    """Whether a table's default cell agrees with the code's; None when the cell is prose
    (`floor(k/2)+1`, `$PLUME_ADMIN_TOKEN`) rather than a value."""
    import enum

    text = shown.split(" (")[0].strip().strip("`")
    if isinstance(real, enum.Enum):
        return text.lower() == real.name.lower()
    if text in ("none", "null"):
        return real is None
    if text in ("on", "off", "true", "false"):
        return real is (text in ("on", "true"))
    if isinstance(real, bool):
        return None
    if isinstance(real, int | float):
        try:
            return float(text) == float(real)
        except ValueError:
            return None
    if isinstance(real, str) and re.fullmatch(r"[\w.:+-]+", text):
        return text == real
    return None


@pytest.mark.parametrize(
    ("doc", "header", "name_col", "value_col", "source"),
    DEFAULT_TABLES,
    ids=[f"{d} {h}" for d, h, *_ in DEFAULT_TABLES],
)
def test_table_defaults_match_the_code(
    doc: str, header: str, name_col: int, value_col: int, source: object
) -> None:
    # Prepare: the table's rows, and the defaults in the code.
    lines = (ROOT / doc).read_text().splitlines()
    assert header in lines, f"{doc}: the table `{header}` is gone"
    start = lines.index(header) + 2  # past the |---| row
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    real = source()  # type: ignore[operator]

    # Execute: pair each listed name with its listed default.
    compared, wrong = 0, []
    for row in rows:
        cell = re.sub(r"\s*\([^)]*\)", "", row[name_col])  # `--register-rate` (`field`)
        names = [n.strip().strip("`") for n in cell.split(",")]
        values = [v.strip() for v in row[value_col].split(",")] if row[value_col] else []
        if len(names) != len(values):
            continue  # a composite cell ("topk 0.01, bits 4") is prose
        for name, value in zip(names, values, strict=True):
            if name not in real:
                continue
            same = _same_default(value, real[name])
            if same is not None:
                compared += 1
                if not same:
                    wrong.append(f"{name}: doc says {value}, the code {real[name]!r}")

    # Assert
    assert compared >= 4, f"{doc} `{header}`: only {compared} defaults compared"
    assert not wrong, f"{doc} `{header}`: {wrong}"
