"""The state store interface and the value types it speaks.

A store keeps, per experiment:

- one record per decision (until some time after its reward deadline), the running
  totals of every arm, and the same totals in time buckets. Rewards are applied exactly
  once: each call checks everything before its first write. Beside the reward
  statistics, every decision carries its model call's outcome: calls, errors and a
  latency histogram per arm (the guardrails read them).
- the experiment's *control state* (:class:`Control`): its epoch, its state (running,
  paused, promoted), each arm's status (active, rolled back, promoted, retired) and
  whatever else the safety plane keeps. It changes only through :meth:`Store.transition`,
  a compare-and-set on its version that also appends the change's audit events, so a
  change happens exactly once however many router replicas attempt it.
- the audit log: an append-only, capped list of :class:`AuditEvent`.

Statistics belong to an *epoch*: a reset moves the experiment to a new epoch, so every
statistic starts from zero and decisions of the old epoch are unknown, atomically. The
store tracks the epoch itself (callers never pass it).

Reward sums are kept as fixed-point integers of ``1 / REWARD_SCALE`` (a reward is
rounded half-up to the nearest micro-unit), so "counted exactly once" can be checked
exactly; sums of squares are floats (they only feed variance estimates).
"""

from __future__ import annotations

import enum
import math
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "ARM_FIELDS",
    "HIST_PREFIX",
    "REWARD_SCALE",
    "ArmField",
    "ArmStatus",
    "ArmTotals",
    "AuditEvent",
    "Bucket",
    "Control",
    "DecisionRecord",
    "Durability",
    "EventState",
    "ExperimentSettings",
    "ExperimentState",
    "LoggedDecision",
    "RewardOutcome",
    "SettleReport",
    "ShadowCall",
    "Snapshot",
    "Store",
    "new_event_id",
    "reward_units",
]

REWARD_SCALE = 1_000_000
HIST_PREFIX = "h"  # latency histogram fields: "<arm>:h<bin>"
# When a write is answered: once the master has it, or once a replica has it too.
Durability = Literal["primary", "replicated"]
Clock = Callable[[], float]


def reward_units(reward: float) -> int:
    """A reward in fixed-point units, rounded half up (the Redis script does the same)."""
    return math.floor(reward * REWARD_SCALE + 0.5)


def new_event_id() -> str:
    """A random 128-bit event id, as 32 hex digits."""
    return secrets.token_hex(16)


class RewardOutcome(enum.StrEnum):
    """What happened to one posted reward."""

    APPLIED = "applied"  # counted now, for the arm of the stored decision
    DUPLICATE = "duplicate"  # this event already has its reward; nothing changed
    UNKNOWN = "unknown"  # no such decision (never made, or its record has expired)
    EXPIRED = "expired"  # past the wait window (or settled by the sweeper); nothing changed
    INVALID = "invalid"  # NaN, infinite or outside the experiment's bounds; nothing changed


class ArmStatus(enum.StrEnum):
    """An arm's status in the control state (only ``active`` arms get traffic from a
    policy; a promoted arm gets all of it)."""

    ACTIVE = "active"
    ROLLED_BACK = "rolled_back"
    PROMOTED = "promoted"
    RETIRED = "retired"


class ExperimentState(enum.StrEnum):
    """``running``: the policy routes; ``paused``: all traffic to the baseline;
    ``promoted``: all traffic to the promoted arm."""

    RUNNING = "running"
    PAUSED = "paused"
    PROMOTED = "promoted"


