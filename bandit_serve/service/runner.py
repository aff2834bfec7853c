"""``bandit-serve run``: Ray, Redis and the Serve app, until Ctrl-C or SIGTERM.

The steps, each its own function: check the config and start a local Redis when needed
(:func:`_local_redis`), start or join Ray (:func:`_start_ray`), deploy (:func:`_deploy`),
redeploy when the config file changes (:func:`_watch`), and stop everything it started.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from bandit_serve.config import AppConfig, load_config
from bandit_serve.errors import ConfigError
from bandit_serve.service.options import AppArgs, resolve_redis_url
from bandit_serve.service.redis_local import LocalRedis, ensure_redis

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["APP_NAME", "run_service"]

APP_NAME = "bandit-serve"
log = logging.getLogger("bandit_serve")


def _local_redis(url: str, address: str | None, data_dir: Path, echo: bool) -> LocalRedis | None:
    """A redis-server started for ``url`` when nothing answers there (not on a cluster:
    there Redis is the cluster's business)."""
    if address is not None:
        return None
    local = ensure_redis(url, data_dir.resolve() / "redis")
    if local is not None and echo:
        print(f"started redis-server for {url} (data in {local.data_dir})", flush=True)
    return local


def _start_ray(address: str | None, stop: threading.Event) -> None:
    import ray

    if address is None:
        ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own
        signal.signal(sig, lambda *_: stop.set())


def _deploy(args: AppArgs) -> None:
    from ray import serve

    from bandit_serve.service.serve_app import build_app

    serve.run(build_app(args), name=APP_NAME, route_prefix="/")


def _watch(
    config: Path, stop: threading.Event, interval: float, redeploy: Callable[[], None]
) -> None:
    """Until ``stop`` is set: redeploy whenever the config file changes and still loads."""
    mtime = config.stat().st_mtime
    while not stop.wait(interval):
        try:
            now = config.stat().st_mtime
        except OSError:
            continue
        if now == mtime:
            continue
        mtime = now
        try:
            load_config(config)
        except ConfigError as err:
            print(f"config changed but is invalid; keeping the running one:\n{err}", flush=True)
            continue
        redeploy()
        print(f"config {config} changed: redeployed", flush=True)


def _shutdown(local: LocalRedis | None) -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()  # type: ignore[no-untyped-call]
    finally:
        ray.shutdown()
        if local is not None:
            local.stop()


def _banner(cfg: AppConfig, host: str, port: int, url: str) -> str:
    names = ", ".join(e.name for e in cfg.experiments)
    return (
        f"bandit-serve is up on http://{host}:{port} (experiments: {names}); "
        f"Redis {url}. Ctrl-C stops."
    )


def run_service(
    args: AppArgs,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    data_dir: Path = Path("var"),
    watch_interval: float = 1.0,
    echo: bool = True,
) -> None:
    """Deploy ``args.config`` and block; redeploy when the file changes; clean up on exit."""
    config = Path(args.config)
    cfg = load_config(config)  # fail early, before starting anything
    url = resolve_redis_url(args.redis_url, cfg)
    args = args.model_copy(update={"redis_url": url})
    local = _local_redis(url, address, data_dir, echo)
    stop = threading.Event()
    try:
        _start_ray(address, stop)
        from ray import serve

        serve.start(http_options={"host": host, "port": port})
        _deploy(args)
        if echo:
            print(_banner(cfg, host, port, url), flush=True)
        _watch(config, stop, watch_interval, lambda: _deploy(args))
    finally:
        _shutdown(local)
        if echo:
            print("bandit-serve stopped", flush=True)
