"""The safety plane through the HTTP API (no Ray, real Redis): actions and their answers,
what traffic does after each, the audit log, resets, input contracts, model errors."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from fastapi import FastAPI, Request
from sklearn.linear_model import LogisticRegression

from bandit_serve.errors import StoreError
from bandit_serve.store import RedisStore
from tests.conftest import ManualClock, delete_experiment_keys, serve_in_thread
from tests.test_service_api import Harness, app_config

ARMS = {"a": "echo_a", "b": "echo_b", "c": "echo_b"}


@pytest.fixture
async def h(redis_url: str, exp_name: str, clock: ManualClock) -> AsyncIterator[Harness]:
    store = RedisStore.from_url(redis_url, clock=clock)
    harness = Harness(app_config(exp_name, ARMS, policy={"kind": "fixed"}), store)
    yield harness
    await harness.close()
    delete_experiment_keys(redis_url, exp_name)


async def post(h: Harness, path: str, body: Any = None, **params: str) -> tuple[int, Any]:
    r = await h.client.post(path, json=body, params=params)
    return r.status_code, r.json()


async def arms_served(h: Harness, name: str, n: int = 60) -> Counter[str]:
    out = Counter[str]()
    for _ in range(n):
        r = await h.predict(name)
        assert r.status_code == 200, r.text
        out[r.json()["arm"]] += 1
    return out


async def test_rollback_stops_traffic_and_restore_brings_it_back(h: Harness, exp_name: str) -> None:
    base = f"/v1/experiments/{exp_name}"
    assert set(await arms_served(h, exp_name)) == {"a", "b", "c"}
    code, body = await post(h, f"{base}/arms/b/rollback", {"reason": "looks wrong"})
    assert (code, body["changed"], body["arms"]["b"]) == (200, True, "rolled_back")
    code, body = await post(h, f"{base}/arms/b/rollback")
    assert (code, body["changed"]) == (200, False)  # idempotent
    assert "b" not in await arms_served(h, exp_name)  # obeyed at once by this replica
    code, body = await post(h, f"{base}/arms/b/restore")
    assert (code, body["changed"], body["arms"]["b"]) == (200, True, "active")
    assert "b" in await arms_served(h, exp_name)
    events = (await h.client.get(f"{base}/events")).json()["events"]
    kinds = [(e["kind"], e["arm"], e["actor"]) for e in events]
    assert kinds[-2:] == [("rollback", "b", "operator"), ("restore", "b", "operator")]
    assert events[-2]["reason"] == "looks wrong" and events[0]["kind"] == "config_changed"
    page = (await h.client.get(f"{base}/events", params={"since": events[-2]["id"]})).json()
    assert [e["kind"] for e in page["events"]] == ["restore"]


async def test_an_action_whose_answer_was_lost_says_it_may_have_been_recorded(
    h: Harness, exp_name: str
) -> None:
    """Redis took the write but the answer never came back (a timeout after sending):
    the 503 must not claim that nothing was recorded, and the retry finds it done."""
    base = f"/v1/experiments/{exp_name}"
    real = h.store.transition

    async def lost(*args: Any, **kwargs: Any) -> Any:
        await real(*args, **kwargs)
        raise StoreError("Redis failed during transition: Timeout reading from socket")

    h.store.transition = lost  # type: ignore[method-assign]
    code, body = await post(h, f"{base}/pause")
    assert code == 503 and body["may_have_been_recorded"] is True, body
    assert "nothing was recorded" not in body["detail"]
    h.store.transition = real  # type: ignore[method-assign]
    code, body = await post(h, f"{base}/pause")  # the retry: it had landed
    assert (code, body["changed"], body["state"]) == (200, False, "paused")


async def test_refused_actions_change_nothing(h: Harness, exp_name: str) -> None:
    base = f"/v1/experiments/{exp_name}"
    await arms_served(h, exp_name, 10)
    before = (await h.client.get(base)).json()
    events_before = (await h.client.get(f"{base}/events")).json()["events"]
    assert (await post(h, f"{base}/arms/a/rollback"))[0] == 409  # the baseline
    assert (await post(h, f"{base}/arms/zz/rollback"))[0] == 404
    assert (await post(h, f"{base}/arms/zz/restore"))[0] == 404
    assert (await post(h, "/v1/experiments/nope/pause"))[0] == 404
    assert (await post(h, f"{base}/promote", {"arm": "zz"}))[0] == 404
    assert (await post(h, f"{base}/promote", {}))[0] == 422
    assert (await post(h, f"{base}/reset"))[0] == 422  # no confirm
    assert (await post(h, f"{base}/reset", confirm="other"))[0] == 422
    assert (await post(h, f"{base}/resume"))[1]["changed"] is False
    assert (await post(h, f"{base}/arms/b/restore"))[1]["changed"] is False
    r = await h.client.get(f"{base}/events", params={"since": "not-an-id"})
    assert r.status_code == 422
    assert (await h.client.get(base)).json() == before
    assert (await h.client.get(f"{base}/events")).json()["events"] == events_before
    await post(h, f"{base}/arms/b/rollback")
    code, body = await post(h, f"{base}/promote", {"arm": "b"})
    assert code == 409 and "rolled_back" in body["detail"]


async def test_pause_sends_everything_to_the_baseline_and_keeps_rewards(
    h: Harness, exp_name: str
) -> None:
    base = f"/v1/experiments/{exp_name}"
    code, body = await post(h, f"{base}/pause")
    assert (code, body["state"]) == (200, "paused")
    served = []
    for _ in range(30):
        p = (await h.predict(exp_name)).json()
        served.append(p["arm"])
        assert p["propensity"] == 1.0
        r = await h.client.post(f"{base}/rewards", json={"event_id": p["event_id"], "reward": 1})
        assert r.json()["status"] == "applied"
    assert set(served) == {"a"}
    assert (await post(h, f"{base}/resume"))[1]["state"] == "running"
    assert len(await arms_served(h, exp_name)) == 3


async def test_promote_sends_everything_to_one_arm_and_rollback_undoes_it(
    h: Harness, exp_name: str
) -> None:
    base = f"/v1/experiments/{exp_name}"
    code, body = await post(h, f"{base}/promote", {"arm": "c"})
    assert (code, body["state"]) == (200, "promoted")
    assert body["arms"] == {"a": "retired", "b": "retired", "c": "promoted"}
    assert (await post(h, f"{base}/promote", {"arm": "c"}))[1]["changed"] is False
    assert set(await arms_served(h, exp_name, 20)) == {"c"}
    assert (await post(h, f"{base}/pause"))[0] == 409
    assert (await post(h, f"{base}/arms/b/rollback"))[0] == 409  # retired
    code, body = await post(h, f"{base}/arms/c/rollback")  # the promoted arm turned bad
    assert body["state"] == "running" and body["arms"] == {
        "a": "active",
        "b": "active",
        "c": "rolled_back",
    }
    assert set(await arms_served(h, exp_name)) == {"a", "b"}


async def test_reset_starts_from_zero_and_forgets_old_event_ids(h: Harness, exp_name: str) -> None:
    base = f"/v1/experiments/{exp_name}"
    old = [(await h.predict(exp_name)).json() for _ in range(5)]
    await post(h, f"{base}/arms/c/rollback")
    code, body = await post(h, f"{base}/reset", {"reason": "new run"}, confirm=exp_name)
    assert code == 200 and body["arms"]["c"] == "rolled_back"  # statuses survive
    view = (await h.client.get(base)).json()
    assert view["epoch"] == 1 and all(a["pulls"] == 0 for a in view["arms"])
    r = await h.client.post(f"{base}/rewards", json={"event_id": old[0]["event_id"], "reward": 1})
    assert (r.status_code, r.json()["status"]) == (404, "unknown")
    new = (await h.predict(exp_name)).json()
    r = await h.client.post(f"{base}/rewards", json={"event_id": new["event_id"], "reward": 1})
    assert r.json()["status"] == "applied"
    kinds = [e["kind"] for e in (await h.client.get(f"{base}/events")).json()["events"]]
    assert kinds[-2:] == ["rollback", "reset"]  # the audit log survives


async def test_a_replica_obeys_an_action_within_one_sync_interval(
    redis_url: str, exp_name: str, clock: ManualClock
) -> None:
    """Two services on one Redis (two router replicas): an action taken through one is
    obeyed by the other at its next refresh."""
    cfg = app_config(exp_name, ARMS, policy={"kind": "fixed"}, sync_interval_seconds=0.05)
    one = Harness(cfg, RedisStore.from_url(redis_url, clock=clock))
    two = Harness(cfg, RedisStore.from_url(redis_url, clock=clock))
    try:
        assert "b" in await arms_served(two, exp_name)
        await post(one, f"/v1/experiments/{exp_name}/arms/b/rollback")
        await asyncio.sleep(0.06)
        assert "b" not in await arms_served(two, exp_name)
    finally:
        await one.close()
        await two.close()
        delete_experiment_keys(redis_url, exp_name)


async def test_inputs_an_arm_cannot_take_are_422_before_anything_is_logged(
    redis_url: str, exp_name: str, clock: ManualClock, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 3))
    model = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    joblib.dump(model, tmp_path / "three.joblib")
    cfg = app_config(exp_name, {"a": "echo_a"}, policy={"kind": "fixed"})
    raw = cfg.model_dump()
    raw["experiments"][0]["arms"].append(
        {"name": "sk", "model": {"kind": "sklearn", "path": str(tmp_path / "three.joblib")}}
    )
    raw["experiments"][0]["input_schema"] = {"type": "array", "maxItems": 3}
    from bandit_serve.config import AppConfig

    h = Harness(AppConfig.model_validate(raw), RedisStore.from_url(redis_url, clock=clock))
    try:
        before = await h.counted(exp_name)
        for bad in ([1.0, 2.0], [[1, 2, 3], [1, 2]], ["a", "b", "c"], [1, 2, True], "x" * 10):
            r = await h.predict(exp_name, bad)
            assert r.status_code == 422, (bad, r.text)
            assert "xxxxxxxxxx" not in r.text  # never echoes the input
        r = await h.predict(exp_name, [1, 2, 3, 4])
        assert r.status_code == 422 and "input_schema" in r.json()["detail"]
        assert await h.counted(exp_name) == before  # nothing logged, whichever arm
        served = Counter[str]()
        for _ in range(20):
            r = await h.predict(exp_name, [0.5, -1.0, 2.0])
            assert r.status_code == 200
            served[r.json()["arm"]] += 1
        assert set(served) == {"a", "sk"}
        await h.client.post(f"/v1/experiments/{exp_name}/arms/sk/rollback")
        # with the sklearn arm rolled back, nothing it cannot take is refused on its behalf
        assert (await h.predict(exp_name, [1.0, 2.0])).status_code == 200
    finally:
        await h.close()
        delete_experiment_keys(redis_url, exp_name)


async def test_every_active_arm_s_contract_counts_even_one_the_policy_does_not_draw(
    redis_url: str, exp_name: str, clock: ManualClock, tmp_path: Path
) -> None:
    """An active arm with no share now (UCB's one-hot draw, a weight of 0) can still
    serve, e.g. a sticky unit kept on it: its contract is checked all the same."""
    x = np.random.default_rng(0).normal(size=(100, 3))
    joblib.dump(LogisticRegression().fit(x, (x[:, 0] > 0).astype(int)), tmp_path / "m.joblib")
    cfg = app_config(exp_name, {"a": "echo_a"}, policy={"kind": "fixed"})
    raw = cfg.model_dump()
    raw["experiments"][0]["arms"].append(
        {"name": "sk", "model": {"kind": "sklearn", "path": str(tmp_path / "m.joblib")}}
    )
    raw["experiments"][0]["policy"]["weights"] = [1, 0]
    from bandit_serve.config import AppConfig

    h = Harness(AppConfig.model_validate(raw), RedisStore.from_url(redis_url, clock=clock))
    try:
        r = await h.predict(exp_name, [1.0, 2.0])
        assert r.status_code == 422 and "'sk'" in r.json()["detail"], r.text
        assert (await h.predict(exp_name, [1.0, 2.0, 3.0])).json()["arm"] == "a"
    finally:
        await h.close()
        delete_experiment_keys(redis_url, exp_name)


@pytest.mark.parametrize("mode", ["low", "withdraw"])
async def test_failed_calls_count_against_the_arm(
    redis_url: str, exp_name: str, clock: ManualClock, mode: str
) -> None:
    cfg = app_config(
        exp_name,
        {"good": "echo_a", "bad": "broken", "nan": "not_json"},
        policy={"kind": "fixed", "weights": [0, 1, 1]},
        reward={"kind": "bernoulli", "on_model_error": mode},
    )
    h = Harness(cfg, RedisStore.from_url(redis_url, clock=clock))
    try:
        details = {}
        for _ in range(10):
            r = await h.predict(exp_name)
            assert r.status_code == 502 and r.json()["arm"] in {"bad", "nan"}
            details[r.json()["arm"]] = r.json()["detail"]
        assert "(RuntimeError)" in details["bad"] and "exploded" not in details["bad"]
        assert "cannot be sent as JSON" in details["nan"]
        state = await h.state(exp_name)
        for arm in ("bad", "nan"):
            a = state[arm]
            assert a["pulls"] == a["calls"] == a["errors"] > 0
            assert a["error_rate"] == 1.0 and a["pending"] == 0
            if mode == "low":
                assert (a["rewards"], a["reward_sum"], a["withdrawn"]) == (a["pulls"], 0.0, 0)
            else:
                assert (a["rewards"], a["withdrawn"]) == (0, a["pulls"])
    finally:
        await h.close()
        delete_experiment_keys(redis_url, exp_name)


async def test_experiment_view_shows_status_latency_and_error_rate(
    h: Harness, exp_name: str
) -> None:
    await arms_served(h, exp_name, 30)
    view = (await h.client.get(f"/v1/experiments/{exp_name}")).json()
    assert (view["state"], view["baseline"], view["epoch"]) == ("running", "a", 0)
    for a in view["arms"]:
        assert a["status"] == "active" and a["error_rate"] == 0.0
        lat = a["latency"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] < 1.0
    text = (await h.client.get("/metrics")).text
    lab = f'arm="a",experiment="{exp_name}"'
    assert f'bandit_arm_status{{{lab},status="active"}} 1.0' in text
    assert f"bandit_model_latency_seconds_bucket{{{lab},le=" in text
    calls = next(a["calls"] for a in view["arms"] if a["name"] == "a")
    assert f'bandit_model_latency_seconds_bucket{{{lab},le="+Inf"}} {float(calls)}' in text


async def test_every_event_is_posted_to_the_notify_url(
    redis_url: str, exp_name: str, clock: ManualClock
) -> None:
    received: list[dict[str, Any]] = []
    hook = FastAPI()

    @hook.get("/healthz")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @hook.post("/hook")
    async def collect(request: Request) -> dict[str, str]:
        received.append(await request.json())
        return {"status": "ok"}

    with serve_in_thread(hook) as url:
        cfg = app_config(exp_name, ARMS, policy={"kind": "fixed"}, notify={"url": f"{url}/hook"})
        h = Harness(cfg, RedisStore.from_url(redis_url, clock=clock))
        try:
            await post(h, f"/v1/experiments/{exp_name}/arms/b/rollback", {"reason": "r1"})
            await post(h, f"/v1/experiments/{exp_name}/pause")
            for _ in range(100):
                if len(received) >= 2:
                    break
                await asyncio.sleep(0.02)
        finally:
            await h.service.stop()
            await h.close()
            delete_experiment_keys(redis_url, exp_name)
    assert [(e["experiment"], e["kind"], e["arm"]) for e in received] == [
        (exp_name, "rollback", "b"),
        (exp_name, "pause", None),
    ]
    assert received[0]["reason"] == "r1" and received[0]["id"]


async def test_timeseries_per_bucket_with_cumulative_posterior(
    h: Harness, exp_name: str, clock: ManualClock
) -> None:
    base = f"/v1/experiments/{exp_name}"
    for _minute in range(3):
        for _ in range(20):
            p = (await h.predict(exp_name)).json()
            reward = 1 if p["arm"] == "c" else 0
            await h.client.post(
                f"{base}/rewards", json={"event_id": p["event_id"], "reward": reward}
            )
        clock.advance(60)
    data = (await h.client.get(f"{base}/timeseries", params={"window_seconds": 600})).json()
    assert data["bucket_seconds"] == 60 and data["arms"] == ["a", "b", "c"]
    rows = data["buckets"]
    assert len(rows) == 3
    assert sum(r["arms"][a]["pulls"] for r in rows for a in "abc") == 60
    for r in rows:
        shares = [r["arms"][a]["share"] for a in "abc"]
        assert sum(shares) == pytest.approx(1.0)
    view = await h.state(exp_name)
    for a in "abc":
        last = rows[-1]["arms"][a]["posterior"]
        assert last["mean"] == pytest.approx(view[a]["posterior"]["mean"])  # ends at now
        assert sum(r["arms"][a]["rewards"] for r in rows) == view[a]["rewards"]
    c_means = [r["arms"]["c"]["posterior"]["mean"] for r in rows]
    assert c_means[0] < c_means[-1]  # c's evidence accumulates over the buckets
    assert (
        await h.client.get(f"{base}/timeseries", params={"window_seconds": 0})
    ).status_code == 422
