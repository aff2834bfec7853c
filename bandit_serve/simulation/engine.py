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

The parts: :class:`~bandit_serve.simulation.environment.Environment` (means, drift,
rewards), :class:`_Feedback` (steps 3-4), :class:`_Statistics` (what the policy sees, and
when it is refreshed) and :class:`_Curves` (regret, shares); :func:`simulate_policy` runs
them in turn.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from bandit_serve.policies import ArmStats, Policy
from bandit_serve.policies.base import random_argmax
from bandit_serve.simulation.environment import Environment, lai_robbins_constant, mean_schedule
from bandit_serve.simulation.scenario import (
    ExponentialDelay,
    FixedDelay,
    Scenario,
    ScenarioPolicy,
)

__all__ = ["PolicyResult", "lai_robbins_constant", "mean_schedule", "simulate_policy"]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
Progress = Callable[[int], None]


@dataclass(frozen=True)
class PolicyResult:
    """What one policy did over R runs. Curves are on ``grid`` (decision counts)."""

    label: str
    kind: str
    grid: IntArray
    regret_mean: FloatArray  # mean cumulative regret at each grid point
    regret_se: FloatArray  # its standard error across runs
    share: FloatArray  # (len(grid), K) traffic share of each arm in each grid interval
    final_regret: FloatArray  # (R,) cumulative regret of every run at the horizon
    best_arm_share_last10: float
    seconds: float

    @property
    def decisions_per_second(self) -> float:
        return float(self.grid[-1] * len(self.final_regret) / max(self.seconds, 1e-9))


def _grid(horizon: int, points: int = 200) -> IntArray:
    g = np.unique(np.linspace(1, horizon, min(points, horizon)).round().astype(np.int64))
    return g


