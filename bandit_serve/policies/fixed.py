"""Fixed traffic weights: the random split of an A/B test, as a policy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from bandit_serve.errors import PolicyInputError
from bandit_serve.policies.base import ArmStats, FloatArray, IntArray, Policy

__all__ = ["FixedWeights"]


class FixedWeights(Policy):
    """Pick arm ``a`` with probability ``weights[a] / sum(weights)``, ignoring rewards.

    ``weights=None`` splits evenly across however many arms the statistics have.

    Examples
    --------
    >>> import numpy as np
    >>> from bandit_serve.policies import ArmStats, FixedWeights
    >>> FixedWeights(weights=[1, 3]).probabilities(ArmStats.zeros(1, 2), np.random.default_rng(0))
    array([[0.25, 0.75]])
    """

    kind: ClassVar[str] = "fixed"
    adaptive: ClassVar[bool] = False

    def __init__(self, *, weights: Sequence[float] | None = None, min_share: float = 0.0) -> None:
        super().__init__(min_share=min_share)
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)
            if w.ndim != 1 or len(w) == 0 or np.any(w < 0) or not np.isfinite(w).all():
                raise PolicyInputError(f"weights must be finite and >= 0; got {list(weights)}.")
            if w.sum() <= 0:
                raise PolicyInputError("weights must not all be zero.")
            self.weights: FloatArray | None = w / w.sum()
        else:
            self.weights = None

    def restricted(self, arms: Sequence[int]) -> FixedWeights:
        """The weights of the arms kept (an all-zero subset splits evenly)."""
        if self.weights is None:
            return self
        w = self.weights[list(arms)]
        return FixedWeights(weights=w.tolist() if w.sum() > 0 else None, min_share=self.min_share)

    def _weights(self, k: int) -> FloatArray:
        if self.weights is None:
            return np.full(k, 1.0 / k)
        if len(self.weights) != k:
            raise PolicyInputError(f"{len(self.weights)} weights given for {k} arms.")
        return self.weights

    def _probabilities(self, stats: ArmStats, rng: np.random.Generator) -> FloatArray:
        b, k = stats.shape
        return np.broadcast_to(self._weights(k), (b, k)).copy()

    def _choose(self, stats: ArmStats, rng: np.random.Generator) -> IntArray:
        b, k = stats.shape
        return rng.choice(k, size=b, p=self._weights(k)).astype(np.int64)