@dataclass(frozen=True)
class ExperimentSettings:
    """What the store needs to know about an experiment.

    ``on_model_error``: ``low`` gives a decision whose model call failed the reward
    ``error_reward`` at once (so every policy learns from failures); ``withdraw`` takes
    it out of the reward statistics. Either way the failure counts in ``errors``.

    ``durability``: this experiment's own durability on a Redis store (``primary``
    or ``replicated``, see :class:`~bandit_serve.store.redis_store.RedisStore`); None
    (the default) uses the store's. The memory store ignores it.
    """

    name: str
    low: float = 0.0
    high: float = 1.0
    wait_seconds: float = 600.0
    on_expiry: Literal["default", "drop"] = "default"
    default_reward: float = 0.0
    on_model_error: Literal["low", "withdraw"] = "low"
    error_reward: float = 0.0
    retention_seconds: float = 86400.0
    bucket_seconds: int = 60
    bucket_retention_seconds: int = 86400
    sticky_seconds: float = 86400.0
    events_max: int = 10_000  # the audit log keeps the last this many events
    durability: Durability | None = None  # None: the store's

    def accepts(self, reward: float) -> bool:
        """True when the reward is a finite number within ``[low, high]``."""
        return math.isfinite(reward) and self.low <= reward <= self.high

    def bucket_start(self, t: float) -> int:
        return int(t // self.bucket_seconds) * self.bucket_seconds


@dataclass(frozen=True)
class DecisionRecord:
    """A logged decision, as the caller needs it to answer a prediction request."""

    event_id: str
    arm: str
    propensity: float
    decided_at: float
    deadline: float


@dataclass(frozen=True)
class LoggedDecision:
    """A decision and what its model call did, as :meth:`Store.log_decisions` takes it.

    ``failed``: the model call raised or timed out. ``rejected``: the model refused the
    inputs (withdrawn, counted in ``input_rejections``, not an error). ``client_gone``:
    the client went away before its answer was sent (the decision is withdrawn: no client
    holds its id).
    ``latency_bin``: the model call's latency as a histogram bin
    (:mod:`bandit_serve.stats.histogram`), None when no call was timed.
    """

    event_id: str
    arm: str
    propensity: float
    failed: bool = False
    client_gone: bool = False
    latency_bin: int | None = None
    rejected: bool = False
    unit: str | None = None
    assign: int = 0  # 1: the unit's first assignment (unless it has one); 2: reassign
    unit_expected: Mapping[str, float] | None = None  # for a new unit: P(each arm)


@dataclass(frozen=True)
class ShadowCall:
    """A mirrored call to a shadow arm: its outcome and its agreement with the answer.

    ``equal``: the answers were equal (None: not compared, e.g. it failed);
    ``abs_diff``: their absolute difference when both were numbers."""

    arm: str
    failed: bool
    latency_bin: int
    equal: bool | None = None
    abs_diff: float | None = None


class EventState(enum.StrEnum):
    """The state of a logged decision. The values are the codes the Lua scripts store
    (their prelude is generated from this enum), and the memory store uses the same."""

    PENDING = "p"  # waiting for its reward
    REWARDED = "r"  # got its reward (posted)
    WITHDRAWN = "c"  # taken out of the reward statistics: it waits for nothing
    DEFAULTED = "d"  # its wait window passed: it got the default reward
    DROPPED = "x"  # its wait window passed: settled without a reward (on_expiry: drop)


@dataclass(frozen=True)
class ArmField:
    """One counter of an arm: its Redis hash field (``<arm>:<field>``), its
    :class:`ArmTotals` attribute, its type, and whether the experiment view shows it."""

    field: str
    attr: str
    type: type[int] | type[float]
    public: bool = True


# The one table of arm counters. The Redis parser and the memory store loop over it; the
# Lua prelude learns from it which fields are floats (HINCRBYFLOAT). Adding a counter:
# an entry here and in ArmTotals, the Lua that increments it, the memory twin.
ARM_FIELDS: tuple[ArmField, ...] = (
    ArmField("pulls", "pulls", int),
    ArmField("rewards", "rewards", int),
    ArmField("units", "reward_units", int, public=False),
    ArmField("sq", "reward_sq", float, public=False),
    ArmField("defaulted", "defaulted", int),
    ArmField("dropped", "dropped", int),
    ArmField("withdrawn", "withdrawn", int),
    ArmField("calls", "calls", int),
    ArmField("errors", "errors", int),
    ArmField("rejections", "input_rejections", int),
    ArmField("dup", "duplicates", int),
    ArmField("late", "late", int),
    ArmField("psum", "expected_pulls", float, public=False),
    ArmField("ipw", "ipw_sum", float, public=False),
    # sticky assignment: the unit is the unit of analysis
    ArmField("ucount", "units", int),
    ArmField("upsum", "expected_units", float, public=False),
    ArmField("urew", "rewarded_units", int, public=False),
    ArmField("umean", "unit_mean_sum", float, public=False),
    ArmField("umean2", "unit_mean_sq", float, public=False),
    # shadow arms: agreement with the served answer
    ArmField("cmp", "shadow_compared", int, public=False),
    ArmField("agree", "shadow_agreed", int, public=False),
    ArmField("ncmp", "shadow_numeric", int, public=False),
    ArmField("absdiff", "shadow_abs_diff", float, public=False),
)
ARM_FIELD_BY_NAME = {f.field: f for f in ARM_FIELDS}


@dataclass
class ArmTotals:
    """Statistics of one arm (over all time, or within one time bucket).

    Decisions: ``pulls`` counts them; ``rewards`` counts applied rewards, default rewards
    and rewards given for failed model calls included (``defaulted`` are the defaults);
    ``dropped`` counts decisions settled without a reward; ``withdrawn`` those taken out
    of the reward statistics (a failed call under ``on_model_error: withdraw``, a client
    that went away, an answer that could not be sent). ``duplicates`` and ``late`` count
    rewards refused as duplicate or expired. ``expected_pulls`` sums over decisions the
    probability that the policy picks this arm (the sample-ratio check); ``ipw_sum``
    sums reward / propensity over rewarded decisions (the inverse-propensity-weighted
    mean).

    Units (sticky assignment by ``unit_id``): ``units`` assigned to the arm,
    ``expected_units`` the policy's probabilities summed over new units (the units'
    sample-ratio check), ``rewarded_units`` those with a reward, ``unit_mean_sum`` and
    ``unit_mean_sq`` the sum and sum of squares of their mean rewards (the tests run on
    unit means). Shadow arms: ``shadow_compared`` answers compared with the served one,
    ``shadow_agreed`` equal ones, ``shadow_numeric`` numeric comparisons and
    ``shadow_abs_diff`` the sum of their absolute differences.

    Model calls: ``calls`` counts them, ``errors`` those that raised or timed out,
    ``input_rejections`` those the model refused as bad input (an upstream 400/422: the
    client is told 422, the arm is not blamed, the decision is withdrawn), and
    ``latency`` is their histogram (bin -> count; bins of
    :mod:`bandit_serve.stats.histogram`). Fields are listed in :data:`ARM_FIELDS`.
    """

    pulls: int = 0
    rewards: int = 0
    reward_units: int = 0
    reward_sq: float = 0.0
    defaulted: int = 0
    dropped: int = 0
    withdrawn: int = 0
    calls: int = 0
    errors: int = 0
    input_rejections: int = 0
    duplicates: int = 0
    late: int = 0
    expected_pulls: float = 0.0
    ipw_sum: float = 0.0
    units: int = 0
    expected_units: float = 0.0
    rewarded_units: int = 0
    unit_mean_sum: float = 0.0
    unit_mean_sq: float = 0.0
    shadow_compared: int = 0
    shadow_agreed: int = 0
    shadow_numeric: int = 0
    shadow_abs_diff: float = 0.0
    latency: dict[int, int] = field(default_factory=dict)

    @classmethod
    def from_fields(cls, raw: Mapping[str, str]) -> ArmTotals:
        """From Redis-style ``{field: text}`` (unknown fields are ignored)."""
        t = cls()
        for name, value in raw.items():
            f = ARM_FIELD_BY_NAME.get(name)
            if f is not None:
                setattr(t, f.attr, f.type(value))
            elif name.startswith(HIST_PREFIX) and name[1:].isdigit():
                t.latency[int(name[1:])] = int(value)
        return t

    def minus(self, earlier: ArmTotals) -> ArmTotals:
        """What happened since ``earlier`` (a copy of these totals taken before)."""
        out = ArmTotals(
            **{f.attr: getattr(self, f.attr) - getattr(earlier, f.attr) for f in ARM_FIELDS}
        )
        out.latency = {
            b: n - earlier.latency.get(b, 0)
            for b, n in self.latency.items()
            if n - earlier.latency.get(b, 0)
        }
        return out

    @property
    def pending(self) -> int:
        """Decisions still waiting for a reward (in a bucket: the bucket's net change)."""
        return self.pulls - self.rewards - self.dropped - self.withdrawn

    @property
    def reward_sum(self) -> float:
        return self.reward_units / REWARD_SCALE

    @property
    def mean(self) -> float | None:
        return self.reward_sum / self.rewards if self.rewards else None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.calls if self.calls else None

    @property
    def rejection_rate(self) -> float | None:
        return self.input_rejections / self.calls if self.calls else None

    def public(self) -> dict[str, Any]:
        """The counters the experiment view shows, and the derived sums."""
        out: dict[str, Any] = {f.attr: getattr(self, f.attr) for f in ARM_FIELDS if f.public}
        out.update(
            reward_sum=self.reward_sum,
            mean=self.mean,
            pending=self.pending,
            error_rate=self.error_rate,
            rejection_rate=self.rejection_rate,
        )
        return out


@dataclass(frozen=True)
class Bucket:
    """Per-arm statistics of one time bucket ``[start, start + width)``.

    Pulls and model calls land in the bucket of the decision time; rewards in the bucket
    of the time the reward was applied.
    """

    start: int
    arms: dict[str, ArmTotals] = field(default_factory=dict)


@dataclass(frozen=True)
class SettleReport:
    """Decisions settled by one sweep."""

    defaulted: int = 0
    dropped: int = 0

    def __add__(self, other: SettleReport) -> SettleReport:
        return SettleReport(self.defaulted + other.defaulted, self.dropped + other.dropped)


@dataclass(frozen=True)
class Control:
    """An experiment's control state, stored as a small string map.

    ``version`` counts changes (a transition must name the version it changes);
    ``epoch`` is the statistics' epoch. Arm statuses are ``status:<arm>`` (absent =
    active), restore times ``restored:<arm>``; the safety plane keeps further fields
    (alerts, violation counters, the canary's step) under its own prefixes.
    """

    fields: Mapping[str, str] = field(default_factory=dict)

    @property
    def version(self) -> int:
        return int(self.fields.get("version", "0"))

    @property
    def epoch(self) -> int:
        return int(self.fields.get("epoch", "0"))

    @property
    def state(self) -> ExperimentState:
        return ExperimentState(self.fields.get("state", ExperimentState.RUNNING.value))

    def status(self, arm: str) -> ArmStatus:
        return ArmStatus(self.fields.get(f"status:{arm}", ArmStatus.ACTIVE.value))

    def restored_at(self, arm: str) -> float | None:
        t = self.fields.get(f"restored:{arm}")
        return None if t is None else float(t)

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.fields.get(key, default)

    def with_fields(self, **changes: str | None) -> Control:
        """A copy with fields set (None deletes). Keys with ``:`` go through
        :meth:`with_items`."""
        return self.with_items(changes)

    def with_items(self, changes: Mapping[str, str | None]) -> Control:
        out = dict(self.fields)
        for k, v in changes.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = v
        return Control(out)


@dataclass(frozen=True)
class AuditEvent:
    """One entry of an experiment's audit log.

    ``kind``: what happened (``rollback``, ``restore``, ``promote``, ``pause``, ``resume``,
    ``reset``, ``guardrail_alert``, ``config_changed``, ...); ``actor``: who did it
    (``guardrail``, ``schedule``, ``config``, or an operator's key name); ``reason``: why,
    in words (a guardrail names the rule and the values that broke it); ``details``:
    the same as data. ``id`` and ``time`` are set by the store when it appends.
    """

    kind: str
    actor: str
    reason: str = ""
    arm: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    id: str = ""
    time: float = 0.0

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": self.time,
            "kind": self.kind,
            "arm": self.arm,
            "actor": self.actor,
            "reason": self.reason,
            "details": dict(self.details),
        }


