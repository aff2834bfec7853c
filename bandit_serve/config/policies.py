"""Policy configs: one pydantic model per policy kind, a discriminated union on ``kind``.

Each config names the policy class it builds (``policy_class``); its fields are the
class's keyword arguments, so :meth:`PolicyConfigBase.build` is one generic call. What a
policy can model (reward kinds, the [0, 1] interval) is a trait of the policy class; the
service config and the simulator's scenarios both ask :meth:`PolicyConfigBase.fit_problems`.

Adding a policy: its class in ``bandit_serve/policies/`` (with its traits), its config
class here (and in the union below), and its entry in ``bandit_serve.policies.POLICIES``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Annotated, ClassVar, Literal, Self

from pydantic import Field, field_validator, model_validator

from bandit_serve.config.base import Name, Strict
from bandit_serve.policies import (
    KLUCB,
    UCB1,
    BetaThompson,
    Canary,
    EpsilonGreedy,
    FixedWeights,
    GaussianThompson,
    Policy,
)

__all__ = [
    "CanaryConfig",
    "CanaryStep",
    "EpsilonGreedyConfig",
    "FixedConfig",
    "GaussianThompsonConfig",
    "KLUCBConfig",
    "PolicyConfig",
    "PolicyConfigBase",
    "ThompsonConfig",
    "UCB1Config",
]

MinShare = Annotated[float, Field(ge=0.0, lt=1.0)]
Draws = Annotated[int, Field(ge=1, le=100_000)]


class PolicyConfigBase(Strict):
    """Shared by every policy config: the class it builds and the traffic floor."""

    policy_class: ClassVar[type[Policy]]
    kind: str
    min_share: MinShare = 0.0

    def build(self, arms: Sequence[str]) -> Policy:
        """The policy object for the arms named ``arms``, in order (its constructor takes
        this config's fields; a policy that names an arm finds its index here)."""
        return self.policy_class(**self.model_dump(exclude={"kind"}))

    def fit_problems(
        self, reward_kind: str, arms: Sequence[str], where: str = "policy"
    ) -> list[str]:
        """Why this policy cannot route the arms named ``arms`` with ``reward_kind``
        rewards (empty when it can): one check for the service's config and the
        simulator's scenarios. ``where`` names the policy in the messages (a config
        field path)."""
        problems = []
        why = self.policy_class.fit_problem(reward_kind)
        if why is not None:
            problems.append(f"{where}: {self.kind} {why}")
        if self.min_share * len(arms) > 1.0:
            problems.append(
                f"{where}.min_share {self.min_share} times {len(arms)} arms exceeds 1; "
                "lower min_share"
            )
        return problems


class ThompsonConfig(PolicyConfigBase):
    """Beta-Bernoulli Thompson sampling (rewards in [0, 1] or rescaled from [low, high])."""

    policy_class: ClassVar[type[Policy]] = BetaThompson
    kind: Literal["thompson"]
    alpha: float = Field(1.0, gt=0, description="Beta prior alpha (prior successes).")
    beta: float = Field(1.0, gt=0, description="Beta prior beta (prior failures).")
    draws: Draws = Field(1000, description="Monte Carlo draws for the propensity estimate.")


class GaussianThompsonConfig(PolicyConfigBase):
    """Thompson sampling with a Normal-Inverse-Gamma prior (unknown mean and variance)."""

    policy_class: ClassVar[type[Policy]] = GaussianThompson
    kind: Literal["gaussian_thompson"]
    mu: float = 0.0
    kappa: float = Field(1.0, gt=0)
    alpha: float = Field(1.0, gt=0)
    beta: float = Field(1.0, gt=0)
    draws: Draws = 1000


class UCB1Config(PolicyConfigBase):
    """UCB1 with exploration constant ``alpha`` (2 in Auer et al.)."""

    policy_class: ClassVar[type[Policy]] = UCB1
    kind: Literal["ucb1"]
    alpha: float = Field(2.0, gt=0)


class KLUCBConfig(PolicyConfigBase):
    """KL-UCB for Bernoulli rewards; ``c`` weighs the ln ln t term (0 in practice)."""

    policy_class: ClassVar[type[Policy]] = KLUCB
    kind: Literal["kl_ucb"]
    c: float = Field(0.0, ge=0)


class EpsilonGreedyConfig(PolicyConfigBase):
    """Epsilon-greedy; ``decay_after`` = m decays epsilon as ``epsilon * min(1, m / t)``."""

    policy_class: ClassVar[type[Policy]] = EpsilonGreedy
    kind: Literal["epsilon_greedy"]
    epsilon: float = Field(0.1, ge=0, le=1)
    decay_after: int | None = Field(None, ge=1)


class FixedConfig(PolicyConfigBase):
    """A fixed split (A/B test): one weight per arm, in arm order; even when omitted."""

    policy_class: ClassVar[type[Policy]] = FixedWeights
    kind: Literal["fixed"]
    weights: list[Annotated[float, Field(ge=0, allow_inf_nan=False)]] | None = None

    @field_validator("weights")
    @classmethod
    def _not_all_zero(cls, w: list[float] | None) -> list[float] | None:
        if w is not None and (len(w) == 0 or sum(w) <= 0):
            raise ValueError("weights must contain at least one positive weight")
        return w

    def fit_problems(
        self, reward_kind: str, arms: Sequence[str], where: str = "policy"
    ) -> list[str]:
        problems = super().fit_problems(reward_kind, arms, where)
        if self.weights is not None and len(self.weights) != len(arms):
            problems.append(f"{where}.weights has {len(self.weights)} entries for {len(arms)} arms")
        return problems


class CanaryStep(Strict):
    """One step of a rollout: the candidate's share, and what it must show before the
    next step (calls to the candidate and time in the step, paused time excluded)."""

    weight: float = Field(gt=0, le=1, allow_inf_nan=False)
    min_calls: int = Field(0, ge=0)
    min_seconds: float = Field(0.0, ge=0, allow_inf_nan=False)


class CanaryConfig(PolicyConfigBase):
    """A staged rollout of ``candidate`` against the experiment's baseline."""

    policy_class: ClassVar[type[Policy]] = Canary
    kind: Literal["canary"]
    candidate: Name
    steps: list[CanaryStep] = Field(min_length=1, max_length=32)
    promote: Literal["auto", "manual"] = Field(
        "auto", description="auto: all traffic after the last step passes; manual: wait."
    )

    @model_validator(mode="after")
    def _increasing(self) -> Self:
        w = [s.weight for s in self.steps]
        if any(b <= a for a, b in itertools.pairwise(w)):
            raise ValueError(f"steps' weights must increase; got {', '.join(f'{x:g}' for x in w)}")
        return self

    def build(self, arms: Sequence[str]) -> Policy:
        """The split of the first step (the router follows the schedule's current step:
        :meth:`at_weight`)."""
        return self.at_weight(arms, self.steps[0].weight)

    def at_weight(self, arms: Sequence[str], weight: float) -> Canary:
        """The candidate (found by name among ``arms``) at ``weight``; the one place the
        service and the simulator make a canary's policy, ``min_share`` included."""
        return Canary(
            candidate=list(arms).index(self.candidate), weight=weight, min_share=self.min_share
        )

    def fit_problems(
        self, reward_kind: str, arms: Sequence[str], where: str = "policy"
    ) -> list[str]:
        problems = super().fit_problems(reward_kind, arms, where)
        if len(arms) != 2:
            problems.append(
                f"{where}: a canary routes between the baseline and one candidate: it needs "
                f"exactly 2 arms; got {len(arms)} (put other versions under shadow)"
            )
        if self.candidate not in arms:
            problems.append(
                f"{where}.candidate {self.candidate!r} is not an arm; arms: {', '.join(arms)}"
            )
        return problems


PolicyConfig = Annotated[
    ThompsonConfig
    | GaussianThompsonConfig
    | UCB1Config
    | KLUCBConfig
    | EpsilonGreedyConfig
    | FixedConfig
    | CanaryConfig,
    Field(discriminator="kind"),
]
