"""Cost of deterministic assignment per call, and the quality figures the tests check.

Run: ``python benchmarks/assignment.py [--calls N]``. Prints figures; asserts nothing.

Timing: the pure-Python MurmurHash3 alone (bytes in), a unit's experiment bucket and
layer position (string in: key formatting, UTF-8 encoding, hash, modulo), the arm of a
bucket (4 arms, boundaries cached) and the canary test; the C package ``mmh3`` on the same
bytes for comparison. Best of 7 rounds of N calls each.

Quality, over the unit ids ``user-0`` ... ``user-99999`` (as in ``tests/test_assignment.py``):
the largest absolute difference between an arm's share of units and its weight, and the
chi-square p-values of the independence checks.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable

import mmh3
import numpy as np
from scipy.stats import chi2_contingency

from bandit_serve.assignment import (
    BUCKETS,
    arm_for_bucket,
    canary_arm,
    layer_position,
    murmur3_32,
    unit_bucket,
)

SALT = "digits-2026-11"
UNIT = "4f1c2d3e-9a8b-4c7d-8e6f-0123456789ab"  # a UUID, a typical unit id
SPLITS = ((0.5, 0.5), (0.9, 0.1), (0.25, 0.25, 0.25, 0.25), (0.1, 0.2, 0.3, 0.4))
CANARY = (0.05, 0.25, 0.5)


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    return min(timeit.repeat(fn, number=calls, repeat=7)) / calls * 1e6


def timing(calls: int) -> None:
    key = f"{SALT}:{UNIT}".encode()
    rows = [
        (f"murmur3_32, {len(key)} bytes (pure Python)", lambda: murmur3_32(key)),
        ("mmh3.hash, same bytes (C, for comparison)", lambda: mmh3.hash(key, 0, signed=False)),
        ("unit_bucket(salt, uuid)", lambda: unit_bucket(SALT, UNIT)),
        ("layer_position(layer, uuid)", lambda: layer_position("ranking", UNIT)),
        ("arm_for_bucket, 4 arms", lambda: arm_for_bucket(4321, (0.1, 0.2, 0.3, 0.4))),
        ("canary_arm", lambda: canary_arm(4321, 0.25)),
        (
            "unit_bucket + arm_for_bucket (a fixed split)",
            lambda: arm_for_bucket(unit_bucket(SALT, UNIT), (0.5, 0.5)),
        ),
    ]
    print(f"per call, best of 7 x {calls:,} calls")
    for name, fn in rows:
        print(f"  {name:<48} {per_call_us(fn, calls):6.2f} us")


def p_value(x: np.ndarray, y: np.ndarray, kx: int, ky: int) -> float:
    table = np.zeros((kx, ky), dtype=int)
    np.add.at(table, (x, y), 1)
    return float(chi2_contingency(table, correction=False).pvalue)


def quality() -> None:
    units = [f"user-{i}" for i in range(100_000)]
    exp = np.array([unit_bucket(SALT, u) for u in units])
    ranking = np.array([round(layer_position("ranking", u) * BUCKETS) for u in units])
    search = np.array([round(layer_position("search", u) * BUCKETS) for u in units])
    print(f"\nshares of {len(units):,} unit ids (largest |share - weight|)")
    for w in SPLITS:
        arms = np.array([arm_for_bucket(int(b), w) for b in exp])
        err = np.max(np.abs(np.bincount(arms, minlength=len(w)) / len(units) - np.array(w)))
        print(f"  split {w!s:<26} {100 * err:.3f} percentage points")
    for c in CANARY:
        share = float(np.mean([canary_arm(int(b), c) for b in exp]))
        print(f"  canary weight {c:<18} {100 * abs(share - c):.3f} percentage points")
    q = BUCKETS // 4
    in_b = ((ranking >= 3000) & (ranking < 7000)).astype(int)
    tests = [
        ("layers ranking x search, 4x4 quarters", ranking // q, search // q, 4),
        (
            "[0, 0.3) of ranking x [0, 0.5) of search, 2x2",
            (ranking < 3000).astype(int),
            (search < 5000).astype(int),
            2,
        ),
        ("ranking position x experiment bucket, 4x4 quarters", ranking // q, exp // q, 4),
        (
            "[0.3, 0.7) of ranking x canary candidate at 0.25, 2x2",
            in_b,
            (exp < 2500).astype(int),
            2,
        ),
    ]
    print("\nchi-square independence p-values (no continuity correction)")
    for name, x, y, k in tests:
        print(f"  {name:<56} {p_value(x, y, k, k):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=100_000)
    args = parser.parse_args()
    timing(args.calls)
    quality()


if __name__ == "__main__":
    main()
