"""Partitions against the rules docs/simulator.md states ("Partitions"): `iid`, `dirichlet`
and `shards` put every training example in exactly one client; `iid` deals parts whose sizes
differ by at most one; `dirichlet(alpha)` gives client j a share p_j of each class, p ~
Dir(alpha) per class, drawn again until every client holds at least 2 examples; `shards` sorts
by label, cuts clients x shards_per_client shards and deals shards_per_client to each client;
`natural` is one client per group. Every split is a function of its generator's seed.

The Dirichlet reference is written class by class (the loop the split had before commit
baa0c083 batched it), on the same random stream, so the batched arithmetic is checked against
the rule rather than against itself."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from mobile_sim.partition import dirichlet, iid, natural, partition, partition_stats, shards

I64 = npt.NDArray[np.int64]


def _labels(seed: int, size: int, classes: int) -> I64:
    return np.random.default_rng(seed).integers(0, classes, size=size).astype(np.int64)


def _assert_exact_cover(parts: list[I64], size: int) -> None:
    """Every example 0..size-1 in exactly one part; each part sorted, int64, not empty."""
    for p in parts:
        assert p.dtype == np.int64
        assert p.size >= 1
        assert (np.diff(p) > 0).all()
    joined = np.sort(np.concatenate(parts))
    np.testing.assert_array_equal(joined, np.arange(size))


def dirichlet_reference(
    labels: I64, n: int, alpha: float, rng: np.random.Generator, min_size: int = 2
) -> list[I64]:
    """Class by class: shuffle the class's examples, draw p ~ Dir(alpha) over the clients,
    give client j the examples between floor(count x (p_1 + ... + p_(j-1))) and
    floor(count x (p_1 + ... + p_j)) (the last client the rest). Redraw the whole split while
    some client holds fewer than min_size examples."""
    classes = np.unique(labels)
    for _ in range(1000):
        buckets: list[list[int]] = [[] for _ in range(n)]
        for c in classes:
            idx = np.flatnonzero(labels == c).astype(np.int64)
            rng.shuffle(idx)
            p = rng.dirichlet(np.full(n, alpha))
            cuts = (np.cumsum(p) * len(idx)).astype(np.int64)[:-1]
            for j, piece in enumerate(np.split(idx, cuts)):
                buckets[j].extend(piece.tolist())
        if min(len(b) for b in buckets) >= min_size:
            return [np.sort(np.array(b, dtype=np.int64)) for b in buckets]
    raise AssertionError("the reference found no split")


@pytest.mark.parametrize("seed", range(12))
def test_dirichlet_is_the_per_class_rule(seed: int) -> None:
    # Prepare: sizes and alphas where some draws are refused (small alpha, many clients)
    rng = np.random.default_rng(100 + seed)
    size = int(rng.integers(60, 400))
    classes = int(rng.integers(2, 11))
    n = int(rng.integers(2, 12))
    alpha = float(rng.choice([0.3, 1.0, 5.0]))
    labels = _labels(seed, size, classes)

    # Execute
    got = dirichlet(labels, n, alpha, np.random.default_rng(seed))

    # Assert
    want = dirichlet_reference(labels, n, alpha, np.random.default_rng(seed))
    assert len(got) == n
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    _assert_exact_cover(got, size)
    assert min(p.size for p in got) >= 2


def test_dirichlet_min_size_is_met_and_redraws_happen() -> None:
    # Prepare: 10 clients over 3 classes at a small alpha: most draws leave a client short
    labels = _labels(5, 120, 3)

    # Execute
    parts = dirichlet(labels, 10, 0.2, np.random.default_rng(1), min_size=4)

    # Assert: the accepted draw gives every client at least 4; the reference agrees
    assert min(p.size for p in parts) >= 4
    want = dirichlet_reference(labels, 10, 0.2, np.random.default_rng(1), min_size=4)
    for g, w in zip(parts, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_dirichlet_min_size_exactly_fills_the_examples() -> None:
    # Prepare/Execute: 5 clients x 2 examples = 10 examples, the largest request allowed
    parts = dirichlet(np.zeros(10, dtype=np.int64), 5, 100.0, np.random.default_rng(0))

    # Assert: it is accepted (the check is n * min_size > len(labels)), and the split is
    # 2 apiece
    assert sorted(p.size for p in parts) == [2] * 5
    with pytest.raises(ValueError, match="need 12, there are 11"):
        dirichlet(np.zeros(11, dtype=np.int64), 6, 100.0, np.random.default_rng(0))


@pytest.mark.parametrize(("size", "n"), [(1, 1), (7, 7), (10, 3), (101, 10), (1000, 33)])
def test_iid_sizes_differ_by_at_most_one(size: int, n: int) -> None:
    # Execute
    parts = iid(_labels(0, size, 4), n, np.random.default_rng(3))

    # Assert: floor(size / n) or one more, the larger parts first as array_split deals them
    _assert_exact_cover(parts, size)
    sizes = [p.size for p in parts]
    assert sizes == [size // n + (1 if i < size % n else 0) for i in range(n)]


@pytest.mark.parametrize(
    ("size", "n", "per"), [(20, 10, 2), (21, 10, 2), (100, 7, 3), (60, 1, 5), (50, 50, 1)]
)
def test_shards_deal_whole_label_sorted_shards(size: int, n: int, per: int) -> None:
    # Prepare
    labels = _labels(size, size, 5)
    order = np.argsort(labels, kind="stable")
    pieces = np.array_split(order, n * per)
    shard_of = np.empty(size, dtype=np.int64)
    for k, piece in enumerate(pieces):
        shard_of[piece] = k

    # Execute
    parts = shards(labels, n, per, np.random.default_rng(size))

    # Assert: every client holds exactly `per` whole shards of the label-sorted order
    _assert_exact_cover(parts, size)
    for p in parts:
        held = np.unique(shard_of[p])
        assert held.size == per
        assert p.size == sum(pieces[k].size for k in held)
    assert shards(labels, n, per, np.random.default_rng(size))[0].tolist() == parts[0].tolist()


def test_shards_refuse_fewer_examples_than_shards_and_accept_one_each() -> None:
    labels = _labels(0, 12, 3)
    assert len(shards(labels, 6, 2, np.random.default_rng(0))) == 6
    with pytest.raises(ValueError, match="need 14 examples, there are 12"):
        shards(labels, 7, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="shards_per_client must be >= 1"):
        shards(labels, 2, 0, np.random.default_rng(0))


@pytest.mark.parametrize("how", ["iid", "dirichlet", "shards"])
def test_each_split_is_a_function_of_its_seed(how: str) -> None:
    # Prepare
    labels = _labels(2, 500, 10)

    # Execute
    a = partition(labels, 20, how, np.random.default_rng(7))
    b = partition(labels, 20, how, np.random.default_rng(7))
    c = partition(labels, 20, how, np.random.default_rng(8))

    # Assert
    assert [p.tolist() for p in a] == [p.tolist() for p in b]
    assert [p.tolist() for p in a] != [p.tolist() for p in c]
    _assert_exact_cover(a, 500)


def test_partition_passes_alpha_and_shards_per_client_through() -> None:
    # Prepare
    labels = _labels(3, 400, 10)

    # Execute
    by_alpha = partition(labels, 8, "dirichlet", np.random.default_rng(1), alpha=0.7)
    by_shards = partition(labels, 8, "shards", np.random.default_rng(1), shards_per_client=3)

    # Assert
    want = dirichlet(labels, 8, 0.7, np.random.default_rng(1))
    assert [p.tolist() for p in by_alpha] == [p.tolist() for p in want]
    want = shards(labels, 8, 3, np.random.default_rng(1))
    assert [p.tolist() for p in by_shards] == [p.tolist() for p in want]


def test_natural_keeps_each_group_sorted_and_checks_the_bounds() -> None:
    # Execute
    parts = natural([[4, 0, 2], np.array([3], dtype=np.int32), [1, 5]], num_examples=6)

    # Assert
    assert [p.tolist() for p in parts] == [[0, 2, 4], [3], [1, 5]]
    assert all(p.dtype == np.int64 for p in parts)
    with pytest.raises(ValueError, match=r"group\(s\) \[1\] hold example indices >= 6"):
        natural([[0, 5], [6]], num_examples=6)
    with pytest.raises(ValueError, match=r"group\(s\) \[0\] hold example indices >= 6"):
        natural([[1, 6], [0]], num_examples=6)  # its largest index is past the end
    assert natural([[0, 5]], num_examples=6)[0].tolist() == [0, 5]
    with pytest.raises(ValueError, match="negative"):
        natural([[0], [-1, 2]])
    assert natural([[0], [1, 2]])[1].tolist() == [1, 2]
    with pytest.raises(ValueError, match="^no groups$"):
        natural([])


@pytest.mark.parametrize(("labels", "n"), [(np.zeros(3, dtype=np.int64), 4)])
def test_more_clients_than_examples_is_refused_and_equal_is_not(labels: I64, n: int) -> None:
    with pytest.raises(ValueError, match="4 clients but only 3 examples"):
        iid(labels, n, np.random.default_rng(0))
    assert len(iid(labels, 3, np.random.default_rng(0))) == 3
    with pytest.raises(ValueError, match="at least one client"):
        iid(labels, 0, np.random.default_rng(0))


def test_partition_stats_counts_sizes_and_classes() -> None:
    # Prepare: labels 0,0,1,1,2,2 split into {0,1,2}, {3}, {4,5}
    labels = np.array([0, 0, 1, 1, 2, 2], dtype=np.int64)
    parts = [np.array([0, 1, 2]), np.array([3]), np.array([4, 5])]

    # Execute
    s = partition_stats(parts, labels)

    # Assert
    assert s == {
        "devices": 3,
        "examples_min": 1,
        "examples_median": 2.0,
        "examples_max": 3,
        "classes_min": 1,
        "classes_mean": 4 / 3,
        "classes_max": 2,
    }


def test_dirichlet_takes_one_try_and_a_minimum_of_one() -> None:
    # Prepare: an easy split (large alpha, 10 examples a client)
    labels = _labels(9, 200, 4)

    # Execute
    once = dirichlet(labels, 20, 50.0, np.random.default_rng(2), max_tries=1, min_size=1)

    # Assert: the smallest allowed values are taken, the first draw is the reference's
    want = dirichlet_reference(labels, 20, 50.0, np.random.default_rng(2), min_size=1)
    assert [p.tolist() for p in once] == [p.tolist() for p in want]
    with pytest.raises(ValueError, match="max_tries must be an integer >= 1"):
        dirichlet(labels, 20, 50.0, np.random.default_rng(2), max_tries=0)
    with pytest.raises(ValueError, match="min_size must be >= 1"):
        dirichlet(labels, 20, 50.0, np.random.default_rng(2), min_size=0)


def test_the_documented_defaults_two_shards_and_1000_draws() -> None:
    # Prepare
    labels = _labels(4, 300, 10)

    # Execute / Assert: `partition` deals 2 shards a client unless told
    by_default = partition(labels, 10, "shards", np.random.default_rng(5))
    two = shards(labels, 10, 2, np.random.default_rng(5))
    assert [p.tolist() for p in by_default] == [p.tolist() for p in two]
    # a hopeless Dirichlet split (30 clients of 10 examples over 2 classes at alpha 0.001)
    # gives up after 1,000 draws
    with pytest.raises(ValueError, match="in 1000 draws; raise alpha"):
        dirichlet(labels[:300] % 2, 30, 0.001, np.random.default_rng(0), min_size=10)


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan"), float("inf")])
def test_an_alpha_that_is_not_positive_and_finite_is_refused(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha must be positive and finite"):
        dirichlet(_labels(0, 50, 3), 5, alpha, np.random.default_rng(0))
