"""The store's model-call outcomes, control state, audit log and epochs: one contract, run
unchanged against the in-memory store, a real Redis server and a Redis Cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bandit_serve.store import (
    ArmStatus,
    AuditEvent,
    Control,
    ExperimentSettings,
    ExperimentState,
    LoggedDecision,
    MemoryStore,
    RedisStore,
    RewardOutcome,
    Store,
    new_event_id,
)
from tests.conftest import ManualClock, delete_experiment_keys


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


def settings(name: str, **kw: object) -> ExperimentSettings:
    base: dict[str, object] = {"low": 0.0, "high": 1.0, "wait_seconds": 60, "error_reward": 0.0}
    return ExperimentSettings(name, **{**base, **kw})  # type: ignore[arg-type]


def decision(arm: str, **kw: object) -> LoggedDecision:
    return LoggedDecision(new_event_id(), arm, 0.5, **kw)  # type: ignore[arg-type]


async def test_model_call_outcomes_count_for_the_arm(store: Store, exp_name: str) -> None:
    exp = settings(exp_name, error_reward=0.0)
    ok = decision("a", latency_bin=40)
    failed = decision("a", failed=True, latency_bin=90)
    gone = decision("a", client_gone=True, latency_bin=41)
    gone_failed = decision("b", failed=True, client_gone=True, latency_bin=5)
    recs = await store.log_decisions(exp, [ok, failed, gone, gone_failed], {"a": 1.5, "b": 0.5})
    assert [r.event_id for r in recs] == [d.event_id for d in (ok, failed, gone, gone_failed)]
    snap = await store.snapshot(exp_name)
    a, b = snap["a"], snap["b"]
    assert (a.pulls, a.calls, a.errors, a.rewards, a.withdrawn, a.pending) == (3, 3, 1, 1, 1, 1)
    assert a.reward_sum == 0.0  # the failed call got the low reward at once
    assert a.latency == {40: 1, 90: 1, 41: 1}
    assert (b.pulls, b.calls, b.errors, b.rewards, b.withdrawn, b.pending) == (1, 1, 1, 0, 1, 0)
    assert a.expected_pulls == pytest.approx(1.5) and b.expected_pulls == pytest.approx(0.5)
    # only the answered decision takes a reward; the others' ids were never given out
    assert await store.apply_reward(exp, ok.event_id, 1.0) == RewardOutcome.APPLIED
    assert await store.apply_reward(exp, failed.event_id, 1.0) == RewardOutcome.DUPLICATE
    assert await store.apply_reward(exp, gone.event_id, 1.0) == RewardOutcome.EXPIRED
    # a retried call (same event ids) changes nothing
    before = await store.snapshot(exp_name)
    await store.log_decisions(exp, [ok, failed], {"a": 1.0})
    assert await store.snapshot(exp_name) == before


async def test_withdraw_mode_takes_failures_out_of_the_reward_statistics(
    store: Store, exp_name: str
) -> None:
    exp = settings(exp_name, on_model_error="withdraw")
    await store.log_decisions(exp, [decision("a", failed=True, latency_bin=3)])
    a = (await store.snapshot(exp_name))["a"]
    assert (a.pulls, a.errors, a.rewards, a.withdrawn, a.pending) == (1, 1, 0, 1, 0)


async def test_error_reward_is_the_configured_value(store: Store, exp_name: str) -> None:
    exp = settings(exp_name, low=-5.0, high=5.0, error_reward=-2.5)
    await store.log_decisions(exp, [decision("a", failed=True), decision("a", failed=True)])
    a = (await store.snapshot(exp_name))["a"]
    assert (a.rewards, a.reward_sum) == (2, -5.0)
    assert a.reward_sq == pytest.approx(12.5)


async def test_buckets_carry_calls_and_latency(store: Store, exp_name: str) -> None:
    exp = settings(exp_name)
    await store.log_decisions(exp, [decision("a", latency_bin=7), decision("a", latency_bin=7)])
    now = store.clock()
    (bucket,) = await store.buckets(exp, now - 1, now)
    assert (bucket.arms["a"].calls, bucket.arms["a"].latency) == (2, {7: 2})


async def test_transition_is_a_compare_and_set_with_its_events(store: Store, exp_name: str) -> None:
    exp = settings(exp_name)
    ctl = await store.control(exp_name)
    assert (ctl.version, ctl.epoch, ctl.state) == (0, 0, ExperimentState.RUNNING)
    assert ctl.status("a") is ArmStatus.ACTIVE
    new = ctl.with_items({"status:b": "rolled_back"})
    ev = AuditEvent(kind="rollback", actor="ops", reason="why", arm="b", details={"x": 1})
    stored = await store.transition(exp, 0, new, [ev])
    assert stored is not None and stored[0].id and stored[0].time > 0
    # a second writer that read version 0 loses and changes nothing
    assert await store.transition(exp, 0, ctl.with_items({"state": "paused"}), [ev]) is None
    ctl = await store.control(exp_name)
    assert (ctl.version, ctl.status("b"), ctl.state) == (1, ArmStatus.ROLLED_BACK, "running")
    (got,) = await store.events(exp_name)
    assert (got.kind, got.arm, got.actor, got.reason, dict(got.details)) == (
        "rollback",
        "b",
        "ops",
        "why",
        {"x": 1},
    )
    assert got.id == stored[0].id


async def test_events_page_after_an_id_and_are_capped(store: Store, exp_name: str) -> None:
    exp = settings(exp_name, events_max=50)
    for i in range(120):
        ev = AuditEvent(kind="pause", actor="ops", reason=str(i))
        assert await store.transition(exp, i, Control({"n": str(i)}), [ev]) is not None
    first = await store.events(exp_name, limit=10)
    assert len(first) == 10 and first[0].reason == "70"
    nxt = await store.events(exp_name, since=first[-1].id, limit=5)
    assert [int(e.reason) for e in nxt] == [int(first[-1].reason) + i for i in range(1, 6)]
    everything = await store.events(exp_name, limit=1000)
    assert [e.reason for e in everything] == [str(i) for i in range(70, 120)]  # the last 50


async def test_restore_mark_gives_statistics_since(store: Store, exp_name: str) -> None:
    exp = settings(exp_name)
    await store.log_decisions(exp, [decision("a", failed=True, latency_bin=1)] * 1)
    await store.log_decisions(exp, [decision("b", latency_bin=2)])
    ctl = await store.control(exp_name)
    assert await store.transition(exp, ctl.version, ctl, mark_restore="a") is not None
    await store.log_decisions(exp, [decision("a", latency_bin=4), decision("b")])
    snap = await store.read(exp_name)
    since_a = snap.since_restore("a", "a")
    assert (since_a.pulls, since_a.calls, since_a.errors, since_a.latency) == (1, 1, 0, {4: 1})
    since_b = snap.since_restore("a", "b")
    assert (since_b.pulls, since_b.calls) == (1, 0)
    assert snap.since_restore("b", "b").pulls == 2  # never restored: the whole epoch


async def test_reset_moves_to_a_new_epoch(store: Store, exp_name: str) -> None:
    exp = settings(exp_name)
    old = await store.record_decisions(exp, ["a", "b"], [0.5, 0.5])
    assert await store.apply_reward(exp, old[0].event_id, 1.0) == RewardOutcome.APPLIED
    ctl = await store.control(exp_name)
    rolled = ctl.with_items({"status:b": "rolled_back"})
    assert await store.transition(exp, ctl.version, rolled, [AuditEvent("rollback", "ops")])
    ctl = await store.control(exp_name)
    reset = AuditEvent("reset", "ops")
    assert await store.transition(exp, ctl.version, ctl, [reset], new_epoch=True) is not None
    snap = await store.read(exp_name)
    assert snap.totals == {} and snap.control.epoch == 1
    assert snap.control.status("b") is ArmStatus.ROLLED_BACK  # statuses survive
    assert [e.kind for e in await store.events(exp_name)] == ["rollback", "reset"]
    assert await store.apply_reward(exp, old[1].event_id, 1.0) == RewardOutcome.UNKNOWN
    (new,) = await store.record_decisions(exp, ["a"], [1.0])
    assert await store.apply_reward(exp, new.event_id, 1.0) == RewardOutcome.APPLIED
    assert (await store.snapshot(exp_name))["a"].rewards == 1


async def test_a_replica_that_missed_the_reset_writes_into_the_new_epoch(
    redis_url: str, clock: ManualClock, exp_name: str
) -> None:
    """Two Redis stores as two router replicas: the second learns of the reset from the
    scripts themselves (STALE_EPOCH), not from a refresh."""
    exp = settings(exp_name)
    one = RedisStore.from_url(redis_url, clock=clock)
    two = RedisStore.from_url(redis_url, clock=clock)
    try:
        (old,) = await two.record_decisions(exp, ["a"], [1.0])  # two now believes epoch 0
        ctl = await one.control(exp_name)
        assert await one.transition(exp, ctl.version, ctl, new_epoch=True) is not None
        assert await two.apply_reward(exp, old.event_id, 1.0) == RewardOutcome.UNKNOWN
        (new,) = await two.record_decisions(exp, ["a"], [1.0])
        assert await one.apply_reward(exp, new.event_id, 0.5) == RewardOutcome.APPLIED
        snap = await one.read(exp_name)
        assert snap.control.epoch == 1 and snap.totals["a"].pulls == 1
        assert snap.totals["a"].reward_sum == 0.5
    finally:
        await one.close()
        await two.close()
        delete_experiment_keys(redis_url, exp_name)
