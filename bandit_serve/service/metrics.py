"""Prometheus metrics.

Everything about experiments and arms is read from the store on every scrape: decisions,
rewards, model calls, errors, the model-call latency histogram (the router's view,
recorded per decision in Redis), arm status, guardrail violations. Any router replica
answers a scrape with the whole truth, the same as every other replica, so Prometheus
needs one target (through the Serve proxy) and no sum over replicas. Only
``bandit_decision_latency_seconds`` (request time inside this router process) is per
process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from bandit_serve.safety.actions import violation_count
from bandit_serve.stats import histogram
from bandit_serve.store import ArmStatus, ArmTotals, ExperimentState, Snapshot

__all__ = ["PROCESS_REGISTRY", "ExperimentMetrics", "decision_latency", "forged_rewards", "render"]

PROCESS_REGISTRY = CollectorRegistry(auto_describe=True)
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_decision_latency = Histogram(
    "bandit_decision_latency_seconds",
    "Time from a predict request reaching the router to its answer (this process; the "
    "replica label tells the processes apart, so a scrape through the proxy never mixes "
    "two processes' counters in one series).",
    ["experiment", "replica"],
    buckets=_BUCKETS,
    registry=PROCESS_REGISTRY,
)


class _DecisionLatency:
    """``decision_latency.labels(experiment).observe(s)``, labelled with this process."""

    def labels(self, experiment: str) -> Any:
        return _decision_latency.labels(experiment, str(os.getpid()))


decision_latency = _DecisionLatency()
_forged = Counter(
    "bandit_rewards_forged",
    "Rewards refused because their event id did not verify (forged, tampered, or of "
    "another experiment), in this process.",
    ["experiment", "replica"],
    registry=PROCESS_REGISTRY,
)


class _Forged:
    def labels(self, experiment: str) -> Any:
        return _forged.labels(experiment, str(os.getpid()))


forged_rewards = _Forged()
_EDGES = histogram.prometheus_edges()


@dataclass(frozen=True)
class ExperimentMetrics:
    """What a scrape shows of one experiment: its view (``describe()``) and the snapshot
    it was read from."""

    view: dict[str, Any]
    snapshot: Snapshot


def _latency_buckets(t: ArmTotals) -> list[tuple[str, float]]:
    counts = np.zeros(histogram.NBINS)
    for b, n in t.latency.items():
        if 0 <= b < histogram.NBINS:
            counts[b] = n
    cum = histogram.cumulative_at(counts, _EDGES)
    out = [(f"{e:.6g}", float(c)) for e, c in zip(_EDGES, cum, strict=True)]
    out.append(("+Inf", float(counts.sum())))
    return out


class _StoreView(Collector):
    """Metric families built from what the store holds."""

    def __init__(self, experiments: Sequence[ExperimentMetrics]) -> None:
        self.experiments = experiments

    def collect(self) -> Iterator[Metric]:
        labels = ["experiment", "arm"]
        decisions = CounterMetricFamily(
            "bandit_decisions", "Decisions logged per arm (all replicas).", labels=labels
        )
        rewards = CounterMetricFamily(
            "bandit_rewards",
            "Rewards per arm by outcome: applied, default (applied by the sweeper), dropped, "
            "duplicate and expired (refused).",
            labels=[*labels, "outcome"],
        )
        withdrawn = CounterMetricFamily(
            "bandit_decisions_withdrawn",
            "Decisions taken out of the reward statistics (failed calls under "
            "on_model_error: withdraw; clients that went away).",
            labels=labels,
        )
        reward_sum = GaugeMetricFamily(
            "bandit_reward_sum", "Sum of applied rewards per arm.", labels=labels
        )
        calls = CounterMetricFamily(
            "bandit_model_calls", "Model calls per arm (all replicas).", labels=labels
        )
        errors = CounterMetricFamily(
            "bandit_model_errors", "Model calls that raised or timed out, per arm.", labels=labels
        )
        latency = HistogramMetricFamily(
            "bandit_model_latency_seconds",
            "Model call latency as the routers see it (all replicas; queueing included).",
            labels=labels,
        )
        share = GaugeMetricFamily(
            "bandit_traffic_share", "Share of decisions in the recent window.", labels=labels
        )
        posterior = GaugeMetricFamily(
            "bandit_posterior_mean", "Posterior mean reward per arm.", labels=labels
        )
        status = GaugeMetricFamily(
            "bandit_arm_status", "1 for the arm's current status.", labels=[*labels, "status"]
        )
        state = GaugeMetricFamily(
            "bandit_experiment_state",
            "1 for the experiment's current state.",
            labels=["experiment", "state"],
        )
        canary_weight = GaugeMetricFamily(
            "bandit_canary_weight",
            "The canary candidate's share of the traffic at its current step.",
            labels=["experiment", "candidate"],
        )
        shadow_calls = CounterMetricFamily(
            "bandit_shadow_calls",
            "Mirrored calls to shadow arms, by outcome (ok, error).",
            labels=["experiment", "shadow", "outcome"],
        )
        shadow_latency = HistogramMetricFamily(
            "bandit_shadow_latency_seconds",
            "Latency of mirrored calls to shadow arms (all replicas).",
            labels=["experiment", "shadow"],
        )
        shadow_agreement = GaugeMetricFamily(
            "bandit_shadow_agreement",
            "Share of a shadow arm's answers equal to the served answer.",
            labels=["experiment", "shadow"],
        )
        violations = CounterMetricFamily(
            "bandit_guardrail_violations",
            "Guardrail violations acted upon (a rollback or an alert), per arm and rule.",
            labels=[*labels, "rule"],
        )
        for m in self.experiments:
            e, snap = m.view, m.snapshot
            name = e["name"]
            for st in ExperimentState:
                state.add_metric([name, st.value], float(e["state"] == st.value))
            for a in e["arms"]:
                lv = [name, a["name"]]
                t = snap.totals.get(a["name"], ArmTotals())
                decisions.add_metric(lv, a["pulls"])
                rewards.add_metric([*lv, "applied"], a["rewards"] - a["defaulted"])
                rewards.add_metric([*lv, "default"], a["defaulted"])
                rewards.add_metric([*lv, "dropped"], a["dropped"])
                rewards.add_metric([*lv, "duplicate"], a["duplicates"])
                rewards.add_metric([*lv, "expired"], a["late"])
                withdrawn.add_metric(lv, a["withdrawn"])
                reward_sum.add_metric(lv, a["reward_sum"])
                calls.add_metric(lv, a["calls"])
                errors.add_metric(lv, a["errors"])
                latency.add_metric(lv, _latency_buckets(t), None)
                share.add_metric(lv, a["traffic_share"])
                posterior.add_metric(lv, a["posterior"]["mean"])
                for st_ in ArmStatus:
                    status.add_metric([*lv, st_.value], float(a["status"] == st_.value))
            c = e.get("canary")
            if c is not None:
                cand = e["policy"].get("candidate", "")
                live = c["phase"] in ("running", "paused", "awaiting_promotion")
                weight = c["weight"] if live else (1.0 if c["phase"] == "promoted" else 0.0)
                canary_weight.add_metric([name, cand], weight)
            for sh in e.get("shadow") or []:
                shadow_calls.add_metric([name, sh["name"], "ok"], sh["calls"] - sh["errors"])
                shadow_calls.add_metric([name, sh["name"], "error"], sh["errors"])
                t = snap.totals.get(f"shadow/{sh['name']}", ArmTotals())
                shadow_latency.add_metric([name, sh["name"]], _latency_buckets(t), None)
                agreed = sh["agreement"]["equal_share"]
                if agreed is not None:
                    shadow_agreement.add_metric([name, sh["name"]], agreed)
            for (arm, rule), n in sorted(violation_count(snap.control).items()):
                violations.add_metric([name, arm, rule], n)
        yield from (
            decisions,
            rewards,
            withdrawn,
            reward_sum,
            calls,
            errors,
            latency,
            share,
            posterior,
            status,
            state,
            violations,
            shadow_calls,
            shadow_latency,
            shadow_agreement,
            canary_weight,
        )


def render(experiments: Sequence[ExperimentMetrics]) -> bytes:
    """The Prometheus text exposition: store-backed families, then this process's."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StoreView(experiments))
    return generate_latest(registry) + generate_latest(PROCESS_REGISTRY)
