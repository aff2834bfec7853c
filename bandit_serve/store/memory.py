"""In-memory store: dicts behind one asyncio lock. For tests and single-process use."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from bandit_serve.store.base import (
    ArmTotals,
    Bucket,
    Clock,
    DecisionRecord,
    EventState,
    ExperimentSettings,
    RewardOutcome,
    SettleReport,
    Store,
    new_event_id,
    reward_units,
)

__all__ = ["MemoryStore"]


@dataclass
class _Event:
    arm: str
    propensity: float
    deadline: float
    expires_at: float
    state: EventState = EventState.PENDING


@dataclass
class _Experiment:
    events: dict[str, _Event]
    totals: defaultdict[str, ArmTotals]
    buckets: dict[int, tuple[float, defaultdict[str, ArmTotals]]]  # start -> (expires, arms)


def _add_reward(t: ArmTotals, reward: float, propensity: float) -> None:
    """Count one reward (the Lua scripts' ``Deltas:reward`` plus the IPW sum)."""
    t.rewards += 1
    t.reward_units += reward_units(reward)
    t.reward_sq += reward * reward
    if propensity > 0:
        t.ipw_sum += reward / propensity


class MemoryStore(Store):
    """The reference implementation of :class:`Store` semantics, in one process."""

    def __init__(self, clock: Clock | None = None) -> None:
        super().__init__(clock)
        self._lock = asyncio.Lock()
        self._exps: dict[str, _Experiment] = {}

    async def check(self) -> None:
        """Always healthy: it lives in this process."""

    def _exp(self, name: str) -> _Experiment:
        if name not in self._exps:
            self._exps[name] = _Experiment({}, defaultdict(ArmTotals), {})
        return self._exps[name]

    def _bucket(self, e: _Experiment, exp: ExperimentSettings, now: float) -> dict[str, ArmTotals]:
        start = exp.bucket_start(now)
        expires = start + exp.bucket_seconds + exp.bucket_retention_seconds
        if start not in e.buckets:
            e.buckets[start] = (expires, defaultdict(ArmTotals))
        return e.buckets[start][1]

    def _both(
        self, e: _Experiment, exp: ExperimentSettings, now: float, arm: str
    ) -> tuple[ArmTotals, ArmTotals]:
        """The arm's running totals and its entry in the current time bucket."""
        return e.totals[arm], self._bucket(e, exp, now)[arm]

    def _live(self, e: _Experiment, event_id: str, now: float) -> _Event | None:
        ev = e.events.get(event_id)
        if ev is not None and now >= ev.expires_at:
            del e.events[event_id]
            return None
        return ev

    async def record_decisions(
        self,
        exp: ExperimentSettings,
        arms: Sequence[str],
        propensities: Sequence[float],
        expected: Mapping[str, float] | None = None,
    ) -> list[DecisionRecord]:
        async with self._lock:
            now = self.clock()
            deadline = now + exp.wait_seconds
            e = self._exp(exp.name)
            for arm, x in (expected or {}).items():
                for t in self._both(e, exp, now, arm):
                    t.expected_pulls += x
            out = []
            for arm, p in zip(arms, propensities, strict=True):
                eid = new_event_id()
                e.events[eid] = _Event(arm, p, deadline, deadline + exp.retention_seconds)
                for t in self._both(e, exp, now, arm):
                    t.pulls += 1
                out.append(DecisionRecord(eid, arm, p, now, deadline))
            return out

    async def apply_rewards(
        self, exp: ExperimentSettings, rewards: Sequence[tuple[str, float]]
    ) -> list[RewardOutcome]:
        async with self._lock:
            now = self.clock()
            e = self._exp(exp.name)
            out = []
            for event_id, reward in rewards:
                if not exp.accepts(reward):
                    out.append(RewardOutcome.INVALID)
                    continue
                ev = self._live(e, event_id, now)
                if ev is None:
                    out.append(RewardOutcome.UNKNOWN)
                elif ev.state is EventState.REWARDED:
                    out.append(RewardOutcome.DUPLICATE)
                    for t in self._both(e, exp, now, ev.arm):
                        t.duplicates += 1
                elif ev.state is not EventState.PENDING or now > ev.deadline:
                    out.append(RewardOutcome.EXPIRED)
                    for t in self._both(e, exp, now, ev.arm):
                        t.late += 1
                else:
                    ev.state = EventState.REWARDED
                    for t in self._both(e, exp, now, ev.arm):
                        _add_reward(t, reward, ev.propensity)
                    out.append(RewardOutcome.APPLIED)
            return out

    async def cancel_decisions(self, exp: ExperimentSettings, event_ids: Sequence[str]) -> int:
        async with self._lock:
            now = self.clock()
            e = self._exp(exp.name)
            n = 0
            for eid in dict.fromkeys(event_ids):
                ev = self._live(e, eid, now)
                if ev is not None and ev.state is EventState.PENDING:
                    ev.state = EventState.WITHDRAWN
                    for t in self._both(e, exp, now, ev.arm):
                        t.errors += 1
                    n += 1
            return n

    async def settle_expired(self, exp: ExperimentSettings, limit: int = 1000) -> SettleReport:
        async with self._lock:
            now = self.clock()
            e = self._exp(exp.name)
            report = SettleReport()
            due = [
                eid
                for eid, ev in e.events.items()
                if ev.state is EventState.PENDING and ev.deadline < now
            ]
            for eid in due:
                ev = e.events[eid]
                if exp.on_expiry == "drop":
                    ev.state = EventState.DROPPED
                    for t in self._both(e, exp, now, ev.arm):
                        t.dropped += 1
                    report += SettleReport(dropped=1)
                else:
                    ev.state = EventState.DEFAULTED
                    for t in self._both(e, exp, now, ev.arm):
                        _add_reward(t, exp.default_reward, ev.propensity)
                        t.defaulted += 1
                    report += SettleReport(defaulted=1)
            for eid in [k for k, ev in e.events.items() if now >= ev.expires_at]:
                del e.events[eid]
            return report

    async def snapshot(self, experiment: str) -> dict[str, ArmTotals]:
        async with self._lock:
            return {a: replace(t) for a, t in self._exp(experiment).totals.items()}

    async def buckets(self, exp: ExperimentSettings, start: float, end: float) -> list[Bucket]:
        async with self._lock:
            now = self.clock()
            e = self._exp(exp.name)
            first, last = exp.bucket_start(start), exp.bucket_start(end)
            return [
                Bucket(s, {a: replace(t) for a, t in arms.items()})
                for s, (expires, arms) in sorted(e.buckets.items())
                if first <= s <= last and now < expires
            ]
