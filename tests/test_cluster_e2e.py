"""bandit-serve on a two-node Ray cluster started on this machine (tests/ray_cluster.py):
``ray start --head`` and a second ``ray start --address ...`` node with a resource of its
own, token authentication on, deployed by ``bandit-serve run --address`` as a user runs it.

- On a Redis Cluster (3 masters, 3 replicas): the router replicas, and each arm's two
  model replicas, are spread over both nodes by Serve's default placement, and the
  end-to-end checks hold (rewards posted through both replicas count once, stats exact,
  traffic moves).
- On one Redis: the same checks, then the second node's raylet is SIGKILLed under load
  (8 clients, each reward posted twice): the service keeps answering, the lost replicas
  come back on the head, and every acknowledged decision and reward is in Redis, once.
  The figures (errors around the kill, seconds until two routers run again) are printed
  (``pytest -s``).

The pytest process never joins the cluster: the driver is ``bandit-serve run`` and
Serve's view of the replicas comes from a watcher subprocess (tests/ray_cluster.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from bandit_serve.service.serve_app import model_deployment_name
from bandit_serve.store.redis_store import ExperimentKeys
from tests.conftest import delete_experiment_keys, free_port
from tests.ray_cluster import (
    RayCluster,
    RayNode,
    ServeDeploy,
    ServeRun,
    ServeWatcher,
    Snapshot,
    two_node_cluster,
)
from tests.redis_servers import ClusterProcesses

APP = "bandit-serve"  # the app name `bandit-serve run` deploys
ROUTER = "BanditRouter"
CLIENTS = 8  # during the kill


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    with two_node_cluster() as c:
        yield c


@pytest.fixture(scope="module", autouse=True)
def wrong_token_driver(cluster: RayCluster) -> Iterator[subprocess.Popen[str]]:
    """A driver with another token, started with the module's first test: Ray refuses it
    after about 20 s of retries, which the other tests overlap."""
    proc = subprocess.Popen(
        [sys.executable, "-c", f"import ray; ray.init(address={cluster.address!r})"],
        env={**cluster.env, "RAY_AUTH_TOKEN": "0" * 64},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)


def write_config(path: Path, exp: str) -> Path:
    """Arms a and b (echo models), two model replicas each: one per node."""
    arms = [
        {"name": arm, "model": f"tests.fixtures.models:echo_{arm}", "replicas": 2}
        for arm in ("a", "b")
    ]
    path.write_text(
        yaml.safe_dump(
            {
                "experiments": [
                    {
                        "name": exp,
                        "arms": arms,
                        "policy": {"kind": "thompson", "min_share": 0.02},
                        "reward": {"kind": "bernoulli", "wait_seconds": 600},
                        "sync_interval_seconds": 0.1,
                    }
                ]
            }
        )
    )
    return path


@contextlib.contextmanager
def serving(
    cluster: RayCluster, redis_url: str, exp: str, workdir: Path, *, how: str = "run"
) -> Iterator[tuple[ServeRun | ServeDeploy, ServeWatcher]]:
    """The app on the cluster with 2 routers, deployed by ``bandit-serve run --address``
    (``how="run"``; its SIGTERM shuts Serve down at the end) or by ``serve deploy`` of
    deployments/serve.yaml (``"deploy"``; ``serve shutdown`` at the end), and a watcher."""
    config = write_config(workdir / f"{exp}.yaml", exp)
    run: ServeRun | ServeDeploy
    if how == "run":
        run = ServeRun(cluster, config, redis_url, free_port(), log=workdir / "run.log")
    else:
        run = ServeDeploy(cluster, config, redis_url, free_port(), log=workdir / "deploy.log")
    watcher = ServeWatcher(cluster, APP, workdir / "watcher.log")
    try:
        run.start()
        run.wait_up(exp)
        watcher.wait_for("two routers and four model replicas running", all_running)
        yield run, watcher
    finally:
        watcher.stop()
        code = run.stop()
        delete_experiment_keys(redis_url, exp)
    assert code == 0, (run.log.read_text()[-3000:], code)


def all_running(s: Snapshot) -> bool:
    """Two routers and each arm's two model replicas running."""
    return len(s.running(ROUTER)) == 2 and len([r for r in s.replicas if r.state == "RUNNING"]) == 6


