"""``bandit-serve run``: Redis and the service on Ray Serve or the local engine, until
Ctrl-C or SIGTERM.

Two processes. The one the user started is a supervisor (:func:`supervise`): it checks
the config, then runs the service in a child of its own session and forwards SIGINT and
SIGTERM to it. So a SIGTERM to the supervisor's whole process group (what systemd and
Kubernetes send) reaches the supervisor only, and the child shuts the engine and Redis
down in order; whatever is still alive in the child's session 15 s later is killed.

The child (:func:`run_service`), step by step: start a local Redis when needed
(:func:`_local_redis`), then on Ray: start Ray locally or join a cluster
(:func:`_start_ray`), deploy (:func:`_deploy`), redeploy when the config file changes
(:func:`_watch`); on the local engine (:func:`_run_local`): load every model once (a
model that does not load is one line), serve with uvicorn (``workers`` processes, each
reloading the config in place when the file changes); then stop everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bandit_serve.config import AppConfig, ConfigWatch
from bandit_serve.errors import BanditServeError, ConfigError
from bandit_serve.service.options import AppArgs, check_exposure, resolve_redis_url
from bandit_serve.service.redis_local import LocalRedis, advise, ensure_redis
from bandit_serve.store.connection import redact

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = [
    "APP_NAME",
    "ENGINES",
    "STOP_SECONDS",
    "check_engine",
    "run_service",
    "supervise",
]

STOP_SECONDS = 15.0  # after a stop signal, what is still alive then is killed


APP_NAME = "bandit-serve"
ENGINES = ("ray", "local")
Engine = Literal["ray", "local"]
log = logging.getLogger("bandit_serve")


def _local_redis(url: str, address: str | None, data_dir: Path, echo: bool) -> LocalRedis | None:
    """A redis-server started for ``url`` when it is a plain local URL whose port refuses
    the connection (not with ``address``: there Redis is the cluster's business); any
    failure is one line."""
    if address is not None:
        return None
    try:
        local = ensure_redis(url, data_dir.resolve() / "redis")
    except BanditServeError:
        raise
    except Exception as err:  # never a traceback
        raise BanditServeError(_redis_failure(url, err)) from None
    if local is not None and echo:
        print(f"started redis-server for {redact(url)} (data in {local.data_dir})", flush=True)
    return local


def _reachable(address: str, timeout: float = 5.0) -> str | None:
    """Why the Ray cluster at ``address`` cannot be joined (None when a port answers)."""
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return f"--address {address!r} is not HOST:PORT or ray://HOST:PORT"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return None
    except OSError as err:
        return f"no Ray cluster answers at {address} ({err.strerror or err})"


def _port_free(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be served on (None when it is free)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            return (
                f"cannot serve on {host}:{port}: {err.strerror or err} (another process "
                "uses it? pick another with --port)"
            )
    return None


def _start_ray(address: str | None, stop: threading.Event) -> None:
    import ray

    if address is None:
        # "local": always a Ray instance of our own, never one an earlier `ray start`
        # recorded on this machine (which may be gone: ray.init would wait on it forever)
        ray.init(
            address="local",
            num_cpus=os.cpu_count() or 2,
            include_dashboard=False,
            log_to_driver=False,
        )
    else:
        problem = _reachable(address)
        if problem is not None:
            raise BanditServeError(problem)
        ray.init(address=address, log_to_driver=False)
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own
        signal.signal(sig, lambda *_: stop.set())


async def _verify_store(url: str, replicated: Sequence[str] = ()) -> None:
    """The store's start-up check: its one line, with what to do added; any other error
    one line too, naming the (redacted) URL. ``replicated``: experiments whose config
    asks for ``durability: replicated`` (their writes need a replica of every master,
    checked now rather than refused at their first write)."""
    from bandit_serve.store import RedisStore

    try:
        store = await RedisStore.open(url, durability="replicated" if replicated else None)
    except BanditServeError as err:
        text = advise(str(err))
        if replicated and "durability: replicated needs" in text:
            text += f" (asked for by experiment(s) {', '.join(replicated)})"
        raise BanditServeError(text) from None
    except Exception as err:  # redis-py's own, never a traceback
        raise BanditServeError(_redis_failure(url, err)) from None
    await store.close()


def _redis_failure(url: str, err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return advise(f"Redis at {redact(url)} cannot be used: {type(err).__name__}: {text}")


def _deploy(args: AppArgs) -> None:
    """Deploy the app; a deployment that fails to start is one line naming it."""
    from ray import serve

    from bandit_serve.service.serve_app import build_app

    try:
        serve.run(build_app(args), name=APP_NAME, route_prefix="/")
    except Exception as err:
        raise BanditServeError(_deploy_failure(err)) from None


def _deploy_failure(err: BaseException) -> str:
    """What failed, in one line: the deployment (the arm, for a model) and its cause."""
    from ray import serve

    try:
        app = serve.status().applications.get(APP_NAME)
    except Exception:
        app = None
    if app is not None:
        for name, d in app.deployments.items():
            if str(d.status) in ("UNHEALTHY", "DEPLOY_FAILED") or "FAIL" in str(d.status):
                what = name.removeprefix("model-").replace("-", " arm ", 1)
                who = f"the model of experiment {what}" if name.startswith("model-") else name
                return f"{who} did not start: {_last_line(d.message)}"
        if app.message:
            return f"the app did not start: {_last_line(app.message)}"
    return f"the app did not start: {_last_line(str(err))}"


def _last_line(text: str) -> str:
    """The most telling line of a traceback-bearing message (its last non-empty one)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else "no reason given")[:300]


