"""Secure-mode rounds over a model: plan each round, run SecAgg per group, apply the mean.

`SecureCoordinator` owns the global parameters, the coordinate-set state (EMA of |global
update|), the DP accountant and, in grouped mode, the aggregation process across group sums.
It never sees an individual update: each group's SecAgg hands back only a decoded sum.
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, overload

import numpy as np
import numpy.typing as npt

from compression import ModelSpec, SparseUpdate
from coordinator.aggregators import AggregationProcess, ClientUpdate, build_aggregator
from coordinator.ledger import BandwidthLedger
from protocol.secagg import (
    NoiseKind,
    RoundAborted,
    SecurePlan,
    Stage,
    choose_degree,
    choose_threshold,
    device_upload_bytes,
    model_digest,
    required_ring_bits,
    sketch_length,
    sketch_scores,
    sketch_segments_for,
)

from ._config import SecureConfig
from ._dp import (
    DistributedDpAccountant,
    account_released_groups,
    integer_sensitivity,
    min_round_rho,
    released_group_weakness,
)
from ._policy import CoordinatePolicy, TopKMixPolicy, public_seed
from ._round import GroupResult, SecureRound, group_reason, split_groups

__all__ = [
    "BudgetExhausted",
    "SecureCoordinator",
    "SecureTask",
    "SecureOutcome",
    "make_plan",
    "budget_k",
    "PlanNumbers",
    "plan_numbers",
]


class BudgetExhausted(ValueError):
    """A round refused because the task's `epsilon_budget` is spent (`SecureCoordinator`)."""


class PlanNumbers(NamedTuple):
    """What `make_plan` computes for a SecAgg instance before it builds the plan (and checks
    against the plan's limits): graph degree, threshold, per-coordinate bound C', per-device
    noise variance and headroom (integer units), ring bits."""

    degree: int
    threshold: int
    coord_bound: float
    variance: float
    headroom: int
    ring_bits: int


def plan_numbers(config: SecureConfig, num_nodes: int, k: int) -> PlanNumbers:
    """`PlanNumbers` of a plan for `num_nodes` devices over k coordinates: arithmetic only.
    Raises `RingOverflow` past 64 ring bits, and a ValueError when the DP noise is past a
    float's range (a huge noise_multiplier, or a clip so small its quantizer scale is).

    The ring is not monotone in n under DP: the noise headroom follows
    n / ceil((1 - expected_dropout) n), which rounding makes uneven."""
    degree = choose_degree(num_nodes, config.degree_factor)
    threshold = min(degree, config.threshold or choose_threshold(degree))
    coord_bound = min(config.clip_norm, config.coord_bound_sigmas * config.clip_norm / math.sqrt(k))
    variance, headroom = 0.0, 0
    if config.dp:
        n_min = max(threshold, math.ceil((1.0 - config.expected_dropout) * num_nodes))
        sens = math.nan
        try:
            sens = integer_sensitivity(config.clip_norm, coord_bound, config.value_bits, k)
            variance = (config.noise_multiplier * sens) ** 2 / n_min
            # 8 standard deviations of the full-cohort noise sum: P[exceed] < 1e-15 per
            # coordinate.
            headroom = math.ceil(8.0 * math.sqrt(variance * num_nodes)) + 1
        except ArithmeticError:  # (z sens)^2, 1 / C' or the headroom past a float's range
            fix = (
                "lower noise_multiplier"
                if math.isfinite(sens)
                else f"the per-coordinate bound {coord_bound:g} is too small to quantize: "
                "raise clip_norm or coord_bound_sigmas"
            )
            raise ValueError(
                f"the noise of {num_nodes} devices over {k} coordinates is past a float's "
                f"range (noise_multiplier {config.noise_multiplier:g}, integer-domain "
                f"sensitivity {sens:.6g}): {fix}"
            ) from None
    ring = required_ring_bits(num_nodes, config.max_weight, config.value_bits, headroom)
    return PlanNumbers(degree, threshold, coord_bound, variance, headroom, ring)