def placement(s: Snapshot) -> dict[str, list[str | None]]:
    """Deployment -> the nodes its running replicas are on (sorted)."""
    out: dict[str, list[str | None]] = {}
    for r in s.replicas:
        if r.state == "RUNNING":
            out.setdefault(r.deployment, []).append(r.node)
    return {d: sorted(nodes, key=str) for d, nodes in out.items()}


def arm_state(base: str, exp: str) -> dict[str, dict[str, Any]]:
    r = httpx.get(f"{base}/v1/experiments/{exp}", timeout=30)
    assert r.status_code == 200, r.text
    return {a["name"]: a for a in r.json()["arms"]}


async def exactly_once_round(base: str, exp: str, cluster: RayCluster) -> Counter[str]:
    """test_serve_e2e's check: 30 rounds of 10 concurrent predictions, each reward posted 3
    times at once; returns the nodes whose router answered (by the replica's PID)."""
    before = arm_state(base, exp)
    rng = random.Random(5)
    posted = Counter[str]()
    posted_sum: dict[str, float] = {"a": 0.0, "b": 0.0}
    nodes = Counter[str]()
    arms_over_time: list[str] = []
    statuses = Counter[str]()
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:

        async def one() -> None:
            r = await client.post(f"/v1/experiments/{exp}/predict", json={"inputs": 0})
            assert r.status_code == 200, r.text
            p = r.json()
            arms_over_time.append(p["arm"])
            nodes[str(cluster.node_of(int(r.headers["x-bandit-replica"])))] += 1
            reward = float(rng.random() < (0.9 if p["arm"] == "b" else 0.1))  # b is better
            body = {"event_id": p["event_id"], "reward": reward}
            answers = await asyncio.gather(
                *(client.post(f"/v1/experiments/{exp}/rewards", json=body) for _ in range(3))
            )
            for a in answers:
                statuses[a.json()["status"]] += 1
                nodes[str(cluster.node_of(int(a.headers["x-bandit-replica"])))] += 1
            posted[p["arm"]] += 1
            posted_sum[p["arm"]] += reward

        for _ in range(30):
            await asyncio.gather(*(one() for _ in range(10)))
    assert statuses == {"applied": 300, "duplicate": 600}
    after = arm_state(base, exp)
    for arm in ("a", "b"):
        assert after[arm]["pulls"] - before[arm]["pulls"] == posted[arm]
        assert after[arm]["rewards"] - before[arm]["rewards"] == posted[arm]
        assert after[arm]["reward_sum"] - before[arm]["reward_sum"] == posted_sum[arm]
        assert after[arm]["pending"] == before[arm]["pending"]
    last = Counter(arms_over_time[-100:])
    assert last["b"] > 80, last  # traffic moved to the better arm
    return nodes


def check_spread(watcher: ServeWatcher, exp: str) -> None:
    """Serve's default placement put one router, and one replica of each model, on each
    node (nothing in the app asks for it: Serve schedules replicas with SPREAD)."""
    snap = watcher.latest()
    assert snap is not None
    both = ["head", "second"]
    models = {model_deployment_name(exp, arm): both for arm in ("a", "b")}
    assert placement(snap) == {ROUTER: both, **models}, snap


def test_serve_deploy_on_a_redis_cluster_spreads_replicas_and_counts_rewards_once(
    cluster: RayCluster, redis_cluster: ClusterProcesses, tmp_path: Path
) -> None:
    """deployments/serve.yaml (this test's config, Redis URL and port put in) deployed with
    ``serve deploy`` through the head's dashboard, on a 3-master, 3-replica Redis Cluster."""
    cluster.ensure_second()
    exp = f"cl-rc-{os.getpid()}-{int(time.time())}"
    with serving(cluster, redis_cluster.url, exp, tmp_path, how="deploy") as (run, watcher):
        check_spread(watcher, exp)
        nodes = asyncio.run(exactly_once_round(run.base, exp, cluster))
        assert set(nodes) == {"head", "second"}, nodes  # routers on both nodes answered
        print(
            f"serve deploy, Redis Cluster: up in {run.up_after:.1f} s; "
            f"answers by node {dict(nodes)}"
        )


@dataclass
class Call:
    kind: str  # predict | reward | duplicate (the second post of a reward)
    start: float  # time.time()
    end: float
    outcome: str  # the status code, or the exception's class name
    node: str | None = None  # the answering router's node


