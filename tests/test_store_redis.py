"""Redis-only behaviour: concurrency, concurrent settlers, outages, scripts, key layout."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any, cast

import pytest
import redis
from redis.crc import key_slot

from bandit_serve.errors import StoreError
from bandit_serve.store import (
    AuditEvent,
    Control,
    ExperimentSettings,
    RedisStore,
    RewardOutcome,
    ShadowCall,
    reward_units,
)
from tests.conftest import ManualClock, RedisServer


async def test_50_tasks_posting_each_of_1000_events_3_times_count_each_once(
    redis_store: RedisStore, exp_name: str
) -> None:
    exp = ExperimentSettings(exp_name, low=0.0, high=10.0, wait_seconds=600)
    arms = ["a", "b", "c"]
    recs = await redis_store.record_decisions(
        exp, [arms[i % 3] for i in range(1000)], [1 / 3] * 1000
    )
    rng = random.Random(11)
    reward_of = {r.event_id: rng.randrange(0, 10_001) / 1000 for r in recs}  # 0.000 .. 10.000
    posts = [r.event_id for r in recs for _ in range(3)]
    rng.shuffle(posts)  # copies of one id land in different tasks, often at the same time
    queues = [posts[i::50] for i in range(50)]
    outcomes: Counter[RewardOutcome] = Counter()
    applied_ids: list[str] = []

    async def worker(ids: list[str]) -> None:
        i = 0
        while i < len(ids):
            chunk = ids[i : i + rng.choice([1, 1, 1, 5])]  # single posts and small batches
            i += len(chunk)
            res = await redis_store.apply_rewards(exp, [(e, reward_of[e]) for e in chunk])
            outcomes.update(res)
            applied_ids.extend(
                e for e, o in zip(chunk, res, strict=True) if o is RewardOutcome.APPLIED
            )

    await asyncio.gather(*(worker(q) for q in queues))
    assert outcomes == {RewardOutcome.APPLIED: 1000, RewardOutcome.DUPLICATE: 2000}
    assert sorted(applied_ids) == sorted(reward_of)
    snap = await redis_store.snapshot(exp_name)
    for k, arm in enumerate(arms):
        mine = [reward_of[r.event_id] for r in recs[k::3]]
        assert snap[arm].rewards == len(mine)
        assert snap[arm].reward_units == sum(reward_units(x) for x in mine)
        assert snap[arm].pending == 0
        assert snap[arm].reward_sq == pytest.approx(sum(x * x for x in mine), rel=1e-12)


async def test_concurrent_settlers_and_late_rewards_do_not_double_apply(
    redis_url: str, redis_store: RedisStore, exp_name: str, clock: ManualClock
) -> None:
    exp = ExperimentSettings(exp_name, wait_seconds=30, default_reward=0.0)
    recs = await redis_store.record_decisions(exp, ["a", "b"] * 1500, [0.5] * 3000)
    rewarded = recs[:1000]
    assert set(await redis_store.apply_rewards(exp, [(r.event_id, 1.0) for r in rewarded])) == {
        RewardOutcome.APPLIED
    }
    clock.advance(31)
    others = [RedisStore.from_url(redis_url, clock=clock) for _ in range(3)]
    try:
        late_posts = [(r.event_id, 1.0) for r in recs[1000:1200]]
        late_task = asyncio.ensure_future(redis_store.apply_rewards(exp, late_posts))
        reports = await asyncio.gather(
            redis_store.settle_expired(exp, limit=100),
            *(s.settle_expired(exp, limit=100) for s in others),
        )
        late = await late_task
    finally:
        for s in others:
            await s.close()
    assert set(late) == {RewardOutcome.EXPIRED}
    assert sum(r.defaulted for r in reports) == 2000
    snap = await redis_store.snapshot(exp_name)
    assert snap["a"].rewards + snap["b"].rewards == 3000
    assert snap["a"].defaulted + snap["b"].defaulted == 2000
    assert snap["a"].reward_sum + snap["b"].reward_sum == 1000.0
    assert snap["a"].pending == snap["b"].pending == 0


async def test_redis_stopped_mid_test_raises_store_error_then_recovers(
    own_redis: RedisServer, clock: ManualClock
) -> None:
    store = RedisStore.from_url(own_redis.url, clock=clock, timeout=1.0)
    exp = ExperimentSettings("outage")
    try:
        (a,) = await store.record_decisions(exp, ["a"], [1.0])
        own_redis.stop()
        with pytest.raises(StoreError, match="Redis"):
            await store.apply_reward(exp, a.event_id, 1.0)
        with pytest.raises(StoreError):
            await store.record_decisions(exp, ["a"], [1.0])
        with pytest.raises(StoreError):
            await store.snapshot("outage")
        own_redis.start()  # a fresh, empty server on the same port
        (b,) = await store.record_decisions(exp, ["a"], [1.0])
        assert await store.apply_reward(exp, b.event_id, 1.0) is RewardOutcome.APPLIED
        assert (await store.snapshot("outage"))["a"].rewards == 1
    finally:
        await store.close()


async def test_scripts_reload_after_script_flush(redis_store: RedisStore, exp_name: str) -> None:
    exp = ExperimentSettings(exp_name)
    await redis_store.client.script_flush()
    (a,) = await redis_store.record_decisions(exp, ["a"], [1.0])
    await redis_store.client.script_flush()
    assert await redis_store.apply_reward(exp, a.event_id, 1.0) is RewardOutcome.APPLIED


async def test_every_script_re_sent_after_its_answer_was_lost_counts_once(
    redis_store: RedisStore, exp_name: str, clock: ManualClock
) -> None:
    """A retry after a timeout may run a script a second time whose first run happened
    (only its answer was lost): here every script runs twice and answers the second run."""
    for name, script in list(redis_store._scripts.items()):

        async def twice(keys: list[str], args: list[Any], script: Any = script) -> Any:
            await script(keys, args)
            return await script(keys, args)

        redis_store._scripts[name] = cast(Any, twice)
    exp = ExperimentSettings(exp_name, wait_seconds=600)
    recs = await redis_store.record_decisions(exp, ["a", "b", "a", "b"], [0.5] * 4)
    # the client sees its own post answered duplicate: it was applied once
    assert await redis_store.apply_rewards(exp, [(recs[0].event_id, 0.25)]) == [
        RewardOutcome.DUPLICATE
    ]
    # the re-send answers 0 (the first run withdrew it)
    assert await redis_store.withdraw_decisions(exp, [recs[1].event_id]) == 0
    calls = [ShadowCall("v3", False, 40, True, 0.0), ShadowCall("v3", True, 90)]
    await redis_store.log_shadow(exp, calls)
    snap = await redis_store.snapshot(exp_name)
    assert (snap["a"].pulls, snap["a"].rewards, snap["a"].pending) == (2, 1, 1)
    assert snap["a"].reward_units == reward_units(0.25)
    assert (snap["b"].pulls, snap["b"].withdrawn, snap["b"].pending) == (2, 1, 1)
    assert (snap["shadow/v3"].calls, snap["shadow/v3"].errors) == (2, 1)
    bucket = f"{exp_name}-quota"  # burst 2, no refill while the clock stands still
    assert await redis_store.take_token(bucket, 0.1, 2) is None
    assert await redis_store.take_token(bucket, 0.1, 2) is None
    assert await redis_store.take_token(bucket, 0.1, 2) == pytest.approx(10.0)
    clock.advance(601)
    await redis_store.settle_expired(exp)
    snap = await redis_store.snapshot(exp_name)
    assert (snap["a"].defaulted, snap["b"].defaulted, snap["a"].pending) == (1, 1, 0)
    # a compare-and-set: the re-send finds the version moved and the store answers None
    pause = AuditEvent("pause", "test")
    assert await redis_store.transition(exp, 0, Control({"state": "paused"}), [pause]) is None
    assert [e.kind for e in await redis_store.events(exp_name)] == ["pause"]
    assert (await redis_store.read(exp_name)).control.fields["state"] == "paused"


async def test_every_key_carries_the_experiment_hash_tag(
    redis_url: str, redis_store: RedisStore, exp_name: str, clock: ManualClock
) -> None:
    exp = ExperimentSettings(exp_name, wait_seconds=5)
    recs = await redis_store.record_decisions(exp, ["a", "b"], [0.5, 0.5])
    await redis_store.apply_reward(exp, recs[0].event_id, 1.0)
    keys = list(redis.Redis.from_url(redis_url).scan_iter(match=f"bandit:{{{exp_name}}}*"))
    assert len(keys) == 5  # totals, due, a bucket, two events
    assert {key_slot(k) for k in keys} == {key_slot(f"{{{exp_name}}}".encode())}


async def test_records_and_buckets_expire_after_their_horizon(
    redis_url: str, redis_store: RedisStore, exp_name: str, clock: ManualClock
) -> None:
    exp = ExperimentSettings(
        exp_name,
        wait_seconds=100,
        retention_seconds=50,
        bucket_seconds=60,
        bucket_retention_seconds=3600,
    )
    (a,) = await redis_store.record_decisions(exp, ["a"], [1.0])
    r = redis.Redis.from_url(redis_url)
    keys = redis_store.keys(exp_name)
    ttl = r.pttl(keys.event(a.event_id))
    assert 149_000 <= ttl <= 150_000 + 1000  # deadline + retention from now
    bucket_ttl = r.pttl(keys.bucket(exp.bucket_start(clock.now)))
    assert 3600_000 <= bucket_ttl <= (3600 + 60) * 1000 + 1000
    r.delete(keys.event(a.event_id))  # as if Redis had expired it
    assert await redis_store.apply_reward(exp, a.event_id, 1.0) is RewardOutcome.UNKNOWN
    clock.advance(101)
    # the decision still settles (from its due-set entry), so pending returns to zero
    report = await redis_store.settle_expired(exp)
    assert report.defaulted == 1
    assert (await redis_store.snapshot(exp_name))["a"].pending == 0
