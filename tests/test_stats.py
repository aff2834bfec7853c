"""Statistics: equal to scipy/statsmodels on the same data, and validated by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_effectsize,
    proportions_ztest,
)
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from bandit_serve.config import ExperimentConfig
from bandit_serve.errors import UnknownArmError
from bandit_serve.policies import BetaThompson
from bandit_serve.stats import (
    analyze,
    msprt_confidence_sequence,
    msprt_p_value,
    power_means,
    sample_size_means,
    sample_size_proportions,
    srm_test,
    two_proportion_ztest,
    welch_ttest,
)
from bandit_serve.store import ArmTotals

# -- equal to the reference implementations ------------------------------------------


def test_welch_matches_scipy_and_statsmodels_on_raw_data() -> None:
    rng = np.random.default_rng(1)
    for n1, n0 in ((12, 30), (200, 150), (5, 5)):
        x1, x0 = rng.normal(1.3, 2.0, n1), rng.normal(1.0, 0.7, n0)
        r = welch_ttest(n1, x1.mean(), x1.var(ddof=1), n0, x0.mean(), x0.var(ddof=1))
        ref = stats.ttest_ind(x1, x0, equal_var=False)
        assert float(r.p_value) == pytest.approx(ref.pvalue, abs=1e-9)
        lo, hi = CompareMeans(DescrStatsW(x1), DescrStatsW(x0)).tconfint_diff(
            alpha=0.05, usevar="unequal"
        )
        assert float(r.ci_low) == pytest.approx(lo, abs=1e-9)
        assert float(r.ci_high) == pytest.approx(hi, abs=1e-9)
        assert float(r.effect) == pytest.approx(x1.mean() - x0.mean(), abs=1e-12)


def test_two_proportion_matches_statsmodels() -> None:
    for s1, n1, s0, n0 in ((130, 1000, 100, 1000), (7, 40, 12, 55), (0, 30, 3, 30)):
        r = two_proportion_ztest(n1, s1, n0, s0)
        _, p = proportions_ztest([s1, s0], [n1, n0])
        assert float(r.p_value) == pytest.approx(p, abs=1e-9)
        lo, hi = confint_proportions_2indep(s1, n1, s0, n0, method="wald", compare="diff")
        assert float(r.ci_low) == pytest.approx(lo, abs=1e-9)
        assert float(r.ci_high) == pytest.approx(hi, abs=1e-9)


def test_srm_chi_square_matches_the_formula_and_scipy() -> None:
    observed = np.array([5120, 4880, 9950])
    weights = np.array([0.25, 0.25, 0.5])
    chi2, p = srm_test(observed, weights)
    expected = weights * observed.sum()
    by_hand = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 == pytest.approx(by_hand, abs=1e-9)
    assert p == pytest.approx(stats.chi2.sf(by_hand, 2), abs=1e-12)


def test_sample_size_and_power_match_statsmodels() -> None:
    for sd, mde in ((1.0, 0.2), (3.0, 0.5)):
        ours = sample_size_means(sd, mde, alpha=0.05, power=0.8)
        ref = NormalIndPower().solve_power(effect_size=mde / sd, alpha=0.05, power=0.8, ratio=1)
        assert ours == pytest.approx(ref, rel=1e-6)
        assert power_means(ours, sd, mde) == pytest.approx(0.8, abs=1e-9)
    ours = sample_size_proportions(0.10, 0.02, alpha=0.05, power=0.8)
    h = proportion_effectsize(0.12, 0.10)
    ref = NormalIndPower().solve_power(effect_size=h, alpha=0.05, power=0.8, ratio=1)
    assert ours == pytest.approx(ref, rel=1e-6)
    assert 3800 < ours < 3900  # the A/B scenario's "about 3,841 per arm"


def test_msprt_is_the_mixture_likelihood_ratio() -> None:
    # Lambda = integral of N(th; theta, V) / N(th; 0, V) dN(theta; 0, tau^2), numerically
    for th, v, tau in ((0.03, 1e-4, 0.05), (-0.2, 0.01, 0.1), (0.0, 0.5, 1.0)):
        num, _ = integrate.quad(
            lambda t, th=th, v=v, tau=tau: (
                stats.norm.pdf(th, t, math.sqrt(v)) * stats.norm.pdf(t, 0, tau)
            ),
            -10 * tau - abs(th),
            10 * tau + abs(th),
            points=[0.0, th],
            limit=200,
        )
        lam = num / stats.norm.pdf(th, 0, math.sqrt(v))
        assert float(msprt_p_value(th, v, tau)) == pytest.approx(min(1.0, 1 / lam), rel=1e-7)
        lo, hi = msprt_confidence_sequence(th, v, tau, alpha=0.05)
        # at the boundary theta0 the shifted statistic hits 1 / alpha exactly
        for edge in (float(lo), float(hi)):
            assert float(msprt_p_value(th - edge, v, tau)) == pytest.approx(0.05, rel=1e-9)


# -- validation by simulation ----------------------------------------------------------

EXPERIMENTS = 2000
LOOK_EVERY, LOOKS = 100, 20
ALPHA = 0.05
MC_SE = math.sqrt(ALPHA * (1 - ALPHA) / EXPERIMENTS)  # about 0.0049


def aa_bernoulli(
    rng: np.random.Generator, p: float = 0.2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative successes of two identical arms at every look: (n, s1, s0)."""
    s1 = rng.binomial(LOOK_EVERY, p, (EXPERIMENTS, LOOKS)).cumsum(axis=1)
    s0 = rng.binomial(LOOK_EVERY, p, (EXPERIMENTS, LOOKS)).cumsum(axis=1)
    n = np.arange(1, LOOKS + 1) * LOOK_EVERY
    return np.broadcast_to(n, s1.shape), s1, s0


