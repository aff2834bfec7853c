"""The demo's model versions: digit classifiers on scikit-learn's bundled digits.

``v1`` is a Gaussian naive Bayes model (about 80% accurate), ``v2`` a logistic regression
(about 95%), ``v3`` a broken release of v2: it fails on images with a bright pixel near
the top-left corner (about 17% of them) and takes 40 ms longer on every call, so the
demo's guardrails roll it back. The models are trained on the first half of the data
on first use and cached with joblib under ``$BANDIT_SERVE_HOME/models`` (default
``./var``); the second half is the production traffic that ``bandit-serve loadgen`` sends.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["accuracy", "model_path", "predict_v1", "predict_v2", "predict_v3", "traffic"]


def home() -> Path:
    return Path(os.environ.get("BANDIT_SERVE_HOME", "var")).resolve()


@cache
def _data() -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.asarray(d.data, dtype=np.float64), np.asarray(d.target, dtype=np.int64)


def _split() -> int:
    return len(_data()[1]) // 2


def traffic() -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Images (64 pixel values each) and labels that the models were not trained on."""
    x, y = _data()
    return x[_split() :], y[_split() :]


def model_path(version: str) -> Path:
    return home() / "models" / f"digits-{version}.joblib"


_build = threading.Lock()  # threads of one process build a model once


@cache
def _model(version: str) -> Any:
    with _build:  # requests in a thread pool miss the cache together on first use
        return _load_or_build(version)


def _load_or_build(version: str) -> Any:
    import joblib

    path = model_path(version)
    if path.is_file():
        return joblib.load(path)
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _data()
    n = _split()
    model = (
        GaussianNB()
        if version == "v1"
        else make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    )
    model.fit(x[:n], y[:n])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.{uuid.uuid4().hex}.tmp")
    joblib.dump(model, tmp)
    tmp.replace(path)  # atomic: replicas may build at the same time
    return model


def _predict(version: str, inputs: Any) -> Any:
    x = np.asarray(inputs, dtype=np.float64)
    single = x.ndim == 1
    y = _model(version).predict(x.reshape(1, -1) if single else x).tolist()
    return y[0] if single else y


def predict_v1(inputs: Any) -> Any:
    """Digit(s) for 64-pixel image(s), weaker version."""
    return _predict("v1", inputs)


def predict_v2(inputs: Any) -> Any:
    """Digit(s) for 64-pixel image(s), stronger version."""
    return _predict("v2", inputs)


V3_DELAY_SECONDS = 0.04


async def predict_v3(inputs: Any) -> Any:
    """Digit(s), a broken version: slower, and it fails on some images."""
    await asyncio.sleep(V3_DELAY_SECONDS)
    rows = np.asarray(inputs, dtype=np.float64).reshape(-1, 64)
    if (rows[:, 2] > 10).any():
        raise ValueError("v3 cannot read this image (a bug in its new preprocessing)")
    return _predict("v2", inputs)


def accuracy(version: str) -> float:
    """Accuracy of a version on the traffic half."""
    x, y = traffic()
    return float((np.asarray(_predict(version, x)) == y).mean())
