"""Load the model behind an arm: a joblib-saved scikit-learn estimator or a callable.

Model code runs only inside ModelVersion replicas (or in tests, in-process). A joblib
file is unpickled, which runs code from the file: load trusted files only.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bandit_serve.config import CallableModel, SklearnModel

__all__ = ["InputContract", "LoadedModel", "identity"]


def identity(inputs: Any) -> Any:
    """A trivial model (returns its inputs): for benchmarks and smoke tests."""
    return inputs


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class InputContract:
    """What a model takes, so that a request it cannot take is refused (422) before any
    decision is logged, whichever arm would have been drawn.

    ``n_features``: a request's inputs are one row of that many finite numbers, or a
    non-empty list of such rows.
    """

    n_features: int

    def problem(self, inputs: Any) -> str | None:
        """Why ``inputs`` do not fit (None when they do). Never echoes the inputs."""
        n = self.n_features
        want = f"one row of {n} numbers or a list of such rows"
        if not isinstance(inputs, list) or not inputs:
            return f"inputs must be {want}"
        rows = inputs if isinstance(inputs[0], list) else [inputs]
        for i, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != n:
                size = len(row) if isinstance(row, list) else type(row).__name__
                where = f"row {i}" if len(rows) > 1 or rows is inputs else "the row"
                return f"inputs must be {want}; {where} has {size}"
            if not all(_is_number(x) for x in row):
                return f"inputs must be {want} (finite numbers only)"
        return None


class LoadedModel:
    """A model ready to predict one input, or many at once (for ``@serve.batch``)."""

    def __init__(self, ref: SklearnModel | CallableModel) -> None:
        self.ref = ref
        if isinstance(ref, SklearnModel):
            import joblib

            path = Path(ref.path)
            if not path.is_file():
                raise FileNotFoundError(f"model file {path} does not exist")
            self._estimator: Any = joblib.load(path)
            self._fn: Callable[[Any], Any] | None = None
        else:
            module_name, _, attr = ref.target.partition(":")
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
            if not callable(obj):
                raise TypeError(f"{ref.target} is not callable")
            self._fn = obj
            self._estimator = None

    def contract(self) -> InputContract | None:
        """The input contract the model declares (a fitted estimator's ``n_features_in_``),
        or None when it declares none (callables)."""
        n = getattr(self._estimator, "n_features_in_", None)
        return InputContract(int(n)) if isinstance(n, int | np.integer) else None

    def predict(self, inputs: Any) -> Any:
        """Prediction for one request's ``inputs`` (a row of features, or a list of rows)."""
        if self._fn is not None:
            return self._fn(inputs)
        x = np.asarray(inputs, dtype=np.float64)
        single = x.ndim == 1
        y = self._estimator.predict(x.reshape(1, -1) if single else x)
        out = y.tolist()
        return out[0] if single else out

    async def apredict(self, inputs: Any) -> Any:
        """:meth:`predict`, awaiting the result when the callable is async."""
        out = self.predict(inputs)
        return await out if inspect.isawaitable(out) else out

    def predict_many(self, batch: Sequence[Any]) -> list[Any]:
        """Predictions for several requests; one estimator call when all are single rows."""
        if self._estimator is not None and batch:
            rows = [np.asarray(b, dtype=np.float64) for b in batch]
            if all(r.ndim == 1 and r.shape == rows[0].shape for r in rows):
                return list(self._estimator.predict(np.stack(rows)).tolist())
        return [self.predict(b) for b in batch]
