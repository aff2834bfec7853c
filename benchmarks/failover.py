"""What a Redis Cluster failover costs, with and without ``durability: replicated``.

Run: ``python benchmarks/failover.py [--clients 32] [--kills 2] [--seconds 4]``. Not in
CI; prints figures, asserts nothing. Starts its own 3-master, 3-replica cluster on
loopback ports (``cluster-node-timeout`` 2 s) and stops it at the end.

For each mode (``primary``: answered once the master ran the script; ``replicated``:
answered once ``WAIT`` confirms a replica has it):

1. Cost: decisions logged and rewards posted through one store, by one client (latency
   p50/p99 per call) and by ``--clients`` concurrent clients (calls per second), with no
   fault; the modes interleaved on one cluster, the median of ``--rounds`` rounds.
2. Failover: ``--clients`` clients log decisions and post their rewards (retrying a
   refused post until it is answered) over 12 fresh experiments spread over the shards; a
   master is SIGKILLed, its replica is promoted, the killed node is restarted (it rejoins
   as a replica). ``--kills`` times per scenario: ``replica in sync`` (on loopback the
   replica keeps up) and ``replica cut off 200 ms before`` (the replica is stopped and its
   link killed with CLIENT KILL TYPE replica 200 ms before the master dies, as when the
   replica lags or the link between them fails). Afterwards every acknowledged decision
   and reward is looked up in the cluster: lost = acknowledged but absent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/redis_servers.py

import redis
from redis.cluster import ClusterNode

from bandit_serve.errors import StoreError
from bandit_serve.store import ExperimentSettings, RedisStore, RewardOutcome
from bandit_serve.store.redis_store import ExperimentKeys
from tests.redis_servers import ClusterProcesses, RedisProcess, wait_until

EXPERIMENTS = 12


@dataclass
class Tally:
    decisions: dict[str, str] = field(default_factory=dict)  # event id -> experiment
    rewards: set[str] = field(default_factory=set)  # acknowledged: applied or duplicate
    errors: int = 0
    log_latency: list[float] = field(default_factory=list)
    reward_latency: list[float] = field(default_factory=list)
    calls: int = 0


def quantile(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=1000)[round(q * 1000) - 1] if len(xs) > 1 else float("nan")


async def client(
    store: RedisStore, exps: list[ExperimentSettings], n: int, tally: Tally, stop: asyncio.Event
) -> None:
    i = n
    while not stop.is_set():
        exp = exps[i % len(exps)]
        i += 1
        t0 = time.perf_counter()
        try:
            rec = await store.record_decision(exp, "a" if i % 2 else "b", 0.5)
        except StoreError:
            tally.errors += 1
            await asyncio.sleep(0.05)
            continue
        tally.log_latency.append(time.perf_counter() - t0)
        tally.decisions[rec.event_id] = exp.name
        tally.calls += 1
        while not stop.is_set():  # post until it is answered
            t0 = time.perf_counter()
            try:
                out = await store.apply_reward(exp, rec.event_id, 1.0)
            except StoreError:
                tally.errors += 1
                await asyncio.sleep(0.05)
                continue
            tally.reward_latency.append(time.perf_counter() - t0)
            tally.calls += 1
            if out in (RewardOutcome.APPLIED, RewardOutcome.DUPLICATE):
                tally.rewards.add(rec.event_id)
            break


async def load(
    store: RedisStore, exps: list[ExperimentSettings], clients: int
) -> tuple[Tally, asyncio.Event, list[asyncio.Task[None]]]:
    tally, stop = Tally(), asyncio.Event()
    tasks = [asyncio.create_task(client(store, exps, n, tally, stop)) for n in range(clients)]
    return tally, stop, tasks


def audit(cluster: ClusterProcesses, tally: Tally) -> tuple[int, int, int]:
    """(decisions lost, rewards lost, rewards counted twice) among the acknowledged."""
    rc = redis.RedisCluster(
        startup_nodes=[ClusterNode("127.0.0.1", n.port) for n in cluster.nodes if n.running],
        decode_responses=True,
    )
    try:
        ids = list(tally.decisions)
        states: list[str | None] = []
        for i in range(0, len(ids), 2000):
            pipe = rc.pipeline()
            for e in ids[i : i + 2000]:
                pipe.hget(ExperimentKeys(tally.decisions[e], 0).event(e), "st")
            states += pipe.execute()
        state = dict(zip(ids, states, strict=True))
        rewarded_total = 0
        for name in set(tally.decisions.values()):
            totals = cast(dict[str, str], rc.hgetall(ExperimentKeys(name, 0).totals))
            rewarded_total += sum(int(v) for f, v in totals.items() if f.endswith(":rewards"))
    finally:
        rc.close()
    lost_decisions = sum(1 for s in state.values() if s is None)
    lost_rewards = sum(1 for e in tally.rewards if state.get(e) != "r")
    rewarded = sum(1 for s in state.values() if s == "r")
    return lost_decisions, lost_rewards, rewarded_total - rewarded


def exps_for(tag: str) -> list[ExperimentSettings]:
    """Fresh experiments (so each run's totals are its own), spread over the shards."""
    stamp = time.time_ns()
    return [
        ExperimentSettings(f"fo-{tag}-{stamp}-{i}", wait_seconds=3600) for i in range(EXPERIMENTS)
    ]


async def cost(url: str, clients: int, seconds: float) -> tuple[Tally, Tally]:
    """One client, then ``clients`` clients, ``seconds`` each, no fault."""
    store = RedisStore.from_url(url, max_connections=256)
    out = []
    try:
        for n in (1, clients):
            tally, stop, tasks = await load(store, exps_for("cost"), n)
            await asyncio.sleep(seconds)
            stop.set()
            await asyncio.gather(*tasks)
            out.append(tally)
    finally:
        await store.close()
    return out[0], out[1]


async def failover(cluster: ClusterProcesses, url: str, clients: int, lag: float) -> str:
    exps = exps_for("failover")
    victim = cluster.master_of(ExperimentKeys(exps[0].name, 0).ctl)
    (replica,) = cluster.replicas_of(victim)
    store = RedisStore.from_url(url, max_connections=256)
    try:
        tally, stop, tasks = await load(store, exps, clients)
        await asyncio.sleep(1.5)
        assert replica.proc is not None
        if lag:  # cut the replica off: the master goes on answering what it cannot replicate
            replica.proc.send_signal(signal.SIGSTOP)
            with contextlib.closing(victim.client()) as c:
                c.client_kill_filter(_type="replica")
            await asyncio.sleep(lag)
        before = len(tally.rewards)
        killed = time.monotonic()
        await asyncio.to_thread(victim.kill)
        if lag:
            replica.proc.send_signal(signal.SIGCONT)
        await asyncio.to_thread(
            wait_until,
            "the replica is promoted",
            lambda: replica.port in cluster.master_ports(),
            60,
        )
        promoted = time.monotonic() - killed
        await asyncio.to_thread(_restart, victim, cluster)  # same node, same nodes.conf
        rejoined = time.monotonic() - killed
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        await store.close()
    lost_d, lost_r, twice = audit(cluster, tally)
    return (
        f"{len(tally.decisions):,} decisions and {len(tally.rewards):,} rewards acknowledged "
        f"({before:,} rewards before the kill); lost: {lost_d} decisions, {lost_r} rewards; "
        f"counted twice: {twice}; promoted after {promoted:.1f} s, old master back as a "
        f"replica after {rejoined:.1f} s; {tally.errors} calls refused (and retried)"
    )


def _restart(node: RedisProcess, cluster: ClusterProcesses) -> None:
    node.start()
    cluster.wait_healthy(60)


def ms(x: float) -> str:
    return f"{x * 1e3:.2f} ms"


async def run(args: argparse.Namespace, workdir: Path) -> None:
    modes = args.modes.split(",")
    with ClusterProcesses(workdir / "cluster", node_timeout_ms=2000) as cluster:
        urls = {
            m: cluster.url + ("?durability=replicated" if m == "replicated" else "") for m in modes
        }
        started = f"started in {cluster.started_in:.1f} s"
        print(f"3 masters, 3 replicas, cluster-node-timeout 2 s ({started})")
        print(f"\nCost, no fault ({args.rounds} interleaved rounds of {args.seconds:g} s; median):")
        rounds: dict[str, list[tuple[Tally, Tally]]] = {m: [] for m in modes}
        for _ in range(args.rounds):
            for m in modes:
                rounds[m].append(await cost(urls[m], args.clients, args.seconds))
        for m in modes:
            ones = [one for one, _ in rounds[m]]
            manys = [many for _, many in rounds[m]]
            log_p50 = statistics.median(quantile(t.log_latency, 0.5) for t in ones)
            log_p99 = statistics.median(quantile(t.log_latency, 0.99) for t in ones)
            rew_p50 = statistics.median(quantile(t.reward_latency, 0.5) for t in ones)
            rew_p99 = statistics.median(quantile(t.reward_latency, 0.99) for t in ones)
            one_rate = statistics.median(t.calls / args.seconds for t in ones)
            many_rate = statistics.median(t.calls / args.seconds for t in manys)
            many_p50 = statistics.median(quantile(t.reward_latency, 0.5) for t in manys)
            many_p99 = statistics.median(quantile(t.reward_latency, 0.99) for t in manys)
            print(
                f"  {m:<11} 1 client: log p50 {ms(log_p50)} p99 {ms(log_p99)}, reward p50 "
                f"{ms(rew_p50)} p99 {ms(rew_p99)}, {one_rate:,.0f} calls/s | {args.clients} "
                f"clients: {many_rate:,.0f} calls/s, reward p50 {ms(many_p50)} p99 {ms(many_p99)}"
            )
        print(f"\nA master SIGKILLed under load ({args.clients} clients, 12 experiments):")
        for lag, label in ((0.0, "replica in sync"), (0.2, "replica cut off 200 ms before")):
            for m in modes:
                for k in range(args.kills):
                    result = await failover(cluster, urls[m], args.clients, lag)
                    print(f"  {m:<11} {label} #{k + 1}: {result}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--kills", type=int, default=2, help="master kills per scenario and mode")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each cost run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved cost rounds")
    ap.add_argument("--modes", default="primary,replicated")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        asyncio.run(run(args, Path(d)))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