def _watch(
    config: Path,
    stop: threading.Event,
    interval: float,
    redeploy: Callable[[], None],
    done: str = "redeployed",
    watch: ConfigWatch | None = None,
    check: Callable[[AppConfig], None] = lambda _: None,
) -> None:
    """Until ``stop`` is set: redeploy whenever the config file changes, still loads and
    passes ``check`` (the exposure rule). ``watch``: the one the running deployment's
    config was read through (a change made while it deployed is then seen); by default,
    one from now."""
    if watch is None:
        watch = ConfigWatch(config, config.stat().st_mtime)
    while not stop.wait(interval):
        try:
            new = watch.poll()
            if new is None:
                continue
        except ConfigError as err:
            print(f"config changed but is invalid; keeping the running one:\n{err}", flush=True)
            continue
        try:
            check(new)
            redeploy()
        except BanditServeError as err:  # keep serving and watching: a fixed file deploys
            print(f"config {config} changed but did not deploy: {err}", flush=True)
            continue
        print(f"config {config} changed: {done}", flush=True)


def _shutdown(local: LocalRedis | None) -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()  # type: ignore[no-untyped-call]
    finally:
        ray.shutdown()
        if local is not None:
            local.stop()


# Options that only Ray Serve has; given to the local engine, they would do nothing.
RAY_ONLY = {
    "router_replicas": "--router-replicas",
    "model_max_batch_size": "--model-batch-size",
    "model_batch_wait_s": "--model-batch-wait-s",
    "router_own_thread": "--router-own-thread",
}


def check_engine(
    engine: str, workers: int, address: str | None, args: AppArgs | None = None
) -> None:
    """The engine options fit together (BanditServeError, one line, when not): an option
    of one engine given to the other is refused rather than ignored."""
    if engine not in ENGINES:
        raise BanditServeError(f"--engine {engine!r} is not one of: {', '.join(ENGINES)}")
    if engine == "ray" and workers != 1:
        raise BanditServeError("--workers is for --engine local; Ray scales with --router-replicas")
    if engine == "local" and address is not None:
        raise BanditServeError(
            "--address joins a Ray cluster, and --engine local runs without Ray: "
            "leave out one of them"
        )
    if engine == "local" and args is not None:
        given = [
            flag
            for name, flag in RAY_ONLY.items()
            if getattr(args, name) != AppArgs.model_fields[name].default
        ]
        if given:
            raise BanditServeError(
                f"{', '.join(given)} is for --engine ray (Ray Serve's replicas and batching); "
                "the local engine scales with --workers"
            )