@dataclass(frozen=True)
class Snapshot:
    """One consistent read of an experiment: control state, totals of the current epoch,
    and for every restored arm the totals of every arm at its restore (``since``)."""

    control: Control
    totals: dict[str, ArmTotals]
    since: dict[str, dict[str, ArmTotals]] = field(default_factory=dict)

    def since_restore(self, restored: str, arm: str) -> ArmTotals:
        """``arm``'s statistics since ``restored`` was last restored (all of the epoch
        when it never was)."""
        now = self.totals.get(arm, ArmTotals())
        base = self.since.get(restored, {}).get(arm)
        return now if base is None else now.minus(base)


class Store(ABC):
    """Experiment state. Every method is atomic; errors of the backend raise StoreError.

    Times come from ``clock`` (seconds since the epoch): all router replicas must keep
    synchronised clocks (NTP), since deadlines are compared with the caller's time.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or time.time

    # -- decisions and rewards -----------------------------------------------------------

    @abstractmethod
    async def log_decisions(
        self,
        exp: ExperimentSettings,
        decisions: Sequence[LoggedDecision],
        expected: Mapping[str, float] | None = None,
    ) -> list[DecisionRecord]:
        """Log decisions with their model calls' outcomes (event ids chosen by the caller).

        Each counts as a pull and, with ``latency_bin``, a model call of its arm. A
        decision whose call succeeded waits for its reward until its deadline; one whose
        call failed gets ``exp.error_reward`` at once (``on_model_error: low``) or is
        withdrawn, and counts as an error; one whose client went away is withdrawn (its
        call's outcome still counts). ``expected`` is the policy's probability of each arm
        summed over these decisions (``expected_pulls``).
        """

    @abstractmethod
    async def apply_rewards(
        self, exp: ExperimentSettings, rewards: Sequence[tuple[str, float]]
    ) -> list[RewardOutcome]:
        """Apply ``(event_id, reward)`` pairs in order, each exactly once, atomically."""

    @abstractmethod
    async def withdraw_decisions(self, exp: ExperimentSettings, event_ids: Sequence[str]) -> int:
        """Take decisions that still wait for a reward out of the reward statistics (no
        client holds their id: the answer could not be sent). Returns how many."""

    @abstractmethod
    async def settle_expired(self, exp: ExperimentSettings, limit: int = 1000) -> SettleReport:
        """Give every decision past its deadline the default reward (or drop it).

        Safe to run from many workers at once: each decision is settled by exactly one.
        """

    # -- reading ---------------------------------------------------------------------------

    @abstractmethod
    async def read(self, experiment: str) -> Snapshot:
        """Control state, totals and restore marks, in one round trip."""

    @abstractmethod
    async def buckets(self, exp: ExperimentSettings, start: float, end: float) -> list[Bucket]:
        """Time buckets overlapping ``[start, end]`` that still exist, oldest first."""

    # -- control ---------------------------------------------------------------------------

    @abstractmethod
    async def transition(
        self,
        exp: ExperimentSettings,
        expected_version: int,
        new: Control,
        events: Sequence[AuditEvent] = (),
        *,
        mark_restore: str | None = None,
        new_epoch: bool = False,
    ) -> list[AuditEvent] | None:
        """Replace the control state if its version is still ``expected_version``.

        On success the version becomes ``expected_version + 1``, ``events`` are appended
        to the audit log, and it returns them as stored (with ids and times); otherwise
        nothing changes and it returns None (read again and decide again).
        ``mark_restore``: remember every arm's current totals as ``since`` of that arm.
        ``new_epoch``: move to a new epoch (statistics from zero; the old epoch's data
        expires after its retention).
        """

    @abstractmethod
    async def events(
        self, experiment: str, since: str | None = None, limit: int = 100
    ) -> list[AuditEvent]:
        """Audit events after the event id ``since`` (exclusive), oldest first."""

    @abstractmethod
    async def check(self) -> None:
        """Raise StoreError unless the backend answers (health checks)."""

    # -- assignment, shadow, quotas, signing ---------------------------------------------

    @abstractmethod
    async def assignments(
        self, exp: ExperimentSettings, units: Sequence[str]
    ) -> dict[str, tuple[str, float]]:
        """The sticky ``(arm, propensity)`` of each unit that has one, in one round trip.
        Assignments are written with the decision (:class:`LoggedDecision` ``assign``) and
        last ``exp.sticky_seconds`` from the first."""

    @abstractmethod
    async def log_shadow(self, exp: ExperimentSettings, calls: Sequence[ShadowCall]) -> None:
        """Count mirrored calls of shadow arms (stats under ``shadow/<name>``)."""

    @abstractmethod
    async def take_token(self, bucket: str, rate: float, burst: int) -> float | None:
        """Spend a token of a rate limit shared by every replica: None when one was
        there, else the seconds until one will be."""

    @abstractmethod
    async def signing_keys(self, candidate: str) -> dict[str, str]:
        """Event-id signing keys shared by every replica (``{key id: secret}``): the
        first caller's ``candidate`` becomes key ``k1`` when none exists yet."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    # -- conveniences ----------------------------------------------------------------

    async def snapshot(self, experiment: str) -> dict[str, ArmTotals]:
        """Totals of every arm that has any (in the current epoch)."""
        return (await self.read(experiment)).totals

    async def control(self, experiment: str) -> Control:
        return (await self.read(experiment)).control

    async def record_decisions(
        self,
        exp: ExperimentSettings,
        arms: Sequence[str],
        propensities: Sequence[float],
        expected: Mapping[str, float] | None = None,
    ) -> list[DecisionRecord]:
        """Log decisions whose model calls are not timed here (each waits for a reward)."""
        return await self.log_decisions(
            exp,
            [
                LoggedDecision(new_event_id(), a, float(p))
                for a, p in zip(arms, propensities, strict=True)
            ],
            expected,
        )

    async def record_decision(
        self,
        exp: ExperimentSettings,
        arm: str,
        propensity: float,
        expected: Mapping[str, float] | None = None,
    ) -> DecisionRecord:
        return (await self.record_decisions(exp, [arm], [propensity], expected))[0]

    async def apply_reward(
        self, exp: ExperimentSettings, event_id: str, reward: float
    ) -> RewardOutcome:
        return (await self.apply_rewards(exp, [(event_id, reward)]))[0]

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
