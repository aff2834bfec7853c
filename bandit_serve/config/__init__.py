"""Experiment config files (YAML), validated by pydantic.

A file holds ``experiments``; each has ``arms`` (a name and a model reference), a
``policy`` (a discriminated union on ``kind``) and a ``reward`` spec. :func:`load_config`
turns any problem into one :class:`~bandit_serve.errors.ConfigError` whose message names
the file, the field path and what is wrong.

Modules: ``base`` (shared model rules), ``policies`` (one config per policy kind),
``models`` (model references), ``experiment`` (experiments and whole files), ``loading``
(YAML, error messages), ``safety`` (guardrails, notifications), ``auth`` (API keys and scopes).
"""

from __future__ import annotations

from bandit_serve.config.auth import ApiKeyConfig, AuthConfig, key_digest
from bandit_serve.config.base import NAME_PATTERN, Name, Strict, require_unique
from bandit_serve.config.experiment import (
    REWARD_LIMIT,
    AppConfig,
    ArmConfig,
    BucketConfig,
    ExperimentConfig,
    RewardSpec,
)
from bandit_serve.config.loading import (
    ConfigWatch,
    discriminator_tags,
    format_validation_error,
    load_config,
    parse_config,
    read_yaml,
)
from bandit_serve.config.models import MODEL_REF, CallableModel, ModelRef, SklearnModel
from bandit_serve.config.policies import (
    CanaryConfig,
    CanaryStep,
    EpsilonGreedyConfig,
    FixedConfig,
    GaussianThompsonConfig,
    KLUCBConfig,
    PolicyConfig,
    PolicyConfigBase,
    ThompsonConfig,
    UCB1Config,
)
from bandit_serve.config.rollout import (
    AssignmentConfig,
    LayerConfig,
    ShadowArmConfig,
    ShadowConfig,
)
from bandit_serve.config.safety import (
    LATENCY_RESOLUTION,
    MIN_RATIO,
    GuardrailRule,
    GuardrailsConfig,
    NotifyConfig,
)

__all__ = [
    "LATENCY_RESOLUTION",
    "MIN_RATIO",
    "MODEL_REF",
    "NAME_PATTERN",
    "REWARD_LIMIT",
    "ApiKeyConfig",
    "AppConfig",
    "ArmConfig",
    "AssignmentConfig",
    "AuthConfig",
    "BucketConfig",
    "CallableModel",
    "CanaryConfig",
    "CanaryStep",
    "ConfigWatch",
    "EpsilonGreedyConfig",
    "ExperimentConfig",
    "FixedConfig",
    "GaussianThompsonConfig",
    "GuardrailRule",
    "GuardrailsConfig",
    "KLUCBConfig",
    "LayerConfig",
    "ModelRef",
    "Name",
    "NotifyConfig",
    "PolicyConfig",
    "PolicyConfigBase",
    "RewardSpec",
    "ShadowArmConfig",
    "ShadowConfig",
    "SklearnModel",
    "Strict",
    "ThompsonConfig",
    "UCB1Config",
    "discriminator_tags",
    "format_validation_error",
    "key_digest",
    "load_config",
    "parse_config",
    "read_yaml",
    "require_unique",
]
