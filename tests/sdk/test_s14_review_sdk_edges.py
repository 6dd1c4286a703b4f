"""Two SDK edges from helper-89's review of this session's changes:
- `HttpSecureDevice.run_round` with a participant still holding an unsettled input posted two
  stages (joining the round) before `masked_input` refused it, so the device became a dropout
  after sharing its keys; it is now a `ValueError` before any request.
- A host name `getaddrinfo` refuses with `UnicodeError` (a label over 63 characters) killed
  the lookup thread and surfaced as a false `ConnectTimeout`; it is a `ConnectError` now.
"""

from __future__ import annotations

import httpcore
import httpx
import numpy as np
import pytest

from sdk.client import _lookup
from sdk.secure import HttpSecureDevice, SecureParticipant


def test_run_round_refuses_an_unsettled_participant_before_any_request() -> None:
    # Prepare: a participant that sent an input and was never settled
    requests: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(500)

    participant = SecureParticipant(4)
    participant.unsettled = (np.arange(2, dtype=np.int64), np.ones(2, np.float32))
    with httpx.Client(transport=httpx.MockTransport(record), base_url="http://c") as http:
        device = HttpSecureDevice(http, "dev-0", participant, poll_s=0.01)
        # Execute / Assert
        with pytest.raises(ValueError, match="unsettled"):
            device.run_round(1, np.zeros(4, np.float32), np.ones(4, np.float32), 1,
                             np.random.default_rng(0))  # fmt: skip
    assert requests == []


@pytest.mark.parametrize("timeout", [2.0, None])
def test_a_host_name_getaddrinfo_refuses_is_a_connect_error(timeout: float | None) -> None:
    with pytest.raises(httpcore.ConnectError) as failed:
        _lookup("a" * 64 + ".example", 8080, timeout)
    assert not isinstance(failed.value, httpcore.ConnectTimeout)
