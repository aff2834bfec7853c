"""One contract, run unchanged against the in-memory store, a real Redis server and a
3-master, 3-replica Redis Cluster."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator

import pytest

from bandit_serve.store import (
    REWARD_SCALE,
    ExperimentSettings,
    MemoryStore,
    RedisStore,
    RewardOutcome,
    SettleReport,
    Store,
)
from tests.conftest import ManualClock, delete_experiment_keys

A, D, U, E, INV = (
    RewardOutcome.APPLIED,
    RewardOutcome.DUPLICATE,
    RewardOutcome.UNKNOWN,
    RewardOutcome.EXPIRED,
    RewardOutcome.INVALID,
)


@pytest.fixture(params=["memory", "redis", "cluster"])
async def store(
    request: pytest.FixtureRequest, clock: ManualClock, exp_name: str
) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore(clock=clock)
        return
    if request.param == "cluster":  # 3 masters, 3 replicas (tests/conftest.py)
        url = request.getfixturevalue("redis_cluster").url
    else:
        url = request.getfixturevalue("redis_url")
    s = RedisStore.from_url(url, clock=clock)
    yield s
    await s.close()
    delete_experiment_keys(url, exp_name)


@pytest.fixture
def exp(exp_name: str) -> ExperimentSettings:
    return ExperimentSettings(
        exp_name, low=-1.0, high=5.0, wait_seconds=60, default_reward=0.25, bucket_seconds=60
    )


async def test_record_gives_unique_128_bit_ids_and_deadlines(
    store: Store, exp: ExperimentSettings, clock: ManualClock
) -> None:
    recs = await store.record_decisions(exp, ["a", "b", "a"], [0.2, 0.7, 0.2])
    assert len({r.event_id for r in recs}) == 3
    assert all(len(r.event_id) == 32 and int(r.event_id, 16) >= 0 for r in recs)
    assert [r.arm for r in recs] == ["a", "b", "a"]
    assert recs[0].decided_at == clock.now and recs[0].deadline == clock.now + 60
    snap = await store.snapshot(exp.name)
    assert (snap["a"].pulls, snap["a"].pending, snap["b"].pulls) == (2, 2, 1)
    assert snap["a"].rewards == 0 and snap["a"].reward_units == 0


async def test_reward_applies_once_to_the_stored_arm(store: Store, exp: ExperimentSettings) -> None:
    a, _ = await store.record_decisions(exp, ["a", "b"], [0.5, 0.5])
    assert await store.apply_reward(exp, a.event_id, 1.5) == A
    assert await store.apply_reward(exp, a.event_id, 1.5) == D
    assert await store.apply_reward(exp, a.event_id, 4.0) == D
    snap = await store.snapshot(exp.name)
    assert snap["a"].rewards == 1 and snap["a"].reward_sum == 1.5 and snap["a"].pending == 0
    assert snap["a"].reward_sq == pytest.approx(2.25)
    assert snap["b"].rewards == 0 and snap["b"].pending == 1


async def test_unknown_invalid_outcomes_change_nothing(
    store: Store, exp: ExperimentSettings
) -> None:
    (a,) = await store.record_decisions(exp, ["a"], [1.0])
    before = await store.snapshot(exp.name)
    outcomes = await store.apply_rewards(
        exp,
        [
            ("0" * 32, 1.0),
            ("not-an-id", 1.0),
            ("{other}:ev:x", 1.0),
            (a.event_id, math.nan),
            (a.event_id, math.inf),
            (a.event_id, -math.inf),
            (a.event_id, 5.000001),
            (a.event_id, -1.5),
        ],
    )
    assert outcomes == [U, U, U, INV, INV, INV, INV, INV]
    assert await store.snapshot(exp.name) == before
    assert await store.apply_reward(exp, a.event_id, 5.0) == A  # the bound itself is fine


async def test_batch_statuses_in_order_and_duplicates_within_a_batch(
    store: Store, exp: ExperimentSettings
) -> None:
    recs = await store.record_decisions(exp, ["a", "b", "b"], [0.3, 0.7, 0.7])
    outcomes = await store.apply_rewards(
        exp,
        [
            (recs[0].event_id, 1.0),
            (recs[1].event_id, 2.0),
            (recs[0].event_id, 1.0),
            ("f" * 32, 1.0),
            (recs[2].event_id, math.nan),
            (recs[2].event_id, 0.0),
        ],
    )
    assert outcomes == [A, A, D, U, INV, A]
    snap = await store.snapshot(exp.name)
    assert (snap["a"].rewards, snap["a"].reward_sum) == (1, 1.0)
    assert (snap["b"].rewards, snap["b"].reward_sum, snap["b"].pending) == (2, 2.0, 0)


async def test_reward_sums_are_exact_fixed_point(store: Store, exp: ExperimentSettings) -> None:
    recs = await store.record_decisions(exp, ["a"] * 10, [1.0] * 10)
    outcomes = await store.apply_rewards(exp, [(r.event_id, 0.1) for r in recs])
    assert outcomes == [A] * 10
    snap = await store.snapshot(exp.name)
    assert snap["a"].reward_units == 10 * 100_000  # 0.1 * 10, no float drift
    assert snap["a"].reward_units / REWARD_SCALE == 1.0


async def test_late_reward_is_expired_and_settle_applies_default_once(
    store: Store, exp: ExperimentSettings, clock: ManualClock
) -> None:
    a, b, c = await store.record_decisions(exp, ["a", "a", "b"], [0.5, 0.5, 0.5])
    assert await store.apply_reward(exp, c.event_id, 3.0) == A
    clock.advance(60)  # exactly at the deadline: still accepted
    assert await store.apply_reward(exp, a.event_id, 2.0) == A
    clock.advance(1)
    assert await store.apply_reward(exp, b.event_id, 2.0) == E  # late: nothing changes
    assert await store.settle_expired(exp) == SettleReport(defaulted=1)
    assert await store.settle_expired(exp) == SettleReport()  # nothing left to settle
    assert await store.apply_reward(exp, b.event_id, 2.0) == E
    assert await store.apply_reward(exp, a.event_id, 2.0) == D
    snap = await store.snapshot(exp.name)
    assert snap["a"].rewards == 2 and snap["a"].defaulted == 1 and snap["a"].pending == 0
    assert (snap["a"].late, snap["a"].duplicates) == (2, 1)
    assert snap["a"].reward_sum == 2.25
    assert snap["b"].rewards == 1 and snap["b"].defaulted == 0


async def test_settle_before_the_deadline_does_nothing(
    store: Store, exp: ExperimentSettings, clock: ManualClock
) -> None:
    await store.record_decisions(exp, ["a"], [1.0])
    clock.advance(59)
    assert await store.settle_expired(exp) == SettleReport()
    assert (await store.snapshot(exp.name))["a"].pending == 1


async def test_settle_can_drop_instead(store: Store, exp_name: str, clock: ManualClock) -> None:
    exp = ExperimentSettings(exp_name, wait_seconds=10, on_expiry="drop")
    recs = await store.record_decisions(exp, ["a", "a", "b"], [0.5, 0.5, 0.5])
    clock.advance(11)
    assert await store.settle_expired(exp) == SettleReport(dropped=3)
    assert await store.apply_reward(exp, recs[0].event_id, 1.0) == E
    snap = await store.snapshot(exp.name)
    assert (snap["a"].pulls, snap["a"].rewards, snap["a"].dropped, snap["a"].pending) == (
        2,
        0,
        2,
        0,
    )


async def test_expired_record_becomes_unknown_after_retention(
    store: Store, exp_name: str, clock: ManualClock
) -> None:
    """A decision record lives until deadline + retention; after that its event is unknown.

    Redis forgets the record by its own wall clock (PEXPIREAT at deadline + retention),
    the memory store by the store's clock; advancing only the manual clock expires the
    record in memory but not in Redis. So here the manual clock follows real time, and the
    test waits (about a second) for the retention to pass on both clocks.
    """
    exp = ExperimentSettings(exp_name, wait_seconds=0.1, retention_seconds=1.0)
    clock.now = time.time()
    (a,) = await store.record_decisions(exp, ["a"], [1.0])
    clock.advance(0.2)  # past the deadline, well within the retention
    assert await store.apply_reward(exp, a.event_id, 1.0) == E
    forgotten_at = a.deadline + exp.retention_seconds
    await asyncio.sleep(max(0.0, forgotten_at + 0.05 - time.time()))
    clock.now = max(time.time(), forgotten_at + 0.05)
    assert await store.apply_reward(exp, a.event_id, 1.0) == U
    assert (await store.snapshot(exp.name))["a"].late == 1  # the unknown one counted nothing


async def test_time_buckets_hold_the_same_statistics(
    store: Store, exp: ExperimentSettings, clock: ManualClock
) -> None:
    clock.now = (clock.now // 60) * 60 + 1  # start of a minute
    t0 = clock.now
    r1 = await store.record_decisions(exp, ["a", "b"], [0.5, 0.5])
    clock.advance(60)  # next bucket
    r2 = await store.record_decisions(exp, ["a"], [0.5])
    assert await store.apply_rewards(exp, [(r1[0].event_id, 1.0), (r2[0].event_id, 3.0)]) == [A, A]
    buckets = await store.buckets(exp, t0 - 120, clock.now + 120)
    assert [b.start for b in buckets] == [int(t0 - 1), int(t0 + 59)]
    first, second = buckets
    assert (first.arms["a"].pulls, first.arms["b"].pulls) == (1, 1)
    assert first.arms["a"].rewards == 0  # rewards land in the bucket of their arrival
    assert (second.arms["a"].pulls, second.arms["a"].rewards, second.arms["a"].reward_sum) == (
        1,
        2,
        4.0,
    )
    total = await store.snapshot(exp.name)
    assert total["a"].pulls == sum(b.arms["a"].pulls for b in buckets)
    assert total["a"].reward_units == sum(b.arms["a"].reward_units for b in buckets)


async def test_experiments_are_isolated(store: Store, exp: ExperimentSettings) -> None:
    (a,) = await store.record_decisions(exp, ["a"], [1.0])
    other = ExperimentSettings(exp.name + "-other", low=-1.0, high=5.0)
    assert await store.apply_reward(other, a.event_id, 1.0) == U
    assert await store.snapshot(other.name) == {}


async def test_withdrawn_decision_waits_for_nothing(
    store: Store, exp: ExperimentSettings, clock: ManualClock
) -> None:
    a, b = await store.record_decisions(exp, ["a", "a"], [0.5, 0.5])
    assert await store.apply_reward(exp, b.event_id, 1.0) == A
    assert await store.withdraw_decisions(exp, [a.event_id, a.event_id, b.event_id, "0" * 32]) == 1
    assert await store.withdraw_decisions(exp, [a.event_id]) == 0
    snap = await store.snapshot(exp.name)
    t = snap["a"]
    assert (t.pulls, t.rewards, t.withdrawn, t.errors, t.pending) == (2, 1, 1, 0, 0)
    assert await store.apply_reward(exp, a.event_id, 1.0) == E  # no client holds its id
    clock.advance(120)
    assert await store.settle_expired(exp) == SettleReport()  # nothing left to settle


async def test_expected_counts_and_inverse_propensity_sums(
    store: Store, exp: ExperimentSettings
) -> None:
    a = await store.record_decision(exp, "a", 0.25, {"a": 0.25, "b": 0.75})
    b = await store.record_decision(exp, "b", 0.75, {"a": 0.25, "b": 0.75})
    assert await store.apply_rewards(exp, [(a.event_id, 2.0), (b.event_id, 3.0)]) == [A, A]
    snap = await store.snapshot(exp.name)
    assert snap["a"].expected_pulls == pytest.approx(0.5)
    assert snap["b"].expected_pulls == pytest.approx(1.5)
    assert snap["a"].ipw_sum == pytest.approx(2.0 / 0.25)
    assert snap["b"].ipw_sum == pytest.approx(3.0 / 0.75)


def test_the_field_table_and_the_totals_name_the_same_counters() -> None:
    """ARM_FIELDS is the one table the Redis parser, the Lua prelude and the memory twin
    loop over: a counter added to ArmTotals only would be dropped silently."""
    import dataclasses

    from bandit_serve.store.base import ARM_FIELDS, ArmTotals

    declared = {f.name: f for f in dataclasses.fields(ArmTotals)}
    assert {f.attr for f in ARM_FIELDS} == set(declared) - {"latency"}
    assert len({f.field for f in ARM_FIELDS}) == len(ARM_FIELDS)  # one Redis name each
    for f in ARM_FIELDS:
        assert type(declared[f.attr].default) is f.type, f.attr