def test_aa_fixed_horizon_is_alpha_peeking_exceeds_it_sequential_stays_below() -> None:
    n, s1, s0 = aa_bernoulli(np.random.default_rng(2024))
    r = two_proportion_ztest(n, s1, n, s0)
    at_horizon = float((r.p_value[:, -1] < ALPHA).mean())
    assert abs(at_horizon - ALPHA) < 3 * MC_SE, at_horizon
    peeking = float((r.p_value < ALPHA).any(axis=1).mean())
    assert peeking > ALPHA + 10 * MC_SE, peeking  # about 0.2: peeking clearly inflates
    seq = msprt_p_value(r.effect, r.se**2, tau=0.05)
    sequential = float((seq < ALPHA).any(axis=1).mean())
    assert sequential <= ALPHA + 3 * MC_SE, sequential


def test_aa_sequential_welch_on_real_valued_rewards_stays_below_alpha() -> None:
    rng = np.random.default_rng(7)
    x1 = rng.exponential(2.0, (EXPERIMENTS, LOOKS * LOOK_EVERY))
    x0 = rng.exponential(2.0, (EXPERIMENTS, LOOKS * LOOK_EVERY))
    idx = np.arange(1, LOOKS + 1) * LOOK_EVERY - 1
    n = idx + 1.0
    m1, m0 = x1.cumsum(1)[:, idx] / n, x0.cumsum(1)[:, idx] / n
    v1 = ((x1**2).cumsum(1)[:, idx] - n * m1**2) / (n - 1)
    v0 = ((x0**2).cumsum(1)[:, idx] - n * m0**2) / (n - 1)
    r = welch_ttest(n, m1, v1, n, m0, v0)
    assert abs(float((r.p_value[:, -1] < ALPHA).mean()) - ALPHA) < 3 * MC_SE
    seq = msprt_p_value(r.effect, r.se**2, tau=0.2)
    assert float((seq < ALPHA).any(axis=1).mean()) <= ALPHA + 3 * MC_SE


