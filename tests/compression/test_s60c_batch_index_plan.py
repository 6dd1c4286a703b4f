"""The batch encoder picks each row's index coding and parameter as the single encoder does, on
rows built to sit on the edges of that choice (s60c, compression/_batch.py `_plan_rows`).

Rice tries r from max(0, r0 - 2) to min(r0 + 3, floor(log2 d)), r0 = floor(log2(mean gap)),
and keeps the first smallest; Elias-Fano does the same around l0 = floor(log2(d / k)); "auto"
keeps the first smallest of rice, Elias-Fano and bitmap. The rows: a dense run, where r = 0
(the lowest r tried) is strictly the smallest; a row on which r = 0, 1 and 2 and all three
codings give 3 bytes, so both tie-breaks decide; and an Elias-Fano row on which three L tie.

The top of either range is never strictly the smallest (one more bit per low field costs k
bits and saves fewer than k unary bits there): over every index set of up to 4 of up to 44
coordinates, and random larger ones, for Rice, and every (d < 300, k, last index) and random
d < 2**16 for Elias-Fano, checked while this file was written. So `r <= hi` flipped to
`r < hi`, and Elias-Fano's min(l0 + 3, ...) turned to max, change no frame.
"""

from __future__ import annotations

import numpy as np
import pytest

from compression import CodecConfig, ModelSpec, UpdateCodec

SPEC = ModelSpec.from_shapes([("w", (4, 4)), ("b", (4,))])  # d = 20


def _row(kept: list[int]) -> np.ndarray:
    """A float32[20] row whose top-len(kept) magnitudes are exactly at `kept`, all distinct."""
    u = np.linspace(0.01, 0.02, SPEC.size, dtype=np.float32)
    u[kept] = np.arange(10, 10 + len(kept), dtype=np.float32)
    return u


@pytest.mark.parametrize(
    ("kept", "index", "want"),
    [
        # 0..15 then 17: gaps (0 x 16, 1), mean < 2, r0 = 0; r = 0 gives 3 bytes, r = 1 gives 6
        ([*range(16), 17], "rice", ("rice", 0)),
        # gaps (2, 1, 1, 3, 7, 0): r = 0, 1, 2 all 3 bytes; the first is kept
        ([2, 4, 6, 10, 18, 19], "rice", ("rice", 0)),
        # the same row: rice, Elias-Fano (L = 1) and the bitmap all 3 bytes; rice is first
        ([2, 4, 6, 10, 18, 19], "auto", ("rice", 0)),
        # Elias-Fano of 0, 3, 6 (l0 = 2): L = 0, 1, 2 all 2 bytes; the first is kept
        ([0, 3, 6], "ef", ("ef", 0)),
    ],
)
def test_the_batch_encoder_plans_edge_rows_as_the_single_one(
    kept: list[int], index: str, want: tuple[str, int]
) -> None:
    codec = UpdateCodec(SPEC, CodecConfig(topk=len(kept) / SPEC.size, bits=8, block=8, index=index))
    rows = np.stack([_row(kept), _row(kept)[::-1].copy()])
    single = [codec.encode(rows[i], np.random.default_rng(i), 1.0)[0] for i in range(2)]
    many = codec.encode_many(rows, [np.random.default_rng(i) for i in range(2)], [1.0, 1.0])
    assert many == single
    first = codec.decode_frame(many[0])
    assert (first.header.index_coding, first.header.index_param) == want
    np.testing.assert_array_equal(first.update.indices, kept)
    for got, frame in zip(codec.decode_many(many), single, strict=True):
        assert not isinstance(got, Exception)
        np.testing.assert_array_equal(got.update.to_dense(), codec.decode(frame).to_dense())


@pytest.mark.parametrize("index", ["rice", "ef"])
def test_the_batch_encoder_writes_every_low_field_width_as_the_single_one(index: str) -> None:
    # d = 2,000 and k from 1 to 1,500: parameters (low-field widths) 2 to 8 at least. Kills
    # `width == 8` turned to 7 in _pack_rows (7-bit fields written as bytes; no test wrote a
    # 7-bit field through the batch encoder).
    spec = ModelSpec.from_shapes([("w", (2000,))])
    params = set()
    for k in (1, 2, 3, 5, 8, 12, 20, 30, 60, 120, 200, 400, 900, 1500):
        codec = UpdateCodec(spec, CodecConfig(topk=k / 2000, bits=4, block=8, index=index))
        u = np.random.default_rng(k).standard_normal((6, 2000)).astype(np.float32)
        many = codec.encode_many(u, [np.random.default_rng(i) for i in range(6)], [1.0] * 6)
        single = [codec.encode(u[i], np.random.default_rng(i), 1.0)[0] for i in range(6)]
        assert many == single, k
        params |= {codec.decode_frame(f).header.index_param for f in many}
    assert set(range(2, 9)) <= params
