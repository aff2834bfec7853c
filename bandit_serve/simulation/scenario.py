"""Offline regret scenarios (YAML), validated by pydantic like experiment configs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, model_validator

from bandit_serve.config import (
    NAME_PATTERN,
    PolicyConfig,
    Strict,
    parse_config,
    read_yaml,
    require_unique,
)
from bandit_serve.errors import ConfigError

__all__ = [
    "BernoulliArm",
    "GaussianArm",
    "Scenario",
    "ScenarioPolicy",
    "load_scenario",
]


class BernoulliArm(Strict):
    kind: Literal["bernoulli"]
    mean: float = Field(ge=0, le=1)


class GaussianArm(Strict):
    kind: Literal["gaussian"]
    mean: float = Field(allow_inf_nan=False)
    sd: float = Field(1.0, gt=0, allow_inf_nan=False)


class ArmSpec(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    reward: Annotated[BernoulliArm | GaussianArm, Field(discriminator="kind")]


class NoDelay(Strict):
    kind: Literal["none"]


class FixedDelay(Strict):
    kind: Literal["fixed"]
    steps: int = Field(ge=0)


class ExponentialDelay(Strict):
    kind: Literal["exponential"]
    mean_steps: float = Field(gt=0)


Delay = Annotated[NoDelay | FixedDelay | ExponentialDelay, Field(discriminator="kind")]


class Change(Strict):
    """From decision ``at`` on, ``arm`` has a new true mean (drift)."""

    at: int = Field(ge=0)
    arm: str
    mean: float = Field(allow_inf_nan=False)


class ScenarioPolicy(Strict):
    """A policy to simulate: the served policy config, with a label and an optional commit.

    ``commit_after: n`` models how an A/B test ends: after ``n`` decisions the run plays
    only the arm with the best observed mean (the winner is promoted).
    """

    policy: PolicyConfig
    label: str | None = None
    commit_after: int | None = Field(None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _flat(cls, data: Any) -> Any:
        """Policies are written flat: ``{kind: ucb1, alpha: 2, label: ..., commit_after: ...}``."""
        if isinstance(data, dict) and "policy" not in data:
            rest = dict(data)
            out = {k: rest.pop(k) for k in ("label", "commit_after") if k in rest}
            return {**out, "policy": rest}
        return data

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        base: str = self.policy.kind
        params = self.policy.model_dump(exclude={"kind"}, exclude_defaults=True)
        if params:
            base += "(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")"
        if self.commit_after:
            base += f" commit@{self.commit_after}"
        return base


class Scenario(Strict):
    """A whole scenario file."""

    name: str = Field(min_length=1)
    horizon: int = Field(ge=1, le=10_000_000)
    runs: int = Field(ge=1, le=100_000)
    seed: int = Field(0, ge=0)
    arms: list[ArmSpec] = Field(min_length=2, max_length=1000)
    policies: list[ScenarioPolicy] = Field(min_length=1)
    delay: Delay = NoDelay(kind="none")
    missing_rate: float = Field(0.0, ge=0, le=1)
    wait_steps: int = Field(
        1000, ge=0, description="Decisions to wait for a reward before the default applies."
    )
    on_expiry: Literal["default", "drop"] = "default"
    default_reward: float = Field(0.0, allow_inf_nan=False)
    sync_every: int = Field(1, ge=1)
    changes: list[Change] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        names = [a.name for a in self.arms]
        require_unique(names, "arm names")
        kinds = {a.reward.kind for a in self.arms}
        if len(kinds) > 1:
            raise ValueError("arms must all be bernoulli or all gaussian")
        bernoulli = kinds == {"bernoulli"}
        for i, c in enumerate(self.changes):
            if c.arm not in names:
                raise ValueError(f"changes[{i}].arm: unknown arm {c.arm!r}; arms are {names}")
            if bernoulli and not 0 <= c.mean <= 1:
                raise ValueError(f"changes[{i}].mean: {c.mean} is outside [0, 1] for bernoulli")
            if c.at >= self.horizon:
                raise ValueError(f"changes[{i}].at: {c.at} is not before the horizon")
        reward_kind = "bernoulli" if bernoulli else "gaussian"
        for i, p in enumerate(self.policies):
            problems = p.policy.fit_problems(reward_kind, names, f"policies[{i}]")
            if problems:
                raise ValueError("; ".join(problems))
        if bernoulli and not 0 <= self.default_reward <= 1:
            raise ValueError("default_reward must be in [0, 1] for bernoulli arms")
        require_unique([p.name for p in self.policies], "policy labels")
        return self

    @property
    def bernoulli(self) -> bool:
        return self.arms[0].reward.kind == "bernoulli"


def load_scenario(path: str | Path, **overrides: int | None) -> Scenario:
    """Read a scenario file; ``overrides`` (runs, horizon, seed) replace its fields."""
    data = read_yaml(path)
    if isinstance(data, dict):
        data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return parse_config(Scenario, data, str(path))
    except ConfigError as err:  # policies are written flat: policies[0].alpha, not .policy.alpha
        raise ConfigError(re.sub(r"(policies\[\d+\])\.policy\b", r"\1", str(err))) from None
