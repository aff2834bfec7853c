"""Guardrail statistics: the histogram is exact, the martingales are what they claim, and
seeded simulations of 1,000 experiments checked every 100 calls keep false rollbacks
within alpha (A/A and at the boundary of every null) while catching real regressions.

Run with ``-s`` to see the measured rates and the detection figures quoted in the README.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import numpy as np
import pytest
from scipy import integrate, optimize, stats

from bandit_serve.config import LATENCY_RESOLUTION
from bandit_serve.stats import guardrails as g
from bandit_serve.stats.guardrails import (
    GuardrailTest,
    bernoulli_mixture_log_lr,
    error_rate_excess,
    latency_ceiling,
    latency_ratio,
    normal_mixture_log_lr,
    reward_decrease,
    split_alpha,
    tail_prior,
    two_scale_log_lr,
)
from bandit_serve.stats.histogram import (
    BINS_PER_DOUBLING,
    BOUNDS,
    LOW,
    NBINS,
    RESOLUTION,
    bin_index,
    bin_indices,
    count_at_least,
    cumulative_at,
    lower_edges,
    prometheus_edges,
    quantile_interpolated,
    quantile_upper,
    upper_edges,
)

# -- the histogram --------------------------------------------------------------------


def test_edges_and_constants() -> None:
    assert NBINS == 642 and len(BOUNDS) == 641 and BINS_PER_DOUBLING == 32
    assert abs(RESOLUTION - 1.02190) < 1e-5
    assert RESOLUTION == LATENCY_RESOLUTION  # the config's copy (it cannot import this)
    assert BOUNDS[0] == LOW == 1e-4
    assert BOUNDS[-1] == pytest.approx(LOW * 2**20, rel=1e-15)  # 104.9 s
    assert np.allclose(BOUNDS[1:] / BOUNDS[:-1], RESOLUTION, rtol=1e-13)
    lo, hi = lower_edges(), upper_edges()
    assert lo.shape == hi.shape == (NBINS,)
    assert lo[0] == 0.0 and hi[-1] == np.inf
    assert np.array_equal(lo[1:], hi[:-1]) and np.array_equal(hi[:-1], BOUNDS)
    lo[0] = 5.0  # a copy: the module's edges are not touched
    assert lower_edges()[0] == 0.0


def test_bin_index_is_exact_at_and_around_every_edge() -> None:
    for i, edge in enumerate(BOUNDS):
        e = float(edge)
        assert bin_index(e) == i  # closed on the right, as Prometheus le buckets
        assert bin_index(math.nextafter(e, math.inf)) == i + 1
        assert bin_index(math.nextafter(e, 0.0)) == i
    # the edge a caller computes by the documented formula is the same float
    assert all(bin_index(LOW * 2 ** (i / 32)) == i for i in range(641))
    assert bin_index(0.0) == 0 and bin_index(-3.0) == 0  # negative: clock skew, bin 0
    assert bin_index(math.inf) == NBINS - 1 and bin_index(1e9) == NBINS - 1
    assert bin_index(math.nan) == NBINS - 1  # unmeasured counts as slowest
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.lognormal(np.log(0.02), 3.0, 5000),
            BOUNDS,
            np.nextafter(BOUNDS, np.inf),
            np.nextafter(BOUNDS, 0.0),
            [0.0, -1.0, np.inf, np.nan],
        ]
    )
    assert np.array_equal(bin_indices(x), [bin_index(float(v)) for v in x])
    assert bin_indices(x[:5000].reshape(2, -1)).shape == (2, 2500)


def sample_counts(x: np.ndarray) -> np.ndarray:
    return np.bincount(bin_indices(x), minlength=NBINS)


@pytest.mark.parametrize("q", [0.0, 0.01, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0])
def test_quantiles_against_numpy_on_samples(q: float) -> None:
    rng = np.random.default_rng(int(q * 1000))
    edges_lo, edges_hi = lower_edges(), upper_edges()
    for n, sigma in ((1, 0.5), (7, 0.5), (200, 0.5), (1000, 1.0), (20_000, 2.0)):
        x = rng.lognormal(np.log(0.02), sigma, n)
        counts = sample_counts(x)
        # the sample quantile at rank ceil(q n) (numpy's inverted_cdf)
        xq = float(np.quantile(x, q, method="inverted_cdf"))
        b = bin_index(xq)
        up = float(quantile_upper(counts, q))
        assert up == edges_hi[b] >= xq  # conservative: never below the sample quantile
        mid = float(quantile_interpolated(counts, q))
        assert edges_lo[b] <= mid <= edges_hi[b]
        if n >= 1000 and 0.01 <= q <= 0.99:  # between the order statistics numpy
            lo_os = float(np.quantile(x, q, method="lower"))  # interpolates, give or
            hi_os = float(np.quantile(x, q, method="higher"))  # take a bin
            assert lo_os / RESOLUTION <= mid <= hi_os * RESOLUTION


def test_quantiles_batch_empty_and_extreme_bins() -> None:
    counts = np.zeros((3, NBINS))
    counts[1, 0] = 10  # everything in bin 0: linear interpolation from 0
    counts[2, -1] = 4  # everything in the overflow bin
    assert np.isnan(quantile_upper(counts, 0.5)[0])
    assert np.isnan(quantile_interpolated(counts, 0.5)[0])
    assert quantile_upper(counts, 0.5)[1] == BOUNDS[0]
    assert quantile_interpolated(counts, 0.5)[1] == pytest.approx(BOUNDS[0] / 2)
    assert quantile_upper(counts, 0.5)[2] == np.inf
    assert quantile_interpolated(counts, 0.5)[2] == BOUNDS[-1]
    with pytest.raises(ValueError, match="q must be"):
        quantile_upper(counts, 1.5)
    with pytest.raises(ValueError, match="shape"):
        quantile_upper(np.ones(10), 0.5)
    # q * n computed in floating point lands a hair above an integer: the rank holds
    assert 0.07 * 100 > 7  # 7.000000000000001
    one = np.zeros(NBINS)
    one[[10, 20]] = [7, 93]  # 100 calls: the 0.07-quantile is the 7th value, in bin 10
    assert quantile_upper(one, 0.07) == BOUNDS[10]
    assert quantile_upper(one, 0.0701) == BOUNDS[20]


def brute_count_at_least(counts: np.ndarray, threshold: float) -> float:
    lo = lower_edges()
    return float(sum(c for c, edge in zip(counts, lo, strict=True) if edge >= threshold))


def test_count_at_least_is_exact_on_constructed_histograms() -> None:
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 1000, (4, NBINS)).astype(float)
    thresholds = [-1.0, 0.0, 1e-5, *BOUNDS[[0, 1, 50, 100, 159, 160]], 0.25, 1e3, np.inf]
    thresholds += [float(np.nextafter(BOUNDS[50], 0.0)), float(np.nextafter(BOUNDS[50], 1.0))]
    for t in thresholds:
        got = count_at_least(counts, t)
        assert got.shape == (4,)
        for row in range(4):
            assert got[row] == brute_count_at_least(counts[row], t)
    assert np.all(count_at_least(counts, np.nan) == 0)
    # vectorized threshold: one per row, and one histogram against many thresholds
    t_rows = np.array([0.0, 0.01, 0.25, np.inf])
    got = count_at_least(counts, t_rows)
    assert got.tolist() == [brute_count_at_least(c, t) for c, t in zip(counts, t_rows, strict=True)]
    many = count_at_least(counts[0], t_rows)
    assert many.tolist() == [brute_count_at_least(counts[0], t) for t in t_rows]
    grid = count_at_least(counts[:, None, :], t_rows[None, :])
    assert grid.shape == (4, 4) and np.array_equal(np.diagonal(grid), got)


def test_count_at_least_never_overcounts_the_calls_above_the_threshold() -> None:
    rng = np.random.default_rng(4)
    x = rng.lognormal(np.log(0.02), 1.0, 50_000)
    counts = sample_counts(x)
    for t in (0.001, 0.0199, 0.05, 0.25, 1.0):
        assert count_at_least(counts, t) <= (x > t).sum()
    for i in (60, 90, 120):  # at an edge it is exact
        assert count_at_least(counts, BOUNDS[i]) == (x > BOUNDS[i]).sum()


def test_prometheus_cumulative_counts_are_exact() -> None:
    edges = prometheus_edges()
    assert len(edges) == 21 and edges[0] == 1e-4
    assert np.array_equal(edges, LOW * 2.0 ** np.arange(21))
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.lognormal(np.log(0.05), 2.0, 30_000), edges, [0.0, np.inf]])
    counts = sample_counts(x)
    cum = cumulative_at(counts, edges)
    assert cum.tolist() == [int((x <= e).sum()) for e in edges]
    assert cumulative_at(np.stack([counts, 2 * counts]), edges).shape == (2, 21)
    assert cumulative_at(counts, [np.inf])[0] == counts.sum()


# -- the martingales, against numerical integration -------------------------------------


def log_lr_by_quad(s: int, n: int, theta0: float, null: tuple[float, float] | None) -> float:
    """The mixture ratio by numerical integration: the prior mixes the truncated tail
    prior (3/4) and the uniform on (theta0, 1] (1/4)."""
    a, b = tail_prior(theta0)
    mode = min(max(s / n, theta0), 1.0)

    def log_lik(t: float) -> float:
        return s * math.log(t) + (n - s) * math.log1p(-t)

    shift = log_lik(mode) if mode < 1 else 0.0  # integrate exp(log_lik - shift)

    def prior(t: float) -> float:
        tail = float(stats.beta.pdf(t, a, b)) / float(stats.beta.sf(theta0, a, b))
        return 0.75 * tail + 0.25 / (1.0 - theta0)

    def integrand(t: float) -> float:
        return math.exp(log_lik(t) - shift) * prior(t)

    num, _ = integrate.quad(integrand, theta0, 1.0, points=[mode], limit=500, epsabs=0)
    log_num = math.log(num) + shift
    if null is None:
        return log_num - log_lik(theta0)
    den, _ = integrate.quad(
        lambda t: math.exp(log_lik(t) - shift) * stats.beta.pdf(t, *null),
        0.0,
        1.0,
        points=[mode, null[0] / sum(null)],
        limit=500,
        epsabs=0,
    )
    return log_num - math.log(den) - shift


@pytest.mark.parametrize(
    ("s", "n", "theta0"),
    [(5, 200, 0.01), (12, 300, 0.01), (40, 1000, 0.01), (30, 100, 0.05), (70, 100, 0.5)],
)
def test_bernoulli_mixture_matches_numerical_integration(s: int, n: int, theta0: float) -> None:
    got = float(bernoulli_mixture_log_lr(s, n, theta0))
    assert got == pytest.approx(log_lr_by_quad(s, n, theta0, None), rel=1e-6, abs=1e-8)
    null = (n * theta0 * 0.8 + 1.0, n * (1 - theta0))  # a Beta-binomial null
    got_beta = float(bernoulli_mixture_log_lr(s, n, theta0, null))
    assert got_beta == pytest.approx(log_lr_by_quad(s, n, theta0, null), rel=1e-6, abs=1e-8)


def test_bernoulli_mixture_is_finite_for_ten_million_calls_and_monotone() -> None:
    n = 10**7
    s = np.array([100_000, 100_500, 101_000, 105_000, 200_000])
    lr = bernoulli_mixture_log_lr(s, n, 0.01)
    assert np.all(np.isfinite(lr)) and np.all(np.diff(lr) > 0)
    assert lr[0] < 0 < lr[-1]
    # far on the null side the mixture has no mass: log Lambda = -inf, p = 1
    assert bernoulli_mixture_log_lr(10, n, 0.01) == -np.inf
    # and at the expected count of the alternative it is huge but finite
    assert 1e3 < bernoulli_mixture_log_lr(0.02 * n, n, 0.01) < 1e6


def test_half_normal_mixture_matches_numerical_integration() -> None:
    for d, v, tau in ((0.03, 1e-4, 0.02), (-0.01, 1e-4, 0.02), (0.2, 0.01, 0.05)):
        sd = math.sqrt(v)
        num, _ = integrate.quad(
            lambda t, d=d, sd=sd, tau=tau: stats.norm.pdf(d, t, sd) * 2 * stats.norm.pdf(t, 0, tau),
            0.0,
            10 * tau + abs(d),
            points=[d] if d > 0 else None,
            limit=200,
        )
        lam = num / stats.norm.pdf(d, 0, sd)
        assert float(normal_mixture_log_lr(d, v, tau)) == pytest.approx(math.log(lam), rel=1e-7)


def test_restricted_rates_are_the_constrained_maximum_likelihood() -> None:
    cases = [(10, 200, 2, 200), (0, 200, 0, 200), (30, 1000, 0, 100), (5, 900, 3, 100)]
    cases += [(1, 200, 5, 200), (60, 1000, 40, 3000), (200, 200, 0, 200)]
    delta = 0.02
    for xa, na, xb, nb in cases:

        def nll(p: float, xa: int = xa, na: int = na, xb: int = xb, nb: int = nb) -> float:
            return -float(stats.binom.logpmf(xa, na, p + delta) + stats.binom.logpmf(xb, nb, p))

        ref = optimize.minimize_scalar(
            nll, bounds=(1e-12, 1 - delta - 1e-12), method="bounded", options={"xatol": 1e-12}
        ).x
        v = [np.array(float(x)) for x in (xa, na, xb, nb)]
        arm, base = g._restricted_rates(v[0], v[1], v[2], v[3], delta)
        assert float(base) == pytest.approx(ref, abs=1e-7)
        assert float(arm) == pytest.approx(ref + delta, abs=1e-7)


# -- the API ---------------------------------------------------------------------------


def lognormal_counts(median: float, sigma: float, n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).lognormal(math.log(median), sigma, n)
    return sample_counts(x).astype(float)


def test_guardrail_api_shapes_min_calls_and_null_side() -> None:
    assert split_alpha(0.01, 4) == 0.0025
    with pytest.raises(ValueError, match="n_rules"):
        split_alpha(0.01, 0)
    # one baseline against 9 arms: the batch axis broadcasts
    base = lognormal_counts(0.02, 0.5, 3000, 1)
    arms = np.stack([lognormal_counts(0.02 * (1 + i / 4), 0.5, 3000, 10 + i) for i in range(9)])
    t = latency_ratio(arms, base, 0.99, 1.5, 0.0025, 200)
    assert isinstance(t, GuardrailTest)
    for field in dataclasses.fields(t):
        assert getattr(t, field.name).shape == (9,)
    assert t.violated.dtype == np.bool_ and t.n.dtype == np.int64
    assert np.all(t.n == 3000) and np.all(t.reference == quantile_upper(base, 0.99))
    assert not t.violated[0] and t.violated[-1]  # A/A, and an arm three times as slow
    assert np.array_equal(t.violated, t.p_value <= 0.0025)
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.n = t.n  # type: ignore[misc]
    # fewer than min_calls on either side: no violation, p = 1
    few = latency_ratio(arms[-1], base, 0.99, 1.5, 0.0025, 5000)
    assert not few.violated and few.p_value == 1.0
    # ceiling: exact counts, estimate and reference
    c = latency_ceiling(arms, 0.99, 0.1, 0.0025, 200)
    assert np.all(c.reference == 0.1) and np.all(c.estimate == quantile_upper(arms, 0.99))
    assert not c.violated[0] and c.violated[-1]
    # error rate: null side and zero calls
    e = error_rate_excess([0, 1000, 1000, 1000], [0, 10, 90, 90], 1000, 10, 0.02, 0.0025, 200)
    assert np.isnan(e.estimate[0]) and not e.violated[0] and e.p_value[0] == 1
    assert e.p_value[1] == 1.0 and e.violated.tolist() == [False, False, True, True]
    # rewards: constant rewards on both sides do not give a zero variance
    r = reward_decrease(500, 500.0, 500.0, 500, 500.0, 500.0, 0.05, 0.0025, 200)
    assert not r.violated and r.p_value == 1.0
    r = reward_decrease(500, 0.0, 0.0, 500, 500.0, 500.0, 0.05, 0.0025, 200)
    assert r.violated and float(r.estimate) == 0.0 and float(r.reference) == 1.0
    with pytest.raises(ValueError, match="alpha"):
        reward_decrease(500, 0.0, 0.0, 500, 1.0, 1.0, 0.05, 0.0, 200)


# -- validation by simulation ----------------------------------------------------------
#
# 1,000 experiments, one look every 100 calls to the arm (with equal traffic, 100 to the
# baseline too) up to 20,000 calls; a rule's false-rollback rate is the share of
# experiments in which it fired at some look. Tolerance: alpha plus three Monte Carlo
# standard errors of a rate alpha over 1,000 experiments (0.0025 + 0.0047).

EXPERIMENTS = 1000
LOOK, LOOKS = 100, 200
ALPHA = split_alpha(0.01, 4)  # experiment alpha 0.01 over 4 rules, as the service does
MIN_CALLS = 200
TOLERANCE = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / EXPERIMENTS)
P99_Z = float(stats.norm.ppf(0.99))

# (arm calls, baseline calls) per look, and the number of looks
EQUAL = (LOOK, LOOK, LOOKS)
ARM_HEAVY = (180, 20, LOOKS)  # the arm gets 90% of the traffic: the noisiest baseline
ARM_LIGHT = (20, 180, LOOKS)  # the arm gets 10%


def rng_for(*key: int) -> np.random.Generator:
    return np.random.default_rng([2024, *key])


def lognormal_bins(median: float, sigma: float) -> np.ndarray:
    """Probability of each histogram bin under a lognormal latency."""
    cdf = stats.lognorm.cdf(upper_edges(), sigma, scale=median)
    return np.asarray(np.diff(np.concatenate([[0.0], cdf])))


def histogram_paths(
    rng: np.random.Generator, probs: np.ndarray, per_look: int, looks: int
) -> Iterator[np.ndarray]:
    """Cumulative histograms ``(EXPERIMENTS, NBINS)`` at each look (one array, updated).

    The calls of each look are multinomial over the bins. To draw only the calls that
    matter, every call at or below the bin ``b0`` holding the 80th percentile is
    counted in ``b0``: the guardrails read the cumulative count up to the p99 bin
    (which lies above ``b0`` unless 99% of at least 200 calls fall below the 80th
    percentile: probability < 1e-15) and the counts above thresholds that lie above
    ``b0`` (1.5 times a p99, or a ceiling above the p80), which lumping leaves exact.
    """
    cdf = np.cumsum(probs)
    b0 = int(np.searchsorted(cdf, 0.8))
    p_tail = float(1.0 - cdf[b0])
    tail_cdf = np.cumsum(probs[b0 + 1 :]) / p_tail
    tail_cdf[-1] = 1.0
    offsets = np.arange(EXPERIMENTS) * NBINS + b0 + 1
    hist = np.zeros((EXPERIMENTS, NBINS))
    for _ in range(looks):
        k = rng.binomial(per_look, p_tail, EXPERIMENTS)
        tail_bins = np.searchsorted(tail_cdf, rng.random(int(k.sum())), side="right")
        flat = np.repeat(offsets, k) + tail_bins
        hist += np.bincount(flat, minlength=EXPERIMENTS * NBINS).reshape(EXPERIMENTS, NBINS)
        hist[:, b0] += per_look - k
        yield hist


def first_violation(violated: np.ndarray) -> np.ndarray:
    """Look (1-based) of the first violation per experiment, inf if none; ``(looks, E)``."""
    fired = violated.any(axis=0)
    return np.where(fired, violated.argmax(axis=0) + 1.0, np.inf)


def errors_run(
    rng: np.random.Generator, p_arm: float, p_base: float, traffic: tuple[int, int, int]
) -> np.ndarray:
    arm_per, base_per, looks = traffic
    xa = rng.binomial(arm_per, p_arm, (looks, EXPERIMENTS)).cumsum(axis=0)
    xb = rng.binomial(base_per, p_base, (looks, EXPERIMENTS)).cumsum(axis=0)
    na = (arm_per * np.arange(1, looks + 1))[:, None]
    nb = (base_per * np.arange(1, looks + 1))[:, None]
    return first_violation(error_rate_excess(na, xa, nb, xb, 0.02, ALPHA, MIN_CALLS).violated)


def rewards_run(
    rng: np.random.Generator, m_arm: float, m_base: float, traffic: tuple[int, int, int]
) -> np.ndarray:
    arm_per, base_per, looks = traffic  # Bernoulli rewards: sum of squares = sum
    sa = rng.binomial(arm_per, m_arm, (looks, EXPERIMENTS)).cumsum(axis=0).astype(float)
    sb = rng.binomial(base_per, m_base, (looks, EXPERIMENTS)).cumsum(axis=0).astype(float)
    na = (arm_per * np.arange(1, looks + 1))[:, None]
    nb = (base_per * np.arange(1, looks + 1))[:, None]
    t = reward_decrease(na, sa, sa, nb, sb, sb, 0.05, ALPHA, MIN_CALLS)
    return first_violation(t.violated)


def ceiling_run(
    rng: np.random.Generator, arm: tuple[float, float], ceilings: tuple[float, ...], looks: int
) -> list[np.ndarray]:
    fired: list[list[np.ndarray]] = [[] for _ in ceilings]
    for h in histogram_paths(rng, lognormal_bins(*arm), LOOK, looks):
        for out, ceiling in zip(fired, ceilings, strict=True):
            out.append(latency_ceiling(h, 0.99, ceiling, ALPHA, MIN_CALLS).violated)
    return [first_violation(np.array(f)) for f in fired]


def latency_run(
    rng: np.random.Generator,
    arm: tuple[float, float],
    base: tuple[float, float],
    traffic: tuple[int, int, int],
    ceiling: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """First violations of the p99 ratio rule (max_ratio 1.5) and of a p99 ceiling."""
    arm_per, base_per, looks = traffic
    ratio, ceil = [], []
    arm_paths = histogram_paths(rng, lognormal_bins(*arm), arm_per, looks)
    base_paths = histogram_paths(rng, lognormal_bins(*base), base_per, looks)
    for ha, hb in zip(arm_paths, base_paths, strict=True):
        ratio.append(latency_ratio(ha, hb, 0.99, 1.5, ALPHA, MIN_CALLS).violated)
        if ceiling is not None:
            ceil.append(latency_ceiling(ha, 0.99, ceiling, ALPHA, MIN_CALLS).violated)
    ceil_first = first_violation(np.array(ceil)) if ceil else np.full(EXPERIMENTS, np.inf)
    return first_violation(np.array(ratio)), ceil_first


def rate(first: np.ndarray) -> float:
    return float(np.isfinite(first).mean())


def check_level(name: str, first: np.ndarray) -> None:
    fired = int(np.isfinite(first).sum())
    r = fired / EXPERIMENTS
    se = math.sqrt(r * (1 - r) / EXPERIMENTS)
    print(f"  {name:<60} {fired:>2}/{EXPERIMENTS} = {r:.4f} (s.e. {se:.4f})")
    assert r <= TOLERANCE, (name, r)


AA_LATENCY = (0.02, 0.5)  # median 20 ms, sigma 0.5: true p99 64 ms
CEILING = 0.25
SPLITS = (("equal", EQUAL), ("arm 90%", ARM_HEAVY), ("arm 10%", ARM_LIGHT))


def test_aa_false_rollbacks_stay_within_alpha_for_every_rule_kind() -> None:
    print(f"\nA/A: false rollbacks of {EXPERIMENTS} experiments (bound {TOLERANCE:.4f})")
    first = errors_run(rng_for(1), 0.01, 0.01, EQUAL)
    check_level("error rate: both 1%, max_increase 0.02", first)
    check_level(
        "reward: Bernoulli 0.5 both, max_decrease 0.05", rewards_run(rng_for(2), 0.5, 0.5, EQUAL)
    )
    ratio, ceil = latency_run(rng_for(3), AA_LATENCY, AA_LATENCY, EQUAL, ceiling=CEILING)
    check_level("latency p99 ratio 1.5: both lognormal(20 ms, 0.5)", ratio)
    check_level("latency p99 ceiling 0.25 s: the arm's true p99 is 64 ms", ceil)


def test_false_rollbacks_at_the_boundary_of_every_null() -> None:
    print(f"\nAt the null boundary: false rollbacks of {EXPERIMENTS} experiments")
    for i, (split, traffic) in enumerate(SPLITS):
        first = errors_run(rng_for(10, i), 0.03, 0.01, traffic)
        check_level(f"error rate 1% vs 3% (difference = max_increase), {split}", first)
        first = rewards_run(rng_for(20, i), 0.45, 0.5, traffic)
        check_level(f"reward 0.5 vs 0.45 (difference = max_decrease), {split}", first)
    # A true p99 of exactly max_seconds: 0.25 s (not a bin edge: the count of calls above
    # it is conservative), and the edge just above it (0.2553 s), where the count is
    # exact and the martingale sits exactly at its null.
    edge = float(BOUNDS[bin_index(CEILING)])
    assert CEILING < edge < CEILING * RESOLUTION
    (at_025,) = ceiling_run(rng_for(30), (CEILING / math.exp(0.5 * P99_Z), 0.5), (CEILING,), LOOKS)
    (at_edge,) = ceiling_run(rng_for(31), (edge / math.exp(0.5 * P99_Z), 0.5), (edge,), LOOKS)
    check_level("latency p99 ceiling 0.25 s: true p99 exactly 0.25 s", at_025)
    check_level(f"latency p99 ceiling {edge:.4f} s (a bin edge): true p99 exactly that", at_edge)
    # The arm's latency is the baseline's times 1.5 (so is its p99): the boundary.
    for i, (split, traffic) in enumerate(SPLITS[:2]):
        ratio, _ = latency_run(rng_for(40, i), (0.03, 0.5), AA_LATENCY, traffic)
        check_level(f"latency p99 ratio: true ratio exactly 1.5, {split}", ratio)


def calls_summary(first: np.ndarray, per_look: int) -> str:
    median = float(np.median(first)) * per_look
    shown = f"{median:,.0f}" if math.isfinite(median) else "n/a"
    return f"median {shown} calls to the arm; detected in {rate(first):.1%}"


def test_power_meets_the_issue_for_error_rates_and_latency() -> None:
    print("\nPower, equal traffic, each rule at alpha 0.0025:")
    # The arm is checked by all four rules; only the one that the change violates is
    # simulated here (the others could only roll it back sooner).
    first = errors_run(rng_for(50), 0.06, 0.01, (LOOK, LOOK, 50))
    within = float((first * LOOK <= 3000).mean())
    print(f"  error rate 1% -> 6%: within 3,000 calls {within:.1%}; {calls_summary(first, LOOK)}")
    assert within >= 0.95
    ratio, _ = latency_run(rng_for(51), (0.04, 0.5), AA_LATENCY, (LOOK, LOOK, 50))
    by_2000 = float((ratio * LOOK <= 2000).mean())
    by_3000 = float((ratio * LOOK <= 3000).mean())
    print(
        f"  latency twice as slow (p99 ratio 2 vs max 1.5): within 2,000 calls {by_2000:.1%},"
        f" 3,000 calls {by_3000:.1%}; {calls_summary(ratio, LOOK)}"
    )
    # The issue asks for 95% within 2,000 calls. With 8 histogram bins per doubling this
    # test reached 92% (the bins' width was the loss); with 32, 97.0% here (1,000 runs,
    # s.e. 0.5%) and 97.1% in 4,000 runs offline.
    assert by_2000 >= 0.95
    assert by_3000 >= 0.98


def test_detection_figures_for_the_readme() -> None:
    print("\nDetection, a look every 100 calls to the arm (figures, not claims):")
    arm10 = (LOOK, 9 * LOOK, 50)  # the arm gets 10% of the traffic, the baseline 90%
    figures = {
        "error rate 1% -> 6%, arm 10% of traffic": errors_run(rng_for(60), 0.06, 0.01, arm10),
        "latency twice as slow, arm 10% of traffic": latency_run(
            rng_for(61), (0.04, 0.5), AA_LATENCY, arm10
        )[0],
        "latency twice as slow, sigma 1.0, equal traffic": latency_run(
            rng_for(62), (0.04, 1.0), (0.02, 1.0), (LOOK, LOOK, 120)
        )[0],
        "reward 0.5 -> 0.4, equal traffic": rewards_run(rng_for(63), 0.4, 0.5, EQUAL),
        "reward 0.5 -> 0.4, arm 10% of traffic": rewards_run(
            rng_for(64), 0.4, 0.5, (LOOK, 9 * LOOK, LOOKS)
        ),
    }
    for name, first in figures.items():
        print(f"  {name:<48} {calls_summary(first, LOOK)}")
        assert rate(first) > 0.5  # a sanity check, not a claim
    # Where the ratio test's level does not hold: an arm whose p99 is exactly 1.5 times
    # the baseline's but whose tail is lighter (sigma 0.25 against 0.5). The null assumes
    # P(arm > 1.5 x) <= P(base > x) near the quantile, true of a scaled or heavier tail;
    # when the baseline's estimated edge falls below its true p99, a lighter-tailed arm
    # exceeds 1.5 times it more often than that. Figures, stated in the README.
    light = (1.5 * AA_LATENCY[0] * math.exp(P99_Z * (0.5 - 0.25)), 0.25)
    print("\nFalse rollbacks at the boundary with a lighter-tailed arm (figures, not claims):")
    for i, (split, traffic) in enumerate(SPLITS[:2]):
        ratio, _ = latency_run(rng_for(70, i), light, AA_LATENCY, traffic)
        print(f"  p99 exactly 1.5x, sigma 0.25 vs 0.5, {split:<8} {rate(ratio):.2%}")
        assert rate(ratio) < 0.3  # a sanity check: the README states the figures


def test_a_gross_violation_is_caught_within_a_few_hundred_calls() -> None:
    """The wide mixing scale: a version failing one call in five (baseline: none) is
    rolled back after about a hundred calls, a latency ten times the ceiling at once."""
    calls = np.arange(50, 401, 10)
    t = error_rate_excess(calls, np.round(0.2 * calls), calls, 0, 0.02, 0.0025, 50)
    first = int(calls[np.argmax(t.violated)])
    assert t.violated.any() and first <= 150, first
    lr_narrow = normal_mixture_log_lr(0.18, 0.0016, 0.02)
    lr_both = two_scale_log_lr(0.18, 0.0016, 0.02)
    assert float(lr_both) > float(lr_narrow) + 4  # the wide scale carries the evidence
    # near the margin the mixture costs at most log(4/3)
    assert (
        float(two_scale_log_lr(0.03, 1e-4, 0.02))
        >= float(normal_mixture_log_lr(0.03, 1e-4, 0.02)) + math.log(0.75) - 1e-12
    )
