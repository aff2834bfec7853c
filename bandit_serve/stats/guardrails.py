"""Guardrails: one-sided anytime-valid tests of an arm against the baseline (or a ceiling).

The service checks every few seconds, for days, whether a non-baseline arm violates a
guardrail, and rolls it back when one does. Each test below is a mixture likelihood
ratio ``Lambda``, a nonnegative (super)martingale under its null hypothesis (exactly for
the ceiling test, approximately for the others: each section says why), so by Ville's
inequality ``P(Lambda ever reaches 1 / alpha) <= alpha``: looking after every call or
once a day gives the same guarantee. The p-value ``min(1, 1 / Lambda)`` is reported; a violation is
``p_value <= alpha``. ``alpha`` is the level of one test: split an experiment's level
over its rules with :func:`split_alpha` (Bonferroni). A test never reports a violation
while the arm or the baseline has fewer than ``min_calls`` calls, nor when the estimate
is on the null side (both then report ``p_value = 1``). The tests are stateless: the
p-value is that of the current look, not the running minimum, which is what a caller
that rolls back at the first violation needs.

Every function is vectorized over leading axes (one row per arm, or per simulated
experiment) and returns a :class:`GuardrailTest` of arrays.

:func:`error_rate_excess` -- H0: ``p_arm - p_base <= max_increase``.
    Statistic ``d = p_arm_hat - p_base_hat - max_increase``. Mixture SPRT (Johari et
    al. 2017, as :mod:`.sequential`) with a one-sided mixing distribution: half-normal
    ``N(0, tau^2)`` restricted to positive effects, ``tau = max_increase``, closed form
    ``Lambda = 2 sqrt(V/(V+tau^2)) exp(tau^2 d^2 / (2V(V+tau^2))) Phi(tau d /
    sqrt(V(V+tau^2)))``. Each component is a (Gaussian) likelihood ratio of an effect
    above the margin, a supermartingale under every effect at or below it, so the
    composite null is covered; the half-normal doubles ``Lambda`` over the two-sided
    mixture of :mod:`.sequential`. Two scales are mixed (:func:`two_scale_log_lr`):
    ``tau`` with weight 3/4 and ``10 tau`` with weight 1/4, so that an error rate many
    times the margin (a version failing one call in five) is caught after about a
    hundred calls rather than the few hundred the narrow mixture alone needs. The
    variance ``V`` is the larger of two plug-ins: the Wald variance at the smoothed
    rates ``(x + 0.5) / (n + 1)`` (never zero) and the
    variance at the rates restricted to the null boundary ``p_arm = p_base +
    max_increase`` (the Farrington-Manning maximum-likelihood fit, a closed-form cubic
    root). The restricted one matters for rare errors: when the baseline has, by
    chance, few errors, its Wald variance is too small, and the Wald test alone rolled
    back 0.9% of arms sitting exactly at the margin (1% vs 3%, 90% of the traffic on
    the arm) at a level of 0.25%; the restricted variance alone rolled back 0.31% with
    10% of the traffic on the arm; the larger of the two stayed at or below 0.09% for
    every split and baseline rate simulated (0, 1% and 30%, 20,000 runs each).
    Approximate: the normal approximation and plug-in variances are asymptotically
    valid; ``tests/test_guardrail_stats.py`` checks the level at the boundary for three
    traffic splits. An exact test (universal inference: Jeffreys mixtures of both rates
    against the restricted maximum likelihood) is valid in finite samples but pays for
    the unknown baseline rate: it rolled back a 1% -> 6% arm within 3,000 calls in 93%
    of runs (median 1,800 calls), against 99.9% (median 1,100) here, short of the 95%
    the guardrail must reach, so it was not used.

:func:`latency_ceiling` -- H0: ``P(latency > max_seconds) <= 1 - q`` (the arm's
    q-quantile is at most ``max_seconds``). ``S`` = calls in bins whose lower edge is at
    least ``max_seconds`` (:func:`.histogram.count_at_least`: each of them is certainly
    slower, so ``S`` never overcounts), ``n`` = calls. ``Lambda`` is the Bernoulli
    likelihood ratio of ``theta`` against ``theta0 = 1 - q`` mixed over a Beta prior
    truncated to ``theta in (theta0, 1]`` (:func:`bernoulli_mixture_log_lr`). For every
    ``theta > theta0`` the ratio is a supermartingale under every true rate
    ``theta' <= theta0``, so the test is EXACT for the composite null, in finite samples
    and under continuous monitoring; the binning only makes it conservative. Prior: a
    mixture, weights 3/4 and 1/4, of (:func:`tail_prior`) ``Beta(1, (1 - theta0) /
    theta0)``, the Beta with ``a = 1`` and mean ``theta0``, truncated (its excess over
    ``theta0`` is close to exponential with scale ``theta0``, i.e. tails 1.5 to 4 times
    heavier than allowed, the range a guardrail exists to catch) and the uniform on
    ``(theta0, 1]`` (an arm many times slower than allowed, nearly every call over the
    threshold, is caught within a few calls instead of waiting for the first
    component; the mixture costs at most ``log 4/3`` of evidence where the first
    component alone would do: with 8 histogram bins per doubling, a 2x slower arm
    within 2,000 calls in 92.4% of runs with it alone, 91-92% with the mixture; no other
    prior gave more than 92.2%). Closed form with ``betaln`` and the regularized
    incomplete beta ``betaincc``, in log space (``n = 10^7`` is fine).

:func:`latency_ratio` -- "the arm's q-quantile is more than ``max_ratio`` times the
    baseline's". The threshold is ``c = max_ratio * quantile_upper(base, q)``, ``S`` and
    ``n`` as above for the arm. If the baseline's quantile were known, H0 would be
    ``P(arm > c) <= 1 - q`` and the exact test above would apply; it is estimated, which
    the anytime guarantee does not cover: with the point null ``theta0 = 1 - q`` the
    simulation rolled back 1.2-1.6% of arms sitting exactly at the boundary (true p99
    exactly 1.5 times the baseline's, equal traffic) and 2.9% with 90% of the traffic
    on the arm (even with the baseline's quantile ignored until it rested on 10 tail
    calls), at a level of 0.25%. So the denominator replaces the point null by the
    baseline's sampling distribution of the arm's exceedance probability: at the
    boundary (the arm's latency distributed as ``max_ratio`` times the baseline's)
    ``P(arm > c) = P(base > e)`` where ``e = quantile_upper(base, q)`` is the upper edge
    of the bin holding the quantile; with ``m`` baseline calls at or below ``e``, the
    tail mass above the m-th order statistic of ``n_b`` calls is ``Beta(n_b - m + 1,
    m)``, and ``P(base > e)`` is at most that. The null likelihood of the arm's count is
    then the Beta-binomial ``B(S + n_b - m + 1, n - S + m) / B(n_b - m + 1, m)`` (the
    numerator keeps the truncated prior of the ceiling test). It tends to the point
    null as the baseline grows, costs power only while the baseline's quantile is
    uncertain, and adapts to any traffic split. Approximate: the Beta law is exact at
    one look for a fixed rank, while here the rank is that of the edge, and over looks
    the baseline grows and the edge moves; at the boundary
    the simulation rolled back at most 0.03% of arms (8 bins per doubling, 10,000 runs
    for each of three traffic splits; 0 of 1,000 at 32 per doubling). What it costs: a
    distribution twice as slow (lognormal, sigma 0.5, equal traffic) is rolled back
    within 2,000 calls in 97% of runs (99.8% within 3,000) where the point null
    reaches more. The histogram's resolution is the rest of the cost: the arm's count
    starts at the bin edge above ``c`` and the baseline's quantile is its bin's upper
    edge, so with 8 bins per doubling (the count starting 1.54 times the baseline's
    edge) the same test reached only 92% within 2,000 calls; hence 32 per doubling.
    Narrowing the null does not stay valid: with the Beta's parameters doubled (8 bins:
    96% within 2,000 calls) 0.78% of boundary arms with 90% of the traffic were rolled
    back, and with them times 4, 0.44% with equal traffic and 4.4% with 90% on the arm.
    Where the level does not hold: the null assumes ``P(arm > max_ratio * x) <= P(base
    > x)`` for ``x`` near the baseline's quantile, true when the arm's latency is a
    scaled copy of the baseline's (the rate is then free of the shape: 0-0.05% for
    sigma 1.0 and a Weibull baseline, 8 bins) or has a heavier tail, not when its tail
    is lighter: an arm with p99 exactly 1.5 times the baseline's and sigma 0.25
    (against 0.5) was rolled back in 6.6% of runs with equal traffic and 13.9% with 90%
    on the arm (1,000 runs each; with 8 bins per doubling 1.3% and 3.6%: the finer bins
    buy the power with this). The error is on the safe side (the arm leaves traffic).
    Taking the baseline's quantile at a rank ``z`` standard errors higher trades one
    for the other (z = 0.5: 3.4% / 7.7% and 95.4% power; z = 1: 1.9% / 4.8% and 93.6%).
    A test valid for every shape must first prove where the baseline's quantile lies
    (an intersection-union test, or an exact two-sample e-process on a predictable
    edge); with 8 bins those caught the 2x arm within 2,000 calls in 88% of runs or
    less.

:func:`reward_decrease` -- H0: ``mean_base - mean_arm <= max_decrease``. The same
    one-sided mixture SPRT on ``d = (mean_base - mean_arm) - max_decrease`` with the
    Welch variance ``var_arm / n_arm + var_base / n_base``, ``tau = max_decrease``. Each
    arm's variance is ``(SS + tau^2) / n`` (``SS`` the sum of squared deviations): the
    sample variance with one pseudo-observation ``tau`` away from the mean, so constant
    rewards do not give a zero variance. Approximate (normal approximation, plug-in
    variance), as the mSPRT of :mod:`.sequential`.

Examples
--------
An arm whose error rate went from 1% to 6% after 2,000 calls to each arm, against a
guardrail "at most 2 points more errors than the baseline" at level 0.0025:

>>> import numpy as np
>>> from bandit_serve.stats.guardrails import error_rate_excess
>>> rng = np.random.default_rng(0)
>>> arm_errors, base_errors = rng.binomial(2000, 0.06), rng.binomial(2000, 0.01)
>>> t = error_rate_excess(2000, arm_errors, 2000, base_errors, 0.02, 0.0025, 200)
>>> bool(t.violated), float(t.estimate), float(t.reference)
(True, 0.0545, 0.0065)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special

from bandit_serve.stats import histogram

__all__ = [
    "GuardrailTest",
    "bernoulli_mixture_log_lr",
    "error_rate_excess",
    "latency_ceiling",
    "latency_ratio",
    "normal_mixture_log_lr",
    "reward_decrease",
    "split_alpha",
    "tail_prior",
    "two_scale_log_lr",
]

FloatArray = NDArray[np.float64]
UNIFORM_SHARE = 0.25  # of the tail tests' prior: uniform on (theta0, 1]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]


@dataclass(frozen=True)
class GuardrailTest:
    """The outcome of one guardrail test, elementwise over the batch axes.

    Attributes
    ----------
    violated : bool array
        ``p_value <= alpha`` (never with fewer than ``min_calls`` calls on either side).
    p_value : float array
        Always-valid p-value ``min(1, 1 / Lambda)``; 1 where the estimate is on the null
        side or there are too few calls.
    estimate : float array
        The arm's value of the metric (error rate, q-quantile latency, mean reward);
        NaN without calls.
    reference : float array
        The baseline's value (error rate, q-quantile, mean) or the ceiling.
    n : int array
        The arm's sample size that the test counted.
    """

    violated: BoolArray
    p_value: FloatArray
    estimate: FloatArray
    reference: FloatArray
    n: IntArray


def _f(x: ArrayLike) -> FloatArray:
    return np.asarray(x, dtype=np.float64)


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1); got {alpha}")


def _check_q(q: float) -> None:
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1); got {q}")


def split_alpha(alpha: float, n_rules: int) -> float:
    """Bonferroni: the level of each of ``n_rules`` tests that share ``alpha``.

    >>> split_alpha(0.01, 4)
    0.0025
    """
    _check_alpha(alpha)
    if n_rules < 1:
        raise ValueError(f"n_rules must be >= 1; got {n_rules}")
    return alpha / n_rules


def normal_mixture_log_lr(effect: ArrayLike, variance: ArrayLike, tau: float) -> FloatArray:
    """Log of the one-sided (half-normal) mixture SPRT statistic.

    For an estimate ``effect ~ N(theta, variance)`` and the null ``theta <= 0``,
    ``Lambda = integral_0^inf N(effect; theta, V) / N(effect; 0, V) dHalfNormal(theta;
    tau)``, which is
    ``2 sqrt(V/(V+tau^2)) exp(tau^2 effect^2 / (2V(V+tau^2))) Phi(tau effect /
    sqrt(V(V+tau^2)))``.

    Parameters
    ----------
    effect, variance : array_like
        The estimate (shifted so that the null boundary is 0) and its variance (> 0).
    tau : float
        Scale of the half-normal mixing distribution (> 0).

    Returns
    -------
    ndarray
        ``log Lambda``.
    """
    if not tau > 0:
        raise ValueError(f"tau must be > 0; got {tau}")
    d, v = _f(effect), _f(variance)
    t2 = tau * tau
    s = v + t2
    log_lr = (
        0.5 * np.log(v / s)
        + t2 * d * d / (2 * v * s)
        + np.log(2.0)
        + special.log_ndtr(tau * d / np.sqrt(v * s))
    )
    return np.asarray(log_lr, dtype=np.float64)


WIDE_FACTOR = 10.0  # the second mixing scale of the normal tests, in units of tau
WIDE_SHARE = 0.25  # its weight


def two_scale_log_lr(effect: ArrayLike, variance: ArrayLike, tau: float) -> FloatArray:
    """Log of the normal-mixture statistic mixed over two half-normal scales: ``tau``
    (weight 3/4: power near the margin) and ``WIDE_FACTOR * tau`` (weight 1/4: an effect
    many times the margin is caught within a few hundred calls, where the narrow mixture
    alone waits for the variance to shrink below ``tau^2``). A mixture of
    supermartingales is one; the cost near the margin is ``log 4/3`` of evidence.
    """
    narrow = normal_mixture_log_lr(effect, variance, tau)
    wide = normal_mixture_log_lr(effect, variance, WIDE_FACTOR * tau)
    return np.asarray(
        np.logaddexp(np.log1p(-WIDE_SHARE) + narrow, np.log(WIDE_SHARE) + wide), dtype=np.float64
    )


def tail_prior(theta0: float) -> tuple[float, float]:
    """The Beta ``(a, b)`` that, truncated to ``(theta0, 1]``, mixes the tail tests.

    ``Beta(1, (1 - theta0) / theta0)``: ``a = 1`` and mean ``theta0``; truncated, its
    excess over ``theta0`` is close to exponential with scale ``theta0``.
    """
    if not 0.0 < theta0 < 1.0:
        raise ValueError(f"theta0 must be in (0, 1); got {theta0}")
    return 1.0, (1.0 - theta0) / theta0


def bernoulli_mixture_log_lr(
    successes: ArrayLike,
    n: ArrayLike,
    theta0: float,
    null_beta: tuple[ArrayLike, ArrayLike] | None = None,
) -> FloatArray:
    """Log of the truncated-Beta mixture likelihood ratio of ``n`` Bernoulli trials.

    ``Lambda = integral_{theta0}^1 theta^S (1 - theta)^(n - S) dPi(theta) / L0`` with
    ``Pi`` the mixture of the :func:`tail_prior` (weight ``1 - UNIFORM_SHARE``) and the
    uniform distribution (``UNIFORM_SHARE``), both truncated to ``(theta0, 1]``. The
    denominator ``L0`` is
    the point null ``theta0^S (1 - theta0)^(n - S)`` (a supermartingale under every rate
    ``<= theta0``), or, with ``null_beta = (a0, b0)``, the Beta-binomial marginal
    ``B(S + a0, n - S + b0) / B(a0, b0)`` of a rate drawn from ``Beta(a0, b0)``. Closed
    form (``betaln``, ``betaincc``) in log space; ``-inf`` where the posterior has no
    mass above ``theta0`` in double precision (far on the null side).

    Parameters
    ----------
    successes, n : array_like
        Counts (broadcast together; ``0 <= successes <= n``).
    theta0 : float
        The null rate, in (0, 1).
    null_beta : pair of array_like, optional
        Parameters of the Beta null (broadcast with the counts).

    Returns
    -------
    ndarray
        ``log Lambda``.
    """
    s, m = _f(successes), _f(n)
    f = m - s

    def log_marginal(a: float, b: float) -> FloatArray:
        with np.errstate(divide="ignore"):
            return np.asarray(
                special.betaln(a + s, b + f)
                - special.betaln(a, b)
                + np.log(special.betaincc(a + s, b + f, theta0))
                - np.log(special.betaincc(a, b, theta0)),
                dtype=np.float64,
            )

    # most of the prior near theta0 (power for tails a few times too heavy), the rest
    # uniform on (theta0, 1] (an arm far slower than allowed is caught at once, even
    # while the baseline's quantile is still uncertain); a mixture of supermartingales
    # is one
    log_num = np.logaddexp(
        np.log1p(-UNIFORM_SHARE) + log_marginal(*tail_prior(theta0)),
        np.log(UNIFORM_SHARE) + log_marginal(1.0, 1.0),
    )
    if null_beta is None:
        log_den = s * np.log(theta0) + f * np.log1p(-theta0)
    else:
        a0, b0 = _f(null_beta[0]), _f(null_beta[1])
        log_den = special.betaln(s + a0, f + b0) - special.betaln(a0, b0)
    return np.asarray(log_num - log_den, dtype=np.float64)


def _result(
    log_lr: FloatArray,
    testable: BoolArray,
    alpha: float,
    estimate: FloatArray,
    reference: FloatArray,
    n: FloatArray,
) -> GuardrailTest:
    with np.errstate(over="ignore"):
        p = np.where(testable, np.minimum(1.0, np.exp(-np.where(testable, log_lr, 0.0))), 1.0)
    p = np.where(np.isnan(p), 1.0, p)
    return GuardrailTest(
        violated=np.asarray(p <= alpha, dtype=np.bool_),
        p_value=np.asarray(p, dtype=np.float64),
        estimate=np.asarray(estimate, dtype=np.float64),
        reference=np.asarray(reference, dtype=np.float64),
        n=np.asarray(n, dtype=np.int64),
    )


def _ratio(x: FloatArray, n: FloatArray) -> FloatArray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(np.where(n > 0, x / n, np.nan), dtype=np.float64)


def _restricted_rates(
    xa: FloatArray, na: FloatArray, xb: FloatArray, nb: FloatArray, delta: float
) -> tuple[FloatArray, FloatArray]:
    """Maximum-likelihood ``(p_arm, p_base)`` subject to ``p_arm = p_base + delta``.

    Farrington & Manning (1990): the root of the score equation, a cubic, in
    trigonometric form. ``na`` and ``nb`` must be positive.
    """
    p1, p2 = xa / na, xb / nb
    th = nb / na
    a = 1.0 + th
    b = -(1.0 + th + p1 + th * p2 + delta * (th + 2.0))
    c = delta * delta + delta * (2.0 * p1 + th + 1.0) + p1 + th * p2
    d = -p1 * delta * (1.0 + delta)
    v = b**3 / (27.0 * a**3) - b * c / (6.0 * a * a) + d / (2.0 * a)
    u = np.sign(v) * np.sqrt(np.maximum(b * b / (9.0 * a * a) - c / (3.0 * a), 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        cos_arg = np.clip(np.where(u != 0, v / u**3, -1.0), -1.0, 1.0)
    w = (np.pi + np.arccos(cos_arg)) / 3.0
    arm = np.clip(2.0 * u * np.cos(w) - b / (3.0 * a), delta, 1.0)
    return arm, arm - delta


def error_rate_excess(
    arm_calls: ArrayLike,
    arm_errors: ArrayLike,
    base_calls: ArrayLike,
    base_errors: ArrayLike,
    max_increase: float,
    alpha: float,
    min_calls: int,
) -> GuardrailTest:
    """Is the arm's error rate more than ``max_increase`` above the baseline's?

    H0: ``p_arm - p_base <= max_increase``; a violation is confident evidence above.
    One-sided mixture SPRT (see the module docstring), ``tau = max_increase``.

    Parameters
    ----------
    arm_calls, arm_errors, base_calls, base_errors : array_like
        Cumulative counts, broadcast together.
    max_increase : float
        Allowed increase of the error rate, an absolute difference in (0, 1).
    alpha : float
        Level of this test.
    min_calls : int
        No violation while either side has fewer calls.

    Returns
    -------
    GuardrailTest
        ``estimate`` and ``reference`` are the arm's and the baseline's error rates.
    """
    _check_alpha(alpha)
    if not 0.0 < max_increase < 1.0:
        raise ValueError(f"max_increase must be in (0, 1); got {max_increase}")
    na, xa, nb, xb = np.broadcast_arrays(
        _f(arm_calls), _f(arm_errors), _f(base_calls), _f(base_errors)
    )
    pa, pb = _ratio(xa, na), _ratio(xb, nb)
    d = pa - pb - max_increase
    na1, nb1 = np.maximum(na, 1.0), np.maximum(nb, 1.0)
    sa, sb = (xa + 0.5) / (na + 1.0), (xb + 0.5) / (nb + 1.0)
    v_wald = sa * (1.0 - sa) / na1 + sb * (1.0 - sb) / nb1
    ra, rb = _restricted_rates(xa, na1, xb, nb1, max_increase)
    v_null = ra * (1.0 - ra) / na1 + rb * (1.0 - rb) / nb1
    v = np.maximum(v_wald, v_null)
    testable = (na >= min_calls) & (nb >= min_calls) & (d > 0)
    log_lr = two_scale_log_lr(np.where(testable, d, 0.0), v, max_increase)
    return _result(log_lr, testable, alpha, pa, pb, na)


def _tail_counts(hist: FloatArray, threshold: FloatArray) -> tuple[FloatArray, FloatArray]:
    return hist.sum(axis=-1), histogram.count_at_least(hist, threshold)


def latency_ceiling(
    hist: ArrayLike, q: float, max_seconds: float, alpha: float, min_calls: int
) -> GuardrailTest:
    """Is the arm's q-quantile latency above ``max_seconds``? (Exact.)

    H0: ``P(latency > max_seconds) <= 1 - q``. Truncated-Beta Bernoulli mixture
    martingale on the calls certainly slower than ``max_seconds`` (module docstring).

    Parameters
    ----------
    hist : array_like, shape (..., NBINS)
        The arm's latency histogram (:mod:`.histogram`).
    q : float
        The quantile, in (0, 1) (0.99 for p99).
    max_seconds : float
        The ceiling.
    alpha : float
        Level of this test.
    min_calls : int
        No violation with fewer calls.

    Returns
    -------
    GuardrailTest
        ``estimate`` is the arm's :func:`.histogram.quantile_upper`, ``reference`` the
        ceiling.
    """
    _check_alpha(alpha)
    _check_q(q)
    h = _f(hist)
    n, s = _tail_counts(h, _f(max_seconds))
    theta0 = 1.0 - q
    testable = (n >= min_calls) & (s > theta0 * n)
    log_lr = bernoulli_mixture_log_lr(np.where(testable, s, n), n, theta0)
    ceiling = np.full(n.shape, float(max_seconds))
    return _result(log_lr, testable, alpha, histogram.quantile_upper(h, q), ceiling, n)


def latency_ratio(
    arm_hist: ArrayLike,
    base_hist: ArrayLike,
    q: float,
    max_ratio: float,
    alpha: float,
    min_calls: int,
) -> GuardrailTest:
    """Is the arm's q-quantile latency more than ``max_ratio`` times the baseline's?

    Threshold ``c = max_ratio * quantile_upper(base_hist, q)``; the arm's calls
    certainly slower than ``c`` are tested against the baseline's sampling distribution
    of the exceedance probability (a Beta-binomial null, module docstring).

    Parameters
    ----------
    arm_hist, base_hist : array_like, shape (..., NBINS)
        Latency histograms, broadcast together (one baseline for many arms is fine).
    q : float
        The quantile, in (0, 1).
    max_ratio : float
        Allowed ratio of the arm's quantile to the baseline's (> 0).
    alpha : float
        Level of this test.
    min_calls : int
        No violation while either side has fewer calls.

    Returns
    -------
    GuardrailTest
        ``estimate`` and ``reference`` are the arm's and the baseline's
        :func:`.histogram.quantile_upper`.
    """
    _check_alpha(alpha)
    _check_q(q)
    if not max_ratio > 0:
        raise ValueError(f"max_ratio must be > 0; got {max_ratio}")
    ah, bh = np.broadcast_arrays(_f(arm_hist), _f(base_hist))
    if bh.shape[-1:] != (histogram.NBINS,):
        raise ValueError(f"histograms must have shape (..., {histogram.NBINS}); got {bh.shape}")
    cum = np.cumsum(bh, axis=-1)
    nb = cum[..., -1]
    j = histogram._bin_of_rank(cum, histogram._rank(q, nb))
    base_q = np.where(nb > 0, histogram.upper_edges()[j], np.nan)
    below = np.take_along_axis(cum, j[..., None], axis=-1)[..., 0]  # m: calls <= edge
    with np.errstate(over="ignore"):
        c = np.where(nb > 0, max_ratio * base_q, np.inf)
    na, s = _tail_counts(ah, c)
    theta0 = 1.0 - q
    testable = (na >= min_calls) & (nb >= min_calls) & (s > theta0 * na)
    null_beta = (np.maximum(nb - below + 1.0, 1.0), np.maximum(below, 1.0))
    log_lr = bernoulli_mixture_log_lr(np.where(testable, s, na), na, theta0, null_beta)
    return _result(log_lr, testable, alpha, histogram.quantile_upper(ah, q), base_q, na)


def reward_decrease(
    arm_n: ArrayLike,
    arm_sum: ArrayLike,
    arm_sumsq: ArrayLike,
    base_n: ArrayLike,
    base_sum: ArrayLike,
    base_sumsq: ArrayLike,
    max_decrease: float,
    alpha: float,
    min_calls: int,
) -> GuardrailTest:
    """Is the arm's mean reward more than ``max_decrease`` below the baseline's?

    H0: ``mean_base - mean_arm <= max_decrease``. One-sided mixture SPRT with the Welch
    variance, ``tau = max_decrease`` (module docstring).

    Parameters
    ----------
    arm_n, arm_sum, arm_sumsq, base_n, base_sum, base_sumsq : array_like
        Count, sum and sum of squares of the rewards on each side, broadcast together.
    max_decrease : float
        Allowed decrease of the mean, in reward units (> 0).
    alpha : float
        Level of this test.
    min_calls : int
        No violation while either side has fewer rewards.

    Returns
    -------
    GuardrailTest
        ``estimate`` and ``reference`` are the arm's and the baseline's mean rewards.
    """
    _check_alpha(alpha)
    if not max_decrease > 0:
        raise ValueError(f"max_decrease must be > 0; got {max_decrease}")
    na, sa, qa, nb, sb, qb = np.broadcast_arrays(
        _f(arm_n), _f(arm_sum), _f(arm_sumsq), _f(base_n), _f(base_sum), _f(base_sumsq)
    )
    ma, mb = _ratio(sa, na), _ratio(sb, nb)
    na1, nb1 = np.maximum(na, 1.0), np.maximum(nb, 1.0)
    t2 = max_decrease * max_decrease
    var_a = (np.maximum(qa - sa * sa / na1, 0.0) + t2) / na1
    var_b = (np.maximum(qb - sb * sb / nb1, 0.0) + t2) / nb1
    v = var_a / na1 + var_b / nb1
    d = mb - ma - max_decrease
    testable = (na >= min_calls) & (nb >= min_calls) & (d > 0)
    log_lr = two_scale_log_lr(np.where(testable, d, 0.0), v, max_decrease)
    return _result(log_lr, testable, alpha, ma, mb, na)
