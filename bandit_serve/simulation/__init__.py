"""Offline regret simulation of the served policies (vectorized over runs)."""

from __future__ import annotations

from bandit_serve.simulation.engine import PolicyResult, simulate_policy
from bandit_serve.simulation.report import summary
from bandit_serve.simulation.scenario import Scenario, load_scenario

__all__ = ["PolicyResult", "Scenario", "load_scenario", "simulate_policy", "summary"]
