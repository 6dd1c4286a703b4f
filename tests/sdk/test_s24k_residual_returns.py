"""Two ways content could come back into a device's residual wrongly (helper-249's review of
the codecs and error feedback):

- Returning an abandoned upload's content (`DeviceStore.return_accepted`, the same step as a
  refused pending upload) added it to the stored residual in float32 with no check: near
  float32's largest value the sum overflowed to inf, the encoder then refused every later
  step ("delta + residual is not finite"), and after a restart the residual file did not load
  (the whole residual silently reset). Overflowing coordinates now keep what the residual held.
- `UpdateEncoder` kept the last error-feedback upload's u after error feedback was turned
  off, so a `refused()` for an upload encoded without it restored that older u, content that
  may already be in the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compression import CodecConfig, ErrorFeedback, ModelSpec, UpdateCodec
from sdk.device import UpdateEncoder
from sdk.device_store import DeviceStore, PendingUpload

SPEC = ModelSpec.from_shapes([("w", (8,))])


def test_returned_content_that_would_overflow_leaves_a_finite_residual(tmp_path: Path) -> None:
    # Prepare: round 1 sends 3e38 on coordinates 0-3; round 2 leaves 3e38 there in the
    # residual; both uploads were taken by the coordinator (outcome not known yet)
    codec = UpdateCodec(SPEC, CodecConfig(topk=0.5, bits=32))
    store = DeviceStore(tmp_path)
    ef = ErrorFeedback(8)
    f1, _ = ef.step(np.array([3e38] * 4 + [0] * 4, np.float32), codec, np.random.default_rng(0))
    p1 = PendingUpload(1, "k1", f1, 32, SPEC, 7)
    store.save_pending(p1, ef)
    store.accept_pending(p1, SPEC)
    f2, _ = ef.step(
        np.array([3e38] * 4 + [3.1e38] * 4, np.float32), codec, np.random.default_rng(1)
    )
    held = ef.residual.copy()
    assert np.isfinite(held).all() and (held[:4] == np.float32(3e38)).all()
    p2 = PendingUpload(2, "k2", f2, 32, SPEC, 7)
    store.save_pending(p2, ef)
    store.accept_pending(p2, SPEC)
    # Execute: round 1 was abandoned; its content comes back
    back = store.return_accepted(1, codec.decode(f1).to_dense(), 8)
    # Assert: finite; the overflowing coordinates keep what the residual held, the others
    # got the content added; the next step runs; the file loads after a restart
    assert back is not None
    assert np.isfinite(back.residual).all()
    assert (back.residual[:4] == held[:4]).all()
    assert (back.residual[4:] == held[4:]).all()  # round 1 sent zeros there
    back.step(np.zeros(8, np.float32), codec, np.random.default_rng(2))
    store.close()
    reopened = DeviceStore(tmp_path)
    try:
        again = reopened.load_residual(8, 7, SPEC)
        assert again is not None and np.isfinite(again.residual).all()
    finally:
        reopened.close()


def test_a_refused_upload_encoded_without_error_feedback_restores_nothing() -> None:
    enc = UpdateEncoder(SPEC, CodecConfig(topk=0.25, bits=4))
    assert enc.error_feedback
    enc.encode(np.arange(8, dtype=np.float32), np.random.default_rng(0), 1.0)
    enc.error_feedback = False
    enc.encode(np.ones(8, np.float32), np.random.default_rng(1), 1.0)
    enc.refused()
    assert (enc.feedback.residual == 0).all()
