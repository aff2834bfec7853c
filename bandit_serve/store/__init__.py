"""State behind one small async interface: :class:`MemoryStore` and :class:`RedisStore`."""

from __future__ import annotations

from bandit_serve.store.base import (
    REWARD_SCALE,
    ArmTotals,
    Bucket,
    DecisionRecord,
    ExperimentSettings,
    RewardOutcome,
    SettleReport,
    Store,
    new_event_id,
    reward_units,
)
from bandit_serve.store.memory import MemoryStore
from bandit_serve.store.redis_store import RedisStore

__all__ = [
    "REWARD_SCALE",
    "ArmTotals",
    "Bucket",
    "DecisionRecord",
    "ExperimentSettings",
    "MemoryStore",
    "RedisStore",
    "RewardOutcome",
    "SettleReport",
    "Store",
    "new_event_id",
    "reward_units",
]
