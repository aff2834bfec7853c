"""Serving cost: bandit-serve on Ray Serve and on its local engine against bare apps of the
same shape, measured in one run on this machine; then the memory of each set-up.

Run: ``python benchmarks/serve.py [--rounds 5] [--requests 400]``. It starts a
redis-server of its own (as ``bandit-serve run`` does: append-only file on), so Redis's
CPU is this run's alone. Not a test: prints figures, ratios and the issue's targets
beside them, asserts nothing, exits 0. ``benchmarks/README.md`` explains the figures.

bandit-serve runs as a user would run it: an experiment of two arms (Thompson sampling)
with guardrails, an assignment section (every request carries a ``unit_id``: a bandit
keeps each unit's first arm, one more Redis read per request) and an auth section (every
request carries a key). The models are trivial (they return their inputs).

1. Ray Serve (``ray.init(num_cpus=2)``, ``max_ongoing_requests`` 100 everywhere):
   ``bare``, an ingress of 2 FastAPI replicas and one handle hop to a model deployment;
   ``bandit``, bandit-serve's app (2 router replicas, one ModelVersion per arm, as
   ``bandit-serve run`` deploys it); ``co-located``, the same with both arms
   ``placement: router`` (no handle hop); ``bare, shared loop``, the bare app with the
   Ray Serve settings bandit-serve's router uses (``router_actor_options``): the
   like-for-like reference for what bandit-serve's own code costs. Interleaved rounds
   at concurrency 1, 8 and 32 (median and range of each app's rounds, ratio of the
   medians); CPU per request by process role at concurrency 8 (interleaved rounds);
   rewards through the API; overload (256 clients) against the bare app and the
   default router queue, interleaved, then a small queue. The CPU rounds also run the
   bandit app with requests without a ``unit_id``: what sticky units cost.
2. The local engine (``bandit-serve run --engine local``) against a bare FastAPI app
   with one in-process model under uvicorn, each one worker process, interleaved rounds
   at concurrency 8 and 32.
3. Memory (PSS) of every process of the demo (``configs/demo.yaml``) on Ray and on the
   local engine, and of a bare Ray Serve app of the demo's shape (2 ingress replicas, a
   model deployment for each of the 3 demo models), after 200 requests each.
"""

import argparse
import asyncio
import contextlib
import hashlib
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastapi import FastAPI  # noqa: E402
from pydantic import BaseModel  # noqa: E402

MiB = 1024 * 1024
UNITS = 10_000  # unit ids drawn at random for the requests' unit_id


class BareBody(BaseModel):
    inputs: Any


# -- the load generator ---------------------------------------------------------------------


def body_maker(units: bool = True) -> Callable[[], dict[str, Any]]:
    """Request bodies: 64 numbers, and a random unit (sent to every app: the same bytes)."""
    inputs = [0.0] * 64

    def make() -> dict[str, Any]:
        if not units:
            return {"inputs": inputs}
        return {"inputs": inputs, "unit_id": f"u{random.randrange(UNITS)}"}

    return make


async def load(
    url: str,
    body: Any,
    n: int,
    concurrency: int,
    headers: dict[str, str] | None = None,
) -> tuple[float, float, float]:
    """Requests per second, p50 and p99 latency (ms) for n requests at a concurrency."""
    o = await drive(
        url, body, n, concurrency, honour_retry_after=False, warm_up=20, headers=headers
    )
    if o["refused_per_s"] > 0:
        raise RuntimeError(f"{url} refused requests at concurrency {concurrency}")
    return o["ok_per_s"], o["ok_p50"], o["ok_p99"]


