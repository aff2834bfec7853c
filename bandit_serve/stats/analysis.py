"""The experiment report: every arm against a baseline, from the store's arm totals.

:func:`analyze` returns a typed, frozen :class:`AnalysisReport`; it becomes JSON only at
the HTTP edge and in the CLI (:meth:`AnalysisReport.to_dict`). No number in it is NaN:
what cannot be computed is None, and the row's ``note`` says why.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from bandit_serve.config import ExperimentConfig
from bandit_serve.errors import UnknownArmError
from bandit_serve.stats.bayes import DEFAULT_DRAWS, prob_best_and_loss
from bandit_serve.stats.frequentist import TestResult, two_proportion_ztest, welch_ttest
from bandit_serve.stats.posterior import arm_posterior
from bandit_serve.stats.sequential import msprt_confidence_sequence, msprt_p_value
from bandit_serve.stats.srm import SRM_THRESHOLD, srm_test
from bandit_serve.store import ArmTotals

__all__ = ["AnalysisReport", "ArmReport", "ShadowReport", "analyze", "default_tau", "shadow_report"]

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
UNIT_NOTE = (
    "Units are assigned stickily (assignment by unit_id): the unit is the unit of "
    "analysis. samples, means, tests and the sample-ratio check count units (each with "
    "its arm and its mean reward; Welch's test on unit means), not requests, so that a "
    "unit's repeated requests do not inflate them. P(best) and the posteriors are over "
    "requests."
)
BIASED_FIELDS = ("mean", "effect", "ci_low", "ci_high", "p_value", "p_value_sequential")


@dataclass(frozen=True)
class ArmReport:
    """One arm's row: its own numbers and its comparison with the baseline."""

    name: str
    samples: int  # rewards applied (defaults included)
    decisions: int
    mean: float | None
    p_best: float
    expected_loss: float
    ipw_mean: float | None
    effect: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    p_value_sequential: float | None = None
    cs_low: float | None = None
    cs_high: float | None = None
    note: str | None = None


@dataclass(frozen=True)
class AnalysisReport:
    """The whole report of one experiment against one baseline."""

    experiment: str
    baseline: str
    alpha: float
    tau: float
    test: str
    adaptive: bool
    biased_by_adaptive_allocation: tuple[str, ...]
    srm_chi2: float | None
    srm_p_value: float
    srm_warning: str | None
    posterior_draws: int
    notes: tuple[str, ...]
    arms: tuple[ArmReport, ...]
    unit_of_analysis: str = "request"
    shadow: tuple[ShadowReport, ...] = ()

    def arm(self, name: str) -> ArmReport:
        for a in self.arms:
            if a.name == name:
                return a
        raise UnknownArmError(f"no arm named {name!r} in this report")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (tuples become lists)."""
        return dataclasses.asdict(self, dict_factory=_listing_dict)


def _listing_dict(items: list[tuple[str, Any]]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in items}


def _num(x: Any) -> float | None:
    """A finite float, or None (JSON has no NaN)."""
    if x is None:
        return None
    v = float(x)
    return v if math.isfinite(v) else None


@dataclass(frozen=True)
class _Moments:
    n: int
    mean: float  # NaN without rewards
    var: float  # sample variance; NaN below two rewards

    @classmethod
    def of(cls, t: ArmTotals) -> _Moments:
        n = t.rewards
        mean = t.reward_sum / n if n else math.nan
        var = max(t.reward_sq - n * mean**2, 0.0) / (n - 1) if n > 1 else math.nan
        return cls(n, mean, var)

    @classmethod
    def of_units(cls, t: ArmTotals) -> _Moments:
        """Over units: each unit (with a reward) is one sample, its mean reward."""
        n = t.rewarded_units
        mean = t.unit_mean_sum / n if n else math.nan
        var = max(t.unit_mean_sq - n * mean**2, 0.0) / (n - 1) if n > 1 else math.nan
        return cls(n, mean, var)


def default_tau(cfg: ExperimentConfig, sds: list[float]) -> float:
    """mSPRT mixing scale: 5% of the reward range for bounded rewards, else 10% of the
    pooled standard deviation (1 when unknown)."""
    if cfg.reward.kind in {"bernoulli", "bounded"}:
        low, high = cfg.reward.bounds
        return 0.05 * (high - low)
    finite = [s for s in sds if s > 0 and math.isfinite(s)]
    return 0.1 * (float(np.sqrt(np.mean(np.square(finite)))) if finite else 1.0)


def _bayes(
    cfg: ExperimentConfig, t: Mapping[str, ArmTotals], draws: int, seed: int
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """P(best) and expected loss per arm, from draws of each arm's posterior."""
    rng = np.random.default_rng(seed)
    low, high = cfg.reward.bounds
    samples = np.column_stack(
        [arm_posterior(cfg.reward.kind, low, high, t[a]).sample(rng, draws) for a in t]
    )
    return prob_best_and_loss(samples)


def _srm(t: Mapping[str, ArmTotals], by_unit: bool) -> tuple[float | None, float]:
    """Logged decisions (or, with sticky assignment, units) against the allocation: each
    decision (each new unit) adds the probabilities with which the policy would pick
    every arm (``expected_pulls``, ``expected_units``), whatever the policy."""
    observed = [x.units if by_unit else x.pulls for x in t.values()]
    if not sum(observed):
        return 0.0, 1.0
    expected = [x.expected_units if by_unit else x.expected_pulls for x in t.values()]
    chi2, p = srm_test(observed, expected)
    return (chi2 if math.isfinite(chi2) else None), p


