"""An experiment config: arms, the policy routing between them, the reward spec."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from bandit_serve.config.auth import AuthConfig
from bandit_serve.config.base import Name, Strict, require_unique
from bandit_serve.config.models import DeploymentModel, ModelRef, model_shorthand
from bandit_serve.config.policies import CanaryConfig, PolicyConfig
from bandit_serve.config.rollout import (
    AssignmentConfig,
    LayerConfig,
    ShadowArmConfig,
    ShadowConfig,
)
from bandit_serve.config.safety import GuardrailsConfig, NotifyConfig
from bandit_serve.policies import Policy
from bandit_serve.store.base import Durability, ExperimentSettings

__all__ = [
    "REWARD_LIMIT",
    "AppConfig",
    "ArmConfig",
    "BucketConfig",
    "ExperimentConfig",
    "RewardSpec",
]

# Rewards are stored as fixed-point integers of 1e-6, so one reward within +-1e9 is exact
# in a double (< 2**53). Sums are int64 (in Redis): at this bound they hold only about
# 9,200 rewards, so the store refuses a reward that would overflow an arm's sum.
REWARD_LIMIT = 1e9


class ArmConfig(Strict):
    """One arm: a model version."""

    name: Name
    model: ModelRef
    replicas: int = Field(1, ge=1, le=64)
    placement: Literal["replica", "router"] = Field(
        "replica",
        description="replica: a ModelVersion deployment of its own (Ray engine); router: "
        "loaded in every router replica and called in-process, without the handle hop.",
    )

    @field_validator("model", mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return model_shorthand(v)

    @model_validator(mode="after")
    def _placed(self) -> Self:
        if self.placement == "router":
            if isinstance(self.model, DeploymentModel):
                raise ValueError(
                    "placement: router loads the model in the router; a model of kind "
                    "deployment runs in its own Serve deployment (leave placement out)"
                )
            if self.replicas != 1:
                raise ValueError(
                    "replicas counts ModelVersion replicas; an arm with placement: router "
                    "runs in every router replica (scale it with --router-replicas)"
                )
        return self


class RewardSpec(Strict):
    """What a reward is, how long to wait for it, and what happens when it never comes.

    ``bernoulli`` takes rewards in [0, 1] (0/1 clicks, or fractions); ``bounded`` takes
    [low, high]; ``gaussian`` takes any real number inside [low, high] when given (by
    default +-1e9, the store's exact fixed-point range).
    """

    kind: Literal["bernoulli", "bounded", "gaussian"]
    low: float | None = Field(None, allow_inf_nan=False)
    high: float | None = Field(None, allow_inf_nan=False)
    wait_seconds: float = Field(600.0, gt=0, le=30 * 86400)
    on_expiry: Literal["default", "drop"] = "default"
    default: float | None = Field(None, allow_inf_nan=False)
    on_model_error: Literal["low", "withdraw"] = Field(
        "low",
        description="low: a failed or timed-out model call is a decision rewarded "
        "error_reward at once (every policy learns from it); withdraw: it leaves the "
        "reward statistics (it still counts as the arm's error).",
    )
    error_reward: float | None = Field(None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        low, high = self.bounds
        if self.kind == "bernoulli" and (self.low, self.high) not in {(None, None), (0.0, 1.0)}:
            raise ValueError("bernoulli rewards are always in [0, 1]; leave out low and high")
        if self.kind == "bounded" and (self.low is None or self.high is None):
            raise ValueError("bounded rewards need both low and high")
        if not low < high:
            raise ValueError(f"low ({low}) must be below high ({high})")
        if max(abs(low), abs(high)) > REWARD_LIMIT:
            raise ValueError(f"low and high must lie within +-{REWARD_LIMIT:g}")
        if self.on_expiry == "default":
            if self.default is None and self.kind == "gaussian":
                raise ValueError("gaussian rewards need a default reward, or on_expiry: drop")
            d = self.default_reward
            if not low <= d <= high:
                raise ValueError(f"default reward {d} lies outside [{low}, {high}]")
        if self.on_model_error == "low":
            if self.error_reward is None and self.kind == "gaussian":
                raise ValueError(
                    "gaussian rewards have no natural low value: give error_reward, or "
                    "on_model_error: withdraw"
                )
            e = self.failed_call_reward
            if not low <= e <= high:
                raise ValueError(f"error_reward {e} lies outside [{low}, {high}]")
        return self

    @property
    def failed_call_reward(self) -> float:
        """The reward of a decision whose model call failed (``on_model_error: low``)."""
        return self.error_reward if self.error_reward is not None else self.bounds[0]

    @property
    def bounds(self) -> tuple[float, float]:
        """Closed interval of accepted rewards."""
        if self.kind == "bernoulli":
            return 0.0, 1.0
        return (
            -REWARD_LIMIT if self.low is None else self.low,
            REWARD_LIMIT if self.high is None else self.high,
        )

    @property
    def default_reward(self) -> float:
        """Reward applied to a decision whose wait window passed (``on_expiry: default``)."""
        if self.default is not None:
            return self.default
        return self.bounds[0]  # bernoulli/bounded: the low end (a miss counts as failure)


class BucketConfig(Strict):
    """Time buckets kept beside the totals (traffic over time, the dashboard's charts)."""

    seconds: int = Field(60, ge=1, le=86400)
    retention_seconds: int = Field(86400, ge=60, le=90 * 86400)


class ExperimentConfig(Strict):
    """One experiment: arms, the policy routing between them, and the reward spec."""

    name: Name
    arms: list[ArmConfig] = Field(min_length=1, max_length=256)
    policy: PolicyConfig
    reward: RewardSpec
    sync_interval_seconds: float = Field(1.0, gt=0, le=3600)
    record_retention_seconds: float = Field(
        86400.0, ge=1, le=90 * 86400, description="How long a decision is kept after its deadline."
    )
    buckets: BucketConfig = BucketConfig()
    baseline: Name | None = Field(
        None, description="The arm others are compared with (default: the first arm)."
    )
    guardrails: GuardrailsConfig | None = None
    input_schema: dict[str, Any] | None = Field(
        None, description="JSON Schema every request's inputs must match (422 otherwise)."
    )
    notify: NotifyConfig | None = None
    assignment: AssignmentConfig | None = None
    layer: LayerConfig | None = None
    shadow: ShadowConfig | None = None
    durability: Durability | None = Field(
        None,
        description="replicated: a logged decision or reward is answered only once a "
        "Redis replica has it (503 otherwise); primary: once the master has it. Default: "
        "the store's (the redis_url's durability=, primary unless it says replicated).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        require_unique(self.arm_names, "arm names")
        problems = self.policy.fit_problems(self.reward.kind, self.arm_names)
        if problems:
            raise ValueError("; ".join(problems))
        if self.baseline is not None and self.baseline not in self.arm_names:
            raise ValueError(
                f"baseline {self.baseline!r} is not an arm; arms: {', '.join(self.arm_names)}"
            )
        if self.guardrails is not None and len(self.arms) < 2:
            raise ValueError("guardrails compare arms with a baseline: they need at least 2 arms")
        if self.input_schema is not None:
            _check_schema(self.input_schema)
        if isinstance(self.policy, CanaryConfig):
            self._check_canary(self.policy)
        if self.shadow is not None:
            clash = sorted({a.name for a in self.shadow.arms} & set(self.arm_names))
            if clash:
                raise ValueError(f"shadow arms must not be arms too: {', '.join(clash)}")
            require_unique([a.name for a in self.shadow.arms], "shadow arm names")
        return self

    def _check_canary(self, c: CanaryConfig) -> None:
        # whether the candidate is an arm: CanaryConfig.fit_problems (shared with scenarios)
        if c.candidate == self.baseline_arm:
            raise ValueError(
                f"policy.candidate {c.candidate!r} is the baseline; name the baseline with "
                "baseline: <arm>"
            )
        if self.guardrails is None or self.guardrails.on_violation != "rollback":
            raise ValueError(
                "a canary needs guardrails with on_violation: rollback (they decide whether "
                "a step may advance and roll the candidate back)"
            )

    @property
    def hosted(self) -> list[ArmConfig | ShadowArmConfig]:
        """Every model the experiment calls: its arms, then its shadow arms."""
        return [*self.arms, *(self.shadow.arms if self.shadow is not None else [])]

    @property
    def baseline_arm(self) -> str:
        return self.baseline if self.baseline is not None else self.arms[0].name

    @property
    def arm_names(self) -> list[str]:
        return [a.name for a in self.arms]

    def build_policy(self) -> Policy:
        return self.policy.build(self.arm_names)

    def store_settings(self) -> ExperimentSettings:
        """What the store needs to know about this experiment."""
        low, high = self.reward.bounds
        return ExperimentSettings(
            name=self.name,
            low=low,
            high=high,
            wait_seconds=self.reward.wait_seconds,
            on_expiry=self.reward.on_expiry,
            default_reward=self.reward.default_reward,
            on_model_error=self.reward.on_model_error,
            error_reward=self.reward.failed_call_reward,
            retention_seconds=self.record_retention_seconds,
            bucket_seconds=self.buckets.seconds,
            bucket_retention_seconds=self.buckets.retention_seconds,
            sticky_seconds=self.assignment.sticky_seconds if self.assignment else 86400.0,
            durability=self.durability,
        )


def _check_schema(schema: dict[str, Any]) -> None:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as err:
        raise ValueError(f"input_schema is not a valid JSON Schema: {err.message}") from None


class AppConfig(Strict):
    """A whole config file."""

    redis_url: str | None = Field(None, pattern=r"^(redis|rediss|unix)(\+cluster|\+sentinel)?://")
    experiments: list[ExperimentConfig] = Field(min_length=1)
    auth: AuthConfig | None = None

    @model_validator(mode="after")
    def _unique(self) -> Self:
        require_unique([e.name for e in self.experiments], "experiment names")
        from bandit_serve.assignment import Layer, check_layers

        claims = {e.name: Layer(e.layer.name, *e.layer.range) for e in self.experiments if e.layer}
        problems = check_layers(claims)
        if problems:
            raise ValueError("; ".join(problems))
        if self.auth is not None:
            unknown = sorted(self.auth.experiments_named() - {e.name for e in self.experiments})
            if unknown:
                raise ValueError(f"auth scopes name unknown experiments: {', '.join(unknown)}")
        return self
