"""Soak: ten minutes of steady traffic with faults, and whether anything grows.

Run: ``python benchmarks/soak.py [--minutes 10] [--rate R] [--kill-every 120]``. Not in CI
(``tests/test_soak.py`` runs a two-minute variant that checks errors only); prints
figures, asserts nothing.

Set-up: a redis-server of its own (loopback, free port, no persistence) and
``bandit-serve run`` (a local Ray, 2 router replicas) in a session of its own, on one
experiment with two arms and short windows: reward wait 30 s, record retention 60 s, time
buckets of 10 s kept 60 s, so the state reaches its steady size within two minutes.

1. Capacity: ``--calibrate-seconds`` of closed-loop load (32 clients, each decision
   followed at once by its rewards, in the mix below); the soak then runs at half of it
   (or at ``--rate`` decisions/s).
2. Soak: decisions arrive as a Poisson process at that rate; 90% get a reward 0.5-10 s
   later (the other 10% expire to the default after 30 s), and 30% of those rewards are
   posted a second time 0.1-5 s after the first was acknowledged (it must answer
   ``duplicate``). A reward post that fails is retried (backoff 0.2 s doubling, up to 8
   times), as a client would; every attempt counts as a request.
3. Faults: every ``--kill-every`` seconds the router replica started most recently is
   SIGKILLed (so the other one lives through the run and its memory can be compared);
   a fault window lasts from the kill until the replacement has answered a request, plus
   one second.
4. Memory every 30 s: Redis ``used_memory`` and every process's RSS and PSS (the service's
   session and the redis-server); the report compares minute 3 with the end for every
   process alive at both.
5. At the end: Redis memory per decision (``MEMORY USAGE`` of event keys by state, of the
   due set per entry, of a time bucket), the counts in Redis against what the clients
   were told (after the wait window, so every unrewarded decision has its default).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/redis_servers.py

import aiohttp
import psutil
import yaml

from bandit_serve.stats.histogram import NBINS
from bandit_serve.store import ExperimentSettings, RedisStore
from tests.ray_cluster import session_members
from tests.redis_servers import RedisProcess, free_ports

ROUTER = "ServeReplica:bandit-serve:BanditRouter"
BIN = Path(sys.executable).parent


@dataclass
class Settings:
    minutes: float = 10.0
    rate: float | None = None  # decisions per second; None: half the measured capacity
    calibrate_seconds: float = 20.0
    kill_every: float | None = 120.0  # seconds; None: no faults
    reward_share: float = 0.9
    duplicate_share: float = 0.3
    wait_seconds: float = 30.0
    retention_seconds: float = 60.0
    memory_every: float = 30.0
    compare_from: float = 180.0  # memory compared from this second to the end
    settle: bool = True  # after the load, wait out the window and check the counts
    redis_sizes: bool = True  # after the load, measure Redis's memory per decision
    seed: int = 1
    echo: bool = True


@dataclass
class Request:
    kind: str  # predict | reward | duplicate | retry
    start: float  # seconds since the soak's start
    end: float
    outcome: str  # HTTP status, or the exception's class name
    ok: bool
    replica: int | None = None  # the answering router's PID


@dataclass
class Fault:
    pid: int
    killed: float
    recovered: float | None = None  # the replacement answered

    def window(self) -> tuple[float, float]:
        end = self.recovered if self.recovered is not None else float("inf")
        return self.killed, end + 1.0


@dataclass
class Sample:
    t: float
    used_memory: int
    dataset: int  # used_memory_dataset: the keys and values, without buffers and scripts
    keys: int
    procs: dict[tuple[int, float], tuple[str, int, int]]  # (pid, created) -> role, rss, pss
    busy: float = 0.0  # the machine's CPU use since the last sample, percent (all cores)
    service_cpu: float = 0.0  # CPU seconds used so far by the service's live processes


@dataclass
class Ledger:
    requests: list[Request] = field(default_factory=list)
    decisions: dict[str, str] = field(default_factory=dict)  # event id -> arm
    applied: Counter[str] = field(default_factory=Counter)  # "applied" answers per event
    applied_sum: float = 0.0
    given_up: int = 0  # reward posts still failing after every retry
    seen: dict[int, float] = field(default_factory=dict)  # router PID -> first answer


@dataclass
class Result:
    settings: Settings
    rate: float
    capacity: float | None
    duration: float
    ledger: Ledger
    faults: list[Fault]
    samples: list[Sample]
    per_decision: dict[str, float] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)

    def in_fault(self, r: Request) -> bool:
        return any(r.start <= hi and r.end >= lo for lo, hi in (f.window() for f in self.faults))

    def errors(self, inside: bool | None = None) -> list[Request]:
        bad = [r for r in self.ledger.requests if not r.ok]
        return bad if inside is None else [r for r in bad if self.in_fault(r) == inside]

    def outside(self) -> list[Request]:
        return [r for r in self.ledger.requests if not self.in_fault(r)]

    def error_rate_outside(self) -> float:
        out = self.outside()
        return len([r for r in out if not r.ok]) / max(1, len(out))

    def latency(self, kind: str, q: float, outside: bool = True) -> float:
        xs = [
            r.end - r.start
            for r in (self.outside() if outside else self.ledger.requests)
            if r.ok and r.kind == kind
        ]
        return statistics.quantiles(xs, n=1000)[round(q * 1000) - 1] if len(xs) > 1 else 0.0

    def growth(self) -> tuple[float, float, list[tuple[str, int, float, float, float]]]:
        """Redis used_memory growth, and per process alive at both ends of the comparison:
        (role, pid, RSS MiB at the start, RSS growth, PSS growth)."""
        first = next(s for s in self.samples if s.t >= self.settings.compare_from)
        last = self.samples[-1]
        redis_growth = last.used_memory / first.used_memory - 1
        rows = []
        for key, (role, rss, pss) in first.procs.items():
            if key in last.procs:
                _, rss2, pss2 = last.procs[key]
                rows.append((role, key[0], rss / 2**20, rss2 / rss - 1, pss2 / max(pss, 1) - 1))
        return redis_growth, last.t - first.t, sorted(rows)


def trend(points: list[tuple[float, float]]) -> float:
    """The least-squares line's change over the points' span, relative to their mean: a
    growth figure that one noisy sample at either end cannot make or hide."""
    if len(points) < 3:
        return float("nan")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    slope = statistics.linear_regression(xs, ys).slope
    return slope * (xs[-1] - xs[0]) / statistics.mean(ys)


def role(cmdline: str, name: str) -> str:
    for key, label in (
        (ROUTER, "router replica"),
        ("ServeReplica:bandit-serve:model-", "model replica"),
        ("ServeController", "Serve controller"),
        ("ProxyActor", "Serve proxy"),
        ("DashboardAgent", "dashboard agent"),
        ("RuntimeEnvAgent", "runtime env agent"),
        ("log_monitor", "log monitor"),
        ("bandit_serve.service.runner", "driver (bandit-serve run)"),
        ("bandit-serve run", "supervisor"),
        ("dashboard/dashboard.py", "dashboard (minimal)"),
        ("autoscaler/_private/monitor.py", "autoscaler monitor"),
        ("ray::IDLE", "idle worker"),
    ):
        if key in cmdline:
            return label
    return name


class Service:
    """A redis-server and ``bandit-serve run`` (local Ray), each stopped by PID."""

    def __init__(self, workdir: Path, exp: str, port: int) -> None:
        self.workdir = workdir
        self.exp = exp
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.redis = RedisProcess(workdir, args=["--appendonly", "no"])
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "run.log"

    @property
    def calibration(self) -> str:
        """The experiment the capacity is measured on (the soak's own stays clean)."""
        return f"{self.exp}-cal"

    def config(self, s: Settings) -> Path:
        path = self.workdir / "soak.yaml"
        exps = [self._experiment(self.exp, s), self._experiment(self.calibration, s)]
        path.write_text(yaml.safe_dump({"experiments": exps}))
        return path

    def _experiment(self, name: str, s: Settings) -> dict[str, Any]:
        return {
            "name": name,
            "arms": [
                {"name": "a", "model": "bandit_serve.service.models:identity"},
                {"name": "b", "model": "bandit_serve.service.models:identity"},
            ],
            "policy": {"kind": "thompson", "min_share": 0.05},
            "reward": {"kind": "bernoulli", "wait_seconds": s.wait_seconds},
            "record_retention_seconds": s.retention_seconds,
            "buckets": {"seconds": 10, "retention_seconds": 60},
        }

    def start(self, s: Settings) -> None:
        self.redis.start()
        cmd = [str(BIN / "bandit-serve"), "run", str(self.config(s)), "--port", str(self.port)]
        cmd += ["--redis-url", self.redis.url, "--router-replicas", "2", "--engine", "ray"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bandit-serve run exited:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                if "bandit-serve is up" in self.log.read_text():
                    return
            time.sleep(0.5)
        raise TimeoutError(f"bandit-serve run not up:\n{self.log.read_text()[-3000:]}")

    def processes(self) -> list[psutil.Process]:
        """The supervisor, the service's session (driver, Ray, replicas) and Redis."""
        assert self.proc is not None
        out = [psutil.Process(self.proc.pid)]
        for child in out[0].children():
            out += session_members(child.pid)
        if self.redis.pid is not None:
            out.append(psutil.Process(self.redis.pid))
        return out

    def routers(self) -> list[psutil.Process]:
        found = []
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                if ROUTER in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
        return found

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.redis.stop()


def memory(service: Service, t: float) -> Sample:
    procs: dict[tuple[int, float], tuple[str, int, int]] = {}
    cpu = 0.0
    for p in service.processes():
        with contextlib.suppress(psutil.Error):
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            info = p.memory_full_info()
            label = role(" ".join(p.cmdline()), p.name())
            procs[(p.pid, p.create_time())] = (label, info.rss, info.pss)
            times = p.cpu_times()
            cpu += times.user + times.system
    with contextlib.closing(service.redis.client()) as c:
        stats = c.info("memory")
        keys = int(c.dbsize())
    used, dataset = int(stats["used_memory"]), int(stats["used_memory_dataset"])
    return Sample(t, used, dataset, keys, procs, psutil.cpu_percent(), cpu)


class Driver:
    """The load: decisions as a Poisson process, rewards and duplicates later."""

    def __init__(
        self, service: Service, s: Settings, http: aiohttp.ClientSession, exp: str
    ) -> None:
        self.service = service
        self.s = s
        self.http = http
        self.ledger = Ledger()
        self.rng = random.Random(s.seed)
        self.t0 = time.monotonic()
        self.url = f"{service.base}/v1/experiments/{exp}"

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def post(self, kind: str, path: str, body: Any) -> tuple[str, Any]:
        start = self.now()
        replica = None
        try:
            async with self.http.post(self.url + path, json=body) as r:
                outcome = str(r.status)
                payload = await r.json(content_type=None) if r.status < 500 else None
                header = r.headers.get("x-bandit-replica")
                replica = int(header) if header and header.isdigit() else None
        except (TimeoutError, aiohttp.ClientError, ValueError) as err:
            outcome, payload = type(err).__name__, None
        if replica is not None and replica not in self.ledger.seen:
            self.ledger.seen[replica] = self.now()
        ok = outcome == "200" or (outcome == "409" and kind in ("duplicate", "retry"))
        self.ledger.requests.append(Request(kind, start, self.now(), outcome, ok, replica))
        return outcome, payload

    async def reward(self, event_id: str, value: float, kind: str) -> bool:
        """Post until answered; a retry after a failed attempt may answer duplicate.
        Whether the reward is counted (answered applied or duplicate)."""
        body = {"event_id": event_id, "reward": value}
        backoff = 0.2
        for attempt in range(9):
            outcome, _ = await self.post(kind if attempt == 0 else "retry", "/rewards", body)
            if outcome in ("200", "409"):
                if outcome == "200":
                    self.ledger.applied[event_id] += 1
                    self.ledger.applied_sum += value
                return True
            if outcome in ("404", "410", "422"):
                return False  # an answer, and a wrong one: counted as an error above
            await asyncio.sleep(backoff * self.rng.uniform(1, 1.5))
            backoff = min(backoff * 2, 5.0)
        self.ledger.given_up += 1
        return False

    async def decision(self) -> None:
        outcome, p = await self.post("predict", "/predict", {"inputs": [1.0, 2.0]})
        if outcome != "200" or not isinstance(p, dict):
            return
        event_id, arm = p["event_id"], p["arm"]
        self.ledger.decisions[event_id] = arm
        if self.rng.random() >= self.s.reward_share:
            return  # expires to the default after the wait window
        await asyncio.sleep(self.rng.uniform(0.5, 10.0))
        value = float(self.rng.random() < (0.6 if arm == "b" else 0.4))
        counted = await self.reward(event_id, value, "reward")
        if counted and self.rng.random() < self.s.duplicate_share:
            await asyncio.sleep(self.rng.uniform(0.1, 5.0))
            await self.reward(event_id, value, "duplicate")

    async def closed_loop(self, seconds: float, clients: int = 32) -> float:
        """Decisions per second with ``clients`` clients, each reward posted at once."""
        done = 0
        end = time.monotonic() + seconds

        async def client() -> None:
            nonlocal done
            while time.monotonic() < end:
                outcome, p = await self.post("predict", "/predict", {"inputs": [1.0, 2.0]})
                if outcome == "200" and isinstance(p, dict):
                    if self.rng.random() < self.s.reward_share:
                        body = {"event_id": p["event_id"], "reward": 1.0}
                        await self.post("reward", "/rewards", body)
                        if self.rng.random() < self.s.duplicate_share:
                            await self.post("duplicate", "/rewards", body)
                    done += 1

        start = time.monotonic()
        await asyncio.gather(*(client() for _ in range(clients)))
        return done / (time.monotonic() - start)

    async def open_loop(self, rate: float, seconds: float) -> None:
        pending: set[asyncio.Task[None]] = set()
        t = self.now()
        end = t + seconds
        while t < end:
            t += self.rng.expovariate(rate)
            await asyncio.sleep(max(0.0, t - self.now()))
            task = asyncio.create_task(self.decision())
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*list(pending))

    async def killer(self, every: float, until: float, faults: list[Fault]) -> None:
        """SIGKILL the newest router every ``every`` s; the replacement must answer."""
        k = 1
        while k * every < until - 5:
            await asyncio.sleep(max(0.0, k * every - self.now()))
            k += 1
            routers = await asyncio.to_thread(self.service.routers)
            victim = max(routers, key=lambda p: p.create_time())
            victim.kill()
            fault = Fault(victim.pid, self.now())
            faults.append(fault)
            while self.now() < fault.killed + 120:
                await asyncio.sleep(0.2)
                new = [
                    pid
                    for pid, seen in self.ledger.seen.items()
                    if seen > fault.killed and pid != victim.pid
                ]
                if new:
                    fault.recovered = self.ledger.seen[new[0]]
                    break
            if self.s.echo:
                took = (
                    "never"
                    if fault.recovered is None
                    else f"{fault.recovered - fault.killed:.1f} s"
                )
                print(
                    f"  t={fault.killed:5.0f} s: router {victim.pid} killed; "
                    f"replacement answered after {took}",
                    flush=True,
                )

    async def sampler(self, every: float, until: float, samples: list[Sample]) -> None:
        while True:
            sample = await asyncio.to_thread(memory, self.service, self.now())
            samples.append(sample)
            if self.s.echo:
                n = len([r for r in self.ledger.requests if not r.ok])
                print(
                    f"  t={sample.t:5.0f} s: Redis used_memory {sample.used_memory / 2**20:.2f} "
                    f"MiB, {sample.keys} keys; {len(self.ledger.requests)} requests, {n} failed; "
                    f"machine CPU {sample.busy:.0f}%, load average {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
            if sample.t >= until:
                return
            await asyncio.sleep(max(0.0, min(every, until - self.now())))


def census(service: Service) -> dict[str, tuple[int, int]]:
    """Every key's ``MEMORY USAGE``, summed by kind: {kind: (keys, bytes)}."""
    out: dict[str, tuple[int, int]] = {}
    with contextlib.closing(service.redis.client()) as c:
        for key in c.scan_iter(count=1000):
            name = str(key)
            kind = name.split(":e0:")[-1].split(":")[0] if ":e0:" in name else name
            kind = {"ev": "decision records", "b": "time buckets", "due": "due sets"}.get(
                kind, "other keys"
            )
            n, size = out.get(kind, (0, 0))
            out[kind] = (n + 1, size + int(c.memory_usage(key, samples=0) or 0))
    return out


def per_decision(service: Service) -> dict[str, float]:
    """Redis bytes: event keys by state, one due-set entry, one time bucket."""
    out: dict[str, float] = {}
    for kind, (n, size) in sorted(census(service).items()):
        out[f"all {kind} ({n} keys), total"] = size
    with contextlib.closing(service.redis.client()) as c:
        stats = c.memory_stats()
        out["used_memory_dataset (MEMORY STATS dataset.bytes)"] = int(stats["dataset.bytes"])
        out["main dict overhead (overhead.hashtable.main)"] = int(
            stats.get("db.0", {}).get("overhead.hashtable.main", 0)
        )
        out["expires dict overhead (overhead.hashtable.expires)"] = int(
            stats.get("db.0", {}).get("overhead.hashtable.expires", 0)
        )
        by_state: dict[str, list[int]] = {}
        for n, key in enumerate(c.scan_iter(match=f"bandit:{{{service.exp}}}:e0:ev:*", count=500)):
            if n >= 600:
                break
            st = str(c.hget(key, "st"))
            usage = c.memory_usage(key, samples=0)
            if usage is not None:
                by_state.setdefault(st, []).append(int(usage))
        for st, xs in by_state.items():
            out[f"event key ({st})"] = statistics.mean(xs)
        due = f"bandit:{{{service.exp}}}:e0:due"
        n_due = int(c.zcard(due))
        due_bytes = c.memory_usage(due, samples=0)
        if n_due and due_bytes:
            out[f"due set per entry ({n_due} entries)"] = int(due_bytes) / n_due
        # the due set of the default windows holds rate x 600 s entries: a skiplist, not
        # the listpack a short soak's few pending decisions fit in; measured on a scratch key
        scratch = f"bandit:{{{service.exp}}}:scratch-due"
        n = 10_000
        for i in range(0, n, 1000):
            members = {f"{random.getrandbits(128):032x}:a": 1.8e12 + j for j in range(i, i + 1000)}
            c.zadd(scratch, members)
        out[f"due set per entry, {n} entries"] = int(c.memory_usage(scratch, samples=0) or 0) / n
        c.delete(scratch)
        buckets = list(c.scan_iter(match=f"bandit:{{{service.exp}}}:e0:b:*", count=100))
        if buckets:
            sizes = [int(c.memory_usage(b, samples=0) or 0) for b in buckets]
            fields = [int(c.hlen(b)) for b in buckets]
            out[f"time bucket (mean of {len(buckets)}, {statistics.mean(fields):.0f} fields)"] = (
                statistics.mean(sizes)
            )
            # a bucket of busier traffic: an arm's counters with every latency bin used
            raw = c.hgetall(buckets[0])
            counters = {
                str(f): str(v)
                for f, v in raw.items()
                if str(f).startswith("a:") and not str(f)[2:].startswith("h")
            }
            scratch = f"bandit:{{{service.exp}}}:scratch-bucket"
            pipe = c.pipeline(transaction=False)
            for f, v in [*counters.items(), *((f"a:h{i}", "1") for i in range(NBINS))]:
                pipe.hset(scratch, f, v)
            pipe.execute()
            size = int(c.memory_usage(scratch, samples=0) or 0)
            out[f"time bucket per arm, all {NBINS} latency bins ({c.hlen(scratch)} fields)"] = size
            c.delete(scratch)
    return out


async def store_cost(service: Service, n: int = 20_000) -> dict[str, float]:
    """Redis ``used_memory`` per decision, everything included (the record, its due-set
    entry, the key's slots in the keyspace and expiry tables, allocator rounding): ``n``
    decisions logged through the store into an experiment of their own with the default
    windows, then rewarded (the due-set entries go), then deleted."""
    exp = ExperimentSettings(f"{service.exp}-mem")
    store = RedisStore.from_url(service.redis.url)

    def used() -> int:
        with contextlib.closing(service.redis.client()) as c:
            return int(c.info("memory")["used_memory"])

    try:
        before = used()
        ids: list[str] = []
        for _ in range(0, n, 1000):
            records = await store.record_decisions(exp, ["a"] * 1000, [0.5] * 1000)
            ids += [r.event_id for r in records]
        pending = used()
        for i in range(0, n, 1000):
            await store.apply_rewards(exp, [(e, 1.0) for e in ids[i : i + 1000]])
        rewarded = used()
    finally:
        await store.close()
        with contextlib.closing(service.redis.client()) as c:
            for key in list(c.scan_iter(match=f"bandit:{{{exp.name}}}*", count=1000)):
                c.delete(key)
    return {
        f"used_memory per pending decision ({n:,} logged)": (pending - before) / n,
        "used_memory per rewarded decision (due-set entry gone)": (rewarded - before) / n,
    }


async def soak(service: Service, s: Settings) -> Result:
    connector = aiohttp.TCPConnector(limit=256)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        capacity = None
        rate = s.rate
        if rate is None:
            warm = Driver(service, s, http, service.calibration)
            capacity = await warm.closed_loop(s.calibrate_seconds)
            rate = capacity / 2
            if s.echo:
                print(f"capacity {capacity:.1f} decisions/s; soaking at {rate:.1f}/s", flush=True)
        d = Driver(service, s, http, service.exp)
        seconds = s.minutes * 60
        faults: list[Fault] = []
        samples: list[Sample] = []
        jobs = [d.sampler(s.memory_every, seconds, samples)]
        if s.kill_every:
            jobs.append(d.killer(s.kill_every, seconds, faults))
        await asyncio.gather(d.open_loop(rate, seconds), *jobs)
        result = Result(s, rate, capacity, d.now(), d.ledger, faults, samples)
        if s.redis_sizes:
            result.per_decision = await asyncio.to_thread(per_decision, service)
            result.per_decision.update(await store_cost(service))
        if s.settle:  # every unrewarded decision gets its default, then the counts
            await asyncio.sleep(s.wait_seconds + 10)
            async with http.get(d.url) as r:
                arms = (await r.json())["arms"]
            result.counts = {
                f: sum(a[f] for a in arms)
                for f in ("pulls", "rewards", "pending", "defaulted", "errors", "withdrawn")
            }
            result.counts["reward_sum"] = sum(a["reward_sum"] for a in arms)
        return result


def run(s: Settings, workdir: Path | None = None, port: int | None = None) -> Result:
    workdir = workdir or Path(tempfile.mkdtemp(prefix="soak-"))
    service = Service(workdir, f"soak-{int(time.time())}", port or free_ports(1)[0])
    service.start(s)
    try:
        return asyncio.run(soak(service, s))
    finally:
        service.stop()


def report(r: Result) -> str:
    lines = []
    L = r.ledger
    kinds = Counter(q.kind for q in L.requests)
    lines.append(
        f"{r.duration / 60:.1f} min at {r.rate:.1f} decisions/s"
        + (f" (half the measured capacity of {r.capacity:.1f}/s)" if r.capacity else "")
        + f": {len(L.requests)} requests {dict(kinds)}; {len(L.decisions)} decisions answered"
    )
    inside, outside = r.errors(inside=True), r.errors(inside=False)
    lines.append(
        f"errors outside fault windows: {len(outside)} of {len(r.outside())} requests "
        f"({100 * r.error_rate_outside():.3f}%) "
        f"{dict(Counter((q.kind, q.outcome) for q in outside))}"
    )
    lines.append(
        f"errors inside the {len(r.faults)} fault windows: {len(inside)} "
        f"{dict(Counter((q.kind, q.outcome) for q in inside))}; reward posts given up: {L.given_up}"
    )
    for f in r.faults:
        took = "never" if f.recovered is None else f"{f.recovered - f.killed:.1f} s"
        lines.append(
            f"  router {f.pid} killed at {f.killed:.0f} s; replacement answered after {took}"
        )
    lines.append(
        "latency outside fault windows: predict p50 {:.1f} ms, p99 {:.1f} ms; reward p99 "
        "{:.1f} ms; predict p99 over the whole run {:.1f} ms".format(
            1000 * r.latency("predict", 0.5),
            1000 * r.latency("predict", 0.99),
            1000 * r.latency("reward", 0.99),
            1000 * r.latency("predict", 0.99, outside=False),
        )
    )
    if len(r.samples) > 1:
        busy = statistics.mean(x.busy for x in r.samples[1:])
        span = r.samples[-1].t - r.samples[0].t
        own = 100 * (r.samples[-1].service_cpu - r.samples[0].service_cpu) / span / 2
        lines.append(
            f"CPU of the whole machine (2 cores) during the run: {busy:.0f}%; the service's "
            f"processes that lived through it: about {own:.0f}% (the rest: the load "
            "generator, replaced replicas, and whatever else ran on the machine)"
        )
    by_minute: dict[int, list[float]] = {}
    for q in r.outside():
        if q.ok and q.kind == "predict":
            by_minute.setdefault(int(q.start // 60), []).append(q.end - q.start)
    lines.append(
        "predict p99 by minute (ms): "
        + ", ".join(
            f"{1000 * statistics.quantiles(xs, n=100)[98]:.0f}"
            for _, xs in sorted(by_minute.items())
            if len(xs) > 1
        )
    )
    twice = [e for e, n in L.applied.items() if n > 1]
    lines.append(f"rewards answered applied twice: {len(twice)}")
    if len(r.samples) > 1 and r.samples[-1].t > r.settings.compare_from:
        redis_growth, span, rows = r.growth()
        first = next(s for s in r.samples if s.t >= r.settings.compare_from)
        last = r.samples[-1]
        span_samples = [x for x in r.samples if x.t >= first.t]
        used_trend = trend([(x.t, x.used_memory) for x in span_samples])
        data_trend = trend([(x.t, x.dataset) for x in span_samples])
        lines.append(
            f"memory from t={first.t:.0f} s to t={last.t:.0f} s ({span:.0f} s): Redis "
            f"used_memory {first.used_memory / 2**20:.2f} -> {last.used_memory / 2**20:.2f} MiB "
            f"({100 * redis_growth:+.1f}%; least-squares trend over the {len(span_samples)} "
            f"samples {100 * used_trend:+.1f}%, range "
            f"{min(x.used_memory for x in span_samples) / 2**20:.2f}-"
            f"{max(x.used_memory for x in span_samples) / 2**20:.2f} MiB); "
            f"used_memory_dataset {first.dataset / 2**10:.0f} -> {last.dataset / 2**10:.0f} KiB "
            f"(trend {100 * data_trend:+.1f}%); keys {first.keys} -> {last.keys}"
        )
        for label, pid, rss, g_rss, g_pss in rows:
            lines.append(
                f"  {label:>26} {pid:>7}: RSS {rss:7.1f} MiB {100 * g_rss:+6.1f}%, "
                f"PSS {100 * g_pss:+6.1f}%"
            )
            if g_rss > 0.05:  # its course: still rising at the end, or levelled off?
                course = [
                    f"{x.procs[k][1] / 2**20:.0f}"
                    for x in r.samples
                    for k in x.procs
                    if k[0] == pid
                ]
                lines.append(f"  {'':>26} RSS every 30 s (MiB): {' '.join(course)}")
        lines.append(
            "  Redis used_memory every 30 s (MiB): "
            + " ".join(f"{x.used_memory / 2**20:.2f}" for x in r.samples)
        )
    for what, size in r.per_decision.items():
        lines.append(f"Redis {what}: {size:.0f} bytes")
    if r.counts:
        c = r.counts
        applied = sum(L.applied.values())
        lines.append(
            f"after the window: pulls {c['pulls']}, rewards {c['rewards']} (applied by answers "
            f"{applied}, defaulted {c['defaulted']}, failed calls {c['errors']}), pending "
            f"{c['pending']}, withdrawn {c['withdrawn']}; reward_sum {c['reward_sum']} vs "
            f"applied by answers {L.applied_sum}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=None, help="decisions/s (default: half capacity)")
    ap.add_argument("--kill-every", type=float, default=120.0, help="seconds; 0: no faults")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = ap.parse_args()
    s = Settings(minutes=a.minutes, rate=a.rate, kill_every=a.kill_every or None)
    result = run(s)
    print(report(result))
    if a.json is not None:
        a.json.write_text(json.dumps({"report": report(result)}, indent=1))


if __name__ == "__main__":
    main()
