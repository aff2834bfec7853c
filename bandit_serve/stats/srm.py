"""Sample-ratio mismatch: are the logged assignment counts what the allocation implies?

A chi-square goodness-of-fit test of observed counts against expected counts. For a
fixed split the expected counts are the configured weights times the total; for a
bandit they are the sums of the logged propensities (each decision adds the policy's
probability of every arm). A tiny p-value (below 0.001 by convention) means decisions
were lost or duplicated somewhere in the logging pipeline, and no result should be read.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

__all__ = ["SRM_THRESHOLD", "srm_test"]

SRM_THRESHOLD = 0.001


def srm_test(observed: ArrayLike, expected: ArrayLike) -> tuple[float, float]:
    """``(chi2, p_value)``; ``expected`` is rescaled to the observed total."""
    o = np.asarray(observed, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    keep = e > 0
    if o[~keep].sum() > 0:
        return float("inf"), 0.0  # an arm that should get nothing got something
    o, e = o[keep], e[keep]
    if len(o) < 2 or o.sum() == 0:
        return 0.0, 1.0
    res = stats.chisquare(o, e * o.sum() / e.sum())
    return float(res.statistic), float(res.pvalue)
