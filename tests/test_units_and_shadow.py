"""Sticky units under a bandit, the unit as the unit of analysis, shadow arms, signed
event ids and per-key quotas (the service without Ray, real Redis)."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bandit_serve.config import AppConfig, key_digest
from bandit_serve.service import metrics
from bandit_serve.service.core import BanditService, ExperimentRouter
from bandit_serve.service.local import LocalModels
from bandit_serve.store import RedisStore, RewardOutcome, Store
from tests.conftest import ManualClock, delete_experiment_keys
from tests.test_service_api import Harness


def experiment(name: str, arms: dict[str, str], **exp: Any) -> AppConfig:
    exp.setdefault("policy", {"kind": "thompson"})
    exp.setdefault("reward", {"kind": "bernoulli"})
    return AppConfig.model_validate(
        {
            "experiments": [
                {
                    "name": name,
                    "arms": [
                        {"name": a, "model": f"tests.fixtures.models:{fn}"}
                        for a, fn in arms.items()
                    ],
                    "sync_interval_seconds": 0.01,
                    **exp,
                }
            ]
        }
    )


@pytest.fixture
async def store(redis_url: str, exp_name: str, clock: ManualClock) -> AsyncIterator[Store]:
    s = RedisStore.from_url(redis_url, clock=clock)
    yield s
    await s.close()
    delete_experiment_keys(redis_url, exp_name)


def router(cfg: AppConfig, store: Store, caller: Any = None, seed: int = 1) -> ExperimentRouter:
    svc = BanditService(cfg, store, caller or LocalModels(cfg), seed=seed)
    return svc.router(cfg.experiments[0].name)


async def test_units_keep_their_first_arm_while_thompson_moves(store: Store, exp_name: str) -> None:
    """1,000 units x 10 requests while the posterior moves (b is much better): no unit
    ever changes arm, and each decision logs its first assignment's propensity."""
    cfg = experiment(
        exp_name, {"a": "echo_a", "b": "echo_b"}, assignment={"by": "unit_id", "salt": "t"}
    )
    r = router(cfg, store)
    rng = np.random.default_rng(0)
    first: dict[str, tuple[str, float]] = {}
    flips = 0
    for rnd in range(10):
        for u in range(1000):
            unit = f"unit-{u}"
            p = await r.predict([u], unit)
            assert p.event_id is not None and p.propensity is not None
            if unit in first:
                flips += (p.arm, p.propensity) != first[unit]
            else:
                first[unit] = (p.arm, p.propensity)
            if rnd < 3:  # rewards move the posterior towards b
                reward = float(rng.random() < (0.8 if p.arm == "b" else 0.2))
                await r.post_rewards([(p.event_id, reward)])
    assert flips == 0
    totals = await store.snapshot(exp_name)
    assert sum(t.units for t in totals.values()) == 1000
    assert sum(t.pulls for t in totals.values()) == 10_000
    # the analysis counts units, not requests
    report = await r.analysis()
    assert report.unit_of_analysis == "unit"
    assert sum(a.samples for a in report.arms) == 1000  # units with a reward
    assert report.srm_p_value > 0.001  # units match the propensities they were drawn with


async def test_a_rolled_back_arm_loses_its_sticky_units(store: Store, exp_name: str) -> None:
    cfg = experiment(
        exp_name,
        {"a": "echo_a", "b": "echo_b"},
        policy={"kind": "fixed"},
        assignment={"by": "unit_id", "salt": "t"},
    )
    r = router(cfg, store)
    units = [f"u{i}" for i in range(200)]
    before = {u: (await r.predict([0], u)).arm for u in units}
    assert set(before.values()) == {"a", "b"}
    await r.rollback("b", "ops")
    after = {u: (await r.predict([0], u)).arm for u in units}
    assert set(after.values()) == {"a"}


async def test_unit_level_tests_match_scipy_on_unit_means(store: Store, exp_name: str) -> None:
    from scipy import stats

    cfg = experiment(
        exp_name,
        {"a": "echo_a", "b": "echo_b"},
        policy={"kind": "fixed"},
        reward={"kind": "bounded", "low": 0, "high": 10},
        assignment={"by": "unit_id", "salt": "t"},
    )
    r = router(cfg, store)
    rng = np.random.default_rng(5)
    means: dict[str, list[float]] = {"a": [], "b": []}
    for u in range(120):
        rewards = []
        arm = ""
        for _ in range(1 + u % 4):  # units with 1 to 4 requests
            p = await r.predict([0], f"u{u}")
            assert p.event_id is not None
            arm = p.arm
            x = round(min(10.0, max(0.0, float(rng.normal(5 + (arm == "b"), 2)))), 3)
            rewards.append(x)
            assert (await r.post_rewards([(p.event_id, x)])) == [RewardOutcome.APPLIED]
        means[arm].append(statistics.fmean(rewards))
    report = await r.analysis(baseline="a")
    b = report.arm("b")
    assert b.samples == len(means["b"])
    ref = stats.ttest_ind(means["b"], means["a"], equal_var=False)
    assert b.p_value == pytest.approx(float(ref.pvalue), rel=1e-6)
    assert b.effect == pytest.approx(statistics.fmean(means["b"]) - statistics.fmean(means["a"]))


