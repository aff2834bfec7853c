"""Models called in-process, and the local engine: the service under uvicorn, no Ray.

:class:`LocalModels` is a :class:`~bandit_serve.service.core.ModelCaller` over models
loaded in this process: the local engine's, the tests', and a Ray router replica's for
its arms with ``placement: router``. Blocking models (scikit-learn, ONNX, plain
functions) run in the event loop's thread pool, so one slow prediction never stalls the
other requests of the process; a blocking shadow model runs in a small pool of its own
(``SHADOW_THREADS``), so a slow shadow never holds a thread the served arms need; async
callables and HTTP endpoints are awaited.

The local engine (``bandit-serve run --engine local``) is :func:`create_local_app`: the
same :class:`~bandit_serve.service.core.BanditService` and HTTP API as on Ray Serve,
with its background loops (snapshot refresh, sweeper, guardrails) started and stopped by
the ASGI lifespan of each uvicorn worker process. Workers share Redis, as router
replicas do (the signing keys and salts are kept there), and each reloads the config
file in place when it changes. No Ray is imported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bandit_serve.config import AppConfig, ConfigWatch
from bandit_serve.config.experiment import ArmConfig
from bandit_serve.config.models import DeploymentModel
from bandit_serve.config.rollout import ShadowArmConfig
from bandit_serve.errors import BanditServeError, ConfigError
from bandit_serve.models import InputContract, LoadedModel, LocalModel
from bandit_serve.models.callables import CallableArm
from bandit_serve.service.limits import answer

__all__ = [
    "ARGS_ENV",
    "DisconnectWatch",
    "Hosted",
    "LocalModels",
    "QueueLimit",
    "ReplicaHeader",
    "app_from_env",
    "create_local_app",
    "is_blocking",
]

log = logging.getLogger("bandit_serve")

ARGS_ENV = "BANDIT_SERVE_LOCAL_ARGS"  # the run options, as JSON, for uvicorn's workers

Hosted = ArmConfig | ShadowArmConfig
SHADOW_THREADS = 2  # threads for blocking shadow models, apart from the served arms'


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
        self.shadows: set[tuple[str, str]] = set()
        self._shadow_pool: ThreadPoolExecutor | None = None
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
        self.shadows = {
            (exp.name, a.name) for exp in cfg.experiments for a in exp.hosted[len(exp.arms) :]
        }
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
        pool = None
        if key in self.shadows:
            if self._shadow_pool is None:
                self._shadow_pool = ThreadPoolExecutor(SHADOW_THREADS, "bandit-shadow")
            pool = self._shadow_pool
        out = await asyncio.get_running_loop().run_in_executor(pool, model.predict, inputs)
        return await out if inspect.isawaitable(out) else out

    async def contracts(
        self, experiment: str, arms: Sequence[str]
    ) -> dict[str, InputContract | None]:
        return {a: self.models[(experiment, a)].contract() for a in arms}

    async def aclose(self) -> None:
        """Close every model's connections (and the shadow models' threads)."""
        await asyncio.gather(*(m.aclose() for m in self.models.values()))
        await asyncio.gather(*self._closing)
        if self._shadow_pool is not None:
            self._shadow_pool.shutdown(wait=False, cancel_futures=True)
            self._shadow_pool = None


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


class DisconnectWatch:
    """Cancel a request's handler when its client goes away before the answer (plain
    ASGI). Ray Serve's proxy cancels the handler itself; uvicorn does not, so under the
    local engine a predict whose client left would finish and keep a decision that no
    client holds an id for. Cancelled, the router withdraws it (the model call still
    finishes and is counted). Once the request's body has been read, a watcher waits on
    ``receive`` for ``http.disconnect``; it stops when the answer has started, so a
    disconnect after that (or uvicorn's own end of the cycle) cancels nothing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/predict"):
            await self.app(scope, receive, send)  # only a predict logs before it answers
            return
        body_read = asyncio.Event()
        answered = False
        gone = False

        async def receive_body() -> Message:
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_read.set()
            return message

        async def send_answer(message: Message) -> None:
            nonlocal answered
            answered = True
            await send(message)

        handler = asyncio.ensure_future(self.app(scope, receive_body, send_answer))

        async def watch() -> None:
            nonlocal gone
            await body_read.wait()
            while not answered:
                message = await receive()
                if message["type"] == "http.disconnect":
                    if not answered:
                        gone = True
                        handler.cancel()
                    return

        watcher = asyncio.ensure_future(watch())
        try:
            await handler
        except asyncio.CancelledError:
            if not gone:  # cancelled from outside: pass it on
                raise
        finally:
            watcher.cancel()


class QueueLimit:
    """The local engine's bound on requests a worker holds at once (plain ASGI): Ray
    Serve's ``max_ongoing_requests`` plus ``max_queued_requests``, since the local engine
    works on all of them on one event loop. Beyond it a request is answered 503 with
    ``Retry-After`` before any route runs (nothing recorded), as Ray Serve answers a full
    router queue; ``/healthz`` is never refused. ``limit`` None: no bound (a
    ``max_queued_requests`` of -1)."""

    def __init__(self, app: ASGIApp, limit: int | None, retry_after_s: float) -> None:
        self.app = app
        self.limit = limit
        self.retry_after = str(max(1, math.ceil(retry_after_s))).encode()
        self.held = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.limit is None or scope["path"] == "/healthz":
            await self.app(scope, receive, send)
            return
        if self.held >= self.limit:
            await answer(
                send,
                503,
                "the router's queue is full; nothing was recorded: retry",
                [(b"retry-after", self.retry_after)],
            )
            return
        self.held += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.held -= 1


class _Lifespan:
    """The worker's lifespan around the API: start the service's background loops and
    the config watch on startup; stop them, close the models and the store on shutdown."""

    def __init__(
        self,
        app: ASGIApp,
        startup: Callable[[], Any],
        shutdown: Callable[[], Any],
    ) -> None:
        self.app = app
        self.startup = startup
        self.shutdown = shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as err:
                    log.exception("the service did not start")
                    await send({"type": "lifespan.startup.failed", "message": str(err)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return


def create_local_app(
    args: Any,
    *,
    models: LocalModels | None = None,
    watch_interval: float = 1.0,
    host: str = "127.0.0.1",
    insecure: bool = False,
) -> ASGIApp:
    """The local engine's ASGI app for run options ``args`` (an
    :class:`~bandit_serve.service.options.AppArgs`): the HTTP API over a
    :class:`BanditService` on Redis with every model in-process. ``models`` may hand over
    models loaded already (they are closed with the app). ``host`` and ``insecure``: where
    it listens, for the exposure rule a reloaded config must pass too."""
    from bandit_serve.service.core import BanditService
    from bandit_serve.service.http import create_api
    from bandit_serve.service.options import check_exposure, resolve_redis_url
    from bandit_serve.store import RedisStore

    config = Path(args.config)
    changes, cfg = ConfigWatch.open(config)
    store = RedisStore.from_url(resolve_redis_url(args.redis_url, cfg))
    local = models if models is not None else LocalModels(cfg)
    service = BanditService(cfg, store, local, model_timeout=args.model_timeout_s)
    watching: list[asyncio.Task[None]] = []

    async def watch() -> None:
        """Reload the config file in place when it changes and still loads."""
        while True:
            await asyncio.sleep(watch_interval)
            try:
                new = changes.poll()
                if new is None:
                    continue
                check_exposure(new, host, insecure)
                local.reconfigure(new)
            except BanditServeError as err:  # invalid, or an open API beyond loopback
                log.warning(
                    "config %s changed but is refused; keeping the running one: %s", config, err
                )
                continue
            except Exception:
                log.exception("config %s changed but its models did not load", config)
                continue
            service.reconfigure(new)
            log.info("config %s changed: reloaded in process %d", config, os.getpid())

    async def startup() -> None:
        service.start()
        if watch_interval > 0:
            watching.append(asyncio.get_running_loop().create_task(watch()))

    async def shutdown() -> None:
        for task in watching:
            task.cancel()
        await asyncio.gather(*watching, return_exceptions=True)
        try:
            await service.stop()
            await local.aclose()
        finally:
            await store.close()

    api = create_api(lambda: service)
    queued = args.max_queued_requests
    limit = None if queued < 0 else args.max_ongoing_requests + queued
    bounded = QueueLimit(DisconnectWatch(api), limit, args.retry_after_s)
    return _Lifespan(ReplicaHeader(bounded), startup, shutdown)


def app_from_env() -> ASGIApp:
    """uvicorn's factory in each worker process: the run options come in ``ARGS_ENV``."""
    from bandit_serve.service.options import AppArgs

    options = json.loads(os.environ[ARGS_ENV])
    args = AppArgs.model_validate(options["args"])
    return create_local_app(
        args,
        watch_interval=options.get("watch_interval", 1.0),
        host=options.get("host", "127.0.0.1"),
        insecure=options.get("insecure", False),
    )
