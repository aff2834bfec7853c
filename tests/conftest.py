"""Shared fixtures: a manual clock, unique experiment names, real Redis connections, and a
Redis Cluster started once per session (tests/redis_servers.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import ClusterNode
from redis.cluster import RedisCluster as SyncRedisCluster

from bandit_serve.store import RedisStore
from bandit_serve.store.connection import parse_url
from tests.redis_servers import ClusterProcesses

REDIS_URL = os.environ.get("BANDIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class ManualClock:
    """A clock the test moves by hand (starts at the real time, so Redis TTLs make sense)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def exp_name() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis; a missing server fails the run (it is never silently skipped)."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as err:
        pytest.fail(f"Tests need Redis at {REDIS_URL} ({err}); run .ci/run or start redis-server.")
    return REDIS_URL


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcesses]:
    """A 3-master, 3-replica Redis Cluster on free loopback ports, started once for every
    test that asks for it (about 2 s) and stopped at the end of the session."""
    with ClusterProcesses(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


def delete_experiment_keys(url: str, name: str) -> None:
    """Delete every key of experiment ``name`` (a ``redis+cluster://`` URL too: the keys
    share one slot, so one node holds them all)."""
    pattern = f"bandit:{{{name}}}*"
    if "+cluster://" in url:
        target = parse_url(url)
        rc = SyncRedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in target.hosts])
        try:
            node = rc.get_node_from_key(f"bandit:{{{name}}}:ctl")
            keys = list(rc.scan_iter(match=pattern, count=1000, target_nodes=node))
            if keys:
                rc.delete(*keys)
        finally:
            rc.close()
        return
    r = redis.Redis.from_url(url)
    keys = list(r.scan_iter(match=pattern, count=1000))
    if keys:
        r.delete(*keys)
    r.close()


@pytest.fixture
async def redis_store(
    redis_url: str, clock: ManualClock, exp_name: str
) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_url(redis_url, clock=clock)
    yield store
    await store.close()
    delete_experiment_keys(redis_url, exp_name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server process owned by one test (so the test may stop and restart it)."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail(
                "redis-server is not installed; .ci/run installs it (apt-get install redis-server)."
            )
        self.exe = exe
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        for _ in range(200):
            try:
                client.ping()
                client.close()
                return
            except redis.ConnectionError:
                time.sleep(0.025)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Run an ASGI app under uvicorn in a thread of this process; yields its base URL.

    Fails the test (never skips) when the server does not answer within 10 s.
    """
    import httpx
    import uvicorn

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, port=port, log_level="error"))
    thread = threading.Thread(target=lambda: asyncio.run(srv.serve()), daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            httpx.get(f"{base}/healthz", timeout=1)
            break
        except httpx.HTTPError as err:
            if time.monotonic() > deadline or not thread.is_alive():
                srv.should_exit = True
                thread.join(timeout=10)
                pytest.fail(f"the uvicorn server at {base} never answered /healthz ({err!r})")
            time.sleep(0.05)
    try:
        yield base
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def run_cli(
    cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> tuple[int, str]:
    """``bandit-serve ARGS...`` to its end, the tests' fixtures importable: its exit code
    and its output (stdout and stderr)."""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(
        [sys.executable, "-m", "bandit_serve.cli", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(root), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return r.returncode, r.stdout + r.stderr


def start_run(
    config: Path, *extra: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """``bandit-serve run CONFIG EXTRA...`` as systemd would start it: the leader of a
    session of its own, stdout and stderr together in one text pipe; the tests' fixtures
    importable (``PYTHONPATH``) in it and in every process it starts."""
    root = Path(__file__).resolve().parents[1]
    return subprocess.Popen(
        [sys.executable, "-m", "bandit_serve.cli", "run", str(config), *extra],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(root), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
