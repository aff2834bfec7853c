"""The vectorized regret simulator: the served policies, R independent runs at once.

Per decision step ``t`` (for all runs together):

1. every policy decides from the statistics it can see (refreshed every ``sync_every``
   steps, as a router replica refreshes its snapshot) through the same
   ``Policy.select`` the server uses (its fast path, without propensities);
2. the environment draws the reward of the chosen arm; the draw is a common random number
   shared by every policy (variance reduction: policies are compared on the same luck);
3. the reward is queued for its arrival step: ``t`` with no delay, ``t + d`` with delay
   ``d``; a missing reward, or one later than ``wait_steps``, is replaced by the default
   reward (or dropped) at ``t + wait_steps``, as the server's deadline sweeper does;
4. observations whose arrival step is ``t`` are added to the true statistics.

Regret is measured against expected rewards: ``max_a mu_a(t) - mu_{arm}(t)`` per step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from bandit_serve.policies import ArmStats, Policy
from bandit_serve.simulation.scenario import (
    ExponentialDelay,
    FixedDelay,
    GaussianArm,
    Scenario,
    ScenarioPolicy,
)

__all__ = ["PolicyResult", "lai_robbins_constant", "mean_schedule", "simulate_policy"]

FloatArray = NDArray[np.float64]
Progress = Callable[[int], None]


@dataclass(frozen=True)
class PolicyResult:
    """What one policy did over R runs. Curves are on ``grid`` (decision counts)."""

    label: str
    kind: str
    grid: NDArray[np.int64]
    regret_mean: FloatArray  # mean cumulative regret at each grid point
    regret_se: FloatArray  # its standard error across runs
    share: FloatArray  # (len(grid), K) traffic share of each arm in each grid interval
    final_regret: FloatArray  # (R,) cumulative regret of every run at the horizon
    best_arm_share_last10: float
    seconds: float

    @property
    def decisions_per_second(self) -> float:
        return float(self.grid[-1] * len(self.final_regret) / max(self.seconds, 1e-9))


def mean_schedule(sc: Scenario) -> tuple[NDArray[np.int64], FloatArray]:
    """Change points and the true means in force from each: ``(starts, means[n, K])``."""
    names = [a.name for a in sc.arms]
    current = np.array([a.reward.mean for a in sc.arms], dtype=np.float64)
    starts, means = [0], [current.copy()]
    for c in sorted(sc.changes, key=lambda c: c.at):
        current[names.index(c.arm)] = c.mean
        if c.at == starts[-1]:
            means[-1] = current.copy()
        else:
            starts.append(c.at)
            means.append(current.copy())
    return np.array(starts, dtype=np.int64), np.array(means)


def lai_robbins_constant(means: FloatArray) -> float:
    """``sum over suboptimal arms of gap / KL(mu_a, mu*)`` for Bernoulli arms.

    Any uniformly good policy has regret at least this times ``ln T`` as ``T`` grows.
    Returns inf when the best mean is 1 (the bound degenerates) and 0 with no gaps.
    """
    best = means.max()
    total = 0.0
    for m in means:
        if m < best:
            if best >= 1.0:
                return float("inf")
            p = min(max(m, 1e-15), 1 - 1e-15)
            kl = p * np.log(p / best) + (1 - p) * np.log((1 - p) / (1 - best))
            total += (best - m) / kl
    return total


def _grid(horizon: int, points: int = 200) -> NDArray[np.int64]:
    g = np.unique(np.linspace(1, horizon, min(points, horizon)).round().astype(np.int64))
    return g


class _Arrivals:
    """Observations waiting for their arrival step: a calendar of ``window`` dense slots.

    Slot ``s % window`` holds, per (run, arm), the count, sum and sum of squares of the
    observations arriving at step ``s``. One step's decisions touch distinct (run, arm)
    cells, so a plain fancy-indexed add is exact.
    """

    MAX_BYTES = 2 * 1024**3

    def __init__(self, runs: int, arms: int, window: int) -> None:
        self.window = window + 1
        size = runs * arms
        if 3 * 8 * self.window * size > self.MAX_BYTES:
            raise ValueError(
                f"the delay calendar needs {3 * 8 * self.window * size / 1e9:.1f} GB; "
                "lower runs, wait_steps or the delay"
            )
        self.cells = np.zeros((3, self.window, size))

    def push(self, steps: NDArray[np.int64], flat: NDArray[np.int64], reward: FloatArray) -> None:
        slot = steps % self.window
        self.cells[0, slot, flat] += 1.0
        self.cells[1, slot, flat] += reward
        self.cells[2, slot, flat] += reward * reward

    def pop(self, step: int) -> FloatArray:
        """``(3, runs * arms)`` arrivals of ``step``; the slot is cleared for reuse."""
        slot = step % self.window
        out = self.cells[:, slot].copy()
        self.cells[:, slot] = 0.0
        return out


def simulate_policy(
    sc: Scenario,
    entry: ScenarioPolicy,
    index: int,
    progress: Progress | None = None,
    policy: Policy | None = None,
) -> PolicyResult:
    """Run one policy of a scenario over all runs; deterministic for the scenario's seed.

    ``index`` (the policy's position in the scenario) seeds the policy's own generator;
    ``policy`` replaces the one built from ``entry`` (tests use it to watch decisions).
    """
    if policy is None:
        policy = entry.policy.build()
    runs, horizon, k = sc.runs, sc.horizon, len(sc.arms)
    rng = np.random.default_rng([sc.seed, 1, index])  # the policy's own randomness
    env = np.random.default_rng([sc.seed, 0])  # common random numbers for every policy
    starts, means_by_phase = mean_schedule(sc)
    sds = np.array([a.reward.sd if isinstance(a.reward, GaussianArm) else 0.0 for a in sc.arms])
    rows = np.arange(runs)
    row_offset = rows * k

    count = np.zeros((runs, k))
    total = np.zeros((runs, k))
    # rewards of 0 or 1 are their own squares: one array serves as both sums
    binary = sc.bernoulli and sc.default_reward in (0.0, 1.0)
    total_sq = total if binary else np.zeros((runs, k))
    seen = ArmStats(count, total, total_sq)
    if sc.sync_every > 1:
        seen = ArmStats(count.copy(), total.copy(), total_sq.copy())

    delayed = not (sc.delay.kind == "none" and sc.missing_rate == 0.0)
    # an observation arrives at most wait_steps after its decision (later ones are lost)
    arrivals = _Arrivals(runs, k, sc.wait_steps) if delayed else None

    grid = _grid(horizon)
    regret = np.zeros(runs)
    regret_at = np.zeros((len(grid), runs))
    share_counts = np.zeros((len(grid), k))
    last10_from = horizon - max(1, horizon // 10)
    best_last10 = 0.0
    g = 0
    phase = 0
    means = means_by_phase[0]
    best_arm = int(means.argmax())
    gaps = means.max() - means
    commit = entry.commit_after

    t0 = time.perf_counter()
    for t in range(horizon):
        if phase + 1 < len(starts) and t == starts[phase + 1]:
            phase += 1
            means = means_by_phase[phase]
            best_arm = int(means.argmax())
            gaps = means.max() - means
        # 1. decide
        if commit is not None and t >= commit:
            with np.errstate(invalid="ignore", divide="ignore"):
                observed = np.where(seen.count > 0, seen.total / seen.count, -np.inf)
            arms = observed.argmax(axis=1)
        else:
            arms = policy.select(seen, rng, propensity=False).arms
        # 2. environment
        if sds.any():
            reward = means[arms] + sds[arms] * env.standard_normal(runs)
        else:
            reward = (env.random(runs) < means[arms]).astype(np.float64)
        regret += gaps[arms]
        share_counts[g] += np.bincount(arms, minlength=k)
        if t >= last10_from:
            best_last10 += float(np.count_nonzero(arms == best_arm))
        # 3-4. feedback
        flat = row_offset + arms
        if arrivals is None:
            count.ravel()[flat] += 1.0
            total.ravel()[flat] += reward
            if not binary:
                total_sq.ravel()[flat] += reward * reward
        else:
            _queue_feedback(sc, env, arrivals, t, flat, reward)
            got = arrivals.pop(t)
            count.ravel()[:] += got[0]
            total.ravel()[:] += got[1]
            if not binary:
                total_sq.ravel()[:] += got[2]
        if sc.sync_every > 1 and (t + 1) % sc.sync_every == 0:
            np.copyto(seen.count, count)
            np.copyto(seen.total, total)
            np.copyto(seen.total_sq, total_sq)
        if t + 1 == grid[g]:
            regret_at[g] = regret
            g += 1
            if progress is not None:
                progress(t + 1)
    seconds = time.perf_counter() - t0

    widths = np.diff(np.concatenate([[0], grid]))[:, None] * runs
    return PolicyResult(
        label=entry.name,
        kind=entry.policy.kind,
        grid=grid,
        regret_mean=regret_at.mean(axis=1),
        regret_se=regret_at.std(axis=1, ddof=1) / np.sqrt(runs)
        if runs > 1
        else np.zeros(len(grid)),
        share=share_counts / widths,
        final_regret=regret.copy(),
        best_arm_share_last10=best_last10 / ((horizon - last10_from) * runs),
        seconds=seconds,
    )


def _queue_feedback(
    sc: Scenario,
    env: np.random.Generator,
    arrivals: _Arrivals,
    t: int,
    flat: NDArray[np.int64],
    reward: FloatArray,
) -> None:
    runs = len(flat)
    if isinstance(sc.delay, FixedDelay):
        delay = np.full(runs, sc.delay.steps, dtype=np.int64)
    elif isinstance(sc.delay, ExponentialDelay):
        delay = np.floor(env.exponential(sc.delay.mean_steps, runs)).astype(np.int64)
    else:
        delay = np.zeros(runs, dtype=np.int64)
    lost = delay > sc.wait_steps
    if sc.missing_rate > 0:
        lost |= env.random(runs) < sc.missing_rate
    if not lost.any():
        arrivals.push(t + delay, flat, reward)
        return
    kept = ~lost
    arrivals.push(t + delay[kept], flat[kept], reward[kept])
    if sc.on_expiry == "default":
        n_lost = int(lost.sum())
        steps = np.full(n_lost, t + sc.wait_steps, dtype=np.int64)
        arrivals.push(steps, flat[lost], np.full(n_lost, sc.default_reward))
