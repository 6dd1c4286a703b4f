"""`sdk.secure.HttpSecureDevice` (the test device of the loopback stage router): a round that
aborts (410) at the masked-input upload itself publishes nothing, so what the input stood for
goes back into the participant's residual, as for an abort after it. Before, only an abort of
the stages after the upload returned it; at the upload, the residual kept assuming the input
was sent (its content lost from error feedback)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from protocol.secagg import RoundAborted
from sdk.secure import HttpSecureDevice, SecureParticipant

from .test_client import SPEC
from .test_h61_inflight import SecureFake


def test_an_abort_at_the_masked_input_upload_returns_the_input() -> None:
    # Prepare: the participant holds a residual; the coordinator aborts the round (410) when
    # the masked input arrives
    fake = SecureFake()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/masked-input"):
            return httpx.Response(410, json={"reason": "round_closed", "detail": "aborted"})
        return fake(request)

    participant = SecureParticipant(SPEC.size)
    participant.residual = np.linspace(-0.1, 0.1, SPEC.size).astype(np.float32)
    before = participant.residual.copy()
    with httpx.Client(base_url="http://coord", transport=httpx.MockTransport(handler)) as http:
        device = HttpSecureDevice(http, "dev-0", participant, poll_s=0.01)
        delta = np.full(SPEC.size, 0.05, np.float32)

        # Execute: round 101 (the fake's task 1)
        with pytest.raises(RoundAborted):
            device.run_round(101, fake.params(1), delta, 1, np.random.default_rng(0))

    # Assert: nothing of the input was taken: residual = before + delta, nothing unsettled
    assert participant.unsettled is None
    np.testing.assert_allclose(participant.residual, before + delta, atol=1e-6)
