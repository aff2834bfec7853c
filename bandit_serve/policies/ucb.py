"""Upper confidence bound policies: UCB1 and KL-UCB (Bernoulli)."""

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

__all__ = ["KLUCB", "UCB1", "kl_bernoulli", "kl_ucb_index", "ucb1_index"]

_EPS = 1e-15


def ucb1_index(stats: ArmStats, alpha: float = 2.0) -> FloatArray:
    """UCB1 index ``mean + sqrt(alpha ln t / n)``; ``t`` is the row's total count.

    Arms without a reward score +inf, so every arm is tried first.
    """
    n = stats.count
    log_t = np.log(np.maximum(row_sums(n), 1.0))[:, None] * alpha
    # (total + sqrt(alpha ln t n)) / n = mean + sqrt(alpha ln t / n); +inf where n = 0
    numerator = stats.total + np.sqrt(log_t * n)
    if n.size and n.min() > 0:  # every arm seen: a plain division
        return np.asarray(numerator / n, dtype=np.float64)
    idx = np.full(n.shape, np.inf)
    np.divide(numerator, n, out=idx, where=n > 0)
    return idx


def kl_bernoulli(p: FloatArray, q: FloatArray) -> FloatArray:
    """Kullback-Leibler divergence between Bernoulli(p) and Bernoulli(q), elementwise."""
    p = np.clip(p, 0.0, 1.0)
    q = np.clip(q, _EPS, 1.0 - _EPS)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(p > 0, p * np.log(p / q), 0.0)
        b = np.where(p < 1, (1 - p) * np.log((1 - p) / (1 - q)), 0.0)
    return np.asarray(a + b, dtype=np.float64)


def kl_ucb_index(stats: ArmStats, c: float = 0.0, iterations: int = 12) -> FloatArray:
    """KL-UCB index: the largest ``q >= mean`` with ``n kl(mean, q) <= ln t + c ln ln t``.

    Solved by Newton's method in ``y = -ln(1 - q)``, where the constraint is convex and
    increasing, started from an upper bound so that the iterates decrease monotonically
    to the root. Arms without a reward score +inf.
    """
    n = stats.count
    log_t = np.log(np.maximum(row_sums(n), 1.0))[:, None]
    budget = log_t + (c * np.log(np.maximum(log_t, 1.0)) if c else 0.0)
    seen = n > 0
    n_safe = np.where(seen, n, 1.0)
    p = np.clip(np.where(seen, stats.total / n_safe, 0.0), 0.0, 1.0)
    rhs = budget / n_safe  # kl(p, q) must stay below this
    # Upper bounds of the root: kl >= (1-p) y - ln 2, and Pinsker kl >= 2 (q-p)^2.
    one_minus_p = np.maximum(1.0 - p, _EPS)
    y_bound = (rhs + np.log(2.0)) / one_minus_p
    q_pinsker = p + np.sqrt(rhs / 2.0)
    y_pinsker = np.where(q_pinsker < 1.0, -np.log1p(-np.minimum(q_pinsker, 1 - _EPS)), np.inf)
    y = np.minimum(y_bound, y_pinsker)
    # kl(p, q) written in y, exact even where q rounds to 1 in floating point.
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy_part = np.where(p > 0, p * np.log(p), 0.0) + np.where(
            p < 1, (1 - p) * np.log1p(-np.minimum(p, 1.0 - _EPS)), 0.0
        )
    with np.errstate(divide="ignore", invalid="ignore"):  # rows with t = 1 give y = 0
        for _ in range(iterations):
            q = -np.expm1(-y)
            log_q = np.log1p(-np.exp(-y))
            f = entropy_part - p * log_q + (1 - p) * y - rhs
            slope = (q - p) / np.maximum(q, _EPS)
            y = y - np.where(slope > 0, f / np.maximum(slope, _EPS), 0.0)
    q = np.clip(-np.expm1(-y), p, 1.0)
    q = np.where(p >= 1.0, 1.0, q)
    q = np.where(rhs <= 0, p, q)
    return np.where(seen, q, np.inf)


class UCB1(Policy):
    """UCB1 (Auer et al. 2002) for rewards in [0, 1]; ties break at random.

    Examples
    --------
    >>> import numpy as np
    >>> from bandit_serve.policies import UCB1, ArmStats
    >>> stats = ArmStats.from_arrays(count=[10, 0, 10], total=[5, 0, 2])
    >>> int(UCB1().select(stats, np.random.default_rng(1)).arms[0])  # the unseen arm
    1
    """

    kind: ClassVar[str] = "ucb1"
    reward_kinds: ClassVar[frozenset[str]] = frozenset({"bernoulli", "bounded"})
    unit_interval: ClassVar[bool] = True

    def __init__(self, *, alpha: float = 2.0, min_share: float = 0.0) -> None:
        super().__init__(min_share=min_share)
        if not alpha > 0:
            raise PolicyInputError(f"UCB1 alpha must be > 0; got {alpha}.")
        self.alpha = float(alpha)

    def _probabilities(self, stats: ArmStats, rng: np.random.Generator) -> FloatArray:
        return tie_share(ucb1_index(stats, self.alpha))

    def _choose(self, stats: ArmStats, rng: np.random.Generator) -> IntArray:
        return random_argmax(ucb1_index(stats, self.alpha), rng)


class KLUCB(Policy):
    """KL-UCB (Garivier & Cappé 2011) for Bernoulli rewards; ``c`` = 0 is the usual choice.

    Examples
    --------
    >>> import numpy as np
    >>> from bandit_serve.policies import KLUCB, ArmStats, kl_ucb_index
    >>> stats = ArmStats.from_arrays(count=[20, 200], total=[10, 110])
    >>> kl_ucb_index(stats).round(3)  # the less-tried arm has the larger index
    array([[0.823, 0.662]])
    >>> int(KLUCB().select(stats, np.random.default_rng(0)).arms[0])
    0
    """

    kind: ClassVar[str] = "kl_ucb"
    reward_kinds: ClassVar[frozenset[str]] = frozenset({"bernoulli"})
    unit_interval: ClassVar[bool] = True

    def __init__(self, *, c: float = 0.0, min_share: float = 0.0) -> None:
        super().__init__(min_share=min_share)
        if c < 0:
            raise PolicyInputError(f"KL-UCB c must be >= 0; got {c}.")
        self.c = float(c)

    def _probabilities(self, stats: ArmStats, rng: np.random.Generator) -> FloatArray:
        return tie_share(kl_ucb_index(stats, self.c))

    def _choose(self, stats: ArmStats, rng: np.random.Generator) -> IntArray:
        return random_argmax(kl_ucb_index(stats, self.c), rng)
