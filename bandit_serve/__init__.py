"""bandit-serve: model versions as arms of a bandit, with exactly-once delayed rewards.

The public facade; the submodules hold the details.
"""

from __future__ import annotations

from bandit_serve.config import AppConfig, ExperimentConfig, load_config
from bandit_serve.errors import (
    BanditServeError,
    ConfigError,
    PolicyInputError,
    StoreError,
    UnknownExperimentError,
)
from bandit_serve.policies import POLICIES, ArmStats, Decision, Policy
from bandit_serve.store import (
    ArmTotals,
    ExperimentSettings,
    MemoryStore,
    RedisStore,
    RewardOutcome,
    Store,
)

__all__ = [
    "POLICIES",
    "AppConfig",
    "ArmStats",
    "ArmTotals",
    "BanditServeError",
    "ConfigError",
    "Decision",
    "ExperimentConfig",
    "ExperimentSettings",
    "MemoryStore",
    "Policy",
    "PolicyInputError",
    "RedisStore",
    "RewardOutcome",
    "Store",
    "StoreError",
    "UnknownExperimentError",
    "load_config",
]

__version__ = "0.1.0"