async def drive(
    url: str,
    body: Any,
    n: int,
    concurrency: int,
    honour_retry_after: bool,
    warm_up: int = 0,
    headers: dict[str, str] | None = None,
) -> dict[str, float]:
    """n requests from `concurrency` clients: answered/s, refused/s, latencies (ms).

    ``body`` is a JSON value, or a function making one per request. Clients that never
    back off send their next request at once after a 503; clients that honour
    Retry-After wait that long (times 1 to 2, jitter) and send the refused request again
    (its latency then counts from the first try)."""
    ok: list[float] = []
    refused: list[float] = []
    retry_after: set[str] = set()
    make = body if callable(body) else (lambda: body)
    async with client_session(concurrency) as client:
        queue = list(range(n))

        async def worker() -> None:
            while queue:
                queue.pop()
                first = time.perf_counter()
                payload = make()
                while True:
                    t = time.perf_counter()
                    async with client.post(url, json=payload, headers=headers) as r:
                        await r.read()
                        if r.status == 503:
                            refused.append(time.perf_counter() - t)
                            header = r.headers.get("retry-after", "none")
                            retry_after.add(header)
                        else:
                            r.raise_for_status()
                            ok.append(time.perf_counter() - first)
                            break
                    if not honour_retry_after:
                        break
                    wait = float(header) if header.isdigit() else 1.0
                    await asyncio.sleep(wait * random.uniform(1, 2))  # jitter: no herd

        for _ in range(warm_up):
            async with client.post(url, json=make(), headers=headers) as r:
                await r.read()
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start

    def pct(xs: list[float], q: int) -> float:
        return statistics.quantiles(xs, n=100)[q - 1] * 1000 if len(xs) > 1 else float("nan")

    header = retry_after.pop() if len(retry_after) == 1 else "none"
    return {
        "ok_per_s": len(ok) / elapsed,
        "refused_per_s": len(refused) / elapsed,
        "ok_p50": pct(ok, 50),
        "ok_p99": pct(ok, 99),
        "refused_p50": pct(refused, 50),
        "retry_after": float(header) if header.isdigit() else float("nan"),
    }


def client_session(concurrency: int) -> aiohttp.ClientSession:
    """The load generator's client. aiohttp, not httpx: at 256 connections httpx's own
    pool costs so much CPU on this 2-core machine that the client, not the server, caps
    the rate (measured: 48 vs 124 req/s against the bare app)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))


# -- figures --------------------------------------------------------------------------------


def spread(xs: list[float], digits: int = 1) -> str:
    """``median (min-max)`` of a few rounds."""
    if not xs:
        return "-"
    m = statistics.median(xs)
    return f"{m:.{digits}f} ({min(xs):.{digits}f}-{max(xs):.{digits}f})"


def ratio(a: list[float], b: list[float]) -> float:
    """The ratio of the medians."""
    return statistics.median(a) / statistics.median(b)


class Targets:
    """The issue's targets, each with its measured figure, printed at the end."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, bool]] = []

    def add(self, what: str, figure: str, met: bool) -> None:
        self.rows.append((what, figure, met))

    def print(self) -> None:
        print("\ntargets:")
        for what, figure, met in self.rows:
            print(f"  [{'met' if met else 'MISSED':>6}] {what}: {figure}")


# -- processes ------------------------------------------------------------------------------


def own_processes() -> list[psutil.Process]:
    """This process and its descendants (Ray, started here)."""
    me = psutil.Process()
    return [me, *me.children(recursive=True)]


def cpu_seconds(procs: list[psutil.Process], role: Callable[[str], str | None]) -> dict[str, float]:
    out: dict[str, float] = {}
    for proc in procs:
        try:
            name = "load generator" if proc.pid == os.getpid() else role(" ".join(proc.cmdline()))
            t = proc.cpu_times()
        except psutil.Error:
            continue
        if name is not None:
            out[name] = out.get(name, 0.0) + t.user + t.system
    return out


