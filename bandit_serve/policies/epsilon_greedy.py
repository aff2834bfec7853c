"""Epsilon-greedy, with a constant or a decaying exploration rate."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from bandit_serve.errors import PolicyInputError
from bandit_serve.policies.base import (
    ArmStats,
    FloatArray,
    IntArray,
    Policy,
    random_argmax,
    row_sums,
    tie_share,
)

__all__ = ["EpsilonGreedy"]


class EpsilonGreedy(Policy):
    """Explore uniformly with probability epsilon, else play the best observed mean.

    Arms without a reward count as best (+inf), so each is tried first; ties break at
    random. With ``decay_after = m`` the rate decays as ``epsilon * min(1, m / t)`` where
    ``t`` is the number of rewards observed so far (the ``c K / (d^2 t)`` schedule of
    Auer et al. 2002 with its constant written as ``epsilon m``). The propensity of arm
    ``a`` is ``eps / K + (1 - eps) [a is greedy] / |greedy set|``, exactly.

    Examples
    --------
    >>> import numpy as np
    >>> from bandit_serve.policies import ArmStats, EpsilonGreedy
    >>> stats = ArmStats.from_arrays(count=[10, 10], total=[2, 6])
    >>> EpsilonGreedy(epsilon=0.2).probabilities(stats, np.random.default_rng(0)).round(3)
    array([[0.1, 0.9]])
    """

    kind: ClassVar[str] = "epsilon_greedy"

    def __init__(
        self, *, epsilon: float = 0.1, decay_after: int | None = None, min_share: float = 0.0
    ) -> None:
        super().__init__(min_share=min_share)
        if not 0.0 <= epsilon <= 1.0:
            raise PolicyInputError(f"epsilon must be in [0, 1]; got {epsilon}.")
        if decay_after is not None and decay_after < 1:
            raise PolicyInputError(f"decay_after must be >= 1; got {decay_after}.")
        self.epsilon = float(epsilon)
        self.decay_after = decay_after

    def rate(self, stats: ArmStats) -> FloatArray:
        """Exploration rate per row, shape ``(B, 1)``."""
        if self.decay_after is None:
            return np.full((stats.shape[0], 1), self.epsilon)
        t = row_sums(stats.count)[:, None]
        return np.asarray(
            self.epsilon * np.minimum(1.0, self.decay_after / np.maximum(t, 1.0)),
            dtype=np.float64,
        )

    @staticmethod
    def _scores(stats: ArmStats) -> FloatArray:
        scores = stats.means()
        if stats.count.size and stats.count.min() == 0:
            scores[stats.count == 0] = np.inf
        return scores

    def _probabilities(self, stats: ArmStats, rng: np.random.Generator) -> FloatArray:
        eps = self.rate(stats)
        k = stats.shape[1]
        return np.asarray(eps / k + (1.0 - eps) * tie_share(self._scores(stats)))

    def _choose(self, stats: ArmStats, rng: np.random.Generator) -> IntArray:
        b, k = stats.shape
        arms = random_argmax(self._scores(stats), rng)
        explore = np.flatnonzero(rng.random(b) < self.rate(stats)[:, 0])
        arms[explore] = rng.integers(0, k, size=len(explore))
        return arms
