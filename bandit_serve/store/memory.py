"""In-memory store: dicts behind one asyncio lock. For tests and single-process use."""

from __future__ import annotations

import asyncio
import copy
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from bandit_serve.store.base import (
    ArmTotals,
    AuditEvent,
    Bucket,
    Clock,
    Control,
    DecisionRecord,
    EventState,
    ExperimentSettings,
    LoggedDecision,
    RewardOutcome,
    SettleReport,
    ShadowCall,
    Snapshot,
    Store,
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
    unit: str | None = None


@dataclass
class _Unit:
    arm: str
    propensity: float
    expires_at: float
    n: int = 0
    s: float = 0.0


@dataclass
class _Epoch:
    events: dict[str, _Event] = field(default_factory=dict)
    totals: defaultdict[str, ArmTotals] = field(default_factory=lambda: defaultdict(ArmTotals))
    # start -> (expires, arms)
    buckets: dict[int, tuple[float, defaultdict[str, ArmTotals]]] = field(default_factory=dict)
    since: dict[str, dict[str, ArmTotals]] = field(default_factory=dict)
    units: dict[str, _Unit] = field(default_factory=dict)


@dataclass
class _Experiment:
    control: Control = field(default_factory=Control)
    epochs: dict[int, _Epoch] = field(default_factory=dict)
    log: list[AuditEvent] = field(default_factory=list)
    last_id: tuple[int, int] = (0, 0)

    @property
    def data(self) -> _Epoch:
        return self.epochs.setdefault(self.control.epoch, _Epoch())


def _add_reward(t: ArmTotals, reward: float, propensity: float) -> None:
    """Count one reward (the Lua scripts' ``Deltas:reward``)."""
    t.rewards += 1
    t.reward_units += reward_units(reward)
    t.reward_sq += reward * reward
    if propensity > 0:
        t.ipw_sum += reward / propensity


def _unit_reward(e: _Epoch, unit: str | None, totals: list[ArmTotals], r: float) -> None:
    """Move the unit's mean reward (the Lua scripts' ``Units:reward``)."""
    u = e.units.get(unit) if unit is not None else None
    if u is None:
        return
    m0 = u.s / u.n if u.n else 0.0
    first = u.n == 0
    u.n += 1
    u.s += r
    m1 = u.s / u.n
    for t in totals:
        t.rewarded_units += int(first)
        t.unit_mean_sum += m1 - m0
        t.unit_mean_sq += m1 * m1 - m0 * m0


def _copy(t: ArmTotals) -> ArmTotals:
    return replace(t, latency=dict(t.latency))


class MemoryStore(Store):
    """The reference implementation of :class:`Store` semantics, in one process.
    It has no replicas: an experiment's ``durability`` is ignored."""

    def __init__(self, clock: Clock | None = None) -> None:
        super().__init__(clock)
        self._lock = asyncio.Lock()
        self._exps: dict[str, _Experiment] = {}
        self._quotas: dict[str, tuple[float, float]] = {}
        self._signing: dict[str, str] = {}

    async def check(self) -> None:
        """Always healthy: it lives in this process."""

    def _exp(self, name: str) -> _Experiment:
        return self._exps.setdefault(name, _Experiment())

    def _bucket(self, e: _Epoch, exp: ExperimentSettings, now: float) -> dict[str, ArmTotals]:
        start = exp.bucket_start(now)
        expires = start + exp.bucket_seconds + exp.bucket_retention_seconds
        if start not in e.buckets:
            e.buckets[start] = (expires, defaultdict(ArmTotals))
        return e.buckets[start][1]

    def _both(
        self, e: _Epoch, exp: ExperimentSettings, now: float, arm: str
    ) -> tuple[ArmTotals, ArmTotals]:
        """The arm's running totals and its entry in the current time bucket."""
        return e.totals[arm], self._bucket(e, exp, now)[arm]

    def _live(self, e: _Epoch, event_id: str, now: float) -> _Event | None:
        ev = e.events.get(event_id)
        if ev is not None and now >= ev.expires_at:
            del e.events[event_id]
            return None
        return ev

    # -- decisions and rewards ---------------------------------------------------------

    async def log_decisions(
        self,
        exp: ExperimentSettings,
        decisions: Sequence[LoggedDecision],
        expected: Mapping[str, float] | None = None,
    ) -> list[DecisionRecord]:
        async with self._lock:
            now = self.clock()
            deadline = now + exp.wait_seconds
            e = self._exp(exp.name).data
            fresh: list[LoggedDecision] = []
            for d in decisions:  # the first of each event id, in order
                if d.event_id not in e.events and all(d.event_id != f.event_id for f in fresh):
                    fresh.append(d)
            if fresh:
                for arm, x in (expected or {}).items():
                    for t in self._both(e, exp, now, arm):
                        t.expected_pulls += x
            for d in fresh:
                state = EventState.PENDING
                if d.unit is not None and d.assign:
                    u = self._unit(e, d.unit, now)
                    if u is None or d.assign == 2:
                        if u is None:
                            for t in self._both(e, exp, now, d.arm):
                                t.units += 1
                            for arm, x in (d.unit_expected or {}).items():
                                for t in self._both(e, exp, now, arm):
                                    t.expected_units += x
                        e.units[d.unit] = _Unit(
                            d.arm,
                            d.propensity,
                            now + exp.sticky_seconds,
                            *((u.n, u.s) if u is not None else (0, 0.0)),
                        )
                for t in self._both(e, exp, now, d.arm):
                    t.pulls += 1
                    if d.latency_bin is not None:
                        t.calls += 1
                        t.latency[d.latency_bin] = t.latency.get(d.latency_bin, 0) + 1
                    if d.failed:
                        t.errors += 1
                    if d.rejected:
                        t.input_rejections += 1
                    if d.client_gone or d.rejected or (d.failed and exp.on_model_error != "low"):
                        state = EventState.WITHDRAWN
                        t.withdrawn += 1
                    elif d.failed:
                        state = EventState.REWARDED
                        _add_reward(t, exp.error_reward, d.propensity)
                if state is EventState.REWARDED:
                    _unit_reward(e, d.unit, list(self._both(e, exp, now, d.arm)), exp.error_reward)
                e.events[d.event_id] = _Event(
                    d.arm,
                    d.propensity,
                    deadline,
                    deadline + exp.retention_seconds,
                    state,
                    d.unit,
                )
            return [
                DecisionRecord(d.event_id, d.arm, d.propensity, now, deadline) for d in decisions
            ]

    async def apply_rewards(
        self, exp: ExperimentSettings, rewards: Sequence[tuple[str, float]]
    ) -> list[RewardOutcome]:
        async with self._lock:
            now = self.clock()
            e = self._exp(exp.name).data
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
                    both = list(self._both(e, exp, now, ev.arm))
                    for t in both:
                        _add_reward(t, reward, ev.propensity)
                    _unit_reward(e, ev.unit, both, reward)
                    out.append(RewardOutcome.APPLIED)
            return out

    async def withdraw_decisions(self, exp: ExperimentSettings, event_ids: Sequence[str]) -> int:
        async with self._lock:
            now = self.clock()
            e = self._exp(exp.name).data
            n = 0
            for eid in dict.fromkeys(event_ids):
                ev = self._live(e, eid, now)
                if ev is not None and ev.state is EventState.PENDING:
                    ev.state = EventState.WITHDRAWN
                    for t in self._both(e, exp, now, ev.arm):
                        t.withdrawn += 1
                    n += 1
            return n

    async def settle_expired(self, exp: ExperimentSettings, limit: int = 1000) -> SettleReport:
        async with self._lock:
            now = self.clock()
            e = self._exp(exp.name).data
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
                    both = list(self._both(e, exp, now, ev.arm))
                    for t in both:
                        _add_reward(t, exp.default_reward, ev.propensity)
                        t.defaulted += 1
                    _unit_reward(e, ev.unit, both, exp.default_reward)
                    report += SettleReport(defaulted=1)
            for eid in [k for k, ev in e.events.items() if now >= ev.expires_at]:
                del e.events[eid]
            return report

    def _unit(self, e: _Epoch, unit: str, now: float) -> _Unit | None:
        u = e.units.get(unit)
        if u is not None and now >= u.expires_at:
            del e.units[unit]
            return None
        return u

    # -- assignment, shadow, quotas, signing --------------------------------------------

    async def assignments(
        self, exp: ExperimentSettings, units: Sequence[str]
    ) -> dict[str, tuple[str, float]]:
        async with self._lock:
            now = self.clock()
            e = self._exp(exp.name).data
            out = {}
            for unit in units:
                u = self._unit(e, unit, now)
                if u is not None:
                    out[unit] = (u.arm, u.propensity)
            return out

    async def log_shadow(self, exp: ExperimentSettings, calls: Sequence[ShadowCall]) -> None:
        async with self._lock:
            now = self.clock()
            e = self._exp(exp.name).data
            for c in calls:
                for t in self._both(e, exp, now, f"shadow/{c.arm}"):
                    t.calls += 1
                    t.latency[c.latency_bin] = t.latency.get(c.latency_bin, 0) + 1
                    t.errors += int(c.failed)
                    if c.equal is not None:
                        t.shadow_compared += 1
                        t.shadow_agreed += int(c.equal)
                    if c.abs_diff is not None:
                        t.shadow_numeric += 1
                        t.shadow_abs_diff += c.abs_diff

    async def take_token(self, bucket: str, rate: float, burst: int) -> float | None:
        async with self._lock:
            now = self.clock()
            tokens, then = self._quotas.get(bucket, (float(burst), now))
            tokens = min(float(burst), tokens + max(0.0, now - then) * rate)
            if tokens >= 1:
                self._quotas[bucket] = (tokens - 1, now)
                return None
            self._quotas[bucket] = (tokens, now)
            return (1 - tokens) / rate

    async def signing_keys(self, candidate: str) -> dict[str, str]:
        async with self._lock:
            self._signing.setdefault("k1", candidate)
            return dict(self._signing)

    # -- reading -----------------------------------------------------------------------

    async def read(self, experiment: str) -> Snapshot:
        async with self._lock:
            x = self._exp(experiment)
            e = x.data
            return Snapshot(
                x.control,
                {a: _copy(t) for a, t in e.totals.items()},
                copy.deepcopy(e.since),
            )

    async def buckets(self, exp: ExperimentSettings, start: float, end: float) -> list[Bucket]:
        async with self._lock:
            now = self.clock()
            e = self._exp(exp.name).data
            first, last = exp.bucket_start(start), exp.bucket_start(end)
            return [
                Bucket(s, {a: _copy(t) for a, t in arms.items()})
                for s, (expires, arms) in sorted(e.buckets.items())
                if first <= s <= last and now < expires
            ]

    # -- control -----------------------------------------------------------------------

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
        async with self._lock:
            x = self._exp(exp.name)
            if x.control.version != expected_version:
                return None
            epoch = x.control.epoch + (1 if new_epoch else 0)
            fields = {k: v for k, v in new.fields.items() if k not in ("version", "epoch")}
            fields.update(version=str(expected_version + 1), epoch=str(epoch))
            old = x.data
            x.control = Control(fields)
            if new_epoch:
                x.epochs = {epoch: _Epoch()}
            elif mark_restore is not None:
                old.since[mark_restore] = {a: _copy(t) for a, t in old.totals.items()}
            now = self.clock()
            stored = []
            for ev in events:
                ms = int(now * 1000)
                seq = x.last_id[1] + 1 if ms <= x.last_id[0] else 0
                ms = max(ms, x.last_id[0])
                x.last_id = (ms, seq)
                stored.append(replace(ev, id=f"{ms}-{seq}", time=now))
            x.log += stored
            del x.log[: max(0, len(x.log) - exp.events_max)]
            return stored

    async def events(
        self, experiment: str, since: str | None = None, limit: int = 100
    ) -> list[AuditEvent]:
        async with self._lock:
            log = self._exp(experiment).log
            if since is not None:
                key = tuple(int(p) for p in since.split("-"))
                log = [e for e in log if tuple(int(p) for p in e.id.split("-")) > key]
            return list(log[:limit])
