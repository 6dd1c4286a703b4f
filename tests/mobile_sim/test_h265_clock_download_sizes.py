"""What the simulated clock's download time leaves out (s25/clock finding 3, documented in
docs/simulator.md's clock section): it times every download as the whole fp32 snapshot, as the
in-process ledger counts it, while over HTTP the coordinator sends a device that holds a recent
version (at most `TaskConfig.max_chain` behind) the chain of published delta frames when that
is smaller. For the MNIST CNN and the task's default downlink codec (top-k 2 %, 8 bits) one
frame is a small fraction of the snapshot.

Run as `python -m tests.mobile_sim.test_h265_clock_download_sizes` it prints the sizes the
docs quote."""

from __future__ import annotations

import dataclasses

import numpy as np

from compression import CodecConfig, ErrorFeedback, UpdateCodec
from mobile_sim.models import build_model
from protocol.messages import TaskConfig
from sdk.flat import spec_from_module


def sizes() -> tuple[int, int]:
    """(snapshot bytes, one delta frame's bytes): the MNIST CNN's fp32 snapshot, and one model
    step published as the coordinator publishes it (`DownlinkStrategy.publish`: the task's
    default downlink codec with server-side error feedback; a seeded Gaussian step, since the
    frame's size depends on the codec, not on the values)."""
    spec = spec_from_module(build_model("mnist_cnn"))
    (field,) = (f for f in dataclasses.fields(TaskConfig) if f.name == "downlink")
    params = field.default_factory()  # type: ignore[misc]
    codec = UpdateCodec(spec, CodecConfig(topk=params.topk, bits=params.bits))
    step = np.random.default_rng(0).normal(0.0, 1e-3, spec.size).astype(np.float32)
    frame, _ = ErrorFeedback(spec.size).step(step, codec, np.random.default_rng(1), weight=0.0)
    return spec.dense_bytes, len(frame)


def test_one_delta_frame_is_far_smaller_than_the_snapshot_the_clock_times() -> None:
    # Execute
    snapshot, frame = sizes()

    # Assert: the snapshot is what plume sim's ledger and clock count for every download
    # (bench/results/readme_cnn_download: 66,534,800 B for its 10 devices); a device one
    # version behind would fetch the frame instead, over 50x smaller.
    assert snapshot == 6_653_480
    assert 0 < frame * 50 < snapshot


if __name__ == "__main__":
    snapshot, frame = sizes()
    print(f"MNIST CNN fp32 snapshot: {snapshot} B; one downlink delta frame: {frame} B")
    print(f"ratio {snapshot / frame:.1f}x")
    # 15: the mid tier's median before 2026-12-07; 83.95: the fleet's median now ([Ookla 2023])
    for mbps in (15.0, 83.95):
        print(
            f"at {mbps:g} Mbit/s: {snapshot * 8 / mbps / 1e6:.2f} s vs {frame * 8 / mbps / 1e6:.3f} s"
        )