async def test_shadow_arms_are_counted_off_the_answers_path(store: Store, exp_name: str) -> None:
    cfg = experiment(
        exp_name,
        {"a": "echo_a"},
        policy={"kind": "fixed"},
        shadow={
            "rate": 1.0,
            "arms": [
                {"name": "v3", "model": "tests.fixtures.models:echo_a"},
                {"name": "slow", "model": "tests.fixtures.models:slow_echo_a"},
            ],
        },
    )
    plain = router(
        experiment(exp_name + "-plain", {"a": "echo_a"}, policy={"kind": "fixed"}), store
    )
    r = router(cfg, store)

    async def p50(rt: ExperimentRouter) -> float:
        times = []
        for i in range(40):
            t0 = time.perf_counter()
            await rt.predict([i])
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    base, shadowed = await p50(plain), await p50(r)
    assert shadowed <= base * 1.1 + 0.002, (base, shadowed)  # a 1 s shadow does not delay
    await asyncio.sleep(1.3)  # the mirrored calls finish in the background
    view = await r.describe()
    sh = {s["name"]: s for s in view["shadow"]}
    assert sh["v3"]["calls"] == 40 and sh["v3"]["agreement"]["equal_share"] == 1.0
    assert sh["slow"]["calls"] == 40 and sh["slow"]["latency"]["p50"] > 0.9
    assert {a["name"] for a in view["arms"]} == {"a"}  # shadows are never chosen
    report = await r.analysis()
    assert [s.name for s in report.shadow] == ["v3", "slow"]
    snap = await store.read(exp_name)
    text = metrics.render([metrics.ExperimentMetrics(await r.describe(snap), snap)]).decode()
    samples = {
        (x.name, tuple(sorted(x.labels.items()))): x.value
        for family in text_string_to_metric_families(text)
        for x in family.samples
    }

    def sample(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted({"experiment": exp_name, **labels}.items())))]

    assert sample("bandit_shadow_calls_total", shadow="slow", outcome="ok") == 40
    fast = [  # the slow shadow's calls took a second: none in a bucket below 0.9 s
        v
        for (name, labels), v in samples.items()
        if name == "bandit_shadow_latency_seconds_bucket"
        and ("shadow", "slow") in labels
        and float(dict(labels)["le"]) < 0.9
    ]
    assert len(fast) > 5 and set(fast) == {0.0}
    assert sample("bandit_shadow_latency_seconds_bucket", shadow="slow", le="+Inf") == 40
    assert sample("bandit_shadow_agreement", shadow="v3") == 1.0
    delete_experiment_keys_sync(store, exp_name + "-plain")


async def test_a_blocking_shadow_never_takes_the_served_arms_threads(
    store: Store, exp_name: str
) -> None:
    """A shadow model that blocks its thread for 0.5 s on every call, every request
    mirrored: the served (blocking) arm keeps its threads, and a router keeps at most
    MAX_MIRRORS_IN_FLIGHT mirrored requests, skipping the rest."""
    from bandit_serve.service.core import MAX_MIRRORS_IN_FLIGHT

    cfg = experiment(
        exp_name,
        {"a": "echo_a"},
        policy={"kind": "fixed"},
        shadow={
            "rate": 1.0,
            "arms": [{"name": "stuck", "model": "tests.fixtures.models:blocking_slow_echo_a"}],
        },
    )
    models = LocalModels(cfg)
    r = router(cfg, store, models)
    times = []
    try:
        for i in range(MAX_MIRRORS_IN_FLIGHT + 40):
            t0 = time.perf_counter()
            await r.predict([i])
            times.append(time.perf_counter() - t0)
            await asyncio.sleep(0.005)
        # with one pool for both, the shadow filled its threads and answers waited up to
        # a whole shadow call (0.5 s)
        assert max(times) < 0.25, max(times)
        assert r.mirrors_in_flight <= MAX_MIRRORS_IN_FLIGHT and r.mirrors_skipped > 0
    finally:
        await models.aclose()


async def test_a_blocking_served_model_runs_in_threads_and_leaves_the_loop_free(
    store: Store, exp_name: str
) -> None:
    """An in-process arm whose model blocks its thread for 0.5 s (scikit-learn, ONNX, a
    plain function; `placement: router` on Ray, every arm on the local engine): four
    requests at once take about one call's time, and the event loop answers meanwhile."""
    cfg = experiment(
        exp_name,
        {"a": "blocking_slow_echo_a"},
        policy={"kind": "fixed"},
    )
    models = LocalModels(cfg)
    r = router(cfg, store, models)
    try:
        await r.predict([0])  # the snapshot and the contracts, outside the timing
        began = time.perf_counter()
        calls = asyncio.gather(*(r.predict([i]) for i in range(4)))
        ticks = []
        while not calls.done():
            t0 = time.perf_counter()
            await asyncio.sleep(0.01)
            ticks.append(time.perf_counter() - t0)
        answers = await calls
        wall = time.perf_counter() - began
        assert [a.arm for a in answers] == ["a"] * 4
        assert wall < 1.2, wall  # one after another: 2 s
        assert max(ticks) < 0.2, max(ticks)  # the loop was never held by a model
    finally:
        await models.aclose()


