"""The state store interface and the value types it speaks.

A store keeps, per experiment: one record per decision (until some time after its reward
deadline), the running totals of every arm, and the same totals in time buckets. Rewards
are applied exactly once: each call checks everything before its first write.

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
    "REWARD_SCALE",
    "ArmField",
    "ArmTotals",
    "Bucket",
    "DecisionRecord",
    "EventState",
    "ExperimentSettings",
    "RewardOutcome",
    "SettleReport",
    "Store",
    "new_event_id",
    "reward_units",
]

REWARD_SCALE = 1_000_000
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


@dataclass(frozen=True)
class ExperimentSettings:
    """What the store needs to know about an experiment."""

    name: str
    low: float = 0.0
    high: float = 1.0
    wait_seconds: float = 600.0
    on_expiry: Literal["default", "drop"] = "default"
    default_reward: float = 0.0
    retention_seconds: float = 86400.0
    bucket_seconds: int = 60
    bucket_retention_seconds: int = 86400

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


class EventState(enum.StrEnum):
    """The state of a logged decision. The values are the codes the Lua scripts store
    (their prelude is generated from this enum), and the memory store uses the same."""

    PENDING = "p"  # waiting for its reward
    REWARDED = "r"  # got its reward (posted)
    WITHDRAWN = "c"  # its model call failed: it waits for nothing and counts as an error
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
    ArmField("errors", "errors", int),
    ArmField("dup", "duplicates", int),
    ArmField("late", "late", int),
    ArmField("psum", "expected_pulls", float, public=False),
    ArmField("ipw", "ipw_sum", float, public=False),
)
ARM_FIELD_BY_NAME = {f.field: f for f in ARM_FIELDS}


@dataclass
class ArmTotals:
    """Statistics of one arm (over all time, or within one time bucket).

    ``pulls`` counts decisions; ``rewards`` counts applied rewards, default rewards
    included (``defaulted`` of them); ``dropped`` counts decisions settled without a
    reward; ``errors`` counts decisions whose model call failed (they wait for nothing);
    ``duplicates`` and ``late`` count rewards refused as duplicate or expired;
    ``expected_pulls`` sums over decisions the probability that the policy picks this
    arm (the sample-ratio check); ``ipw_sum`` sums reward / propensity over rewarded
    decisions (the inverse-propensity-weighted mean). Fields are listed in
    :data:`ARM_FIELDS`.
    """

    pulls: int = 0
    rewards: int = 0
    reward_units: int = 0
    reward_sq: float = 0.0
    defaulted: int = 0
    dropped: int = 0
    errors: int = 0
    duplicates: int = 0
    late: int = 0
    expected_pulls: float = 0.0
    ipw_sum: float = 0.0

    @classmethod
    def from_fields(cls, raw: Mapping[str, str]) -> ArmTotals:
        """From Redis-style ``{field: text}`` (unknown fields are ignored)."""
        t = cls()
        for name, value in raw.items():
            f = ARM_FIELD_BY_NAME.get(name)
            if f is not None:
                setattr(t, f.attr, f.type(value))
        return t

    @property
    def pending(self) -> int:
        """Decisions still waiting for a reward (in a bucket: the bucket's net change)."""
        return self.pulls - self.rewards - self.dropped - self.errors

    @property
    def reward_sum(self) -> float:
        return self.reward_units / REWARD_SCALE

    @property
    def mean(self) -> float | None:
        return self.reward_sum / self.rewards if self.rewards else None

    def public(self) -> dict[str, Any]:
        """The counters the experiment view shows, and the derived sums."""
        out: dict[str, Any] = {f.attr: getattr(self, f.attr) for f in ARM_FIELDS if f.public}
        out.update(reward_sum=self.reward_sum, mean=self.mean, pending=self.pending)
        return out


@dataclass(frozen=True)
class Bucket:
    """Per-arm statistics of one time bucket ``[start, start + width)``.

    Pulls land in the bucket of the decision time; rewards in the bucket of the time the
    reward was applied.
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


class Store(ABC):
    """Experiment state. Every method is atomic; errors of the backend raise StoreError.

    Times come from ``clock`` (seconds since the epoch): all router replicas must keep
    synchronised clocks (NTP), since deadlines are compared with the caller's time.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or time.time

    @abstractmethod
    async def record_decisions(
        self,
        exp: ExperimentSettings,
        arms: Sequence[str],
        propensities: Sequence[float],
        expected: Mapping[str, float] | None = None,
    ) -> list[DecisionRecord]:
        """Log one decision per arm given; each gets a new event id and reward deadline.

        ``expected`` is the policy's probability of each arm summed over these decisions;
        it accumulates per arm as ``expected_pulls`` (the sample-ratio check uses it).
        """

    @abstractmethod
    async def apply_rewards(
        self, exp: ExperimentSettings, rewards: Sequence[tuple[str, float]]
    ) -> list[RewardOutcome]:
        """Apply ``(event_id, reward)`` pairs in order, each exactly once, atomically."""

    @abstractmethod
    async def cancel_decisions(self, exp: ExperimentSettings, event_ids: Sequence[str]) -> int:
        """Withdraw decisions whose model call failed: each still waiting for a reward
        stops waiting and counts as an error of its arm. Returns how many were cancelled."""

    @abstractmethod
    async def settle_expired(self, exp: ExperimentSettings, limit: int = 1000) -> SettleReport:
        """Give every decision past its deadline the default reward (or drop it).

        Safe to run from many workers at once: each decision is settled by exactly one.
        """

    @abstractmethod
    async def snapshot(self, experiment: str) -> dict[str, ArmTotals]:
        """Totals of every arm that has any, in one round trip."""

    @abstractmethod
    async def buckets(self, exp: ExperimentSettings, start: float, end: float) -> list[Bucket]:
        """Time buckets overlapping ``[start, end]`` that still exist, oldest first."""

    @abstractmethod
    async def check(self) -> None:
        """Raise StoreError unless the backend answers (health checks)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    # -- conveniences ----------------------------------------------------------------

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
