"""End to end on a real Ray Serve (ray.init(num_cpus=2)) and a real Redis, 2 routers."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import ray
import yaml
from ray import serve

from tests.conftest import delete_experiment_keys, free_port

ROOT = Path(__file__).resolve().parents[1]
APP = "bandit-serve-e2e"


def write_config(path: Path, exp: str, arms: dict[str, str]) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "experiments": [
                    {
                        "name": exp,
                        "arms": [
                            {"name": a, "model": f"tests.fixtures.models:{fn}"}
                            for a, fn in arms.items()
                        ],
                        "policy": {"kind": "thompson", "min_share": 0.02},
                        "reward": {"kind": "bernoulli", "wait_seconds": 600},
                        "sync_interval_seconds": 0.1,
                    }
                ]
            }
        )
    )
    return path


class Deployed:
    def __init__(self, base: str, exp: str, config: Path, redis_url: str) -> None:
        self.base = base
        self.exp = exp
        self.config = config
        self.redis_url = redis_url

    def deploy(self) -> None:
        from bandit_serve.service.serve_app import AppArgs, build_app

        args = AppArgs(config=str(self.config), redis_url=self.redis_url, router_replicas=2)
        serve.run(build_app(args), name=APP, route_prefix="/")

    def state(self) -> dict[str, Any]:
        r = httpx.get(f"{self.base}/v1/experiments/{self.exp}", timeout=30)
        assert r.status_code == 200, r.text
        return {a["name"]: a for a in r.json()["arms"]}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Deployed]:
    exp = f"e2e-{os.getpid()}-{int(time.time())}"
    port = free_port()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        d = Deployed(
            f"http://127.0.0.1:{port}",
            exp,
            write_config(
                tmp_path_factory.mktemp("cfg") / "e2e.yaml", exp, {"a": "echo_a", "b": "echo_b"}
            ),
            redis_url,
        )
        d.deploy()
        yield d
    finally:
        serve.shutdown()
        ray.shutdown()
        delete_experiment_keys(redis_url, exp)


def test_predictions_come_from_the_chosen_arms_model(deployed: Deployed) -> None:
    for i in range(20):
        r = httpx.post(
            f"{deployed.base}/v1/experiments/{deployed.exp}/predict",
            json={"inputs": [i]},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["prediction"] == {"arm": body["arm"], "inputs": [i]}


async def test_rewards_through_both_replicas_count_once_and_traffic_moves(
    deployed: Deployed,
) -> None:
    before = deployed.state()
    rng = np.random.default_rng(5)
    posted = Counter[str]()
    posted_sum: dict[str, float] = {"a": 0.0, "b": 0.0}
    replicas: set[str] = set()
    arms_over_time: list[str] = []
    statuses = Counter[str]()
    async with httpx.AsyncClient(base_url=deployed.base, timeout=30) as client:

        async def one() -> None:
            r = await client.post(f"/v1/experiments/{deployed.exp}/predict", json={"inputs": 0})
            assert r.status_code == 200, r.text
            p = r.json()
            arms_over_time.append(p["arm"])
            replicas.add(r.headers["x-bandit-replica"])
            reward = float(rng.random() < (0.9 if p["arm"] == "b" else 0.1))  # b is better
            body = {"event_id": p["event_id"], "reward": reward}
            answers = await asyncio.gather(
                *(
                    client.post(f"/v1/experiments/{deployed.exp}/rewards", json=body)
                    for _ in range(3)
                )
            )
            for a in answers:
                statuses[a.json()["status"]] += 1
                replicas.add(a.headers["x-bandit-replica"])
            posted[p["arm"]] += 1
            posted_sum[p["arm"]] += reward

        for _ in range(30):  # 30 rounds of 10 concurrent requests
            await asyncio.gather(*(one() for _ in range(10)))
    assert len(replicas) == 2  # both router replicas answered
    assert statuses == {"applied": 300, "duplicate": 600}
    after = deployed.state()
    for arm in ("a", "b"):
        assert after[arm]["pulls"] - before[arm]["pulls"] == posted[arm]
        assert after[arm]["rewards"] - before[arm]["rewards"] == posted[arm]
        assert after[arm]["reward_sum"] - before[arm]["reward_sum"] == posted_sum[arm]
        assert after[arm]["pending"] == before[arm]["pending"]
    last = Counter(arms_over_time[-100:])
    assert last["b"] > 80, last  # traffic moved to the better arm


def test_metrics_agree_with_state_whichever_replica_answers(deployed: Deployed) -> None:
    state = deployed.state()
    seen: set[str] = set()

    async def scrape_round(client: httpx.AsyncClient) -> list[httpx.Response]:
        # Concurrent scrapes: Serve's router spreads queued requests over replicas, while
        # sequential ones may all land on the same idle replica.
        return await asyncio.gather(*(client.get("/metrics") for _ in range(8)))

    async def scrape_until_both_replicas_answered() -> int:
        checked = 0
        async with httpx.AsyncClient(base_url=deployed.base, timeout=30) as client:
            for _ in range(10):
                for r in await scrape_round(client):
                    assert r.status_code == 200, r.text
                    seen.add(r.headers["x-bandit-replica"])
                    for arm, a in state.items():
                        lab = f'arm="{arm}",experiment="{deployed.exp}"'
                        assert f"bandit_decisions_total{{{lab}}} {float(a['pulls'])}" in r.text
                        assert f"bandit_reward_sum{{{lab}}} {float(a['reward_sum'])}" in r.text
                    checked += 1
                if len(seen) == 2:
                    break
        return checked

    checked = asyncio.run(scrape_until_both_replicas_answered())
    assert len(seen) == 2, f"only replica {seen} answered {checked} scrapes"


def test_live_arm_addition_keeps_old_statistics(deployed: Deployed) -> None:
    before = deployed.state()
    write_config(deployed.config, deployed.exp, {"a": "echo_a", "b": "echo_b", "c": "echo_b"})
    deployed.deploy()  # what `bandit-serve run` does when the file changes, and `serve deploy`
    after = deployed.state()
    assert set(after) == {"a", "b", "c"}
    for arm in ("a", "b"):
        for k in ("pulls", "rewards", "reward_sum"):
            assert after[arm][k] == before[arm][k]
    assert (after["c"]["pulls"], after["c"]["rewards"]) == (0, 0)
    arms = Counter(
        httpx.post(
            f"{deployed.base}/v1/experiments/{deployed.exp}/predict", json={"inputs": 1}, timeout=30
        ).json()["arm"]
        for _ in range(150)
    )
    # The new arm starts from the prior: against a ~0.9 arm its Thompson share is ~10%
    # (never below the 2% floor), so 150 tries miss it with probability < 1e-6 (0.9^150).
    assert arms["c"] > 0


def test_overload_answers_503_with_retry_after_and_records_nothing(
    deployed: Deployed, tmp_path: Path
) -> None:
    """A router sized to 2 running + 2 queued requests, hit by 12 at once with a 0.5 s model:
    the excess is refused at once with 503 + Retry-After (a bounded queue), and a refused
    request leaves no decision behind."""
    from bandit_serve.service.serve_app import AppArgs, build_app

    exp = f"{deployed.exp}-overload"
    cfg = write_config(tmp_path / "overload.yaml", exp, {"a": "sleepy", "b": "sleepy"})
    args = AppArgs(
        config=str(cfg),
        redis_url=deployed.redis_url,
        router_replicas=1,
        max_ongoing_requests=2,
        max_queued_requests=2,
        retry_after_s=2,
    )
    serve.run(build_app(args), name="overload", route_prefix="/overload")
    base = f"{deployed.base}/overload/v1/experiments/{exp}"

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(
                *(client.post(f"{base}/predict", json={"inputs": i}) for i in range(12))
            )

    try:
        answers = asyncio.run(burst())
        codes = Counter(r.status_code for r in answers)
        assert set(codes) <= {200, 503}, [r.text for r in answers]
        assert codes[503] >= 1 and codes[200] >= 2, codes
        for r in answers:
            if r.status_code == 503:
                assert r.headers["retry-after"] == "2"
            else:
                assert r.json()["prediction"] == {"slept": 0.5}
        arms = httpx.get(base, timeout=30).json()["arms"]
        assert sum(a["pulls"] for a in arms) == codes[200]  # refused requests decided nothing
        assert sum(a["pending"] for a in arms) == codes[200]
    finally:
        serve.delete("overload")
        delete_experiment_keys(deployed.redis_url, exp)