def delete_experiment_keys_sync(store: Store, name: str) -> None:
    from tests.conftest import REDIS_URL

    delete_experiment_keys(REDIS_URL, name)


async def test_forged_foreign_and_replayed_ids_are_never_applied(
    store: Store, exp_name: str
) -> None:
    cfg = experiment(exp_name, {"a": "echo_a", "b": "echo_b"})
    r = router(cfg, store)
    p = await r.predict([0])
    assert p.event_id is not None
    event, issued, kid, mac = p.event_id.split(".")
    forged = [
        f"{event}.{issued}.{kid}.{'A' * 22}",  # a bad MAC
        f"{'0' * 32}.{issued}.{kid}.{mac}",  # another id under this MAC
        f"{event}.{issued}.k9.{mac}",  # an unknown key
        event,  # the bare store id
        "x" * 70,
    ]
    before = await store.snapshot(exp_name)
    assert await r.post_rewards([(f, 1.0) for f in forged]) == [RewardOutcome.UNKNOWN] * 5
    other = router(experiment(exp_name + "-b", {"a": "echo_a"}), store)
    assert await other.post_rewards([(p.event_id, 1.0)]) == [RewardOutcome.UNKNOWN]
    assert await store.snapshot(exp_name) == before
    assert await r.post_rewards([(p.event_id, 1.0)]) == [RewardOutcome.APPLIED]
    assert await r.post_rewards([(p.event_id, 1.0)]) == [RewardOutcome.DUPLICATE]
    delete_experiment_keys_sync(store, exp_name + "-b")


async def test_a_key_over_its_quota_gets_429_and_an_attacker_changes_little(
    redis_url: str, exp_name: str, clock: ManualClock
) -> None:
    """The poisoning drill: a key without valid ids changes nothing; with ids of its own
    (it may predict) it is bounded by its quota."""
    raw = experiment(exp_name, {"a": "echo_a", "b": "echo_b"}).model_dump()
    raw["auth"] = {
        "keys": [
            {"name": "app", "sha256": key_digest("k-app"), "scopes": [f"predict:{exp_name}"]},
            {
                "name": "attacker",
                "sha256": key_digest("k-bad"),
                "scopes": [f"predict:{exp_name}", f"reward:{exp_name}"],
                "rate_per_second": 5,
                "burst": 5,
            },
        ]
    }
    h = Harness(AppConfig.model_validate(raw), RedisStore.from_url(redis_url, clock=clock))
    try:
        bad = {"Authorization": "Bearer k-bad"}
        url = f"/v1/experiments/{exp_name}"
        before = await h.store.snapshot(exp_name)
        answers = [
            await h.client.post(
                f"{url}/rewards", json={"event_id": "f" * 32, "reward": 1}, headers=bad
            )
            for _ in range(5)
        ]
        assert [a.json()["status"] for a in answers] == ["unknown"] * 5
        assert await h.store.snapshot(exp_name) == before  # forged ids: nothing changed
        codes = []
        for _ in range(20):  # the attacker's own ids: bounded by its quota
            a = await h.client.post(f"{url}/predict", json={"inputs": 1}, headers=bad)
            codes.append(a.status_code)
        assert codes.count(429) >= 15  # its bucket was spent on the 5 rewards above
        assert int(a.headers["retry-after"]) >= 1  # the last one was refused too
        ok = await h.client.post(
            f"{url}/predict", json={"inputs": 1}, headers={"Authorization": "Bearer k-app"}
        )
        assert ok.status_code == 200  # other keys are not affected
    finally:
        await h.close()
        delete_experiment_keys(redis_url, exp_name)


async def test_signing_keys_from_the_environment_rotate(
    store: Store, exp_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first key signs, every key verifies: ids issued before a rotation still count."""

    def cfg() -> AppConfig:
        raw = experiment(exp_name, {"a": "echo_a"}).model_dump()
        raw["auth"] = {
            "keys": [{"name": "x", "sha256": key_digest("x"), "scopes": ["read"]}],
            "signing_keys_env": "TEST_SIGNING_KEYS",
        }
        return AppConfig.model_validate(raw)

    monkeypatch.setenv("TEST_SIGNING_KEYS", "old:" + "o" * 20)
    r1 = router(cfg(), store)
    p = await r1.predict([0])
    assert p.event_id is not None and ".old." in p.event_id
    monkeypatch.setenv("TEST_SIGNING_KEYS", "new:" + "n" * 20 + ",old:" + "o" * 20)
    r2 = router(cfg(), store)
    q = await r2.predict([0])
    assert q.event_id is not None and ".new." in q.event_id
    assert await r2.post_rewards([(p.event_id, 1.0), (q.event_id, 1.0)]) == [
        RewardOutcome.APPLIED,
        RewardOutcome.APPLIED,
    ]
    monkeypatch.setenv("TEST_SIGNING_KEYS", "bad")
    with pytest.raises(ValueError, match="TEST_SIGNING_KEYS"):
        router(cfg(), store)