def budget_k(
    config: SecureConfig,
    num_nodes: int,
    model_size: int,
    sketch_len: int = 0,
    near: int | None = None,
) -> int:
    """The largest |S_r| whose four-stage upload per device fits `config.upload_budget` bytes
    for a SecAgg instance of `num_nodes` devices (the ring grows with n, and under DP with k).

    `near`: a guess (e.g. the answer for n - 1); if it is the answer, two costs confirm it
    instead of a binary search. The answer is the same either way.

    Raises ValueError if not even one coordinate fits (the key stages alone exceed the budget).
    """
    budget = config.upload_budget
    if budget is None:
        raise ValueError("config has no upload_budget")

    def cost(k: int) -> int:
        degree, *_, ring = plan_numbers(config, num_nodes, k)
        return device_upload_bytes(degree, k + sketch_len + 1, ring)

    if (
        near is not None
        and 1 <= near <= model_size
        and cost(near) <= budget
        and (near == model_size or cost(near + 1) > budget)
    ):
        return near  # cost is non-decreasing in k: near is the largest that fits
    if cost(1) > budget:
        raise ValueError(
            f"upload budget of {budget} B is below the {cost(1)} B that n={num_nodes} devices "
            "upload for one coordinate (key stages, sketch and weight)"
        )
    lo, hi = 1, model_size  # cost is non-decreasing in k: invariant cost(lo) <= budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def make_plan(
    config: SecureConfig,
    round_id: int,
    num_nodes: int,
    model_size: int,
    indices: npt.NDArray[np.int64],
    sketch_segments: tuple[tuple[int, int, int, int], ...] = (),
    group: int = 0,
    like: SecurePlan | None = None,
) -> SecurePlan:
    """The plan for one SecAgg instance of `num_nodes` devices over coordinates `indices`.

    `group` (grouped mode) salts the rotation seed, which also keys the public dither: node i
    of every group would otherwise round with the same dither, and the group means would
    share their rounding error.

    `like`: another plan of the round. If it is over the same coordinates (equal `indices`)
    and model size, the new plan shares its checked S_r and packed bytes
    (`SecurePlan.derive`); the bytes are the same either way.

    Raises `RingOverflow` if n * w_max * (2^b - 1) (+ noise headroom) needs more than 64 bits.
    """
    if num_nodes < 3:
        # With two devices the sum minus one's own update is the other's update.
        raise ValueError(f"a secure aggregation needs at least 3 devices, got {num_nodes}")
    k = int(indices.size)
    degree, threshold, coord_bound, variance, headroom, ring = plan_numbers(config, num_nodes, k)
    if 2 * threshold <= degree:
        # Devices refuse such a plan (t > k/2 keeps a node's two secrets apart): say so now.
        raise ValueError(f"threshold {threshold} must exceed half the graph degree {degree}")
    fields: dict[str, Any] = {
        "round_id": round_id,
        "num_nodes": num_nodes,
        "degree": degree,
        "threshold": threshold,
        "ring_bits": ring,
        "value_bits": config.value_bits,
        "max_weight": config.max_weight,
        "clip_norm": config.clip_norm,
        "coord_bound": coord_bound,
        "graph_seed": public_seed(config.seed, round_id, b"graph"),
        "rotation_seed": public_seed(
            config.seed, round_id, b"rotation" + (b"-%d" % group if group else b"")
        ),
        "rotate": config.rotate,
        "noise": config.noise,
        "noise_variance": variance,
        "noise_headroom": headroom,
        "sketch_bits": (config.sketch_bits or config.value_bits) if sketch_segments else 0,
        "sketch_segments": sketch_segments,
        # Subtractive dither needs uniform weights (the coordinator subtracts each term).
        "dither": config.dither and config.max_weight == 1,
    }
    if (
        like is not None
        and like.model_size == model_size
        and (like.indices is indices or np.array_equal(like.indices, indices))
    ):
        return like.derive(**fields)
    return SecurePlan(model_size=model_size, indices=indices, **fields)


