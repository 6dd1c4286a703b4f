"""Federated datasets with a natural client split: LEAF-style Shakespeare and FedProx synthetic."""

from __future__ import annotations

import math
import re
from pathlib import Path

from ._types import NaturalData
from .shakespeare import VOCAB, decode_text, encode_text, load_shakespeare, parse_speeches
from .synthetic import load_synthetic

__all__ = [
    "NaturalData",
    "VOCAB",
    "DATASETS",
    "encode_text",
    "decode_text",
    "parse_speeches",
    "load_shakespeare",
    "load_synthetic",
    "load_federated",
    "known",
]

DATASETS = ("shakespeare", "synthetic", "synthetic(ALPHA,BETA)", "synthetic_iid")
# synthetic(ALPHA,BETA): what is between the parentheses is checked by `_synthetic_args`.
_SYNTHETIC = re.compile(r"synthetic\((.*)\)", re.DOTALL)


def _synthetic_args(name: str, inside: str) -> tuple[float, float]:
    """ALPHA and BETA of the dataset `name`, synthetic(`inside`): two numbers in any float
    syntax (0.5, .5, 1e3), each finite and >= 0; else a ValueError naming `name` and the
    parameter (it starts with the name: `plume sim` reads a message starting "alpha" as one
    about its own --alpha)."""
    name = name if len(name) <= 60 else name[:57] + "..."  # as shown: 400 nines are cut
    parts = inside.split(",")
    if len(parts) != 2:
        raise ValueError(
            f"dataset {name!r}: synthetic(ALPHA,BETA) takes two numbers, ALPHA and BETA "
            f"(got {len(parts)}), e.g. synthetic(0.5,0.5)"
        )
    values = []
    for param, text in zip(("ALPHA", "BETA"), parts, strict=True):
        try:
            value = float(text)
        except ValueError:
            raise ValueError(
                f"dataset {name!r}: {param} {text.strip()!r} is not a number, "
                "e.g. synthetic(0.5,0.5)"
            ) from None
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(
                f"dataset {name!r}: {param} must be a finite number >= 0, got {value:g}"
            )
        values.append(value + 0.0)  # -0 is 0
    return values[0], values[1]


def known(name: str) -> bool:
    """Whether `load_federated` takes dataset `name`, checked without loading anything."""
    if name in ("shakespeare", "synthetic", "synthetic_iid"):
        return True
    match = _SYNTHETIC.fullmatch(name)
    if match is None:
        return False
    try:
        _synthetic_args(name, match.group(1))
    except ValueError:
        return False
    return True


def load_federated(name: str, *, root: str | Path | None = None, seed: int = 0) -> NaturalData:
    """A dataset by name: 'shakespeare', 'synthetic' (= synthetic(1,1)), 'synthetic(0.5,0.5)',
    'synthetic_iid'. `seed` draws the synthetic data; Shakespeare is fixed by the text."""
    if name == "shakespeare":
        return load_shakespeare(root)
    if name == "synthetic":
        return load_synthetic(1.0, 1.0, seed=seed)
    if name == "synthetic_iid":
        return load_synthetic(seed=seed, iid=True)
    match = _SYNTHETIC.fullmatch(name)
    if match:
        return load_synthetic(*_synthetic_args(name, match.group(1)), seed=seed)
    raise ValueError(f"unknown dataset {name!r}; choose mnist, digits or one of {DATASETS}")
