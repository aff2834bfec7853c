"""What every arm's model offers the engines (a ModelVersion replica, the local engine).

:class:`ArmModel` is the interface: an input contract (or none), async predictions one
request or a batch at a time, and ``aclose``. Models that compute in this process
(scikit-learn, ONNX, callables) are :class:`LocalModel`\\ s with synchronous ``predict``
and ``predict_many`` as well.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from bandit_serve.models.contract import InputContract

__all__ = ["ArmModel", "LocalModel"]


class ArmModel:
    """One arm's model, loaded and ready."""

    def contract(self) -> InputContract | None:
        """The inputs the model takes (checked by the router before the draw), or None
        when it declares nothing."""
        return None

    async def apredict(self, inputs: Any) -> Any:
        """The prediction for one request's inputs."""
        raise NotImplementedError

    async def apredict_many(self, batch: Sequence[Any]) -> list[Any]:
        """Predictions for several requests (``@serve.batch``); by default concurrently."""
        return list(await asyncio.gather(*(self.apredict(b) for b in batch)))

    async def aclose(self) -> None:
        """Release what the model holds open (connections); it may not be used after."""
        return None


class LocalModel(ArmModel):
    """A model that computes in this process: synchronous calls too."""

    def predict(self, inputs: Any) -> Any:
        raise NotImplementedError

    def predict_many(self, batch: Sequence[Any]) -> list[Any]:
        """Predictions for several requests; one model call where the kind can stack them."""
        return [self.predict(b) for b in batch]

    async def apredict(self, inputs: Any) -> Any:
        return self.predict(inputs)

    async def apredict_many(self, batch: Sequence[Any]) -> list[Any]:
        return self.predict_many(batch)