class _Groups(Sequence[SecureRound]):
    """A round's `SecureRound`s, each planned when it is first asked for.

    A group's plan, SecAgg server (its graph) and round digest cost two PRG calls and a
    SHA-256 over the packed S_r: 10,000 of each for a cohort of 30,000 in groups of 3, on the
    event loop when the round opens. Built on first use instead (a device's setup, upload or
    a stage close), each from what the round fixed when it opened, so it is the same group
    whenever it is built. Iterating builds every group.
    """

    def __init__(self, members: list[tuple[str, ...]], build: Callable[[int], SecureRound]) -> None:
        self._members = members
        self._build = build
        self._built: list[SecureRound | None] = [None] * len(members)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._members)

    @overload
    def __getitem__(self, i: int) -> SecureRound: ...

    @overload
    def __getitem__(self, i: slice) -> list[SecureRound]: ...

    def __getitem__(self, i: int | slice) -> SecureRound | list[SecureRound]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        sr = self._built[i]  # IndexError as a list's
        if sr is None:
            g = range(len(self))[i]
            with self._lock:  # two threads asking at once get one SecAgg server
                sr = self._built[g]
                if sr is None:
                    sr = self._built[g] = self._build(g)
        return sr

    def built(self, g: int) -> bool:
        """Whether group `g` has been planned (asked for) yet."""
        return self._built[g] is not None


@dataclass
class SecureTask:
    """One open secure round: its coordinate set and one `SecureRound` per group.

    `groups` may plan each group when it is first asked for (`SecureCoordinator.open_round`
    does); `members` gives each group's device ids (node order) without planning it.
    """

    round_id: int
    indices: npt.NDArray[np.int64]
    groups: Sequence[SecureRound]
    group_of: dict[str, int]
    members: Sequence[tuple[str, ...]]
    # The round's min_reports: a group whose masked-input stage closes when the round can no
    # longer hold this many masked inputs aborts then (`_check_min_contributors`).
    min_contributors: int = 1
    # Under DP (`SecureCoordinator._before_unmask_request`): the weakest group, as (masked
    # inputs, plan), whose unmask request went out, and the `dp_refused` record of a group
    # refused at its masked-input close by the epsilon budget (its unmask request never went
    # out).
    unmask_weakest: tuple[int, SecurePlan] | None = None
    budget_refused: dict[str, Any] | None = None
    # Under DP, called with `pending_dp` of the groups asked to unmask so far each time a
    # group's unmask request is about to go out and that record changes (a weaker group): the
    # service stores it durably, so that a stop after the survivors' answers (when a curious
    # server can unmask the sum) and before the close counts the release. An exception from
    # it aborts the group instead (no unmask request).
    on_unmask_request: Callable[[dict[str, Any]], None] | None = None

    def round_for(self, device_id: str) -> SecureRound:
        return self.groups[self.group_of[device_id]]

    def by_size(self) -> dict[int, SecureRound]:
        """The first group of each distinct size, by size. Every plan of a round with the same
        number of devices has the same degree, threshold, ring and vector length (only the
        rotation seed differs), so these bound every group's; `open_round` plans them when
        the round opens."""
        first: dict[int, int] = {}
        for g, ids in enumerate(self.members):
            first.setdefault(len(ids), g)
        return {n: self.groups[g] for n, g in first.items()}


@dataclass
class SecureOutcome:
    """What a closed secure round produced. `update` is float32[d] (zeros off S_r)."""

    round_id: int
    committed: bool
    contributors: list[str]
    dropped: list[str]
    aborted_groups: int
    update: npt.NDArray[np.float32]
    measurements: dict[str, Any] = field(default_factory=dict)


