"""``bandit-serve loadgen``: the demo's application and its downstream app.

Sends digit images from the half of scikit-learn's digits that the models never saw;
after a random delay posts reward 1 when the prediction was right and 0 when wrong, and
sometimes nothing (the server's sweeper then applies the default reward).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

__all__ = ["LoadgenResult", "run_loadgen"]


@dataclass
class LoadgenResult:
    sent: int = 0
    failed: int = 0
    rewards_posted: int = 0
    reward_status: Counter[str] = field(default_factory=Counter)
    arms: Counter[str] = field(default_factory=Counter)
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=500))
    correct: Counter[str] = field(default_factory=Counter)


def _table(res: LoadgenResult, total: int, started: float) -> Table:
    t = Table(title=f"{res.sent:,}/{total:,} requests, {time.perf_counter() - started:.0f}s")
    t.add_column("arm")
    t.add_column("share, last 500", justify="right")
    t.add_column("requests", justify="right")
    t.add_column("accuracy", justify="right")
    recent = Counter(res.recent)
    for arm in sorted(res.arms):
        share = recent[arm] / max(1, len(res.recent))
        acc = res.correct[arm] / res.arms[arm]
        t.add_row(arm, f"{share:.1%}", f"{res.arms[arm]:,}", f"{acc:.1%}")
    t.caption = (
        f"rewards posted {res.rewards_posted:,} {dict(res.reward_status)}; failed {res.failed}"
    )
    return t


async def run_loadgen(
    url: str,
    experiment: str,
    *,
    requests: int = 3000,
    rate: float = 100.0,
    concurrency: int = 16,
    max_delay: float = 2.0,
    miss_rate: float = 0.1,
    seed: int = 0,
    live: bool = True,
) -> LoadgenResult:
    from bandit_serve.demo import traffic

    x, y = traffic()
    rng = np.random.default_rng(seed)
    res = LoadgenResult()
    sem = asyncio.Semaphore(concurrency)
    pending: set[asyncio.Task[Any]] = set()
    base = url.rstrip("/") + f"/v1/experiments/{experiment}"

    async with httpx.AsyncClient(timeout=30.0) as client:

        async def reward_later(event_id: str, reward: float, delay: float) -> None:
            await asyncio.sleep(delay)
            r = await client.post(f"{base}/rewards", json={"event_id": event_id, "reward": reward})
            res.rewards_posted += 1
            res.reward_status[r.json().get("status", str(r.status_code))] += 1

        async def one(i: int) -> None:
            async with sem:
                k = int(rng.integers(len(y)))
                try:
                    r = await client.post(f"{base}/predict", json={"inputs": x[k].tolist()})
                except httpx.HTTPError:
                    res.failed += 1
                    return
                if r.status_code != 200:
                    res.failed += 1
                    return
                body = r.json()
                res.sent += 1
                res.arms[body["arm"]] += 1
                res.recent.append(body["arm"])
                right = body["prediction"] == int(y[k])
                res.correct[body["arm"]] += int(right)
                if rng.random() >= miss_rate:
                    t = asyncio.create_task(
                        reward_later(
                            body["event_id"], 1.0 if right else 0.0, rng.uniform(0, max_delay)
                        )
                    )
                    pending.add(t)
                    t.add_done_callback(pending.discard)

        started = time.perf_counter()
        console = Console()
        with (
            Live(
                _table(res, requests, started),
                console=console,
                refresh_per_second=4,
                transient=False,
            )
            if live
            else _Nothing() as view
        ):
            tasks = []
            for i in range(requests):
                tasks.append(asyncio.create_task(one(i)))
                if view is not None:
                    view.update(_table(res, requests, started))
                await asyncio.sleep(1.0 / rate)
            await asyncio.gather(*tasks)
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            if view is not None:
                view.update(_table(res, requests, started))
    return res


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
