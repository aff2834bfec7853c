"""redis-server processes owned by tests: single servers, a Redis Cluster, a Sentinel group.

Every process listens on a free loopback port, writes into a directory of its own, and
is stopped by its PID (SIGTERM, or SIGKILL where a test means a crash). Nothing here
touches a Redis it did not start.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

__all__ = [
    "ClusterProcesses",
    "RedisProcess",
    "SentinelGroup",
    "free_ports",
    "wait_until",
]

HOST = "127.0.0.1"


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
        return True


def free_ports(n: int, *, bus: bool = False) -> list[int]:
    """``n`` distinct free loopback ports; with ``bus``, ``port + 10000`` is free as well
    (a cluster node's bus port)."""
    out: list[int] = []
    while len(out) < n:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if port in out or (bus and (port + 10000 > 65535 or not _port_is_free(port + 10000))):
            continue
        out.append(port)
    return out


def wait_until(
    what: str, check: Callable[[], object], timeout: float = 20.0, every: float = 0.05
) -> None:
    """Poll ``check()`` until it returns true; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (redis.RedisError, OSError) as err:
            last = err
        time.sleep(every)
    raise TimeoutError(f"{what} within {timeout} s" + (f" (last error: {last!r})" if last else ""))


def _exe() -> str:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError(
            "redis-server is not installed; .ci/run installs it (apt-get install redis-server)."
        )
    return exe


class RedisProcess:
    """One redis-server (or Sentinel) process.

    ``args`` are extra command-line options (``["--appendonly", "yes"]``); ``conf`` a
    config file written before start (a Sentinel needs one it may rewrite).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        args: Sequence[str] = (),
        conf: str | None = None,
        sentinel: bool = False,
        password: str | None = None,
        username: str | None = None,
        name: str | None = None,
    ) -> None:
        self.port = port if port is not None else free_ports(1)[0]
        self.name = name or f"redis-{self.port}"
        self.dir = workdir / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.args = list(args)
        self.conf = conf
        self.sentinel = sentinel
        self.password = password
        self.username = username
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "server.log"

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def client(self, **kw: object) -> redis.Redis:
        """A synchronous client of this process (the caller closes it)."""
        options: dict[str, Any] = {
            "password": self.password,
            "username": self.username,
            "decode_responses": True,
            "socket_connect_timeout": 1,
            "socket_timeout": 5,
            "retry": Retry(NoBackoff(), 0),  # callers poll; redis-py's default retries 10 times
            **kw,
        }
        return redis.Redis(host=HOST, port=self.port, **options)

    def command(self) -> list[str]:
        cmd = [_exe()]
        if self.conf is not None:
            conf_path = self.dir / ("sentinel.conf" if self.sentinel else "redis.conf")
            if not conf_path.exists():
                conf_path.write_text(self.conf)
            cmd.append(str(conf_path))
        if self.sentinel:
            cmd.append("--sentinel")
        cmd += ["--port", str(self.port), "--bind", HOST, "--dir", str(self.dir)]
        if not self.sentinel:
            # replicas sync at once (the default waits 5 s for more replicas to join)
            cmd += ["--save", "", "--repl-diskless-sync-delay", "0"]
        cmd += ["--logfile", str(self.log), *self.args]
        return cmd

    def start(self, *, wait: bool = True) -> None:
        assert self.proc is None, f"{self.name} is already running"
        with open(self.dir / "stderr.log", "ab") as err:  # config errors land here
            self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=err)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 10.0) -> None:
        def answers() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                logs = [self.dir / "stderr.log", self.log]
                tail = " ".join(p.read_text()[-2000:] for p in logs if p.exists())
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {tail}")
            with contextlib.closing(self.client()) as c:
                return bool(c.ping())

        wait_until(f"{self.name} answers PING", answers, timeout)

    def stop(self) -> None:
        """SIGTERM (a clean shutdown) and wait."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL (a crash) and wait."""
        self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.reap()

    def reap(self) -> None:
        """Wait for the process to exit (SIGKILL after 15 s)."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class ClusterProcesses:
    """A Redis Cluster on loopback: ``masters`` masters with ``replicas`` replicas each,
    created with ``redis-cli --cluster create``."""

    def __init__(
        self,
        workdir: Path,
        *,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 5000,
        args: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir
        self.node_timeout_ms = node_timeout_ms
        n = masters * (1 + replicas)
        self.masters = masters
        self.replicas = replicas
        self.nodes = [
            RedisProcess(
                workdir,
                port=port,
                name=f"node-{port}",
                args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(node_timeout_ms),
                    "--appendonly",
                    "no",
                    *args,
                ],
            )
            for port in free_ports(n, bus=True)
        ]
        self.started_in: float | None = None

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL naming every node (any reachable one will do)."""
        return "redis+cluster://" + ",".join(n.address for n in self.nodes)

    def start(self) -> None:
        t0 = time.monotonic()
        for node in self.nodes:
            node.start(wait=False)
        for node in self.nodes:
            node.wait_ready()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed (apt-get install redis-tools).")
        out = subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(n.address for n in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if out.returncode != 0 or "[OK] All 16384 slots covered" not in out.stdout:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{out.stdout}\n{out.stderr}")
        self.wait_healthy()
        self.started_in = time.monotonic() - t0

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Every running node says cluster_state:ok and agrees on the masters, and every
        running replica's link to its master is up."""

        def healthy() -> bool:
            views = set()
            for node in self.nodes:
                if not node.running:
                    continue
                with contextlib.closing(node.client()) as c:
                    if c.cluster("INFO").get("cluster_state") != "ok":
                        return False
                    info = c.info("replication")
                    if info["role"] == "slave" and info.get("master_link_status") != "up":
                        return False
                    views.add(self._masters_view(c))
            return len(views) == 1

        wait_until("the cluster is healthy", healthy, timeout)

    @staticmethod
    def _masters_view(c: redis.Redis) -> tuple[tuple[int, int, int], ...]:
        slots = c.execute_command("CLUSTER SLOTS")
        return tuple(sorted((int(s[0]), int(s[1]), int(s[2][1])) for s in slots))

    def _any_running(self) -> RedisProcess:
        return next(n for n in self.nodes if n.running)

    def master_of_slot(self, slot: int) -> RedisProcess:
        with contextlib.closing(self._any_running().client()) as c:
            for lo, hi, port in self._masters_view(c):
                if lo <= slot <= hi:
                    return next(n for n in self.nodes if n.port == port)
        raise LookupError(f"no master serves slot {slot}")

    def master_of(self, key: str) -> RedisProcess:
        return self.master_of_slot(key_slot(key.encode()))

    def master_ports(self) -> set[int]:
        with contextlib.closing(self._any_running().client()) as c:
            return {port for _, _, port in self._masters_view(c)}

    def replicas_of(self, master: RedisProcess) -> list[RedisProcess]:
        with contextlib.closing(master.client()) as c:
            info = c.info("replication")
        ports = {
            int(v["port"]) for k, v in info.items() if k.startswith("slave") and k[5:].isdigit()
        }
        return [n for n in self.nodes if n.port in ports]

    def delete_keys(self, pattern: str) -> None:
        for node in self.nodes:
            if not node.running:
                continue
            with contextlib.closing(node.client()) as c:
                if c.info("replication")["role"] != "master":
                    continue
                keys = list(c.scan_iter(match=pattern, count=1000))
                for key in keys:  # one by one: they may sit on different slots
                    c.delete(key)

    def stop(self) -> None:
        _stop_all(self.nodes)

    def __enter__(self) -> ClusterProcesses:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SentinelGroup:
    """A master, ``replicas`` replicas and ``sentinels`` Sentinels watching it as
    ``master_name`` (quorum: a majority of the Sentinels)."""

    def __init__(
        self,
        workdir: Path,
        *,
        master_name: str = "mymaster",
        replicas: int = 1,
        sentinels: int = 3,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        password: str | None = None,
        args: Sequence[str] = (),
    ) -> None:
        """``password``: the data nodes' (requirepass and masterauth; the Sentinels get
        it as auth-pass); the Sentinels themselves take none."""
        self.master_name = master_name
        auth = ["--requirepass", password, "--masterauth", password] if password else []
        self.data = [
            RedisProcess(
                workdir,
                name=f"data-{i}",
                args=["--appendonly", "no", *auth, *args],
                password=password,
            )
            for i in range(1 + replicas)
        ]
        for r in self.data[1:]:
            r.args += ["--replicaof", HOST, str(self.data[0].port)]
        quorum = sentinels // 2 + 1
        conf = (
            f"sentinel monitor {master_name} {HOST} {self.data[0].port} {quorum}\n"
            f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
            f"sentinel failover-timeout {master_name} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {master_name} 1\n"
            + (f"sentinel auth-pass {master_name} {password}\n" if password else "")
        )
        self.sentinels = [
            RedisProcess(workdir, name=f"sentinel-{i}", conf=conf, sentinel=True)
            for i in range(sentinels)
        ]
        self.started_in: float | None = None

    @property
    def url(self) -> str:
        hosts = ",".join(s.address for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.master_name}"

    def start(self) -> None:
        t0 = time.monotonic()
        for p in self.data:
            p.start(wait=False)
        for p in self.data:
            p.wait_ready()
        for s in self.sentinels:
            s.start(wait=False)
        for s in self.sentinels:
            s.wait_ready()
        n_others, n_replicas = len(self.sentinels) - 1, len(self.data) - 1

        def settled() -> bool:
            for s in self.sentinels:
                with contextlib.closing(s.client()) as c:
                    m = cast(dict[str, Any], c.sentinel_master(self.master_name))
                    if m["num-other-sentinels"] < n_others or m["num-slaves"] < n_replicas:
                        return False
            return True

        wait_until("the Sentinels know each other and the replicas", settled, 30)
        self.started_in = time.monotonic() - t0

    def master_port(self) -> int:
        for s in self.sentinels:
            if not s.running:
                continue
            with contextlib.closing(s.client()) as c:
                addr = c.sentinel_get_master_addr_by_name(self.master_name)
                if isinstance(addr, tuple | list):
                    return int(addr[1])
        raise LookupError("no Sentinel names a master")

    def master(self) -> RedisProcess:
        port = self.master_port()
        return next(p for p in self.data if p.port == port)

    def stop(self) -> None:
        _stop_all([*self.sentinels, *self.data])

    def __enter__(self) -> SentinelGroup:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _stop_all(procs: Sequence[RedisProcess]) -> None:
    """SIGTERM to every process first, then wait for each (faster than one by one)."""
    for p in procs:
        if p.proc is not None and p.proc.poll() is None:
            p.proc.send_signal(signal.SIGTERM)
    for p in procs:
        p.reap()


@contextlib.contextmanager
def running(proc: RedisProcess) -> Iterator[RedisProcess]:
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
