"""State behind one small async interface: :class:`MemoryStore` and :class:`RedisStore`."""

from __future__ import annotations

from bandit_serve.store.base import (
    ARM_FIELDS,
    REWARD_SCALE,
    ArmStatus,
    ArmTotals,
    AuditEvent,
    Bucket,
    Control,
    DecisionRecord,
    EventState,
    ExperimentSettings,
    ExperimentState,
    LoggedDecision,
    RewardOutcome,
    SettleReport,
    ShadowCall,
    Snapshot,
    Store,
    new_event_id,
    reward_units,
)
from bandit_serve.store.memory import MemoryStore
from bandit_serve.store.redis_store import RedisStore

__all__ = [
    "ARM_FIELDS",
    "REWARD_SCALE",
    "ArmStatus",
    "ArmTotals",
    "AuditEvent",
    "Bucket",
    "Control",
    "DecisionRecord",
    "EventState",
    "ExperimentSettings",
    "ExperimentState",
    "LoggedDecision",
    "MemoryStore",
    "RedisStore",
    "RewardOutcome",
    "SettleReport",
    "ShadowCall",
    "Snapshot",
    "Store",
    "new_event_id",
    "reward_units",
]
