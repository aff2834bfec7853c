"""The offline simulator: determinism, agreement with a plain reference loop, delays,
drift, bad scenarios, and the files the command writes."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bandit_serve.cli import app
from bandit_serve.errors import ConfigError
from bandit_serve.policies import ArmStats, Policy
from bandit_serve.policies.base import FloatArray, IntArray
from bandit_serve.simulation import Scenario, load_scenario, simulate_policy
from bandit_serve.simulation.engine import lai_robbins_constant
from bandit_serve.simulation.environment import Environment

ROOT = Path(__file__).resolve().parents[1]


def scenario(**kw: object) -> Scenario:
    base: dict[str, object] = {
        "name": "t",
        "horizon": 300,
        "runs": 50,
        "seed": 1,
        "arms": [
            {"name": "a", "reward": {"kind": "bernoulli", "mean": 0.2}},
            {"name": "b", "reward": {"kind": "bernoulli", "mean": 0.5}},
        ],
        "policies": [{"kind": "thompson"}],
    }
    base.update(kw)
    return Scenario.model_validate(base)


def test_same_seed_same_results_other_seed_other_results() -> None:
    sc = scenario(policies=[{"kind": "thompson"}, {"kind": "epsilon_greedy", "epsilon": 0.2}])
    for i, entry in enumerate(sc.policies):
        a, b = simulate_policy(sc, entry, i), simulate_policy(sc, entry, i)
        np.testing.assert_array_equal(a.final_regret, b.final_regret)
        np.testing.assert_array_equal(a.share, b.share)
        c = simulate_policy(sc.model_copy(update={"seed": 2}), entry, i)
        assert not np.array_equal(a.final_regret, c.final_regret)


def test_a_canary_routes_its_named_candidate_whichever_position_it_has() -> None:
    """The simulator builds a canary as the service does: the candidate by name (here
    the first arm), its first step's weight, and min_share; a candidate that is not an
    arm is refused like in the service's config."""
    steps = [{"weight": 0.1}, {"weight": 0.5}]
    for candidate, share_a in (("a", 0.1), ("b", 0.9)):
        sc = scenario(policies=[{"kind": "canary", "candidate": candidate, "steps": steps}])
        result = simulate_policy(sc, sc.policies[0], 0)
        assert float(result.share[:, 0].mean()) == pytest.approx(share_a, abs=0.03)
    floor = scenario(
        policies=[{"kind": "canary", "candidate": "a", "steps": steps, "min_share": 0.3}]
    )
    # the floor mixes: min_share + (1 - 2 min_share) x the canary's 0.1 = 0.34
    assert float(simulate_policy(floor, floor.policies[0], 0).share[:, 0].mean()) == (
        pytest.approx(0.34, abs=0.03)
    )
    with pytest.raises(ValueError, match=r"policies\[0\]\.candidate 'zz' is not an arm"):
        scenario(policies=[{"kind": "canary", "candidate": "zz", "steps": steps}])


# -- an independent reference: one run at a time, plain Python -----------------------


def reference_regret(kind: str, means: list[float], horizon: int, seed: int) -> float:
    rnd = random.Random(seed)
    k = len(means)
    n, s = [0] * k, [0.0] * k
    best, regret = max(means), 0.0

    def argmax_random(values: list[float]) -> int:
        top = max(values)
        return rnd.choice([i for i, v in enumerate(values) if v == top])

    for _ in range(horizon):
        if kind == "thompson":
            arm = argmax_random([rnd.betavariate(1 + s[i], 1 + n[i] - s[i]) for i in range(k)])
        elif kind == "ucb1":
            total = max(sum(n), 1)
            arm = argmax_random(
                [
                    math.inf if n[i] == 0 else s[i] / n[i] + math.sqrt(2 * math.log(total) / n[i])
                    for i in range(k)
                ]
            )
        else:  # epsilon_greedy, epsilon 0.1
            if rnd.random() < 0.1:
                arm = rnd.randrange(k)
            else:
                arm = argmax_random([math.inf if n[i] == 0 else s[i] / n[i] for i in range(k)])
        reward = 1.0 if rnd.random() < means[arm] else 0.0
        n[arm] += 1
        s[arm] += reward
        regret += best - means[arm]
    return regret


