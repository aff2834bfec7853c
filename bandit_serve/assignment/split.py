"""Arms as consecutive ranges of the 10,000 buckets, and the canary's monotone split.

Every number here is computed in IEEE-754 double precision with the operations in the
order written, then rounded half up with ``floor(x + 0.5)``, so that another language
computing the same expressions gets the same integers (no fused multiply-add).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from functools import lru_cache

from bandit_serve.assignment.hashing import BUCKETS

__all__ = ["arm_for_bucket", "canary_arm", "canary_threshold", "split_boundaries"]


def split_boundaries(weights: Sequence[float]) -> tuple[int, ...]:
    """The end (exclusive) of each arm's bucket range, for arms in config order.

    With ``c[i] = weights[0] + ... + weights[i]`` (summed left to right) and ``c[-1]``
    the total, arm ``i`` owns buckets ``[end[i - 1], end[i])`` (``end[-1]`` read as 0)
    where ``end[i] = floor(10000 * (c[i] / c[-1]) + 0.5)``. The ends never decrease, the
    last is exactly 10,000, a zero weight owns no bucket, and each arm's size is within
    one bucket of ``10000 * weight / total`` (cumulative rounding: the errors do not add
    up).

    Parameters
    ----------
    weights : sequence of float
        One non-negative finite weight per arm, not all zero; they need not sum to 1.

    Returns
    -------
    tuple of int
        ``end[i]`` for each arm.

    Raises
    ------
    ValueError
        No weights, a negative, infinite or NaN weight, or all weights zero.

    Examples
    --------
    >>> split_boundaries([0.1, 0.2, 0.7])
    (1000, 3000, 10000)
    >>> split_boundaries([1, 0, 2])
    (3333, 3333, 10000)
    """
    return _boundaries(tuple(float(w) for w in weights))


@lru_cache(maxsize=256)
def _boundaries(weights: tuple[float, ...]) -> tuple[int, ...]:
    if not weights:
        raise ValueError("At least one weight is needed to split the buckets.")
    bad = [w for w in weights if not (math.isfinite(w) and w >= 0.0)]
    if bad:
        raise ValueError(f"Weights must be finite and >= 0; got {list(weights)}.")
    cumulative: list[float] = []
    total = 0.0
    for w in weights:
        total += w
        cumulative.append(total)
    if not total > 0.0 or not math.isfinite(total):
        raise ValueError(f"Weights must have a finite positive sum; got {list(weights)}.")
    return tuple(math.floor(BUCKETS * (c / total) + 0.5) for c in cumulative)


def arm_for_bucket(bucket: int, weights: Sequence[float]) -> int:
    """The index of the arm that owns ``bucket`` under ``weights`` (see
    :func:`split_boundaries`): the first ``i`` with ``bucket < end[i]``.

    With two arms this is monotone: raising one arm's weight (the other's fixed or
    lowered) only moves buckets to it. With more arms, changing a weight shifts the ranges
    of the arms after it, so units may move between those arms.

    Parameters
    ----------
    bucket : int
        A bucket in ``[0, 10000)`` (:func:`~bandit_serve.assignment.unit_bucket`).
    weights : sequence of float
        As for :func:`split_boundaries`.

    Returns
    -------
    int
        The arm's index into ``weights``; never an arm of zero weight.

    Raises
    ------
    ValueError
        ``bucket`` outside ``[0, 10000)``, or invalid weights.

    Examples
    --------
    >>> [arm_for_bucket(b, [0.25, 0.75]) for b in (0, 2499, 2500, 9999)]
    [0, 0, 1, 1]
    """
    if not 0 <= bucket < BUCKETS:
        raise ValueError(f"A bucket lies in [0, {BUCKETS}); got {bucket}.")
    return bisect_right(split_boundaries(weights), bucket)


def canary_threshold(weight: float) -> int:
    """How many buckets the canary's candidate owns at ``weight``: buckets
    ``[0, floor(10000 * weight + 0.5))``.

    Non-decreasing in ``weight``, so raising the weight only adds buckets to the
    candidate. A weight with at most four decimals gets exactly ``10000 * weight``
    buckets (``0.57`` gets 5,700 although ``0.57 * 10000`` is ``5699.999999999999``).

    Raises
    ------
    ValueError
        ``weight`` outside ``[0, 1]`` or NaN.

    Examples
    --------
    >>> canary_threshold(0.05), canary_threshold(0.57), canary_threshold(1.0)
    (500, 5700, 10000)
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"A canary weight lies in [0, 1]; got {weight}.")
    return math.floor(BUCKETS * weight + 0.5)


def canary_arm(bucket: int, weight: float) -> bool:
    """Whether ``bucket`` goes to the canary's candidate (``True``) or its baseline.

    The candidate owns the lowest buckets, ``[0, canary_threshold(weight))``: a unit that
    is served the candidate at some weight is served it at every higher weight.

    Parameters
    ----------
    bucket : int
        A bucket in ``[0, 10000)``.
    weight : float
        The candidate's share of traffic, in ``[0, 1]``.

    Returns
    -------
    bool
        ``True`` for the candidate, ``False`` for the baseline.

    Raises
    ------
    ValueError
        ``bucket`` outside ``[0, 10000)`` or ``weight`` outside ``[0, 1]``.

    Examples
    --------
    >>> canary_arm(499, 0.05), canary_arm(500, 0.05), canary_arm(500, 0.25)
    (True, False, True)
    """
    if not 0 <= bucket < BUCKETS:
        raise ValueError(f"A bucket lies in [0, {BUCKETS}); got {bucket}.")
    return bucket < canary_threshold(weight)
