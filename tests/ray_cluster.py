"""A Ray cluster of two nodes on this machine, owned by a test, and what runs on it.

- :class:`RayNode`: one ``ray start --block`` process (a head or a joining node) on free
  ports (Ray binds them on every interface; the tests talk to them over loopback), in a
  session of its own and a temp dir of its own (so nothing collides with another test's
  ``ray.init``, and an earlier ``ray start`` record is never read),
  with token authentication on (``RAY_AUTH_MODE=token``, the token in ``RAY_AUTH_TOKEN``:
  a token of the cluster's own, never ``~/.ray/auth_token``).
- :class:`RayCluster`: a head and a second node with resources of its own
  (``second_node``); the address, the token, the environment a driver needs.
- :class:`ServeRun`: ``bandit-serve run --address ...`` as a subprocess (the driver), and
  :class:`ServeDeploy`: ``serve deploy`` of deployments/serve.yaml through the head's
  dashboard (loopback only), as an operator deploys to a long-running cluster.
- :class:`ServeWatcher`: a subprocess (``python -m tests.ray_cluster watch``) connected to
  the cluster that prints, every 0.25 s, one JSON line of Serve's own view of the app:
  each replica's deployment, state, node and PID, and which nodes are alive.

Everything is stopped by PID: a node by SIGTERM to its ``ray start --block`` leader (which
stops the node's processes in order), then SIGKILL to whatever is left of its session.
The pytest process itself never connects to this cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from tests.redis_servers import free_ports

__all__ = ["RayCluster", "RayNode", "ServeDeploy", "ServeRun", "ServeWatcher", "Snapshot"]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SECOND = "second_node"  # the custom resource of the joining node


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def session_members(sid: int) -> list[psutil.Process]:
    """Every process of session ``sid`` (its leader included)."""
    out = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                out.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return out


def _kill_session(sid: int, timeout: float = 10.0) -> list[str]:
    """SIGKILL what is left of session ``sid``; returns what was left (command lines)."""
    left = session_members(sid)
    names = []
    for p in left:
        with contextlib.suppress(psutil.Error):
            names.append(" ".join(p.cmdline())[:120])
            p.kill()
    psutil.wait_procs(left, timeout=timeout)
    return names


class RayNode:
    """One Ray node: ``ray start --block`` in a session of its own."""

    def __init__(
        self,
        name: str,
        temp_dir: Path,
        env: Mapping[str, str],
        *,
        head_address: str | None = None,
        num_cpus: int = 2,
        resources: Mapping[str, float] | None = None,
        object_store_bytes: int = 200 * 2**20,
    ) -> None:
        self.name = name
        self.head = head_address is None
        self.temp_dir = temp_dir
        self.env = dict(env)
        self.log = temp_dir.parent / f"{name}.log"
        ports = free_ports(9)
        self.port = ports[0]  # the GCS port of a head
        self.dashboard_port = ports[8]  # a head's dashboard
        cmd = [
            str(BIN / "ray"),
            "start",
            "--block",
            "--disable-usage-stats",
            f"--num-cpus={num_cpus}",
            f"--resources={json.dumps(dict(resources or {}))}",
            f"--temp-dir={temp_dir}",
            f"--object-store-memory={object_store_bytes}",
            f"--node-manager-port={ports[1]}",
            f"--object-manager-port={ports[2]}",
            f"--dashboard-agent-listen-port={ports[3]}",
            f"--dashboard-agent-grpc-port={ports[4]}",
            f"--runtime-env-agent-port={ports[5]}",
            f"--metrics-export-port={ports[6]}",
        ]
        if self.head:
            cmd += [
                "--head",
                f"--port={self.port}",
                f"--ray-client-server-port={ports[7]}",
                # the dashboard's REST API is what `serve deploy` talks to (loopback only)
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={ports[8]}",
            ]
        else:
            cmd += [f"--address={head_address}"]
        self.cmd = cmd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Until ``ray start`` says the node runs (it then blocks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"ray start ({self.name}) exited:\n{_tail(self.log)}")
            if "Ray runtime started" in _tail(self.log, 100_000):
                return
            time.sleep(0.2)
        raise TimeoutError(f"ray start ({self.name}) not ready in {timeout} s:\n{_tail(self.log)}")

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    def processes(self) -> list[psutil.Process]:
        """The node's live processes: its session (raylet, agents, workers, replicas)."""
        if self.proc is None:
            return []
        out = []
        for p in session_members(self.proc.pid):
            with contextlib.suppress(psutil.Error):
                if p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
        return out

    def raylet(self) -> psutil.Process:
        for p in psutil.Process(self.pid).children():
            with contextlib.suppress(psutil.Error):
                if p.name() == "raylet":
                    return p
        raise LookupError(f"{self.name} has no raylet")

    def owns(self, pid: int) -> bool:
        """Whether process ``pid`` runs on this node (belongs to its session)."""
        try:
            return self.proc is not None and os.getsid(pid) == self.proc.pid
        except ProcessLookupError:
            return False

    def stop(self, timeout: float = 30.0) -> list[str]:
        """SIGTERM to ``ray start`` (it stops the node's processes), then SIGKILL to
        whatever is left of the session. Returns what had to be killed."""
        if self.proc is None:
            return []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return _kill_session(self.proc.pid)