def _banner(cfg: AppConfig, host: str, port: int, url: str, engine: str = "") -> str:
    names = ", ".join(e.name for e in cfg.experiments)
    auth = "auth on" if cfg.auth is not None else "no auth (open API)"
    return (
        f"bandit-serve is up on http://{host}:{port} (experiments: {names}; {auth}{engine}); "
        f"Redis {redact(url)}. Ctrl-C stops."
    )


def _load_models(cfg: AppConfig) -> Any:
    """Every model of the config, loaded in this process (the local engine's
    :class:`~bandit_serve.service.local.LocalModels`); a model that does not load is one
    BanditServeError naming its arm."""
    from bandit_serve.models import LoadedModel
    from bandit_serve.service.local import LocalModels

    try:
        return LocalModels(cfg)
    except ConfigError as err:
        raise BanditServeError(str(err)) from None
    except Exception as first:
        for exp in cfg.experiments:  # which one: load them one by one
            for arm in exp.hosted:
                try:
                    LoadedModel(arm.model)
                except Exception as err:
                    raise BanditServeError(
                        f"the model of experiment {exp.name} arm {arm.name} did not load: "
                        f"{type(err).__name__}: {_last_line(str(err))}"
                    ) from None
        raise BanditServeError(f"a model did not load: {_last_line(str(first))}") from None


def _announce_when_up(host: str, port: int, banner: str, stop: threading.Event) -> None:
    """Print ``banner`` once the server answers ``/healthz`` (any status)."""
    import httpx

    where = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        where = "127.0.0.1"
    while not stop.wait(0.1):
        try:
            httpx.get(f"http://{where}:{port}/healthz", timeout=2)
        except httpx.HTTPError:
            continue
        print(banner, flush=True)
        return


def _run_local(
    args: AppArgs,
    cfg: AppConfig,
    *,
    host: str,
    port: int,
    workers: int,
    watch_interval: float,
    echo: bool,
    banner: str,
    insecure: bool = False,
    watch: ConfigWatch | None = None,
) -> None:
    """Serve with uvicorn until SIGINT or SIGTERM: in this process (one worker, with the
    models loaded here), or ``workers`` processes that each load the models and share
    the socket. Each worker starts the service's background loops and reloads the config
    file in place when it changes."""
    import uvicorn

    from bandit_serve.service.local import ARGS_ENV, create_local_app

    models = _load_models(cfg)  # every model loads once here: a bad one is one line, now
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # uvicorn raises them again when it is done
        signal.signal(sig, lambda *_: stop.set())
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "warning",
        "access_log": False,
        "lifespan": "on",
        "timeout_graceful_shutdown": 10,
        "timeout_worker_healthcheck": 60,  # a loaded machine imports slowly
    }
    if echo:
        threading.Thread(
            target=_announce_when_up, args=(host, port, banner, stop), daemon=True
        ).start()
    config = Path(args.config)
    exposure = functools.partial(check_exposure, host=host, insecure=insecure)
    watcher = threading.Thread(  # the workers reload by themselves; this reports it
        target=_watch,
        args=(config, stop, watch_interval, lambda: None, "reloaded", watch, exposure),
        daemon=True,
    )
    if echo and watch_interval > 0:
        watcher.start()
    try:
        if workers == 1:
            app = create_local_app(
                args, models=models, watch_interval=watch_interval, host=host, insecure=insecure
            )
            uvicorn.run(app, **common)
        else:
            del models  # each worker loads its own
            os.environ[ARGS_ENV] = json.dumps(
                {
                    "args": args.model_dump(),
                    "watch_interval": watch_interval,
                    "host": host,
                    "insecure": insecure,
                }
            )
            uvicorn.run(
                "bandit_serve.service.local:app_from_env", factory=True, workers=workers, **common
            )
    finally:
        stop.set()


