"""Prometheus metrics.

Experiment-level values (decisions, rewards, reward sums, errors, traffic share,
posterior means) are read from the store on every scrape, so every router replica
answers the same. Latency histograms are per process (each replica its own).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["PROCESS_REGISTRY", "decision_latency", "model_latency", "render"]

PROCESS_REGISTRY = CollectorRegistry(auto_describe=True)
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
decision_latency = Histogram(
    "bandit_decision_latency_seconds",
    "Time from a predict request reaching the router to its answer (this process).",
    ["experiment"],
    buckets=_BUCKETS,
    registry=PROCESS_REGISTRY,
)
model_latency = Histogram(
    "bandit_model_latency_seconds",
    "Time of the model call of an arm, as the router sees it (this process).",
    ["experiment", "arm"],
    buckets=_BUCKETS,
    registry=PROCESS_REGISTRY,
)


class _StoreView(Collector):
    """Metric families built from ``describe()`` dicts read from the store."""

    def __init__(self, experiments: list[dict[str, Any]]) -> None:
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
        reward_sum = GaugeMetricFamily(
            "bandit_reward_sum", "Sum of applied rewards per arm.", labels=labels
        )
        errors = CounterMetricFamily(
            "bandit_model_errors", "Model calls that failed, per arm.", labels=labels
        )
        share = GaugeMetricFamily(
            "bandit_traffic_share", "Share of decisions in the recent window.", labels=labels
        )
        posterior = GaugeMetricFamily(
            "bandit_posterior_mean", "Posterior mean reward per arm.", labels=labels
        )
        for e in self.experiments:
            for a in e["arms"]:
                lv = [e["name"], a["name"]]
                decisions.add_metric(lv, a["pulls"])
                rewards.add_metric([*lv, "applied"], a["rewards"] - a["defaulted"])
                rewards.add_metric([*lv, "default"], a["defaulted"])
                rewards.add_metric([*lv, "dropped"], a["dropped"])
                rewards.add_metric([*lv, "duplicate"], a["duplicates"])
                rewards.add_metric([*lv, "expired"], a["late"])
                reward_sum.add_metric(lv, a["reward_sum"])
                errors.add_metric(lv, a["errors"])
                share.add_metric(lv, a["traffic_share"])
                posterior.add_metric(lv, a["posterior"]["mean"])
        yield from (decisions, rewards, reward_sum, errors, share, posterior)


def render(experiments: list[dict[str, Any]]) -> bytes:
    """The Prometheus text exposition: store-backed families, then this process's."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StoreView(experiments))
    return generate_latest(registry) + generate_latest(PROCESS_REGISTRY)