@dataclass
class RayCluster:
    """A head and a second node (``second_node`` resource), both with 2 CPUs."""

    workdir: Path
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    nodes: list[RayNode] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """The environment of every process of the cluster and of its drivers."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
            PYTHONPATH=str(ROOT),  # tests.fixtures.models on every node
            RAY_USAGE_STATS_ENABLED="0",
        )
        return env

    @property
    def head(self) -> RayNode:
        return self.nodes[0]

    @property
    def second(self) -> RayNode:
        """The latest second node."""
        return self.nodes[-1]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.head.port}"

    @property
    def dashboard(self) -> str:
        """The head's dashboard (``serve deploy -a``)."""
        return f"http://127.0.0.1:{self.head.dashboard_port}"

    def start(self) -> None:
        head = RayNode("head", self.workdir / "head", self.env)
        self.nodes.append(head)
        head.start()
        head.wait_ready()
        self._start_second()

    def _start_second(self) -> None:
        n = len(self.nodes)
        second = RayNode(
            "second",
            self.workdir / f"second-{n}",
            self.env,
            head_address=self.address,
            resources={SECOND: 1},
        )
        self.nodes.append(second)
        second.start()
        second.wait_ready()

    def ensure_second(self) -> bool:
        """Start a new second node when the last one is gone; whether one was started."""
        last = self.nodes[-1]
        if len(self.nodes) > 1 and last.proc is not None and last.proc.poll() is None:
            return False
        self._start_second()
        return True

    def node_of(self, pid: int) -> str | None:
        """``head`` or ``second``: the node process ``pid`` runs on."""
        return next((n.name for n in self.nodes if n.owns(pid)), None)

    def stop(self) -> list[str]:
        left: list[str] = []
        for node in reversed(self.nodes):  # the joining node first, the head last
            left += node.stop()
        return left

    def __enter__(self) -> RayCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def short_temp_dir() -> Path:
    """A short directory under /tmp: Ray's socket paths must stay below 108 bytes."""
    return Path(tempfile.mkdtemp(prefix="raycl-", dir="/tmp"))


