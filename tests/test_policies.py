"""Every registered policy, then closed-form checks per policy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats
from scipy.optimize import brentq

from bandit_serve.errors import PolicyInputError
from bandit_serve.policies import (
    KLUCB,
    POLICIES,
    UCB1,
    ArmStats,
    BetaThompson,
    EpsilonGreedy,
    FixedWeights,
    GaussianThompson,
    Policy,
    kl_bernoulli,
    kl_ucb_index,
    ucb1_index,
)

# A state every policy can read: rewards in [0, 1], arm 3 never rewarded, arm 1 best.
STATE = ArmStats.from_arrays(count=[40, 60, 30, 0], total=[12, 33, 9, 0], total_sq=[12, 33, 9, 0])
B = 4000
# With B = 4000 draws a frequency has a standard error of at most 0.008; 0.03 is ~4 SE
# and still catches a propensity that is off by a few percentage points.
TOLERANCE = 0.03
FLOOR = 0.05


def make(kind: str, **kw: float) -> Policy:
    cls = POLICIES[kind]
    if kind in {"thompson", "gaussian_thompson"}:
        kw.setdefault("draws", 200)
    return cls(**kw)


@pytest.mark.parametrize("kind", sorted(POLICIES))
def test_every_policy_decides_a_batch_with_matching_propensities(kind: str) -> None:
    policy = make(kind, min_share=FLOOR)
    rng = np.random.default_rng(42)
    d = policy.select(STATE.broadcast(B), rng)
    assert d.arms.shape == (B,) and d.propensities.shape == (B,)
    assert d.arms.min() >= 0 and d.arms.max() < 4
    assert np.all(d.propensities > 0) and np.all(d.propensities <= 1)
    # the propensity of an arm is the probability it was chosen: compare with frequency
    for arm in range(4):
        chosen = d.arms == arm
        freq = chosen.mean()
        assert freq >= FLOOR - TOLERANCE, (kind, arm, freq)
        if chosen.any():
            assert d.propensities[chosen].mean() == pytest.approx(freq, abs=TOLERANCE), arm
    # the fast path (no propensities, the simulator's) draws from the same distribution
    precise = make(kind, min_share=FLOOR, draws=100_000) if "thompson" in kind else policy
    p = precise.probabilities(STATE, np.random.default_rng(1))[0]
    assert p.min() >= FLOOR - 1e-12
    assert p.sum() == pytest.approx(1.0)
    fast = policy.select(STATE.broadcast(B), np.random.default_rng(7), propensity=False)
    assert np.all(np.isnan(fast.propensities))
    freq_fast = np.bincount(fast.arms, minlength=4) / B
    np.testing.assert_allclose(freq_fast, p, atol=TOLERANCE)


@pytest.mark.parametrize("kind", sorted(POLICIES))
def test_every_policy_is_deterministic_for_a_seed(kind: str) -> None:
    policy = make(kind, min_share=0.01)
    a = policy.select(STATE.broadcast(64), np.random.default_rng(3))
    b = policy.select(STATE.broadcast(64), np.random.default_rng(3))
    np.testing.assert_array_equal(a.arms, b.arms)
    np.testing.assert_array_equal(a.propensities, b.propensities)
    f1 = policy.select(STATE.broadcast(64), np.random.default_rng(3), propensity=False)
    f2 = policy.select(STATE.broadcast(64), np.random.default_rng(3), propensity=False)
    np.testing.assert_array_equal(f1.arms, f2.arms)


@pytest.mark.parametrize("kind", sorted(k for k, cls in POLICIES.items() if cls.adaptive))
def test_every_learning_policy_decides_each_row_from_its_own_state(kind: str) -> None:
    # Row r has arm r % 3 clearly best: a learning policy follows each row's state.
    rows = 300
    count = np.full((rows, 3), 2000.0)
    total = np.full((rows, 3), 200.0)
    total[np.arange(rows), np.arange(rows) % 3] = 1800.0
    st = ArmStats.from_arrays(count, total, total)
    policy = make(kind, epsilon=0.0) if kind == "epsilon_greedy" else make(kind)
    for propensity in (True, False):
        d = policy.select(st, np.random.default_rng(0), propensity=propensity)
        np.testing.assert_array_equal(d.arms, np.arange(rows) % 3)


def test_unseen_arms_are_tried_first_and_ties_break_at_random() -> None:
    st = ArmStats.from_arrays(count=[[5, 0, 0, 5]], total=[[5, 0, 0, 5]])
    for policy in (UCB1(), KLUCB(), EpsilonGreedy(epsilon=0.0)):
        d = policy.select(st.broadcast(2000), np.random.default_rng(0))
        assert set(np.unique(d.arms)) == {1, 2}
        assert np.all(d.propensities == 0.5)
        assert abs(np.mean(d.arms == 1) - 0.5) < 0.05
        fast = policy.select(st.broadcast(2000), np.random.default_rng(0), propensity=False)
        assert abs(np.mean(fast.arms == 1) - 0.5) < 0.05


def test_floor_gives_an_arm_ucb_never_picks_its_share() -> None:
    st = ArmStats.from_arrays(count=[[100, 100]], total=[[90, 10]])
    d = UCB1(min_share=0.1).select(st.broadcast(20000), np.random.default_rng(0))
    assert np.mean(d.arms == 1) == pytest.approx(0.1, abs=0.01)
    np.testing.assert_allclose(np.unique(d.propensities), [0.1, 0.9])


def test_floor_larger_than_one_over_k_is_rejected() -> None:
    with pytest.raises(PolicyInputError, match="exceeds 1"):
        UCB1(min_share=0.3).select(ArmStats.zeros(1, 4), np.random.default_rng(0))


def test_shape_mismatch_is_rejected() -> None:
    with pytest.raises(PolicyInputError, match="share one shape"):
        ArmStats.from_arrays(count=[1, 2], total=[1, 2, 3])


# -- closed forms --------------------------------------------------------------------


def test_beta_posterior_after_known_rewards() -> None:
    rewards = [1, 0, 1, 1, 0.5]
    st = ArmStats.from_arrays(count=[[len(rewards)]], total=[[sum(rewards)]])
    a, b = BetaThompson(alpha=2.0, beta=3.0).posterior(st)
    assert a[0, 0] == 2.0 + 3.5
    assert b[0, 0] == 3.0 + 1.5


def test_beta_thompson_propensity_matches_exact_integral() -> None:
    # P(X1 > X0) for X0 ~ Beta(4, 8), X1 ~ Beta(6, 6), by quadrature.
    exact, _ = integrate.quad(lambda x: stats.beta.pdf(x, 6, 6) * stats.beta.cdf(x, 4, 8), 0, 1)
    st = ArmStats.from_arrays(count=[[10, 10]], total=[[3, 5]])
    p = BetaThompson(draws=200_000).probabilities(st, np.random.default_rng(0))
    assert p[0, 1] == pytest.approx(exact, abs=0.004)  # MC SE ~ 0.001


def test_gaussian_posterior_matches_sequential_conjugate_updates() -> None:
    x = np.array([2.0, 3.5, 1.0, 4.0, 2.5, 3.0])
    mu, kappa, alpha, beta = 1.0, 2.0, 3.0, 4.0
    for xi in x:  # one observation at a time, textbook NIG update
        mu, kappa, alpha, beta = (
            (kappa * mu + xi) / (kappa + 1),
            kappa + 1,
            alpha + 0.5,
            beta + kappa * (xi - mu) ** 2 / (2 * (kappa + 1)),
        )
    st = ArmStats.from_arrays([[len(x)]], [[x.sum()]], [[(x**2).sum()]])
    df, loc, scale = GaussianThompson(mu=1.0, kappa=2.0, alpha=3.0, beta=4.0).posterior(st)
    assert df[0, 0] == pytest.approx(2 * alpha)
    assert loc[0, 0] == pytest.approx(mu)
    assert scale[0, 0] == pytest.approx(math.sqrt(beta / (alpha * kappa)))


def test_ucb1_index_by_hand() -> None:
    st = ArmStats.from_arrays(count=[[10, 20, 0]], total=[[3, 15, 0]])
    idx = ucb1_index(st, alpha=2.0)[0]
    assert idx[0] == pytest.approx(0.3 + math.sqrt(2 * math.log(30) / 10), rel=1e-12)
    assert idx[1] == pytest.approx(0.75 + math.sqrt(2 * math.log(30) / 20), rel=1e-12)
    assert idx[2] == math.inf


def test_kl_ucb_index_matches_root_finding() -> None:
    rng = np.random.default_rng(5)
    n = rng.integers(1, 3000, size=(50, 6)).astype(float)
    s = np.floor(rng.random((50, 6)) ** 2 * (n + 1)).clip(0, n)
    idx = kl_ucb_index(ArmStats.from_arrays(n, s), c=0.0)
    for row in range(50):
        budget = math.log(n[row].sum())
        for k in range(6):
            p, lim = s[row, k] / n[row, k], budget / n[row, k]
            if p == 1.0:
                assert idx[row, k] == 1.0
                continue

            def f(q: float, p: float = p, lim: float = lim) -> float:
                return float(kl_bernoulli(np.array(p), np.array(q))) - lim

            ref = brentq(f, p, 1 - 1e-16, xtol=1e-15) if f(1 - 1e-16) > 0 else 1.0
            assert idx[row, k] == pytest.approx(ref, abs=1e-9)


def test_kl_ucb_hand_value() -> None:
    # p = 0: kl(0, q) = -ln(1 - q), so the index is 1 - exp(-ln t / n) exactly.
    st = ArmStats.from_arrays(count=[[4, 6]], total=[[0, 3]])
    assert kl_ucb_index(st)[0, 0] == pytest.approx(1 - math.exp(-math.log(10) / 4), rel=1e-12)


def test_epsilon_greedy_propensities_exact() -> None:
    rng = np.random.default_rng(0)
    st = ArmStats.from_arrays(count=[[10, 10, 10, 10]], total=[[1, 5, 2, 3]])
    p = EpsilonGreedy(epsilon=0.2).probabilities(st, rng)[0]
    np.testing.assert_allclose(p, [0.05, 0.85, 0.05, 0.05])
    tie = ArmStats.from_arrays(count=[[10, 10, 10, 10]], total=[[5, 5, 2, 3]])
    np.testing.assert_allclose(
        EpsilonGreedy(epsilon=0.2).probabilities(tie, rng)[0], [0.45, 0.45, 0.05, 0.05]
    )
    # decaying: t = 400 observed rewards, decay_after 100 -> epsilon 0.2 * 100 / 400
    big = ArmStats.from_arrays(count=[[100, 100, 100, 100]], total=[[10, 50, 20, 30]])
    p = EpsilonGreedy(epsilon=0.2, decay_after=100).probabilities(big, rng)[0]
    np.testing.assert_allclose(p, [0.0125, 0.9625, 0.0125, 0.0125])
    # with a floor of 0.1 over 4 arms: 0.6 * p + 0.1
    p = EpsilonGreedy(epsilon=0.2, min_share=0.1).probabilities(st, rng)[0]
    np.testing.assert_allclose(p, 0.6 * np.array([0.05, 0.85, 0.05, 0.05]) + 0.1)


def test_fixed_weights_are_normalised_and_exact() -> None:
    p = FixedWeights(weights=[1, 1, 2]).probabilities(
        ArmStats.zeros(2, 3), np.random.default_rng(0)
    )
    np.testing.assert_allclose(p, [[0.25, 0.25, 0.5]] * 2)
    with pytest.raises(PolicyInputError, match="3 weights given for 2 arms"):
        FixedWeights(weights=[1, 1, 2]).select(ArmStats.zeros(1, 2), np.random.default_rng(0))


def test_rescaled_statistics_map_bounds_to_unit_interval() -> None:
    r = np.array([2.0, 4.0, 10.0])  # bounds [2, 10] -> 0, 0.25, 1
    st = ArmStats.from_arrays([[3]], [[r.sum()]], [[(r**2).sum()]]).rescaled(2.0, 10.0)
    u = (r - 2) / 8
    assert st.total[0, 0] == pytest.approx(u.sum())
    assert st.total_sq[0, 0] == pytest.approx((u**2).sum())


@pytest.mark.parametrize("kind", sorted(POLICIES))
def test_frozen_distribution_samples_with_exact_propensities(kind: str) -> None:
    policy = make(kind, min_share=0.02)
    frozen = policy.freeze(STATE, np.random.default_rng(0))
    d = frozen.sample(np.random.default_rng(1), 20_000)
    np.testing.assert_allclose(
        np.bincount(d.arms, minlength=4) / 20_000, frozen.probabilities, atol=0.015
    )  # ~4 SE at n = 20,000
    np.testing.assert_array_equal(d.propensities, frozen.probabilities[d.arms])


def test_traits_agree_with_what_each_policy_does() -> None:
    """A non-adaptive policy ignores rewards; a policy declaring the unit interval is one
    the configs rescale bounded rewards for."""
    st_a = ArmStats.from_arrays(count=[[50, 50]], total=[[5, 45]])
    st_b = ArmStats.from_arrays(count=[[50, 50]], total=[[45, 5]])
    for kind, cls in POLICIES.items():
        p = make(kind)
        same = np.allclose(
            p.probabilities(st_a, np.random.default_rng(0)),
            p.probabilities(st_b, np.random.default_rng(0)),
        )
        assert same == (not cls.adaptive), kind
        assert cls.reward_kinds, kind
        assert cls.fit_problem(next(iter(cls.reward_kinds))) is None


def test_the_policy_registry_and_the_config_union_name_the_same_policies() -> None:
    """Four lists must agree: POLICIES, each class's kind, the config union's members and
    their kind literals; and every policy documents itself with a runnable example."""
    import typing

    from bandit_serve.config.policies import PolicyConfig

    union, _ = typing.get_args(PolicyConfig)
    configs = {
        typing.get_args(c.model_fields["kind"].annotation)[0]: c for c in typing.get_args(union)
    }
    assert set(configs) == set(POLICIES) == {cls.kind for cls in POLICIES.values()}
    for kind, cfg in configs.items():
        assert cfg.policy_class is POLICIES[kind], kind
        doc = POLICIES[kind].__doc__ or ""
        assert "Examples" in doc and ">>>" in doc, f"{kind}: no docstring example"
