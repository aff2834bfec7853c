"""Faults in CI: Redis with the append-only file (``appendfsync always``) is SIGKILLed and
restarted 5 times while 16 clients predict and post every reward 2-3 times through the
HTTP API of the in-process service (BanditService over RedisStore, LocalModels,
httpx.ASGITransport).

Nothing acknowledged may be lost or counted twice, every prediction answered 200 must be
in the counts, and only requests made while Redis is down may fail: a request that starts
after the restarted server answers must not fail on a stale pooled connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bandit_serve.store import RedisStore, reward_units
from bandit_serve.store.redis_store import ExperimentKeys
from tests.redis_servers import RedisProcess
from tests.test_service_api import Harness, app_config

KILLS = 5
CLIENTS = 16
UP_SECONDS = 1.5  # load between restarts
DOWN_SECONDS = 0.4  # how long Redis stays dead


@dataclass
class Call:
    kind: str  # "predict" or "reward"
    start: float
    end: float
    status: int


@dataclass
class Ledger:
    """What the clients were told."""

    calls: list[Call] = field(default_factory=list)
    arm_of: dict[str, str] = field(default_factory=dict)  # predictions answered 200
    reward_of: dict[str, int] = field(default_factory=dict)
    acknowledged: set[str] = field(default_factory=set)  # answered applied or duplicate
    applied: Counter[str] = field(default_factory=Counter)  # answered applied
    outages: list[tuple[float, float]] = field(default_factory=list)  # (killed, answering)

    def in_outage(self, c: Call) -> bool:
        return any(c.start <= up and c.end >= down for down, up in self.outages)


async def client(h: Harness, name: str, seed: int, ledger: Ledger, stop: asyncio.Event) -> None:
    """Predict; post each reward 2-3 times (retrying a 503 until it is answered)."""
    rng = random.Random(seed)
    todo: list[list[object]] = []  # [event_id, reward, posts still to make]
    url = f"/v1/experiments/{name}/rewards"
    while not stop.is_set() or todo:
        if todo and (stop.is_set() or rng.random() < 0.6):
            item = rng.choice(todo)
            event_id, reward = str(item[0]), int(str(item[1]))
            t0 = time.monotonic()
            r = await h.client.post(url, json={"event_id": event_id, "reward": reward})
            ledger.calls.append(Call("reward", t0, time.monotonic(), r.status_code))
            if r.status_code in (200, 409):
                ledger.acknowledged.add(event_id)
                ledger.applied[event_id] += r.status_code == 200
                item[2] = int(str(item[2])) - 1
                if item[2] == 0:
                    todo.remove(item)
            else:
                await asyncio.sleep(0.02)
        else:
            t0 = time.monotonic()
            r = await h.predict(name, seed)
            ledger.calls.append(Call("predict", t0, time.monotonic(), r.status_code))
            if r.status_code == 200:
                body = r.json()
                ledger.arm_of[body["event_id"]] = body["arm"]
                reward = rng.randint(0, 1)
                ledger.reward_of[body["event_id"]] = reward
                todo.append([body["event_id"], reward, rng.choice([2, 3])])
            else:
                await asyncio.sleep(0.02)


async def test_redis_sigkilled_5_times_under_load_loses_nothing_acknowledged(
    tmp_path: Path, exp_name: str
) -> None:
    server = RedisProcess(tmp_path, args=["--appendonly", "yes", "--appendfsync", "always"])
    server.start()
    store = RedisStore.from_url(server.url, timeout=1.0)
    h = Harness(
        app_config(exp_name, {"a": "echo_a", "b": "echo_b"}, sync_interval_seconds=0.2), store
    )
    ledger = Ledger()
    stop = asyncio.Event()
    try:
        tasks = [asyncio.create_task(client(h, exp_name, i, ledger, stop)) for i in range(CLIENTS)]
        for _ in range(KILLS):
            await asyncio.sleep(UP_SECONDS)
            killed = time.monotonic()
            await asyncio.to_thread(server.kill)
            await asyncio.sleep(DOWN_SECONDS)
            await asyncio.to_thread(server.start)  # returns once it answers PING (AOF loaded)
            ledger.outages.append((killed, time.monotonic()))
        await asyncio.sleep(UP_SECONDS)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)

        # -- what the clients were told, against what Redis holds --------------------------
        k = ExperimentKeys(exp_name, 0)
        with contextlib.closing(server.client()) as c:
            state = {
                key.rsplit(":", 1)[1]: c.hget(key, "st")
                for key in c.scan_iter(match=f"{k.prefix}:ev:*", count=1000)
            }
        snap = await store.snapshot(exp_name)
    finally:
        stop.set()
        await h.close()
        server.stop()

    def stored(event_id: str) -> str:  # a signed id: <store id>.<issued>.<kid>.<mac>
        return event_id.split(".", 1)[0]

    missing_decisions = [e for e in ledger.arm_of if stored(e) not in state]
    lost_rewards = [e for e in ledger.acknowledged if state.get(stored(e)) != "r"]
    applied_twice = [e for e, n in ledger.applied.items() if n > 1]
    rewarded = {e for e, st in state.items() if st == "r"}
    failures = [c for c in ledger.calls if c.status not in (200, 409)]
    stale = [c for c in failures if not ledger.in_outage(c)]
    by_phase = Counter(
        (c.kind, "outage" if ledger.in_outage(c) else "up", c.status) for c in failures
    )
    report = (
        f"{len(ledger.calls)} calls, {len(ledger.arm_of)} predictions answered 200, "
        f"{len(ledger.acknowledged)} rewards acknowledged, failures by phase: {dict(by_phase)}"
    )
    assert len(ledger.outages) == KILLS
    assert len(ledger.acknowledged) > 200, report  # the load was real
    for down, up in ledger.outages:  # every kill was felt by some request
        assert any(c.start <= up and c.end >= down for c in failures), report
    assert missing_decisions == [], report
    assert lost_rewards == [], report
    assert applied_twice == [], report
    assert stale == [], report  # only requests made while Redis was down failed
    assert {c.status for c in failures} <= {503}, report
    # counted once: Redis's totals are exactly the acknowledged rewards
    assert rewarded == {stored(e) for e in ledger.acknowledged}, report
    assert sum(a.rewards for a in snap.values()) == len(ledger.acknowledged)
    for arm, totals in snap.items():
        mine = [e for e in ledger.acknowledged if ledger.arm_of[e] == arm]
        assert totals.rewards == len(mine)
        assert totals.reward_units == sum(reward_units(ledger.reward_of[e]) for e in mine)
        assert totals.pulls >= sum(1 for a in ledger.arm_of.values() if a == arm)
    print(report)  # shown with -s: the figures of this run
