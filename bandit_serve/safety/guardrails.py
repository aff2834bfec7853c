"""Guardrail checks: each rule of an experiment, for every arm against the baseline.

The statistics are :mod:`bandit_serve.stats.guardrails` (one-sided anytime-valid tests,
vectorized over arms); this module picks each arm's window (everything since the arm's
last restore, for the arm and the baseline alike; a reset starts a new epoch), splits
the experiment's alpha over its rules, and words what it finds. It reads statistics and
returns findings; the router acts on them (:mod:`bandit_serve.safety.actions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bandit_serve.config import ExperimentConfig, GuardrailRule
from bandit_serve.stats import guardrails as tests
from bandit_serve.stats import histogram
from bandit_serve.store import ArmTotals, Snapshot

__all__ = ["Finding", "evaluate", "latency_summary"]


@dataclass(frozen=True)
class Finding:
    """One rule for one arm: whether it is violated, the evidence, and why in words."""

    arm: str
    rule: GuardrailRule
    violated: bool
    p_value: float
    value: float | None  # the arm's value of the metric (None without data)
    reference: float | None  # the baseline's value, or the ceiling
    n: int  # calls (rewards for the reward rule) the test counted
    reason: str

    def public(self) -> dict[str, Any]:
        return {
            "arm": self.arm,
            "rule": self.rule.id,
            "violated": self.violated,
            "p_value": self.p_value,
            "value": self.value,
            "reference": self.reference,
            "n": self.n,
            "reason": self.reason,
        }


def _hist(t: ArmTotals) -> NDArray[np.float64]:
    h = np.zeros(histogram.NBINS)
    for b, n in t.latency.items():
        if 0 <= b < histogram.NBINS:
            h[b] = n
    return h


def latency_summary(t: ArmTotals) -> dict[str, float | None]:
    """``{p50, p95, p99}`` in seconds from an arm's histogram (None without calls)."""
    h = _hist(t)
    out: dict[str, float | None] = {}
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        v = float(histogram.quantile_interpolated(h, q))
        out[name] = v if np.isfinite(v) else None
    return out


def _num(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def evaluate(cfg: ExperimentConfig, snap: Snapshot, arms: Sequence[str]) -> list[Finding]:
    """Every rule for every arm in ``arms`` (the baseline only for absolute rules)."""
    g = cfg.guardrails
    if g is None or not arms:
        return []
    base = cfg.baseline_arm
    alpha = g.alpha_per_rule
    others = [a for a in arms if a != base]
    # each arm's window starts at its last restore: the same window for the baseline
    arm_t = [snap.since_restore(a, a) for a in others]
    base_t = [snap.since_restore(a, base) for a in others]
    findings: list[Finding] = []
    for rule in g.rules:
        if others:
            findings += _relative(rule, others, arm_t, base_t, alpha, g.min_calls)
        if rule.absolute and base in arms:  # the baseline can break a ceiling: alert only
            findings += _relative(
                rule,
                [base],
                [snap.totals.get(base, ArmTotals())],
                [ArmTotals()],
                alpha,
                g.min_calls,
            )
    return findings


def _relative(
    rule: GuardrailRule,
    names: list[str],
    arm_t: list[ArmTotals],
    base_t: list[ArmTotals],
    alpha: float,
    min_calls: int,
) -> list[Finding]:
    kind, bound = rule.bound
    calls = np.array([t.calls for t in arm_t], dtype=np.float64)
    base_calls = np.array([t.calls for t in base_t], dtype=np.float64)
    if rule.metric in ("error_rate", "rejection_rate"):
        attr = "errors" if rule.metric == "error_rate" else "input_rejections"
        errs = np.array([getattr(t, attr) for t in arm_t], dtype=np.float64)
        base_errs = np.array([getattr(t, attr) for t in base_t], dtype=np.float64)
        r = tests.error_rate_excess(calls, errs, base_calls, base_errs, bound, alpha, min_calls)
        with np.errstate(invalid="ignore", divide="ignore"):
            value, ref = errs / calls, base_errs / base_calls
        words = [
            f"{rule.metric} {value[i]:.4f} vs baseline {ref[i]:.4f} (max_increase {bound:g}) "
            f"over {int(calls[i])} calls"
            for i in range(len(names))
        ]
        n = calls
    elif rule.metric == "reward":
        rn = np.array([t.rewards for t in arm_t], dtype=np.float64)
        rs = np.array([t.reward_sum for t in arm_t])
        rq = np.array([t.reward_sq for t in arm_t])
        bn = np.array([t.rewards for t in base_t], dtype=np.float64)
        bs = np.array([t.reward_sum for t in base_t])
        bq = np.array([t.reward_sq for t in base_t])
        r = tests.reward_decrease(rn, rs, rq, bn, bs, bq, bound, alpha, min_calls)
        with np.errstate(invalid="ignore", divide="ignore"):
            value, ref = rs / rn, bs / bn
        words = [
            f"reward mean {value[i]:.4f} vs baseline {ref[i]:.4f} (max_decrease {bound:g}) "
            f"over {int(rn[i])} rewards"
            for i in range(len(names))
        ]
        n = rn
    else:
        q = rule.quantile
        assert q is not None
        h = np.stack([_hist(t) for t in arm_t])
        value = histogram.quantile_interpolated(h, q)
        if kind == "max_ratio":
            bh = np.stack([_hist(t) for t in base_t])
            r = tests.latency_ratio(h, bh, q, bound, alpha, min_calls)
            ref = histogram.quantile_interpolated(bh, q)
            words = [
                f"{rule.metric} {value[i]:.4f}s vs baseline {ref[i]:.4f}s "
                f"(max_ratio {bound:g}) over {int(calls[i])} calls"
                for i in range(len(names))
            ]
        else:
            r = tests.latency_ceiling(h, q, bound, alpha, min_calls)
            ref = np.full(len(names), bound)
            words = [
                f"{rule.metric} {value[i]:.4f}s against the ceiling {bound:g}s "
                f"over {int(calls[i])} calls"
                for i in range(len(names))
            ]
        n = calls
    out = []
    for i, name in enumerate(names):
        violated = bool(np.asarray(r.violated)[i])
        p = float(np.asarray(r.p_value)[i])
        reason = f"{rule.id}: {words[i]}; always-valid p = {p:.2g}" + (
            f" < {alpha:.2g}" if violated else ""
        )
        out.append(
            Finding(
                arm=name,
                rule=rule,
                violated=violated,
                p_value=p,
                value=_num(value[i]),
                reference=_num(ref[i]),
                n=int(n[i]),
                reason=reason,
            )
        )
    return out