def run_service(
    args: AppArgs,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    insecure: bool = False,
    data_dir: Path = Path("var"),
    watch_interval: float = 1.0,
    echo: bool = True,
    engine: Engine = "ray",
    workers: int = 1,
) -> None:
    """Serve ``args.config`` and block (Ray Serve, or the local engine with ``workers``
    uvicorn processes); redeploy or reload when the file changes; clean up on exit."""
    config = Path(args.config)
    watch, cfg = ConfigWatch.open(config)  # fail early, before starting anything
    check_exposure(cfg, host, insecure)
    check_engine(engine, workers, address, args)
    problem = _port_free(host, port)
    if problem is not None:
        raise BanditServeError(problem)
    url = resolve_redis_url(args.redis_url, cfg)
    args = args.model_copy(update={"redis_url": url})
    if redact(url) != url:  # a secret: replicas inherit it from the environment, never
        os.environ["REDIS_URL"] = url  # from Serve's stored deployment arguments
    local = _local_redis(url, address, data_dir, echo)
    try:
        replicated = [e.name for e in cfg.experiments if e.durability == "replicated"]
        asyncio.run(_verify_store(url, replicated))  # a wrong topology, credentials: one line
    except BanditServeError:
        if local is not None:
            local.stop()
        raise
    if engine == "local":
        try:
            banner = _banner(cfg, host, port, url, f"; local engine, {workers} worker(s)")
            _run_local(
                args,
                cfg,
                host=host,
                port=port,
                workers=workers,
                watch_interval=watch_interval,
                echo=echo,
                banner=banner,
                insecure=insecure,
                watch=watch,
            )
        finally:
            if local is not None:
                local.stop()
            if echo:
                print("bandit-serve stopped", flush=True)
        return
    stop = threading.Event()
    try:
        _start_ray(address, stop)
        from ray import serve

        serve.start(http_options={"host": host, "port": port})
        _deploy(args)
        if echo:
            print(_banner(cfg, host, port, url), flush=True)
        exposure = functools.partial(check_exposure, host=host, insecure=insecure)
        _watch(config, stop, watch_interval, lambda: _deploy(args), watch=watch, check=exposure)
    finally:
        _shutdown(local)
        if echo:
            print("bandit-serve stopped", flush=True)


# -- the supervisor -----------------------------------------------------------------------


def _session_members(sid: int) -> list[int]:
    """Processes of session ``sid`` (Linux /proc), the leader included."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 3 and int(fields[3]) == sid:
            out.append(int(entry))
    return out


def _kill_session(sid: int) -> int:
    """SIGKILL every process of session ``sid``; returns how many there were."""
    members = _session_members(sid)
    for pid in members:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(members)


def supervise(options: dict[str, Any], stop_seconds: float = STOP_SECONDS) -> int:
    """Run :func:`run_service` in a child of its own session; forward SIGINT/SIGTERM to it;
    after a stop signal, kill what is left of that session after ``stop_seconds``.
    Returns the child's exit code."""
    child = subprocess.Popen(
        [sys.executable, "-m", "bandit_serve.service.runner", json.dumps(options)],
        start_new_session=True,
    )
    stopping: list[float] = []

    def forward(sig: int, _: Any) -> None:
        if not stopping:
            stopping.append(time.monotonic())
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    while True:
        try:
            code = child.wait(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            if stopping and time.monotonic() - stopping[0] > stop_seconds:
                left = _kill_session(child.pid)
                print(f"bandit-serve: {left} processes did not stop in time; killed", flush=True)
                code = child.wait()
                break
    # the session's stragglers (a worker that outlived Ray's shutdown): never leave them
    _kill_session(child.pid)
    return code


def _child(raw: str) -> int:
    from bandit_serve.errors import BanditServeError

    options = json.loads(raw)
    args = AppArgs.model_validate(options.pop("args"))
    try:
        run_service(args, **options)
    except BanditServeError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
