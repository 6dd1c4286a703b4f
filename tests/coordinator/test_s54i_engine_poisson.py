"""RoundEngine refuses a dp stage accounting Poisson sampling (q=) unless its Strategy declares
that its own `select` samples each device independently (`poisson_sampling = True`).

The default `Strategy.select` picks a fixed-size cohort, so the Poisson epsilon such a DPMean
reports would not hold (docs/privacy.md, assumption 1). The service and `plume sim` already
refuse q=; a RoundEngine built in Python accepted it before."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from compression import ModelSpec
from coordinator.aggregators import DPMean, FedAvg, build_aggregator
from coordinator.engine import EngineConfig, RoundEngine, RoundPlan, Strategy
from coordinator.privacy import FixedSizeSampling, PoissonSampling

SPEC = ModelSpec.from_shapes([("w", (4,))])
POISSON = DPMean(1.0, denominator=10.0, sampling=PoissonSampling(0.1))


def _engine(aggregator: object, strategy: Strategy | None = None, **config: object) -> RoundEngine:
    cfg = EngineConfig(**{"clients_per_round": 10, **config})  # type: ignore[arg-type]
    return RoundEngine(SPEC, np.zeros(4, np.float32), aggregator, cfg, strategy=strategy)  # type: ignore[arg-type]


class PoissonSelect(Strategy):
    """Each available device independently with probability q: what q= accounts."""

    poisson_sampling = True

    def __init__(self, q: float) -> None:
        self.q = q

    def select(
        self, engine: RoundEngine, round_id: int, available: Sequence[str], rng: np.random.Generator
    ) -> list[str]:
        return [d for d in available if rng.random() < self.q]


class UndeclaredSelect(PoissonSelect):
    poisson_sampling = False


class ConfigureOnly(Strategy):
    """Declares Poisson sampling but keeps the default (fixed-size) select."""

    poisson_sampling = True

    def configure(self, engine: RoundEngine, round_id: int, selected: list[str]) -> RoundPlan:
        return super().configure(engine, round_id, selected)


def test_the_default_strategy_is_refused_with_the_stage_the_accounting_and_the_fix() -> None:
    with pytest.raises(ValueError) as info:
        _engine(POISSON)
    assert str(info.value) == (
        "dp accounts Poisson sampling (PoissonSampling(0.1), q=0.1) but the default "
        "Strategy.select selects fixed-size cohorts of 10, so the epsilon it reports would "
        "not hold: account the cohort with FixedSizeSampling(N, 10) (population=N,sample=10), "
        "or pass a Strategy subclass whose select samples each device independently with "
        "probability q and that sets poisson_sampling = True"
    )


@pytest.mark.parametrize(
    "spec",
    ["dp:clip=1,z=1,q=0.25,denom=5", "adam:lr=0.1+dp:clip=1,z=1,q=0.25,denom=5"],
)
def test_a_spec_with_q_is_refused_through_wrappers(spec: str) -> None:
    # over-selection counts: the cohort named is the one selected
    with pytest.raises(ValueError, match=r"q=0\.25\) but the default Strategy\.select selects "):
        _engine(build_aggregator(spec), clients_per_round=4, over_selection=1.5)
    with pytest.raises(ValueError, match=r"FixedSizeSampling\(N, 6\) \(population=N,sample=6\)"):
        _engine(build_aggregator(spec), clients_per_round=4, over_selection=1.5)


def test_a_subclass_keeping_the_default_select_is_refused_even_if_it_declares() -> None:
    with pytest.raises(
        ValueError,
        match=r"the default Strategy\.select \(used by ConfigureOnly\) selects fixed-size "
        r"cohorts of 10",
    ):
        _engine(POISSON, ConfigureOnly())


def test_an_override_that_does_not_declare_poisson_sampling_is_refused() -> None:
    with pytest.raises(
        ValueError,
        match=r"UndeclaredSelect\.select does not declare Poisson sampling "
        r"\(poisson_sampling = True\)",
    ):
        _engine(POISSON, UndeclaredSelect(0.1))


def test_a_declared_poisson_select_runs_with_binomial_cohorts() -> None:
    assert Strategy.poisson_sampling is False
    engine = _engine(POISSON, PoissonSelect(0.1))
    devices = [f"d{i}" for i in range(100)]
    rng = np.random.default_rng(3)
    sizes = {len(engine.open_round(devices, rng).selected) for _ in range(20)}
    assert len(sizes) > 1  # not a fixed-size cohort


@pytest.mark.parametrize(
    "aggregator",
    [
        FedAvg(),
        DPMean(1.0),
        DPMean(1.0, sampling=FixedSizeSampling(100, 10)),
        build_aggregator("dp:clip=1,z=1,population=100,sample=10+fedavg"),
    ],
)
def test_without_poisson_accounting_the_default_strategy_still_runs(aggregator: object) -> None:
    engine = _engine(aggregator)
    assert len(engine.open_round([f"d{i}" for i in range(100)]).selected) == 10