@pytest.mark.parametrize(
    ("kind", "params"),
    [("thompson", {}), ("ucb1", {}), ("epsilon_greedy", {"epsilon": 0.1})],
)
def test_vectorized_regret_agrees_with_plain_reference_loop(
    kind: str, params: dict[str, float]
) -> None:
    means = [0.3, 0.45, 0.6]
    horizon, runs = 600, 300
    sc = scenario(
        horizon=horizon,
        runs=runs,
        arms=[
            {"name": f"a{i}", "reward": {"kind": "bernoulli", "mean": m}}
            for i, m in enumerate(means)
        ],
        policies=[{"kind": kind, **params}],
    )
    ours = simulate_policy(sc, sc.policies[0], 0).final_regret
    ref = np.array([reference_regret(kind, means, horizon, seed) for seed in range(runs)])
    se = math.sqrt(ours.var(ddof=1) / runs + ref.var(ddof=1) / runs)
    assert abs(ours.mean() - ref.mean()) < 2 * se, (ours.mean(), ref.mean(), se)
    assert se < 0.1 * ref.mean()  # the comparison is sharp enough to catch a real bug


# -- what the policy sees ------------------------------------------------------------


class Watcher(Policy):
    """Plays arms in turn and records the statistics it was shown at each step."""

    kind = "watcher"

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[ArmStats] = []

    def _probabilities(self, stats: ArmStats, rng: np.random.Generator) -> FloatArray:
        raise NotImplementedError

    def _choose(self, stats: ArmStats, rng: np.random.Generator) -> IntArray:
        self.seen.append(ArmStats(stats.count.copy(), stats.total.copy(), stats.total_sq.copy()))
        t = len(self.seen) - 1
        return np.full(stats.shape[0], t % stats.shape[1], dtype=np.int64)


def observed(sc: Scenario) -> np.ndarray:
    w = Watcher()
    simulate_policy(sc, sc.policies[0], 0, policy=w)
    return np.array([s.count.sum(axis=1) for s in w.seen])  # (horizon, runs)


def test_without_delay_every_reward_is_seen_at_the_next_decision() -> None:
    seen = observed(scenario(horizon=50, runs=4))
    np.testing.assert_array_equal(seen, np.repeat(np.arange(50)[:, None], 4, axis=1))


def test_fixed_delay_hides_rewards_until_they_arrive() -> None:
    seen = observed(scenario(horizon=60, runs=4, delay={"kind": "fixed", "steps": 10}))
    expected = np.maximum(0, np.arange(60) - 10)
    np.testing.assert_array_equal(seen, np.repeat(expected[:, None], 4, axis=1))


def test_exponential_delay_never_shows_a_reward_early() -> None:
    sc = scenario(
        horizon=400, runs=20, delay={"kind": "exponential", "mean_steps": 30}, wait_steps=100
    )
    seen = observed(sc)
    t = np.arange(400)[:, None]
    assert np.all(seen <= t)  # never more than the decisions made before
    assert np.all(seen >= np.maximum(0, t - 100))  # everything older than the wait window arrived
    assert seen[-1].mean() < 399 - 10  # and the delay really holds rewards back


def test_missing_rewards_become_the_default_after_the_wait_window() -> None:
    sc = scenario(horizon=80, runs=3, missing_rate=1.0, wait_steps=20, default_reward=0.0)
    w = Watcher()
    simulate_policy(sc, sc.policies[0], 0, policy=w)
    counts = np.array([s.count.sum(axis=1) for s in w.seen])
    np.testing.assert_array_equal(counts[:, 0], np.maximum(0, np.arange(80) - 20))
    assert all(s.total.sum() == 0 for s in w.seen)  # only default rewards (0) arrived
    dropped = scenario(horizon=80, runs=3, missing_rate=1.0, wait_steps=20, on_expiry="drop")
    assert observed(dropped).max() == 0


