"""Simulator throughput: decisions per second and peak memory per policy.

Run: ``python benchmarks/simulate.py [--runs 1000] [--horizon 10000]``. K = 10 Bernoulli
arms. The ``fixed`` policy runs first as the baseline: it costs almost nothing to decide,
so its rate is the simulator's own ceiling; each policy's rate is also given as a share
of it. Each figure is the best of ``--repeat`` runs. Peak memory (tracemalloc, numpy
included) is taken on a second run of 1,000
decisions: the simulator's memory does not grow with the horizon beyond its 200-point
regret grid. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import tracemalloc

from bandit_serve.simulation import Scenario, simulate_policy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--horizon", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    args = ap.parse_args()
    sc = Scenario.model_validate(
        {
            "name": "bench",
            "horizon": args.horizon,
            "runs": args.runs,
            "seed": 1,
            "arms": [
                {"name": f"a{i}", "reward": {"kind": "bernoulli", "mean": 0.05 + 0.05 * i}}
                for i in range(10)
            ],
            "policies": [
                {"kind": "fixed"},
                {"kind": "thompson"},
                {"kind": "ucb1"},
                {"kind": "epsilon_greedy", "epsilon": 0.1},
            ],
        }
    )
    print(f"K = 10, horizon {sc.horizon:,}, {sc.runs:,} runs ({sc.horizon * sc.runs:,} decisions)")
    print(f"{'policy':<16}{'decisions/s':>14}{'x baseline':>12}{'seconds':>10}{'peak MiB':>10}")
    baseline = None
    for i, entry in enumerate(sc.policies):
        # timed without tracing (tracemalloc slows numpy); best of --repeat, since this
        # shared machine's speed varies by a quarter from one run to the next
        r = min(
            (simulate_policy(sc, entry, i) for _ in range(args.repeat)), key=lambda x: x.seconds
        )
        tracemalloc.start()
        simulate_policy(sc.model_copy(update={"horizon": min(sc.horizon, 1000)}), entry, i)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rate = r.decisions_per_second
        baseline = baseline or rate
        print(
            f"{r.label:<16}{rate:>14,.0f}{rate / baseline:>12.2f}{r.seconds:>10.1f}"
            f"{peak / 2**20:>10.1f}"
        )


if __name__ == "__main__":
    main()
