"""Rollouts through the service (no Ray, real Redis): a staged canary that advances,
promotes, waits, pauses and rolls back; assignment of units by their hash; layers."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from bandit_serve.config import AppConfig, load_config
from bandit_serve.errors import ConfigError, ModelError
from bandit_serve.service.core import BanditService, ExperimentRouter
from bandit_serve.service.local import LocalModels
from bandit_serve.store import ArmStatus, ExperimentState, RedisStore, Store
from tests.conftest import ManualClock, delete_experiment_keys

GUARD = {
    "rules": [{"metric": "error_rate", "max_increase": 0.02}],
    "min_calls": 50,
    "check_interval_seconds": 1,
}


def experiment(name: str, arms: dict[str, str], **exp: Any) -> dict[str, Any]:
    exp.setdefault("reward", {"kind": "bernoulli"})
    return {
        "name": name,
        "arms": [{"name": a, "model": f"tests.fixtures.models:{fn}"} for a, fn in arms.items()],
        "sync_interval_seconds": 0.01,
        **exp,
    }


def canary(name: str, candidate_model: str = "echo_b", **policy: Any) -> AppConfig:
    policy = {
        "kind": "canary",
        "candidate": "v2",
        "steps": [
            {"weight": 0.1, "min_calls": 20},
            {"weight": 0.3, "min_calls": 30},
            {"weight": 0.6, "min_calls": 30},
        ],
        **policy,
    }
    return AppConfig.model_validate(
        {
            "experiments": [
                experiment(
                    name,
                    {"v1": "echo_a", "v2": candidate_model},
                    baseline="v1",
                    policy=policy,
                    guardrails=GUARD,
                )
            ]
        }
    )


@pytest.fixture
async def store(redis_url: str, exp_name: str, clock: ManualClock) -> AsyncIterator[Store]:
    s = RedisStore.from_url(redis_url, clock=clock)
    yield s
    await s.close()
    delete_experiment_keys(redis_url, exp_name)


def service(cfg: AppConfig, store: Store, seed: int = 1) -> tuple[BanditService, ExperimentRouter]:
    svc = BanditService(cfg, store, LocalModels(cfg), seed=seed)
    return svc, svc.router(cfg.experiments[0].name)


async def drive(router: ExperimentRouter, n: int, unit: str | None = None) -> Counter[str]:
    served = Counter[str]()
    for i in range(n):
        try:
            p = await router.predict([i], None if unit is None else f"{unit}-{i}")
            served[p.arm] += 1
        except ModelError as err:
            served[err.arm] += 1
    return served


async def test_a_healthy_canary_steps_up_and_is_promoted(store: Store, exp_name: str) -> None:
    _, r = service(canary(exp_name), store)
    await r.check_guardrails()  # starts the schedule: step 1
    view = (await r.describe())["canary"]
    assert (view["step"], view["weight"], view["phase"]) == (1, 0.1, "running")
    weights = []
    for _ in range(40):
        served = await drive(r, 50)
        weights.append(served["v2"] / 50)
        await r.check_guardrails()
        if (await r.describe())["canary"]["phase"] == "promoted":
            break
    ctl = await store.control(exp_name)
    assert ctl.state is ExperimentState.PROMOTED and ctl.status("v2") is ArmStatus.PROMOTED
    events = [e for e in await store.events(exp_name) if e.actor == "schedule"]
    assert [e.kind for e in events] == ["step", "step", "step", "promote"]
    assert [e.details.get("step") for e in events[:3]] == [1, 2, 3]
    assert set(await drive(r, 20)) == {"v2"}
    assert weights[0] < 0.3  # the first step's share, then more
    assert (await r.describe())["canary"]["phase"] == "promoted"


async def test_manual_promotion_waits_for_the_operator(store: Store, exp_name: str) -> None:
    svc, r = service(canary(exp_name, promote="manual"), store)
    for _ in range(40):
        await r.check_guardrails()
        await drive(r, 50)
        if (await r.describe())["canary"]["phase"] == "awaiting_promotion":
            break
    assert (await r.describe())["canary"]["phase"] == "awaiting_promotion"
    kinds = [e.kind for e in await store.events(exp_name) if e.actor == "schedule"]
    assert kinds == ["step", "step", "step", "awaiting_promotion"]
    # POST .../promote with no body: a canary promotes its candidate
    from bandit_serve.service.http import create_api

    api = create_api(lambda: svc)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t") as c:
        answer = await c.post(f"/v1/experiments/{exp_name}/promote")
    assert answer.status_code == 200, answer.text
    assert answer.json()["arms"] == {"v1": "retired", "v2": "promoted"}
    assert (await r.describe())["canary"]["phase"] == "promoted"


async def test_a_failing_candidate_is_rolled_back_at_the_first_step(
    store: Store, exp_name: str
) -> None:
    _, r = service(canary(exp_name, candidate_model="broken"), store)
    await r.check_guardrails()
    for _ in range(40):
        await drive(r, 100)
        await r.check_guardrails()
        if (await r.describe())["canary"]["phase"] == "rolled_back":
            break
    view = (await r.describe())["canary"]
    assert (view["phase"], view["step"]) == ("rolled_back", 1)
    events = await store.events(exp_name)
    assert [(e.kind, e.actor) for e in events if e.kind in ("step", "rollback")] == [
        ("step", "schedule"),
        ("rollback", "guardrail"),
    ]
    assert set(await drive(r, 30)) == {"v1"}


async def test_pause_stops_the_schedules_clock(store: Store, exp_name: str) -> None:
    steps = [{"weight": 0.3, "min_seconds": 0.6}, {"weight": 0.5}]
    raw = canary(exp_name, steps=steps).model_dump()
    raw["experiments"][0]["guardrails"]["min_calls"] = 5
    _, r = service(AppConfig.model_validate(raw), store)
    await r.check_guardrails()
    await drive(r, 60)  # enough calls for the rules to judge; time is what is missing
    assert await r.pause("ops")
    await asyncio.sleep(0.8)  # paused time does not count
    await r.check_guardrails()
    assert (await r.describe())["canary"]["step"] == 1
    assert await r.resume("ops")
    await r.check_guardrails()
    assert (await r.describe())["canary"]["step"] == 1  # well under 0.6 s running so far
    await asyncio.sleep(0.7)
    await r.check_guardrails()
    assert (await r.describe())["canary"]["step"] == 2


async def climb(r: ExperimentRouter, phase: str) -> None:
    for _ in range(40):
        await drive(r, 50)
        await r.check_guardrails()
        if (await r.describe())["canary"]["phase"] == phase:
            return
    raise AssertionError(f"the canary never reached {phase}")


def swap_candidate(
    svc: BanditService, candidate: str, baseline: str, arms: dict[str, str]
) -> ExperimentRouter:
    """A config reload with a new candidate (and baseline, and arms)."""
    raw = svc.cfg.model_dump()
    exp = raw["experiments"][0]
    exp["arms"] = [{"name": a, "model": f"tests.fixtures.models:{m}"} for a, m in arms.items()]
    exp["baseline"] = baseline
    exp["policy"]["candidate"] = candidate
    cfg = AppConfig.model_validate(raw)
    assert isinstance(svc.caller, LocalModels)
    svc.caller.reconfigure(cfg)
    svc.reconfigure(cfg)
    return svc.router(exp["name"])


async def test_a_canarys_min_share_is_served_as_the_simulator_models_it(
    store: Store, exp_name: str
) -> None:
    """One home for a canary's policy (CanaryConfig.at_weight): the router serves the
    floor the config asks for, as the simulator does."""
    _, r = service(canary(exp_name, min_share=0.3), store)
    await r.check_guardrails()
    await r.refresh()
    assert r.frozen is not None
    assert list(r.frozen.probabilities) == pytest.approx([0.66, 0.34])  # 0.3 + 0.4 x 0.1


async def test_a_new_candidate_starts_the_schedule_again(store: Store, exp_name: str) -> None:
    """A config change that makes another arm the candidate (a shadow arm, say) starts
    it at the first step: it never inherits the previous candidate's step or its
    'awaiting promotion'."""
    svc, r = service(canary(exp_name, promote="manual"), store)
    await r.check_guardrails()
    await climb(r, "awaiting_promotion")
    r = swap_candidate(svc, "v3", "v1", {"v1": "echo_a", "v3": "echo_b"})
    view = (await r.describe())["canary"]  # before the schedule starts: the first weight
    assert (view["step"], view["weight"], view["phase"], view["calls"]) == (1, 0.1, "running", 0)
    await r.check_guardrails()
    assert (await r.describe())["canary"]["step"] == 1
    served = await drive(r, 200)
    assert served["v3"] < 50  # about 10%, not the old step's 60%
    started = [e for e in await store.events(exp_name) if e.kind == "step"][-1]
    assert (started.arm, started.details["step"]) == ("v3", 1)
    assert "replacing v2" in started.reason


async def test_after_a_promotion_a_new_candidate_gets_its_own_canary(
    store: Store, exp_name: str
) -> None:
    svc, r = service(canary(exp_name), store)
    await r.check_guardrails()
    await climb(r, "promoted")
    # the promoted version becomes the baseline, the next one the candidate
    r = swap_candidate(svc, "v3", "v2", {"v2": "echo_b", "v3": "echo_a"})
    await r.check_guardrails()
    view = (await r.describe())["canary"]
    assert (view["step"], view["phase"]) == (1, "running")
    ctl = await store.control(exp_name)
    assert ctl.state is ExperimentState.RUNNING
    assert (ctl.status("v2"), ctl.status("v3")) == (ArmStatus.ACTIVE, ArmStatus.ACTIVE)
    served = await drive(r, 200)
    assert 0 < served["v3"] < 50 and served["v2"] > 150


async def test_a_reset_restarts_the_steps_count(store: Store, exp_name: str) -> None:
    _, r = service(canary(exp_name), store)
    await r.check_guardrails()
    await drive(r, 800)  # the rules judge from 50 calls to each arm, then a step
    await r.check_guardrails()
    step = (await r.describe())["canary"]["step"]
    assert step >= 2
    assert await r.reset("ops")
    view = (await r.describe())["canary"]
    assert (view["step"], view["calls"]) == (step, 0)
    await drive(r, 200)
    described = await r.describe()
    (calls,) = [a["calls"] for a in described["arms"] if a["name"] == "v2"]  # since the reset
    assert described["canary"]["calls"] == calls > 0
    await climb(r, "promoted")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"candidate": "v1"}, "is the baseline"),
        ({"candidate": "v9"}, "is not an arm"),
        ({"steps": [{"weight": 0.5}, {"weight": 0.2}]}, "weights must increase"),
        ({"steps": [{"weight": 1.5}]}, "less than or equal to 1"),
        ({"steps": [{"weight": 0}]}, "greater than 0"),
    ],
)
def test_refused_canaries(tmp_path: Any, change: dict[str, Any], message: str) -> None:
    import yaml

    policy = {"kind": "canary", "candidate": "v2", "steps": [{"weight": 0.1}], **change}
    exp = experiment("c", {"v1": "echo_a", "v2": "echo_b"}, baseline="v1", policy=policy)
    exp["guardrails"] = GUARD
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"experiments": [exp]}))
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert len(str(info.value).splitlines()) == 1
    exp["policy"] = {"kind": "canary", "candidate": "v2", "steps": [{"weight": 0.1}]}
    del exp["guardrails"]
    path.write_text(yaml.safe_dump({"experiments": [exp]}))
    with pytest.raises(ConfigError, match="a canary needs guardrails with on_violation: rollback"):
        load_config(path)
    exp["guardrails"] = GUARD
    exp["arms"].append({"name": "v3", "model": "tests.fixtures.models:echo_b"})
    path.write_text(yaml.safe_dump({"experiments": [exp]}))
    with pytest.raises(ConfigError, match="it needs exactly 2 arms; got 3"):
        load_config(path)


async def test_units_keep_their_arm_and_a_rising_canary_only_moves_them_forward(
    store: Store, exp_name: str
) -> None:
    cfg = canary(exp_name)
    raw = cfg.model_dump()
    raw["experiments"][0]["assignment"] = {"by": "unit_id", "salt": "s-1"}
    _, r = service(AppConfig.model_validate(raw), store)
    await r.check_guardrails()
    units = [f"u{i}" for i in range(600)]

    async def arms_of_units() -> dict[str, str]:
        return {u: (await r.predict([0], u)).arm for u in units}

    first = await arms_of_units()
    assert first == await arms_of_units()  # sticky: the same arm every time
    share = sum(a == "v2" for a in first.values()) / len(units)
    assert 0.06 < share < 0.14  # step 1: 10%
    for _ in range(10):  # step 2 (30%)
        await r.check_guardrails()
        if (await r.describe())["canary"]["step"] == 2:
            break
        await drive(r, 30)
    assert (await r.describe())["canary"]["step"] == 2
    second = await arms_of_units()
    assert all(second[u] == "v2" for u in units if first[u] == "v2")  # never back
    assert 0.24 < sum(a == "v2" for a in second.values()) / len(units) < 0.36
    assert (await r.describe())["assignment"]["salt"] == "s-1"


async def test_a_random_salt_is_kept_for_every_replica(store: Store, exp_name: str) -> None:
    raw = {
        "experiments": [
            experiment(
                exp_name,
                {"a": "echo_a", "b": "echo_b"},
                policy={"kind": "fixed"},
                assignment={"by": "unit_id"},
            )
        ]
    }
    cfg = AppConfig.model_validate(raw)
    _, one = service(cfg, store, seed=1)
    _, two = service(cfg, store, seed=2)
    await one.refresh()
    await two.refresh()
    salt = (await one.describe())["assignment"]["salt"]
    assert salt and salt == (await two.describe())["assignment"]["salt"]
    units = [f"x{i}" for i in range(200)]
    assert [(await one.predict([0], u)).arm for u in units] == [
        (await two.predict([0], u)).arm for u in units
    ]


async def test_layers_keep_experiments_apart(redis_url: str, clock: ManualClock) -> None:
    names = ["layer-a-test", "layer-b-test"]
    raw = {
        "experiments": [
            experiment(
                n,
                {"a": "echo_a", "b": "echo_b"},
                policy={"kind": "fixed"},
                layer={"name": "ranking", "range": rng},
            )
            for n, rng in zip(names, ([0.0, 0.3], [0.3, 0.8]), strict=True)
        ]
    }
    cfg = AppConfig.model_validate(raw)
    store = RedisStore.from_url(redis_url, clock=clock)
    try:
        svc = BanditService(cfg, store, LocalModels(cfg), seed=1)
        a, b = svc.router(names[0]), svc.router(names[1])
        inside = Counter[str]()
        for i in range(1000):
            unit = f"user-{i}"
            pa, pb = await a.predict([0], unit), await b.predict([0], unit)
            assert not (pa.in_experiment and pb.in_experiment)  # at most one of them
            for name, p in zip(names, (pa, pb), strict=True):
                if p.in_experiment:
                    inside[name] += 1
                    assert p.event_id is not None and p.propensity is not None
                else:
                    assert (p.event_id, p.propensity, p.arm) == (None, None, "a")
        assert 250 < inside[names[0]] < 350 and 450 < inside[names[1]] < 550
        no_unit = await a.predict([0])
        assert not no_unit.in_experiment and no_unit.arm == "a"
        pulls = sum(t.pulls for t in (await store.snapshot(names[0])).values())
        assert pulls == inside[names[0]]  # outside the range: nothing logged
        with pytest.raises(ValueError, match="overlap"):
            AppConfig.model_validate(
                {
                    "experiments": [
                        {**e, "layer": {"name": "ranking", "range": [0.2, 0.5]}}
                        if e["name"] == names[1]
                        else e
                        for e in raw["experiments"]
                    ]
                }
            )
    finally:
        await store.close()
        for n in names:
            delete_experiment_keys(redis_url, n)


async def test_the_canary_weight_is_a_metric(store: Store, exp_name: str) -> None:
    from bandit_serve.service import metrics

    _, r = service(canary(exp_name), store)
    await r.check_guardrails()
    snap = await store.read(exp_name)
    text = metrics.render([metrics.ExperimentMetrics(await r.describe(snap), snap)]).decode()
    assert f'bandit_canary_weight{{candidate="v2",experiment="{exp_name}"}} 0.1' in text
