"""Time of one guardrail check of an experiment with 10 arms (9 against the baseline),
and predict throughput with guardrails on against off.

Run: ``python benchmarks/guardrails.py [--repeats N] [--redis-url URL]``. Prints figures;
asserts nothing.

One check evaluates the four rule kinds, each vectorized over the 9 non-baseline arms:
error-rate excess, p99 latency ratio, p99 latency ceiling and reward decrease, from the
totals the service reads from Redis (counts, sums, histograms of ``NBINS`` bins). The
service's target is 5 ms for such a check.

The second part runs two in-process services on Redis (the service's code path without
Ray: the router, the store, the background loops), one experiment each, identical but
for guardrails (the README's four rules, checked every 0.5 s by the service's own loop),
and drives predicts at concurrency 8 in interleaved rounds: the checks run off the
request path, so the target is at least 0.95x the throughput without them.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bandit_serve.stats.guardrails import (
    error_rate_excess,
    latency_ceiling,
    latency_ratio,
    reward_decrease,
    split_alpha,
)
from bandit_serve.stats.histogram import NBINS, bin_indices

ARMS = 10
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.fixtures.models


def totals(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Totals of a baseline (index 0) and 9 arms after about 50,000 calls each."""
    calls = rng.integers(40_000, 60_000, ARMS).astype(float)
    errors = rng.binomial(calls.astype(int), 0.01).astype(float)
    rewards = rng.binomial(calls.astype(int), 0.5).astype(float)
    hists = np.stack(
        [
            np.bincount(
                bin_indices(rng.lognormal(np.log(0.02 * (1 + 0.1 * i)), 0.5, int(n))),
                minlength=NBINS,
            )
            for i, n in enumerate(calls)
        ]
    ).astype(float)
    return {"calls": calls, "errors": errors, "rewards": rewards, "hists": hists}


def check(t: dict[str, np.ndarray], alpha: float) -> int:
    """One check of all four rule kinds; returns the number of violated (arm, rule)."""
    n, e, r, h = t["calls"], t["errors"], t["rewards"], t["hists"]
    tests = [
        error_rate_excess(n[1:], e[1:], n[0], e[0], 0.02, alpha, 200),
        latency_ratio(h[1:], h[0], 0.99, 1.5, alpha, 200),
        latency_ceiling(h[1:], 0.99, 0.25, alpha, 200),
        reward_decrease(n[1:], r[1:], r[1:], n[0], r[0], r[0], 0.05, alpha, 200),
    ]
    return sum(int(x.violated.sum()) for x in tests)


def _experiment(name: str, guarded: bool) -> dict[str, Any]:
    exp: dict[str, Any] = {
        "name": name,
        "arms": [
            {"name": "a", "model": "tests.fixtures.models:echo_a"},
            {"name": "b", "model": "tests.fixtures.models:echo_b"},
        ],
        "policy": {"kind": "thompson"},
        "reward": {"kind": "bernoulli"},
    }
    if guarded:
        exp["guardrails"] = {
            "rules": [
                {"metric": "error_rate", "max_increase": 0.02},
                {"metric": "latency_p99", "max_ratio": 1.5},
                {"metric": "latency_p99", "max_seconds": 0.25},
                {"metric": "reward", "max_decrease": 0.05},
            ],
            "check_interval_seconds": 0.5,
        }
    return exp


async def predict_rates(url: str, rounds: int = 7, per_round: int = 2000) -> None:
    """Predicts per second with guardrails off and on (interleaved rounds, medians)."""
    from bandit_serve.config import AppConfig
    from bandit_serve.service.core import BanditService
    from bandit_serve.service.local import LocalModels
    from bandit_serve.store import RedisStore
    from tests.conftest import delete_experiment_keys

    names = {g: f"bench-guard-{g}-{uuid.uuid4().hex[:6]}" for g in (False, True)}
    services = {}
    for guarded, name in names.items():
        cfg = AppConfig.model_validate({"experiments": [_experiment(name, guarded)]})
        services[guarded] = BanditService(cfg, RedisStore.from_url(url), LocalModels(cfg))
        services[guarded].start()
    rates: dict[bool, list[float]] = {False: [], True: []}
    try:
        for i in range(rounds):
            for guarded in (False, True) if i % 2 == 0 else (True, False):
                router = services[guarded].router(names[guarded])
                sem = asyncio.Semaphore(8)

                async def one(k: int, router: Any = router, sem: asyncio.Semaphore = sem) -> None:
                    async with sem:
                        await router.predict([k])

                began = time.perf_counter()
                await asyncio.gather(*(one(k) for k in range(per_round)))
                rates[guarded].append(per_round / (time.perf_counter() - began))
    finally:
        for service in services.values():
            await service.stop()
        for name in names.values():
            delete_experiment_keys(url, name)
    on, off = statistics.median(rates[True]), statistics.median(rates[False])
    print(
        f"predicts/s in process on Redis, concurrency 8, {rounds} interleaved rounds of "
        f"{per_round:,}: guardrails off {off:,.0f} ({min(rates[False]):,.0f}-"
        f"{max(rates[False]):,.0f}), on {on:,.0f} ({min(rates[True]):,.0f}-"
        f"{max(rates[True]):,.0f}): {on / off:.2f}x (target >= 0.95x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Time one guardrail check of 10 arms.")
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    t = totals(np.random.default_rng(0))
    alpha = split_alpha(0.01, 4)
    for _ in range(50):  # warm up
        check(t, alpha)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        check(t, alpha)
        times.append(time.perf_counter() - start)
    times.sort()
    median = statistics.median(times)
    p99 = times[int(0.99 * (len(times) - 1))]
    print(
        f"one check, 4 rule kinds x {ARMS - 1} arms vs the baseline: "
        f"median {median * 1e3:.3f} ms, p99 {p99 * 1e3:.3f} ms over {args.repeats} repeats "
        f"(target 5 ms); violations in the sample data: {check(t, alpha)}"
    )
    asyncio.run(predict_rates(args.redis_url))


if __name__ == "__main__":
    main()
