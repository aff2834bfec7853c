"""What every policy shares: the arm-statistics arrays, the decision type, the floor.

A policy decides for a batch of B independent states at once. The statistics of K arms
are arrays of shape ``(B, K)``: B simulation runs, or one shared server state broadcast
to B requests (:meth:`ArmStats.broadcast`). Policies are pure: numpy only, and every
random number comes from the ``numpy.random.Generator`` passed in.

Each policy writes two hooks:

``_probabilities(stats, rng)``
    the ``(B, K)`` probability that the policy picks each arm (without the floor). Exact
    for UCB (tie share), epsilon-greedy and fixed weights; a Monte Carlo estimate for
    Thompson sampling.
``_choose(stats, rng)``
    one direct draw per row from the same distribution, without computing it in full
    (fast path for the simulator; by default a draw from ``_probabilities``).

:meth:`Policy.select` adds the per-arm traffic floor to both and returns a
:class:`Decision` whose ``propensities`` are the probabilities of the chosen arms.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from bandit_serve.errors import PolicyInputError

__all__ = [
    "REWARD_KINDS",
    "ArmStats",
    "Decision",
    "FrozenDistribution",
    "Policy",
    "sample_categorical",
]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclass(frozen=True)
class ArmStats:
    """Sufficient statistics of observed rewards, each an array of shape ``(B, K)``.

    ``count`` is the number of rewards observed per arm (decisions still waiting for a
    reward are not in it), ``total`` their sum and ``total_sq`` the sum of their squares.
    """

    count: FloatArray
    total: FloatArray
    total_sq: FloatArray

    @classmethod
    def from_arrays(
        cls, count: ArrayLike, total: ArrayLike, total_sq: ArrayLike | None = None
    ) -> ArmStats:
        """Build statistics from array-likes of shape ``(K,)`` or ``(B, K)``; checks them."""
        c = np.atleast_2d(np.asarray(count, dtype=np.float64))
        s = np.atleast_2d(np.asarray(total, dtype=np.float64))
        q = (
            np.zeros_like(c)
            if total_sq is None
            else np.atleast_2d(np.asarray(total_sq, dtype=np.float64))
        )
        if c.ndim != 2 or c.shape != s.shape or c.shape != q.shape:
            raise PolicyInputError(
                f"count, total and total_sq must share one shape (B, K); got {c.shape}, "
                f"{s.shape} and {q.shape}."
            )
        if c.shape[1] == 0:
            raise PolicyInputError("A policy needs at least one arm; got K = 0.")
        if not (np.all(np.isfinite(c)) and np.all(np.isfinite(s)) and np.all(np.isfinite(q))):
            raise PolicyInputError("Arm statistics must be finite numbers.")
        if np.any(c < 0):
            raise PolicyInputError(f"Reward counts must be >= 0; got {c.min()}.")
        return cls(c, s, q)

    @classmethod
    def zeros(cls, batch: int, arms: int) -> ArmStats:
        """Statistics of ``batch`` states in which no arm has a reward yet."""
        z = np.zeros((batch, arms))
        return cls(z, z.copy(), z.copy())

    @property
    def shape(self) -> tuple[int, int]:
        """``(B, K)``."""
        b, k = self.count.shape
        return b, k

    def broadcast(self, batch: int) -> ArmStats:
        """Repeat a single state (B = 1) for ``batch`` independent requests (no copy)."""
        if self.shape[0] != 1:
            raise PolicyInputError(
                f"Only a single state can be broadcast; got B = {self.shape[0]}."
            )
        shape = (batch, self.shape[1])
        return ArmStats(
            np.broadcast_to(self.count, shape),
            np.broadcast_to(self.total, shape),
            np.broadcast_to(self.total_sq, shape),
        )

    def rescaled(self, low: float, high: float) -> ArmStats:
        """Map rewards from ``[low, high]`` onto ``[0, 1]`` (for Beta and UCB policies)."""
        width = high - low
        total = (self.total - self.count * low) / width
        total_sq = (self.total_sq - 2 * low * self.total + self.count * low * low) / width**2
        return ArmStats(self.count, total, total_sq)

    def means(self) -> FloatArray:
        """Observed mean reward per arm; NaN where an arm has no reward yet."""
        if self.count.size and self.count.min() > 0:  # the common case: a plain division
            return np.asarray(self.total / self.count, dtype=np.float64)
        out = np.full(self.count.shape, np.nan)
        np.divide(self.total, self.count, out=out, where=self.count > 0)
        return out


@dataclass(frozen=True)
class Decision:
    """The chosen arm per row and the probability with which it was chosen."""

    arms: IntArray
    propensities: FloatArray


class FrozenDistribution:
    """A policy's selection distribution for one state, frozen so sampling it is cheap.

    A server replica decides many requests against one snapshot of the arm statistics;
    the distribution is the same for all of them, so it is computed once per snapshot
    (for Thompson sampling: one Monte Carlo estimate) and every request is a categorical
    draw from it. The logged propensity is then exactly the probability used to draw.
    """

    def __init__(self, probabilities: FloatArray) -> None:
        p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
        self.probabilities = p
        self._cdf = np.cumsum(p)

    def sample(self, rng: np.random.Generator, n: int = 1) -> Decision:
        """``n`` independent decisions."""
        u = rng.random(n) * self._cdf[-1]
        arms = np.minimum(np.searchsorted(self._cdf, u, side="right"), len(self._cdf) - 1)
        return Decision(arms.astype(np.int64), self.probabilities[arms])


def sample_categorical(probabilities: FloatArray, rng: np.random.Generator) -> IntArray:
    """Draw one arm per row of a ``(B, K)`` probability matrix (inverse-CDF, vectorized)."""
    cdf = np.cumsum(probabilities, axis=1)
    u = rng.random((probabilities.shape[0], 1)) * cdf[:, -1:]
    arms = (cdf <= u).sum(axis=1)
    return np.asarray(np.minimum(arms, probabilities.shape[1] - 1), dtype=np.int64)


def row_sums(x: FloatArray) -> FloatArray:
    """Sum over the arm axis. A matrix-vector product: much faster than ``sum(axis=1)``
    for short rows (numpy reduces a small last axis slowly)."""
    return np.asarray(x @ np.ones(x.shape[1]), dtype=np.float64)


def random_argmax(scores: FloatArray, rng: np.random.Generator) -> IntArray:
    """Row-wise argmax; ties (including several +inf) break uniformly at random."""
    k = scores.shape[1]
    rows = np.arange(scores.shape[0])
    arms = scores.argmax(axis=1)
    is_best = scores == scores[rows, arms][:, None]
    is_best[rows, arms] = False
    others = np.flatnonzero(is_best)  # maxima besides argmax's pick: the ties
    if others.size:  # only the rows with a tie draw random numbers
        mask = np.zeros(len(arms), dtype=bool)
        mask[others // k] = True
        tied = np.flatnonzero(mask)
        is_best[tied, arms[tied]] = True
        jitter = np.where(is_best[tied], rng.random((len(tied), k)), -1.0)
        arms[tied] = jitter.argmax(axis=1)
    return np.asarray(arms, dtype=np.int64)


def tie_share(scores: FloatArray) -> FloatArray:
    """Probability that a random-tie-breaking argmax picks each arm: 1/|argmax set| or 0."""
    is_best = scores == scores.max(axis=1, keepdims=True)
    return np.asarray(is_best / is_best.sum(axis=1, keepdims=True), dtype=np.float64)


REWARD_KINDS = frozenset({"bernoulli", "bounded", "gaussian"})


class Policy(ABC):
    """Base of every policy: shape checks, the per-arm traffic floor, and :meth:`select`.

    Parameters
    ----------
    min_share:
        Per-arm minimum traffic floor ``f``. The policy's distribution ``p`` is mixed with
        the uniform one: ``(1 - K f) p + f``, so every arm gets at least ``f`` of the
        traffic. Requires ``K f <= 1``.

    Traits (class attributes; the configs, the server and the simulator read them here
    and nowhere else):

    ``kind``
        the name in config files.
    ``reward_kinds``
        the reward kinds (``bernoulli``, ``bounded``, ``gaussian``) the policy can model.
    ``unit_interval``
        the policy's model needs rewards on [0, 1]: bounded rewards are rescaled onto it
        (:meth:`ArmStats.rescaled`) before the policy sees them.
    ``adaptive``
        the allocation depends on observed rewards (a bandit); False for a fixed split,
        whose analysis is then unbiased.
    """

    kind: ClassVar[str]
    reward_kinds: ClassVar[frozenset[str]] = REWARD_KINDS
    unit_interval: ClassVar[bool] = False
    adaptive: ClassVar[bool] = True

    @classmethod
    def fit_problem(cls, reward_kind: str) -> str | None:
        """Why this policy cannot model rewards of ``reward_kind`` (None when it can)."""
        if reward_kind in cls.reward_kinds:
            return None
        if cls.unit_interval and reward_kind == "gaussian":
            return (
                "needs rewards in [0, 1] (bernoulli, or bounded rewards rescaled); "
                "use reward kind bernoulli or bounded, or a policy for gaussian rewards"
            )
        return f"needs reward kind {' or '.join(sorted(cls.reward_kinds))}"

    def __init__(self, *, min_share: float = 0.0) -> None:
        if not 0.0 <= min_share <= 1.0:
            raise PolicyInputError(f"min_share must be in [0, 1]; got {min_share!r}.")
        self.min_share = float(min_share)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"

    # -- hooks -----------------------------------------------------------------------

    @abstractmethod
    def _probabilities(self, stats: ArmStats, rng: np.random.Generator) -> FloatArray:
        """``(B, K)`` selection probabilities of the policy itself (no floor)."""

    def _choose(self, stats: ArmStats, rng: np.random.Generator) -> IntArray:
        """One draw per row from the policy's own distribution (no floor)."""
        return sample_categorical(self._probabilities(stats, rng), rng)

    # -- public ----------------------------------------------------------------------

    def probabilities(self, stats: ArmStats, rng: np.random.Generator) -> FloatArray:
        """``(B, K)`` probability of picking each arm, the floor included."""
        self._check(stats)
        p = self._probabilities(stats, rng)
        return self._mix_floor(p)

    def select(
        self, stats: ArmStats, rng: np.random.Generator, *, propensity: bool = True
    ) -> Decision:
        """Choose one arm per row of ``stats``.

        With ``propensity=True`` the full selection distribution is computed and the arm
        is drawn from it, so the returned propensity is exactly the probability with which
        that arm was drawn. With ``propensity=False`` the policy's fast path draws the arm
        directly and ``propensities`` is NaN (the simulator's mode).
        """
        self._check(stats)
        if propensity:
            p = self.probabilities(stats, rng)
            arms = sample_categorical(p, rng)
            return Decision(arms, p[np.arange(len(arms)), arms])
        arms = self._choose(stats, rng)
        b, k = stats.shape
        if self.min_share > 0.0:
            explore = rng.random(b) < self.min_share * k
            arms = np.where(explore, rng.integers(0, k, size=b), arms)
        return Decision(arms, np.full(b, np.nan))

    def freeze(self, stats: ArmStats, rng: np.random.Generator) -> FrozenDistribution:
        """The selection distribution for one state (B = 1), ready to sample."""
        if stats.shape[0] != 1:
            raise PolicyInputError(f"freeze takes a single state; got B = {stats.shape[0]}.")
        return FrozenDistribution(self.probabilities(stats, rng)[0])

    def restricted(self, arms: Sequence[int]) -> Policy:
        """The policy over a subset of the arms (their indices), as the server routes when
        some arms are rolled back. Most policies read only the statistics they are given
        and return themselves; a policy with per-arm parameters selects them."""
        return self

    # -- helpers ---------------------------------------------------------------------

    def _check(self, stats: ArmStats) -> None:
        k = stats.shape[1]
        if self.min_share * k > 1.0 + 1e-12:
            raise PolicyInputError(
                f"min_share {self.min_share} times {k} arms exceeds 1; lower min_share."
            )

    def _mix_floor(self, p: FloatArray) -> FloatArray:
        if self.min_share == 0.0:
            return p
        k = p.shape[1]
        return np.asarray((1.0 - self.min_share * k) * p + self.min_share, dtype=np.float64)
