"""The simulated world: true means over time (drift), reward draws, gaps, the lower bound.

The simulator's :class:`Environment` is the only holder of the common random numbers: the
reward of step ``t`` (and, through :attr:`Environment.rng`, its delay and loss) comes
from a generator seeded by the scenario alone, so every policy meets the same luck.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from numpy.typing import NDArray

from bandit_serve.policies import kl_bernoulli
from bandit_serve.simulation.scenario import GaussianArm, Scenario

__all__ = ["Environment", "lai_robbins_constant", "mean_schedule"]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


def mean_schedule(sc: Scenario) -> tuple[IntArray, FloatArray]:
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
    worse = means[means < best]
    if worse.size == 0:
        return 0.0
    if best >= 1.0:
        return float("inf")
    terms = (best - worse) / kl_bernoulli(worse, np.full_like(worse, best))
    return float(sum(terms, 0.0))  # in arm order, one term at a time


class Environment:
    """True means per drift phase, the best arm and the gaps in force, and reward draws.

    :meth:`phases` walks the horizon phase by phase; while a phase's steps run,
    :attr:`means`, :attr:`best_arm` and :attr:`gaps` are those of the phase.
    """

    def __init__(self, sc: Scenario) -> None:
        self.runs = sc.runs
        self.rng = np.random.default_rng([sc.seed, 0])  # common random numbers
        starts, self._means = mean_schedule(sc)
        stops = [*starts[1:].tolist(), sc.horizon]
        self._bounds = list(zip(starts.tolist(), stops, strict=True))
        gaussian = any(isinstance(a.reward, GaussianArm) for a in sc.arms)
        self._sd = (
            np.array([a.reward.sd if isinstance(a.reward, GaussianArm) else 0.0 for a in sc.arms])
            if gaussian
            else None
        )
        self._enter(0)

    def _enter(self, phase: int) -> None:
        self.means: FloatArray = self._means[phase]
        self.best_arm = int(self.means.argmax())
        self.gaps: FloatArray = self.means.max() - self.means

    def phases(self) -> Iterator[range]:
        """The steps of each drift phase in turn, the phase's means in force meanwhile."""
        for phase, (start, stop) in enumerate(self._bounds):
            self._enter(phase)
            yield range(start, stop)

    def rewards(self, arms: IntArray) -> FloatArray:
        """One reward per run for the chosen arms (one common random number per run)."""
        if self._sd is not None:
            return self.means[arms] + self._sd[arms] * self.rng.standard_normal(self.runs)
        return (self.rng.random(self.runs) < self.means[arms]).astype(np.float64)
