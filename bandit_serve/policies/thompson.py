"""Thompson sampling: Beta-Bernoulli, and Gaussian with unknown variance."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np

from bandit_serve.errors import PolicyInputError
from bandit_serve.policies.base import ArmStats, FloatArray, IntArray, Policy

__all__ = ["BetaThompson", "GaussianThompson"]

# Monte Carlo propensity estimates are drawn in chunks of at most this many numbers.
_CHUNK_NUMBERS = 4_000_000


def _win_frequencies(
    draw: Callable[[np.random.Generator, int, slice], FloatArray],
    b: int,
    k: int,
    draws: int,
    rng: np.random.Generator,
) -> FloatArray:
    """Share of ``draws`` posterior samples in which each arm has the largest value.

    ``draw(rng, d, rows)`` returns samples of shape ``(rows, d, K)``.
    """
    wins = np.zeros((b, k))
    rows_per_chunk = max(1, _CHUNK_NUMBERS // (draws * k))
    for start in range(0, b, rows_per_chunk):
        rows = slice(start, min(b, start + rows_per_chunk))
        samples = draw(rng, draws, rows)
        best = samples.argmax(axis=2)  # (rows, draws)
        n_rows = best.shape[0]
        flat = best + (np.arange(n_rows) * k)[:, None]
        wins[rows] = np.bincount(flat.ravel(), minlength=n_rows * k).reshape(n_rows, k)
    return wins / draws


class BetaThompson(Policy):
    """Thompson sampling with a Beta(alpha, beta) prior on each arm's mean reward.

    Rewards must lie in [0, 1] (rescale bounded rewards with :meth:`ArmStats.rescaled`);
    a reward ``r`` adds ``r`` to alpha and ``1 - r`` to beta. Propensities are Monte Carlo
    estimates of P(arm has the largest posterior draw) from ``draws`` samples per state.

    Examples
    --------
    >>> import numpy as np
    >>> from bandit_serve.policies import ArmStats, BetaThompson
    >>> stats = ArmStats.from_arrays(count=[100, 100], total=[10, 60])
    >>> d = BetaThompson(draws=1000).select(stats, np.random.default_rng(0))
    >>> int(d.arms[0]), float(d.propensities[0])
    (1, 1.0)
    """

    kind: ClassVar[str] = "thompson"
    reward_kinds: ClassVar[frozenset[str]] = frozenset({"bernoulli", "bounded"})
    unit_interval: ClassVar[bool] = True

    def __init__(
        self, *, alpha: float = 1.0, beta: float = 1.0, draws: int = 1000, min_share: float = 0.0
    ) -> None:
        super().__init__(min_share=min_share)
        if not (alpha > 0 and beta > 0):
            raise PolicyInputError(f"Beta prior needs alpha > 0 and beta > 0; got {alpha}, {beta}.")
        if draws < 1:
            raise PolicyInputError(f"draws must be >= 1; got {draws}.")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.draws = int(draws)

    def posterior(self, stats: ArmStats) -> tuple[FloatArray, FloatArray]:
        """Posterior Beta parameters ``(alpha, beta)``, each ``(B, K)``."""
        a = self.alpha + stats.total
        b = self.beta + stats.count - stats.total
        if np.any(a <= 0) or np.any(b <= 0):
            raise PolicyInputError(
                "Beta posterior parameters must stay positive: rewards must lie in [0, 1]."
            )
        return a, b

    def _probabilities(self, stats: ArmStats, rng: np.random.Generator) -> FloatArray:
        a, b = self.posterior(stats)
        bsz, k = stats.shape

        def draw(g: np.random.Generator, d: int, rows: slice) -> FloatArray:
            ar, br = a[rows, None, :], b[rows, None, :]
            shape = (ar.shape[0], d, k)
            return g.beta(np.broadcast_to(ar, shape), np.broadcast_to(br, shape))

        return _win_frequencies(draw, bsz, k, self.draws, rng)

    def _choose(self, stats: ArmStats, rng: np.random.Generator) -> IntArray:
        a, b = self.posterior(stats)
        return np.asarray(rng.beta(a, b).argmax(axis=1), dtype=np.int64)


class GaussianThompson(Policy):
    """Thompson sampling for real-valued rewards with unknown mean and variance.

    Each arm has a Normal-Inverse-Gamma prior: mean ``mu`` with pseudo-count ``kappa``,
    variance ~ InvGamma(``alpha``, ``beta``). The posterior of an arm's mean is a Student
    t with ``2 alpha_n`` degrees of freedom, location ``mu_n`` and scale
    ``sqrt(beta_n / (alpha_n kappa_n))``, which is what is sampled.

    Examples
    --------
    >>> import numpy as np
    >>> from bandit_serve.policies import ArmStats, GaussianThompson
    >>> stats = ArmStats.from_arrays(count=[50, 50], total=[50, 150], total_sq=[100, 500])
    >>> df, loc, scale = GaussianThompson().posterior(stats)
    >>> loc.round(3)  # posterior means, shrunk a little towards the prior mean 0
    array([[0.98 , 2.941]])
    >>> d = GaussianThompson(draws=2000).select(stats, np.random.default_rng(0))
    >>> int(d.arms[0]), float(d.propensities[0])
    (1, 1.0)
    """

    kind: ClassVar[str] = "gaussian_thompson"

    def __init__(
        self,
        *,
        mu: float = 0.0,
        kappa: float = 1.0,
        alpha: float = 1.0,
        beta: float = 1.0,
        draws: int = 1000,
        min_share: float = 0.0,
    ) -> None:
        super().__init__(min_share=min_share)
        if not (kappa > 0 and alpha > 0 and beta > 0):
            raise PolicyInputError(
                f"Normal-Inverse-Gamma prior needs kappa, alpha, beta > 0; got {kappa}, "
                f"{alpha}, {beta}."
            )
        if draws < 1:
            raise PolicyInputError(f"draws must be >= 1; got {draws}.")
        self.mu = float(mu)
        self.kappa = float(kappa)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.draws = int(draws)

    def posterior(self, stats: ArmStats) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Posterior of each arm's mean as Student t: ``(df, loc, scale)``, each ``(B, K)``."""
        n = stats.count
        mean = np.where(n > 0, stats.total / np.maximum(n, 1), 0.0)
        ss = np.maximum(stats.total_sq - n * mean * mean, 0.0)  # sum of squared deviations
        kappa_n = self.kappa + n
        mu_n = (self.kappa * self.mu + stats.total) / kappa_n
        alpha_n = self.alpha + n / 2
        beta_n = self.beta + 0.5 * ss + self.kappa * n * (mean - self.mu) ** 2 / (2 * kappa_n)
        return 2 * alpha_n, mu_n, np.sqrt(beta_n / (alpha_n * kappa_n))

    def _probabilities(self, stats: ArmStats, rng: np.random.Generator) -> FloatArray:
        df, loc, scale = self.posterior(stats)
        bsz, k = stats.shape

        def draw(g: np.random.Generator, d: int, rows: slice) -> FloatArray:
            shape = (df[rows].shape[0], d, k)
            t = g.standard_t(np.broadcast_to(df[rows, None, :], shape))
            return loc[rows, None, :] + scale[rows, None, :] * t

        return _win_frequencies(draw, bsz, k, self.draws, rng)

    def _choose(self, stats: ArmStats, rng: np.random.Generator) -> IntArray:
        df, loc, scale = self.posterior(stats)
        return np.asarray((loc + scale * rng.standard_t(df)).argmax(axis=1), dtype=np.int64)
