"""Rules of docs/test-vectors/README.md that a port could read another way and still pass every
vector (review r7): k = round-half-to-even of topk * d, quantization computed in float32, and
the Rice parameter range from the mean gap rather than d / k. Each rule is implemented here
twice from the JSON alone, the documented reading and the alternative one: the documented
reading must agree with every vector and the alternative must disagree with at least one, so
a port with the wrong reading fails a vector."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

VECTORS = Path(__file__).resolve().parents[2] / "docs" / "test-vectors"
UPDATES: list[dict[str, Any]] = json.loads((VECTORS / "update_frames.json").read_text())["vectors"]
FEEDBACK: dict[str, Any] = json.loads((VECTORS / "error_feedback.json").read_text())["vectors"][0]
F32 = npt.NDArray[np.float32]


def _f32(hex_text: str) -> F32:
    return np.frombuffer(bytes.fromhex(hex_text), dtype="<f4").astype(np.float32)


def _encoded() -> list[tuple[str, dict[str, Any], dict[str, Any], F32]]:
    """(name, frame entry, config, the float32 vector encoded) for every encoder vector."""
    out = [
        (v["name"], v, v["config"], _f32(v["update_f32le_hex"]))
        for v in UPDATES
        if "written_with_bits" not in v  # the downlink fallback: written at other bits
    ]
    for s in FEEDBACK["steps"]:
        u = _f32(s["encoded_sum_f32le_hex"])
        out.append((f"{FEEDBACK['name']}_{s['step']}", s, FEEDBACK["config"], u))
    return out


ENCODED = _encoded()


def _disagreeing(reading: Callable[[dict[str, Any], dict[str, Any], F32], Any]) -> set[str]:
    """Names of the vectors whose recorded result `reading` does not reproduce (it returns
    (got, want), or None where it does not apply)."""
    out = set()
    for name, v, config, u in ENCODED:
        pair = reading(v, config, u)
        if pair is not None and pair[0] != pair[1]:
            out.add(name)
    return out


# ---------------------------------------------------------------------------------------------
# k = max(1, min(d, round(topk * d))), exact zeros dropped below d


def _k_reading(rnd: Callable[[float], int]) -> Callable[..., tuple[int, int] | None]:
    def reading(v: dict[str, Any], config: dict[str, Any], u: F32) -> tuple[int, int] | None:
        if config["scope"] != "global":
            return None
        d = v["header"]["d"]
        k = max(1, min(d, rnd(config["topk"] * d)))
        got = d if k == d else min(k, int(np.count_nonzero(u)))
        return got, v["header"]["k"]

    return reading


def _half_up(x: float) -> int:
    return math.floor(x + 0.5)


def _half_down(x: float) -> int:
    return math.ceil(x - 0.5)


# ---------------------------------------------------------------------------------------------
# 2, 4 and 8 bits: step = (hi - lo) / (2**(bits-1) - 1), x = (|v| - lo) / step, j = floor(x + U)


def _codes(v: dict[str, Any]) -> list[int]:
    h = v["header"]
    k, bits = h["k"], h["bits"]
    stream = np.unpackbits(np.frombuffer(bytes.fromhex(v["sections"]["values_hex"]), np.uint8),
                           bitorder="little")  # fmt: skip
    return [sum(int(stream[i * bits + b]) << b for b in range(bits)) for i in range(k)]


def _quant_reading(dtype: type[np.floating[Any]]) -> Callable[..., tuple[list[int], list[int]]]:
    """Codes by wire-format.md 1.4 with every operation in `dtype` (one rounding each)."""

    def reading(v: dict[str, Any], config: dict[str, Any], u: F32) -> Any:
        h = v["header"]
        if h["bits"] not in (2, 4, 8) or h["k"] == 0:
            return None
        vals = u[np.array(v["decoded"]["indices"], np.int64)]
        uni = np.array(v["uniforms"], np.float32)
        top, block = (1 << (h["bits"] - 1)) - 1, h["block"]
        got = []
        for start in range(0, h["k"], block):
            mag = np.abs(vals[start : start + block]).astype(dtype)
            lo, hi = mag.min(), mag.max()
            step = dtype((hi - lo) / dtype(top))
            for i, m in enumerate(mag):
                x = dtype(0) if step == 0 else dtype(dtype(m - lo) / step)
                j = int(np.floor(dtype(x + dtype(uni[start + i]))))
                sign = int(np.signbit(vals[start + i]))
                got.append(min(max(j, 0), top) << 1 | sign)
        return got, _codes(v)

    return reading


# ---------------------------------------------------------------------------------------------
# index "auto": exact sizes, Rice r from r0 - 2 to r0 + 3, Elias-Fano L from l0 - 2 to l0 + 3


def _rice_bytes(idx: list[int], r: int) -> int:
    gaps = np.diff(np.array([-1, *idx])) - 1
    return -(-len(idx) * r // 8) + -(-(len(idx) + int(np.sum(gaps >> r))) // 8)


def _ef_bytes(idx: list[int], low: int) -> int:
    return -(-len(idx) * low // 8) + -(-((idx[-1] >> low) + len(idx)) // 8)


def _index_reading(r0_of: Callable[[list[int], int], int]) -> Callable[..., Any]:
    def reading(v: dict[str, Any], config: dict[str, Any], u: F32) -> Any:
        h, idx = v["header"], v["decoded"]["indices"]
        if config["index"] not in ("auto", "rice") or h["index_coding"] == "all" or not idx:
            return None
        d, k = h["d"], len(idx)

        def allowed(p0: int) -> list[int]:
            return [p for p in range(p0 - 2, p0 + 4) if p >= 0 and 2**p <= d]

        cands = [(_rice_bytes(idx, r), 0, r, "rice") for r in allowed(r0_of(idx, d))]
        if config["index"] == "auto":
            l0 = math.floor(math.log2(max(1.0, d / k)))
            cands += [(_ef_bytes(idx, low), 1, low, "ef") for low in allowed(l0)]
            cands.append((-(-d // 8), 2, 0, "bitmap"))
        _, _, param, coding = min(cands)
        return (coding, param), (h["index_coding"], h["index_param"])

    return reading


def _r0_mean_gap(idx: list[int], d: int) -> int:
    gaps = np.diff(np.array([-1, *idx])) - 1
    return math.floor(math.log2(max(1.0, float(np.mean(gaps)))))


def _r0_d_over_k(idx: list[int], d: int) -> int:
    return math.floor(math.log2(max(1.0, d / len(idx))))


# ---------------------------------------------------------------------------------------------

Reading = Callable[[dict[str, Any], dict[str, Any], F32], Any]
CASES: dict[str, tuple[Reading, dict[str, tuple[Reading, str]]]] = {
    # rule: (documented reading, {alternative: the vector expected to catch it})
    "k": (_k_reading(round), {
        "round half up": (_k_reading(_half_up), "topk_round_half_down_to_even"),
        "round half down": (_k_reading(_half_down), "topk_round_half_up_to_even"),
    }),
    "quantization": (_quant_reading(np.float32), {
        "float64 arithmetic": (_quant_reading(np.float64), "quant_float32_not_float64"),
    }),
    "index": (_index_reading(_r0_mean_gap), {
        "Rice r0 from d / k": (_index_reading(_r0_d_over_k), "rice_r0_from_mean_gap"),
    }),
}  # fmt: skip


@pytest.mark.parametrize("rule", CASES)
def test_the_documented_reading_agrees_with_every_vector(rule: str) -> None:
    documented, _ = CASES[rule]
    # Execute + Assert
    assert _disagreeing(documented) == set()


ALTERNATIVES = [(rule, alt) for rule, (_, alts) in CASES.items() for alt in alts]


@pytest.mark.parametrize(("rule", "alternative"), ALTERNATIVES)
def test_an_alternative_reading_fails_a_vector(rule: str, alternative: str) -> None:
    # Prepare
    reading, catcher = CASES[rule][1][alternative]
    assert any(name == catcher for name, *_ in ENCODED), f"{catcher} is no longer a vector"
    # Execute + Assert: the gap of review r7 stays closed
    assert catcher in _disagreeing(reading)
