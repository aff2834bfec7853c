"""Serving throughput and latency: bandit-serve's predict path against a bare Ray Serve app
of the same shape, measured in one run on this machine.

Run: ``python benchmarks/serve.py [--requests 400]`` (needs Redis on 127.0.0.1:6379).

Both apps: an ingress with 2 replicas (FastAPI) and one handle hop to a trivial model
(returns its inputs), ``max_ongoing_requests`` 100 everywhere. The bare app does only
that; bandit-serve also decides with its policy, logs the decision in Redis (coalesced
with concurrent ones) and returns event id and propensity. Then reward ingestion through
the HTTP API: one reward per request, and batches of 1,000. Prints figures and the ratios;
asserts nothing.
"""

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import ray
import redis
import yaml
from fastapi import FastAPI
from pydantic import BaseModel
from ray import serve
from ray.serve.handle import DeploymentHandle

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bandit_serve.service.serve_app import AppArgs, build_app

bare_api = FastAPI()


class BareBody(BaseModel):
    inputs: Any


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


async def load(url: str, body: Any, n: int, concurrency: int) -> tuple[float, float, float]:
    """Requests per second, p50 and p99 latency (ms) for n requests at a concurrency."""
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        queue = list(range(n))

        async def worker() -> None:
            while queue:
                queue.pop()
                t = time.perf_counter()
                r = await client.post(url, json=body)
                latencies.append(time.perf_counter() - t)
                r.raise_for_status()

        for _ in range(min(20, n)):  # warm up
            await client.post(url, json=body)
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100)
    return n / elapsed, q[49] * 1000, q[98] * 1000


async def rewards(base: str, exp: str, n: int, batch: int) -> float:
    """Post n rewards for fresh decisions, one per request (32 at a time) or in batches."""
    async with httpx.AsyncClient(timeout=60) as client:
        ids: list[str] = []

        async def decide(k: int) -> None:
            for _ in range(k):
                r = await client.post(f"{base}/v1/experiments/{exp}/predict", json={"inputs": 0})
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400, help="per concurrency level")
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = ap.parse_args()
    exp = f"bench-{int(time.time())}"
    cfg_path = Path(tempfile.mkdtemp()) / "bench.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "experiments": [
                    {
                        "name": exp,
                        "arms": [
                            {"name": "a", "model": "bandit_serve.service.models:identity"},
                            {"name": "b", "model": "bandit_serve.service.models:identity"},
                        ],
                        "policy": {"kind": "thompson"},
                        "reward": {"kind": "bernoulli", "wait_seconds": 3600},
                        "sync_interval_seconds": 1.0,
                    }
                ]
            }
        )
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        serve.run(
            BareIngress.options(num_replicas=2).bind(BareModel.bind()),  # type: ignore[attr-defined]
            name="bare",
            route_prefix="/bare",
        )
        serve.run(
            build_app(AppArgs(config=str(cfg_path), redis_url=args.redis_url, router_replicas=2)),
            name="bandit",
            route_prefix="/",
        )
        base = f"http://127.0.0.1:{args.port}"
        body = {"inputs": [0.0] * 64}
        print(
            f"{'concurrency':>11} | {'bare req/s':>10} {'p50 ms':>7} {'p99 ms':>7} | "
            f"{'bandit req/s':>12} {'p50 ms':>7} {'p99 ms':>7} | {'throughput':>10} {'p50':>6}"
        )
        for c in (1, 8, 32):
            bare = asyncio.run(load(f"{base}/bare/predict", body, args.requests, c))
            ours = asyncio.run(load(f"{base}/v1/experiments/{exp}/predict", body, args.requests, c))
            print(
                f"{c:>11} | {bare[0]:>10.1f} {bare[1]:>7.1f} {bare[2]:>7.1f} | "
                f"{ours[0]:>12.1f} {ours[1]:>7.1f} {ours[2]:>7.1f} | "
                f"{ours[0] / bare[0]:>9.2f}x {ours[1] / bare[1]:>5.2f}x"
            )
        single = asyncio.run(rewards(base, exp, 640, 1))
        batched = asyncio.run(rewards(base, exp, 4000, 1000))
        print(
            f"rewards through HTTP: one per request (32 concurrent) {single:,.0f}/s; "
            f"batches of 1,000 {batched:,.0f}/s"
        )
    finally:
        serve.shutdown()
        ray.shutdown()
        r = redis.Redis.from_url(args.redis_url)
        keys = list(r.scan_iter(match=f"bandit:{{{exp}}}*", count=1000))
        for i in range(0, len(keys), 1000):
            r.delete(*keys[i : i + 1000])


if __name__ == "__main__":
    main()