@contextlib.contextmanager
def two_node_cluster() -> Iterator[RayCluster]:
    workdir = short_temp_dir()
    try:
        with RayCluster(workdir) as cluster:
            yield cluster
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class ServeDeploy:
    """``serve deploy`` of deployments/serve.yaml on the cluster, with this test's config,
    Redis URL and HTTP port put in (everything else as shipped)."""

    def __init__(
        self, cluster: RayCluster, config: Path, redis_url: str, port: int, *, log: Path
    ) -> None:
        self.cluster = cluster
        self.port = port
        self.log = log
        self.base = f"http://127.0.0.1:{port}"
        shipped = yaml.safe_load((ROOT / "deployments" / "serve.yaml").read_text())
        shipped["http_options"].update(host="127.0.0.1", port=port)
        (app,) = shipped["applications"]
        app["args"].update(config=str(config.resolve()), redis_url=redis_url)
        self.file = log.with_name("serve.yaml")
        self.file.write_text(yaml.safe_dump(shipped))
        self.up_after = 0.0

    def _serve(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(BIN / "serve"), *args, "-a", self.cluster.dashboard]
        out = subprocess.run(
            cmd, env=self.cluster.env, capture_output=True, text=True, timeout=120, check=False
        )
        with open(self.log, "a") as log:
            log.write(f"$ {' '.join(cmd)}\n{out.stdout}{out.stderr}")
        return out

    def start(self) -> None:
        self.started_at = time.monotonic()
        out = self._serve("deploy", str(self.file))
        if out.returncode != 0:
            raise RuntimeError(f"serve deploy failed:\n{out.stdout}{out.stderr}")

    def wait_up(self, experiment: str, timeout: float = 150.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"{self.base}/v1/experiments/{experiment}/predict"
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.post(url, json={"inputs": 0}, timeout=5).status_code == 200:
                    self.up_after = time.monotonic() - self.started_at
                    return
            time.sleep(0.5)
        status = self._serve("status")
        raise TimeoutError(f"serve deploy not up in {timeout} s:\n{status.stdout}")

    def stop(self) -> int:
        """``serve shutdown``: every app and Serve's actors leave the cluster."""
        return self._serve("shutdown", "-y").returncode


class ServeRun:
    """``bandit-serve run CONFIG --address ...`` in a session of its own (the driver)."""

    def __init__(
        self,
        cluster: RayCluster,
        config: Path,
        redis_url: str,
        port: int,
        *,
        router_replicas: int = 2,
        log: Path,
    ) -> None:
        self.cluster = cluster
        self.port = port
        self.log = log
        self.base = f"http://127.0.0.1:{port}"
        self.cmd = [
            str(BIN / "bandit-serve"),
            "run",
            str(config),
            "--address",
            cluster.address,
            "--port",
            str(port),
            "--redis-url",
            redis_url,
            "--router-replicas",
            str(router_replicas),
            "--engine",
            "ray",
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.up_after = 0.0  # seconds from start to the first prediction answered

    def start(self) -> None:
        self.started_at = time.monotonic()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                cwd=ROOT,
                env=self.cluster.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_up(self, experiment: str, timeout: float = 150.0) -> None:
        """Until a prediction is answered 200."""
        deadline = time.monotonic() + timeout
        url = f"{self.base}/v1/experiments/{experiment}/predict"
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"bandit-serve run exited:\n{_tail(self.log)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.post(url, json={"inputs": 0}, timeout=5).status_code == 200:
                    self.up_after = time.monotonic() - self.started_at
                    return
            time.sleep(0.5)
        raise TimeoutError(f"bandit-serve run not up in {timeout} s:\n{_tail(self.log)}")

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (the supervisor shuts Serve down and leaves the cluster); its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        _kill_session(self.proc.pid)
        return self.proc.returncode


@dataclass
class Replica:
    deployment: str
    state: str
    node: str | None  # head | second (None: not placed yet)
    pid: int | None


@dataclass
class Snapshot:
    """One look of the watcher: Serve's replicas of the app and the alive nodes."""

    t: float  # time.time() of the look
    replicas: list[Replica]
    alive: set[str]  # node names

    def running(self, deployment: str) -> list[Replica]:
        return [r for r in self.replicas if r.deployment == deployment and r.state == "RUNNING"]


class ServeWatcher:
    """Serve's own view of an app on the cluster, every 0.25 s, from a subprocess."""

    def __init__(self, cluster: RayCluster, app: str, log: Path) -> None:
        self.cluster = cluster
        self.log = log
        self.snapshots: list[Snapshot] = []
        self._lock = threading.Lock()
        self._names: dict[str, str] = {}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.ray_cluster", "watch", cluster.address, app],
            cwd=ROOT,
            env=cluster.env,
            stdout=subprocess.PIPE,
            stderr=open(log, "ab"),  # noqa: SIM115 (the child keeps it)
            start_new_session=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                look = json.loads(raw)
            except ValueError:
                continue
            nodes: dict[str, dict[str, Any]] = look["nodes"]
            for node_id, info in nodes.items():
                self._names.setdefault(node_id, "second" if info["second"] else "head")
            snap = Snapshot(
                t=look["t"],
                replicas=[
                    Replica(r["deployment"], r["state"], self._names.get(r["node"] or ""), r["pid"])
                    for r in look["replicas"]
                ],
                alive={self._names[n] for n, info in nodes.items() if info["alive"]},
            )
            with self._lock:
                self.snapshots.append(snap)

    def latest(self) -> Snapshot | None:
        with self._lock:
            return self.snapshots[-1] if self.snapshots else None

    def since(self, t: float) -> list[Snapshot]:
        with self._lock:
            return [s for s in self.snapshots if s.t >= t]

    def wait_for(
        self, what: str, check: Callable[[Snapshot], bool], timeout: float = 120.0
    ) -> Snapshot:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            snap = self.latest()
            if snap is not None and check(snap):
                return snap
            if self.proc.poll() is not None:
                raise RuntimeError(f"the watcher exited:\n{_tail(self.log)}")
            time.sleep(0.1)
        raise TimeoutError(f"{what} within {timeout} s; last look: {self.latest()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        _kill_session(self.proc.pid)
        self._thread.join(timeout=5)


def _watch(address: str, app: str, every: float = 0.25) -> None:
    """Print Serve's view of ``app`` as one JSON line every ``every`` seconds, until
    SIGTERM. Runs in its own process: connects to the cluster as a driver (on the head)."""
    import ray
    from ray.serve.context import _get_global_client

    stop = threading.Event()
    ray.init(address=address, log_to_driver=False, namespace="serve")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    client = None
    while not stop.is_set():
        look: dict[str, Any] = {"t": time.time(), "replicas": [], "nodes": {}}
        try:
            for n in ray.nodes():
                look["nodes"][n["NodeID"]] = {
                    "alive": bool(n["Alive"]),
                    "second": SECOND in n.get("Resources", {}) or SECOND in n.get("Labels", {}),
                }
            if client is None:
                client = _get_global_client(raise_if_no_controller_running=False)
            if client is not None:
                details = client.get_serve_details()
                deployments = details.get("applications", {}).get(app, {}).get("deployments", {})
                for name, d in deployments.items():
                    for r in d.get("replicas", []):
                        look["replicas"].append(
                            {
                                "deployment": name,
                                "state": str(getattr(r.get("state"), "value", r.get("state"))),
                                "node": r.get("node_id"),
                                "pid": r.get("pid"),
                            }
                        )
        except Exception as err:  # the controller may be restarting: look again
            look["error"] = repr(err)[:200]
            client = None
        print(json.dumps(look), flush=True)
        stop.wait(every)
    ray.shutdown()


if __name__ == "__main__":
    if sys.argv[1] == "watch":
        _watch(sys.argv[2], sys.argv[3])
