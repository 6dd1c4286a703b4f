"""Federated datasets with a natural client split: LEAF-style Shakespeare and FedProx synthetic."""

from __future__ import annotations

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
]

DATASETS = ("shakespeare", "synthetic", "synthetic(ALPHA,BETA)", "synthetic_iid")
_SYNTHETIC = re.compile(r"synthetic\(\s*([0-9.]+)\s*,\s*([0-9.]+)\s*\)")


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
        return load_synthetic(float(match.group(1)), float(match.group(2)), seed=seed)
    raise ValueError(f"unknown dataset {name!r}; choose mnist, digits or one of {DATASETS}")
