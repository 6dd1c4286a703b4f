"""Audit of docs/robustness.md: each aggregator against a numpy reference written from the doc's
definition alone, the guarantees it states as properties, its refusals and its spec examples.

References (docs/robustness.md, "Aggregators" table and "Edge cases"): missing coordinates of a
sparse report count as 0; robust rules weigh every report 1 whatever its example count.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import SparseUpdate
from coordinator.aggregators import AggregatorSpecError, ClientUpdate, build_aggregator
from coordinator.aggregators._robust import cohort_refusal

DOC = Path(__file__).resolve().parents[2] / "docs" / "robustness.md"
FAST = settings(max_examples=40, derandomize=True, deadline=None)


def updates(x: np.ndarray, weights: np.ndarray | None = None) -> list[ClientUpdate]:
    out = []
    for i, row in enumerate(x.astype(np.float32)):
        idx = np.flatnonzero(row).astype(np.int64)
        w = 1.0 if weights is None else float(weights[i])
        out.append(ClientUpdate(f"dev-{i:03d}", SparseUpdate(idx, row[idx], row.shape[0]), w))
    return out


def run(spec: str, x: np.ndarray, weights: np.ndarray | None = None):  # type: ignore[no-untyped-def]
    proc = build_aggregator(spec).create(x.shape[1])
    return proc.next(proc.initialize(), updates(x, weights))


@st.composite
def reports(draw, min_n: int = 1, max_n: int = 9):  # type: ignore[no-untyped-def]
    n = draw(st.integers(min_n, max_n))
    d = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[rng.random((n, d)) < draw(st.sampled_from([0.0, 0.3]))] = 0.0
    w = rng.integers(1, 200, size=n).astype(np.float64)
    return x, w


def close(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# -- 1. references from the doc's definitions ----------------------------------------------------


@FAST
@given(reports())
def test_fedavg_is_the_example_weighted_mean(xw: tuple[np.ndarray, np.ndarray]) -> None:
    x, w = xw
    x64 = x.astype(np.float64)
    close(run("fedavg", x, w).result, (w[:, None] * x64).sum(0) / w.sum())
    close(run("fedavg:uniform=1", x, w).result, x64.mean(0))
    cw = np.minimum(w, 50.0)
    close(run("fedavg:max_weight=50", x, w).result, (cw[:, None] * x64).sum(0) / cw.sum())


@FAST
@given(reports())
def test_median_is_the_coordinate_median_ignoring_counts(xw: tuple[np.ndarray, np.ndarray]) -> None:
    x, w = xw
    # "the median of 4 is the mean of the two middle" (Modes); counts ignored.
    close(run("median", x, w).result, np.median(x.astype(np.float64), axis=0))


@FAST
@given(reports(), st.sampled_from([0.1, 0.2, 0.29, 0.4, 0.49]))
def test_trimmed_mean_drops_floor_beta_n_a_side(
    xw: tuple[np.ndarray, np.ndarray], beta: float
) -> None:
    x, w = xw
    n = x.shape[0]
    t = min(math.floor(Fraction(str(beta)) * n), (n - 1) // 2)  # exact floor, capped (Edge cases)
    s = np.sort(x.astype(np.float64), axis=0)
    close(run(f"trimmed_mean:{beta}", x, w).result, s[t : n - t].mean(0))


def krum_reference(x: np.ndarray, f: int) -> tuple[np.ndarray, int]:
    """Scores as the doc defines them and the number of neighbours per score."""
    n = x.shape[0]
    x64 = x.astype(np.float64)
    d2 = ((x64[:, None, :] - x64[None, :, :]) ** 2).sum(-1)
    k = min(max(1, n - f - 2), n - 1)  # n - f - 2; max(1, .) below the bound (Edge cases)
    scores = (
        np.array([np.sort(np.delete(d2[i], i))[:k].sum() for i in range(n)])
        if n > 1
        else np.zeros(1)
    )
    return scores, k


@FAST
@given(reports(min_n=1), st.integers(0, 3))
def test_krum_picks_the_lowest_score_lowest_position_on_ties(
    xw: tuple[np.ndarray, np.ndarray], f: int
) -> None:
    x, w = xw
    out = run(f"krum:f={f}", x, w)
    scores, _ = krum_reference(x, f)
    best = scores.min()
    # Exact ties go to the lowest position; near-ties within rounding may go to either.
    tied = np.flatnonzero(scores <= best + 1e-9 * max(1.0, abs(best)))
    picked = [i for i in tied if np.allclose(out.result, x[i], rtol=1e-6, atol=1e-7)]
    assert picked, (scores, out.result, x)
    exact = np.flatnonzero(scores == best)
    if (
        len(tied) == len(exact)
        and len(exact) > 1
        and len({tuple(x[i]) for i in exact}) == len(exact)
    ):
        assert np.allclose(out.result, x[exact[0]])
    if x.shape[0] <= 2 * f + 2:
        assert out.measurements["guarantee_holds"] is False
    elif f > 0:
        assert out.measurements["guarantee_holds"] is True


@FAST
@given(reports(min_n=1), st.integers(0, 3), st.one_of(st.none(), st.integers(1, 12)))
def test_multikrum_averages_the_m_best_capped_at_n_minus_f(
    xw: tuple[np.ndarray, np.ndarray], f: int, m: int | None
) -> None:
    x, w = xw
    n = x.shape[0]
    spec = f"multikrum:f={f}" + ("" if m is None else f",m={m}")
    out = run(spec, x, w)
    scores, _ = krum_reference(x, f)
    cap = max(1, n - f)
    mm = cap if m is None else min(m, cap)
    assert out.measurements["m"] == mm
    order = np.argsort(scores, kind="stable")
    gap = np.sort(scores)
    # Skip draws whose m-th and (m+1)-th scores tie within rounding: the set is then ambiguous.
    if mm < n and gap[mm] - gap[mm - 1] <= 1e-9 * max(1.0, gap[mm]):
        return
    close(out.result, x[order[:mm]].astype(np.float64).mean(0))


@FAST
@given(reports(), st.sampled_from([1, 2, 3, 5, 20]), st.sampled_from([-1.0, 0.0, -0.5]))
def test_rlr_reverses_coordinates_with_a_weak_sign_vote(
    xw: tuple[np.ndarray, np.ndarray], theta: int, low_lr: float
) -> None:
    x, w = xw
    n = x.shape[0]
    vote = np.abs(np.sign(x.astype(np.float64)).sum(0))
    lr = np.where(vote < min(theta, n), low_lr, 1.0)
    out = run(f"rlr:theta={theta},low_lr={low_lr}", x, w)
    close(out.result, lr * x.astype(np.float64).mean(0))
    assert out.measurements["theta_capped"] is (theta > n)


def test_rlr_fractional_theta_is_met_at_exactly_theta_n() -> None:
    # The doc: "a vote of 7 of 50 reports meets θ=0.14" (float product 7.000000000000001).
    x = np.full((50, 2), -1.0, dtype=np.float32)
    x[:7, 0] = 1.0  # coordinate 0: 7 positive, 43 negative -> vote 36
    x[:, 1] = 0.0
    x[:7, 1] = 1.0  # coordinate 1: exactly 7 votes
    out = run("rlr:theta=0.14", x)
    assert out.result[1] == pytest.approx(7 / 50)  # kept, not reversed


@FAST
@given(reports(), st.sampled_from([0.01, 0.5, 1.0, 3.0]))
def test_normbound_clips_each_report_then_fedavg(
    xw: tuple[np.ndarray, np.ndarray], c: float
) -> None:
    x, w = xw
    x64 = x.astype(np.float64)
    norms = np.linalg.norm(x64, axis=1)
    factor = np.where(norms > c, c / np.where(norms > 0, norms, 1.0), 1.0)
    clipped = x64 * factor[:, None]
    assert (np.linalg.norm(clipped, axis=1) <= c * (1 + 1e-12)).all()
    out = run(f"normbound:{c}", x, w)
    close(out.result, (w[:, None] * clipped).sum(0) / w.sum())
    assert np.linalg.norm(out.result) <= c * (1 + 1e-5)


@FAST
@given(reports(min_n=2), st.integers(0, 3))
def test_nnm_replaces_each_report_by_the_mean_of_its_n_minus_f_nearest(
    xw: tuple[np.ndarray, np.ndarray], f: int
) -> None:
    x, w = xw
    n = x.shape[0]
    x64 = x.astype(np.float64)
    d2 = ((x64[:, None, :] - x64[None, :, :]) ** 2).sum(-1)
    k = max(1, n - f)  # f >= n: one neighbour, rows unchanged (Edge cases)
    srt = np.sort(d2, axis=1)
    if k < n and (np.abs(srt[:, k] - srt[:, k - 1]) <= 1e-9 * (1 + srt[:, k])).any():
        return  # a tie at the k-th neighbour: which one is taken is not documented
    mixed = np.stack([x64[np.argsort(d2[i], kind="stable")[:k]].mean(0) for i in range(n)])
    close(run(f"nnm:f={f}+fedavg:uniform=1", x, w).result, mixed.mean(0))


@FAST
@given(reports(min_n=1), st.integers(1, 4))
def test_bucket_before_weighted_fedavg_is_fedavg(xw: tuple[np.ndarray, np.ndarray], s: int) -> None:
    x, w = xw
    x64 = x.astype(np.float64)
    close(run(f"bucket:{s}+fedavg", x, w).result, (w[:, None] * x64).sum(0) / w.sum())


def smoothed_weiszfeld_objective(x: np.ndarray, z: np.ndarray) -> float:
    return float(np.linalg.norm(x.astype(np.float64) - z, axis=1).sum())


@FAST
@given(reports(min_n=1))
def test_geomed_minimises_the_sum_of_distances_uniformly(xw: tuple[np.ndarray, np.ndarray]) -> None:
    x, w = xw
    x64 = x.astype(np.float64)
    z = x64.mean(0)
    for _ in range(3000):
        dist = np.maximum(np.linalg.norm(x64 - z, axis=1), 1e-9)
        z = (x64 / dist[:, None]).sum(0) / (1 / dist).sum()
    got = run("geomed:max_iter=1000,tol=0", x, w).result.astype(np.float64)
    ref = smoothed_weiszfeld_objective(x, z)
    assert smoothed_weiszfeld_objective(x, got) <= ref * (1 + 1e-4) + 1e-5


# -- 2. guarantees as properties -----------------------------------------------------------------


@st.composite
def attacked(draw, rule_min_n: int = 3):  # type: ignore[no-untyped-def]
    n = draw(st.integers(rule_min_n, 11))
    d = draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    honest_n = n - draw(st.integers(0, (n - 1) // 2))
    honest = rng.normal(size=(honest_n, d)).astype(np.float32)
    scale = draw(st.sampled_from([1e3, 1e12, -1e12]))
    bad = (rng.normal(size=(n - honest_n, d)) * scale).astype(np.float32)
    if draw(st.booleans()):
        bad[:] = bad[:1]  # colluders sending one point
    x = np.concatenate([honest, bad])
    perm = rng.permutation(n)
    return x[perm], perm < honest_n, n - honest_n


def inside(result: np.ndarray, honest: np.ndarray) -> bool:
    lo, hi = honest.min(0).astype(np.float64), honest.max(0).astype(np.float64)
    tol = 1e-5 * (1 + np.abs(honest).max())
    return bool(((result >= lo - tol) & (result <= hi + tol)).all())


@FAST
@given(attacked())
def test_median_and_trimmed_mean_stay_in_the_honest_range(case) -> None:  # type: ignore[no-untyped-def]
    x, is_honest, f = case
    n = x.shape[0]
    assert inside(run("median", x).result, x[is_honest])
    beta = f / n  # floor(beta n) = f >= f
    assert inside(run(f"trimmed_mean:{beta + 1e-9 if f else 0.3}", x).result, x[is_honest])


@FAST
@given(attacked(rule_min_n=4))
def test_krum_picks_an_honest_report_when_n_exceeds_2f_plus_2(case) -> None:  # type: ignore[no-untyped-def]
    x, is_honest, f = case
    n = x.shape[0]
    if not n > 2 * f + 2 or f == 0:
        return
    out = run(f"krum:f={f}", x)
    assert out.measurements["guarantee_holds"] is True
    assert any(np.array_equal(out.result, x[i]) for i in np.flatnonzero(is_honest))


# -- 2b. documented refusals ---------------------------------------------------------------------


def refusal(spec: str) -> str:
    with pytest.raises(AggregatorSpecError) as e:
        build_aggregator(spec)
    return str(e.value)


def test_documented_build_refusals_read_as_the_doc_quotes_them() -> None:
    doc = DOC.read_text().replace("\n", " ")
    krum = refusal("krum:f=0.5")
    assert krum == (
        "krum: Krum needs n > 2f + 2, which a fraction f >= 0.5 never meets; got f=0.5 "
        "(give a fraction below 0.5 or a count)"
    )
    assert f'"{krum}"' in doc
    geo = refusal("geomed:max_iter=1e14")
    assert geo == "geomed: geometric median max_iter must be at most 1,000, got 100000000000000"
    assert f'"{geo}"' in doc
    refusal("nnm:f=0.6")  # "a fraction f above 0.5 is refused when built"
    build_aggregator("nnm:f=0.5")  # "0.5 stays"


@pytest.mark.parametrize(
    ("spec", "n", "quoted"),
    [
        (
            "krum:f=2",
            4,
            "krum: Krum needs n > 2f + 2, so f=2 needs more than 6 reports a round, and a full "
            "round has 4 (clients_per_round) (raise clients_per_round or lower f)",
        ),
        ("krum:f=0.45", 10, None),
        ("multikrum:f=3", 5, None),
        ("bucket:2+krum:f=2", 10, None),
        ("trimmed_mean:0.1", 9, "raise clients_per_round, or beta to at least 1/n: 0.1112"),
        (
            "bucket:5+median",
            10,
            "bucket: s=5 leaves 2 bucket means of a full round's 10 reports (clients_per_round), "
            "and over 2 or fewer no rule can outvote a bad one (the median of two is their mean): "
            "s must be below n/2 = 5 for 3 bucket means or more (lower s or raise clients_per_round)",
        ),
        ("krum:f=1e300", 10, "so f=1e+300 needs more than 2e+300 reports a round"),
    ],
)
def test_documented_cohort_refusals(spec: str, n: int, quoted: str | None) -> None:
    reason = cohort_refusal(build_aggregator(spec), n)
    assert reason is not None
    if quoted is not None:
        assert quoted in reason
        assert quoted in DOC.read_text().replace("\n", " ")


# -- 3. every spec the doc writes parses and builds ----------------------------------------------

NAMES = (
    "fedavg|mean|median|trimmed_mean|krum|multikrum|geomed|cclip|cosfilter|rlr|normbound|bucket"
    "|nnm|collusion|anomaly|dp|avgm|adam|yogi|adagrad"
)
STAGE = rf"(?:{NAMES})(?::[^\s+`]*)?"
# Written in the doc as templates ([...] optional parts, "..." elided) or as refusals it explains.
NOT_BUILT = {
    "anomaly:...",
    "cclip:tau=1,beta=0.9[,iters=1]",
    "cclip:tau=inf",
    "collusion+dp:...",
    "collusion:tau=0.3+dp:...",
    "cosfilter+adam+fedavg",
    "dp",
    "dp:",
    "dp:...",
    "dp:...,quantile=Q",
    "dp:...,quantile=Q,max_clip=M",
    "geomed:nu=inf",
    "nnm:f=...+krum",
    "normbound",
    "normbound:q=0.5[,init=,lr=,max=]",
    "rlr:theta=2[,low_lr=-1]",
    "yogi+collusion+dp:...+fedavg",
}


def doc_specs() -> list[str]:
    found = set()
    for m in re.finditer(r"`([^`\n]+)`", DOC.read_text()):
        if re.fullmatch(rf"(?:{STAGE}\+)*{STAGE}", m.group(1)):
            found.add(m.group(1))
    return sorted(found)


def test_the_doc_writes_many_specs() -> None:
    specs = doc_specs()
    assert len(specs) > 60
    assert NOT_BUILT <= set(specs)  # each exception is still in the doc


@pytest.mark.parametrize("spec", [s for s in doc_specs() if s not in NOT_BUILT])
def test_every_spec_in_the_doc_builds_and_runs(spec: str) -> None:
    factory = build_aggregator(spec)
    proc = factory.create(4)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 4)).astype(np.float32)
    out = proc.next(proc.initialize(), updates(x))
    assert out.result.shape == (4,) and np.isfinite(out.result).all()


# -- 4. the seed-0 matrix tables against bench/results/robustness.json ---------------------------

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "robustness.json"


def matrix_table(heading: str) -> dict[str, list[str]]:
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    rows: dict[str, list[str]] = {}
    header: list[str] = []
    for line in lines[start + 1 :]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == "aggregator":
            header = cells
        elif not cells[0].startswith("---"):
            rows[cells[0].strip("*`").replace("`** (default)", "")] = cells
    assert header[1] == "none" and header[-1] == "worst / FedAvg clean"
    rows["_header"] = header
    return rows


@pytest.mark.parametrize(
    ("heading", "key"),
    [("**10% malicious, seed 0**", "10pct"), ("**20% malicious, seed 0**", "20pct")],
)
def test_matrix_tables_equal_the_results_file(heading: str, key: str) -> None:
    import json

    data = json.loads(RESULTS.read_text())
    table = matrix_table(heading)
    header = table.pop("_header")
    assert set(table) == set(data["accuracy"][key])
    for agg, cells in table.items():
        assert float(cells[1]) == data["no_attack_accuracy"][agg], agg
        for attack, cell in zip(header[2:-1], cells[2:-1], strict=True):
            assert float(cell) == pytest.approx(data["accuracy"][key][agg][attack], abs=1e-12), (
                agg,
                attack,
            )
        worst = data["per_aggregator"][agg][f"worst_case_fraction_of_fedavg_{key}"]
        assert float(cells[-1].strip("*")) == pytest.approx(round(worst, 3), abs=1e-9), agg


def test_published_backdoor_run_provenance_counts() -> None:
    import json
    from collections import Counter

    runs = json.loads(RESULTS.read_text())["runs"]
    kinds = Counter(r["kind"] for r in runs)
    backdoor = [r for r in runs if r["kind"] != "matrix"]
    origin = Counter(r.get("merged_from") for r in backdoor)
    text = DOC.read_text().replace("\n", " ")
    assert "Of its 386 backdoor runs" in text and len(backdoor) == 386, kinds
    assert origin["robustness_backdoor_seeds10_19.json"] == 90
    assert origin["robustness_backdoor_10seeds.json"] == 75
    assert origin["robustness_backdoor_weakdp.json"] == 120
    assert origin["robustness.json"] == 101
    assert kinds["matrix"] == 90


# -- 1b. rules with state across rounds, and the support rule ------------------------------------


def two_rounds(spec: str, a: np.ndarray, b: np.ndarray):  # type: ignore[no-untyped-def]
    proc = build_aggregator(spec).create(a.shape[1])
    first = proc.next(proc.initialize(), updates(a))
    return first, proc.next(first.state, updates(b))


def cclip_reference(x: np.ndarray, centre: np.ndarray, tau: float | None, iters: int) -> np.ndarray:
    v = centre.astype(np.float64).copy()
    x64 = x.astype(np.float64)
    for _ in range(iters):
        dist = np.linalg.norm(x64 - v, axis=1)
        t = float(np.median(dist)) if tau is None else tau
        scale = np.where(dist > t, t / np.where(dist > 0, dist, 1.0), 1.0)
        v = v + ((x64 - v) * scale[:, None]).mean(0)
    return v


@FAST
@given(
    reports(min_n=1),
    reports(min_n=1),
    st.sampled_from([0.0, 0.5, 0.9]),
    st.sampled_from([None, 0.3, 2.0]),
    st.integers(1, 3),
)
def test_cclip_clips_around_the_centre_and_moves_it_by_momentum(
    xa: tuple[np.ndarray, np.ndarray],
    xb: tuple[np.ndarray, np.ndarray],
    beta: float,
    tau: float | None,
    iters: int,
) -> None:
    a, b = xa[0], xb[0]
    if b.shape[1] != a.shape[1]:
        b = np.resize(b, (b.shape[0], a.shape[1])).astype(np.float32)
    spec = f"cclip:tau={'auto' if tau is None else tau},beta={beta},iters={iters}"
    first, second = two_rounds(spec, a, b)
    v1 = cclip_reference(a, np.zeros(a.shape[1]), tau, iters)  # first centre: zeros
    close(first.result, v1)
    centre = beta * 0.0 + (1 - beta) * first.result.astype(np.float64)
    close(second.result, cclip_reference(b, centre, tau, iters))


def cos(u: np.ndarray, v: np.ndarray) -> float:
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    return 0.0 if nu == 0 or nv == 0 else float(u @ v / (nu * nv))


@FAST
@given(reports(min_n=1), reports(min_n=1))
def test_cosfilter_drops_nonpositive_cosines_to_the_momentum(
    xa: tuple[np.ndarray, np.ndarray], xb: tuple[np.ndarray, np.ndarray]
) -> None:
    a, b = xa[0], xb[0]
    if b.shape[1] != a.shape[1]:
        b = np.resize(b, (b.shape[0], a.shape[1])).astype(np.float32)
    first, second = two_rounds("cosfilter+median", a, b)
    close(first.result, np.median(a.astype(np.float64), axis=0))  # round 1: nothing dropped
    m = 0.5 * 0.0 + 0.5 * first.result.astype(np.float64)  # m <- 0.5 m + 0.5 aggregate
    keep = np.array([cos(row.astype(np.float64), m) > 0 for row in b])
    n = b.shape[0]
    if np.linalg.norm(m) > 0 and any(abs(cos(row.astype(np.float64), m)) < 1e-9 for row in b):
        return  # a cosine within rounding of 0: kept or dropped by rounding
    distrusted = (n - keep.sum()) >= math.ceil(0.5 * n)  # max_drop=0.5: "drop half or more"
    if np.linalg.norm(m) == 0:
        return  # no momentum direction: not documented beyond round 1
    if distrusted:
        close(second.result, np.median(b.astype(np.float64), axis=0))
    else:
        close(second.result, np.median(b[keep].astype(np.float64), axis=0))


@FAST
@given(reports(min_n=1), st.sampled_from([0.1, 0.2, 0.3]))
def test_trimmed_mean_support_rule(xw: tuple[np.ndarray, np.ndarray], beta: float) -> None:
    x = xw[0]
    n, d = x.shape
    t = min(math.floor(Fraction(str(beta)) * n), (n - 1) // 2)
    x64 = x.astype(np.float64)
    plain = np.sort(x64, axis=0)[t : n - t].mean(0)
    want = plain.copy()
    sent = x != 0  # the helper sends exactly the nonzero values
    for j in range(d):
        k = int(sent[:, j].sum())
        if k >= 2 * t + 1 and k < n:
            vals = np.sort(x64[sent[:, j], j])
            want[j] = vals[t : k - t].mean()
    out = run(f"trimmed_mean:{beta},support=1", x)
    close(out.result, want)
    assert out.measurements["support_threshold"] == 2 * t + 1


@pytest.mark.parametrize(
    "spec",
    [
        "median",
        "trimmed_mean:0.2",
        "krum:f=2",
        "multikrum:f=2,m=5",
        "geomed",
        "cclip:tau=1",
        "rlr:theta=2",
    ],
)
def test_empty_round_gives_zeros_and_one_report_gives_it(spec: str) -> None:
    proc = build_aggregator(spec).create(3)
    out = proc.next(proc.initialize(), [])
    assert (out.result == 0).all() and out.result.shape == (3,)
    one = np.array([[0.25, -0.5, 0.0]], dtype=np.float32)
    if spec.startswith("cclip"):
        return  # "at most τ from the centre towards it", checked above
    close(proc.next(proc.initialize(), updates(one)).result, one[0])


@pytest.mark.parametrize(
    ("spec", "n", "expected"),
    [
        ("trimmed_mean:0.1", 9, {"trimmed_each_side": 0, "guarantee_holds": False, "beta": 0.1}),
        ("trimmed_mean:0.1", 10, {"trimmed_each_side": 1, "guarantee_holds": True}),
        ("multikrum:f=0.2", 4, {"f": 0, "m": 4, "guarantee_holds": False, "f_fraction": 0.2}),
        ("multikrum:f=2,m=9", 10, {"m": 8, "m_capped": True, "guarantee_holds": True}),
        ("krum:f=2", 6, {"m": 1, "guarantee_holds": False}),
        ("nnm:f=2", 4, {"guarantee_holds": False}),
        ("nnm:f=2", 5, {"guarantee_holds": True}),
        ("bucket:2", 4, {"buckets": 2, "bucket_size": 2, "guarantee_holds": False}),
        ("bucket:2", 6, {"buckets": 3, "guarantee_holds": True}),
        ("rlr:theta=20", 5, {"theta": 5.0, "theta_capped": True}),
    ],
)
def test_documented_per_round_measurements(spec: str, n: int, expected: dict[str, object]) -> None:
    x = np.random.default_rng(n).normal(size=(n, 3)).astype(np.float32)
    got = run(spec, x).measurements
    assert {k: got[k] for k in expected} == expected


def test_parameter_ranges_the_table_states() -> None:
    assert "low_lr must be in [-1, 0]" in refusal("rlr:theta=2,low_lr=0.5")
    assert "0 <= beta < 1" in refusal("cclip:tau=1,beta=1")
    assert "at most 100" in refusal("cclip:tau=1,iters=101")
    build_aggregator("cclip:tau=1,iters=100")
    build_aggregator("geomed:max_iter=1000")


@FAST
@given(
    st.integers(0, 2**31 - 1),
    st.sampled_from([0.5, 0.9]),
    st.sampled_from([0.2, 1.0]),
    st.sampled_from([None, 1.5, 4.0]),
)
def test_adaptive_normbound_follows_the_documented_step(
    seed: int, q: float, lr: float, cap: float | None
) -> None:
    # C <- C * exp(-lr * (b - Q)), b the fraction of reports at or below C; C <= max when given.
    rng = np.random.default_rng(seed)
    spec = (
        f"normbound:q={q},init=1,lr={lr}"
        + ("" if cap is None else f",max={cap}")
        + "+fedavg:uniform=1"
    )
    proc = build_aggregator(spec).create(3)
    state = proc.initialize()
    c = 1.0
    for _ in range(4):
        n = int(rng.integers(1, 8))
        x = (rng.normal(size=(n, 3)) * rng.choice([0.3, 2.0, 50.0])).astype(np.float32)
        out = proc.next(state, updates(x))
        state = out.state
        assert out.measurements["clip"] == pytest.approx(c, rel=1e-9)
        norms = np.linalg.norm(x.astype(np.float64), axis=1)
        clipped = x * np.minimum(1.0, c / np.where(norms > 0, norms, 1.0))[:, None]
        close(out.result, clipped.astype(np.float64).mean(0))
        b = float((norms <= c).mean())
        c = c * math.exp(-lr * (b - q))
        if cap is not None:
            c = min(c, cap)
            assert out.measurements["clip_at_max"] is (c == cap)


def test_spec_grammar_as_documented() -> None:
    from coordinator.aggregators import Clip, FedAvg, Krum, MomentumCosineFilter, TrimmedMean

    # a wrapper written last wraps FedAvg; the leftmost stage is the outermost
    assert build_aggregator("normbound:5") == build_aggregator("normbound:5+fedavg")
    outer = build_aggregator("normbound:5+cosfilter+median")
    assert isinstance(outer, Clip) and isinstance(outer.inner, MomentumCosineFilter)
    assert isinstance(build_aggregator("cosfilter").inner, FedAvg)  # type: ignore[attr-defined]
    # one positional value first, then key=value; an exponent's '+' is not a stage break
    assert build_aggregator("trimmed_mean:0.1") == TrimmedMean(0.1)
    assert build_aggregator("krum:f=1e+0") == Krum(1.0)
    assert "given twice" in refusal("trimmed_mean:0.1,beta=0.2")
    assert "must come last" in refusal("fedavg+median")
    # f as a count or a fraction of the round's reports
    assert run("krum:f=2", np.zeros((7, 2), np.float32)).measurements["f"] == 2
    assert run("krum:f=0.29", np.zeros((100, 1), np.float32)).measurements["f"] == 29


def test_cosfilter_distrust_keeps_then_restarts_the_momentum() -> None:
    proc = build_aggregator("cosfilter+median").create(2)
    state = proc.initialize()
    out = proc.next(state, updates(np.array([[1, 0], [1, 0]], np.float32)))
    assert np.array_equal(out.state[0], [0.5, 0.0])  # m = 0.5*0 + 0.5*aggregate
    against = np.array([[-1, 0], [-1, 0], [1, 0]], np.float32)  # 2 of 3 dropped: >= half
    first = proc.next(out.state, updates(against))
    assert first.measurements["distrusted"] is True and first.measurements["kept"] == 3
    assert np.array_equal(first.result, [-1.0, 0.0])  # the inner rule sees every report
    assert np.array_equal(first.state[0], [0.5, 0.0])  # first distrusted round: momentum kept
    second = proc.next(first.state, updates(against))
    assert second.measurements["distrusted"] is True
    assert np.array_equal(second.state[0], [-0.5, 0.0])  # second in a row: (1 - beta)*result
    # max_drop=1 never distrusts: nothing kept is no step that round
    proc = build_aggregator("cosfilter:max_drop=1+median").create(2)
    out = proc.next(proc.initialize(), updates(np.array([[1, 0], [1, 0.1]], np.float32)))
    none = proc.next(out.state, updates(np.array([[-1, 0], [-1, 0.1]], np.float32)))
    assert none.measurements["kept"] == 0 and (none.result == 0).all()


def test_memory_bound_figures_quoted_in_the_doc() -> None:
    text = DOC.read_text().replace("\n", " ")

    def bound(d: int, n: int, values: int, block: int) -> float:
        return (32 * d + 48 * n * values + 8 * n * n + 16 * block) / 1e6

    # test_memory_stays_far_below_n_by_d: block_elems 2**18 there
    assert (
        "with `block_elems` 2¹⁸" in text
        and "= 17 MB there (30 MB at the default block of 2²⁰)" in text
    )
    assert round(bound(100_000, 200, 1_000, 1 << 18)) == 17
    assert round(bound(100_000, 200, 1_000, 1 << 20)) == 30
    # nnm:f=2 with n = 100 reports of 1,000 values, default block
    assert "32·d + 48·N + 8·n² + 16·block = 24.9 MB" in text
    assert round(bound(100_000, 100, 1_000, 1 << 20), 1) == 24.9


@FAST
@given(
    reports(min_n=1),
    st.sampled_from(
        [
            "median",
            "trimmed_mean:0.2",
            "krum:f=1",
            "multikrum:f=1",
            "geomed",
            "cclip:tau=auto",
            "rlr:theta=2",
            "nnm:f=1+median",
        ]
    ),
)
def test_robust_rules_ignore_claimed_counts_bit_for_bit(
    xw: tuple[np.ndarray, np.ndarray], spec: str
) -> None:
    x, w = xw
    w = w.copy()
    w[0] = 2.0**53  # the frame's largest weight
    assert np.array_equal(run(spec, x, w).result, run(spec, x).result)


def test_fedavg_refuses_a_count_above_2_to_the_53_naming_the_device() -> None:
    x = np.ones((2, 2), np.float32)
    for spec in ["fedavg", "fedavg:max_weight=500", "normbound:1+fedavg", "bucket:2+fedavg"]:
        with pytest.raises(ValueError, match="dev-001"):
            run(spec, x, np.array([1.0, 2.0**53 * 2]))


def _cell(err: float, cosine: float) -> str:
    if err >= 1000:
        exp = math.floor(math.log10(err))
        shown_err = f"{round(err / 10**exp)}·10{str(exp).translate(str.maketrans('0123456789', '⁰¹²³⁴⁵⁶⁷⁸⁹'))}"
    else:
        shown_err = f"{err:.2f}"
    return f"{shown_err} ({cosine:+.2f})".replace("-", "−")


def test_known_attacks_table_equals_the_seeded_round() -> None:
    from tests.coordinator.test_h95_attacks import ATTACKS, attack_table

    lines = DOC.read_text().splitlines()
    start = lines.index(
        "| rule | none | alie | ipm ε = 0.1 | ipm ε = 10 | signflip | scaled ×10⁶ |"
    )
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].split("`")[1]] = cells[1:]
    table = attack_table()
    assert set(rows) == set(table)
    for spec, cells in rows.items():
        assert cells == [_cell(*table[spec][a]) for a in ATTACKS], spec


def test_server_optimizer_tables_equal_the_results_files() -> None:
    import json

    results = RESULTS.parent
    seeds = [
        json.loads((results / f).read_text())["arms"]
        for f in ("server_opt.json", "server_opt_seed1.json", "server_opt_seed2.json")
    ]
    arms = {
        "FedAvg, step 1": "fedavg@1",
        "FedAvg, step 2": "fedavg@2",
        "FedAvgM, β 0.5": "avgm:momentum=0.5,lr=1",
        "FedAdam, η 0.01": "adam:lr=0.01",
        "FedYogi, η 0.01": "yogi:lr=0.01",
    }
    lines = DOC.read_text().splitlines()
    start = lines.index("| arm | last-5-round mean, seeds 0 / 1 / 2 | mean | final round, mean |")
    rows = {
        c[0]: c[1:]
        for c in (
            [x.strip().strip("*") for x in line.strip("|").split("|")]
            for line in lines[start + 2 : start + 7]
        )
    }
    assert set(rows) == set(arms)
    for label, key in arms.items():
        last5 = [100 * float(np.mean(s[key]["accuracy_per_round"][-5:])) for s in seeds]
        per_seed, mean, final = rows[label]
        assert per_seed == " / ".join(f"{v:.2f}" for v in last5) + "%", label
        assert mean.strip("*") == f"{np.mean(last5):.2f}%", label
        assert (
            final.strip("*") == f"{100 * np.mean([s[key]['final_accuracy'] for s in seeds]):.2f}%"
        ), label
    finals = {
        "FedAvg, server step 1": "fedavg@1",
        "FedAvgM, β = 0.5, η = 1": "avgm:momentum=0.5,lr=1",
    }
    text = DOC.read_text()
    for label, key in finals.items():
        assert f"| {label} | {100 * seeds[0][key]['final_accuracy']:.2f}% |" in text
    assert f"| **{100 * seeds[0]['fedavg@2']['final_accuracy']:.2f}%** |" in text
    for kind, lrs in (("adam", ("0.001", "0.003", "0.03")), ("yogi", ("0.003", "0.03"))):
        alts = " / ".join(
            f"{100 * seeds[0][f'{kind}:lr={lr}']['final_accuracy']:.2f}" for lr in lrs
        )
        main = f"{100 * seeds[0][f'{kind}:lr=0.01']['final_accuracy']:.2f}"
        assert f": {alts}%) | {main}% |" in text, kind
    sizes = [a["upload_bytes"] for a in seeds[0].values()]
    assert f"{min(sizes):,} to {max(sizes):,} bytes" in text
    assert f"up to {100 * (max(sizes) / min(sizes) - 1):.1f}%" in text


@FAST
@given(
    reports(min_n=1),
    st.sampled_from([None, 1.0, 2.5]),
    st.sampled_from([None, 1.5, 3.0]),
    st.sampled_from([None, -0.2, 0.2]),
)
def test_anomaly_screens_as_documented(
    xw: tuple[np.ndarray, np.ndarray],
    max_norm: float | None,
    ratio: float | None,
    min_cos: float | None,
) -> None:
    x = xw[0]
    params = [
        f"{k}={v}"
        for k, v in (("max_norm", max_norm), ("norm_ratio", ratio), ("min_cos", min_cos))
        if v is not None
    ]
    if not params:
        return
    spec = "anomaly:" + ",".join(params + ["max_drop=1"]) + "+fedavg:uniform=1"
    x64 = x.astype(np.float64)
    norms = np.linalg.norm(x64, axis=1)
    median = float(np.median(norms))
    rejected: dict[int, str] = {}
    for i, v in enumerate(norms):
        if max_norm is not None and v > max_norm:
            rejected[i] = "norm"
        elif ratio is not None and v > ratio * median:
            rejected[i] = "norm_ratio"
    left = [i for i in range(len(x)) if i not in rejected]
    first = x64[left].mean(0) if left else np.zeros(x.shape[1])
    if min_cos is not None and left:
        cosines = {i: cos(x64[i], first) for i in left}
        if any(abs(c - min_cos) < 1e-6 for c in cosines.values()):
            return  # a cosine at the threshold within rounding
        low = [i for i in left if cosines[i] < min_cos]
        if len(low) == len(left):
            return  # max_drop=1 distrusts then: the geometric-median path, not modelled here
        for i in low:
            rejected[i] = "cosine"
    if any(abs(v - max_norm) < 1e-6 for v in norms if max_norm is not None) or (
        ratio is not None and any(abs(v - ratio * median) < 1e-6 for v in norms)
    ):
        return
    out = run(spec, x)
    assert out.measurements["rejected"] == {f"dev-{i:03d}": r for i, r in rejected.items()}
    kept = [i for i in range(len(x)) if i not in rejected]
    close(out.result, x64[kept].mean(0) if kept else np.zeros(x.shape[1]))


@FAST
@given(st.integers(0, 2**31 - 1), st.sampled_from([0.3, 0.6]))
def test_collusion_screen_scores_as_documented(seed: int, tau: float) -> None:
    rng = np.random.default_rng(seed)
    d = int(rng.integers(3, 9))
    proc = build_aggregator(f"collusion:tau={tau}+fedavg:uniform=1").create(d)
    state = proc.initialize()
    hist: dict[str, np.ndarray] = {}
    sent: dict[str, np.ndarray] = {}
    suspect: set[str] = set()
    for _ in range(3):
        ids = sorted(rng.choice(6, size=int(rng.integers(1, 5)), replace=False))
        x = rng.normal(size=(len(ids), d))
        x[rng.random(x.shape) < 0.5] = 0.0
        x = x.astype(np.float32)
        cus = []
        for i, row in zip(ids, x, strict=True):
            idx = np.flatnonzero(row).astype(np.int64)
            cus.append(ClientUpdate(f"dev-{i}", SparseUpdate(idx, row[idx], d), 1.0))
        # histories (and device frequencies) take every report of the round before scoring
        for cu, row in zip(cus, x, strict=True):
            hist[cu.device_id] = hist.get(cu.device_id, np.zeros(d)) + row.astype(np.float64)
            sent[cu.device_id] = sent.get(cu.device_id, np.zeros(d, bool)) | (row != 0)
        m = len(hist)
        df = np.sum(list(sent.values()), axis=0)
        w = np.log((1 + m) / (1 + df))
        scores = {}
        for cu, row in zip(cus, x, strict=True):
            y = w * row.astype(np.float64)
            best = 0.0
            for other, h in hist.items():
                if other == cu.device_id:
                    continue
                wh = w * h
                den = np.linalg.norm(y) * np.linalg.norm(wh)
                if den > 0:
                    best = max(best, float(y @ wh / den))
            scores[cu.device_id] = best
        if any(abs(s - tau) < 1e-6 for s in scores.values()):
            return
        flagged = {dev for dev, s in scores.items() if s > tau}
        suspect |= flagged
        keep = [j for j, cu in enumerate(cus) if cu.device_id not in suspect]
        out = proc.next(state, cus)
        state = out.state
        assert set(out.measurements["dropped"]) == {cu.device_id for cu in cus} - {
            cus[j].device_id for j in keep
        }
        close(out.result, x[keep].astype(np.float64).mean(0) if keep else np.zeros(d))


def test_seed1_table_equals_its_results_files() -> None:
    import json

    attacks = [
        "signflip",
        "scaling",
        "alie",
        "ipm:epsilon=0.1",
        "ipm:epsilon=100",
        "labelflip",
        "gaussian",
    ]
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("**20% malicious, seed 1**"))
    rows = []
    for line in lines[start:]:
        if line.startswith("| `") or line.startswith("| **`"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif rows:
            break
    old = json.loads((RESULTS.parent / "robustness_seed1.json").read_text())
    new = json.loads((RESULTS.parent / "robustness_mlp_seed1_maxdrop.json").read_text())

    def cells(data: dict, agg: str, fmt: str) -> list[str]:
        acc = data["accuracy"]["20pct"][agg]
        worst = data["per_aggregator"][agg]["worst_case_fraction_of_fedavg_20pct"]
        return (
            [format(data["no_attack_accuracy"][agg], fmt)]
            + [format(acc[a], fmt) for a in attacks]
            + [f"{worst:.3f}"]
        )

    for row in rows[:4]:
        agg = row[0].split("`")[1]
        assert row[1:] == cells(old, agg, ".3f"), agg
    last = rows[4]
    assert "robustness_mlp_seed1_maxdrop.json" in last[0]
    got = [float(c.strip("*")) for c in last[1:]]
    want = [float(c) for c in cells(new, "cosfilter+geomed", "")]
    assert got == want


def test_headline_percentages() -> None:
    import json

    d0 = json.loads(RESULTS.read_text())
    d1 = json.loads((RESULTS.parent / "robustness_mlp_seed1_maxdrop.json").read_text())
    old1 = json.loads((RESULTS.parent / "robustness_seed1.json").read_text())
    text = DOC.read_text().replace("\n", " ")
    pa = d0["per_aggregator"]
    assert (
        f"**{100 * pa['cosfilter+geomed']['worst_case_fraction_of_fedavg_20pct']:.1f}%**" in text
    )  # 98.0
    assert (
        f"{100 * d0['worst_case_accuracy_fraction_20pct_of_own_no_attack']:.1f}% of its own" in text
    )  # 99.4
    assert pa["cosfilter+geomed"]["worst_case_attack_20pct"] == "signflip"
    assert (
        f"**{100 * d1['per_aggregator']['cosfilter+geomed']['worst_case_fraction_of_fedavg_20pct']:.1f}%** on seed 1"
        in text
    )
    g0 = 100 * pa["geomed"]["worst_case_fraction_of_fedavg_20pct"]
    g1 = 100 * old1["per_aggregator"]["geomed"]["worst_case_fraction_of_fedavg_20pct"]
    assert f"plain `geomed`, kept {g0:.1f}% and {g1:.1f}%" in text
    cost = 100 * (d0["no_attack_accuracy"]["geomed"] - d0["no_attack_accuracy"]["cosfilter+geomed"])
    assert f"Its cost: {cost:.2f} pp" in text


def test_every_file_the_doc_names_exists() -> None:
    text = DOC.read_text()
    root = DOC.parents[1]
    tests = set(re.findall(r"tests/[A-Za-z0-9_/]+\.py", text))
    assert tests and all((root / t).exists() for t in tests), sorted(
        t for t in tests if not (root / t).exists()
    )
    # result files: rounds.json is a run's output folder's, the diag file is said not to be committed
    named = {Path(p).name for p in re.findall(r"[A-Za-z0-9_./-]+\.json", text)} - {
        "rounds.json",
        ".json",
    }
    missing = sorted(n for n in named if not (root / "bench" / "results" / n).exists())
    assert missing == ["robustness_cnn_geomed_diag.json"]
    assert "robustness_cnn_geomed_diag.json is an intermediate, not committed" in text.replace(
        "\n# ", " "
    ).replace("`", "")


def test_backdoor_headline_figures() -> None:
    import json

    d = json.loads(RESULTS.read_text())
    rebuild = json.loads((RESULTS.parent / "robustness_backdoor_20seeds_rebuild.json").read_text())
    text = re.sub(r"\s+", " ", DOC.read_text())

    def per_seed(data: dict, defense: str) -> tuple[list[float], list[float]]:
        seeds = data["backdoor_by_defense"][defense]["seeds"]
        keys = sorted(seeds, key=int)
        return [seeds[k]["worst_backdoor_accuracy"] for k in keys], [
            seeds[k]["worst_main_task_loss_pp"] for k in keys
        ]

    head = "collusion:tau=0.3+normbound:q=0.9,init=1+fedavg"
    weak = "collusion:tau=0.3+dp:clip=1,quantile=0.9,z=0.01,seed=0+fedavg"
    acc, loss = per_seed(d, head)
    assert len(acc) == 20
    assert np.mean(acc) == pytest.approx(d["backdoor_accuracy"]) and np.mean(loss) == pytest.approx(
        d["main_task_loss_pp"]
    )
    assert (
        f"{100 * np.mean(acc):.2f}% backdoor accuracy and +{np.mean(loss):.2f} pp main-task loss on average over seeds 0–19, "
        f"at most {100 * max(acc):.1f}% backdoor accuracy on any seed, but **+{loss[9]:.2f} pp on seed 9**"
    ) in text
    assert f"{100 * np.mean(acc[:5]):.2f}%, +{np.mean(loss[:5]):.2f} pp)" in text  # seeds 0-4
    assert (
        d["backdoor_seeds_meeting_target"] == 19 and "`backdoor_seeds_meeting_target` is 19" in text
    )
    wacc, wloss = per_seed(d, weak)
    assert len(wacc) == 20
    assert (
        f"{100 * np.mean(wacc[:5]):.2f}% backdoor accuracy and +{np.mean(wloss[:5]):.2f} pp main-task loss on average over seeds 0–4"
        in text
    )
    assert f"**+{wloss[2]:.2f} pp on seed 2**" in text
    assert f"over seeds 0–19 {100 * np.mean(wacc):.2f}% and +{np.mean(wloss):.2f} pp" in text
    over = [i for i, v in enumerate(wloss) if v > 1 + 1e-6]
    assert over == [2, 9] and f"(+{wloss[2]:.2f}, +{wloss[9]:.2f} pp" in text
    # the one-invocation rebuild
    assert (
        f"**{100 * rebuild['backdoor_accuracy']:.2f}% backdoor accuracy and +{rebuild['main_task_loss_pp']:.2f} pp, "
        f"{rebuild['backdoor_seeds_meeting_target']} of 20 seeds within the target**"
    ) in text
    assert (
        f"screen + weak DP **{100 * rebuild['backdoor_screen_weak_dp_accuracy']:.2f}% and "
        f"+{rebuild['backdoor_screen_weak_dp_main_task_loss_pp']:.2f} pp, "
        f"{rebuild['backdoor_screen_weak_dp_seeds_meeting_target']} of 20**"
    ) in text