class _Curves:
    """Cumulative regret on the grid, arm shares per grid interval, best arm's last-10% share."""

    def __init__(self, horizon: int, runs: int, arms: int) -> None:
        self.horizon, self.runs, self.arms = horizon, runs, arms
        self.grid = _grid(horizon)
        self.regret = np.zeros(runs)
        self.regret_at = np.zeros((len(self.grid), runs))
        self.share_counts = np.zeros((len(self.grid), arms))
        self.last10_from = horizon - max(1, horizon // 10)
        self.best_last10 = 0.0
        self._g = 0
        self._next = int(self.grid[0])  # the next grid point, as a plain int

    def record(self, t: int, arms: IntArray, env: Environment) -> bool:
        """Add step ``t``'s decisions; True when ``t + 1`` is a grid point."""
        self.regret += env.gaps[arms]
        self.share_counts[self._g] += np.bincount(arms, minlength=self.arms)
        if t >= self.last10_from:
            self.best_last10 += float(np.count_nonzero(arms == env.best_arm))
        if t + 1 != self._next:
            return False
        self.regret_at[self._g] = self.regret
        self._g += 1
        if self._g < len(self.grid):
            self._next = int(self.grid[self._g])
        return True

    def result(self, entry: ScenarioPolicy, seconds: float) -> PolicyResult:
        runs, grid = self.runs, self.grid
        widths = np.diff(np.concatenate([[0], grid]))[:, None] * runs
        last10 = self.horizon - self.last10_from
        return PolicyResult(
            label=entry.name,
            kind=entry.policy.kind,
            grid=grid,
            regret_mean=self.regret_at.mean(axis=1),
            regret_se=self.regret_at.std(axis=1, ddof=1) / np.sqrt(runs)
            if runs > 1
            else np.zeros(len(grid)),
            share=self.share_counts / widths,
            final_regret=self.regret.copy(),
            best_arm_share_last10=self.best_last10 / (last10 * runs),
            seconds=seconds,
        )


class _Statistics:
    """The true sums of the arrived observations, and the snapshot the policy decides on.

    With ``sync_every == 1`` the policy sees the live count and total; otherwise a copy,
    refreshed after every ``sync_every`` steps. Rewards of 0 or 1 are their own squares:
    then the sum of squares is not accumulated but copied from the total at each sync.
    """

    def __init__(self, runs: int, arms: int, binary: bool, sync_every: int) -> None:
        self.count = np.zeros((runs, arms))
        self.total = np.zeros((runs, arms))
        self.total_sq: FloatArray | None = None if binary else np.zeros((runs, arms))
        self.sync_every = sync_every
        # flat views of the same arrays, for indexing by run * K + arm
        self._count, self._total = self.count.reshape(-1), self.total.reshape(-1)
        self._total_sq = None if self.total_sq is None else self.total_sq.reshape(-1)
        if sync_every == 1:
            sq = np.zeros((runs, arms)) if self.total_sq is None else self.total_sq
            self.seen = ArmStats(self.count, self.total, sq)
        else:
            self.seen = ArmStats.zeros(runs, arms)

    def add(self, flat: IntArray, reward: FloatArray) -> None:
        """One observation for each flat ``run * K + arm`` cell (the cells are distinct)."""
        self._count[flat] += 1.0
        self._total[flat] += reward
        if self._total_sq is not None:
            self._total_sq[flat] += reward * reward

    def add_sums(self, sums: FloatArray) -> None:
        """Dense ``(3, runs * K)`` counts, sums and sums of squares."""
        self._count += sums[0]
        self._total += sums[1]
        if self._total_sq is not None:
            self._total_sq += sums[2]

    def sync(self, t: int) -> None:
        """End of step ``t``: refresh what the policy sees, if it is time to."""
        if self.sync_every == 1:
            if self.total_sq is None:
                np.copyto(self.seen.total_sq, self.total)
        elif (t + 1) % self.sync_every == 0:
            np.copyto(self.seen.count, self.count)
            np.copyto(self.seen.total, self.total)
            np.copyto(self.seen.total_sq, self.total if self.total_sq is None else self.total_sq)


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

    def push(self, steps: IntArray, flat: IntArray, reward: FloatArray) -> None:
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


class _Feedback:
    """Steps 3-4: when each reward reaches the statistics (delay, loss, default reward).

    Without delay or loss a reward is observed in its own step; otherwise it goes through
    the :class:`_Arrivals` calendar. Delays and losses are drawn from the environment's
    generator, right after the rewards (common random numbers too).
    """

    def __init__(self, sc: Scenario, rng: np.random.Generator, stats: _Statistics) -> None:
        self.sc, self.rng, self.stats = sc, rng, stats
        delayed = not (sc.delay.kind == "none" and sc.missing_rate == 0.0)
        # an observation arrives at most wait_steps after its decision (later ones are lost)
        self.arrivals = _Arrivals(sc.runs, len(sc.arms), sc.wait_steps) if delayed else None

    def deliver(self, t: int, flat: IntArray, reward: FloatArray) -> None:
        """Queue the rewards of step ``t`` and add every observation arriving at ``t``."""
        if self.arrivals is None:
            self.stats.add(flat, reward)
            return
        self._queue(self.arrivals, t, flat, reward)
        self.stats.add_sums(self.arrivals.pop(t))

    def _queue(self, arrivals: _Arrivals, t: int, flat: IntArray, reward: FloatArray) -> None:
        sc, rng = self.sc, self.rng
        runs = len(flat)
        if isinstance(sc.delay, FixedDelay):
            delay = np.full(runs, sc.delay.steps, dtype=np.int64)
        elif isinstance(sc.delay, ExponentialDelay):
            delay = np.floor(rng.exponential(sc.delay.mean_steps, runs)).astype(np.int64)
        else:
            delay = np.zeros(runs, dtype=np.int64)
        lost = delay > sc.wait_steps
        if sc.missing_rate > 0:
            lost |= rng.random(runs) < sc.missing_rate
        if not lost.any():
            arrivals.push(t + delay, flat, reward)
            return
        kept = ~lost
        arrivals.push(t + delay[kept], flat[kept], reward[kept])
        if sc.on_expiry == "default":
            n_lost = int(lost.sum())
            steps = np.full(n_lost, t + sc.wait_steps, dtype=np.int64)
            arrivals.push(steps, flat[lost], np.full(n_lost, sc.default_reward))


def _greedy(seen: ArmStats, rng: np.random.Generator) -> IntArray:
    """The arm with the best observed mean (never-observed arms last; random ties)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = np.where(seen.count > 0, seen.total / seen.count, -np.inf)
    return random_argmax(observed, rng)


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
    After ``entry.commit_after`` decisions the runs play the observed best arm instead.
    """
    if policy is None:
        policy = entry.policy.build([a.name for a in sc.arms])
    runs, k = sc.runs, len(sc.arms)
    rng = np.random.default_rng([sc.seed, 1, index])  # the policy's own randomness
    env = Environment(sc)
    binary = sc.bernoulli and sc.default_reward in (0.0, 1.0)
    stats = _Statistics(runs, k, binary, sc.sync_every)
    feedback = _Feedback(sc, env.rng, stats)
    curves = _Curves(sc.horizon, runs, k)
    row_offset = np.arange(runs) * k
    commit = sc.horizon if entry.commit_after is None else entry.commit_after

    seen, select, rewards = stats.seen, policy.select, env.rewards
    record, deliver, sync = curves.record, feedback.deliver, stats.sync

    t0 = time.perf_counter()
    for steps in env.phases():
        for t in steps:
            # 1. decide (after the commit: the observed best arm)
            arms = select(seen, rng, propensity=False).arms if t < commit else _greedy(seen, rng)
            reward = rewards(arms)  # 2. environment
            at_grid = record(t, arms, env)
            deliver(t, row_offset + arms, reward)  # 3-4. feedback
            sync(t)
            if at_grid and progress is not None:
                progress(t + 1)
    return curves.result(entry, time.perf_counter() - t0)