@dataclass
class Ledger:
    calls: list[Call] = field(default_factory=list)
    arm_of: dict[str, str] = field(default_factory=dict)  # predictions answered 200
    reward_of: dict[str, float] = field(default_factory=dict)
    applied: Counter[str] = field(default_factory=Counter)  # answered "applied"
    acknowledged: set[str] = field(default_factory=set)  # applied or duplicate

    def failures(self) -> list[Call]:
        return [c for c in self.calls if c.outcome not in ("200", "409")]


async def load(
    base: str, exp: str, cluster: RayCluster, ledger: Ledger, stop: asyncio.Event, seed: int
) -> None:
    """One client: predict; post the reward until answered, then once more (duplicate)."""
    rng = random.Random(seed)
    url = f"/v1/experiments/{exp}"

    async def call(client: httpx.AsyncClient, kind: str, path: str, body: Any) -> httpx.Response:
        t0 = time.time()
        try:
            r = await client.post(path, json=body)
        except httpx.HTTPError as err:
            ledger.calls.append(Call(kind, t0, time.time(), type(err).__name__))
            raise
        node = cluster.node_of(int(r.headers.get("x-bandit-replica", "0")))
        ledger.calls.append(Call(kind, t0, time.time(), str(r.status_code), node))
        return r

    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        while not stop.is_set():
            try:
                r = await call(client, "predict", f"{url}/predict", {"inputs": 0})
            except httpx.HTTPError:
                continue
            if r.status_code != 200:
                await asyncio.sleep(0.05)
                continue
            p = r.json()
            event_id = p["event_id"]
            reward = float(rng.random() < (0.9 if p["arm"] == "b" else 0.1))
            ledger.arm_of[event_id] = p["arm"]
            ledger.reward_of[event_id] = reward
            body = {"event_id": event_id, "reward": reward}
            for kind in ("reward", "duplicate"):
                while True:  # retried until answered: a lost answer may have been applied
                    try:
                        a = await call(client, kind, f"{url}/rewards", body)
                    except httpx.HTTPError:
                        await asyncio.sleep(0.05)
                        continue
                    if a.status_code in (200, 409):
                        ledger.acknowledged.add(event_id)
                        ledger.applied[event_id] += a.status_code == 200
                        break
                    await asyncio.sleep(0.05)


@dataclass
class KillReport:
    """Seconds after the SIGKILL of the second node's raylet, and what the clients saw."""

    killed_at: float  # time.time()
    node_gone_after: float  # the node's last process exited (Ray's fate sharing)
    node_dead_after: float  # Ray declared the node dead
    routers_back_after: float  # two routers RUNNING again, both on the head
    models_back_after: float  # every model replica RUNNING again, all on the head
    calls: int
    failures: list[Call]

    def __str__(self) -> str:
        by = Counter((c.kind, c.outcome) for c in self.failures)
        spans = [
            (round(c.start - self.killed_at, 2), round(c.end - self.killed_at, 2))
            for c in self.failures
        ]
        return (
            f"second node's raylet SIGKILLed under load: {self.calls} calls by {CLIENTS} "
            f"clients, {len(self.failures)} failed {dict(by)}, (start, end) in seconds after "
            f"the kill: {spans}; the node's processes gone after {self.node_gone_after:.1f} s, "
            f"node declared dead after {self.node_dead_after:.1f} s, two routers running on "
            f"the head after {self.routers_back_after:.1f} s, every model replica after "
            f"{self.models_back_after:.1f} s"
        )


def first_after(watcher: ServeWatcher, t: float, what: str, check: Any) -> float:
    """Seconds from ``t`` to the watcher's first look after ``t`` that passes ``check``."""
    watcher.wait_for(what, check, timeout=120)
    return next(s.t - t for s in watcher.since(t) if check(s))


def gone_after(node: RayNode, t: float, timeout: float = 60.0) -> float:
    """Seconds from ``t`` until the node has no process left."""
    deadline = time.monotonic() + timeout
    while node.processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert node.processes() == [], "the second node's processes outlived its raylet"
    return time.time() - t


def on_head(s: Snapshot, deployment: str | None = None) -> list[str | None]:
    return [
        r.node
        for r in s.replicas
        if r.state == "RUNNING" and (deployment is None or r.deployment == deployment)
    ]