def test_stale_statistics_refresh_every_sync_every_steps() -> None:
    seen = observed(scenario(horizon=30, runs=2, sync_every=10))
    np.testing.assert_array_equal(seen[:, 0], (np.arange(30) // 10) * 10)


class AliasWatcher(Watcher):
    """A Watcher that also notes whether the sums it is shown share memory."""

    def __init__(self) -> None:
        super().__init__()
        self.aliased = False

    def _choose(self, stats: ArmStats, rng: np.random.Generator) -> IntArray:
        self.aliased |= np.shares_memory(stats.total, stats.total_sq)
        return super()._choose(stats, rng)


@pytest.mark.parametrize("sync_every", [1, 7])
@pytest.mark.parametrize(
    ("default_reward", "missing_rate", "total_per_obs", "sq_per_obs"),
    [(0.0, 0.0, [0.0, 1.0], [0.0, 1.0]), (0.5, 1.0, [0.5, 0.5], [0.25, 0.25])],
    ids=["binary", "default-0.5"],
)
def test_the_sum_of_squares_is_its_own_array_and_exact(
    sync_every: int,
    default_reward: float,
    missing_rate: float,
    total_per_obs: list[float],
    sq_per_obs: list[float],
) -> None:
    # arms of mean 0 and 1 reward 0 and 1 for sure; a missing reward becomes the default
    sc = scenario(
        horizon=60,
        runs=3,
        arms=[
            {"name": "a", "reward": {"kind": "bernoulli", "mean": 0.0}},
            {"name": "b", "reward": {"kind": "bernoulli", "mean": 1.0}},
        ],
        sync_every=sync_every,
        missing_rate=missing_rate,
        wait_steps=3,
        default_reward=default_reward,
    )
    w = AliasWatcher()
    simulate_policy(sc, sc.policies[0], 0, policy=w)
    assert w.seen[-1].count.min() > 10
    for s in w.seen:
        np.testing.assert_array_equal(s.total, s.count * total_per_obs)
        np.testing.assert_array_equal(s.total_sq, s.count * sq_per_obs)
    assert not w.aliased


# -- regret is measured against expected rewards, and against the best arm now ------


def test_regret_of_a_fixed_arm_under_drift_is_exact() -> None:
    sc = scenario(
        horizon=100,
        runs=5,
        policies=[{"kind": "fixed", "weights": [1, 0]}],
        changes=[{"at": 40, "arm": "a", "mean": 0.9}],
    )
    r = simulate_policy(sc, sc.policies[0], 0)
    # always arm a: 0.3 behind b for 40 steps, then the best arm
    np.testing.assert_allclose(r.final_regret, 40 * 0.3)
    assert r.best_arm_share_last10 == 1.0


def test_uniform_split_regret_is_half_the_gap_per_step() -> None:
    sc = scenario(horizon=1000, runs=200, policies=[{"kind": "fixed"}])
    r = simulate_policy(sc, sc.policies[0], 0)
    assert r.regret_mean[-1] == pytest.approx(1000 * 0.5 * 0.3, abs=3 * r.regret_se[-1])


def test_lai_robbins_constant_by_hand() -> None:
    means = np.array([0.1, 0.3])
    kl = 0.1 * math.log(0.1 / 0.3) + 0.9 * math.log(0.9 / 0.7)
    assert lai_robbins_constant(means) == pytest.approx(0.2 / kl)
    # an arm of mean 0: KL(0, 0.3) = ln(1 / 0.7); the best arm of mean 1: no bound
    assert lai_robbins_constant(np.array([0.0, 0.3])) == pytest.approx(0.3 / math.log(1 / 0.7))
    assert lai_robbins_constant(np.array([0.2, 1.0])) == math.inf
    assert lai_robbins_constant(np.array([0.4, 0.4])) == 0.0


def test_environment_walks_the_drift_phases() -> None:
    sc = scenario(
        horizon=100,
        arms=[
            {"name": "a", "reward": {"kind": "bernoulli", "mean": 0.2}},
            {"name": "b", "reward": {"kind": "bernoulli", "mean": 0.5}},
            {"name": "c", "reward": {"kind": "bernoulli", "mean": 0.1}},
        ],
        changes=[
            {"at": 0, "arm": "c", "mean": 0.3},
            {"at": 70, "arm": "a", "mean": 0.9},
            {"at": 30, "arm": "b", "mean": 0.0},
        ],
    )
    env = Environment(sc)
    seen = []
    for steps in env.phases():
        seen.append((steps, env.means.tolist(), env.best_arm, env.gaps.tolist()))
    assert seen == [
        (range(0, 30), [0.2, 0.5, 0.3], 1, pytest.approx([0.3, 0.0, 0.2])),
        (range(30, 70), [0.2, 0.0, 0.3], 2, pytest.approx([0.1, 0.3, 0.0])),
        (range(70, 100), [0.9, 0.0, 0.3], 0, pytest.approx([0.0, 0.9, 0.6])),
    ]
    # in the last phase arm a pays 1 with probability 0.9; b never pays
    arms = np.repeat(np.array([0, 1]), sc.runs // 2)
    rewards = env.rewards(arms)
    assert set(rewards.tolist()) <= {0.0, 1.0} and rewards[sc.runs // 2 :].max() == 0.0
    # common random numbers: another environment of the scenario draws the same
    again = Environment(sc)
    for _ in again.phases():
        pass
    np.testing.assert_array_equal(again.rewards(arms), rewards)


def test_commit_plays_the_observed_best_arm_and_never_an_unobserved_one() -> None:
    # arm a (mean 0) is played first; b (mean 1) is never observed, so it is never chosen
    sc = scenario(
        horizon=50,
        runs=20,
        arms=[
            {"name": "a", "reward": {"kind": "bernoulli", "mean": 0.0}},
            {"name": "b", "reward": {"kind": "bernoulli", "mean": 1.0}},
        ],
        policies=[{"kind": "fixed", "weights": [1, 0], "commit_after": 1}],
    )
    r = simulate_policy(sc, sc.policies[0], 0)
    np.testing.assert_array_equal(r.final_regret, 50.0)
    assert r.best_arm_share_last10 == 0.0


def test_commit_breaks_ties_between_observed_means_at_random() -> None:
    # two arms that always pay 0: their observed means tie at every step after the commit
    sc = scenario(
        horizon=400,
        runs=200,
        arms=[
            {"name": "a", "reward": {"kind": "bernoulli", "mean": 0.0}},
            {"name": "b", "reward": {"kind": "bernoulli", "mean": 0.0}},
        ],
        policies=[{"kind": "fixed", "commit_after": 20}],
    )
    r = simulate_policy(sc, sc.policies[0], 0)
    after = r.share[r.grid > 40].mean(axis=0)
    assert after == pytest.approx([0.5, 0.5], abs=0.05)  # not all on the lowest index


def test_gaussian_arms_run_with_gaussian_thompson() -> None:
    sc = scenario(
        arms=[
            {"name": "a", "reward": {"kind": "gaussian", "mean": 0.0, "sd": 1.0}},
            {"name": "b", "reward": {"kind": "gaussian", "mean": 1.0, "sd": 1.0}},
        ],
        policies=[{"kind": "gaussian_thompson"}],
        horizon=500,
    )
    r = simulate_policy(sc, sc.policies[0], 0)
    assert r.best_arm_share_last10 > 0.9


# -- bad input -----------------------------------------------------------------------

GOOD = (ROOT / "simulations" / "bernoulli-easy.yaml").read_text()
BAD_SCENARIOS = [
    (
        "unknown policy",
        GOOD.replace("{kind: ucb1}", "{kind: softmax}"),
        r"yaml: policies\[1\]: unknown kind 'softmax'",
    ),
    (
        "mean above 1",
        GOOD.replace("mean: 0.30", "mean: 1.30"),
        r"yaml: arms\[2\]\.reward\.mean: Input should be less than or equal to 1",
    ),
    (
        "negative horizon",
        GOOD.replace("horizon: 10000", "horizon: -5"),
        r"yaml: horizon: Input should be greater than or equal to 1",
    ),
    (
        "unknown arm in changes",
        GOOD + "changes: [{at: 10, arm: zz, mean: 0.5}]\n",
        r"yaml: changes\[0\]\.arm: unknown arm 'zz'",
    ),
    ("unknown delay", GOOD + "delay: {kind: poisson}\n", r"yaml: delay: unknown kind 'poisson'"),
    (
        "ucb on gaussian arms",
        GOOD.replace("kind: bernoulli, mean", "kind: gaussian, mean"),
        r"yaml: policies\[0\]: thompson needs rewards in \[0, 1\]",
    ),
]


@pytest.mark.parametrize(
    ("case", "text", "expected"), BAD_SCENARIOS, ids=[c[0] for c in BAD_SCENARIOS]
)
def test_bad_scenario_is_one_clear_error_and_writes_nothing(
    tmp_path: Path, case: str, text: str, expected: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_scenario(path)
    assert str(info.value).startswith(f"{path}: ")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["simulate", str(path), "--out", str(out)])
    assert result.exit_code == 2
    assert not out.exists()


def test_simulate_command_writes_summary_csv_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            str(ROOT / "simulations" / "bernoulli-easy.yaml"),
            "--runs",
            "8",
            "--horizon",
            "400",
            "--seed",
            "3",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads((out / "summary.json").read_text())
    assert (data["scenario"], data["horizon"], data["runs"]) == ("bernoulli-easy", 400, 8)
    bound = lai_robbins_constant(np.array([0.1, 0.2, 0.3])) * math.log(400)
    assert data["lai_robbins"] == pytest.approx(bound)
    labels = [p["label"] for p in data["policies"]]
    assert labels[:2] == ["thompson", "ucb1"]
    for p in data["policies"]:
        assert set(p) >= {
            "label",
            "kind",
            "regret_mean",
            "regret_se",
            "best_arm_share_last10",
            "decisions_per_second",
        }
        assert p["regret_mean"] > 0
    rows = (out / "regret.csv").read_text().splitlines()
    assert rows[0] == "policy,t,regret_mean,regret_se"
    assert rows[-1].split(",")[1] == "400"
    for png in ("regret.png", "share.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "thompson" in result.output


@pytest.mark.parametrize(
    "path", sorted((ROOT / "simulations").glob("*.yaml")), ids=lambda p: p.stem
)
def test_every_shipped_scenario_loads(path: Path) -> None:
    sc = load_scenario(path)
    assert sc.policies and sc.arms
