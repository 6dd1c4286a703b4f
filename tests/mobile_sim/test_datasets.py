"""Tests for the naturally split datasets: LEAF-style Shakespeare and FedProx synthetic."""

from __future__ import annotations

import numpy as np
import pytest

from mobile_sim.data import DataError
from mobile_sim.datasets import (
    VOCAB,
    decode_text,
    encode_text,
    load_federated,
    load_shakespeare,
    load_synthetic,
    parse_speeches,
)
from mobile_sim.partition import natural


def test_text_encoding_roundtrips_printable_ascii() -> None:
    text = "To be, or not to be? That is the question: 3 & $!"
    ids = encode_text(text)
    assert decode_text(ids) == text
    assert ids.min() >= 1 and ids.max() < len(VOCAB)
    assert encode_text("caf\u00e9")[-1] == 0  # outside the vocabulary -> unknown


def test_parse_speeches_groups_blocks_by_speaker() -> None:
    text = (
        "ROMEO:\nBut soft,\nwhat light?\n\nJULIET:\nAy me!\n\nnot a speech\n\nROMEO:\nShe speaks.\n"
    )
    got = parse_speeches(text)
    assert got == {"ROMEO": ["But soft, what light?", "She speaks."], "JULIET": ["Ay me!"]}


def test_shakespeare_is_split_by_speaker_for_next_character_prediction() -> None:
    # Execute
    data = load_shakespeare(seq_len=40, stride=40)

    # Assert: one client per role with >= 20 speeches (98 in tiny Shakespeare; one of the 99
    # headed 20 times has an empty speech).
    assert len(data.group_names) == 98 and "First Citizen" in data.group_names
    assert data.x_train.shape[1] == 40 and data.x_train.dtype == np.float32
    assert data.num_classes == len(VOCAB)
    parts = natural(data.train_groups)
    assert sum(len(p) for p in parts) == len(data.x_train)
    assert np.unique(np.concatenate(parts)).size == len(data.x_train)  # disjoint, complete
    assert sum(len(g) for g in data.test_groups) == len(data.x_test)
    # The label is the character that follows the window, within the same speaker's text.
    first = data.train_groups[0]
    x0, x1 = data.x_train[first[0]].astype(np.int64), data.x_train[first[1]].astype(np.int64)
    assert data.y_train[first[0]] == x1[0]  # stride == seq_len: next window starts at the label
    assert decode_text(x0).strip()


def test_shakespeare_max_clients_and_bad_arguments() -> None:
    assert len(load_shakespeare(max_clients=3).group_names) == 3
    with pytest.raises(ValueError, match="seq_len"):
        load_shakespeare(seq_len=0)
    with pytest.raises(DataError, match="PLUME_DATA"):
        load_shakespeare(root="/nonexistent")


def test_synthetic_is_reproducible_and_shaped_like_fedprox() -> None:
    # Execute
    a = load_synthetic(1.0, 1.0, num_devices=30, seed=3)
    b = load_synthetic(1.0, 1.0, num_devices=30, seed=3)

    # Assert
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert a.x_train.shape[1] == 60 and a.num_classes == 10
    assert len(a.train_groups) == 30
    sizes = np.array([len(g) + len(t) for g, t in zip(a.train_groups, a.test_groups, strict=True)])
    assert sizes.min() >= 50  # power law plus 50
    assert sizes.max() > 4 * sizes.min()  # heavy-tailed device sizes
    assert set(np.unique(a.y_train)) <= set(range(10))


def test_synthetic_heterogeneity_grows_with_alpha() -> None:
    # Prepare: how far each device's label histogram is from the pooled one (total variation).
    def skew(alpha: float) -> float:
        s = load_synthetic(alpha, alpha, num_devices=40, seed=0)
        pooled = np.bincount(s.y_train, minlength=10) / len(s.y_train)
        tv = [
            0.5 * np.abs(np.bincount(s.y_train[g], minlength=10) / len(g) - pooled).sum()
            for g in s.train_groups
        ]
        return float(np.mean(tv))

    # Execute / Assert
    iid = load_synthetic(num_devices=40, seed=0, iid=True)
    assert iid.name == "synthetic_iid"
    assert skew(0.0) < skew(1.0) + 0.05
    assert skew(1.0) > 0.3


def test_load_federated_by_name() -> None:
    assert load_federated("synthetic(0.5,0.5)", seed=1).name == "synthetic(0.5,0.5)"
    assert load_federated("synthetic", seed=1).name == "synthetic(1,1)"
    assert load_federated("synthetic_iid").name == "synthetic_iid"
    assert load_federated("shakespeare").num_classes == len(VOCAB)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_federated("cifar")


def test_synthetic_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="alpha"):
        load_synthetic(-1.0, 0.0)
    with pytest.raises(ValueError, match="num_devices"):
        load_synthetic(num_devices=0)
