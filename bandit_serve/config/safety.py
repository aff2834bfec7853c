"""Guardrail configs: rules that compare each arm with the baseline, and what to do when
one is broken.

::

    guardrails:
      rules:
        - {metric: error_rate, max_increase: 0.02}   # absolute, against the baseline
        - {metric: rejection_rate, max_increase: 0.02}  # inputs the model refused (400/422)
        - {metric: latency_p99, max_ratio: 1.5}      # also latency_p50 / latency_p95
        - {metric: latency_p99, max_seconds: 0.25}   # absolute ceiling
        - {metric: reward, max_decrease: 0.05}       # in reward units, below the baseline's mean
      min_calls: 200
      alpha: 0.01
      check_interval_seconds: 5
      on_violation: rollback     # rollback | alert
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from bandit_serve.config.base import Strict

__all__ = ["LATENCY_RESOLUTION", "MIN_RATIO", "GuardrailRule", "GuardrailsConfig", "NotifyConfig"]

# The latency histogram has 32 log-spaced bins per doubling (bandit_serve.stats.histogram,
# not imported here: it pulls scipy in; tests/test_guardrail_stats.py checks the two
# agree): its resolution is 2 ** (1/32) ~ 1.022, and a ratio must leave room for the
# threshold's rounding up to a bin edge and the baseline's quantile taken at its bin's
# upper edge: at least two bins.
LATENCY_RESOLUTION = 2 ** (1 / 32)
MIN_RATIO = 1.05

Metric = Literal[
    "error_rate", "rejection_rate", "latency_p50", "latency_p95", "latency_p99", "reward"
]
_BOUNDS = {
    "error_rate": ("max_increase",),
    "rejection_rate": ("max_increase",),
    "latency_p50": ("max_ratio", "max_seconds"),
    "latency_p95": ("max_ratio", "max_seconds"),
    "latency_p99": ("max_ratio", "max_seconds"),
    "reward": ("max_decrease",),
}


class GuardrailRule(Strict):
    """One rule: a metric and exactly one bound that fits it."""

    metric: Metric
    max_increase: float | None = Field(None, gt=0, lt=1, allow_inf_nan=False)
    max_ratio: float | None = Field(None, allow_inf_nan=False)
    max_seconds: float | None = Field(None, gt=0, le=100, allow_inf_nan=False)
    max_decrease: float | None = Field(None, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_bound(self) -> Self:
        given = [
            b
            for b in ("max_increase", "max_ratio", "max_seconds", "max_decrease")
            if getattr(self, b) is not None
        ]
        allowed = _BOUNDS[self.metric]
        if len(given) != 1 or given[0] not in allowed:
            raise ValueError(
                f"metric {self.metric} takes exactly one of {' or '.join(allowed)}"
                + (f"; got {', '.join(given)}" if given else "")
            )
        if self.max_ratio is not None:
            if self.max_ratio <= 1:
                raise ValueError(f"max_ratio must be above 1; got {self.max_ratio:g}")
            if self.max_ratio < MIN_RATIO:
                raise ValueError(
                    f"max_ratio {self.max_ratio:g} is finer than the latency histogram "
                    f"resolves (bins {LATENCY_RESOLUTION - 1:.1%} wide); use at least {MIN_RATIO}"
                )
        return self

    @property
    def bound(self) -> tuple[str, float]:
        for b in ("max_increase", "max_ratio", "max_seconds", "max_decrease"):
            v = getattr(self, b)
            if v is not None:
                return b, float(v)
        raise AssertionError("validated: one bound")  # pragma: no cover

    @property
    def quantile(self) -> float | None:
        """0.5, 0.95 or 0.99 for latency rules."""
        return {"latency_p50": 0.5, "latency_p95": 0.95, "latency_p99": 0.99}.get(self.metric)

    @property
    def id(self) -> str:
        """How events, metrics and alerts name the rule, e.g. ``latency_p99 max_ratio=1.5``."""
        name, value = self.bound
        return f"{self.metric} {name}={value:g}"

    @property
    def absolute(self) -> bool:
        """A ceiling that the baseline itself can break (it alerts, never rolls back)."""
        return self.max_seconds is not None


class GuardrailsConfig(Strict):
    """Rules checked for every non-baseline arm against the baseline."""

    rules: list[GuardrailRule] = Field(min_length=1, max_length=32)
    min_calls: int = Field(200, ge=1, description="Per arm, before any rule may fire.")
    alpha: float = Field(
        0.01, gt=0, lt=0.5, description="Anytime-valid false-rollback rate per arm."
    )
    check_interval_seconds: float = Field(5.0, gt=0, le=3600)
    on_violation: Literal["rollback", "alert"] = "rollback"

    @property
    def alpha_per_rule(self) -> float:
        """The experiment's alpha split evenly over its rules (Bonferroni)."""
        return self.alpha / len(self.rules)


class NotifyConfig(Strict):
    """Post every audit event as JSON to ``url`` (bounded retries, off the request path)."""

    url: str = Field(pattern=r"^https?://")
    timeout_seconds: float = Field(5.0, gt=0, le=60)
    retries: int = Field(3, ge=0, le=10)
