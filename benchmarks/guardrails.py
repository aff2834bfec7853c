"""Time of one guardrail check of an experiment with 10 arms (9 against the baseline).

Run: ``python benchmarks/guardrails.py [--repeats N]``. Prints figures; asserts nothing.

One check evaluates the four rule kinds, each vectorized over the 9 non-baseline arms:
error-rate excess, p99 latency ratio, p99 latency ceiling and reward decrease, from the
totals the service reads from Redis (counts, sums, histograms of ``NBINS`` bins). The
service's target is 5 ms for such a check.
"""

from __future__ import annotations

import argparse
import statistics
import time

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


def main() -> None:
    parser = argparse.ArgumentParser(description="Time one guardrail check of 10 arms.")
    parser.add_argument("--repeats", type=int, default=2000)
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


if __name__ == "__main__":
    main()
