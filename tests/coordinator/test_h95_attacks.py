"""What each robust rule does against known attacks on one small seeded problem (helper-95's audit).

The table in docs/robustness.md ("Known attacks, one round") is `attack_table()`; print it with
`.venv/bin/python -m tests.coordinator.test_h95_attacks`. The tests pin the claims the doc makes
from it, and the sparse (top-k) and example-count findings next to it.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from compression import SparseUpdate
from coordinator.aggregators import ClientUpdate, build_aggregator

N, F, D = 20, 4, 100  # reports per round, attackers among them, model size
SPREAD = 3.0  # honest per-coordinate standard deviation around the common direction mu ~ N(0, 1)
# ALIE's z for n = 20, f = 4 (Baruch et al. 2019): s = floor(n/2 + 1) - f, z = Phi^-1((n - s)/n).
ALIE_Z = 0.385320466407568  # scipy.stats.norm.ppf(14 / 20)

SPECS = (
    "fedavg",
    "median",
    "trimmed_mean:0.2",
    "krum:f=4",
    "multikrum:f=4",
    "geomed",
    "cclip:tau=auto,beta=0,iters=3",
    "nnm:f=4+geomed",
    "bucket:2+median",
    "rlr:theta=4",
    "cosfilter+geomed",
)
ATTACKS = ("none", "alie", "ipm:0.1", "ipm:10", "signflip", "scaled:1e6")


def _reports(x: np.ndarray, weights: list[float] | None = None) -> list[ClientUpdate]:
    out = []
    for i, row in enumerate(x):
        idx = np.flatnonzero(row).astype(np.int64)
        upd = SparseUpdate(idx, row[idx].astype(np.float32), x.shape[1])
        out.append(ClientUpdate(f"d{i:02d}", upd, 1.0 if weights is None else weights[i]))
    return out


def _attackers(attack: str, honest: np.ndarray) -> np.ndarray:
    """F attacker rows crafted from this round's honest rows (omniscient, colluding)."""
    mean, std = honest.mean(axis=0), honest.std(axis=0)
    if attack == "alie":  # mu - z·sigma per coordinate, every attacker the same
        return np.tile(mean - ALIE_Z * std, (F, 1))
    if attack.startswith("ipm:"):  # -eps times the honest mean (Xie et al. 2020)
        return np.tile(-float(attack[4:]) * mean, (F, 1))
    if attack == "signflip":
        return -honest[:F]
    if attack.startswith("scaled:"):
        return float(attack[7:]) * honest[:F]
    raise ValueError(attack)


def run_attack(spec: str, attack: str, seed: int = 0) -> tuple[float, float, dict]:
    """Round 1: N honest reports (momentum and centres start); round 2: N - F honest + F attackers.

    Returns round 2's (||r - h|| / ||h||, cos(r, h), measurements) with h the mean of round 2's
    honest reports and r the aggregate.
    """
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=D)
    first = mu + SPREAD * rng.normal(size=(N, D))
    honest = mu + SPREAD * rng.normal(size=(N - F, D))
    second = honest if attack == "none" else np.vstack([honest, _attackers(attack, honest)])
    proc = build_aggregator(spec).create(D)
    state = proc.next(proc.initialize(), _reports(first)).state
    out = proc.next(state, _reports(second))
    r, h = out.result.astype(np.float64), honest.mean(axis=0)
    err = float(np.linalg.norm(r - h) / np.linalg.norm(h))
    cos = float(r @ h / max(np.linalg.norm(r) * np.linalg.norm(h), 1e-300))
    return err, cos, out.measurements


def attack_table() -> dict[str, dict[str, tuple[float, float]]]:
    return {s: {a: run_attack(s, a)[:2] for a in ATTACKS} for s in SPECS}


def _selected_attackers(meas: dict) -> int:
    while "selected" not in meas:
        meas = meas["inner"]
    return sum(int(label[1:]) >= N - F for label in meas["selected"])


def test_krum_follows_an_inner_product_manipulation_backwards() -> None:
    # Xie et al. 2020: with honest spread large against the mean (non-IID), F copies of
    # -0.1·mean sit closer to each other and to everyone than honest reports do to each other.
    err, cos, meas = run_attack("krum:f=4", "ipm:0.1")
    assert _selected_attackers(meas) == 1
    assert cos < -0.99  # the round's step points against the honest mean


@pytest.mark.parametrize("spec", ["krum:f=4", "multikrum:f=4"])
def test_krum_selects_alie_reports(spec: str) -> None:
    # ALIE sits inside the honest spread, closer to the honest mean than any honest report.
    _, _, meas = run_attack(spec, "alie")
    assert _selected_attackers(meas) == (1 if spec.startswith("krum") else F)


