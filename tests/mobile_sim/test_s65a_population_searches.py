"""What stop 65 found for the population's remaining assumptions (issue #7, task s65a).

docs/simulator.md's "Where each number comes from" rows for the latency, home wifi, tier shares,
compute spread and time zones name what was searched and found, and why none of it was
encoded. Checked here:

- the home-wifi row's fleet share is recomputed from `Population.build` (the first 200,000
  devices of the 10^6 fleet) and is the figure the row states;
- the U.S. share that row derives from [Pew 2021]'s quoted percentages (owners of both over
  owners of a smartphone) is recomputed from those percentages, and the fleet's share is within
  the 0.002 the row claims;
- the rows that cite stop 65's finds keep "our assumption" and say why each find was not used
  (second-hand, one country's, or another quantity), and [Pew 2021] is a listed source.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mobile_sim.population import DEFAULT_TIERS, Population

DOC = Path(__file__).resolve().parents[2] / "docs" / "simulator.md"
HEADER = "| parameter | value here | published figure (quoted) | where | verdict |"
DEVICES, SEED, FLEET = 10**6, 0, 200_000
PEW_OWN_QUOTE = (
    '"Smartphone ownership (85%) and home broadband subscriptions (77%) have increased among '
    'American adults since 2019 – from 81% and 73% respectively."'
)
PEW_EITHER_QUOTE = '"And 91% of adults report having at least one of these technologies."'


def _rows() -> dict[str, list[str]]:
    lines = DOC.read_text(encoding="utf-8").splitlines()
    i = lines.index(HEADER)
    rows: dict[str, list[str]] = {}
    for line in lines[i + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def fleet_home_wifi_share() -> float:
    """Fraction of the first FLEET devices of the 10^6 fleet with wifi where they charge."""
    prof = Population.build(DEVICES, SEED).profiles(np.arange(FLEET))
    return float(np.mean(prof.home_wifi))


def pew_share(row: str) -> float:
    """U.S. smartphone owners with home broadband, from the percentages the row quotes."""
    own = re.search(r"ownership \((\d+)%\) and home broadband subscriptions \((\d+)%\)", row)
    either = re.search(r"And (\d+)% of adults report having at least one", row)
    assert own is not None and either is not None
    phone, broadband = int(own.group(1)), int(own.group(2))
    return (phone + broadband - int(either.group(1))) / phone


def test_home_wifi_row_states_the_fleets_share_and_pews() -> None:
    value, figure, where, verdict = _rows()["home wifi"]
    share = fleet_home_wifi_share()
    expected = sum(t.share * t.home_wifi_p for t in DEFAULT_TIERS)
    assert abs(share - expected) < 0.005  # 200,000 draws: the tiers' mean, within sampling
    assert value == " / ".join(f"{t.home_wifi_p:.2f}" for t in DEFAULT_TIERS)
    assert PEW_OWN_QUOTE in figure and PEW_EITHER_QUOTE in figure
    pew = pew_share(figure)
    assert f"= {pew:.3f} of smartphone owners have home broadband" in figure
    assert f"The fleet's share, {share:.3f} (the first 200,000 devices" in verdict
    assert f"is within 0.002 of [Pew 2021]'s {pew:.3f}" in verdict
    assert abs(share - pew) < 0.002
    assert verdict.startswith("our assumption") and "not encoded" in verdict
    assert "[Pew 2021]" in where


def test_stop_65_rows_keep_our_assumption_and_say_why() -> None:
    rows = _rows()
    why = {
        "latency": ("read only in news reports", "second-hand or one country's"),
        "tier shares": ("read only in news reports", "not a share of the phones in use"),
        "compute medians and sigmas": ("compares chipsets, not the mix of phones in use",),
        "time zones": ("only an unpublished computation was found",),
        "home wifi": ("one country's", "is a share of time"),
    }
    for name, phrases in why.items():
        _, figure, where, verdict = rows[name]
        assert verdict.startswith("our assumption"), name
        for phrase in phrases:
            assert phrase in f"{figure} {where} {verdict}", (name, phrase)


def test_pew_is_a_listed_source() -> None:
    text = DOC.read_text(encoding="utf-8")
    entry = re.search(r"^- \*\*\[Pew 2021\]\*\*(.*?)(?=^- \*\*|^\n)", text, flags=re.M | re.S)
    assert entry is not None
    body = re.sub(r"\s+", " ", entry.group(1))
    assert '"Mobile Technology and Home Broadband 2021"' in body
    assert "1,502 U.S. adults" in body
    assert (
        "https://www.pewresearch.org/daily-brief/mobile-technology-and-home-broadband-2021/" in body
    )
