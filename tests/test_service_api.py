"""The HTTP API on the plain asyncio service (no Ray): every answer, and state after it.

Real Redis; models are in-process callables from tests/fixtures/models.py.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from bandit_serve.config import AppConfig
from bandit_serve.service.core import BanditService
from bandit_serve.service.http import create_api
from bandit_serve.service.local import LocalModels
from bandit_serve.store import RedisStore
from tests.conftest import ManualClock, RedisServer, delete_experiment_keys


def app_config(name: str, arms: dict[str, str], **exp: Any) -> AppConfig:
    return AppConfig.model_validate(
        {
            "experiments": [
                {
                    "name": name,
                    "arms": [
                        {"name": a, "model": f"tests.fixtures.models:{fn}"}
                        for a, fn in arms.items()
                    ],
                    "policy": {"kind": "thompson"},
                    "reward": {"kind": "bernoulli", "wait_seconds": 60},
                    "sync_interval_seconds": 0.01,
                    **exp,
                }
            ]
        }
    )


class Harness:
    def __init__(self, cfg: AppConfig, store: RedisStore) -> None:
        self.cfg = cfg
        self.store = store
        self.models = LocalModels(cfg)
        self.service = BanditService(cfg, store, self.models, seed=1, model_timeout=0.5)
        self.api = create_api(lambda: self.service)
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.api), base_url="http://t"
        )

    async def close(self) -> None:
        await self.client.aclose()
        await self.store.close()

    async def state(self, name: str) -> dict[str, Any]:
        r = await self.client.get(f"/v1/experiments/{name}")
        assert r.status_code == 200
        return {a["name"]: a for a in r.json()["arms"]}

    async def counted(self, name: str) -> dict[str, tuple[Any, ...]]:
        """What a reward or decision changes (refusal counters left out)."""
        keys = ("pulls", "rewards", "reward_sum", "pending", "errors", "defaulted", "dropped")
        return {arm: tuple(a[k] for k in keys) for arm, a in (await self.state(name)).items()}

    async def predict(self, name: str, inputs: Any = 1) -> httpx.Response:
        return await self.client.post(f"/v1/experiments/{name}/predict", json={"inputs": inputs})


@pytest.fixture
async def harness(redis_url: str, exp_name: str, clock: ManualClock) -> AsyncIterator[Harness]:
    store = RedisStore.from_url(redis_url, clock=clock)
    h = Harness(app_config(exp_name, {"a": "echo_a", "b": "echo_b"}), store)
    yield h
    await h.close()
    delete_experiment_keys(redis_url, exp_name)


async def test_predict_returns_the_chosen_arms_prediction_and_logs_it(
    harness: Harness, exp_name: str
) -> None:
    seen = {"a": 0, "b": 0}
    for i in range(40):
        r = await harness.predict(exp_name, [i, i])
        assert r.status_code == 200
        body = r.json()
        assert body["prediction"] == {"arm": body["arm"], "inputs": [i, i]}
        event, _, _, _ = body["event_id"].split(".")  # <id>.<issued>.<kid>.<mac>: signed
        assert len(event) == 32 and int(event, 16) >= 0
        assert 0 < body["propensity"] <= 1
        seen[body["arm"]] += 1
    state = await harness.state(exp_name)
    assert state["a"]["pulls"] == seen["a"] and state["b"]["pulls"] == seen["b"]
    assert state["a"]["pending"] + state["b"]["pending"] == 40
    assert min(seen.values()) > 5  # a uniform prior splits the first requests


async def test_reward_answers_and_exactly_once(
    harness: Harness, exp_name: str, clock: ManualClock
) -> None:
    r1 = (await harness.predict(exp_name)).json()
    r2 = (await harness.predict(exp_name)).json()
    url = f"/v1/experiments/{exp_name}/rewards"
    ok = await harness.client.post(url, json={"event_id": r1["event_id"], "reward": 1})
    assert (ok.status_code, ok.json()["status"]) == (200, "applied")
    before = await harness.counted(exp_name)

    async def answer(body: Any, raw: str | None = None) -> tuple[int, Any]:
        if raw is not None:
            resp = await harness.client.post(
                url, content=raw, headers={"content-type": "application/json"}
            )
        else:
            resp = await harness.client.post(url, json=body)
        return resp.status_code, resp.json()

    code, body = await answer({"event_id": r1["event_id"], "reward": 1})
    assert (code, body["status"]) == (409, "duplicate")
    code, body = await answer({"event_id": "f" * 32, "reward": 1})
    assert (code, body["status"]) == (404, "unknown")
    code, body = await answer({"event_id": r2["event_id"], "reward": 1.5})
    assert (code, body["status"]) == (422, "invalid")
    code, body = await answer(None, raw=f'{{"event_id": "{r2["event_id"]}", "reward": NaN}}')
    assert (code, body["status"]) == (422, "invalid")
    code, body = await answer(None, raw=f'{{"event_id": "{r2["event_id"]}", "reward": Infinity}}')
    assert (code, body["status"]) == (422, "invalid")
    code, body = await answer({"event_id": r2["event_id"]})
    assert code == 422 and "needs both event_id and reward" in str(body["detail"])
    code, body = await answer({"event_id": r2["event_id"], "reward": "lots"})
    assert code == 422
    code, body = await answer({"event_id": r2["event_id"], "reward": 1, "rewards": []})
    assert code == 422 and "either" in str(body["detail"])
    assert await harness.counted(exp_name) == before  # none of that changed anything
    clock.advance(61)
    code, body = await answer({"event_id": r2["event_id"], "reward": 1})
    assert (code, body["status"]) == (410, "expired")
    assert await harness.counted(exp_name) == before
    state = await harness.state(exp_name)
    assert sum(a["duplicates"] for a in state.values()) == 1
    assert sum(a["late"] for a in state.values()) == 1


async def test_batch_rewards_answer_per_item(harness: Harness, exp_name: str) -> None:
    preds = [(await harness.predict(exp_name)).json() for _ in range(5)]
    items = [{"event_id": p["event_id"], "reward": 1} for p in preds]
    items += [
        items[0],
        {"event_id": "x", "reward": 0},
        {"event_id": preds[1]["event_id"], "reward": -1},
    ]
    r = await harness.client.post(f"/v1/experiments/{exp_name}/rewards", json={"rewards": items})
    assert r.status_code == 200
    statuses = [x["status"] for x in r.json()["results"]]
    assert statuses == ["applied"] * 5 + ["duplicate", "unknown", "invalid"]
    assert r.json()["counts"]["applied"] == 5
    state = await harness.counted(exp_name)
    assert sum(a[1] for a in state.values()) == 5
    too_many = {"rewards": [{"event_id": "x", "reward": 0}] * 1001}
    r = await harness.client.post(f"/v1/experiments/{exp_name}/rewards", json=too_many)
    assert r.status_code == 422
    assert await harness.counted(exp_name) == state


async def test_unknown_experiment_and_bad_bodies(harness: Harness, exp_name: str) -> None:
    before = await harness.counted(exp_name)
    r = await harness.client.post("/v1/experiments/nope/predict", json={"inputs": 1})
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    r = await harness.client.post(
        "/v1/experiments/nope/rewards", json={"event_id": "x", "reward": 1}
    )
    assert r.status_code == 404
    assert (await harness.client.get("/v1/experiments/nope")).status_code == 404
    for bad in ({}, {"inputs": None}, {"inputs": 1, "colour": "red"}, {"inputs": 1, "context": 3}):
        r = await harness.client.post(f"/v1/experiments/{exp_name}/predict", json=bad)
        assert r.status_code == 422, bad
        assert r.json()["detail"]
    r = await harness.client.post(
        f"/v1/experiments/{exp_name}/predict",
        content="{not json",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422
    assert await harness.counted(exp_name) == before


async def test_failing_model_is_502_named_counted_and_leaves_nothing_pending(
    redis_url: str, exp_name: str, clock: ManualClock
) -> None:
    store = RedisStore.from_url(redis_url, clock=clock)
    cfg = app_config(
        exp_name,
        {"good": "echo_a", "bad": "broken", "stuck": "slow"},
        policy={"kind": "fixed", "weights": [0, 1, 0]},
    )
    h = Harness(cfg, store)
    try:
        r = await h.predict(exp_name)
        assert r.status_code == 502
        body = r.json()
        assert body["arm"] == "bad" and "(RuntimeError)" in body["detail"] and body["error_id"]
        assert "exploded" not in r.text  # the model's own message goes to the log only
        h.service.reconfigure(
            app_config(
                exp_name,
                {"good": "echo_a", "bad": "broken", "stuck": "slow"},
                policy={"kind": "fixed", "weights": [0, 0, 1]},
            )
        )
        r = await h.predict(exp_name)
        assert (
            r.status_code == 502
            and r.json()["arm"] == "stuck"
            and "timed out" in r.json()["detail"]
        )
        state = await h.state(exp_name)
        assert (state["bad"]["pulls"], state["bad"]["errors"], state["bad"]["pending"]) == (1, 1, 0)
        assert (state["stuck"]["errors"], state["stuck"]["pending"]) == (1, 0)
        metrics = (await h.client.get("/metrics")).text
        assert f'bandit_model_errors_total{{arm="bad",experiment="{exp_name}"}} 1.0' in metrics
    finally:
        await h.close()
        delete_experiment_keys(redis_url, exp_name)


async def test_redis_down_is_503_with_retry_after_and_recovers(
    own_redis: RedisServer, exp_name: str
) -> None:
    store = RedisStore.from_url(own_redis.url, timeout=1.0)
    h = Harness(app_config(exp_name, {"a": "echo_a", "b": "echo_b"}), store)
    try:
        ok = (await h.predict(exp_name)).json()
        own_redis.stop()
        r = await h.predict(exp_name)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        r = await h.client.post(
            f"/v1/experiments/{exp_name}/rewards", json={"event_id": ok["event_id"], "reward": 1}
        )
        assert r.status_code == 503
        assert (await h.client.get("/healthz")).status_code == 503
        own_redis.start()
        assert (await h.client.get("/healthz")).status_code == 200
        assert (await h.predict(exp_name)).status_code == 200
    finally:
        await h.close()


async def test_metrics_agree_with_the_experiment_state(harness: Harness, exp_name: str) -> None:
    for _ in range(12):
        p = (await harness.predict(exp_name)).json()
        await harness.client.post(
            f"/v1/experiments/{exp_name}/rewards", json={"event_id": p["event_id"], "reward": 1}
        )
    text = (await harness.client.get("/metrics")).text
    state = await harness.state(exp_name)
    for arm, a in state.items():
        lab = f'arm="{arm}",experiment="{exp_name}"'
        assert f"bandit_decisions_total{{{lab}}} {float(a['pulls'])}" in text
        assert f"bandit_reward_sum{{{lab}}} {float(a['reward_sum'])}" in text
        assert f'bandit_rewards_total{{{lab},outcome="applied"}} {float(a["rewards"])}' in text
        prefix = f"bandit_traffic_share{{{lab}}}"
        share = next(ln for ln in text.splitlines() if ln.startswith(prefix))
        assert math.isclose(float(share.split()[-1]), a["traffic_share"])
    assert "bandit_decision_latency_seconds_bucket" in text
    assert "event_id" not in text


async def test_experiment_view_has_posterior_and_openapi_lists_routes(
    harness: Harness, exp_name: str
) -> None:
    state = await harness.state(exp_name)
    for a in state.values():
        post = a["posterior"]
        assert post["low"] <= post["mean"] <= post["high"]
        assert set(a) >= {
            "name",
            "pulls",
            "rewards",
            "reward_sum",
            "mean",
            "pending",
            "traffic_share",
        }
    listing = (await harness.client.get("/v1/experiments")).json()
    assert [e["name"] for e in listing["experiments"]] == [exp_name]
    spec = (await harness.client.get("/openapi.json")).json()
    assert "/v1/experiments/{name}/predict" in spec["paths"]


async def test_adding_an_arm_keeps_the_old_arms_statistics(harness: Harness, exp_name: str) -> None:
    for _ in range(10):
        p = (await harness.predict(exp_name)).json()
        await harness.client.post(
            f"/v1/experiments/{exp_name}/rewards", json={"event_id": p["event_id"], "reward": 0}
        )
    before = await harness.state(exp_name)
    new_cfg = app_config(exp_name, {"a": "echo_a", "b": "echo_b", "c": "echo_b"})
    harness.models.reconfigure(new_cfg)
    harness.service.reconfigure(new_cfg)
    after = await harness.state(exp_name)
    for arm in ("a", "b"):
        assert after[arm]["pulls"] == before[arm]["pulls"]
        assert after[arm]["reward_sum"] == before[arm]["reward_sum"]
    assert (after["c"]["pulls"], after["c"]["rewards"]) == (0, 0)
    arms = {(await harness.predict(exp_name)).json()["arm"] for _ in range(30)}
    assert "c" in arms  # the new arm, at its prior (mean 0.5 against ~0.1), gets tried


async def test_analysis_endpoint_reports_per_arm_and_404s_unknown_baseline(
    harness: Harness, exp_name: str
) -> None:
    url = f"/v1/experiments/{exp_name}/analysis"
    empty = (await harness.client.get(url)).json()
    assert empty["baseline"] == "a"
    assert all(a["p_value"] is None for a in empty["arms"])  # too few samples, said, no NaN
    assert "at least 2 rewards" in empty["arms"][1]["note"]
    for _ in range(40):
        p = (await harness.predict(exp_name)).json()
        await harness.client.post(
            f"/v1/experiments/{exp_name}/rewards",
            json={"event_id": p["event_id"], "reward": 1 if p["arm"] == "b" else 0},
        )
    rep = (await harness.client.get(url, params={"baseline": "b"})).json()
    assert rep["baseline"] == "b" and rep["adaptive"] is True
    keys = {
        "name",
        "samples",
        "mean",
        "effect",
        "ci_low",
        "ci_high",
        "p_value",
        "p_value_sequential",
        "p_best",
        "expected_loss",
    }
    for arm in rep["arms"]:
        assert keys <= set(arm)
    assert 0 <= rep["srm_p_value"] <= 1
    a = next(x for x in rep["arms"] if x["name"] == "a")
    state = await harness.state(exp_name)
    assert a["samples"] == state["a"]["rewards"]
    assert a["p_best"] < 0.5
    r = await harness.client.get(url, params={"baseline": "zz"})
    assert r.status_code == 404 and "no arm named 'zz'" in r.json()["detail"]
    assert (await harness.client.get(url, params={"alpha": 2})).status_code == 422
    assert (await harness.client.get("/v1/experiments/nope/analysis")).status_code == 404


async def test_each_decision_logs_its_full_selection_distribution(
    harness: Harness, exp_name: str
) -> None:
    for _ in range(25):
        assert (await harness.predict(exp_name)).status_code == 200
    snap = await harness.store.snapshot(exp_name)
    # every decision adds the policy's probabilities of all arms: they sum to one each
    assert sum(t.expected_pulls for t in snap.values()) == pytest.approx(25.0)
    assert all(0 < t.expected_pulls < 25 for t in snap.values())
