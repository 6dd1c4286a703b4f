"""synthetic(ALPHA,BETA) names (found by helper-173): any float syntax is read, and a value
that is not a finite number >= 0 is refused naming the dataset and the parameter; before,
synthetic(-1,1) and synthetic(1e3,1) were "unknown dataset", synthetic(.,1) a bare float
error, synthetic(<400 nines>,1) ran with an infinite alpha on all-zero labels, and
load_synthetic(nan, 1) was accepted."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coordinator.cli import main as plume
from mobile_sim.datasets import load_federated, load_synthetic


@pytest.mark.parametrize(
    ("name", "alpha", "beta"),
    [
        ("synthetic(1e3,1)", 1000.0, 1.0),
        ("synthetic( .5 , 5e-1 )", 0.5, 0.5),
        ("synthetic(0,1E-2)", 0.0, 0.01),
        ("synthetic(-0,0)", 0.0, 0.0),
    ],
)
def test_any_float_syntax_is_read(name: str, alpha: float, beta: float) -> None:
    # Execute
    data = load_federated(name, seed=2)
    # Assert: the same data as the loader called with the numbers
    same = load_synthetic(alpha, beta, seed=2)
    assert data.name == same.name == f"synthetic({alpha:g},{beta:g})"
    assert np.array_equal(data.x_train, same.x_train)
    assert np.array_equal(data.y_train, same.y_train)
    assert len(np.unique(data.y_train)) > 1


@pytest.mark.parametrize(
    ("name", "named"),
    [
        ("synthetic(-1,1)", "ALPHA must be a finite number >= 0, got -1"),
        ("synthetic(1,-0.5)", "BETA must be a finite number >= 0, got -0.5"),
        ("synthetic(" + "9" * 400 + ",1)", "ALPHA must be a finite number >= 0, got inf"),
        ("synthetic(nan,1)", "ALPHA must be a finite number >= 0, got nan"),
        ("synthetic(1,inf)", "BETA must be a finite number >= 0, got inf"),
        ("synthetic(.,1)", "ALPHA '.' is not a number"),
        ("synthetic(1,)", "BETA '' is not a number"),
        ("synthetic(1)", "takes two numbers, ALPHA and BETA (got 1)"),
    ],
)
def test_a_bad_parameter_is_named_with_the_dataset(name: str, named: str) -> None:
    # Execute / Assert
    with pytest.raises(ValueError) as caught:
        load_federated(name)
    text = str(caught.value)
    assert text.startswith("dataset 'synthetic(") and named in text
    assert "unknown dataset" not in text
    assert len(text) < 200  # 400 nines are cut from the name shown


def test_plume_sim_says_which_parameter(capsys: pytest.CaptureFixture[str]) -> None:
    # Execute: the CLI turns messages starting "alpha" into ones about its --alpha
    code = plume(["sim", "--dataset", "synthetic(-1,1)", "--rounds", "1"])
    # Assert
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        "plume sim: error: dataset 'synthetic(-1,1)': ALPHA must be a finite number >= 0, got -1\n"
    )


@pytest.mark.parametrize(
    ("alpha", "beta", "param"),
    [
        (math.nan, 1.0, "alpha"),
        (1.0, math.nan, "beta"),
        (math.inf, 0.0, "alpha"),
        (-1.0, 0, "alpha"),
    ],
)
def test_load_synthetic_refuses_nan_inf_and_negative(alpha: float, beta: float, param: str) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=rf"^synthetic\(.*\): {param} must be a finite number"):
        load_synthetic(alpha, beta)


@pytest.mark.parametrize(("alpha", "beta"), [(1e300, 1.0), (0.0, 1e39)])
def test_values_too_large_for_the_generator_are_refused(alpha: float, beta: float) -> None:
    # Prepare: 1e300 rounds W_k ~ N(u_k, 1) to u_k (every label a tie, class 0); 1e39
    # overflows the float32 inputs
    # Execute / Assert
    with pytest.raises(ValueError, match="this large overflow the generator"):
        load_synthetic(alpha, beta)
