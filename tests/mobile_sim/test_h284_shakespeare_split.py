"""Shakespeare's test windows share no text with the same speaker's training windows.

Before, the test windows began right after the cut, so with a stride below `seq_len` the first
test windows of every speaker overlapped its last training window (at the defaults, 60, 40 and
20 characters; 294 of 8,908 test windows). Now `(seq_len - 1) // stride` windows after the cut are
dropped, the fewest that leave no shared character (helper-276 F1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from mobile_sim.data import DataError, data_root
from mobile_sim.datasets import decode_text, encode_text, load_shakespeare, parse_speeches


def _speaker_windows(
    speeches: dict[str, list[str]], name: str, seq_len: int, stride: int
) -> npt.NDArray[np.int64]:
    """Every window of the speaker's joined text on the stride grid, in order."""
    ids = encode_text(" ".join(speeches[name]))
    starts = np.arange(0, len(ids) - seq_len, stride, dtype=np.int64)
    windows: npt.NDArray[np.int64] = ids[starts[:, None] + np.arange(seq_len)]
    return windows


@pytest.mark.parametrize(("seq_len", "stride"), [(80, 20), (80, 80), (81, 20), (10, 3), (7, 9)])
def test_no_test_window_shares_a_character_with_a_training_window(
    seq_len: int, stride: int
) -> None:
    # Prepare
    text = (data_root() / "tinyshakespeare" / "input.txt").read_text(
        encoding="utf-8", errors="replace"
    )
    speeches = parse_speeches(text)

    # Execute
    data = load_shakespeare(seq_len=seq_len, stride=stride)

    # Assert: locate each speaker's windows in its own text. Training windows are grid windows
    # 0..cut-1; the test windows are consecutive grid windows from some j0 to the end.
    assert len(data.group_names) == 98
    for name, g, tg in zip(data.group_names, data.train_groups, data.test_groups, strict=True):
        grid = _speaker_windows(speeches, name, seq_len, stride)
        cut, n_test = len(g), len(tg)
        assert cut >= 1 and n_test >= 1, name
        np.testing.assert_array_equal(data.x_train[g].astype(np.int64), grid[:cut])
        test_x = data.x_test[tg].astype(np.int64)
        found = [
            j
            for j in range(cut, len(grid) - n_test + 1)
            if np.array_equal(grid[j : j + n_test], test_x)
        ]
        assert found, f"{name}: test windows are not consecutive windows after the cut"
        j0 = found[0]
        train_end = (cut - 1) * stride + seq_len  # one past the last training window's characters
        # Disjoint: the first test window starts at or after the end of the last training window
        # (later test windows start later still).
        assert j0 * stride >= train_end, (name, j0, cut)
        # ... and no more windows are dropped than that needs.
        assert (j0 - 1) * stride < train_end, (name, j0, cut)
        assert j0 + n_test == len(grid), name


def test_default_split_sizes() -> None:
    # The totals docs/simulator.md quotes (seq_len 80, stride 20, 80 % train): 3 windows per
    # speaker are dropped between its training and test windows (8,908 test windows before).
    data = load_shakespeare()
    assert len(data.group_names) == 98
    assert (len(data.x_train), len(data.x_test)) == (35_635, 8_614)
    assert sum(map(len, data.train_groups)) == 35_635
    assert sum(map(len, data.test_groups)) == 8_614


def _write(root: Path, speeches: dict[str, str]) -> Path:
    folder = root / "tinyshakespeare"
    folder.mkdir(parents=True)
    body = "\n\n".join(f"{name}:\n{text}" for name, text in speeches.items())
    (folder / "input.txt").write_text(body + "\n", encoding="utf-8")
    return root


def test_a_speaker_too_short_for_the_gap_is_skipped(tmp_path: Path) -> None:
    # Prepare: seq_len 10, stride 3 -> windows start at 0, 3, 6, ... and 3 are dropped after the
    # cut. ALPHA's 23 characters give 5 windows (1 train, 3 dropped, 1 test); BETA's 21 give 4,
    # one short, so BETA is no client (before, it was one, with overlapping windows).
    alpha = "abcdefghijklmnopqrstuvw"
    root = _write(tmp_path, {"ALPHA": alpha, "BETA": "ABCDEFGHIJKLMNOPQRSTU"})

    # Execute
    data = load_shakespeare(root, seq_len=10, stride=3, min_speeches=1)

    # Assert
    assert data.group_names == ("ALPHA",)
    assert decode_text(data.x_train[0]) == alpha[0:10] and decode_text(data.y_train[:1]) == "k"
    assert decode_text(data.x_test[0]) == alpha[12:22] and decode_text(data.y_test[:1]) == "w"
    assert len(data.x_train) == 1 and len(data.x_test) == 1


def test_no_speaker_long_enough_is_a_data_error(tmp_path: Path) -> None:
    root = _write(tmp_path, {"BETA": "ABCDEFGHIJKLMNOPQRSTU"})
    with pytest.raises(DataError, match=r"text for 5 windows .*seq_len=10, stride=3"):
        load_shakespeare(root, seq_len=10, stride=3, min_speeches=1)