class SecureCoordinator:
    """Secure-mode round loop state for one task (transport-independent)."""

    def __init__(
        self,
        params: npt.NDArray[np.float32],
        config: SecureConfig,
        *,
        policy: CoordinatePolicy | None = None,
        ledger: BandwidthLedger | None = None,
        spec: ModelSpec | None = None,
    ) -> None:
        self.params = np.array(params, dtype=np.float32).reshape(-1)
        self.size = int(self.params.size)
        self.config = config
        self.policy = policy or TopKMixPolicy(config.explore, config.seed)
        self.ledger = ledger
        self.version = 0
        self.round_id = 0
        self.score: npt.NDArray[np.float32] | None = None
        self.accountant = DistributedDpAccountant(config.dp_delta)
        # Set when a round was abandoned before unmasking because its release could pass the
        # epsilon budget (`close_round`): no round opens after it.
        self.budget_stopped = False
        # The sketch needs tensor shapes, and it is not noised, so it is off under DP.
        self.sketch_segments: tuple[tuple[int, int, int, int], ...] = ()
        if spec is not None and config.sketch and not config.dp:
            if spec.size != self.size:
                raise ValueError(f"spec of size {spec.size}, params of size {self.size}")
            shapes = [e.shape for e in spec.entries]
            self.sketch_segments = sketch_segments_for(shapes, config.sketch_pool)
        # Before any feedback, prefer whole small tensors (biases, heads, first convolutions):
        # their coordinates carry far more update mass each than those of the big matrices.
        self._prior = spec is not None and spec.size == self.size
        if spec is not None and self._prior:
            prior = np.empty(self.size, dtype=np.float32)
            for e in spec.entries:
                prior[e.offset : e.offset + e.size] = 1.0 / e.size
            self.score = prior
        self._process: AggregationProcess | None = None
        self._agg_state: Any = None
        if config.group_size is not None:
            self._process = build_aggregator(config.group_aggregator).create(self.size)
            self._agg_state = self._process.initialize()

    def carried_state(self) -> dict[str, Any]:
        """What later rounds depend on besides the model and the DP ledger: the coordinate
        scores (float32[d] or None), whether the spec prior still stands, and the cross-group
        aggregator's state. The service persists it with every published round."""
        return {"score": self.score, "prior": self._prior, "aggregator": self._agg_state}

    def restore_carried_state(self, state: Mapping[str, Any]) -> None:
        """Resume from `carried_state()` output (after a restart)."""
        score = state["score"]
        if score is not None and (
            not isinstance(score, np.ndarray)
            or score.dtype != np.float32
            or score.shape != (self.size,)
        ):
            raise ValueError(f"carried coordinate scores must be float32[{self.size}]")
        self.score = score
        self._prior = bool(state["prior"])
        self._agg_state = state["aggregator"]

    def replay_dp(self, dp: Mapping[str, Any]) -> None:
        """Re-record one released round from its `measurements["dp"]` (a restart rebuilds the
        accountant from the committed rounds, so epsilon never restarts from zero)."""
        self.accountant.record_round(
            NoiseKind[str(dp["noise"]).upper()],
            float(dp["sensitivity"]),
            float(dp["noise_variance_per_device"]),
            int(dp["survivors"]),
            int(dp["k"]),
        )

    @property
    def budgeted(self) -> bool:
        """Whether the task has an epsilon budget to keep (distributed DP and a finite one)."""
        return self.config.dp and math.isfinite(self.config.epsilon_budget)

    def next_round_floor(self) -> float:
        """The least epsilon any next round can leave: the accountant's with one more round of
        `min_round_rho` (whatever its cohort, grouping, |S_r| or survivors)."""
        rho = min_round_rho(self.config.noise_multiplier, self.config.expected_dropout)
        return self.accountant.epsilon_after(rho)

    def budget_exhausted(self) -> bool:
        """Whether no next round can be released within `epsilon_budget`: a round was refused
        for it, or even the most favourable next round would pass it. False without a budget."""
        if not self.budgeted:
            return False
        return self.budget_stopped or self.next_round_floor() > self.config.epsilon_budget

    @property
    def k(self) -> int:
        """|S_r| from `coord_fraction` (the size without an upload budget)."""
        return max(1, int(round(self.config.coord_fraction * self.size)))

    def k_for(self, group_sizes: Sequence[int]) -> int:
        """|S_r| for a round with these SecAgg groups: the largest that fits the upload budget
        in every group, or `k` without a budget. Each distinct size is asked (a round has at
        most two): the largest group has the widest graph, but under distributed DP not
        always the widest ring (its noise headroom follows n / ceil((1 - dropout) n))."""
        if self.config.upload_budget is None:
            return self.k
        sketch_len = sketch_length(self.sketch_segments)
        return min(budget_k(self.config, n, self.size, sketch_len) for n in set(group_sizes))

    def open_round(
        self,
        device_ids: Sequence[str],
        round_id: int | None = None,
        min_contributors: int = 1,
    ) -> SecureTask:
        """Choose S_r, split the cohort into groups and plan one SecAgg per group: one group of
        each distinct size now (a plan no group could run raises here), every other group
        when it is first asked for (`SecureTask.groups`), with the same plan bytes and digest.

        Devices are numbered in sorted id order (the result does not depend on the order given).

        `round_id` (default: the next of this coordinator's own counter) names the round in
        every message, key derivation and public seed; the HTTP service passes its durable
        round id, which is unique across restarts and tasks.

        `min_contributors` (the task's `min_reports`, as `close_round` takes it): when a
        group's masked-input stage closes and the round's groups can no longer hold that many
        masked inputs, the group aborts then (`RoundAborted` from its close) instead of
        running an unmask stage for a round that cannot commit.
        """
        if min_contributors < 1:
            raise ValueError(f"min_contributors must be >= 1, got {min_contributors}")
        if round_id is not None and round_id < 1:
            raise ValueError(f"round_id must be positive, got {round_id}")
        if self.budget_exhausted():
            raise BudgetExhausted(
                f"the epsilon budget {self.config.epsilon_budget:g} (epsilon_budget, at delta "
                f"{self.config.dp_delta:g}) is spent: epsilon is "
                f"{self.accountant.epsilon():.4g} after {self.accountant.rounds} released "
                "rounds and another round could pass the budget; no round opens"
            )
        if len(set(device_ids)) != len(device_ids):
            raise ValueError("a device is listed twice in the cohort")
        self.round_id = self.round_id + 1 if round_id is None else round_id
        r = self.round_id
        # Node numbers follow the sorted device ids, whatever order the cohort arrived in, so
        # every transport numbers a cohort alike (each node's dither stream is keyed by it).
        ids = sorted(device_ids)
        groups = split_groups(
            ids, self.config.group_size, public_seed(self.config.seed, r, b"groups")
        )
        k = self.k_for([len(g) for g in groups]) if len(ids) >= 3 else self.k
        indices = self.policy.select(r, self.size, k, self.score)
        digest = model_digest(self.params)
        group_of: dict[str, int] = {}
        for g, members in enumerate(groups):
            group_of.update(dict.fromkeys(members, g))
        # What every group's plan is made of, fixed now: a group planned later (at its first
        # request) is the one it would have been here.
        config, size, segments, ledger = self.config, self.size, self.sketch_segments, self.ledger
        first: list[SecurePlan] = []

        def build(g: int) -> SecureRound:
            # Every group's plan shares the first's S_r (checked and zstd-packed once): a
            # cohort of 30,000 in groups of 3 compressed the same 12,500 indices 10,000 times.
            like = first[0] if first else None
            plan = make_plan(config, r, len(groups[g]), size, indices, segments, g, like=like)
            if not first:
                first.append(plan)
            sr = SecureRound(plan, digest, groups[g], ledger)

            def before_unmask_request() -> None:
                _check_min_contributors(task, sr)
                self._before_unmask_request(task, sr)

            sr.after_masked_input = before_unmask_request
            return sr

        task = SecureTask(r, indices, _Groups(groups, build), group_of, groups, min_contributors)
        # One group of each size now (group 0 first): a plan the round cannot run (a ring
        # overflow, a threshold below a majority) is refused when it opens, as before.
        task.by_size()
        return task

    def _before_unmask_request(self, task: SecureTask, sr: SecureRound) -> None:
        """Under DP, group `sr` is just past its masked-input close and its unmask request not
        yet sent. When `sr` is weaker than every group of the round asked to unmask before it
        (else the round's epsilon is as already checked and recorded), its `pending_dp` record
        (that of the weakest group: groups are disjoint, `account_released_groups`) is
        checked against the epsilon budget, then handed to `task.on_unmask_request`. Either
        refusing aborts `sr` (`RoundAborted`): no unmask request goes out.

        The budget has to be checked here, not when the unmask stage closes: by then the server
        holds at least t shares of every secret the unmask needs (the survivors' answers), so a
        server that reads everything it holds (honest but curious) can unmask the sum whether
        or not `close_round` then does. After a refusal every later group of the round is
        refused too. The record is handed over for the same reason: a stop after the answers
        must count the release."""
        if not self.config.dp or (not self.budgeted and task.on_unmask_request is None):
            return
        if task.budget_refused is not None:
            why = (
                "another group of this round was refused before unmasking (epsilon_budget): "
                "nothing of this group is unmasked"
            )
            sr.abort(why)
            raise RoundAborted(why)
        mine = (sr.masked_inputs, sr.plan)
        known = [mine] if task.unmask_weakest is None else [task.unmask_weakest, mine]
        weakest = max(known, key=released_group_weakness)
        if weakest is task.unmask_weakest:
            return
        pending = account_released_groups(
            copy.deepcopy(self.accountant), [weakest], self.config.noise_multiplier
        )
        budget = self.config.epsilon_budget
        if self.budgeted and not pending["epsilon"] <= budget:
            spent = self.accountant.epsilon()
            task.budget_refused = {
                "epsilon": spent,
                "epsilon_if_released": pending["epsilon"],
                "epsilon_budget": budget,
                "delta": self.accountant.delta,
                "rounds": self.accountant.rounds,
            }
            self.budget_stopped = True
            why = (
                f"unmasking could take epsilon from {spent:.4g} to {pending['epsilon']:.4g}, "
                f"above the budget {budget:g} (epsilon_budget): nothing unmasked, no unmask "
                "request sent"
            )
            sr.abort(why)
            raise RoundAborted(why)
        if task.on_unmask_request is not None:
            try:
                task.on_unmask_request(pending)
            except Exception as exc:
                why = (
                    f"its release could not be recorded before its unmask request ({exc!r}): "
                    "nothing unmasked, no unmask request sent"
                )
                sr.abort(why)
                raise RoundAborted(why) from exc
        task.unmask_weakest = weakest

    def pending_dp(self, task: SecureTask) -> dict[str, Any] | None:
        """The `dp` measurements `close_round` would record if every group now in the unmask
        stage unmasked its sum (an upper bound on what it records), without recording it;
        None without DP or with no such group. Written durably before unmasking (and, through
        `SecureTask.on_unmask_request`, before each unmask request that changes it), it lets a
        restart count a sum the server saw, or held the shares to unmask, but never got to
        publish or abandon."""
        candidates = [(sr.masked_inputs, sr.plan) for sr in task.groups if sr.stage == Stage.UNMASK]
        if not self.config.dp or not candidates:
            return None
        return account_released_groups(
            copy.deepcopy(self.accountant), candidates, self.config.noise_multiplier
        )

    def close_round(
        self,
        task: SecureTask,
        before_unmask: Callable[[dict[str, Any]], None] | None = None,
        min_contributors: int = 1,
    ) -> SecureOutcome:
        """Finish every group still in the unmask stage, combine, and publish the new model.

        `before_unmask`, if given, receives `pending_dp(task)` (when it is not None) before
        any sum is unmasked; an exception from it leaves every group unmasked.

        `min_contributors` (the task's `min_reports`): a round whose unmasking groups hold
        fewer masked inputs is not committed, and nothing is unmasked; one left with fewer
        contributors after unmasking (a group aborted then) is not committed either, its
        unmasked sums counted under DP as always.

        Under DP every group whose server holds t shares of every secret its unmask needs
        (`_can_unmask`: the survivors' answers are in) counts as released, whether or not
        this close unmasks it: a declined round's measurements then carry `dp` too.

        With an `epsilon_budget`: a round whose `pending_dp` epsilon (an upper bound on what
        unmasking records) is above the budget is not committed and nothing is unmasked
        (`before_unmask` not called; only groups the server could unmask are counted); its
        measurements carry `budget_exhausted` True and `dp_refused`, and no round opens after
        it. A released
        round's `dp` carries `epsilon_budget` and `budget_exhausted` (True when even the most
        favourable next round would pass the budget: the task should stop).
        """
        if min_contributors < 1:
            raise ValueError(f"min_contributors must be >= 1, got {min_contributors}")
        # Each group whose server already holds t shares of every secret its unmask needs
        # (the survivors' answers are in): a server that reads what it holds can unmask its
        # sum whatever this close decides, so under DP it counts as released, unmasked here
        # or not. Taken before anything below aborts a group (an abort drops the shares).
        exposed = {
            g: (sr.masked_inputs, sr.plan) for g, sr in enumerate(task.groups) if _can_unmask(sr)
        }
        held = sum(sr.masked_inputs for sr in task.groups if sr.stage == Stage.UNMASK)
        if held < min_contributors:
            short = (
                f"{held} masked inputs in the groups left to unmask, below the round's "
                f"{min_contributors} (min_reports): nothing unmasked"
            )
            if self.config.dp and exposed:
                short += (
                    f"; the server held the shares to unmask {len(exposed)} of them, counted "
                    "in epsilon"
                )
            _abort_unmasking(task, short)
        pending = self.pending_dp(task)
        # A group refused at its masked-input close (`_before_unmask_request`) refused the round's
        # release; groups already asked to unmask fit the budget and are unmasked as usual.
        refused: dict[str, Any] | None = task.budget_refused
        if pending is not None and self.budgeted:
            budget = self.config.epsilon_budget
            if not pending["epsilon"] <= budget:
                spent = self.accountant.epsilon()
                refused = {
                    "epsilon": spent,
                    "epsilon_if_released": pending["epsilon"],
                    "epsilon_budget": budget,
                    "delta": self.accountant.delta,
                    "rounds": self.accountant.rounds,
                }
                why = (
                    f"unmasking could take epsilon from {spent:.4g} to {pending['epsilon']:.4g}, "
                    f"above the budget {budget:g} (epsilon_budget): nothing unmasked"
                )
                _abort_unmasking(task, why)
                self.budget_stopped = True
                pending = None
        if before_unmask is not None and pending is not None:
            before_unmask(pending)
        results: list[GroupResult] = []
        kept: list[int] = []  # each result's group index (helper-346: labels counted results)
        aborted = 0
        reasons: list[str] = []
        for gi, sr in enumerate(task.groups):
            if sr.stage != Stage.UNMASK:
                aborted += 1
                # A group that aborted at a stage's close says why (e.g. too few masked
                # inputs); one the round's deadline cut short names the stage it was in.
                why = sr.server.state.abort_reason if sr.stage == Stage.ABORTED else ""
                why = why or f"group stopped in stage {sr.stage}"
                reasons.append(group_reason(gi, len(task.groups), why))
                continue
            try:
                results.append(sr.finish())
                kept.append(gi)
            except RoundAborted as exc:
                aborted += 1
                reasons.append(group_reason(gi, len(task.groups), str(exc)))
        contributors = [d for res in results for d in res.contributors]
        dropped = sorted(set(task.group_of) - set(contributors))
        update = np.zeros(self.size, dtype=np.float32)
        meas: dict[str, Any] = {
            "groups": len(task.groups),
            "aborted_groups": aborted,
            "contributors": len(contributors),
            "k": int(task.indices.size),
            "ring_bits": max(sr.plan.ring_bits for sr in task.by_size().values()),  # the widest
            "unmask_s": sum(res.unmask_s for res in results),
        }
        too_few = bool(results) and len(contributors) < min_contributors
        if too_few:
            reasons.append(
                f"{len(contributors)} contributors after unmasking, below the round's "
                f"{min_contributors} (min_reports): not committed"
            )
        if reasons:
            meas["abort_reasons"] = reasons
        if refused is not None:
            meas["budget_exhausted"] = True
            meas["dp_refused"] = refused
            if not any(sr.unmasked is not None for sr in task.groups):
                meas["abandoned"] = (
                    f"the epsilon budget {refused['epsilon_budget']:g} would be passed: "
                    f"unmasking could take epsilon from {refused['epsilon']:.4g} to "
                    f"{refused['epsilon_if_released']:.4g}; nothing unmasked, the task stops"
                )
        if suspects := sorted(d for res in results for d in res.suspects):
            # Each sent an unmask share off its dealer's polynomial; the shares were corrected
            # around, and the ids are here for the operator (docs/secure-aggregation.md).
            meas["suspect_devices"] = suspects
        released = [
            (sr.unmasked, sr.plan) if sr.unmasked is not None else exposed[g]
            for g, sr in enumerate(task.groups)
            if sr.unmasked is not None or g in exposed
        ]
        if self.config.dp and released:
            # Every sum the server unmasked counts, committed or not (a group can abort after
            # unmasking, on a forged input): the server has seen it. So does every sum it held
            # the shares to unmask (`exposed`), though this close declined to.
            meas["dp"] = account_released_groups(
                self.accountant, released, self.config.noise_multiplier
            )
            if self.budgeted:
                meas["dp"]["epsilon_budget"] = self.config.epsilon_budget
                meas["dp"]["budget_exhausted"] = self.budget_exhausted()
        if not results or sum(res.weight for res in results) == 0:
            return SecureOutcome(task.round_id, False, [], dropped, aborted, update, meas)
        if too_few:
            # No input is in the model: every device is out, as when every group aborted.
            everyone = sorted(task.group_of)
            return SecureOutcome(task.round_id, False, [], everyone, aborted, update, meas)
        if self._process is None:
            (res,) = results
            update[task.indices] = res.mean.astype(np.float32)
        else:
            updates = [
                ClientUpdate(
                    f"group-{g}",
                    SparseUpdate(task.indices, res.mean.astype(np.float32), self.size),
                    float(res.weight),
                )
                for g, res in zip(kept, results, strict=True)
            ]
            out = self._process.next(self._agg_state, updates)
            self._agg_state = out.state
            update = np.asarray(out.result, dtype=np.float32)
            meas["aggregator"] = out.measurements
        self.params = (self.params + np.float32(self.config.server_lr) * update).astype(np.float32)
        fresh = np.abs(update)
        if self.sketch_segments:
            plan0 = task.groups[0].plan
            sums = sum(res.sketch for res in results if res.sketch is not None)
            fresh = sketch_scores(np.asarray(sums, dtype=np.float64), plan0)
        decay = np.float32(self.config.ema_decay)
        if self.score is None or self._prior:
            self._prior = False
            self.score = fresh.astype(np.float32)
        else:
            self.score = (decay * self.score + (1 - decay) * fresh).astype(np.float32)
        self.version += 1
        return SecureOutcome(task.round_id, True, contributors, dropped, aborted, update, meas)


