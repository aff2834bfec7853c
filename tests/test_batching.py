"""The coalescer that turns concurrent store calls into batched script calls."""

from __future__ import annotations

import asyncio

import pytest

from bandit_serve.errors import StoreError
from bandit_serve.store import ExperimentSettings, RedisStore, RewardOutcome
from bandit_serve.store.batching import Coalescer
from tests.conftest import RedisServer


async def test_concurrent_calls_share_batches_and_keep_their_own_results() -> None:
    seen: list[list[int]] = []

    async def flush(items: list[int]) -> list[int]:
        seen.append(items)
        await asyncio.sleep(0.001)
        return [x * 10 for x in items]

    c: Coalescer[int, int] = Coalescer(flush, max_batch=50, max_inflight=2)
    calls = [[i, i + 1000] for i in range(100)]
    results = await asyncio.gather(*(c.submit(items) for items in calls))
    assert results == [[x * 10 for x in items] for items in calls]
    assert c.batches == len(seen) < 10
    assert all(len(b) <= 50 for b in seen)
    assert sorted(x for b in seen for x in b) == sorted(x for items in calls for x in items)


async def test_a_failed_batch_fails_every_call_in_it_and_the_next_batch_runs() -> None:
    calls = 0

    async def flush(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StoreError("down")
        return items

    c: Coalescer[int, int] = Coalescer(flush, max_inflight=1)
    first = await asyncio.gather(*(c.submit([i]) for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, StoreError) for r in first)
    assert await c.submit([7]) == [7]


async def test_200_concurrent_rewards_through_redis_take_few_script_calls(
    own_redis: RedisServer, exp_name: str
) -> None:
    """Script calls counted by the Redis server itself (a server of this test alone)."""
    store = RedisStore.from_url(own_redis.url)
    exp = ExperimentSettings(exp_name)
    try:
        recs = await store.record_decisions(exp, ["a", "b"] * 100, [0.5] * 200)
        # loads the reward script, so a first NOSCRIPT retry is not counted below
        assert await store.apply_reward(exp, "0" * 32, 1.0) == RewardOutcome.UNKNOWN
        before = await script_calls(store)
        outcomes = await asyncio.gather(
            *(store.apply_reward(exp, r.event_id, 1.0) for r in recs),
            *(store.apply_reward(exp, r.event_id, 1.0) for r in recs[:50]),
        )
        assert await script_calls(store) - before <= 10
        assert outcomes.count(RewardOutcome.APPLIED) == 200
        assert outcomes.count(RewardOutcome.DUPLICATE) == 50
        assert outcomes[:200] == [RewardOutcome.APPLIED] * 200  # the first post of each id wins
        snap = await store.snapshot(exp_name)
        assert snap["a"].rewards == snap["b"].rewards == 100
    finally:
        await store.close()


async def script_calls(store: RedisStore) -> int:
    """Scripts the server has run (EVALSHA and EVAL calls), from INFO commandstats."""
    stats = await store.client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


@pytest.mark.parametrize("coalesce", [True, False])
async def test_both_modes_agree(redis_url: str, exp_name: str, coalesce: bool) -> None:
    store = RedisStore.from_url(redis_url, coalesce=coalesce)
    exp = ExperimentSettings(exp_name + str(coalesce))
    try:
        recs = await asyncio.gather(*(store.record_decision(exp, "a", 1.0) for _ in range(20)))
        res = await asyncio.gather(*(store.apply_reward(exp, r.event_id, 0.5) for r in recs))
        assert res == [RewardOutcome.APPLIED] * 20
        snap = await store.snapshot(exp.name)
        assert (snap["a"].pulls, snap["a"].rewards, snap["a"].reward_sum) == (20, 20, 10.0)
    finally:
        await store.client.delete(
            *[k async for k in store.client.scan_iter(match=f"bandit:{{{exp.name}}}*")]
        )
        await store.close()
