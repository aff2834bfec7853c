"""Model references: what serves an arm. A discriminated union on ``kind``.

``MODEL_REF`` validates a reference from plain data (what a ModelVersion replica
receives) with the same rules as a config file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, TypeAdapter

from bandit_serve.config.base import Strict

__all__ = ["MODEL_REF", "CallableModel", "ModelRef", "SklearnModel", "model_shorthand"]


class SklearnModel(Strict):
    """A scikit-learn estimator saved with joblib. Unpickles: load trusted files only."""

    kind: Literal["sklearn"]
    path: str = Field(min_length=1)

    def relative_to(self, base: Path) -> Self:
        """The same reference with a relative path taken relative to ``base``."""
        if Path(self.path).is_absolute():
            return self
        return self.model_copy(update={"path": str(base / self.path)})


class CallableModel(Strict):
    """An importable Python callable, ``package.module:function``."""

    kind: Literal["callable"]
    target: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

    def relative_to(self, base: Path) -> Self:
        return self


ModelRef = Annotated[SklearnModel | CallableModel, Field(discriminator="kind")]
MODEL_REF: TypeAdapter[SklearnModel | CallableModel] = TypeAdapter(ModelRef)


def model_shorthand(v: Any) -> Any:
    """``model: pkg.mod:fn`` or ``model: path/to/file.joblib`` as a plain string."""
    if isinstance(v, str):
        if v.endswith((".joblib", ".pkl")):
            return {"kind": "sklearn", "path": v}
        return {"kind": "callable", "target": v}
    return v
