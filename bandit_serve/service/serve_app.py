"""Ray Serve wiring: one ModelVersion deployment per arm, a BanditRouter ingress.

A ModelVersion hosts any kind of model (scikit-learn, ONNX, a callable, an HTTP
endpoint's pooled client). An arm of kind ``deployment`` is a Serve deployment that is
already running: no ModelVersion is made for it, the router calls it through its handle,
and a deployment that is not there is one error when the app is built. An arm with
``placement: router`` has no ModelVersion either: every router replica loads its model
and calls it in-process (:class:`~bandit_serve.service.local.LocalModels`: blocking
models in a thread pool), which saves the handle hop.

Only wiring lives here; the logic is in :mod:`bandit_serve.service.core`. The typed app
builder :func:`build_app` serves ``serve run``/``serve deploy`` (see
``deployments/serve.yaml``) and ``bandit-serve run``.

The experiment config travels as the router's ``user_config``: changing a policy or its
parameters reconfigures router replicas in place. Adding or removing an arm adds or
removes a ModelVersion deployment and changes the router's handles, so Serve rolls the
router replicas (gracefully); every statistic lives in Redis, so nothing is lost.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve import Application
from ray.serve.config import BackpressureConfig
from ray.serve.handle import DeploymentHandle

from bandit_serve.config import MODEL_REF, AppConfig, load_config
from bandit_serve.config.models import DeploymentModel, HttpModel
from bandit_serve.errors import ConfigError
from bandit_serve.models import InputContract, LoadedModel
from bandit_serve.models.deployment import missing, plain
from bandit_serve.models.http import resolve_headers
from bandit_serve.service.core import BanditService
from bandit_serve.service.http import create_api
from bandit_serve.service.local import Hosted, LocalModels, ReplicaHeader
from bandit_serve.service.options import DEFAULT_REDIS_URL as DEFAULT_URL
from bandit_serve.service.options import AppArgs, resolve_redis_url
from bandit_serve.store import RedisStore
from bandit_serve.store.connection import redact

__all__ = [
    "AppArgs",
    "BanditRouter",
    "ModelVersion",
    "build_app",
    "deployment_problems",
    "model_deployment_name",
]


def model_deployment_name(experiment: str, arm: str) -> str:
    return f"model-{experiment}-{arm}"


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=100)
class ModelVersion:
    """Hosts one arm's model. With ``max_batch_size > 1`` concurrent calls are batched
    (scikit-learn and ONNX stack the rows into one call; callables and endpoints take
    the batch's requests concurrently)."""

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
        return None if c is None else c.to_dict()

    async def __call__(self, inputs: Any) -> Any:
        if self.batching:
            return await self._batched(inputs)
        return await self.model.apredict(inputs)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def _batched(self, batch: list[Any]) -> list[Any]:
        return await self.model.apredict_many(batch)


def on_router(arm: Hosted) -> bool:
    """Whether the router hosts an arm's model itself (``placement: router``)."""
    return getattr(arm, "placement", "replica") == "router"


class _HandleCaller:
    """:class:`ModelCaller` over the arms' models: in-process for arms with ``placement:
    router`` (``local``), else through Serve deployment handles keyed ``experiment/arm``:
    ModelVersions, and the user's own deployments (``external``: no contract; numpy
    answers made plain)."""

    def __init__(
        self, handles: dict[str, DeploymentHandle[Any]], external: Iterable[str] = ()
    ) -> None:
        self.handles = handles
        self.external = frozenset(external)
        self.local: LocalModels | None = None

    async def __call__(self, experiment: str, arm: str, inputs: Any) -> Any:
        local = self.local
        if local is not None and (experiment, arm) in local:
            return await local(experiment, arm, inputs)
        key = f"{experiment}/{arm}"
        out = await self.handles[key].remote(inputs)
        return plain(out) if key in self.external else out

    async def contracts(
        self, experiment: str, arms: Sequence[str]
    ) -> dict[str, InputContract | None]:
        out: dict[str, InputContract | None] = {}
        for arm in arms:
            key = f"{experiment}/{arm}"
            if self.local is not None and (experiment, arm) in self.local:
                out[arm] = self.local.models[(experiment, arm)].contract()
            elif key in self.external:
                out[arm] = None
            else:
                raw = await self.handles[key].contract.remote()
                out[arm] = None if raw is None else InputContract.from_dict(raw)
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
        external: dict[str, tuple[str, str]] | None = None,
    ) -> None:
        # None: the URL carries a secret, and the replica reads it from its environment
        # (REDIS_URL, inherited from `bandit-serve run` or set on the cluster's nodes)
        # rather than from Serve's stored deployment arguments.
        self.store = RedisStore.from_url(redis_url or os.environ.get("REDIS_URL", DEFAULT_URL))
        # arms that are the user's own deployments: {experiment/arm: (app, deployment)}
        external = external or {}
        handles = dict(handles)
        for key, (app, deployment) in external.items():
            handles[key] = serve.get_deployment_handle(deployment, app_name=app)
        self.caller = _HandleCaller(handles, external)
        self.model_timeout = model_timeout
        self.service: BanditService | None = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        api = create_api(self._service)
        api.add_middleware(ReplicaHeader)
        return api

    def _service(self) -> BanditService:
        if self.service is None:
            raise RuntimeError("the router replica has not been configured yet")
        return self.service

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """A new experiment config (validated by pydantic) applied in place."""
        cfg = AppConfig.model_validate(user_config)
        if self.caller.local is None:
            self.caller.local = LocalModels(cfg, where=on_router)
        else:
            self.caller.local.reconfigure(cfg)
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
    _check_start(cfg)
    handles: dict[str, Any] = {}
    external: dict[str, tuple[str, str]] = {}
    for exp in cfg.experiments:
        for arm in exp.hosted:
            key = f"{exp.name}/{arm.name}"
            if isinstance(arm.model, DeploymentModel):
                external[key] = (arm.model.app, arm.model.deployment)
                continue
            if on_router(arm):
                continue  # loaded by every router replica (reconfigure)
            handles[key] = ModelVersion.options(  # type: ignore[attr-defined]
                name=model_deployment_name(exp.name, arm.name),
                num_replicas=arm.replicas,
            ).bind(arm.model.model_dump(), args.model_max_batch_size, args.model_batch_wait_s)
    return BanditRouter.options(  # type: ignore[attr-defined,no-any-return]
        num_replicas=args.router_replicas,
        ray_actor_options=router_actor_options(args),
        user_config=cfg.model_dump(mode="json"),
        max_ongoing_requests=args.max_ongoing_requests,
        max_queued_requests=args.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=args.retry_after_s),
    ).bind(
        handles,
        _shareable(resolve_redis_url(args.redis_url, cfg)),
        args.model_timeout_s,
        external,
    )


