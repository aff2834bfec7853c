"""``bandit-serve run``: Ray, Redis and the Serve app, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

from bandit_serve.config import load_config
from bandit_serve.errors import ConfigError
from bandit_serve.service.redis_local import LocalRedis, ensure_redis

__all__ = ["APP_NAME", "run_service"]

APP_NAME = "bandit-serve"
log = logging.getLogger("bandit_serve")


def run_service(
    config: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    redis_url: str | None = None,
    address: str | None = None,
    router_replicas: int = 2,
    model_batch_size: int = 1,
    max_ongoing_requests: int = 100,
    max_queued_requests: int = 500,
    data_dir: Path = Path("var"),
    watch_interval: float = 1.0,
    echo: bool = True,
) -> None:
    """Deploy ``config`` and block; redeploy when the file changes; clean up on exit."""
    from bandit_serve.service.serve_app import AppArgs, build_app, resolve_redis_url

    cfg = load_config(config)  # fail early, before starting anything
    url = resolve_redis_url(redis_url, cfg)
    local: LocalRedis | None = None
    if address is None:  # on a cluster Redis is the cluster's business
        local = ensure_redis(url, data_dir.resolve() / "redis")
        if local is not None and echo:
            print(f"started redis-server for {url} (data in {local.data_dir})", flush=True)

    import ray
    from ray import serve

    stop = threading.Event()
    try:
        if address is None:
            ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
        for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own
            signal.signal(sig, lambda *_: stop.set())
        serve.start(http_options={"host": host, "port": port})
        args = AppArgs(
            config=str(config),
            redis_url=url,
            router_replicas=router_replicas,
            model_max_batch_size=model_batch_size,
            max_ongoing_requests=max_ongoing_requests,
            max_queued_requests=max_queued_requests,
        )
        serve.run(build_app(args), name=APP_NAME, route_prefix="/")
        if echo:
            names = ", ".join(e.name for e in cfg.experiments)
            print(
                f"bandit-serve is up on http://{host}:{port} (experiments: {names}); "
                f"Redis {url}. Ctrl-C stops.",
                flush=True,
            )
        mtime = config.stat().st_mtime
        while not stop.wait(watch_interval):
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
            serve.run(build_app(args), name=APP_NAME, route_prefix="/")
            print(f"config {config} changed: redeployed", flush=True)
    finally:
        try:
            serve.shutdown()  # type: ignore[no-untyped-call]
        finally:
            ray.shutdown()
            if local is not None:
                local.stop()
        if echo:
            print("bandit-serve stopped", flush=True)
