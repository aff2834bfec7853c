"""Ray Serve wiring: one ModelVersion deployment per arm, a BanditRouter ingress.

Only wiring lives here; the logic is in :mod:`bandit_serve.service.core`. The typed app
builder :func:`build_app` serves ``serve run``/``serve deploy`` (see
``deployments/serve.yaml``) and ``bandit-serve run``.

The experiment config travels as the router's ``user_config``: changing a policy or its
parameters reconfigures router replicas in place. Adding or removing an arm adds or
removes a ModelVersion deployment and changes the router's handles, so Serve rolls the
router replicas (gracefully); every statistic lives in Redis, so nothing is lost.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve import Application
from ray.serve.config import BackpressureConfig
from ray.serve.handle import DeploymentHandle
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bandit_serve.config import MODEL_REF, AppConfig, load_config
from bandit_serve.service.core import BanditService
from bandit_serve.service.http import create_api
from bandit_serve.service.models import InputContract, LoadedModel
from bandit_serve.service.options import DEFAULT_REDIS_URL as DEFAULT_URL
from bandit_serve.service.options import AppArgs, resolve_redis_url
from bandit_serve.store import RedisStore
from bandit_serve.store.connection import redact

__all__ = ["AppArgs", "BanditRouter", "ModelVersion", "build_app", "model_deployment_name"]


class _ReplicaHeader:
    """Name the answering replica process in ``x-bandit-replica`` (operators and tests see
    the spread). Plain ASGI: Starlette's ``BaseHTTPMiddleware`` costs a task per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_named(message: Message) -> None:
            if message["type"] == "http.response.start":
                name = (b"x-bandit-replica", str(os.getpid()).encode())
                headers = [*message.get("headers", []), name]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_named)


def model_deployment_name(experiment: str, arm: str) -> str:
    return f"model-{experiment}-{arm}"


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=100)
class ModelVersion:
    """Hosts one arm's model. With ``max_batch_size > 1`` concurrent calls are batched."""

    def __init__(self, model: dict[str, Any], max_batch_size: int, batch_wait_s: float) -> None:
        self.model = LoadedModel(MODEL_REF.validate_python(model))
        self.batching = max_batch_size > 1
        if self.batching:
            batched: Any = self._batched  # serve.batch adds these setters
            batched.set_max_batch_size(max_batch_size)
            batched.set_batch_wait_timeout_s(batch_wait_s)

    def contract(self) -> dict[str, Any] | None:
        """The model's input contract (checked by the router before the draw)."""
        c = self.model.contract()
        return None if c is None else dataclasses.asdict(c)

    async def __call__(self, inputs: Any) -> Any:
        if self.batching:
            return await self._batched(inputs)
        return await self.model.apredict(inputs)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def _batched(self, batch: list[Any]) -> list[Any]:
        return self.model.predict_many(batch)


class _HandleCaller:
    """:class:`ModelCaller` over Serve deployment handles, keyed ``experiment/arm``."""

    def __init__(self, handles: dict[str, DeploymentHandle[Any]]) -> None:
        self.handles = handles

    async def __call__(self, experiment: str, arm: str, inputs: Any) -> Any:
        return await self.handles[f"{experiment}/{arm}"].remote(inputs)

    async def contracts(
        self, experiment: str, arms: Sequence[str]
    ) -> dict[str, InputContract | None]:
        out: dict[str, InputContract | None] = {}
        for arm in arms:
            raw = await self.handles[f"{experiment}/{arm}"].contract.remote()
            out[arm] = None if raw is None else InputContract(**raw)
        return out


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
@serve.ingress()
class BanditRouter:
    """The ingress: the HTTP API over a :class:`BanditService` on Redis.

    Serve calls, in order: the constructor, :meth:`__serve_build_asgi_app__` (the
    replica's FastAPI app), then :meth:`reconfigure` with the experiment config, which
    creates the service and starts its background loops (and on later calls changes it).
    """

    def __init__(
        self,
        handles: dict[str, DeploymentHandle[Any]],
        redis_url: str | None,
        model_timeout: float,
    ) -> None:
        # None: the URL carries a secret, and the replica reads it from its environment
        # (REDIS_URL, inherited from `bandit-serve run` or set on the cluster's nodes)
        # rather than from Serve's stored deployment arguments.
        self.store = RedisStore.from_url(redis_url or os.environ.get("REDIS_URL", DEFAULT_URL))
        self.caller = _HandleCaller(handles)
        self.model_timeout = model_timeout
        self.service: BanditService | None = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        api = create_api(self._service)
        api.add_middleware(_ReplicaHeader)
        return api

    def _service(self) -> BanditService:
        if self.service is None:
            raise RuntimeError("the router replica has not been configured yet")
        return self.service

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """A new experiment config (validated by pydantic) applied in place."""
        cfg = AppConfig.model_validate(user_config)
        if self.service is None:
            self.service = BanditService(
                cfg, self.store, self.caller, model_timeout=self.model_timeout
            )
            self.service.start()
        else:
            self.service.reconfigure(cfg)


def build_app(args: AppArgs | dict[str, Any]) -> Application:
    """The Serve application for a config file.

    ``serve run``/``serve deploy`` pass the config file's ``args`` as a plain dict (Ray
    cannot read the string annotation this module's ``from __future__ import annotations``
    leaves), so the dict is validated here.
    """
    if not isinstance(args, AppArgs):
        args = AppArgs.model_validate(args)
    cfg = load_config(args.config)
    handles: dict[str, Any] = {}
    for exp in cfg.experiments:
        for arm in exp.arms:
            handles[f"{exp.name}/{arm.name}"] = ModelVersion.options(  # type: ignore[attr-defined]
                name=model_deployment_name(exp.name, arm.name),
                num_replicas=arm.replicas,
            ).bind(arm.model.model_dump(), args.model_max_batch_size, args.model_batch_wait_s)
    return BanditRouter.options(  # type: ignore[attr-defined,no-any-return]
        num_replicas=args.router_replicas,
        user_config=cfg.model_dump(mode="json"),
        max_ongoing_requests=args.max_ongoing_requests,
        max_queued_requests=args.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=args.retry_after_s),
    ).bind(handles, _shareable(resolve_redis_url(args.redis_url, cfg)), args.model_timeout_s)


def _shareable(url: str) -> str | None:
    """The URL to bind into the app, or None when it holds credentials: Serve keeps its
    deployment arguments in the controller's checkpoint and shows them in its status."""
    return url if redact(url) == url else None
