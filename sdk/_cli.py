"""`plume export`: write the ONNX training artifacts of a zoo model for torch-free devices."""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["register", "example_input_shape"]

_EXAMPLES = """\
examples:
  plume export --model mnist_cnn --out artifacts/mnist_cnn
  plume export --model mlp --out artifacts/mlp --optimizer momentum --momentum 0.9
  plume export --model digits_mlp --out artifacts/digits --loss mse
  plume export --model shakespeare_lstm_small --out artifacts/lstm --input-dtype int64
  plume export --plugin my_plugin --model my_cnn --input-shape 1,28,28 --out artifacts/my_cnn
"""

# Per-example input shapes of the zoo models (the batch dimension is exported dynamic).
_INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "mnist_cnn": (1, 28, 28),
    "mlp": (1, 28, 28),
    "digits_mlp": (64,),
    "synthetic_lr": (60,),
    "shakespeare_lstm": (80,),
    "shakespeare_lstm_small": (80,),
}


def example_input_shape(model: str) -> tuple[int, ...]:
    """The shape of one input example of a zoo model (without the batch dimension)."""
    try:
        return _INPUT_SHAPES[model]
    except KeyError:
        raise ValueError(
            f"no default input shape for model {model!r}; pass --input-shape"
        ) from None


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes, got {text!r}") from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError("sizes must be positive")
    return dims


# Token-id models: their example input is int64 unless --input-dtype says otherwise.
_INT_INPUT_MODELS = frozenset({"shakespeare_lstm", "shakespeare_lstm_small"})
_PROG = "plume export"
# --momentum's value with --optimizer momentum when it is not given; given without that
# optimizer (0.9 included), it is a mistake.
_MOMENTUM = 0.9


def _fail(message: str, status: int = 2) -> int:
    """Print `plume export: error: MESSAGE` on stderr; returns `status` (2: a usage error)."""
    from coordinator.cli import print_error

    print_error(_PROG, message)
    return status


class _Elapsed:
    """A one-line `working... N s` indicator on stderr while a long step runs.

    On a terminal the line is redrawn every second; elsewhere (a log file) it is printed once
    at the start and once with the total time, so logs hold no carriage-return noise.
    """

    def __init__(self, text: str, enabled: bool) -> None:
        self.text = text
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def _draw(self) -> None:
        while not self._stop.wait(1.0):
            seconds = time.monotonic() - self._t0
            print(f"\r{self.text} {seconds:.0f} s", end="", file=sys.stderr, flush=True)

    def __enter__(self) -> _Elapsed:
        self._t0 = time.monotonic()
        if not self.enabled:
            return self
        print(f"{self.text}", end="" if self.tty else "\n", file=sys.stderr, flush=True)
        if self.tty:
            self._thread = threading.Thread(target=self._draw, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.enabled:
            seconds = time.monotonic() - self._t0
            lead = "\r" if self.tty else ""
            # A failed step is reported by the error line that follows, not as "done".
            ended = "done" if exc_type is None else "stopped"
            print(f"{lead}{self.text} {ended} in {seconds:.1f} s", file=sys.stderr, flush=True)


def _out_blocker(out: Path) -> Path | None:
    """The existing path at or above `out` that is not a folder (so nothing can be written
    there), or None."""
    for path in (out, *out.parents):
        if path.exists():
            return None if path.is_dir() else path
    return None


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "export",
        help="export ONNX training artifacts for devices without torch",
        description=(
            "Write the inference graph, the training-step graph and a manifest for a zoo model "
            "(or one a --plugin registers). "
            "Devices then train with plain onnxruntime (sdk.ort), no torch needed. Prints a "
            "JSON summary on stdout. Tracing takes seconds for most models; on a 2-core machine "
            "shakespeare_lstm_small takes about 2 minutes and shakespeare_lstm several minutes."
        ),
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        required=True,
        help="zoo model: " + ", ".join(_INPUT_SHAPES) + " (mobile_sim.models), or one a "
        "--plugin registers (give its --input-shape)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument(
        "--optimizer",
        choices=("sgd", "momentum"),
        default="sgd",
        help="the update rule baked into the training step",
    )
    p.add_argument(
        "--momentum",
        type=float,
        default=None,
        help=f"with --optimizer momentum: the SGD momentum, in [0, 1) (default {_MOMENTUM})",
    )
    p.add_argument(
        "--loss",
        choices=("ce", "mse"),
        default="ce",
        help="ce: cross-entropy on class labels; mse: squared error on targets",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=10,
        metavar="N",
        help="example batch used for tracing, 2 to 4096 (and at most 2^24 input values); the "
        "exported batch dimension is dynamic",
    )
    p.add_argument(
        "--input-shape",
        type=_shape,
        default=None,
        metavar="D1,D2,...",
        help="one example's shape, e.g. 1,28,28 (default: the zoo model's)",
    )
    p.add_argument(
        "--input-dtype",
        choices=("float32", "int64"),
        default=None,
        help="input element type: int64 for token ids (default: int64 for the shakespeare "
        "models, float32 otherwise)",
    )
    p.add_argument("--seed", type=int, default=0, help="weights seed (only used for tracing)")
    p.add_argument("--no-progress", action="store_true", help="no elapsed-time line on stderr")
    # Last, so that the usage line stays four lines long.
    p.add_argument(
        "--plugin",
        action="append",
        default=None,
        metavar="MODULE",
        help="import MODULE first (repeatable; also a path to a .py file), as `plume sim "
        "--plugin` does, so that --model takes the names its top-level code registers in "
        "mobile_sim.models.MODELS",
    )
    p.set_defaults(func=_run)


