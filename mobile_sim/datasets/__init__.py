"""Federated datasets with a natural client split: LEAF-style Shakespeare and FedProx synthetic."""

from __future__ import annotations

from ._types import NaturalSplit
from .shakespeare import VOCAB, decode_text, encode_text, load_shakespeare, parse_speeches
from .synthetic import load_synthetic

__all__ = [
    "NaturalSplit",
    "VOCAB",
    "encode_text",
    "decode_text",
    "parse_speeches",
    "load_shakespeare",
    "load_synthetic",
]
