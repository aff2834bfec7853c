"""The shipped Prometheus config and Grafana dashboard, on a real Prometheus.

Debian's ``prometheus`` runs on a free loopback port with ``deployments/prometheus.yml``
(scrape interval shortened to 1 s; the targets written where that config reads targets
from: a file in ``prometheus-targets/`` beside it), scraping two replicas of the
in-process service on one Redis (BanditService, local models, uvicorn in a thread each).
After traffic through both, a failing arm and a guardrail alert, every query of
``deployments/grafana-dashboard.json`` must return data through Prometheus's HTTP API,
the decision counter (max over the copies, summed over arms) must equal the service's
own count, each target must report every arm's whole total, and no counter may reset.
A missing ``prometheus`` binary fails the test (CI installs it: ``./dev test``).
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bandit_serve.config import AppConfig
from bandit_serve.service.core import BanditService
from bandit_serve.service.http import create_api
from bandit_serve.service.local import LocalModels
from bandit_serve.store import RedisStore
from tests.conftest import delete_experiment_keys, free_port, serve_in_thread
from tests.test_dashboard_browser import with_service_loops

ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENTS = ROOT / "deployments"
SCRAPE_INTERVAL = "1s"
VARIABLES = {"$__rate_interval": "1m"}  # Grafana's own variables, as the test fills them


def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.1)


@dataclass
class Prometheus:
    url: str
    log: Path

    def get(self, path: str, **params: Any) -> Any:
        r = httpx.get(f"{self.url}{path}", params=params, timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        result: list[dict[str, Any]] = data["result"]
        return result

    def last_scrape(self) -> float:
        """When the bandit-serve target was last scraped successfully (0 before): the
        raw samples of ``up`` (a range selector returns them with their own times)."""
        data = self.get("/api/v1/query", query='up{job="bandit-serve"}[30s]')
        samples = [s for series in data["result"] for s in series["values"]]
        return max((float(t) for t, v in samples if v == "1"), default=0.0)

    def scraped_after(self, t: float) -> None:
        wait_for(f"a scrape after {t:.1f} (log: {self.log})", lambda: self.last_scrape() > t, 15)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[Prometheus, Path]]:
    """Prometheus on the shipped config; yields it and the targets file to write."""
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.fail(
            "prometheus is not installed: `./dev test` installs Debian's prometheus package "
            "(apt-get install prometheus)."
        )
    cfg = yaml.safe_load((DEPLOYMENTS / "prometheus.yml").read_text())
    cfg["global"]["scrape_interval"] = cfg["global"]["evaluation_interval"] = SCRAPE_INTERVAL
    (job,) = cfg["scrape_configs"]
    job["scrape_interval"] = job["scrape_timeout"] = SCRAPE_INTERVAL
    (sd,) = job["file_sd_configs"]
    patterns = [Path(f) for f in sd["files"]]
    assert not any(p.is_absolute() for p in patterns)  # beside the config, wherever it is
    targets = tmp_path / patterns[0].parent / "bandit-serve.yml"
    assert any(targets.relative_to(tmp_path).match(str(p)) for p in patterns)
    targets.parent.mkdir(parents=True)
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(cfg))
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                exe,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    prom = Prometheus(f"http://127.0.0.1:{port}", log)
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited with {proc.returncode}: {log.read_text()}")
            try:
                return httpx.get(f"{prom.url}/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(f"prometheus to be ready (log: {log})", ready, 20)
        yield prom, targets
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def experiment_config(name: str) -> AppConfig:
    models = "tests.fixtures.models"
    return AppConfig.model_validate(
        {
            "experiments": [
                {
                    "name": name,
                    "arms": [
                        {"name": "a", "model": f"{models}:echo_a"},
                        {"name": "b", "model": f"{models}:echo_b"},
                        {"name": "c", "model": f"{models}:flaky"},
                    ],
                    "policy": {"kind": "fixed"},
                    "reward": {"kind": "bernoulli", "wait_seconds": 60},
                    "guardrails": {
                        "rules": [{"metric": "error_rate", "max_increase": 0.05}],
                        "min_calls": 20,
                        "check_interval_seconds": 0.2,
                        "on_violation": "alert",
                    },
                    "sync_interval_seconds": 0.1,
                }
            ]
        }
    )


@pytest.fixture
def replica_urls(redis_url: str) -> Iterator[tuple[list[str], str]]:
    """Two replicas of the in-process service on one Redis (as two router replicas), each
    with its background loops; yields their URLs and the experiment."""
    name = f"prom-{uuid.uuid4().hex[:8]}"
    cfg = experiment_config(name)

    def replica(seed: int) -> Any:
        store = RedisStore.from_url(redis_url)
        service = BanditService(cfg, store, LocalModels(cfg), seed=seed)
        return with_service_loops(service, store, create_api(lambda: service))

    apps = [replica(5), replica(6)]
    try:
        with serve_in_thread(apps[0]) as one, serve_in_thread(apps[1]) as two:
            yield [one, two], name
    finally:
        delete_experiment_keys(redis_url, name)


async def _traffic(url: str, name: str, n: int) -> None:
    """``n`` predictions (4 at a time), each successful one rewarded."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        sem = asyncio.Semaphore(4)

        async def one(i: int) -> None:
            async with sem:
                r = await client.post(f"/v1/experiments/{name}/predict", json={"inputs": i})
                assert r.status_code in (200, 502), r.text  # 502: the flaky arm failed
                if r.status_code == 200:
                    body = {"event_id": r.json()["event_id"], "reward": i % 2}
                    w = await client.post(f"/v1/experiments/{name}/rewards", json=body)
                    assert w.status_code == 200, w.text

        await asyncio.gather(*(one(i) for i in range(n)))


