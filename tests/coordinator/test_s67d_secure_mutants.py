"""coordinator/secure/_round.py and _policy.py pinned where the existing tests let a mutant
through (helper s67d's mutation pass over the server half of a secure round): each test drives
a real `SecureRound` with real device sessions (or calls the policy directly) and checks a value
derived from the protocol (Bell et al. 2020, SecAgg+; docs/secure-aggregation.md), and fails
against the mutant named in its comment.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

import sdk.secure
from coordinator.ledger import BandwidthLedger
from coordinator.secure import (
    BUNDLE_BYTES,
    RandomPolicy,
    SecureConfig,
    SecureRound,
    TopKMixPolicy,
    group_reason,
    make_plan,
    public_seed,
    split_groups,
)
from protocol.secagg import (
    NoiseKind,
    ProtocolViolation,
    RoundAborted,
    ShareKeys,
    Stage,
    UnmaskResponse,
    WrongAddress,
    WrongStage,
    model_digest,
    prg_bytes,
    sketch_segments_for,
)
from protocol.secagg import _server as server_mod
from protocol.secagg._shamir import _HEADER, CHECK_BYTES, COMMIT_BYTES, _check
from sdk.secure import SecureParticipant, SecureSession

from ._secure_inproc import STAGES, forge_weight

D = 200
INDICES = np.arange(0, D, 10, dtype=np.int64)  # k = 20 coordinates


def build(
    n: int = 5,
    min_survivors: int | None = None,
    config: SecureConfig | None = None,
    segments: tuple[tuple[int, int, int, int], ...] = (),
    ledger: BandwidthLedger | None = None,
) -> tuple[SecureRound, dict[str, SecureSession]]:
    """A SecureRound over n devices dev-0..dev-{n-1} and each device's joined session (n = 5:
    graph degree 4, threshold t = 3)."""
    params = np.zeros(D, np.float32)
    plan = make_plan(config or SecureConfig(coord_fraction=0.1), 1, n, D, INDICES, segments)
    devs = tuple(f"dev-{i}" for i in range(n))
    sr = SecureRound(plan, model_digest(params), devs, ledger, min_survivors)
    sessions = {
        d: SecureParticipant(D).join(sr.announce_one(d), sr.digest, params, sr.node_of(d))
        for d in devs
    }
    return sr, sessions


def drive(
    sr: SecureRound,
    sessions: dict[str, SecureSession],
    silent: dict[str, Stage] | None = None,
    until: Stage = Stage.UNMASK,
    log: list[tuple[str, str, int]] | None = None,
) -> dict[str, bytes]:
    """Run the stages up to and including `until` (closing each but the unmask stage); a
    device in `silent` sends nothing from that stage on. Returns the last downloads. `log`
    gets (device, "up" or "down", length) of every message sent."""
    log = [] if log is None else log
    silent = silent or {}
    inbox = dict.fromkeys(sr.device_ids, b"")
    rng = np.random.default_rng(0)
    for stage in STAGES[: STAGES.index(until) + 1]:
        for dev, down in inbox.items():
            if dev in silent and STAGES.index(silent[dev]) <= STAGES.index(stage):
                continue
            s = sessions[dev]
            if stage == Stage.ADVERTISE_KEYS:
                body = s.advertise()
            elif stage == Stage.SHARE_KEYS:
                body = s.share_keys(down)
            elif stage == Stage.MASKED_INPUT:
                delta = np.full(D, 0.25 * (1 + sr.node_of(dev)), np.float32)
                body = s.masked_input(down, delta, 1, rng)
            else:
                body = s.unmask(down)
            sr.receive(stage, dev, body)
            log.append((dev, "up", len(body)))
        if stage != Stage.UNMASK:
            inbox = sr.close(stage)
            log.extend((dev, "down", len(down)) for dev, down in inbox.items())
    return inbox


def test_device_ids_must_number_the_plans_nodes() -> None:
    # Mutant: the length check dropped (only distinctness checked). A plan for 5 nodes with 4
    # ids would leave node 4 without a device; with 6, device 5 would be node 5 of a graph
    # over nodes 0..4.
    params = np.zeros(D, np.float32)
    plan = make_plan(SecureConfig(coord_fraction=0.1), 1, 5, D, INDICES)
    for ids in [("a", "b", "c", "d"), ("a", "b", "c", "d", "e", "f")]:
        with pytest.raises(ValueError, match="plan.num_nodes distinct ids"):
            SecureRound(plan, model_digest(params), ids)
    with pytest.raises(ValueError, match="plan.num_nodes distinct ids"):
        SecureRound(plan, model_digest(params), ("a", "b", "c", "d", "a"))
    assert SecureRound(plan, model_digest(params), ("a", "b", "c", "d", "e")).node_of("e") == 4


def test_min_survivors_above_the_threshold_is_the_floor_a_stage_needs() -> None:
    # Mutant: SecureRound hands the server None instead of its min_survivors (the floor is
    # then the threshold t = 3). With a floor of 5 in a group of 5, one silent device at the
    # key advertisement leaves 4 < 5 and the stage must abort; at t = 3 it would go on.
    sr, sessions = build(5, min_survivors=5)
    with pytest.raises(RoundAborted, match="4 nodes advertised keys, need 5"):
        drive(sr, sessions, {"dev-2": Stage.ADVERTISE_KEYS}, until=Stage.ADVERTISE_KEYS)
    # And with the default (None: the threshold) the same silence is survivable.
    sr, sessions = build(5)
    assert set(drive(sr, sessions, {"dev-2": Stage.ADVERTISE_KEYS}, Stage.ADVERTISE_KEYS)) == {
        "dev-0",
        "dev-1",
        "dev-3",
        "dev-4",
    }


def test_an_upload_in_a_stage_without_uploads_is_refused_and_not_counted() -> None:
    # Mutant: receive() returns quietly for a stage outside the four upload stages. A device
    # has nothing to send once the round is done or aborted: the upload must be refused.
    sr, sessions = build(5)
    body = sessions["dev-0"].advertise()
    for stage in (Stage.DONE, Stage.ABORTED):
        with pytest.raises(WrongStage, match="no uploads in stage"):
            sr.receive(stage, "dev-0", body)
    assert sr.bytes_up["dev-0"] == 0
    sr.receive(Stage.ADVERTISE_KEYS, "dev-0", body)
    assert sr.bytes_up["dev-0"] == len(body)


def test_the_unmask_stage_is_not_closed_by_close() -> None:
    # Mutant: close(UNMASK) returns {} instead of refusing; the unmask stage ends in finish(),
    # which reconstructs and unmasks. A close there must not pass for having ended it.
    sr, sessions = build(5)
    drive(sr, sessions, until=Stage.UNMASK)
    with pytest.raises(WrongStage, match="closed by finish"):
        sr.close(Stage.UNMASK)
    assert sr.stage == Stage.UNMASK and len(sr.finish().contributors) == 5


def test_an_advertise_abort_names_the_devices_short_of_neighbours() -> None:
    # Mutant: close() re-raises the server's abort without the device ids. n = 5, degree 4,
    # t = 3: with dev-0 and dev-1 silent, each of the 3 others has 2 < t live neighbours, so
    # none could be unmasked; the reason names them, in node order, and is the server's.
    sr, sessions = build(5)
    silent = {"dev-0": Stage.ADVERTISE_KEYS, "dev-1": Stage.ADVERTISE_KEYS}
    with pytest.raises(RoundAborted) as info:
        drive(sr, sessions, silent, until=Stage.ADVERTISE_KEYS)
    assert str(info.value).endswith("; devices, in node order: ['dev-2', 'dev-3', 'dev-4']")
    assert sr.server.state.abort_reason == str(info.value)


def test_a_device_dropped_after_sharing_keys_is_reported_dropped() -> None:
    # Mutant: GroupResult.dropped left empty. dev-1 shares keys and then goes silent: the
    # survivors reveal its mask-key shares (t = 3 of its 4 neighbours answer), its pairwise
    # masks are removed, and the result has 4 contributors of weight 1 and dev-1 dropped.
    sr, sessions = build(5)
    drive(sr, sessions, {"dev-1": Stage.MASKED_INPUT})
    res = sr.finish()
    assert res.contributors == ("dev-0", "dev-2", "dev-3", "dev-4")
    assert res.dropped == ("dev-1",) and res.weight == 4


def test_a_total_weight_below_one_per_contributor_aborts_and_the_server_drops_the_sum(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Mutants: the lower bound of the total weight lowered (0 or c - 1 instead of c), and the
    # server not told to abort (its state stays in the unmask stage, holding the shares). The
    # plan has w_max = 1, so 5 contributors must total exactly 5; node 2 sends weight 0: 4.
    sr, sessions = build(5)
    forge_weight(monkeypatch, 2, lambda _plan: 0)
    drive(sr, sessions, until=Stage.UNMASK)
    with pytest.raises(RoundAborted, match=r"total weight 4 outside 5\.\.5 \(5 inputs"):
        sr.finish()
    assert sr.unmasked == 5  # the sum was unmasked (under DP: released) before the check
    assert sr.stage == Stage.ABORTED
    assert sr.server.state.abort_reason is not None
    assert sr.server.state.abort_reason.startswith("total weight 4 outside 5..5")


def test_an_unmask_abort_over_the_correction_budget_names_the_liar(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Mutant: finish() re-raises the server's abort without the suspects' device ids. n = 8
    # (degree 7, t = 4): each secret has 7 shares, so one wrong share is corrected (up to
    # (7 - 4) / 2 = 1 error). Node 2 lies about node 0's secret and node 5 about node 7's:
    # two secrets need a correction, and with a budget of 1 the second aborts the unmask,
    # after the first named its liar, which the reason must then name by device id.
    monkeypatch.setattr(server_mod, "MAX_ROBUST_DECODES", 1)
    lies_about = {2: 0, 5: 7}
    honest = SecureSession.unmask

    def lie(share: bytes) -> bytes:
        body = bytearray(share[:-CHECK_BYTES])
        body[_HEADER.size + COMMIT_BYTES] ^= 0x5A  # the first chunk's y value
        return bytes(body) + _check(bytes(body))

    def unmask(self: SecureSession, request: bytes) -> bytes:
        out = honest(self, request)
        about = lies_about.get(self.client.state.node)
        if about is None:
            return out
        msg = UnmaskResponse.from_bytes(out, self.plan.num_nodes)
        lies = tuple((n, k, lie(s) if n == about else s) for n, k, s in msg.shares)
        return dataclasses.replace(msg, shares=lies).to_bytes()

    monkeypatch.setattr(SecureSession, "unmask", unmask)
    sr, sessions = build(8)
    assert sr.plan.threshold == 4
    drive(sr, sessions)
    with pytest.raises(RoundAborted) as info:
        sr.finish()
    reason = str(info.value)
    assert "more than 1 secrets needed error correction" in reason
    named = [
        d
        for d in ("dev-2", "dev-5")
        if reason.endswith(f"; suspect devices, in node order: ['{d}']")
    ]
    assert len(named) == 1
    assert sr.server.state.abort_reason == reason


def forge_level(monkeypatch: pytest.MonkeyPatch, levels: dict[int, int], at: int = 0) -> None:
    """Device node i puts levels[i] in entry `at` of its (unmasked) vector."""
    honest = sdk.secure.encode_for_plan

    def forged(u: Any, plan: Any, w: int, rng: Any, noise_rng: Any = None, n: Any = None) -> Any:
        vector, sent = honest(u, plan, w, rng, noise_rng, n)
        if n in levels:
            vector[at] = np.uint64(levels[n])
        return vector, sent

    monkeypatch.setattr(sdk.secure, "encode_for_plan", forged)


@pytest.mark.parametrize("at", [0, 19])
@pytest.mark.parametrize("top", [7, 8])
def test_a_level_sum_is_legal_up_to_weight_times_the_top_level(
    monkeypatch: pytest.MonkeyPatch, top: int, at: int
) -> None:
    # Mutants: the bound on a level sum moved by one either way (> W (2^b - 1) + 1, or >=),
    # or the last of the k = 20 value coordinates (entry 19) left unchecked.
    # The plan has b = 3 value bits, no noise headroom, w_max = 1: five devices of weight 1
    # can send a level sum of at most 5 · 7 = 35 on a coordinate. All five send 7 there (35:
    # legal); then node 0 sends 8 instead (36: no honest cohort sends it, the group aborts).
    sr, sessions = build(5)
    assert (sr.plan.value_bits, sr.plan.noise_headroom, sr.plan.max_weight) == (3, 0, 1)
    forge_level(monkeypatch, {0: top, 1: 7, 2: 7, 3: 7, 4: 7}, at)
    drive(sr, sessions)
    if top == 7:
        assert sr.finish().weight == 5
    else:
        with pytest.raises(RoundAborted, match="^1 level sums outside what 5 devices can send"):
            sr.finish()


@pytest.mark.parametrize("below", [0, 1])
def test_noise_may_take_a_level_sum_down_to_minus_the_headroom(
    monkeypatch: pytest.MonkeyPatch, below: int
) -> None:
    # Mutant: the lowest legal ring value 2^m - H excluded (< made <=). Under Skellam noise
    # this plan has an 8-bit ring and headroom H = 87, so a coordinate's sum may read -87
    # (ring value 256 - 87 = 169) but not -88 (168, which is also above 5 · 7 + 87 = 122).
    # Node 0 sends that value there, the others 0.
    cfg = SecureConfig(coord_fraction=0.1, noise=NoiseKind.SKELLAM, noise_multiplier=1.0)
    sr, sessions = build(5, config=cfg)
    p = sr.plan
    assert (p.ring_bits, p.noise_headroom, p.value_bits, p.max_weight) == (8, 87, 3, 1)
    forge_level(monkeypatch, {0: 169 - below, 1: 0, 2: 0, 3: 0, 4: 0})
    drive(sr, sessions)
    if below == 0:
        assert sr.finish().weight == 5
    else:
        with pytest.raises(RoundAborted, match="^1 level sums outside what 5 devices can send"):
            sr.finish()


@pytest.mark.parametrize("top", [7, 8])
def test_a_sketch_sum_is_legal_up_to_contributors_times_the_top_level(
    monkeypatch: pytest.MonkeyPatch, top: int
) -> None:
    # Mutants: the sketch bound c·2^sb instead of c (2^sb - 1), or one above it. The model as
    # one 10 x 20 tensor gives a sketch of sb = 3 bits after the k = 20 values: five devices
    # may sum to 5 · 7 = 35 on an entry, not 36.
    sr, sessions = build(5, segments=sketch_segments_for([(10, 20)]))
    assert (sr.plan.sketch_bits, sr.plan.k, sr.plan.sketch_len > 0) == (3, 20, True)
    forge_level(monkeypatch, {0: top, 1: 7, 2: 7, 3: 7, 4: 7}, at=20)
    drive(sr, sessions)
    if top == 7:
        assert sr.finish().sketch is not None
    else:
        with pytest.raises(RoundAborted, match="^1 level sums outside what 5 devices can send"):
            sr.finish()


def test_every_byte_of_a_round_is_counted_and_a_masked_input_stands_for_the_dense_model() -> None:
    # Mutants: close() not counting the downloads it returns; the ledger's dense baseline of a
    # masked input left 0. A device's downloads are its plan (with the 32-byte digest) and the
    # three stage answers; a masked input's dense baseline is the whole model at 4 bytes a
    # parameter (4 · 200 = 800), every other message has none.
    ledger = BandwidthLedger()
    sr, sessions = build(5, ledger=ledger)
    log: list[tuple[str, str, int]] = []
    drive(sr, sessions, log=log)
    plan_down = len(sr.plan_bytes) + len(sr.digest)
    assert len(sr.digest) == 32
    for dev in sr.device_ids:
        down = [n for d, way, n in log if d == dev and way == "down"]
        up = [n for d, way, n in log if d == dev and way == "up"]
        assert len(down) == 3 and len(up) == 4
        assert sr.bytes_down[dev] == plan_down + sum(down)
        assert sr.bytes_up[dev] == sum(up)
        rows = [r for r in ledger.rows(1) if r.device_id == dev]
        assert [r.payload_bytes for r in rows if r.direction == "down"] == [plan_down, *down]
        assert [(r.payload_bytes, r.dense_bytes) for r in rows if r.direction == "up"] == [
            (up[0], 0),
            (up[1], 0),
            (up[2], 4 * D),
            (up[3], 0),
        ]


def test_an_abort_naming_more_than_five_devices_names_five_and_says_there_are_more() -> None:
    # Mutant: the first 4 named instead of 5. n = 12 (complete graph, degree 11, t = 6): with
    # dev-0..dev-5 silent, each of the 6 others has 5 < t live neighbours, so all 6 are short;
    # the reason names the first five in node order and ", ..." for the sixth.
    sr, sessions = build(12)
    assert (sr.plan.degree, sr.plan.threshold) == (11, 6)
    silent = {f"dev-{i}": Stage.ADVERTISE_KEYS for i in range(6)}
    with pytest.raises(RoundAborted) as info:
        drive(sr, sessions, silent, until=Stage.ADVERTISE_KEYS)
    names = "['dev-6', 'dev-7', 'dev-8', 'dev-9', 'dev-10']"
    assert str(info.value).endswith(f"; devices, in node order: {names}, ...")


def test_the_masked_input_hook_runs_once_the_stage_closed_and_never_after_an_abort() -> None:
    # Mutant: after_masked_input called before the server closes the stage. The hook (the
    # round's min_contributors check) is documented to run once the masked-input stage closed
    # without an abort: the server is then in the unmask stage, holding the final inputs.
    seen: list[tuple[Stage, int]] = []
    sr, sessions = build(5)
    sr.after_masked_input = lambda: seen.append((sr.stage, sr.masked_inputs))
    drive(sr, sessions, {"dev-4": Stage.MASKED_INPUT}, until=Stage.MASKED_INPUT)
    assert seen == [(Stage.UNMASK, 4)]
    # Three silent at masked input: 2 < t = 3 inputs, the close aborts, the hook never runs.
    seen.clear()
    sr, sessions = build(5)
    sr.after_masked_input = lambda: seen.append((sr.stage, sr.masked_inputs))
    silent = dict.fromkeys(("dev-0", "dev-1", "dev-2"), Stage.MASKED_INPUT)
    with pytest.raises(RoundAborted, match="2 masked inputs, need 3"):
        drive(sr, sessions, silent, until=Stage.MASKED_INPUT)
    assert seen == []


def test_the_setup_download_goes_to_members_only_and_counts_the_digest() -> None:
    # Mutants: announce() not counting the 32-byte digest that goes with the plan;
    # announce_one() serving (and counting) a device outside the group.
    sr, _ = build(5)
    got = sr.announce()
    assert sorted(got) == [f"dev-{i}" for i in range(5)]
    assert all(b == sr.plan_bytes for b in got.values())
    assert dict(sr.bytes_down) == dict.fromkeys(got, 2 * (len(sr.plan_bytes) + 32))
    with pytest.raises(ProtocolViolation, match="not in this secure round"):
        sr.announce_one("dev-5")
    assert "dev-5" not in sr.bytes_down


def test_an_abort_reason_names_its_group_only_when_the_round_has_several() -> None:
    # Mutant: groups <= 2 treated as one. With 2 groups, each reason says which it is for.
    assert group_reason(0, 1, "why") == "why"
    assert group_reason(0, 2, "why") == "group 1 of 2: why"
    assert group_reason(1, 2, "why") == "group 2 of 2: why"


def test_a_group_size_of_the_whole_cohort_keeps_one_group_in_cohort_order() -> None:
    # Mutant: only a group size above the cohort skips the shuffle. A size equal to the cohort
    # is one group too, and there is nothing to shuffle it for: the cohort's own order.
    ids = [f"dev-{i}" for i in range(7)]
    assert split_groups(ids, 7, b"s" * 32) == [tuple(ids)]
    assert split_groups(ids, None, b"s" * 32) == [tuple(ids)]


def test_the_total_weight_is_bounded_by_the_contributors_not_the_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Mutant: the upper bound c · w_max taken over the whole group instead of the c
    # contributors. Without dither, w_max = 4; dev-4 drops before its masked input, so 4
    # contributors may total 4..16. Node 0 claims weight 14 (the others 1): 17 is refused
    # (the group's 5 · 4 = 20 would let it scale the mean).
    cfg = SecureConfig(coord_fraction=0.1, dither=False, max_weight=4)
    sr, sessions = build(5, config=cfg)
    assert sr.plan.max_weight == 4
    forge_weight(monkeypatch, 0, lambda _plan: 14)
    drive(sr, sessions, {"dev-4": Stage.MASKED_INPUT})
    with pytest.raises(RoundAborted, match=r"^total weight 17 outside 4\.\.16 \(4 inputs"):
        sr.finish()


def test_masked_inputs_counts_the_inputs_held_so_far() -> None:
    # Mutant: masked_inputs counts the nodes still alive (who shared keys) instead of the
    # masked inputs received. Three of five have sent theirs: 3, and 5 once all have.
    sr, sessions = build(5)
    inbox = drive(sr, sessions, until=Stage.SHARE_KEYS)
    rng = np.random.default_rng(1)
    for i, dev in enumerate(sr.device_ids):
        assert sr.masked_inputs == i
        body = sessions[dev].masked_input(inbox[dev], np.zeros(D, np.float32), 1, rng)
        sr.receive(Stage.MASKED_INPUT, dev, body)
    assert sr.masked_inputs == 5


def test_groups_follow_the_public_prg_order() -> None:
    # Mutant: the cohort not shuffled (groups are then runs of the caller's order). The order
    # is by the u64 little-endian keys prg(seed, 8n, "groups"), ties by position; 9 devices in
    # groups of 3 are that order cut in three.
    ids = [f"dev-{i}" for i in range(9)]
    seed = bytes(range(32))
    raw = prg_bytes(seed, 8 * 9, b"groups")
    keys = [int.from_bytes(raw[8 * i : 8 * i + 8], "little") for i in range(9)]
    order = [ids[i] for i in sorted(range(9), key=lambda i: (keys[i], i))]
    assert split_groups(ids, 3, seed) == [tuple(order[0:3]), tuple(order[3:6]), tuple(order[6:9])]


def test_shares_from_a_device_that_advertised_no_keys_are_refused_for_that() -> None:
    # Mutant: the bundle-count check run for a node without advertised keys (it then reports
    # a wrong address, as if the list were the fault). dev-4 was silent at the advertisement
    # and then uploads bundles of the legal length to 3 of its 4 neighbours: the reason is
    # that it has no keys (it may send no shares at all), and nothing is counted.
    sr, sessions = build(5)
    drive(sr, sessions, {"dev-4": Stage.ADVERTISE_KEYS}, until=Stage.ADVERTISE_KEYS)
    bundles = tuple((j, bytes(BUNDLE_BYTES)) for j in range(3))
    body = ShareKeys(sr.plan.round_id, 4, bundles).to_bytes()
    with pytest.raises(ProtocolViolation, match="without advertising keys") as info:
        sr.receive(Stage.SHARE_KEYS, "dev-4", body)
    assert not isinstance(info.value, WrongAddress)
    assert sr.bytes_up["dev-4"] == 0


# -- coordinate policy -------------------------------------------------------------------------


def test_public_seed_depends_on_the_task_seed_as_its_docstring_builds_it() -> None:
    # Mutant: the task seed left out of the PRG input (every task would share S_r, graph and
    # rotation). The seed is the PRG of (task_seed u128 LE | round u128 LE) under the label.
    for task_seed, r in [(0, 3), (7, 3), (2**64 + 1, 3)]:
        base = task_seed.to_bytes(16, "little") + r.to_bytes(16, "little")
        assert public_seed(task_seed, r, b"coords") == prg_bytes(base, 32, b"public-seed-coords")
    assert public_seed(7, 3, b"coords") != public_seed(0, 3, b"coords")


def test_topk_mix_explores_only_outside_the_top_coordinates() -> None:
    # Mutant: the uniform part does not exclude the top coordinates, so the two parts can
    # overlap and S_r has fewer than k distinct coordinates. size 10, k = 9, explore 0.5:
    # round(4.5) = 4 top coordinates (the 4 largest scores: 9, 8, 7, 6) and 5 uniform ones
    # out of the other 6, so S_r is 9 distinct coordinates holding 6..9.
    score = np.arange(10, dtype=np.float32)
    for r in range(20):
        s = TopKMixPolicy(explore=0.5, seed=1).select(r, 10, 9, score)
        assert s.size == 9 and np.unique(s).size == 9
        assert {6, 7, 8, 9} <= set(s.tolist())


def test_topk_mix_with_explore_one_is_the_random_policy() -> None:
    # Mutant: explore = 1.0 refused (the range [0, 1] made half open). explore = 1 means
    # round(0 * k) = 0 top coordinates, so S_r is the k uniform ones of the same public seed:
    # exactly RandomPolicy's set.
    score = np.arange(50, dtype=np.float32)
    for r in range(3):
        got = TopKMixPolicy(explore=1.0, seed=4).select(r, 50, 7, score)
        assert np.array_equal(got, RandomPolicy(seed=4).select(r, 50, 7, None))


def test_topk_mix_k_must_be_between_one_and_the_model_size() -> None:
    # Mutants: k = 0 accepted (1 <= k made 0 <= k); k = size refused (k <= size made k < size).
    policy = TopKMixPolicy(explore=0.5)
    with pytest.raises(ValueError, match="k=0 outside 1..10"):
        policy.select(0, 10, 0, None)
    with pytest.raises(ValueError, match="k=11 outside 1..10"):
        policy.select(0, 10, 11, None)
    assert np.array_equal(policy.select(0, 10, 10, np.ones(10, np.float32)), np.arange(10))


def smallest_keys(seed: int, r: int, size: int, k: int, exclude: set[int]) -> set[int]:
    """The uniform part written out: the k coordinates outside `exclude` whose u64 PRG keys
    (little-endian, label b"coordinates", under the round's public seed) are smallest."""
    raw = prg_bytes(public_seed(seed, r, b"coords"), 8 * size, b"coordinates")
    keys = [int.from_bytes(raw[8 * i : 8 * i + 8], "little") for i in range(size)]
    order = sorted((key, i) for i, key in enumerate(keys) if i not in exclude)
    return {i for _, i in order[:k]}


def test_topk_mix_takes_no_more_top_coordinates_than_have_a_score() -> None:
    # Mutant: n_top not capped by the count of nonzero scores, so zero-score coordinates are
    # taken "by top score" (in argpartition's order) instead of uniformly. explore 0, k = 5,
    # two nonzero scores (coordinates 3 and 8): S_r = {3, 8} and the 3 uniform ones.
    score = np.zeros(50, np.float32)
    score[[3, 8]] = [1.0, 2.0]
    for r in range(5):
        got = TopKMixPolicy(explore=0.0, seed=2).select(r, 50, 5, score)
        assert set(got.tolist()) == {3, 8} | smallest_keys(2, r, 50, 3, {3, 8})


def test_topk_mix_rounds_the_top_share_to_nearest() -> None:
    # Mutant: int() (floor) instead of round(). explore 1/8, k = 2: (7/8)·2 = 1.75 rounds to 2
    # top coordinates (floor: 1), so S_r is the two best scores, 49 and 48.
    score = np.arange(50, dtype=np.float32)
    for r in range(3):
        assert TopKMixPolicy(explore=0.125, seed=0).select(r, 50, 2, score).tolist() == [48, 49]


def test_random_policy_is_the_sorted_k_smallest_prg_keys_of_the_round() -> None:
    # Mutants: the set left unsorted (the interface promises sorted coordinates); the round
    # id left out of the seed (every round would send the same coordinates).
    for r in range(4):
        got = RandomPolicy(seed=5).select(r, 64, 9, None)
        assert got.tolist() == sorted(smallest_keys(5, r, 64, 9, set()))