def router_actor_options(args: AppArgs) -> dict[str, Any]:
    """The router replicas' actor options. Unless ``router_own_thread``, the router's code
    runs on the replica's own event loop, and so do the handles' request routing: Ray
    Serve's defaults put each on a thread of its own, and every request then crosses
    threads (and contends for the GIL) several times more; measured in
    ``benchmarks/README.md``. The router's code never blocks its loop (models placed on
    the router run in a thread pool unless they are async)."""
    options: dict[str, Any] = {"num_cpus": 0.1}
    if not args.router_own_thread:
        options["runtime_env"] = {
            "env_vars": {
                "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
                "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
            }
        }
    return options


def _check_start(cfg: AppConfig) -> None:
    """What must hold before anything is deployed, one ConfigError naming the first arm
    that breaks it: every ``headers_from_env`` variable is set (replicas inherit this
    environment), every ``deployment`` arm's deployment is running."""
    deployments = []
    for exp in cfg.experiments:
        for arm in exp.hosted:
            where = f"arm {arm.name!r} of experiment {exp.name!r}"
            if isinstance(arm.model, HttpModel):
                try:
                    resolve_headers(arm.model)
                except ConfigError as err:
                    raise ConfigError(f"{where}: {err}") from None
            elif isinstance(arm.model, DeploymentModel):
                deployments.append((where, arm.model))
    if deployments:
        problems = deployment_problems([ref for _, ref in deployments])
        for (where, _), problem in zip(deployments, problems, strict=True):
            if problem is not None:
                raise ConfigError(f"{where}: {problem}")


def check_deployments(refs: Sequence[DeploymentModel], address: str | None) -> list[str | None]:
    """:func:`deployment_problems`, connecting to the Ray cluster at ``address``
    (``HOST:PORT`` or ``ray://HOST:PORT``) for the look when this process is not
    connected already (``bandit-serve check``). ConnectionError, in one line, when there
    is no cluster to look in."""
    import ray

    if ray.is_initialized():
        return deployment_problems(refs)
    if not address:
        raise ConnectionError("no Ray cluster to look in (set RAY_ADDRESS to its HOST:PORT)")
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConnectionError(f"RAY_ADDRESS {address!r} is not HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise ConnectionError(
            f"no Ray cluster answers at {address} ({err.strerror or err})"
        ) from None
    ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    try:
        return deployment_problems(refs)
    finally:
        ray.shutdown()


def running_deployments() -> dict[str, list[str]]:
    """The Serve applications running on the connected Ray cluster and their
    deployments (empty when Serve has not started)."""
    status = serve.status()
    return {name: list(app.deployments) for name, app in status.applications.items()}


def deployment_problems(refs: Sequence[DeploymentModel]) -> list[str | None]:
    """For each reference, why its deployment cannot be called (None when it can), from
    one look at the connected cluster's Serve status."""
    running = running_deployments()
    return [missing(ref, running) for ref in refs]


def _shareable(url: str) -> str | None:
    """The URL to bind into the app, or None when it holds credentials: Serve keeps its
    deployment arguments in the controller's checkpoint and shows them in its status."""
    return url if redact(url) == url else None