def dashboard_queries(experiment: str) -> list[str]:
    """Every PromQL expression of the Grafana dashboard, its variables filled in."""
    dash = json.loads((DEPLOYMENTS / "grafana-dashboard.json").read_text())

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))  # rows hold panels of their own

    fill = {**VARIABLES, **{f"${v['name']}": experiment for v in dash["templating"]["list"]}}
    longest_first = sorted(fill.items(), key=lambda kv: -len(kv[0]))
    exprs = []
    for p in panels(dash["panels"]):
        for t in p.get("targets", []):
            expr = t["expr"]
            for var, value in longest_first:
                expr = expr.replace(var, value)
            assert "$" not in expr, f"panel {p['title']!r}: unfilled variable in {expr}"
            exprs.append(expr)
    return exprs


def test_every_dashboard_query_returns_data_and_counts_add_up(
    prometheus: tuple[Prometheus, Path], replica_urls: tuple[list[str], str]
) -> None:
    """Both replicas scraped (the worst case: the shipped config says to list one target,
    the proxy): every store-backed series is the whole truth on each, so the dashboard's
    `max` over copies counts each decision once, and no counter ever goes back."""
    prom, targets = prometheus
    urls, name = replica_urls
    url = urls[0]
    targets.write_text(yaml.safe_dump([{"targets": [u.removeprefix("http://") for u in urls]}]))
    prom.scraped_after(time.time())  # file_sd picked the targets up and a scrape succeeded

    # traffic in three rounds, each seen by a scrape: rates and quantiles need two samples
    for _ in range(3):
        for u in urls:
            asyncio.run(_traffic(u, name, 45))
        prom.scraped_after(time.time())

    def violated() -> bool:
        view = httpx.get(f"{url}/v1/experiments/{name}").json()
        return bool(view["guardrails"]["violations"])

    wait_for("the guardrail alert on the flaky arm", violated, 10)
    done = time.time()
    prom.scraped_after(done)

    view = httpx.get(f"{url}/v1/experiments/{name}").json()
    pulls = {a["name"]: a["pulls"] for a in view["arms"]}
    assert sum(pulls.values()) == 270 and all(n > 0 for n in pulls.values())
    by_arm = f'max by (arm) (bandit_decisions_total{{experiment="{name}"}})'
    (total,) = prom.query(f"sum({by_arm})")
    assert float(total["value"][1]) == sum(pulls.values())
    per_target = prom.query(f'bandit_decisions_total{{experiment="{name}"}}')
    assert len(per_target) == 2 * len(pulls)  # each replica reports every arm's total
    for s in per_target:
        assert float(s["value"][1]) == pulls[s["metric"]["arm"]], s
    resets = prom.query(f'resets(bandit_decisions_total{{experiment="{name}"}}[5m])')
    assert resets and all(float(s["value"][1]) == 0 for s in resets)
    # the per-process decision latency of the predicts answered 200 (both replicas live
    # in this test's process, so each target shows all of them): one series per target
    latency_counts = prom.query(f'bandit_decision_latency_seconds_count{{experiment="{name}"}}')
    answered = sum(pulls.values()) - sum(a["errors"] for a in view["arms"])
    assert [float(s["value"][1]) for s in latency_counts] == [answered, answered]

    values = prom.get("/api/v1/label/experiment/values", **{"match[]": "bandit_decisions_total"})
    assert name in values  # the dashboard's $experiment variable (label_values)
    queries = dashboard_queries(name)
    assert len(queries) >= 10
    empty, not_finite = [], []
    for expr in queries:
        result = prom.query(expr)
        if not result:
            empty.append(expr)
        elif not any(math.isfinite(float(s["value"][1])) for s in result):
            not_finite.append(expr)
    assert empty == [], f"queries without data: {empty}"
    assert not_finite == [], f"queries with no finite value: {not_finite}"
    # the model latency quantiles come from the Redis-backed histogram of every replica
    p99 = prom.query(
        "histogram_quantile(0.99, max by (arm, le) "
        f'(rate(bandit_model_latency_seconds_bucket{{experiment="{name}"}}[1m])))'
    )
    assert {s["metric"]["arm"] for s in p99} == set(pulls)