async def kill_second_node_under_load(
    run: ServeRun | ServeDeploy,
    exp: str,
    cluster: RayCluster,
    watcher: ServeWatcher,
    ledger: Ledger,
) -> KillReport:
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(load(run.base, exp, cluster, ledger, stop, seed))
        for seed in range(CLIENTS)
    ]
    await asyncio.sleep(3)
    node = cluster.second
    raylet = node.raylet()
    killed_at = time.time()
    raylet.kill()
    gone = await asyncio.to_thread(gone_after, node, killed_at)
    dead = await asyncio.to_thread(
        first_after, watcher, killed_at, "the node declared dead", lambda s: "second" not in s.alive
    )
    routers = await asyncio.to_thread(
        first_after,
        watcher,
        killed_at,
        "two routers running on the head",
        lambda s: on_head(s, ROUTER) == ["head", "head"],
    )
    models = await asyncio.to_thread(
        first_after,
        watcher,
        killed_at,
        "every replica running on the head",
        lambda s: on_head(s) == ["head"] * 6,
    )
    await asyncio.sleep(3)  # load on the recovered service
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    return KillReport(killed_at, gone, dead, routers, models, len(ledger.calls), ledger.failures())


def test_losing_the_second_node_under_load_loses_nothing_acknowledged(
    cluster: RayCluster, redis_url: str, tmp_path: Path
) -> None:
    cluster.ensure_second()
    exp = f"cl-kill-{os.getpid()}-{int(time.time())}"
    with serving(cluster, redis_url, exp, tmp_path) as (run, watcher):
        check_spread(watcher, exp)
        nodes = asyncio.run(exactly_once_round(run.base, exp, cluster))
        assert set(nodes) == {"head", "second"}, nodes
        before = arm_state(run.base, exp)
        ledger = Ledger()
        report = asyncio.run(kill_second_node_under_load(run, exp, cluster, watcher, ledger))
        print(f"bandit-serve run --address, one Redis: up in {run.up_after:.1f} s; {report}")
        after = arm_state(run.base, exp)
        # the service kept answering: every failure was a request sent while the node was
        # dying (to its proxy, whose connections dropped when its processes died, or to a
        # model replica on it: that arm's error, 502); every later request was answered
        gone = report.killed_at + report.node_gone_after
        assert all(c.start < gone for c in report.failures), str(report)
        assert len(report.failures) <= 3 * CLIENTS, str(report)
        after_kill = [c for c in ledger.calls if c.start > gone]
        assert len(after_kill) > 100, str(report)  # load went on through the recovery
        assert all(c.outcome in ("200", "409") for c in after_kill), str(report)

        # -- nothing acknowledged is lost, nothing counted twice ----------------------------
        k = ExperimentKeys(exp, 0)
        r = redis.Redis.from_url(redis_url, decode_responses=True)
        with contextlib.closing(r):
            pipe = r.pipeline(transaction=False)
            ids = list(ledger.arm_of)
            for e in ids:
                pipe.hget(k.event(e.partition(".")[0]), "st")  # the id before its signature
            state = dict(zip(ids, pipe.execute(), strict=True))
        assert [e for e in ledger.arm_of if state[e] != "r"] == [], "a decision lost its reward"
        assert ledger.acknowledged == set(ledger.arm_of)
        assert [e for e, n in ledger.applied.items() if n > 1] == []  # never applied twice
        errors = {a: after[a]["errors"] - before[a]["errors"] for a in after}
        for arm in ("a", "b"):
            mine = [e for e, x in ledger.arm_of.items() if x == arm]
            d = {f: after[arm][f] - before[arm][f] for f in ("pulls", "rewards", "pending")}
            # a model call lost with its replica is the arm's error, rewarded low at once
            assert d["rewards"] == len(mine) + errors[arm], (arm, d, errors)
            got = after[arm]["reward_sum"] - before[arm]["reward_sum"]
            assert got == pytest.approx(sum(ledger.reward_of[e] for e in mine), abs=1e-6)
            # a decision logged by a replica that died before answering stays pending
            assert d["pulls"] == d["rewards"] + d["pending"]
        assert sum(after[a]["pending"] - before[a]["pending"] for a in after) <= len(
            [c for c in report.failures if c.kind == "predict"]
        )


def test_token_auth_refuses_a_driver_without_the_cluster_token(
    wrong_token_driver: subprocess.Popen[str],
) -> None:
    """The nodes run with RAY_AUTH_MODE=token: a driver holding another token is refused."""
    _, err = wrong_token_driver.communicate(timeout=120)
    assert wrong_token_driver.returncode != 0
    assert "authentication" in err.lower() and "token" in err, err[-2000:]
