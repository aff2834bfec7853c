"""Predict throughput with arms that are model endpoints over HTTP, against the same
experiment with callable arms, measured in one run on this machine.

Run: ``python benchmarks/arms.py [--requests 400] [--rounds 3]`` (needs Redis on
127.0.0.1:6379). Not a test: prints figures and ratios, asserts nothing.

One Ray Serve app (2 router replicas) serves two experiments of the same shape, two arms
each, one ModelVersion replica per arm: ``callable`` (arms return their inputs in the
replica) and ``http`` (arms of kind http, protocol json, POST the inputs to a local
upstream that answers at once with them, through the arm's pooled client). The upstream
is a bare ASGI app (``benchmarks/upstream.py``) under uvicorn (httptools, uvloop) in a
process of its own, on the same two cores. Interleaved rounds per concurrency, the best
round of each kept (this machine's speed drifts between consecutive runs); then the CPU
per request by process role at concurrency 8, which says where an HTTP arm's extra cost
goes.
"""

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import ray
import redis
import yaml
from ray import serve

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bandit_serve.service.serve_app import AppArgs, build_app
from benchmarks.serve import load

ROOT = Path(__file__).resolve().parents[1]

ROLES = (  # process command line -> role, first match wins
    ("ServeReplica:arms:BanditRouter", "router replicas"),
    ("ServeReplica:arms:model-", "model replicas"),
    ("ProxyActor", "Serve proxy"),
    ("benchmarks.upstream:app", "upstream"),
    ("redis-server", "Redis"),
    ("ray", "Ray (raylet, GCS, controller)"),
)


def start_upstream(port: int) -> subprocess.Popen[bytes]:
    """``benchmarks/upstream.py`` under uvicorn in a process of its own."""
    command = [sys.executable, "-m", "uvicorn", "benchmarks.upstream:app", "--port", str(port)]
    options = ["--http", "httptools", "--loop", "uvloop", "--log-level", "error"]
    proc = subprocess.Popen([*command, *options, "--no-access-log"], cwd=ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the upstream on port {port} never answered")


def cpu_seconds_by_role() -> dict[str, float]:
    """CPU seconds used so far by this process, its descendants (Ray, started here, and
    the upstream) and Redis, summed by role; other Ray instances on the machine are not
    counted."""
    out: dict[str, float] = {}
    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]
    procs += [p for p in psutil.process_iter(["name"]) if p.info["name"] == "redis-server"]
    for proc in procs:
        try:
            cmd = " ".join(proc.cmdline())
            t = proc.cpu_times()
        except psutil.Error:
            continue
        role = (
            "load generator"
            if proc.pid == me.pid
            else next((r for k, r in ROLES if k in cmd), None)
        )
        if role is not None:
            out[role] = out.get(role, 0.0) + t.user + t.system
    return out


def cpu_per_request(url: str, body: Any, n: int, concurrency: int) -> dict[str, float]:
    before = cpu_seconds_by_role()
    asyncio.run(load(url, body, n, concurrency))
    after = cpu_seconds_by_role()
    return {r: (after[r] - before.get(r, 0.0)) * 1000 / (n + 20) for r in after}


def experiment(name: str, model: Any) -> dict[str, Any]:
    return {
        "name": name,
        "arms": [{"name": "a", "model": model}, {"name": "b", "model": model}],
        "policy": {"kind": "thompson"},
        "reward": {"kind": "bernoulli", "wait_seconds": 3600},
        "sync_interval_seconds": 1.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400, help="per concurrency level")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds, best kept")
    ap.add_argument("--port", type=int, default=8124)
    ap.add_argument("--upstream-port", type=int, default=8125)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = ap.parse_args()
    stamp = int(time.time())
    exps = {"callable": f"bench-callable-{stamp}", "http": f"bench-http-{stamp}"}
    endpoint = {"kind": "http", "url": f"http://127.0.0.1:{args.upstream_port}/predict"}
    cfg_path = Path(tempfile.mkdtemp()) / "arms.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "experiments": [
                    experiment(exps["callable"], "bandit_serve.models:identity"),
                    experiment(exps["http"], endpoint),
                ]
            }
        )
    )
    upstream = start_upstream(args.upstream_port)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        app_args = AppArgs(config=str(cfg_path), redis_url=args.redis_url, router_replicas=2)
        serve.run(build_app(app_args), name="arms", route_prefix="/")
        base = f"http://127.0.0.1:{args.port}/v1/experiments"
        urls = {kind: f"{base}/{name}/predict" for kind, name in exps.items()}
        body = {"inputs": [0.0] * 64}
        for url in urls.values():  # both answer the inputs back
            answer = httpx.post(url, json=body, timeout=30).json()
            assert answer["prediction"] == body["inputs"], answer
        print(
            f"{'concurrency':>11} | {'callable req/s':>14} {'p50 ms':>7} {'p99 ms':>7} | "
            f"{'http req/s':>10} {'p50 ms':>7} {'p99 ms':>7} | {'throughput':>10} {'p50':>6}"
        )
        for c in (1, 8, 32):
            runs: dict[str, list[tuple[float, float, float]]] = {"callable": [], "http": []}
            for _ in range(args.rounds):
                for kind in ("callable", "http"):
                    runs[kind].append(asyncio.run(load(urls[kind], body, args.requests, c)))
            ref, ours = max(runs["callable"]), max(runs["http"])  # by throughput
            print(
                f"{c:>11} | {ref[0]:>14.1f} {ref[1]:>7.1f} {ref[2]:>7.1f} | "
                f"{ours[0]:>10.1f} {ours[1]:>7.1f} {ours[2]:>7.1f} | "
                f"{ours[0] / ref[0]:>9.2f}x {ours[1] / ref[1]:>5.2f}x"
            )
        cpu = {k: cpu_per_request(urls[k], body, args.requests * 2, 8) for k in urls}
        print("CPU per request at concurrency 8, by process role (ms; all on 2 cores):")
        print(f"{'role':>30} | {'callable':>8} | {'http':>6} | {'extra':>6}")
        roles = sorted(
            set(cpu["callable"]) | set(cpu["http"]), key=lambda r: -cpu["http"].get(r, 0)
        )
        for role in roles:
            row = (cpu["callable"].get(role, 0.0), cpu["http"].get(role, 0.0))
            print(f"{role:>30} | {row[0]:>8.2f} | {row[1]:>6.2f} | {row[1] - row[0]:>+6.2f}")
        row = (sum(cpu["callable"].values()), sum(cpu["http"].values()))
        print(f"{'total':>30} | {row[0]:>8.2f} | {row[1]:>6.2f} | {row[1] - row[0]:>+6.2f}")
    finally:
        serve.shutdown()
        ray.shutdown()
        upstream.terminate()
        upstream.wait(timeout=10)
        r = redis.Redis.from_url(args.redis_url)
        for name in exps.values():
            keys = list(r.scan_iter(match=f"bandit:{{{name}}}*", count=1000))
            for i in range(0, len(keys), 1000):
                r.delete(*keys[i : i + 1000])


if __name__ == "__main__":
    main()
