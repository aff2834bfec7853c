"""Fixed-horizon tests of one arm against a baseline, from sufficient statistics.

Everything is vectorized: arguments may be numpy arrays (many arms, or many simulated
experiments at once). Valid once, at a sample size fixed in advance: looking repeatedly
and stopping at the first p < alpha inflates the false-positive rate (use
:mod:`bandit_serve.stats.sequential` for that).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

__all__ = ["TestResult", "two_proportion_ztest", "welch_ttest"]

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class TestResult:
    """Effect (treatment minus baseline), its confidence interval, and the p-value."""

    __test__ = False  # not a pytest class

    effect: FloatArray
    ci_low: FloatArray
    ci_high: FloatArray
    p_value: FloatArray
    se: FloatArray


def _f(x: ArrayLike) -> FloatArray:
    return np.asarray(x, dtype=np.float64)


def welch_ttest(
    n1: ArrayLike,
    mean1: ArrayLike,
    var1: ArrayLike,
    n0: ArrayLike,
    mean0: ArrayLike,
    var0: ArrayLike,
    alpha: float = 0.05,
) -> TestResult:
    """Welch's t-test of ``mean1 - mean0`` (unequal variances; sample variances, ddof 1).

    The p-value is scipy's ``ttest_ind_from_stats(..., equal_var=False)``; the interval
    uses the same Welch-Satterthwaite degrees of freedom. Needs n >= 2 in both groups.
    """
    n1, m1, v1, n0, m0, v0 = map(_f, (n1, mean1, var1, n0, mean0, var0))
    a, b = v1 / n1, v0 / n0
    se = np.sqrt(a + b)
    df = (a + b) ** 2 / (a**2 / (n1 - 1) + b**2 / (n0 - 1))
    res = stats.ttest_ind_from_stats(m1, np.sqrt(v1), n1, m0, np.sqrt(v0), n0, equal_var=False)
    effect = m1 - m0
    half = stats.t.ppf(1 - alpha / 2, df) * se
    return TestResult(effect, effect - half, effect + half, _f(res.pvalue), se)


def two_proportion_ztest(
    n1: ArrayLike,
    successes1: ArrayLike,
    n0: ArrayLike,
    successes0: ArrayLike,
    alpha: float = 0.05,
) -> TestResult:
    """Two-proportion z-test of ``p1 - p0``.

    The p-value uses the pooled standard error (statsmodels ``proportions_ztest``); the
    interval the unpooled (Wald) one (statsmodels ``confint_proportions_2indep``,
    ``method="wald"``).
    """
    n1, s1, n0, s0 = map(_f, (n1, successes1, n0, successes0))
    p1, p0 = s1 / n1, s0 / n0
    pooled = (s1 + s0) / (n1 + n0)
    se_pooled = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    effect = p1 - p0
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se_pooled > 0, effect / se_pooled, 0.0)
    p_value = 2 * stats.norm.sf(np.abs(z))
    se = np.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
    half = stats.norm.ppf(1 - alpha / 2) * se
    return TestResult(effect, effect - half, effect + half, _f(p_value), se)
