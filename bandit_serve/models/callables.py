"""Arms of kind ``callable``: an importable Python function (sync or async)."""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from bandit_serve.config.models import CallableModel
from bandit_serve.models.base import LocalModel

__all__ = ["CallableArm", "identity"]


def identity(inputs: Any) -> Any:
    """A trivial model (returns its inputs): for benchmarks and smoke tests."""
    return inputs


class CallableArm(LocalModel):
    """``package.module:function``; declares no input contract."""

    def __init__(self, ref: CallableModel) -> None:
        module_name, _, attr = ref.target.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
        if not callable(obj):
            raise TypeError(f"{ref.target} is not callable")
        self.fn: Callable[[Any], Any] = obj

    def predict(self, inputs: Any) -> Any:
        """The function's result (an awaitable when the function is async)."""
        return self.fn(inputs)

    async def apredict(self, inputs: Any) -> Any:
        out = self.fn(inputs)
        return await out if inspect.isawaitable(out) else out

    async def apredict_many(self, batch: Sequence[Any]) -> list[Any]:
        outs = [self.fn(b) for b in batch]
        if not any(inspect.isawaitable(o) for o in outs):
            return outs
        return list(await asyncio.gather(*(_value(o) for o in outs)))


async def _value(out: Any) -> Any:
    return await out if inspect.isawaitable(out) else out
