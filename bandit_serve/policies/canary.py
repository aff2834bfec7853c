"""A canary: a candidate gets a fixed share of the traffic, the other arms the rest.

The share is the weight of the rollout's current step; the schedule that moves it (steps,
minimum calls and time, promotion, rollback) is the safety plane's
(:mod:`bandit_serve.safety.canary`), not the policy's: the policy only splits.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from bandit_serve.errors import PolicyInputError
from bandit_serve.policies.base import ArmStats, FloatArray, IntArray, Policy

__all__ = ["Canary"]


class Canary(Policy):
    """The candidate (arm index ``candidate``) gets ``weight`` of the traffic; the other
    arms share the rest evenly (a canary has one baseline: ``1 - weight``).

    Examples
    --------
    >>> import numpy as np
    >>> from bandit_serve.policies import ArmStats, Canary
    >>> Canary(candidate=1, weight=0.05).probabilities(ArmStats.zeros(1, 2), None)
    array([[0.95, 0.05]])
    """

    kind: ClassVar[str] = "canary"
    adaptive: ClassVar[bool] = False

    def __init__(self, *, candidate: int = 1, weight: float = 0.05, min_share: float = 0.0) -> None:
        super().__init__(min_share=min_share)
        if not 0.0 <= weight <= 1.0:
            raise PolicyInputError(f"weight must be in [0, 1]; got {weight}.")
        if candidate < 0:
            raise PolicyInputError(f"candidate must be an arm index; got {candidate}.")
        self.candidate = int(candidate)
        self.weight = float(weight)

    def _split(self, k: int) -> FloatArray:
        if self.candidate >= k:
            raise PolicyInputError(f"candidate {self.candidate} is not one of {k} arms.")
        if k == 1:
            return np.ones(1)
        p = np.full(k, (1.0 - self.weight) / (k - 1))
        p[self.candidate] = self.weight
        return p

    def _probabilities(self, stats: ArmStats, rng: np.random.Generator | None) -> FloatArray:
        b, k = stats.shape
        return np.broadcast_to(self._split(k), (b, k)).copy()

    def _choose(self, stats: ArmStats, rng: np.random.Generator) -> IntArray:
        b, k = stats.shape
        return rng.choice(k, size=b, p=self._split(k)).astype(np.int64)
