"""The per-tensor top-k vectors of docs/test-vectors/update_frames.json, read as a port reads
them: each records its split (`per_tensor_k`), which wire-format.md section 5's rule gives from
the JSON alone, and the frame carries that many of each tensor's largest magnitudes. Before,
the only per-tensor vector split k = 20 with no share at 0, so nothing checked a port's split
for a k that starves a tensor (commit 2e7b1fd's rule): below, at and just above the number of
non-empty tensors, a tie between tensors, an empty tensor. test_h281_vectors rebuilds the file
and checks every vector's bytes, decoding and encoding; this checks the split."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "docs" / "test-vectors"
DOC = json.loads((VECTORS / "update_frames.json").read_text())
PER_TENSOR = [v for v in DOC["vectors"] if v["config"]["scope"] == "per_tensor"]


def _sizes(v: dict[str, Any]) -> list[int]:
    return [math.prod(t["shape"]) for t in v["spec"]["tensors"]]


def _k(v: dict[str, Any]) -> int:
    d = v["spec"]["d"]
    return int(max(1, min(d, round(v["config"]["topk"] * d))))


def _proportional(sizes: list[int], k: int) -> list[int]:
    """k in proportion to the sizes, largest remainders first (the earlier of equals), no
    share above its tensor's size."""
    d = sum(sizes)
    shares = [k * n / d for n in sizes]
    ks = [min(n, math.floor(s)) for n, s in zip(sizes, shares, strict=True)]
    order = sorted(range(len(sizes)), key=lambda i: -(shares[i] - math.floor(shares[i])))
    rest = k - sum(ks)
    while rest > 0 and any(ks[i] < sizes[i] for i in order):
        for i in order:
            if rest and ks[i] < sizes[i]:
                ks[i], rest = ks[i] + 1, rest - 1
    return ks


def _documented_split(sizes: list[int], k: int, u: np.ndarray) -> list[int]:
    """wire-format.md section 5's per-tensor split, written from its prose."""
    ks = _proportional(sizes, k)
    nonempty = [i for i, n in enumerate(sizes) if n > 0]
    starved = [i for i in nonempty if ks[i] == 0]
    if not starved:
        return ks
    if k >= len(nonempty):
        for i in starved:  # in spec order, each from the largest share at that moment
            j = max(range(len(ks)), key=lambda t: (ks[t], -t))
            ks[j] -= 1
            ks[i] = 1
        return ks
    offsets = np.cumsum([0, *sizes])
    top = {i: float(np.abs(u[offsets[i] : offsets[i + 1]]).max()) for i in nonempty}
    chosen = sorted(nonempty, key=lambda i: -top[i])[:k]  # stable: the earlier of equals
    return [1 if i in chosen else 0 for i in range(len(sizes))]


@pytest.mark.parametrize("v", PER_TENSOR, ids=[v["name"] for v in PER_TENSOR])
def test_the_recorded_split_is_the_documented_rule_and_the_frame_s(v: dict[str, Any]) -> None:
    # Prepare: everything from the JSON
    sizes, k = _sizes(v), _k(v)
    u = np.frombuffer(bytes.fromhex(v["update_f32le_hex"]), "<f4").astype(np.float32)
    indices = np.array(v["decoded"]["indices"], np.int64)
    offsets = np.cumsum([0, *sizes])
    # Execute
    split = _documented_split(sizes, k, u)
    # Assert: the recorded split, and each tensor's share of its largest magnitudes
    assert split == v["per_tensor_k"]
    assert sum(split) == v["header"]["k"] == k  # no exact zeros in these updates
    for t, kt in enumerate(split):
        mine = indices[(indices >= offsets[t]) & (indices < offsets[t + 1])]
        mag = np.abs(u[offsets[t] : offsets[t + 1]])
        largest = np.sort(np.argsort(-mag, kind="stable")[:kt]) + offsets[t]
        assert mine.tolist() == largest.tolist(), v["spec"]["tensors"][t]["name"]


def test_the_vectors_cover_the_split_rule_s_boundaries() -> None:
    cases = set()
    for v in PER_TENSOR:
        sizes, k = _sizes(v), _k(v)
        nonempty = sum(n > 0 for n in sizes)
        starved = 0 in [s for s, n in zip(_proportional(sizes, k), sizes, strict=True) if n]
        if not starved:
            cases.add("no share at 0")
        elif k < nonempty:
            cases.add("k < tensors")
        elif k == nonempty:
            cases.add("k == tensors")
        else:
            cases.add("k > tensors, a share at 0")
        if 0 in sizes:
            cases.add("an empty tensor")
    assert cases == {
        "no share at 0",
        "k < tensors",
        "k == tensors",
        "k > tensors, a share at 0",
        "an empty tensor",
    }
    # ... and a tie between two tensors' largest |u| at the last place k gives
    tie = next(v for v in PER_TENSOR if v["name"] == "per_tensor_k_below_tensors_tie")
    u = np.frombuffer(bytes.fromhex(tie["update_f32le_hex"]), "<f4")
    assert abs(u[10]) == abs(u[60]) and tie["per_tensor_k"] == [1, 1, 0, 1]


def test_the_readme_counts_and_names_the_update_frames() -> None:
    readme = (VECTORS / "README.md").read_text()
    assert f"| `update_frames.json` | {len(DOC['vectors'])} update frames" in readme
    assert "`per_tensor_k`" in readme
