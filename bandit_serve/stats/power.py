"""Power and required sample size per arm (two-sided tests, equal allocation).

Normal approximation, as statsmodels' ``NormalIndPower`` (both tails counted). For means
the standardized effect is ``mde / sd``; for proportions Cohen's ``h = 2 asin(sqrt(p1))
- 2 asin(sqrt(p0))`` with ``p1 = p0 + mde``.
"""

from __future__ import annotations

import math

from scipy import optimize, stats

__all__ = [
    "cohens_h",
    "power_means",
    "power_proportions",
    "sample_size_means",
    "sample_size_proportions",
]


def _power(effect_size: float, n: float, alpha: float) -> float:
    crit = stats.norm.isf(alpha / 2)
    shift = abs(effect_size) * math.sqrt(n / 2)
    return float(stats.norm.sf(crit - shift) + stats.norm.cdf(-crit - shift))


def _solve_n(effect_size: float, alpha: float, power: float) -> float:
    if effect_size == 0:
        raise ValueError("a zero effect needs an infinite sample")
    if not 0 < alpha < 1 or not alpha < power < 1:
        raise ValueError("need 0 < alpha < power < 1")
    guess = 2 * ((stats.norm.isf(alpha / 2) + stats.norm.ppf(power)) / effect_size) ** 2
    return float(
        optimize.brentq(
            lambda n: _power(effect_size, n, alpha) - power,
            1e-9,
            10 * guess + 10,
            xtol=1e-12,
            rtol=1e-14,
        )
    )


def cohens_h(p0: float, p1: float) -> float:
    return 2 * math.asin(math.sqrt(p1)) - 2 * math.asin(math.sqrt(p0))


def power_means(n: float, sd: float, mde: float, alpha: float = 0.05) -> float:
    """Power of a two-sided test with ``n`` per arm to detect a difference ``mde``."""
    return _power(mde / sd, n, alpha)


def sample_size_means(sd: float, mde: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Samples per arm (not rounded) to detect ``mde`` with the given power."""
    return _solve_n(mde / sd, alpha, power)


def power_proportions(n: float, p0: float, mde: float, alpha: float = 0.05) -> float:
    return _power(cohens_h(p0, p0 + mde), n, alpha)


def sample_size_proportions(
    p0: float, mde: float, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Samples per arm to detect a change of ``mde`` from rate ``p0`` (0 < p0 + mde < 1)."""
    if not 0 < p0 < 1 or not 0 < p0 + mde < 1:
        raise ValueError("rates must lie strictly between 0 and 1")
    return _solve_n(cohens_h(p0, p0 + mde), alpha, power)
