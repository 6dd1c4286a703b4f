"""`plume export`: write the ONNX training artifacts of a zoo model for torch-free devices."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["register", "example_input_shape"]

_EXAMPLES = """\
examples:
  plume export --model mnist_cnn --out artifacts/mnist_cnn
  plume export --model mlp --out artifacts/mlp --optimizer momentum --momentum 0.9
  plume export --model digits_mlp --out artifacts/digits --loss mse
  plume export --model shakespeare_lstm_small --out artifacts/lstm --input-dtype int64
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


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "export",
        help="export ONNX training artifacts for devices without torch",
        description=(
            "Write the inference graph, the training-step graph and a manifest for a zoo model. "
            "Devices then train with plain onnxruntime (sdk.ort), no torch needed."
        ),
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="zoo model name (mobile_sim.models)")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--optimizer", choices=("sgd", "momentum"), default="sgd")
    p.add_argument("--momentum", type=float, default=0.9, help="with --optimizer momentum")
    p.add_argument("--loss", choices=("ce", "mse"), default="ce")
    p.add_argument(
        "--batch-size",
        type=int,
        default=10,
        help="example batch used for tracing; the exported batch dimension is dynamic",
    )
    p.add_argument(
        "--input-shape", type=_shape, default=None, help="one example's shape, e.g. 1,28,28"
    )
    p.add_argument("--input-dtype", choices=("float32", "int64"), default="float32")
    p.add_argument("--seed", type=int, default=0, help="weights seed (only used for tracing)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import torch

    from mobile_sim.models import build_model

    from .onnx_export import ExportError, export_training_artifacts

    if args.batch_size < 2:
        print("plume export: --batch-size must be at least 2", file=sys.stderr)
        return 2
    try:
        model = build_model(args.model, seed=args.seed)
        shape = args.input_shape or example_input_shape(args.model)
    except ValueError as exc:
        print(f"plume export: {exc}", file=sys.stderr)
        return 2
    gen = torch.Generator().manual_seed(args.seed)
    if args.input_dtype == "int64":
        # Token ids: the first embedding's vocabulary bounds them.
        embed = next((m for m in model.modules() if isinstance(m, torch.nn.Embedding)), None)
        high = embed.num_embeddings if embed is not None else 2
        x = torch.randint(0, high, (args.batch_size, *shape), generator=gen)
    else:
        x = torch.randn((args.batch_size, *shape), generator=gen)
    torch.set_num_threads(1)
    try:
        result = export_training_artifacts(
            model,
            x,
            args.out,
            loss=args.loss,
            optimizer=args.optimizer,
            momentum=args.momentum,
            model_name=args.model,
        )
    except ExportError as exc:
        print(f"plume export: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
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