def _most_masked_inputs(sr: SecureRound) -> int:
    """The most masked inputs group `sr` can still end with at its current stage."""
    state = sr.server.state
    if sr.stage in (Stage.UNMASK, Stage.DONE):
        return len(state.contributors)
    if sr.stage == Stage.MASKED_INPUT:
        return len(state.senders)
    if sr.stage == Stage.SHARE_KEYS:
        return len(state.keys)
    return 0 if sr.stage == Stage.ABORTED else len(sr.device_ids)


def _check_min_contributors(task: SecureTask, sr: SecureRound) -> None:
    """Abort `sr` (just past its masked-input close; `RoundAborted`) when the round's groups
    can no longer hold `task.min_contributors` masked inputs: `close_round` would unmask
    nothing, so no unmask stage is run for it. A group not planned yet counts all of its
    devices; one in an earlier stage, the devices still in it."""
    need = task.min_contributors
    if need <= 1:
        return
    planned: Callable[[int], bool] = getattr(task.groups, "built", lambda g: True)
    most = sum(
        _most_masked_inputs(task.groups[g]) if planned(g) else len(ids)
        for g, ids in enumerate(task.members)
    )
    if most < need:
        why = (
            f"at most {most} masked inputs in the round's groups when this group's masked-input "
            f"stage closed, below the round's {need} (min_reports): the round cannot commit, "
            "no unmask stage is run"
        )
        sr.abort(why)
        raise RoundAborted(why)


def _can_unmask(sr: SecureRound) -> bool:
    """Whether group `sr` is in its unmask stage and its server holds at least t shares of
    every secret the unmask needs (each alive node's self-mask seed, each dropped node's mask
    key): what `finish` needs to unmask the sum, so what a server that reads everything it
    holds needs to unmask it. Shares set aside on arrival do not count."""
    if sr.stage != Stage.UNMASK:
        return False
    state = sr.server.state
    t = state.params.threshold
    return all(len(state.shares.get(n, ())) >= t for n in (*state.alive, *state.dropped))


def _abort_unmasking(task: SecureTask, why: str) -> None:
    """Abort every group of `task` still in the unmask stage, with `why`: nothing of theirs is
    unmasked."""
    for sr in task.groups:
        if sr.stage == Stage.UNMASK:
            sr.abort(why)
