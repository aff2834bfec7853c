"""Arms of kind ``sklearn``: an estimator saved with joblib.

A joblib file is unpickled, which runs code from the file: load trusted files only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bandit_serve.config.models import SklearnModel
from bandit_serve.models.base import LocalModel
from bandit_serve.models.contract import InputContract

__all__ = ["SklearnArm"]


class SklearnArm(LocalModel):
    """A fitted estimator; its contract is ``n_features_in_`` finite numbers per row."""

    def __init__(self, ref: SklearnModel) -> None:
        import joblib

        path = Path(ref.path)
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} does not exist")
        self.estimator: Any = joblib.load(path)

    def contract(self) -> InputContract | None:
        n = getattr(self.estimator, "n_features_in_", None)
        return InputContract(int(n)) if isinstance(n, int | np.integer) else None

    def predict(self, inputs: Any) -> Any:
        """Prediction for one request's ``inputs`` (a row of features, or a list of rows)."""
        x = np.asarray(inputs, dtype=np.float64)
        single = x.ndim == 1
        y = self.estimator.predict(x.reshape(1, -1) if single else x)
        out = y.tolist()
        return out[0] if single else out

    def predict_many(self, batch: Sequence[Any]) -> list[Any]:
        """One estimator call when every request is a single row of the same length."""
        if batch:
            rows = [np.asarray(b, dtype=np.float64) for b in batch]
            if all(r.ndim == 1 and r.shape == rows[0].shape for r in rows):
                return list(self.estimator.predict(np.stack(rows)).tolist())
        return [self.predict(b) for b in batch]
