"""Tiny Shakespeare split by speaker, as LEAF's Shakespeare task: next-character prediction.

Each speaking role with at least `min_speeches` speeches is one client (98 roles in the tiny
Shakespeare file at the default of 20). A role's speeches are joined (lines by spaces) into one
text; every `stride` characters a window of `seq_len` characters is an example and the character
that follows it is the label. Per role, the first `train_fraction` of the windows train. Test
windows start at the first window that shares no character with a training window:
``(seq_len - 1) // stride`` windows after the cut (3 at the defaults) are dropped, and the rest
test. So no test window shares a character with a training window, though the first test window
may begin with the last training window's label. LEAF does the same: it drops the 79 samples
after a user's training ones, this gap at stride 1. A role with too few windows for one train
window, the gap and one test window is skipped (no client).

Characters are token ids over `VOCAB`: id 0 is "unknown", ids 1..95 are printable ASCII.
Sequences are stored as float32 ids so they travel through the same float pipeline as images;
the text models cast them back to integers.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import numpy.typing as npt

from mobile_sim.data import DataError, data_root

from ._types import NaturalData

__all__ = ["VOCAB", "encode_text", "decode_text", "parse_speeches", "load_shakespeare"]

VOCAB: str = "\0" + "".join(chr(c) for c in range(32, 127))
_SPEAKER = re.compile(r"[A-Za-z][A-Za-z' .,&-]*:")


def encode_text(text: str) -> npt.NDArray[np.int64]:
    """Token ids int64[len(text)]; characters outside printable ASCII map to 0."""
    points = np.frombuffer(text.encode("utf-32-le"), dtype="<u4").astype(np.int64)
    printable = (points >= 32) & (points < 127)
    return np.where(printable, points - 31, 0)


def decode_text(ids: npt.ArrayLike) -> str:
    """Inverse of `encode_text` (unknown ids print as the NUL character)."""
    arr = np.asarray(ids, dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= len(VOCAB)):
        raise ValueError(f"token ids must be in [0, {len(VOCAB)})")
    return "".join(VOCAB[i] for i in arr.tolist())


def parse_speeches(text: str) -> dict[str, list[str]]:
    """Speaker name -> that speaker's speeches, in order; each speech's lines joined by spaces.

    A speech is a blank-line separated block whose first line is ``Name:``. Blocks without such a
    header are continuation text and are skipped.
    """
    speeches: dict[str, list[str]] = {}
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        lines = [ln.strip() for ln in block.strip("\n").split("\n") if ln.strip()]
        if len(lines) < 2 or not _SPEAKER.fullmatch(lines[0]):
            continue
        speeches.setdefault(lines[0][:-1], []).append(" ".join(lines[1:]))
    return speeches


def _read_text(path: Path) -> str:
    """The file's text, strictly UTF-8 (a leading byte-order mark dropped): a `DataError`
    naming the file and the first byte that is not UTF-8. Before, undecodable bytes became
    U+FFFD (unknown ids), and a file in another encoding trained on damaged text, speaker
    lines lost; a byte-order mark hid the first speaker's name."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        # utf-8-sig reports offsets in the text after the mark: count it back in.
        offset = exc.start + len(raw) - len(exc.object)
        raise DataError(
            f"{path}: not UTF-8 text: byte 0x{raw[offset]:02x} at byte offset {offset} "
            f"({exc.reason}); save the file as UTF-8 (or plain ASCII)"
        ) from None


def load_shakespeare(
    root: str | Path | None = None,
    *,
    seq_len: int = 80,
    stride: int = 20,
    min_speeches: int = 20,
    train_fraction: float = 0.8,
    max_clients: int | None = None,
) -> NaturalData:
    """Tiny Shakespeare from ``<root>/tinyshakespeare/input.txt``, one client per speaker.

    x: float32[N, seq_len] token ids; y: int64[N] the next character's id.
    Clients are ordered by name; `max_clients` keeps the first ones (for quick runs).
    """
    if seq_len < 1 or stride < 1:
        raise ValueError("seq_len and stride must be >= 1")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError("train_fraction must be in (0, 1)")
    path = data_root(root) / "tinyshakespeare" / "input.txt"
    if not path.exists():
        raise DataError(f"{path} not found; set PLUME_DATA to the folder holding tinyshakespeare/")
    speeches = parse_speeches(_read_text(path))
    roles = sorted(name for name, s in speeches.items() if len(s) >= min_speeches)
    if max_clients is not None:
        roles = roles[:max_clients]
    xs_tr, ys_tr, xs_te, ys_te, groups, test_groups, names = [], [], [], [], [], [], []
    n_tr = n_te = 0
    # Window k covers characters [k * stride, k * stride + seq_len). The first window that shares
    # none with window cut - 1 is cut + gap, the least j with (j - cut + 1) * stride >= seq_len.
    gap = (seq_len - 1) // stride
    for name in roles:
        ids = encode_text(" ".join(speeches[name]))
        starts = np.arange(0, len(ids) - seq_len, stride, dtype=np.int64)
        if len(starts) < gap + 2:
            continue  # too little text for a train window, the gap and a test window
        windows = ids[starts[:, None] + np.arange(seq_len)]
        labels = ids[starts + seq_len]
        cut = min(max(1, int(round(len(starts) * train_fraction))), len(starts) - 1 - gap)
        first_test = cut + gap
        n_test = len(starts) - first_test
        xs_tr.append(windows[:cut])
        ys_tr.append(labels[:cut])
        xs_te.append(windows[first_test:])
        ys_te.append(labels[first_test:])
        groups.append(np.arange(n_tr, n_tr + cut, dtype=np.int64))
        test_groups.append(np.arange(n_te, n_te + n_test, dtype=np.int64))
        n_tr += cut
        n_te += n_test
        names.append(name)
    if not names:
        raise DataError(
            f"{path}: no speaker with {min_speeches}+ speeches has text for {gap + 2} windows"
            f" (seq_len={seq_len}, stride={stride}: a train window, {gap} dropped, a test window)"
        )
    return NaturalData(
        "shakespeare",
        np.concatenate(xs_tr).astype(np.float32),
        np.concatenate(ys_tr),
        np.concatenate(xs_te).astype(np.float32),
        np.concatenate(ys_te),
        len(VOCAB),
        train_groups=tuple(groups),
        test_groups=tuple(test_groups),
        group_names=tuple(names),
    )
