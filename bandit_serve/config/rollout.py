"""Rollout configs: how units are assigned (``assignment``), mutually exclusive layers
(``layer``), and shadow arms (``shadow``). The canary policy is in ``policies``.

::

    assignment: {by: unit_id, salt: digits-2026-11, sticky_seconds: 86400}
    layer: {name: ranking, range: [0.0, 0.5]}
    shadow:
      rate: 0.1
      arms:
        - {name: v3, model: models/v3.joblib}
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from bandit_serve.config.base import Name, Strict
from bandit_serve.config.models import ModelRef, model_shorthand

__all__ = ["AssignmentConfig", "LayerConfig", "ShadowArmConfig", "ShadowConfig"]


class AssignmentConfig(Strict):
    """Requests carrying a ``unit_id`` are placed by a deterministic hash of the salt and
    the unit (``bandit_serve.assignment``): a fixed split or a canary by bucket, a bandit
    by keeping each unit's first arm for ``sticky_seconds``."""

    by: Literal["unit_id"]
    salt: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="Default: random, made once and kept in Redis (shown in GET).",
    )
    sticky_seconds: float = Field(86400.0, gt=0, le=90 * 86400)

    @field_validator("salt")
    @classmethod
    def _not_a_layer_key(cls, v: str | None) -> str | None:
        if v is not None and v.startswith("layer:"):
            raise ValueError("a salt must not start with 'layer:' (layer positions hash that)")
        return v


class LayerConfig(Strict):
    """A share ``[lo, hi)`` of a layer's units: the experiments of one layer own disjoint
    ranges, so a unit is in at most one of them."""

    name: Name
    range: tuple[float, float]

    @model_validator(mode="after")
    def _range(self) -> Self:
        lo, hi = self.range
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"range must satisfy 0 <= lo < hi <= 1; got [{lo}, {hi})")
        return self


class ShadowArmConfig(Strict):
    """A model version that gets mirrored requests and never answers a client."""

    name: Name
    model: ModelRef
    replicas: int = Field(1, ge=1, le=64)

    @field_validator("model", mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return model_shorthand(v)


class ShadowConfig(Strict):
    """A sampled copy of the requests goes to each shadow arm after the answer is sent."""

    rate: float = Field(gt=0, le=1, description="The share of requests mirrored.")
    arms: list[ShadowArmConfig] = Field(min_length=1, max_length=16)