def start(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A subprocess in a session of its own (stopped by :func:`stop`, by its pid)."""
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to what we started; its session is killed if it does not stop in 60 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def wait_up(url: str, proc: subprocess.Popen[bytes], seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server for {url} exited ({proc.returncode})")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=5).status_code == 200:  # the proxy's 404: not yet
                return
        time.sleep(1)
    raise RuntimeError(f"{url} did not answer within {seconds:.0f} s")


def descendants(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    root = psutil.Process(proc.pid)
    return [root, *root.children(recursive=True)]


def pss_table(label: str, procs: list[psutil.Process]) -> float:
    """Print the PSS of every process; returns the total (MiB)."""
    rows = []
    for p in procs:
        try:
            pss = p.memory_full_info().pss / MiB
            name = " ".join(p.cmdline())[:90] or p.name()
        except psutil.Error:
            continue
        rows.append((pss, name))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    print(f"  {label}: {len(rows)} processes, PSS {total:,.0f} MiB")
    for pss, name in rows:
        print(f"    {pss:>7.1f} MiB  {name}")
    return total


# -- the apps -------------------------------------------------------------------------------


def experiment(name: str, placement: str = "replica") -> dict[str, Any]:
    """The benchmark's experiment: two trivial arms, Thompson sampling, guardrails, sticky
    units by unit_id."""
    arm = {"model": "bandit_serve.models:identity", "placement": placement}
    return {
        "name": name,
        "arms": [{"name": "a", **arm}, {"name": "b", **arm}],
        "policy": {"kind": "thompson"},
        "reward": {"kind": "bernoulli", "wait_seconds": 3600},
        "sync_interval_seconds": 1.0,
        "guardrails": {
            "rules": [
                {"metric": "error_rate", "max_increase": 0.02},
                {"metric": "latency_p99", "max_ratio": 1.5},
            ],
            "min_calls": 200,
            "check_interval_seconds": 5,
        },
        "assignment": {"by": "unit_id", "salt": "bench"},
    }


def write_config(path: Path, experiments: list[dict[str, Any]], key: str) -> Path:
    names = [e["name"] for e in experiments]
    scopes = [f"predict:{n}" for n in names] + [f"reward:{n}" for n in names] + ["read"]
    digest = hashlib.sha256(key.encode()).hexdigest()
    auth = {"keys": [{"name": "bench", "sha256": digest, "scopes": scopes}]}
    path.write_text(yaml.safe_dump({"auth": auth, "experiments": experiments}))
    return path


def ray_section(
    args: argparse.Namespace, redis_url: str, key: str, exps: dict[str, str], targets: Targets
) -> None:
    import ray
    from ray import serve
    from ray.serve.handle import DeploymentHandle

    from bandit_serve.service.serve_app import AppArgs, build_app, router_actor_options

    bare_api = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=100)
    class BareModel:
        async def __call__(self, inputs: Any) -> Any:
            return inputs

    @serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=100)
    @serve.ingress(bare_api)
    class BareIngress:
        def __init__(self, model: DeploymentHandle[Any]) -> None:
            self.model = model

        @bare_api.post("/predict")
        async def predict(self, body: BareBody) -> dict[str, Any]:
            return {"prediction": await self.model.remote(body.inputs)}

    tmp = Path(tempfile.mkdtemp())
    cfg = write_config(
        tmp / "bench.yaml",
        [experiment(exps["bandit"]), experiment(exps["co"], placement="router")],
        key,
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        app_args = AppArgs(config=str(cfg), redis_url=redis_url, router_replicas=2)
        shared = router_actor_options(app_args)  # the router's Ray Serve settings
        bare = BareIngress.options(num_replicas=2)  # type: ignore[attr-defined]
        model = BareModel.bind()  # type: ignore[attr-defined]
        serve.run(bare.bind(model), name="bare", route_prefix="/bare")
        bare_shared = BareIngress.options(  # type: ignore[attr-defined]
            num_replicas=2, ray_actor_options=shared
        )
        model = BareModel.bind()  # type: ignore[attr-defined]
        serve.run(bare_shared.bind(model), name="bareshared", route_prefix="/shared")
        serve.run(build_app(app_args), name="bandit", route_prefix="/")
        small = app_args.model_copy(update={"max_ongoing_requests": 32, "max_queued_requests": 64})
        serve.run(build_app(small), name="small", route_prefix="/small")
        base = f"http://127.0.0.1:{args.port}"
        urls = {
            "bare": f"{base}/bare/predict",
            "bandit": f"{base}/v1/experiments/{exps['bandit']}/predict",
            "co-located": f"{base}/v1/experiments/{exps['co']}/predict",
            "bare, shared loop": f"{base}/shared/predict",
        }
        headers = {"Authorization": f"Bearer {key}"}
        make = body_maker()
        for url in urls.values():  # each answers the inputs back
            answer = httpx.post(url, json=make(), headers=headers, timeout=60)
            assert answer.status_code == 200, answer.text
            assert answer.json()["prediction"] == [0.0] * 64, answer.text

        print(f"\n== Ray Serve: {args.rounds} interleaved rounds of {args.requests} requests ==")
        print(
            "req/s and p50 in ms: median (range) of the rounds; ratios of the medians "
            "against the bare app"
        )
        print(f"{'conc':>4} | {'app':<18} | {'req/s':>20} | {'p50 ms':>20} | {'p99 ms':>8} | ratio")
        results: dict[tuple[int, str], list[tuple[float, float, float]]] = {}
        for c in (1, 8, 32):
            for _ in range(args.rounds):
                for name, url in urls.items():
                    got = asyncio.run(load(url, make, args.requests, c, headers))
                    results.setdefault((c, name), []).append(got)
            for name in urls:
                rs = results[(c, name)]
                rate, p50 = [r[0] for r in rs], [r[1] for r in rs]
                ref = results[(c, "bare")]
                tput = ratio(rate, [r[0] for r in ref])
                lat = ratio(p50, [r[1] for r in ref])
                p99 = statistics.median(r[2] for r in rs)
                print(
                    f"{c:>4} | {name:<18} | {spread(rate):>20} | {spread(p50):>20} | "
                    f"{p99:>8.1f} | {tput:.2f}x req/s, {lat:.2f}x p50"
                )
            if c in (8, 32):
                b, o = [r[0] for r in results[(c, "bare")]], [r[0] for r in results[(c, "bandit")]]
                tput = ratio(o, b)
                targets.add(
                    f"throughput at concurrency {c} >= 0.95x bare",
                    f"{tput:.2f}x (rounds: {spread([x / statistics.median(b) for x in o], 2)})",
                    tput >= 0.95,
                )
            if c == 8:
                b = [r[1] for r in results[(8, "bare")]]
                o = [r[1] for r in results[(8, "bandit")]]
                targets.add(
                    "p50 at concurrency 8 <= 1.05x bare", f"{ratio(o, b):.2f}x", ratio(o, b) <= 1.05
                )
                co = [r[0] for r in results[(8, "co-located")]]
                b = [r[0] for r in results[(8, "bare")]]
                targets.add(
                    "co-located arms at concurrency 8 >= 1.3x the bare two-hop app",
                    f"{ratio(co, b):.2f}x",
                    ratio(co, b) >= 1.3,
                )

        roles = (  # process command line -> role, first match wins
            ("ServeReplica:bare:BareIngress", "ingress / router"),
            ("ServeReplica:bareshared:BareIngress", "ingress / router"),
            ("ServeReplica:bandit:BanditRouter", "ingress / router"),
            ("ServeReplica:bare:BareModel", "model replicas"),
            ("ServeReplica:bareshared:BareModel", "model replicas"),
            ("ServeReplica:bandit:model-", "model replicas"),
            ("ServeReplica:", "other apps (idle)"),
            ("ProxyActor", "Serve proxy"),
            ("redis-server", "Redis"),
            ("ray", "Ray (raylet, GCS, controller)"),
        )

        def role(cmd: str) -> str | None:
            return next((r for k, r in roles if k in cmd), None)

        def procs() -> list[psutil.Process]:
            return own_processes() + [p for p in psutil.process_iter() if p.pid == REDIS_PID[0]]

        n = args.requests * 2
        cpu: dict[str, list[dict[str, float]]] = {}
        cpu_urls = {**urls, "bandit, no unit_id": urls["bandit"]}  # what sticky units cost
        no_units = body_maker(units=False)
        for _ in range(args.cpu_rounds):
            for name, url in cpu_urls.items():
                before = cpu_seconds(procs(), role)
                asyncio.run(load(url, no_units if "no unit" in name else make, n, 8, headers))
                after = cpu_seconds(procs(), role)
                per = {k: (after[k] - before.get(k, 0.0)) * 1000 / (n + 20) for k in after}
                cpu.setdefault(name, []).append(per)
        print(
            f"\nCPU per request at concurrency 8 by process role (ms, all on 2 cores; "
            f"median of {args.cpu_rounds} interleaved rounds, range of the totals):"
        )
        names = list(cpu_urls)
        all_roles = sorted(
            {r for runs in cpu.values() for per in runs for r in per},
            key=lambda k: -statistics.median(per.get(k, 0.0) for per in cpu["bandit"]),
        )
        print(f"{'role':>30} | " + " | ".join(f"{n[:18]:>18}" for n in names))
        for rl in all_roles:
            cells = [statistics.median(per.get(rl, 0.0) for per in cpu[n]) for n in names]
            print(f"{rl:>30} | " + " | ".join(f"{x:>18.2f}" for x in cells))
        totals = {n: [sum(per.values()) for per in cpu[n]] for n in names}
        print(f"{'total':>30} | " + " | ".join(f"{spread(totals[n], 2):>18}" for n in names))
        extra = statistics.median(totals["bandit"]) - statistics.median(totals["bare"])
        like = statistics.median(totals["bandit"]) - statistics.median(totals["bare, shared loop"])
        print(
            f"bandit-serve's extra CPU per request: {extra:+.2f} ms over the bare app, "
            f"{like:+.2f} ms over the bare app with the router's Ray Serve settings"
        )
        targets.add(
            "CPU per request <= +1.5 ms over bare",
            f"{extra:+.2f} ms (like-for-like {like:+.2f} ms)",
            extra <= 1.5,
        )

        exp = exps["bandit"]
        single = asyncio.run(rewards(base, exp, 640, 1, headers))
        batched = asyncio.run(rewards(base, exp, 4000, 1000, headers))
        print(
            f"\nrewards through HTTP: one per request (32 concurrent) {single:,.0f}/s; "
            f"batches of 1,000 {batched:,.0f}/s"
        )

        print(
            f"\noverload: {args.overload_concurrency} clients, {args.overload_requests} "
            f"requests; bare and the default queue in {args.overload_rounds} interleaved rounds"
        )
        print(
            f"{'router queue':>26} | {'answered/s':>20} {'p50 ms':>7} {'p99 ms':>7} | "
            f"{'503/s':>6} {'p50 ms':>7} {'Retry-After':>11}"
        )
        runs: dict[str, list[dict[str, float]]] = {}
        cases = (
            ("bare app (100 + unbounded)", urls["bare"], False, args.overload_rounds),
            ("default (100 + 500)", urls["bandit"], False, args.overload_rounds),
            ("small (32 + 64)", f"{base}/small/v1/experiments/{exp}/predict", False, 1),
            ("small, clients honour R-A", f"{base}/small/v1/experiments/{exp}/predict", True, 1),
        )
        for i in range(args.overload_rounds):
            for label, url, honour, times in cases:
                if i < times:
                    outcome = asyncio.run(
                        drive(
                            url,
                            make,
                            args.overload_requests,
                            args.overload_concurrency,
                            honour,
                            headers=headers,
                        )
                    )
                    runs.setdefault(label, []).append(outcome)
        for label, _, _, _ in cases:
            os_ = runs[label]
            print(
                f"{label:>26} | {spread([o['ok_per_s'] for o in os_]):>20} "
                f"{statistics.median(o['ok_p50'] for o in os_):>7.0f} "
                f"{statistics.median(o['ok_p99'] for o in os_):>7.0f} | "
                f"{statistics.median(o['refused_per_s'] for o in os_):>6.1f} "
                f"{statistics.median(o['refused_p50'] for o in os_):>7.0f} "
                f"{statistics.median(o['retry_after'] for o in os_):>11.0f}"
            )
        over = ratio(
            [o["ok_per_s"] for o in runs["default (100 + 500)"]],
            [o["ok_per_s"] for o in runs["bare app (100 + unbounded)"]],
        )
        targets.add("answers under overload >= 0.95x bare", f"{over:.2f}x", over >= 0.95)
    finally:
        serve.shutdown()
        ray.shutdown()


async def rewards(base: str, exp: str, n: int, batch: int, headers: dict[str, str]) -> float:
    """Post n rewards for fresh decisions, one per request (32 at a time) or in batches."""
    make = body_maker()
    async with httpx.AsyncClient(timeout=60, headers=headers) as client:
        ids: list[str] = []

        async def decide(k: int) -> None:
            for _ in range(k):
                r = await client.post(f"{base}/v1/experiments/{exp}/predict", json=make())
                ids.append(r.json()["event_id"])

        await asyncio.gather(*(decide(n // 32) for _ in range(32)))
        start = time.perf_counter()
        if batch == 1:
            queue = list(ids)

            async def post() -> None:
                while queue:
                    e = queue.pop()
                    await client.post(
                        f"{base}/v1/experiments/{exp}/rewards", json={"event_id": e, "reward": 1}
                    )

            await asyncio.gather(*(post() for _ in range(32)))
        else:
            for i in range(0, len(ids), batch):
                items = [{"event_id": e, "reward": 1} for e in ids[i : i + batch]]
                r = await client.post(
                    f"{base}/v1/experiments/{exp}/rewards", json={"rewards": items}
                )
                assert r.json()["counts"]["applied"] == len(items)
        return len(ids) / (time.perf_counter() - start)


# -- the local engine -----------------------------------------------------------------------

bare_local = FastAPI()


def _identity(inputs: Any) -> Any:
    return inputs


@bare_local.post("/predict")
async def _bare_predict(body: BareBody) -> dict[str, Any]:
    return {"prediction": _identity(body.inputs)}


@bare_local.get("/healthz")
async def _bare_health() -> dict[str, str]:
    return {"status": "ok"}


def local_section(
    args: argparse.Namespace, redis_url: str, key: str, exps: dict[str, str], targets: Targets
) -> None:
    tmp = Path(tempfile.mkdtemp())
    cfg = write_config(tmp / "local.yaml", [experiment(exps["local"])], key)
    ports = {"bare": args.port + 1, "local": args.port + 2}
    uvicorn_opts = ["--log-level", "warning", "--no-access-log"]
    servers = {
        "bare": start(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "benchmarks.serve:bare_local",
                "--port",
                str(ports["bare"]),
                "--workers",
                str(args.local_workers),
                *uvicorn_opts,
            ]
        ),
        "local": start(
            [
                sys.executable,
                "-m",
                "bandit_serve.cli",
                "run",
                str(cfg),
                "--engine",
                "local",
                "--workers",
                str(args.local_workers),
                "--port",
                str(ports["local"]),
                "--redis-url",
                redis_url,
            ]
        ),
    }
    try:
        for name, proc in servers.items():
            wait_up(f"http://127.0.0.1:{ports[name]}/healthz", proc)
        urls = {
            "bare FastAPI": f"http://127.0.0.1:{ports['bare']}/predict",
            "local engine": f"http://127.0.0.1:{ports['local']}/v1/experiments/{exps['local']}/predict",
        }
        headers = {"Authorization": f"Bearer {key}"}
        make = body_maker()
        n = args.requests * 5
        print(
            f"\n== the local engine ({args.local_workers} worker process(es)) against a bare "
            f"FastAPI app under uvicorn ({args.local_workers}), {args.rounds} interleaved "
            f"rounds of {n} requests =="
        )
        head = f"{'conc':>4} | {'app':<14} | {'req/s':>24} | {'p50 ms':>18}"
        print(f"{head} | {'server CPU ms/req':>18} | ratio")
        for c in (8, 32):
            res: dict[str, list[tuple[float, float, float]]] = {}
            cpu: dict[str, list[float]] = {}
            for _ in range(args.rounds):
                for (name, url), proc in zip(urls.items(), servers.values(), strict=True):
                    ps = descendants(proc)
                    before = sum(sum(p.cpu_times()[:2]) for p in ps)
                    res.setdefault(name, []).append(asyncio.run(load(url, make, n, c, headers)))
                    after = sum(sum(p.cpu_times()[:2]) for p in descendants(proc))
                    cpu.setdefault(name, []).append((after - before) * 1000 / (n + 20))
            ref = [r[0] for r in res["bare FastAPI"]]
            for name in urls:
                rate = [r[0] for r in res[name]]
                print(
                    f"{c:>4} | {name:<14} | {spread(rate, 0):>24} | "
                    f"{spread([r[1] for r in res[name]], 1):>18} | {spread(cpu[name], 3):>18} | "
                    f"{ratio(rate, ref):.2f}x"
                )
            if c == 32:
                r32 = ratio([r[0] for r in res["local engine"]], ref)
                targets.add(
                    "local engine at concurrency 32 >= 0.25x bare FastAPI + uvicorn",
                    f"{r32:.2f}x",
                    r32 >= 0.25,
                )
    finally:
        for proc in servers.values():
            stop(proc)


# -- memory ---------------------------------------------------------------------------------


def bare_demo_app(port: int) -> None:
    """A bare Ray Serve app of the demo's shape, until SIGTERM: 2 ingress replicas, one
    deployment per demo model (bandit_serve.demo's three functions), a random one per
    request. What ``bandit-serve run configs/demo.yaml`` would be without bandit-serve."""
    import importlib
    import inspect

    import ray
    from ray import serve
    from ray.serve.handle import DeploymentHandle

    api = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=100)
    class DemoModel:
        def __init__(self, target: str) -> None:
            module, _, fn = target.partition(":")
            self.fn = getattr(importlib.import_module(module), fn)

        async def __call__(self, inputs: Any) -> Any:
            out = self.fn(inputs)
            return await out if inspect.isawaitable(out) else out

    @serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=100)
    @serve.ingress(api)
    class DemoIngress:
        def __init__(self, models: list[DeploymentHandle[Any]]) -> None:
            self.models = models

        @api.post("/predict")
        async def predict(self, body: BareBody) -> dict[str, Any]:
            return {"prediction": await random.choice(self.models).remote(body.inputs)}

        @api.get("/healthz")
        async def healthz(self) -> dict[str, str]:
            return {"status": "ok"}

    stopping: list[int] = []
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda s, _: stopping.append(s))
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        models = [
            DemoModel.options(name=f"model-{v}").bind(f"bandit_serve.demo:predict_{v}")  # type: ignore[attr-defined]
            for v in ("v1", "v2", "v3")
        ]
        ingress = DemoIngress.options(num_replicas=2)  # type: ignore[attr-defined]
        serve.run(ingress.bind(models), name="demo", route_prefix="/")
        while not stopping:
            time.sleep(0.2)
    finally:
        serve.shutdown()
        ray.shutdown()


def memory_section(args: argparse.Namespace, redis_url: str, targets: Targets) -> None:
    from bandit_serve.demo import traffic

    images = traffic()[0][:200].tolist()
    home = tempfile.mkdtemp()  # the demo's models are trained and cached here
    env = {"BANDIT_SERVE_HOME": home}
    port = args.port + 3
    base = f"http://127.0.0.1:{port}"
    setups = {
        "bandit-serve on Ray (bandit-serve run configs/demo.yaml)": (
            [
                sys.executable,
                "-m",
                "bandit_serve.cli",
                "run",
                "configs/demo.yaml",
                "--port",
                str(port),
                "--redis-url",
                redis_url,
            ],
            f"{base}/v1/experiments/digits/predict",
        ),
        "bare Ray Serve app of the same shape": (
            [sys.executable, str(Path(__file__).resolve()), "--serve-bare-demo", str(port)],
            f"{base}/predict",
        ),
        "bandit-serve, local engine (--engine local)": (
            [
                sys.executable,
                "-m",
                "bandit_serve.cli",
                "run",
                "configs/demo.yaml",
                "--engine",
                "local",
                "--port",
                str(port),
                "--redis-url",
                redis_url,
            ],
            f"{base}/v1/experiments/digits/predict",
        ),
    }
    print(f"\n== memory: PSS of every process after {len(images)} requests ==")
    totals: dict[str, float] = {}
    for label, (command, url) in setups.items():
        proc = start(command, env)
        try:
            wait_up(f"{base}/healthz", proc)
            statuses: dict[int, int] = {}
            with httpx.Client(timeout=60) as client:
                for x in images:
                    code = client.post(url, json={"inputs": x}).status_code
                    statuses[code] = statuses.get(code, 0) + 1
            time.sleep(2)
            totals[label] = pss_table(f"{label} (answers: {statuses})", descendants(proc))
        finally:
            stop(proc)
    redis_pss = psutil.Process(REDIS_PID[0]).memory_full_info().pss / MiB
    ray_label, bare_label, local_label = list(setups)
    added = totals[ray_label] - totals[bare_label]
    print(
        f"  Redis (bandit-serve's state; the bare app has none): {redis_pss:.0f} MiB\n"
        f"  bandit-serve on Ray adds {added:+,.0f} MiB to the bare app "
        f"({added + redis_pss:+,.0f} MiB with Redis); the local engine uses "
        f"{totals[local_label]:,.0f} MiB ({totals[local_label] - totals[bare_label]:+,.0f} "
        "MiB against the bare Ray app)"
    )
    targets.add(
        "memory: bandit-serve adds <= 300 MiB to the bare Ray app",
        f"{added:+,.0f} MiB ({added + redis_pss:+,.0f} MiB with Redis)",
        added <= 300,
    )


# -- main -----------------------------------------------------------------------------------

REDIS_PID = [0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400, help="per round and concurrency level")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds, median kept")
    ap.add_argument("--cpu-rounds", type=int, default=3)
    ap.add_argument("--overload-requests", type=int, default=2000)
    ap.add_argument("--overload-concurrency", type=int, default=256)
    ap.add_argument("--overload-rounds", type=int, default=3)
    ap.add_argument("--local-workers", type=int, default=1)
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument(
        "--sections", default="ray,local,memory", help="which parts to run (comma-separated)"
    )
    ap.add_argument("--serve-bare-demo", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_bare_demo:
        bare_demo_app(args.serve_bare_demo)
        return
    from bandit_serve.service.redis_local import ensure_redis
    from tests.conftest import free_port

    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    local = ensure_redis(redis_url, Path(tempfile.mkdtemp()) / "redis")
    assert local is not None
    REDIS_PID[0] = local.proc.pid
    stamp = int(time.time())
    exps = {k: f"bench-{k}-{stamp}" for k in ("bandit", "co", "local")}
    key = secrets.token_urlsafe(24)
    targets = Targets()
    cpu = psutil.cpu_count()
    print(
        f"bandit-serve serving benchmark, {time.strftime('%Y-%m-%d %H:%M %Z')}, {cpu} cores, "
        f"load average {os.getloadavg()[0]:.1f} at the start"
    )
    sections = set(args.sections.split(","))
    try:
        if "ray" in sections:
            ray_section(args, redis_url, key, exps, targets)
        if "local" in sections:
            local_section(args, redis_url, key, exps, targets)
        if "memory" in sections:
            memory_section(args, redis_url, targets)
    finally:
        local.stop()
    targets.print()
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
