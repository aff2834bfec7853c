"""The experiment report: every arm against a baseline, from the store's arm totals."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from bandit_serve.config import ExperimentConfig, FixedConfig
from bandit_serve.policies import ArmStats, GaussianThompson
from bandit_serve.stats.bayes import DEFAULT_DRAWS, prob_best_and_loss
from bandit_serve.stats.frequentist import two_proportion_ztest, welch_ttest
from bandit_serve.stats.sequential import msprt_confidence_sequence, msprt_p_value
from bandit_serve.stats.srm import SRM_THRESHOLD, srm_test
from bandit_serve.store import ArmTotals

__all__ = ["UnknownArmError", "analyze", "default_tau"]

ADAPTIVE_NOTE = (
    "Traffic was allocated adaptively (policy {kind}): means, effects, intervals and both "
    "p-values treat the samples as independent draws and are biased by the allocation "
    "(arms that looked bad early got fewer samples). ipw_mean is the inverse-propensity-"
    "weighted estimate of each arm's mean from the logged propensities: unbiased, but "
    "noisier."
)
PEEKING_NOTE = (
    "p_value is a fixed-horizon test: valid once, at a sample size fixed in advance. "
    "Checking it repeatedly and stopping when it dips below alpha inflates false positives; "
    "p_value_sequential (mSPRT, tau = {tau:g}) stays valid at every look."
)


class UnknownArmError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def _num(x: Any) -> float | None:
    """A finite float, or None (JSON has no NaN)."""
    if x is None:
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def default_tau(cfg: ExperimentConfig, sds: list[float]) -> float:
    """mSPRT mixing scale: 5% of the reward range for bounded rewards, else 10% of the
    pooled standard deviation (1 when unknown)."""
    if cfg.reward.kind in {"bernoulli", "bounded"}:
        low, high = cfg.reward.bounds
        return 0.05 * (high - low)
    finite = [s for s in sds if s > 0 and math.isfinite(s)]
    return 0.1 * (float(np.sqrt(np.mean(np.square(finite)))) if finite else 1.0)


def _posterior_draws(
    cfg: ExperimentConfig, t: ArmTotals, draws: int, rng: np.random.Generator
) -> np.ndarray[Any, np.dtype[np.float64]]:
    n = t.rewards
    if cfg.reward.kind == "gaussian":  # Normal-Inverse-Gamma(0, 1, 1, 1) posterior of the mean
        st = ArmStats.from_arrays([[n]], [[t.reward_sum]], [[t.reward_sq]])
        df, loc, scale = (float(v[0, 0]) for v in GaussianThompson().posterior(st))
        return np.asarray(loc + scale * rng.standard_t(df, draws), dtype=np.float64)
    low, high = cfg.reward.bounds
    s = (t.reward_sum - n * low) / (high - low)
    return np.asarray(low + (high - low) * rng.beta(1 + s, 1 + n - s, draws), dtype=np.float64)


def analyze(
    cfg: ExperimentConfig,
    totals: Mapping[str, ArmTotals],
    *,
    baseline: str | None = None,
    alpha: float = 0.05,
    tau: float | None = None,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
) -> dict[str, Any]:
    """Every arm against ``baseline`` (default: the first arm). No NaN in the output:
    a number that cannot be computed is None, with a note saying why."""
    names = cfg.arm_names
    base = baseline if baseline is not None else names[0]
    if base not in names:
        raise UnknownArmError(f"no arm named {base!r} in experiment {cfg.name!r}; arms: {names}")
    zero = ArmTotals()
    t = {a: totals.get(a, zero) for a in names}
    n = {a: t[a].rewards for a in names}
    mean = {a: (t[a].reward_sum / n[a] if n[a] else math.nan) for a in names}
    var = {
        a: (max(t[a].reward_sq - n[a] * mean[a] ** 2, 0.0) / (n[a] - 1) if n[a] > 1 else math.nan)
        for a in names
    }
    tau = tau if tau is not None else default_tau(cfg, [math.sqrt(v) for v in var.values()])
    proportions = cfg.reward.kind == "bernoulli"
    adaptive = not isinstance(cfg.policy, FixedConfig)

    # Bayesian: P(best) and expected loss from posterior draws
    rng = np.random.default_rng(seed)
    samples = np.column_stack([_posterior_draws(cfg, t[a], draws, rng) for a in names])
    p_best, loss = prob_best_and_loss(samples)

    # Sample ratio: observed decisions against what the allocation implies
    observed = [t[a].pulls for a in names]
    if isinstance(cfg.policy, FixedConfig):
        w = cfg.policy.weights or [1.0] * len(names)
        k = len(names)
        f = cfg.policy.min_share
        expected = [(1 - k * f) * wi / sum(w) + f for wi in w]
    else:
        expected = [t[a].expected_pulls for a in names]
    srm_chi2, srm_p = srm_test(observed, expected) if sum(observed) else (0.0, 1.0)

    settled = sum(n.values())
    arms = []
    for a in names:
        row: dict[str, Any] = {
            "name": a,
            "samples": n[a],
            "decisions": t[a].pulls,
            "mean": _num(mean[a]),
            "effect": None,
            "ci_low": None,
            "ci_high": None,
            "p_value": None,
            "p_value_sequential": None,
            "cs_low": None,
            "cs_high": None,
            "p_best": float(p_best[names.index(a)]),
            "expected_loss": float(loss[names.index(a)]),
            "ipw_mean": _num(t[a].ipw_sum / settled) if adaptive and settled else None,
            "note": None,
        }
        if a == base:
            row["note"] = "baseline"
        elif min(n[a], n[base]) < 2:
            row["note"] = f"needs at least 2 rewards in this arm and in the baseline {base!r}"
        elif not proportions and (var[a] == 0 and var[base] == 0):
            row["note"] = "every reward is identical in both arms: no variance to test with"
        else:
            if proportions:
                r = two_proportion_ztest(n[a], t[a].reward_sum, n[base], t[base].reward_sum, alpha)
            else:
                r = welch_ttest(n[a], mean[a], var[a], n[base], mean[base], var[base], alpha)
            v = float(r.se) ** 2
            row.update(
                effect=_num(r.effect),
                ci_low=_num(r.ci_low),
                ci_high=_num(r.ci_high),
                p_value=_num(r.p_value),
            )
            if v > 0:
                lo, hi = msprt_confidence_sequence(r.effect, v, tau, alpha)
                row.update(
                    p_value_sequential=_num(msprt_p_value(r.effect, v, tau)),
                    cs_low=_num(lo),
                    cs_high=_num(hi),
                )
            else:
                row["note"] = "zero variance in both arms: no sequential test"
        arms.append(row)

    notes = [PEEKING_NOTE.format(tau=tau)]
    if adaptive:
        notes.insert(0, ADAPTIVE_NOTE.format(kind=cfg.policy.kind))
    warning = None
    if srm_p < SRM_THRESHOLD:
        warning = (
            f"sample ratio mismatch (p = {srm_p:.2g} < {SRM_THRESHOLD}): the logged decisions "
            "do not match the allocation; decisions were lost or duplicated. Do not trust "
            "any other number here until this is explained."
        )
    return {
        "experiment": cfg.name,
        "baseline": base,
        "alpha": alpha,
        "tau": tau,
        "test": "two-proportion z-test" if proportions else "Welch t-test",
        "adaptive": adaptive,
        "biased_by_adaptive_allocation": (
            ["mean", "effect", "ci_low", "ci_high", "p_value", "p_value_sequential"]
            if adaptive
            else []
        ),
        "srm_chi2": _num(srm_chi2) if math.isfinite(srm_chi2) else None,
        "srm_p_value": srm_p,
        "srm_warning": warning,
        "posterior_draws": draws,
        "notes": notes,
        "arms": arms,
    }
