"""Models called in-process: for tests, the local engine and a Ray router's arms with
``placement: router``.

:class:`LocalModels` is a :class:`~bandit_serve.service.core.ModelCaller` over models
loaded in this process. Blocking models (scikit-learn, ONNX, plain functions) run in the
event loop's thread pool, so one slow prediction never stalls the other requests of the
process; async callables and HTTP endpoints are awaited. No Ray is imported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
from collections.abc import Callable, Sequence
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bandit_serve.config import AppConfig
from bandit_serve.config.experiment import ArmConfig
from bandit_serve.config.models import DeploymentModel
from bandit_serve.config.rollout import ShadowArmConfig
from bandit_serve.errors import ConfigError
from bandit_serve.models import InputContract, LoadedModel, LocalModel
from bandit_serve.models.callables import CallableArm

__all__ = ["Hosted", "LocalModels", "ReplicaHeader", "is_blocking"]

Hosted = ArmConfig | ShadowArmConfig


def _everything(_: Hosted) -> bool:
    return True


def is_blocking(model: LoadedModel) -> bool:
    """Whether a prediction computes in the calling thread (so it belongs in a worker
    thread): scikit-learn, ONNX and plain functions; not async functions or endpoints."""
    m = model.model
    if isinstance(m, CallableArm):
        fn = m.fn
        method = type(fn).__dict__.get("__call__")  # an object with an async __call__
        return not (inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(method))
    return isinstance(m, LocalModel)


class LocalModels:
    """A :class:`~bandit_serve.service.core.ModelCaller` over models loaded in this process.

    ``where`` picks the models to load (default: every model of the config; a router
    replica loads only its arms with ``placement: router``). Every kind but
    ``deployment`` (a Ray Serve deployment needs the Serve engine: a ConfigError naming
    the arm). An HTTP arm's connection pool lives as long as the arm: call :meth:`aclose`
    at the end.
    """

    def __init__(self, cfg: AppConfig, where: Callable[[Hosted], bool] = _everything) -> None:
        self.models: dict[tuple[str, str], LoadedModel] = {}
        self.blocking: set[tuple[str, str]] = set()
        self.where = where
        self._closing: set[asyncio.Task[None]] = set()
        self.reconfigure(cfg)

    def reconfigure(self, cfg: AppConfig) -> None:
        for exp in cfg.experiments:
            for arm in exp.hosted:
                if self.where(arm) and isinstance(arm.model, DeploymentModel):
                    raise ConfigError(
                        f"arm {arm.name!r} of experiment {exp.name!r} is a Ray Serve deployment "
                        f"({arm.model.app}/{arm.model.deployment}); only the Ray Serve engine "
                        "can call it"
                    )
        models = {}
        for exp in cfg.experiments:
            for arm in exp.hosted:
                if not self.where(arm):
                    continue
                key = (exp.name, arm.name)
                old = self.models.get(key)
                models[key] = (
                    old if old is not None and old.ref == arm.model else LoadedModel(arm.model)
                )
        dropped = [m for k, m in self.models.items() if models.get(k) is not m]
        self.models = models
        self.blocking = {k for k, m in models.items() if is_blocking(m)}
        for m in dropped:
            self._close_later(m)

    def _close_later(self, model: LoadedModel) -> None:
        with contextlib.suppress(RuntimeError):  # no running loop: nothing is open in one
            task = asyncio.get_running_loop().create_task(model.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self.models

    async def __call__(self, experiment: str, arm: str, inputs: Any) -> Any:
        key = (experiment, arm)
        model = self.models[key]
        if key not in self.blocking:
            return await model.apredict(inputs)
        out = await asyncio.get_running_loop().run_in_executor(None, model.predict, inputs)
        return await out if inspect.isawaitable(out) else out

    async def contracts(
        self, experiment: str, arms: Sequence[str]
    ) -> dict[str, InputContract | None]:
        return {a: self.models[(experiment, a)].contract() for a in arms}

    async def aclose(self) -> None:
        """Close every model's connections."""
        await asyncio.gather(*(m.aclose() for m in self.models.values()))
        await asyncio.gather(*self._closing)


class ReplicaHeader:
    """Name the answering process in ``x-bandit-replica`` (a router replica, a local
    worker: operators and tests see the spread). Plain ASGI: Starlette's
    ``BaseHTTPMiddleware`` costs a task per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.header = (b"x-bandit-replica", str(os.getpid()).encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_named)
