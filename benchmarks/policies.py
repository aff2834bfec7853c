"""Decisions per second of every policy, and the Redis store's reward-apply rate.

Run: ``python benchmarks/policies.py [--redis-url URL]``. Prints figures; asserts nothing.

Policies: K = 10 arms, batch sizes 1 and 1,000, in three modes:
- ``select``: ``policy.select(stats, rng)`` computing the full distribution and the
  propensity per call (for Thompson sampling a Monte Carlo estimate with ``draws``);
- ``fast``: ``select(..., propensity=False)``, the simulator's path;
- ``frozen``: the server's path, ``policy.freeze(snapshot)`` once per snapshot, then one
  categorical draw per request (the propensity is exact for that draw).

Store: apply 1 reward at a time, with 200 concurrent tasks, and 1,000 in one script call.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import timeit

import numpy as np

from bandit_serve.policies import POLICIES, ArmStats, Policy
from bandit_serve.store import ExperimentSettings, RedisStore

K = 10


def state(batch: int, rng: np.random.Generator) -> ArmStats:
    n = rng.integers(50, 500, size=(batch, K)).astype(float)
    s = np.floor(n * rng.uniform(0.1, 0.6, size=(batch, K)))
    return ArmStats.from_arrays(n, s, s)


def per_call_seconds(fn: object, min_time: float = 0.3) -> float:
    t = timeit.Timer(fn)  # type: ignore[arg-type]
    number, _ = t.autorange()
    number = max(number, int(number * min_time / 0.2))
    return min(t.repeat(repeat=3, number=number)) / number


def bench_policy(kind: str, policy: Policy, rng: np.random.Generator) -> None:
    s1, s1000 = state(1, rng), state(1000, rng)
    frozen = policy.freeze(s1, rng)
    modes = {
        "select": (lambda: policy.select(s1, rng), lambda: policy.select(s1000, rng)),
        "fast": (
            lambda: policy.select(s1, rng, propensity=False),
            lambda: policy.select(s1000, rng, propensity=False),
        ),
        "frozen": (lambda: frozen.sample(rng, 1), lambda: frozen.sample(rng, 1000)),
    }
    for mode, (one, many) in modes.items():
        t1 = per_call_seconds(one)
        tm = per_call_seconds(many) / 1000
        print(
            f"{kind:<19}{mode:<8}{t1 * 1e6:>9.1f} us ({1 / t1:>9,.0f}/s)"
            f"{tm * 1e6:>10.3f} us ({1 / tm:>11,.0f}/s)"
        )
    freeze_t = per_call_seconds(lambda: policy.freeze(s1, rng))
    print(f"{kind:<19}{'freeze':<8}{freeze_t * 1e6:>9.1f} us once per snapshot")


def bench_policies() -> None:
    rng = np.random.default_rng(0)
    print(f"Policies, K = {K}: microseconds per decision (decisions per second)")
    print(f"{'policy':<19}{'mode':<8}{'batch 1':>22}{'batch 1000':>26}")
    for kind, cls in POLICIES.items():
        bench_policy(kind, cls(), rng)


async def bench_store(url: str) -> None:
    store = RedisStore.from_url(url, max_connections=256)
    exp = ExperimentSettings(f"bench-{time.time_ns()}", wait_seconds=3600, retention_seconds=600)
    n = 20_000
    recs = []
    for _ in range(0, n * 3, 1000):
        recs += await store.record_decisions(exp, ["a", "b"] * 500, [0.5] * 1000)
    ids = [r.event_id for r in recs]

    t = time.perf_counter()
    for e in ids[:5000]:
        await store.apply_reward(exp, e, 1.0)
    seq = 5000 / (time.perf_counter() - t)

    queue = ids[5000 : 5000 + n]

    async def worker(chunk: list[str]) -> None:
        for e in chunk:
            await store.apply_reward(exp, e, 1.0)

    t = time.perf_counter()
    await asyncio.gather(*(worker(queue[i::200]) for i in range(200)))
    conc = n / (time.perf_counter() - t)

    batch_ids = ids[5000 + n :]
    t = time.perf_counter()
    for i in range(0, len(batch_ids), 1000):
        await store.apply_rewards(exp, [(e, 1.0) for e in batch_ids[i : i + 1000]])
    batched = len(batch_ids) / (time.perf_counter() - t)

    snap = await store.snapshot(exp.name)
    applied = sum(a.rewards for a in snap.values())
    keys = [k async for k in store.client.scan_iter(match=f"bandit:{{{exp.name}}}*")]
    for i in range(0, len(keys), 1000):
        await store.client.delete(*keys[i : i + 1000])
    await store.close()
    print(f"\nRedis store at {url}: rewards applied per second (each counted once: {applied:,})")
    print(f"  one at a time (sequential)      {seq:>10,.0f}/s")
    print(f"  200 concurrent tasks            {conc:>10,.0f}/s  ({conc / seq:.1f}x sequential)")
    print(
        f"  batches of 1,000 (one script)   {batched:>10,.0f}/s  ({batched / seq:.1f}x sequential)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--skip-store", action="store_true")
    args = ap.parse_args()
    bench_policies()
    if not args.skip_store:
        asyncio.run(bench_store(args.redis_url))


if __name__ == "__main__":
    main()