# The example batch's bounds: tracing needs a batch of two, and the exported batch dimension is
# dynamic, so a larger one buys nothing (2^24 values: 64 MiB as float32, 128 MiB as int64).
_MAX_TRACE_BATCH = 4096
_MAX_TRACE_VALUES = 2**24


def _run(args: argparse.Namespace) -> int:
    from coordinator._cli import _build_task_model, _import_plugins
    from mobile_sim.models import MODELS

    # Before any check: the plugins register the names --model may give (as create-task's).
    if not _import_plugins(_PROG, args.plugin, args.model):
        return 2
    if args.batch_size < 2:
        return _fail(f"--batch-size must be at least 2, got {args.batch_size}")
    if args.optimizer != "momentum" and args.momentum is not None:
        return _fail("--momentum applies with --optimizer momentum only")
    if args.momentum is None:
        args.momentum = _MOMENTUM
    if not 0.0 <= args.momentum < 1.0:
        return _fail(f"--momentum must be in [0, 1), got {args.momentum}")
    if args.model not in MODELS:
        return _fail(f"unknown model {args.model!r}; choose one of {', '.join(sorted(MODELS))}")
    blocker = _out_blocker(Path(args.out))
    if blocker is not None:
        # Checked before tracing (seconds to minutes); the export itself would refuse it only
        # when it writes.
        return _fail(f"--out {args.out}: {blocker} is not a folder", 1)
    try:
        shape = args.input_shape or example_input_shape(args.model)
    except ValueError as exc:
        return _fail(str(exc))
    values = args.batch_size * math.prod(shape)
    if args.batch_size > _MAX_TRACE_BATCH or values > _MAX_TRACE_VALUES:
        # Else torch's allocator failed with a traceback (313,600,000,000 bytes for
        # --batch-size 100000000): the example batch only traces, its size is not exported.
        return _fail(
            f"--batch-size {args.batch_size} x --input-shape {','.join(map(str, shape))} is "
            f"{values:,} input values; the example batch is at most {_MAX_TRACE_BATCH:,} "
            f"examples and {_MAX_TRACE_VALUES:,} values (it is only traced: the exported "
            "batch dimension is dynamic)"
        )
    model = _build_task_model(args.model, args.seed)
    if isinstance(model, str):  # a plugin's factory raised, or returned no torch module
        return _fail(model, 1)
    out = Path(args.out)
    try:
        # Checked before tracing (seconds, minutes for an LSTM), as `plume sim` makes its --out
        # before the rounds; the export itself would find it only when it writes.
        _check_writable(out)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return _fail(f"--out: cannot write the artifacts into {out} ({reason})", 1)
    return _export(args, model, shape, out)


def _check_writable(out: Path) -> None:
    """Raise the OSError that keeps a file from being written in folder `out`: make it and its
    missing parents, write and remove a file in it, then remove the folders made (the export
    makes them again, and removes the ones it made if it fails)."""
    import os
    import tempfile

    from mobile_sim._cli import _make_folders, _remove_empty

    made = _make_folders(out)
    try:
        fd, probe = tempfile.mkstemp(prefix=".plume-export-", suffix=".probe", dir=out)
        os.close(fd)
        os.unlink(probe)
    finally:
        _remove_empty(made)


def _export(args: argparse.Namespace, model: Any, shape: tuple[int, ...], out: Path) -> int:
    """Trace `model` into `out` and print the summary; the exit status."""
    import torch

    from .onnx_export import (
        ExampleInputError,
        ExportError,
        OutputError,
        export_training_artifacts,
    )

    dtype = args.input_dtype or ("int64" if args.model in _INT_INPUT_MODELS else "float32")
    gen = torch.Generator().manual_seed(args.seed)
    if dtype == "int64":
        # Token ids: the first embedding's vocabulary bounds them.
        embed = next((m for m in model.modules() if isinstance(m, torch.nn.Embedding)), None)
        high = embed.num_embeddings if embed is not None else 2
        x = torch.randint(0, high, (args.batch_size, *shape), generator=gen)
    else:
        x = torch.randn((args.batch_size, *shape), generator=gen)
    torch.set_num_threads(1)
    params = sum(t.numel() for t in model.parameters())
    try:
        with _Elapsed(
            f"{_PROG}: tracing {args.model} ({params:,} parameters) into {out}...",
            enabled=not args.no_progress,
        ):
            result = export_training_artifacts(
                model,
                x,
                out,
                loss=args.loss,
                optimizer=args.optimizer,
                momentum=args.momentum,
                model_name=args.model,
            )
    except ExampleInputError as exc:
        # The library's check runs before anything is traced or written: a usage error.
        return _fail(
            f"an input of shape {','.join(map(str, shape))} ({dtype}) does not fit model "
            f"{args.model}: {exc.reason}; check --input-shape and --input-dtype"
        )
    except OutputError as exc:
        return _fail(f"--out: {exc}", 1)
    except ExportError as exc:
        return _fail(f"{exc} ({type(exc).__name__})", 1)
    files = result.manifest["files"]
    summary = {
        "out": str(result.out_dir),
        "model": args.model,
        "params": result.spec.size,
        "train_step_bytes": files["train_step"]["bytes"],
        "infer_bytes": files["infer"]["bytes"],
    }
    print(json.dumps(summary))
    return 0