def test_95_percent_intervals_cover_the_true_effect_94_to_96_percent() -> None:
    rng = np.random.default_rng(99)
    e = 4000
    x1 = rng.normal(1.3, 2.0, (e, 40))
    x0 = rng.normal(1.0, 0.5, (e, 90))
    r = welch_ttest(40, x1.mean(1), x1.var(1, ddof=1), 90, x0.mean(1), x0.var(1, ddof=1))
    coverage = float(((r.ci_low <= 0.3) & (r.ci_high >= 0.3)).mean())
    assert 0.94 <= coverage <= 0.96, coverage
    s1, s0 = rng.binomial(2000, 0.12, e), rng.binomial(2000, 0.10, e)
    z = two_proportion_ztest(2000, s1, 2000, s0)
    coverage = float(((z.ci_low <= 0.02) & (z.ci_high >= 0.02)).mean())
    assert 0.94 <= coverage <= 0.96, coverage


def test_confidence_sequence_covers_at_every_look_at_once() -> None:
    n, s1, s0 = aa_bernoulli(np.random.default_rng(5))
    r = two_proportion_ztest(n, s1, n, s0)
    lo, hi = msprt_confidence_sequence(r.effect, r.se**2, tau=0.05)
    ever_missed = float(((lo > 0) | (hi < 0)).any(axis=1).mean())
    assert ever_missed <= ALPHA + 3 * MC_SE


# -- sample ratio mismatch ---------------------------------------------------------


def srm_p_values(counts: np.ndarray, expected: np.ndarray) -> np.ndarray:
    return np.array([srm_test(c, e)[1] for c, e in zip(counts, expected, strict=True)])


def thompson_traffic(
    rng: np.random.Generator, runs: int, decisions: int, sync: int, lose: float
) -> tuple[np.ndarray, np.ndarray]:
    """Logged counts and summed logged propensities of Thompson sampling (A/A arms, 10%
    floor) served as the router serves it: one frozen distribution per snapshot. A share
    ``lose`` of arm 0's logged decisions (with their propensities) goes missing."""
    policy = BetaThompson(draws=200, min_share=0.1)
    n = np.zeros((runs, 2))
    s = np.zeros((runs, 2))
    observed = np.zeros((runs, 2))
    expected = np.zeros((runs, 2))
    from bandit_serve.policies import ArmStats

    for _ in range(decisions // sync):
        probs = policy.probabilities(ArmStats(n, s, s), rng)
        counts = np.array([rng.multinomial(sync, p) for p in probs])
        lost0 = rng.binomial(counts[:, 0], lose)
        logged = counts.copy()
        logged[:, 0] -= lost0
        observed += logged
        expected += probs * logged.sum(axis=1, keepdims=True)
        n += counts
        s += rng.binomial(counts, 0.1)
    return observed, expected


def test_srm_false_alarm_rate_at_0001_stays_within_monte_carlo_error() -> None:
    rng = np.random.default_rng(11)
    runs = 5000
    counts = rng.multinomial(10_000, [0.5, 0.5], size=runs)
    rate = float((srm_p_values(counts, np.full((runs, 2), 0.5)) < 0.001).mean())
    assert rate <= 0.001 + 3 * math.sqrt(0.001 / runs), rate
    obs, exp = thompson_traffic(rng, runs=1000, decisions=10_000, sync=500, lose=0.0)
    rate = float((srm_p_values(obs, exp) < 0.001).mean())
    assert rate <= 0.001 + 3 * math.sqrt(0.001 / 1000), rate


def test_srm_detects_a_5_percent_loss_of_one_arms_events() -> None:
    # The chi-square's noncentrality for a loss e of an arm with share s is about
    # N s (1 - s) e^2: 10,000 decisions at 50/50 give 6.25, which p < 0.001 detects in
    # only about 20% of runs. Reliable (99%) detection needs N s (1 - s) e^2 >= ~32:
    # 60,000 decisions at 50/50; 200,000 for Thompson traffic held to shares >= 10%.
    rng = np.random.default_rng(12)
    runs = 400
    for decisions, expected_rate in ((10_000, (0.10, 0.35)), (60_000, (0.99, 1.0))):
        counts = rng.multinomial(decisions, [0.5, 0.5], size=runs)
        counts[:, 0] -= rng.binomial(counts[:, 0], 0.05)
        rate = float((srm_p_values(counts, np.full((runs, 2), 0.5)) < 0.001).mean())
        assert expected_rate[0] <= rate <= expected_rate[1], (decisions, rate)
    obs, exp = thompson_traffic(rng, runs=200, decisions=200_000, sync=2000, lose=0.05)
    rate = float((srm_p_values(obs, exp) < 0.001).mean())
    assert rate >= 0.99, rate


# -- the report -----------------------------------------------------------------------


def experiment(
    policy: dict[str, object], reward: dict[str, object] | None = None
) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "name": "e",
            "arms": [{"name": a, "model": "m:f"} for a in ("a", "b", "c")],
            "policy": policy,
            "reward": reward or {"kind": "bernoulli"},
        }
    )


