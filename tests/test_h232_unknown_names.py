"""A mistyped aggregator or attack name (helper-222's `plume sim --aggregator medain`): the error
names it once, suggests the closest known name as a mistyped option gets one, and lists the known
names as words, not as a Python list. The spec is named too only when it is more than the name."""

from __future__ import annotations

import pytest

from coordinator.aggregators import AggregatorSpecError, build_aggregator
from coordinator.cli import main as plume
from mobile_sim.attacks import build_attack

_KNOWN = (
    "cclip, fedavg, geomed, krum, mean, median, multikrum, rlr, trimmed_mean, adagrad, adam, "
    "anomaly, avgm, bucket, clip, collusion, cosfilter, dp, nnm, normbound, yogi"
)


def _message(spec: str) -> str:
    with pytest.raises(AggregatorSpecError) as caught:
        build_aggregator(spec)
    return str(caught.value)


def test_a_mistyped_aggregator_gets_the_closest_name_and_a_plain_list() -> None:
    # Before: "unknown aggregator 'medain' in 'medain'; known: ['cclip', 'fedavg', ...]"
    assert _message("medain") == (
        f"unknown aggregator 'medain' (did you mean 'median'?); known: {_KNOWN}"
    )


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        # a stage of a longer spec: which spec it is in, then the suggestion
        ("normbound:q=0.9+medain", "unknown aggregator 'medain' in 'normbound:q=0.9+medain' "),
        ("medain:beta=0.1", "unknown aggregator 'medain' in 'medain:beta=0.1' "),
        # case and spaces are not "more than the name"
        ("  Medain ", "unknown aggregator 'medain' (did you mean"),
    ],
)
def test_the_spec_is_named_only_when_it_is_more_than_the_name(spec: str, expected: str) -> None:
    message = _message(spec)
    assert message.startswith(expected)
    assert "(did you mean 'median'?); known: cclip, fedavg" in message


def test_no_suggestion_when_nothing_is_close() -> None:
    assert _message("zzz") == f"unknown aggregator 'zzz'; known: {_KNOWN}"


def test_a_mistyped_attack_gets_the_closest_name_and_a_plain_list() -> None:
    # Before: "unknown attack 'signflp'; choose one of ['alie', 'backdoor', ...]"
    with pytest.raises(ValueError) as caught:
        build_attack("signflp")
    assert str(caught.value) == (
        "unknown attack 'signflp' (did you mean 'signflip'?); choose one of alie, backdoor, "
        "gaussian, ipm, labelflip, scaling, signflip"
    )
    with pytest.raises(ValueError, match=r"^unknown attack 'nope'; choose one of alie, "):
        build_attack("nope:x=1")


def test_plume_sim_prints_the_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    # Execute: refused while parsing the options, before any data is loaded
    code = plume(["sim", "--dataset", "digits", "--aggregator", "medain"])

    # Assert: one line, exit 2, the registry's text after the flag
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert err.startswith("plume sim: error: --aggregator 'medain': ")
    assert err.endswith(f"unknown aggregator 'medain' (did you mean 'median'?); known: {_KNOWN}")