@dataclass(frozen=True)
class ShadowReport:
    """A shadow arm: its mirrored calls and how often it agreed with the served answer."""

    name: str
    calls: int
    errors: int
    agreement: float | None  # share of compared answers that were equal
    mean_abs_diff: float | None  # over numeric answers


def shadow_report(name: str, t: ArmTotals) -> ShadowReport:
    return ShadowReport(
        name=name,
        calls=t.calls,
        errors=t.errors,
        agreement=t.shadow_agreed / t.shadow_compared if t.shadow_compared else None,
        mean_abs_diff=t.shadow_abs_diff / t.shadow_numeric if t.shadow_numeric else None,
    )


def _compare(
    base_name: str,
    arm: _Moments,
    base: _Moments,
    t_arm: ArmTotals,
    t_base: ArmTotals,
    *,
    proportions: bool,
    alpha: float,
    tau: float,
) -> dict[str, Any]:
    """The fixed-horizon and sequential comparison of one arm with the baseline."""
    if min(arm.n, base.n) < 2:
        return {"note": f"needs at least 2 rewards in this arm and in the baseline {base_name!r}"}
    if not proportions and arm.var == 0 and base.var == 0:
        return {"note": "every reward is identical in both arms: no variance to test with"}
    r: TestResult
    if proportions:
        r = two_proportion_ztest(arm.n, t_arm.reward_sum, base.n, t_base.reward_sum, alpha)
    else:
        r = welch_ttest(arm.n, arm.mean, arm.var, base.n, base.mean, base.var, alpha)
    out: dict[str, Any] = {
        "effect": _num(r.effect),
        "ci_low": _num(r.ci_low),
        "ci_high": _num(r.ci_high),
        "p_value": _num(r.p_value),
    }
    v = float(r.se) ** 2
    if v > 0:
        lo, hi = msprt_confidence_sequence(r.effect, v, tau, alpha)
        out.update(
            p_value_sequential=_num(msprt_p_value(r.effect, v, tau)),
            cs_low=_num(lo),
            cs_high=_num(hi),
        )
    else:
        out["note"] = "zero variance in both arms: no sequential test"
    return out


def analyze(
    cfg: ExperimentConfig,
    totals: Mapping[str, ArmTotals],
    *,
    baseline: str | None = None,
    alpha: float = 0.05,
    tau: float | None = None,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
) -> AnalysisReport:
    """Every arm against ``baseline`` (default: the first arm)."""
    names = cfg.arm_names
    base = baseline if baseline is not None else names[0]
    if base not in names:
        raise UnknownArmError(f"no arm named {base!r} in experiment {cfg.name!r}; arms: {names}")
    t = {a: totals.get(a, ArmTotals()) for a in names}
    by_unit = cfg.assignment is not None
    m = {a: (_Moments.of_units if by_unit else _Moments.of)(t[a]) for a in names}
    if tau is None:
        tau = default_tau(cfg, [math.sqrt(x.var) for x in m.values()])
    proportions = cfg.reward.kind == "bernoulli" and not by_unit  # unit means: Welch
    adaptive = cfg.policy.policy_class.adaptive
    p_best, loss = _bayes(cfg, t, draws, seed)
    srm_chi2, srm_p = _srm(t, by_unit)
    settled = sum(x.n for x in m.values())

    rows = []
    for i, a in enumerate(names):
        row = ArmReport(
            name=a,
            samples=m[a].n,
            decisions=t[a].pulls,
            mean=_num(m[a].mean),
            p_best=float(p_best[i]),
            expected_loss=float(loss[i]),
            ipw_mean=_num(t[a].ipw_sum / settled) if adaptive and settled else None,
        )
        if a == base:
            row = dataclasses.replace(row, note="baseline")
        else:
            cmp = _compare(
                base, m[a], m[base], t[a], t[base], proportions=proportions, alpha=alpha, tau=tau
            )
            row = dataclasses.replace(row, **cmp)
        rows.append(row)

    notes = [PEEKING_NOTE.format(tau=tau)]
    if by_unit:
        notes.insert(0, UNIT_NOTE)
    if adaptive:
        notes.insert(0, ADAPTIVE_NOTE.format(kind=cfg.policy.kind))
    warning = None
    if srm_p < SRM_THRESHOLD:
        warning = (
            f"sample ratio mismatch (p = {srm_p:.2g} < {SRM_THRESHOLD}): the logged decisions "
            "do not match the allocation; decisions were lost or duplicated. Do not trust "
            "any other number here until this is explained."
        )
    return AnalysisReport(
        experiment=cfg.name,
        baseline=base,
        alpha=alpha,
        tau=tau,
        test="two-proportion z-test" if proportions else "Welch t-test",
        adaptive=adaptive,
        biased_by_adaptive_allocation=BIASED_FIELDS if adaptive else (),
        srm_chi2=srm_chi2,
        srm_p_value=srm_p,
        srm_warning=warning,
        posterior_draws=draws,
        notes=tuple(notes),
        arms=tuple(rows),
        unit_of_analysis="unit" if by_unit else "request",
        shadow=tuple(
            shadow_report(a.name, totals.get(f"shadow/{a.name}", ArmTotals()))
            for a in (cfg.shadow.arms if cfg.shadow is not None else [])
        ),
    )
