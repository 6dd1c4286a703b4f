"""docs/simulator.md's "Where each number comes from" table (stop 55, task P): its citations,
its verdicts and its numbers, checked against the doc's list of sources, the code and the
doc's own eligible-fraction table.

- Every key a row cites ("[Bonawitz 2019]") is one of the listed sources, and every listed
  source is cited by some row: no citation without a reference, no reference left unused.
- A row that quotes no published figure ("none found") says "our assumption"; a row that says
  a value was taken from a source quotes it (a double-quoted passage) and names where.
- The values the table states are the code's (tiers, dropout, over-selection), and the
  diurnal row's 62.0 % / 3.7 % = 16.8 is the eligible row's highest over its lowest.
- The 21x at tz_sigma_h=1.5 is recomputed as the doc describes it (seeded, about 3 s).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from mobile_sim.population import DEFAULT_TIERS, Population
from protocol.messages import TaskConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "simulator.md"
HEADER = "| parameter | value here | published figure (quoted) | where | verdict |"
KEY = re.compile(r"\[([A-Z][A-Za-z]+ (?:\d{4}|README|code))\]")


def _text() -> str:
    return DOC.read_text(encoding="utf-8")


def _section() -> str:
    text = _text()
    start = text.index("### Sources, and what was encoded from them\n")
    return text[start : text.index("To use other numbers, pass your own", start)]


def _rows() -> dict[str, list[str]]:
    lines = _section().splitlines()
    i = lines.index(HEADER)
    rows: dict[str, list[str]] = {}
    for line in lines[i + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 5, line
        rows[cells[0]] = cells[1:]
    return rows


def _sources() -> set[str]:
    return set(re.findall(r"^- \*\*\[([^\]]+)\]\*\*", _section(), flags=re.M))


def test_every_citation_has_a_source_and_every_source_is_cited() -> None:
    sources = _sources()
    assert {"Bonawitz 2019", "FedScale README", "FedScale code", "FLASH 2021"} <= sources
    cited: set[str] = set()
    for name, (_, figure, where, _) in _rows().items():
        keys = set(KEY.findall(where)) | set(KEY.findall(figure))
        assert keys <= sources, (name, keys - sources)
        cited |= keys
    # the prose above the table cites too (the list's own "**[key]**" entries do not count)
    prose = re.sub(r"\*\*\[[^\]]+\]\*\*", "", _section().split(HEADER)[0])
    cited |= set(KEY.findall(prose))
    assert sources <= cited, sources - cited


def test_verdicts_follow_the_figures() -> None:
    rows = _rows()
    assert len(rows) >= 12
    for name, (_, figure, where, verdict) in rows.items():
        if figure.startswith("none found"):
            assert verdict.startswith("our assumption"), name
        if verdict.startswith("taken from"):
            assert re.search(r'"[^"]{20,}"', figure), name  # a quoted passage
            assert KEY.search(where) and "Section" in where, name
        if where == "-":
            assert figure == "none found" and verdict == "our assumption", name


def test_values_are_the_codes() -> None:
    rows = _rows()
    shares = " / ".join(f"{t.share:.2f}" for t in DEFAULT_TIERS)
    assert rows["tier shares"][0] == shares
    drop = " / ".join(f"{t.dropout_p:.2f}" for t in DEFAULT_TIERS)
    mean = sum(t.share * t.dropout_p for t in DEFAULT_TIERS)
    assert rows["dropout"][0] == f"{drop} by tier (fleet mean {mean:.3f})"
    assert 0.06 <= min(t.dropout_p for t in DEFAULT_TIERS) <= mean <= 0.10
    assert max(t.dropout_p for t in DEFAULT_TIERS) <= 0.10
    assert rows["over-selection"][0] == str(
        TaskConfig.__dataclass_fields__["over_selection"].default
    )
    ratios = " / ".join(f"{t.down_median_mbps / t.up_median_mbps:.3g}x" for t in DEFAULT_TIERS)
    assert rows["uplink slower than downlink"][0].startswith(ratios), ratios
    latency = " / ".join(f"{t.latency_median_ms:g}" for t in DEFAULT_TIERS)
    assert rows["latency"][0].startswith(f"{latency} ms"), latency
    assert min(min(t.memory_gb) for t in DEFAULT_TIERS) == 2.0  # the "at least 2 GB" floor
    sizes = " / ".join("{" + ", ".join(f"{g:g}" for g in t.memory_gb) + "}" for t in DEFAULT_TIERS)
    assert rows["memory"][0] == f"{sizes} GiB"


def test_the_diurnal_ratio_is_the_eligible_tables() -> None:
    text = re.sub(r"\s+", " ", _text())
    row = re.search(r"\| eligible \|((?: [\d.]+ % \|){12})", text)
    assert row is not None
    values = [float(v) for v in re.findall(r"([\d.]+) %", row.group(1))]
    hi, lo = max(values), min(values)
    claim = _rows()["diurnal swing"][0]
    assert f"{hi:.1f} % / {lo:.1f} % = {hi / lo:.1f}" in claim
    assert f"({round(hi / lo)}x)" in claim


@pytest.mark.parametrize(("tz", "ratio"), [(1.5, 21)])
def test_the_us_like_swing_is_recomputed(tz: float, ratio: int) -> None:
    n = 200_000
    pop = Population.build(n, 0, tz_sigma_h=tz)
    prof = pop.profiles(np.arange(n, dtype=np.int64))
    fractions = [pop.available_mask(prof, 86_400.0 + k * 1800.0).mean() for k in range(48)]
    assert round(max(fractions) / min(fractions)) == ratio
    assert f"more ({ratio}x) at `tz_sigma_h={tz}`" in _rows()["diurnal swing"][3]
