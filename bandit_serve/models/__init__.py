"""The models behind arms: one module per kind, each knowing its input contract.

``sklearn`` (a joblib file), ``callables`` (an importable function), ``onnx`` (an ONNX
file, onnxruntime), ``http`` (a model endpoint: JSON, KServe v2, OpenAI-style chat) and
``deployment`` (a running Ray Serve deployment, called by the router through its handle:
never loaded here). :class:`LoadedModel` loads any other kind and offers what the
engines call: ``contract()``, ``apredict``/``apredict_many`` (and ``predict``/
``predict_many`` for models that compute in this process), ``aclose``.

Model code runs only inside ModelVersion replicas (or, for tests and the local engine,
in-process). Kind modules import their libraries (joblib, onnxruntime, httpx) when an
arm of that kind is loaded, not when this package is imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bandit_serve.config.models import (
    CallableModel,
    DeploymentModel,
    HttpModel,
    OnnxModel,
    SklearnModel,
)
from bandit_serve.models.base import ArmModel, LocalModel
from bandit_serve.models.callables import identity
from bandit_serve.models.contract import InputContract

__all__ = ["ArmModel", "InputContract", "LoadedModel", "LocalModel", "identity", "load_model"]

Ref = SklearnModel | CallableModel | OnnxModel | HttpModel | DeploymentModel


def load_model(ref: Ref) -> ArmModel:
    """Load the model a reference names (TypeError for a deployment: it is called through
    Ray Serve, never loaded in a process of ours)."""
    if isinstance(ref, SklearnModel):
        from bandit_serve.models.sklearn import SklearnArm

        return SklearnArm(ref)
    if isinstance(ref, CallableModel):
        from bandit_serve.models.callables import CallableArm

        return CallableArm(ref)
    if isinstance(ref, OnnxModel):
        from bandit_serve.models.onnx import OnnxArm

        return OnnxArm(ref)
    if isinstance(ref, HttpModel):
        from bandit_serve.models.http import HttpArm

        return HttpArm(ref)
    raise TypeError(
        f"an arm of kind deployment ({ref.app}/{ref.deployment}) is called through Ray "
        "Serve's handle by the router; it is not loaded in a process"
    )


class LoadedModel:
    """An arm's model, loaded: what a ModelVersion replica or the local engine holds."""

    def __init__(self, ref: Ref) -> None:
        self.ref = ref
        self.model = load_model(ref)

    def contract(self) -> InputContract | None:
        """The input contract the model declares (a fitted estimator's ``n_features_in_``,
        an ONNX model's input tensor, a chat endpoint's messages), or None."""
        return self.model.contract()

    def _local(self) -> LocalModel:
        if not isinstance(self.model, LocalModel):
            raise TypeError(f"a model of kind {self.ref.kind} predicts asynchronously only")
        return self.model

    def predict(self, inputs: Any) -> Any:
        """Prediction for one request's ``inputs`` (models that compute in this process)."""
        return self._local().predict(inputs)

    def predict_many(self, batch: Sequence[Any]) -> list[Any]:
        """Predictions for several requests; one model call where the kind stacks rows."""
        return self._local().predict_many(batch)

    async def apredict(self, inputs: Any) -> Any:
        return await self.model.apredict(inputs)

    async def apredict_many(self, batch: Sequence[Any]) -> list[Any]:
        return await self.model.apredict_many(batch)

    async def aclose(self) -> None:
        await self.model.aclose()
