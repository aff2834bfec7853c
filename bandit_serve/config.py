"""Experiment config files (YAML), validated by pydantic.

A file holds ``experiments``; each has ``arms`` (a name and a model reference), a
``policy`` (a discriminated union on ``kind``) and a ``reward`` spec. :func:`load_config`
turns any problem into one :class:`~bandit_serve.errors.ConfigError` whose message names
the file, the field path and what is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from bandit_serve.errors import ConfigError
from bandit_serve.policies import (
    KLUCB,
    UCB1,
    BetaThompson,
    EpsilonGreedy,
    FixedWeights,
    GaussianThompson,
    Policy,
)

__all__ = [
    "AppConfig",
    "ArmConfig",
    "BucketConfig",
    "CallableModel",
    "ExperimentConfig",
    "PolicyConfig",
    "RewardSpec",
    "SklearnModel",
    "format_validation_error",
    "load_config",
    "parse_config",
]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
# Rewards are stored as fixed-point integers of 1e-6; this keeps one reward exact in a
# double (< 2**53) and a sum of a billion of them inside int64.
REWARD_LIMIT = 1e9

MinShare = Annotated[float, Field(ge=0.0, lt=1.0)]
Draws = Annotated[int, Field(ge=1, le=100_000)]


def require_unique(names: list[str], what: str) -> None:
    """Raise ValueError naming the repeated entries of ``names``."""
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{what} must be unique; repeated: {', '.join(dupes)}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- policies ------------------------------------------------------------------------


class ThompsonConfig(_Strict):
    """Beta-Bernoulli Thompson sampling (rewards in [0, 1] or rescaled from [low, high])."""

    kind: Literal["thompson"]
    alpha: float = Field(1.0, gt=0, description="Beta prior alpha (prior successes).")
    beta: float = Field(1.0, gt=0, description="Beta prior beta (prior failures).")
    draws: Draws = Field(1000, description="Monte Carlo draws for the propensity estimate.")
    min_share: MinShare = 0.0

    def build(self) -> Policy:
        return BetaThompson(
            alpha=self.alpha, beta=self.beta, draws=self.draws, min_share=self.min_share
        )


class GaussianThompsonConfig(_Strict):
    """Thompson sampling with a Normal-Inverse-Gamma prior (unknown mean and variance)."""

    kind: Literal["gaussian_thompson"]
    mu: float = 0.0
    kappa: float = Field(1.0, gt=0)
    alpha: float = Field(1.0, gt=0)
    beta: float = Field(1.0, gt=0)
    draws: Draws = 1000
    min_share: MinShare = 0.0

    def build(self) -> Policy:
        return GaussianThompson(
            mu=self.mu,
            kappa=self.kappa,
            alpha=self.alpha,
            beta=self.beta,
            draws=self.draws,
            min_share=self.min_share,
        )


class UCB1Config(_Strict):
    """UCB1 with exploration constant ``alpha`` (2 in Auer et al.)."""

    kind: Literal["ucb1"]
    alpha: float = Field(2.0, gt=0)
    min_share: MinShare = 0.0

    def build(self) -> Policy:
        return UCB1(alpha=self.alpha, min_share=self.min_share)


class KLUCBConfig(_Strict):
    """KL-UCB for Bernoulli rewards; ``c`` weighs the ln ln t term (0 in practice)."""

    kind: Literal["kl_ucb"]
    c: float = Field(0.0, ge=0)
    min_share: MinShare = 0.0

    def build(self) -> Policy:
        return KLUCB(c=self.c, min_share=self.min_share)


class EpsilonGreedyConfig(_Strict):
    """Epsilon-greedy; ``decay_after`` = m decays epsilon as ``epsilon * min(1, m / t)``."""

    kind: Literal["epsilon_greedy"]
    epsilon: float = Field(0.1, ge=0, le=1)
    decay_after: int | None = Field(None, ge=1)
    min_share: MinShare = 0.0

    def build(self) -> Policy:
        return EpsilonGreedy(
            epsilon=self.epsilon, decay_after=self.decay_after, min_share=self.min_share
        )


class FixedConfig(_Strict):
    """A fixed split (A/B test): one weight per arm, in arm order; even when omitted."""

    kind: Literal["fixed"]
    weights: list[Annotated[float, Field(ge=0, allow_inf_nan=False)]] | None = None
    min_share: MinShare = 0.0

    @field_validator("weights")
    @classmethod
    def _not_all_zero(cls, w: list[float] | None) -> list[float] | None:
        if w is not None and (len(w) == 0 or sum(w) <= 0):
            raise ValueError("weights must contain at least one positive weight")
        return w

    def build(self) -> Policy:
        return FixedWeights(weights=self.weights, min_share=self.min_share)


PolicyConfig = Annotated[
    ThompsonConfig
    | GaussianThompsonConfig
    | UCB1Config
    | KLUCBConfig
    | EpsilonGreedyConfig
    | FixedConfig,
    Field(discriminator="kind"),
]

POLICY_KINDS = ("thompson", "gaussian_thompson", "ucb1", "kl_ucb", "epsilon_greedy", "fixed")
# Policies whose model needs rewards on [0, 1]: bounded rewards are rescaled for them.
UNIT_INTERVAL_POLICIES = frozenset({"thompson", "ucb1", "kl_ucb"})


# -- models ------------------------------------------------------------------------


class SklearnModel(_Strict):
    """A scikit-learn estimator saved with joblib. Unpickles: load trusted files only."""

    kind: Literal["sklearn"]
    path: str = Field(min_length=1)


class CallableModel(_Strict):
    """An importable Python callable, ``package.module:function``."""

    kind: Literal["callable"]
    target: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


ModelRef = Annotated[SklearnModel | CallableModel, Field(discriminator="kind")]


class ArmConfig(_Strict):
    """One arm: a model version."""

    name: Name
    model: ModelRef
    replicas: int = Field(1, ge=1, le=64)

    @field_validator("model", mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        """``model: pkg.mod:fn`` or ``model: path/to/file.joblib`` as a plain string."""
        if isinstance(v, str):
            if v.endswith((".joblib", ".pkl")):
                return {"kind": "sklearn", "path": v}
            return {"kind": "callable", "target": v}
        return v


# -- rewards -----------------------------------------------------------------------


class RewardSpec(_Strict):
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
        return self

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


class BucketConfig(_Strict):
    """Time buckets kept beside the totals (traffic charts, windowed policies)."""

    seconds: int = Field(60, ge=1, le=86400)
    retention_seconds: int = Field(86400, ge=60, le=90 * 86400)


class ExperimentConfig(_Strict):
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

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        require_unique([a.name for a in self.arms], "arm names")
        k = len(self.arms)
        p = self.policy
        if p.min_share * k > 1.0:
            raise ValueError(
                f"policy.min_share {p.min_share} times {k} arms exceeds 1; lower min_share"
            )
        if isinstance(p, FixedConfig) and p.weights is not None and len(p.weights) != k:
            raise ValueError(f"policy.weights has {len(p.weights)} entries for {k} arms")
        if p.kind in UNIT_INTERVAL_POLICIES and self.reward.kind == "gaussian":
            raise ValueError(
                f"policy {p.kind} needs rewards in a known interval; use reward kind bernoulli "
                f"or bounded, or policy gaussian_thompson"
            )
        if p.kind == "kl_ucb" and self.reward.kind != "bernoulli":
            raise ValueError("policy kl_ucb needs reward kind bernoulli")
        return self

    @property
    def arm_names(self) -> list[str]:
        return [a.name for a in self.arms]

    def build_policy(self) -> Policy:
        return self.policy.build()


class AppConfig(_Strict):
    """A whole config file."""

    redis_url: str | None = Field(None, pattern=r"^(redis|rediss|unix)://")
    experiments: list[ExperimentConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        require_unique([e.name for e in self.experiments], "experiment names")
        return self

    def experiment(self, name: str) -> ExperimentConfig:
        for e in self.experiments:
            if e.name == name:
                return e
        raise KeyError(name)


# -- loading -----------------------------------------------------------------------

# Tags of discriminated unions: pydantic puts them in an error's location; we drop them.
UNION_TAGS = {*POLICY_KINDS, "sklearn", "callable", "bernoulli", "gaussian", "none", "exponential"}

M = TypeVar("M", bound=BaseModel)


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    prev: int | str | None = None
    for part in loc:
        if prev is not None and isinstance(part, str) and part in UNION_TAGS:
            prev = part
            continue  # the union's tag, not a field
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
        prev = part
    return out or "(top level)"


def format_validation_error(source: str, err: ValidationError) -> str:
    """One line per problem: ``source: field.path: what is wrong``."""
    lines = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "union_tag_invalid":
            kind = e["input"].get("kind")
            msg = f"unknown kind {kind!r}; expected one of {e['ctx']['expected_tags']}"
        loc = tuple(e["loc"])
        # a whole-file check names its fields in its own message
        lines.append(f"{source}: {_loc(loc)}: {msg}" if loc else f"{source}: {msg}")
    return "\n".join(lines)


def parse_config(model: type[M], data: Any, source: str) -> M:
    """Validate already-parsed data against ``model``; errors name ``source``."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: (top level): expected a mapping, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(source, err)) from None


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; unreadable files and syntax errors become ConfigError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{p}: cannot read the file: {err.strerror or err}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f"line {where.line + 1}, column {where.column + 1}: " if where else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{p}: {at}invalid YAML: {problem}") from None


def load_config(path: str | Path) -> AppConfig:
    """Read and validate an experiment config file.

    Relative model file paths are taken relative to the config file and made absolute
    (model replicas do not share the caller's working directory).
    """
    cfg = parse_config(AppConfig, read_yaml(path), str(path))
    base = Path(path).resolve().parent
    experiments = []
    for exp in cfg.experiments:
        arms = [
            a.model_copy(
                update={"model": a.model.model_copy(update={"path": str(base / a.model.path)})}
            )
            if isinstance(a.model, SklearnModel) and not Path(a.model.path).is_absolute()
            else a
            for a in exp.arms
        ]
        experiments.append(exp.model_copy(update={"arms": arms}))
    return cfg.model_copy(update={"experiments": experiments})