def test_the_robust_rules_bound_every_attack_here_but_none_removes_alie() -> None:
    # Prepare / Execute
    table = attack_table()

    # Assert: plain FedAvg is reversed by IPM with a large epsilon and moved without bound by
    # scaled reports; the rules bounding distances or coordinates keep every cell within about
    # the spread of one honest report, in the honest direction (cos > 0).
    assert table["fedavg"]["ipm:10"][1] < -0.99
    assert table["fedavg"]["scaled:1e6"][0] > 1e5
    unbounded = ("fedavg", "rlr:theta=4", "krum:f=4", "bucket:2+median")
    for spec in (s for s in SPECS if s not in unbounded):
        for attack in ATTACKS:
            err, cos = table[spec][attack]
            assert err < 1.0 and cos > 0.35, (spec, attack, err, cos)
    # Buckets of 2 put the 4 attackers into 4 of the 10 bucket means: the median then sits at
    # the edge of 6 honest means, and IPM with a large epsilon turns it slightly backwards,
    # where the median of the 20 reports themselves still points forwards.
    assert table["bucket:2+median"]["ipm:10"][1] < 0 < table["median"]["ipm:10"][1]
    # RLR is the mean up to signs (no norm bound), and IPM with a large epsilon reverses it too.
    assert table["rlr:theta=4"]["scaled:1e6"][0] > 1e5
    assert table["rlr:theta=4"]["ipm:10"][1] < 0
    # ALIE gets through: it moves the coordinate-wise rules, the geometric median (the default's
    # too: cosfilter keeps it) and centered clipping; Krum and multi-Krum select it (below).
    for spec in ("median", "trimmed_mean:0.2", "geomed", "cclip:tau=auto,beta=0,iters=3",
                 "nnm:f=4+geomed", "cosfilter+geomed"):  # fmt: skip
        assert table[spec]["alie"][0] > table[spec]["none"][0] + 0.1, spec


def test_the_default_drops_what_points_backwards_and_keeps_alie() -> None:
    # cosfilter's reference is round 1's aggregate: sign flip and IPM point against it.
    for attack in ("ipm:0.1", "ipm:10", "signflip"):
        _, _, meas = run_attack("cosfilter+geomed", attack)
        assert not meas["distrusted"]
        assert set(meas["dropped"]) >= {f"d{i:02d}" for i in range(N - F, N)}, attack
    _, _, meas = run_attack("cosfilter+geomed", "alie")
    assert not set(meas["dropped"]) & {f"d{i:02d}" for i in range(N - F, N)}


def topk_example() -> npt.NDArray[np.float64]:
    """docs/robustness.md's sparse example: 10 reports (rows) over d = 2,000, each the top 1%
    (k = 20) by magnitude of one common gradient plus as much noise (seed 4)."""
    rng = np.random.default_rng(4)
    d, n, k = 2000, 10, 20
    g = rng.normal(size=d)
    x = np.zeros((n, d))
    for i in range(n):
        u = g + rng.normal(size=d)
        top = np.argpartition(-np.abs(u), k)[:k]
        x[i, top] = u[top]
    return x


