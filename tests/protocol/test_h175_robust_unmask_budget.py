"""Error correction at unmask is bounded: a liar costs one corrected secret, and at most
`max_robust_decodes` secrets per SecAgg instance are corrected before the round aborts.

Well-formed but wrong unmask shares (y moved, check recomputed) are accepted and corrected by
Berlekamp-Welch, about m^3 field operations per secret in pure Python (k = 120: 1.2 s). Each
secret holding a liar's share went through it: one survivor lying about all k of its shares
cost k corrections, so a few colluding survivors stretched an unmask to minutes
(helper-172's bw_time.py / bw_round.py). Now a suspect's shares are left out and the strict
reconstruction is tried first, and the corrections per instance are capped. Counted here
(Berlekamp-Welch runs, one per 15-byte chunk: 3 per 32-byte secret; `state.robust_decodes`),
not timed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from protocol.secagg import RoundAborted, SecAggServer, Stage, UnmaskResponse, _shamir
from protocol.secagg._graph import neighbours

from .test_secagg_protocol import RING, make_params
from .test_secagg_robust_unmask import _to_unmask, _with_y

N = 40  # degree 16, threshold 9: up to 3 wrong shares of a secret are corrected
CHUNKS = 3  # Berlekamp-Welch runs per corrected 32-byte secret


class _Counted:
    """Shamir's Berlekamp-Welch decoder (the slow path), counting its runs."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.real(*args, **kwargs)


@pytest.fixture()
def counted(monkeypatch: pytest.MonkeyPatch) -> _Counted:
    c = _Counted(_shamir._berlekamp_welch)
    monkeypatch.setattr(_shamir, "_berlekamp_welch", c)
    return c


def _lie(answer: UnmaskResponse, about: Callable[[int], bool] = lambda n: True) -> UnmaskResponse:
    """The answer with every share about a node `about` accepts moved off its polynomial."""
    shares = tuple((n, k, _with_y(s, 0, 7) if about(n) else s) for n, k, s in answer.shares)
    return dataclasses.replace(answer, shares=shares)


def _run(
    liars: dict[int, Callable[[int], bool]], budget: int | None = None
) -> tuple[SecAggServer, list[np.ndarray], dict[int, int]]:
    """Stages 1-3 with N nodes, then every survivor answers (liars as given); returns the server
    (not finished), the inputs and, per liar, how many shares it moved."""
    _clients, server, inputs, answers = _to_unmask(N)
    if budget is not None:
        server.state.max_robust_decodes = budget
    moved: dict[int, int] = {}
    for a in answers:
        if a.node in liars:
            moved[a.node] = sum(map(liars[a.node], (n for n, _, _ in a.shares)))
            a = _lie(a, liars[a.node])
        server.receive_unmask(UnmaskResponse.from_bytes(a.to_bytes(), N))
    return server, inputs, moved


def _exact(total: np.ndarray, inputs: list[np.ndarray]) -> None:
    np.testing.assert_array_equal(total, sum(inputs) & np.uint64((1 << RING) - 1))


def test_an_honest_unmask_corrects_nothing(counted: _Counted) -> None:
    server, inputs, _ = _run({})
    res = server.finish()
    _exact(res.total, inputs)
    assert counted.calls == 0 and server.state.robust_decodes == 0 and res.suspects == ()


def test_a_liar_about_every_share_costs_one_correction(counted: _Counted) -> None:
    # Prepare: survivor 3 moves every one of its 16 shares (one per neighbour's secret)
    server, inputs, moved = _run({3: lambda n: True})
    assert moved[3] == 16
    # Execute
    res = server.finish()
    # Assert: the exact sum, the liar named, and one secret corrected (it was 16: one per
    # secret holding a wrong share); the other 15 reconstructed strictly without its shares
    _exact(res.total, inputs)
    assert res.suspects == (3,)
    assert counted.calls == CHUNKS and server.state.robust_decodes == 1


def test_a_few_liars_keep_the_exact_sum_with_suspects(counted: _Counted) -> None:
    # Prepare: 3 survivors, each lying about every share it returns
    liars = {3: lambda n: True, 17: lambda n: True, 30: lambda n: True}
    server, inputs, moved = _run(liars)
    assert sum(moved.values()) == 48
    # Execute
    res = server.finish()
    # Assert: as before the bound (exact sum, exactly the liars named), at most one
    # correction per liar
    _exact(res.total, inputs)
    assert res.suspects == (3, 17, 30)
    assert 1 <= server.state.robust_decodes <= 3
    assert counted.calls == CHUNKS * server.state.robust_decodes


def test_past_the_budget_the_round_aborts_naming_the_suspects(counted: _Counted) -> None:
    # Prepare: two liars whose wrong shares never meet in one secret (liar b lies only about
    # nodes that are not a's neighbours), so catching both takes two corrections; budget 1
    a, b = 3, 17
    graph = neighbours(N, make_params(N).degree, make_params(N).graph_seed)
    only_b = [n for n in graph[b] if n not in graph[a] and n != a]
    assert only_b
    liars = {a: lambda n: True, b: lambda n: n not in graph[a] and n != a}
    server, _inputs, moved = _run(liars, budget=1)
    assert moved[b] == len(only_b)
    # Execute / Assert: the first correction names one of them, the second is refused
    with pytest.raises(RoundAborted, match=r"more than 1 secrets needed error correction") as err:
        server.finish()
    assert counted.calls == CHUNKS and server.state.robust_decodes == 1
    caught = sorted(server.state.suspects)
    assert len(caught) == 1 and caught[0] in (a, b)
    assert f"suspect nodes, each with a share off its dealer's polynomial: {caught}" in str(
        err.value
    )
    assert server.stage == Stage.ABORTED and server.state.masked_sum is None
    assert not server.state.shares  # nothing further reconstructed


def test_the_default_budget_and_its_check() -> None:
    from protocol.secagg import MAX_ROBUST_DECODES  # imported here: new with the bound

    params = make_params(N)
    assert SecAggServer(params).state.max_robust_decodes == MAX_ROBUST_DECODES == 8
    assert SecAggServer(params, max_robust_decodes=0).state.max_robust_decodes == 0
    with pytest.raises(ValueError, match="max_robust_decodes"):
        SecAggServer(params, max_robust_decodes=-1)