def test_report_for_a_fixed_split_matches_the_tests_and_has_no_nan() -> None:
    cfg = experiment({"kind": "fixed"})
    totals = {
        # a fixed split logs each arm's weight with every decision: 3000 x 1/3 each
        "a": ArmTotals(
            pulls=1000,
            rewards=1000,
            reward_units=100 * 10**6,
            reward_sq=100.0,
            expected_pulls=1000.0,
        ),
        "b": ArmTotals(
            pulls=1010,
            rewards=1000,
            reward_units=130 * 10**6,
            reward_sq=130.0,
            expected_pulls=1000.0,
        ),
        "c": ArmTotals(pulls=990, rewards=1, expected_pulls=1000.0),
    }
    rep = analyze(cfg, totals)
    assert rep.baseline == "a" and not rep.adaptive
    a, b, c = rep.arms
    z = two_proportion_ztest(1000, 130, 1000, 100)
    assert b.effect == pytest.approx(0.03)
    assert b.p_value == pytest.approx(float(z.p_value), abs=1e-12)
    assert b.p_value is not None and b.p_value_sequential is not None
    assert b.p_value_sequential >= b.p_value  # the price of peeking safely
    assert c.p_value is None and "at least 2 rewards" in str(c.note)
    assert a.note == "baseline"
    assert sum(x.p_best for x in rep.arms) == pytest.approx(1.0)
    assert b.p_best > 10 * a.p_best and b.expected_loss < a.expected_loss
    assert c.p_best > b.p_best  # one reward: a wide posterior, often the largest draw
    assert rep.srm_p_value == pytest.approx(srm_test([1000, 1010, 990], [1, 1, 1])[1])
    assert rep.srm_warning is None
    assert "nan" not in repr(rep.to_dict()).lower()
    with pytest.raises(UnknownArmError, match="no arm named 'zz'"):
        analyze(cfg, totals, baseline="zz")
    assert analyze(cfg, totals, baseline="b").arms[0].effect == pytest.approx(-0.03)


def test_report_for_a_bandit_flags_bias_offers_ipw_and_uses_logged_propensities() -> None:
    cfg = experiment({"kind": "thompson"}, {"kind": "bounded", "low": 0, "high": 10})
    totals = {
        "a": ArmTotals(
            pulls=300,
            rewards=300,
            reward_units=900 * 10**6,
            reward_sq=3500.0,
            expected_pulls=310.0,
            ipw_sum=3300.0,
        ),
        "b": ArmTotals(
            pulls=700,
            rewards=700,
            reward_units=2800 * 10**6,
            reward_sq=12000.0,
            expected_pulls=690.0,
            ipw_sum=4100.0,
        ),
        "c": ArmTotals(),
    }
    rep = analyze(cfg, totals)
    assert rep.adaptive and "p_value" in rep.biased_by_adaptive_allocation
    assert rep.test == "Welch t-test"
    assert rep.arms[0].ipw_mean == pytest.approx(3300.0 / 1000)
    assert rep.arms[1].ipw_mean == pytest.approx(4100.0 / 1000)
    assert rep.srm_p_value == pytest.approx(srm_test([300, 700], [310, 690])[1])
    assert "adaptively" in rep.notes[0]
    bad = {**totals, "b": ArmTotals(pulls=900, rewards=10, expected_pulls=690.0)}
    assert "sample ratio mismatch" in str(analyze(cfg, bad).srm_warning)