def test_median_and_trimmed_mean_shrink_sparse_updates_towards_zero() -> None:
    # Top-k reports (k = 1% of d) of one common gradient plus noise: most coordinates are sent by
    # a few devices, and a coordinate-wise rule counts every missing value as a 0.
    x = topk_example()
    n, d = x.shape
    mean = x.mean(axis=0)

    def ratio(spec: str) -> tuple[float, int]:
        proc = build_aggregator(spec).create(d)
        r = proc.next(proc.initialize(), _reports(x)).result.astype(np.float64)
        return float(np.linalg.norm(r) / np.linalg.norm(mean)), int(np.count_nonzero(r))

    sent = int(np.count_nonzero(mean))
    assert sent == 147 and np.count_nonzero((x != 0).sum(axis=0) > n // 2) == 1
    norm_med, nnz_med = ratio("median")
    assert nnz_med == 1 and 0.5 < norm_med < 0.6  # only the coordinate most reports sent
    for spec, kept, norm in (("trimmed_mean:0.2", 12, 0.64), ("trimmed_mean:0.1", 33, 0.75)):
        assert ratio(spec)[1] == kept and abs(ratio(spec)[0] - norm) < 0.01, spec
    # The geometric median and centered clipping keep every coordinate, multi-Krum most.
    for spec in ("geomed", "cclip:tau=auto,beta=0"):
        norm_r, nnz_r = ratio(spec)
        assert nnz_r == sent and abs(norm_r - 1.0) < 0.02, spec
    norm_mk, nnz_mk = ratio("multikrum:f=2")
    assert nnz_mk >= 0.8 * sent and 0.95 < norm_mk < 1.05


def test_a_count_liar_sets_the_direction_of_a_norm_bounded_mean() -> None:
    # normbound + fedavg clips every report to C but still weighs it by its claimed example
    # count: one device declaring 2^53 examples sends the round's whole (clipped) step.
    rng = np.random.default_rng(1)
    g = rng.normal(size=50)
    x = np.vstack([g + 0.5 * rng.normal(size=(9, 50)), -1e3 * g])
    weights = [50.0] * 9 + [float(2**53)]

    def cos(spec: str) -> float:
        proc = build_aggregator(spec).create(50)
        r = proc.next(proc.initialize(), _reports(x, weights)).result.astype(np.float64)
        return float(r @ g / (np.linalg.norm(r) * np.linalg.norm(g)))

    assert cos("normbound:1+fedavg") < -0.99
    assert cos("normbound:1+fedavg:max_weight=100") > 0.9
    assert cos("normbound:1+fedavg:uniform=1") > 0.9


@pytest.mark.parametrize(
    ("spec", "liar_wins"),
    [
        ("bucket:2+fedavg", True),  # its count weighs in its bucket as in FedAvg (stop 50)
        ("cosfilter+fedavg", True),  # first round: no momentum, everything kept
        ("anomaly:norm_ratio=5+fedavg", True),  # 3 times the honest norm passes the ratio
        ("collusion+fedavg", True),  # no history to match
        ("nnm:f=2+fedavg", False),  # its mixed row is mostly its neighbours'
        ("bucket:2+fedavg:max_weight=100", False),
    ],
)
def test_fedavg_inside_a_wrapper_still_trusts_claimed_counts(spec: str, liar_wins: bool) -> None:
    rng = np.random.default_rng(1)
    g = rng.normal(size=50)
    x = np.vstack([g + 0.5 * rng.normal(size=(9, 50)), -3.0 * g])
    proc = build_aggregator(spec).create(50)
    r = proc.next(proc.initialize(), _reports(x, [50.0] * 9 + [float(2**53)])).result
    cos = float(r @ g / (np.linalg.norm(r) * np.linalg.norm(g)))
    assert (cos < -0.9) if liar_wins else (cos > 0.9)


def test_inside_bucketing_the_inner_f_counts_buckets_not_reports() -> None:
    # 20 reports with 20% attackers: up to 4 of the 10 bucket means hold an attacker, but the
    # inner Krum's fraction is of the rows it sees (10 buckets), so it tolerates 2 and still
    # reports its guarantee as holding. Written as a count for the buckets (f=4), it says no.
    x = np.random.default_rng(0).normal(size=(20, 5))
    for spec, f, holds in (("bucket:2+krum:f=0.2", 2, True), ("bucket:2+krum:f=4", 4, False)):
        proc = build_aggregator(spec).create(5)
        inner = proc.next(proc.initialize(), _reports(x)).measurements["inner"]
        assert (inner["clients"], inner["f"], inner["guarantee_holds"]) == (10, f, holds)


def test_a_copy_of_a_victims_report_gets_the_victim_screened_out() -> None:
    # The collusion screen's evidence is symmetric: an attacker that sends a copy of an honest
    # device's report (it must know or guess it) is flagged, and so is the victim, who then
    # stays suspect for `memory` rounds. One report per round can silence one honest device.
    rng = np.random.default_rng(0)
    d = 400

    def cohort() -> np.ndarray:
        x = np.zeros((10, d))
        for row in x:
            idx = rng.choice(d, 8, replace=False)
            row[idx] = rng.normal(size=8)
        return x

    proc = build_aggregator("collusion:tau=0.3+fedavg").create(d)
    state = proc.next(proc.initialize(), _reports(cohort())).state
    framed = cohort()
    framed[9] = framed[0]  # d09 copies d00
    out = proc.next(state, _reports(framed))
    assert set(out.measurements["dropped"]) == {"d00", "d09"}
    later = proc.next(out.state, _reports(cohort()))
    assert "d00" in later.measurements["dropped"]  # still suspect the round after


if __name__ == "__main__":
    table = attack_table()
    print("| rule | " + " | ".join(ATTACKS) + " |")
    print("|---|" + "---|" * len(ATTACKS))
    for spec, row in table.items():
        cells = [
            f"{e:.2f} ({c:+.2f})" if math.isfinite(e) and e < 1e3 else f"{e:.0e} ({c:+.2f})"
            for e, c in row.values()
        ]
        print(f"| `{spec}` | " + " | ".join(cells) + " |")
