"""bandit_serve.client: against a live server (uvicorn, in-memory store), and against a
scripted fake server that answers 503s (with and without the flag, with Retry-After),
drops connections and stalls, to prove the retry rules."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from bandit_serve.client import (
    MAX_REWARD_BATCH,
    ArmSummary,
    AsyncClient,
    AuthError,
    Client,
    Conflict,
    InvalidRequest,
    ModelFailed,
    NotFound,
    RewardStatus,
    ServiceUnavailable,
    parse_retry_after,
)
from bandit_serve.config import AppConfig
from bandit_serve.errors import BanditServeError
from bandit_serve.service.core import BanditService
from bandit_serve.service.http import create_api
from bandit_serve.service.local import LocalModels
from bandit_serve.store import MemoryStore
from tests.conftest import free_port, serve_in_thread

FAST: dict[str, Any] = {
    "backoff": 0.001,
    "seed": 1,
}  # retries wait ~ms: the tests never sleep for long


# -- a live server ------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[str]:
    cfg = AppConfig.model_validate(
        {
            "experiments": [
                {
                    "name": "ab",
                    "arms": [
                        {"name": "v1", "model": "tests.fixtures.models:echo_a"},
                        {"name": "v2", "model": "tests.fixtures.models:echo_b"},
                    ],
                    "policy": {"kind": "fixed"},
                    "reward": {"kind": "bernoulli"},
                },
                {
                    "name": "broken",
                    "arms": [{"name": "only", "model": "tests.fixtures.models:broken"}],
                    "policy": {"kind": "fixed"},
                    "reward": {"kind": "bernoulli"},
                },
            ]
        }
    )
    service = BanditService(cfg, MemoryStore(), LocalModels(cfg), seed=3)
    with serve_in_thread(create_api(lambda: service)) as base:
        yield base


def test_predict_reward_and_reads_against_a_live_server(server: str) -> None:
    with Client(server, **FAST) as c:
        p = c.predict("ab", [1, 2], unit_id="u1", context={"country": "fr"})
        assert p.arm in {"v1", "v2"} and p.propensity == 0.5
        assert p.prediction == {"arm": "a" if p.arm == "v1" else "b", "inputs": [1, 2]}
        first = c.reward("ab", p.event_id, 1.0)
        assert (first.status, first.counted, first.attempts) == (RewardStatus.APPLIED, True, 1)
        again = c.reward("ab", p.event_id, 1.0)
        # a duplicate answer to a first attempt is someone else's reward: not counted by us
        assert again.status is RewardStatus.DUPLICATE and not again.counted
        assert c.reward("ab", "no-such-event", 1.0).status is RewardStatus.UNKNOWN
        bad = c.reward("ab", c.predict("ab", 1).event_id, 7.0)
        assert bad.status is RewardStatus.INVALID and bad.detail and "bounds" in bad.detail

        exp = c.experiment("ab")
        assert exp.name == "ab" and exp.state == "running" and exp.baseline == "v1"
        assert exp.arm(p.arm).rewards == 1 and exp.arm(p.arm).reward_sum == 1.0
        assert sum(a.pulls for a in exp.arms) == 2
        assert exp.arm("v1").posterior.low is not None
        # every typed field is a key the service sends (a rename breaks this), and raw
        # carries the rest (a counter added to the service reaches the client there)
        sent = httpx.get(f"{server}/v1/experiments/ab").json()["arms"]
        typed = {f.name for f in dataclasses.fields(ArmSummary)} - {"raw"}
        for arm, answer in zip(exp.arms, sent, strict=True):
            assert typed <= set(answer), typed - set(answer)
            assert arm.raw == answer and arm.calls == answer["calls"]
        assert [e.name for e in c.experiments()] == ["ab", "broken"]
        rep = c.analysis("ab", baseline="v2", alpha=0.1)
        assert (rep.baseline, rep.alpha, rep.test) == ("v2", 0.1, "two-proportion z-test")
        assert rep.raw["arms"][0]["name"] == "v1" and rep.arm("v2").note == "baseline"
        ts = c.timeseries("ab", window_seconds=600)
        assert ts.arms == ("v1", "v2") and ts.window_seconds == 600
        assert sum(b.arms["v1"].pulls + b.arms["v2"].pulls for b in ts.buckets) == 2


def test_rewards_are_split_into_batches_of_1000_and_answered_in_order(server: str) -> None:
    with Client(server, **FAST) as c:
        ids = [c.predict("ab", i).event_id for i in range(3)]
        items = [(f"missing-{i}", 1.0) for i in range(MAX_REWARD_BATCH + 500)]
        items[0] = (ids[0], 1.0)
        items[MAX_REWARD_BATCH] = (ids[1], 0.0)  # first of the second batch
        items.append((ids[2], 1.0))
        items.append((ids[2], 1.0))
        results = c.rewards("ab", items)  # one request of 1,501 would be refused (422)
        assert [r.event_id for r in results] == [e for e, _ in items]
        statuses = [r.status for r in results]
        assert statuses[0] == statuses[MAX_REWARD_BATCH] == statuses[-2] == RewardStatus.APPLIED
        assert statuses[-1] is RewardStatus.DUPLICATE
        assert statuses.count(RewardStatus.UNKNOWN) == len(items) - 4
        small = c.rewards("ab", [(ids[0], 1.0), ("x", 1.0), ("y", 1.0)], batch_size=2)
        assert [r.status for r in small] == ["duplicate", "unknown", "unknown"]
        assert c.rewards("ab", []) == []
        assert c.experiment("ab").arm("v1").rewards + c.experiment("ab").arm("v2").rewards == 3


def test_refusals_raise_with_the_servers_detail(server: str) -> None:
    with Client(server, **FAST) as c:
        with pytest.raises(NotFound, match="no experiment named 'nope'") as nf:
            c.predict("nope", 1)
        assert nf.value.status == 404 and isinstance(nf.value, LookupError)
        with pytest.raises(NotFound, match="no experiment named 'nope'"):
            c.reward("nope", "1", 1.0)  # a 404 without a reward status is an error
        with pytest.raises(InvalidRequest, match="inputs is required"):
            c.predict("ab", None)
        with pytest.raises(Conflict, match="baseline") as refused:
            c.rollback("ab", "v1")
        assert refused.value.status == 409
        with pytest.raises(InvalidRequest, match=r"confirm=ab"):
            c.reset("ab", confirm="ba")
        with pytest.raises(ModelFailed, match="predict on 'broken': 502 ") as failed:
            c.predict("broken", 1)
        assert failed.value.arm == "only" and failed.value.status == 502
        assert failed.value.detail and failed.value.detail in str(failed.value)
        with pytest.raises(NotFound):
            c.analysis("ab", baseline="zz")
        for err in (nf.value, refused.value, failed.value):
            assert isinstance(err, BanditServeError)


def test_actions_and_the_audit_log(server: str) -> None:
    with Client(server, **FAST) as c:
        done = c.rollback("ab", "v2", reason="too slow")
        assert done.changed and done.arms == {"v1": "active", "v2": "rolled_back"}
        assert not c.rollback("ab", "v2").changed
        assert c.restore("ab", "v2").arms["v2"] == "active"
        assert c.pause("ab").state == "paused"
        assert c.resume("ab").state == "running"
        assert c.reset("ab", confirm="ab").changed
        promoted = c.promote("ab", "v2", reason="wins")
        assert promoted.state == "promoted" and promoted.arms["v1"] == "retired"
        events = c.events("ab")
        kinds = [e.kind for e in events if e.kind != "config_changed"]
        assert kinds == ["rollback", "restore", "pause", "resume", "reset", "promote"]
        rollback = next(e for e in events if e.kind == "rollback")
        assert (rollback.arm, rollback.actor, rollback.reason) == ("v2", "operator", "too slow")
        later = c.events("ab", since=rollback.id, limit=1)
        assert [e.kind for e in later] == ["restore"]


async def test_the_async_client_does_the_same(server: str) -> None:
    async with AsyncClient(server, **FAST) as c:
        preds = await asyncio.gather(*(c.predict("ab", i) for i in range(20)))
        assert len({p.event_id for p in preds}) == 20
        results = await c.rewards("ab", [(p.event_id, 1.0) for p in preds], batch_size=7)
        assert all(r.counted for r in results)
        one = await c.reward("ab", preds[0].event_id, 1.0)
        assert one.status is RewardStatus.DUPLICATE
        exp = await c.experiment("ab")
        assert sum(a.rewards for a in exp.arms) == 20
        assert (await c.analysis("ab")).experiment == "ab"
        assert (await c.pause("ab")).state == "paused"
        assert [e.kind for e in await c.events("ab")][-1] == "pause"
        with pytest.raises(NotFound):
            await c.experiment("nope")


# -- a scripted fake server ----------------------------------------------------------------

Step = Callable[[dict[str, Any]], Awaitable[Response | None]]


@dataclass
class Fake:
    """Answers from a script per route ("predict", "rewards"), then normally.

    A step returns a response, or None to drop the connection mid-answer. ``applied``
    is the fake's store: rewards it has applied (once each)."""

    script: dict[str, deque[Step]] = field(default_factory=dict)
    hits: list[tuple[str, float, dict[str, Any]]] = field(default_factory=list)
    applied: dict[str, float] = field(default_factory=dict)
    key: str | None = None

    def plan(self, route: str, *steps: Step) -> None:
        self.script.setdefault(route, deque()).extend(steps)

    def count(self, route: str) -> int:
        return sum(1 for r, _, _ in self.hits if r == route)

    def times(self, route: str) -> list[float]:
        return [t for r, t, _ in self.hits if r == route]

    def apply(self, body: dict[str, Any]) -> Response:
        """The normal answer to a reward request (single or batch)."""
        items = body.get("rewards") or [body]
        statuses = []
        for it in items:
            if it["event_id"] in self.applied:
                statuses.append("duplicate")
            else:
                self.applied[it["event_id"]] = it["reward"]
                statuses.append("applied")
        if "rewards" in body:
            return JSONResponse(
                {
                    "results": [
                        {"event_id": it["event_id"], "status": s}
                        for it, s in zip(items, statuses, strict=True)
                    ]
                }
            )
        code = 200 if statuses[0] == "applied" else 409
        return JSONResponse({"event_id": body["event_id"], "status": statuses[0]}, code)


def answer(status: int, body: Any = None, retry_after: str | None = "0") -> Step:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}

    async def step(_: dict[str, Any]) -> Response:
        if isinstance(body, str):
            return PlainTextResponse(body, status, headers=headers)
        return JSONResponse(body if body is not None else {"detail": "busy"}, status, headers)

    return step


def drop() -> Step:
    async def step(_: dict[str, Any]) -> None:
        return None

    return step


def stall(seconds: float) -> Step:
    async def step(_: dict[str, Any]) -> Response:
        await asyncio.sleep(seconds)
        return JSONResponse({"detail": "too late"}, 500)

    return step


def fake_app(fake: Fake) -> Any:
    api = FastAPI()

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/v1/experiments")
    async def experiments(request: Request) -> Response:
        if fake.key and request.headers.get("authorization") != f"Bearer {fake.key}":
            return JSONResponse({"detail": "a valid API key is needed"}, 401)
        return JSONResponse({"experiments": []})

    async def route(scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"]
        name = "predict" if path.endswith("/predict") else "rewards"
        raw = b""
        while True:
            msg = await receive()
            raw += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        body = json.loads(raw or b"{}")
        fake.hits.append((name, time.monotonic(), body))
        steps = fake.script.get(name)
        if steps:
            response = await steps.popleft()(body)
        elif name == "predict":
            response = JSONResponse(
                {"event_id": f"e{len(fake.hits)}", "arm": "a", "prediction": 1, "propensity": 1.0}
            )
        else:
            response = fake.apply(body)
        if response is None:  # drop: start an answer, never finish it
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", b"99")],
                }
            )
            await send({"type": "http.response.body", "body": b"{", "more_body": True})
            return
        await response(scope, receive, send)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/experiments/"):
            await route(scope, receive, send)
        else:
            await api(scope, receive, send)

    return app


@pytest.fixture
def fake() -> Iterator[tuple[Fake, str]]:
    f = Fake()
    with serve_in_thread(fake_app(f)) as base:
        yield f, base


def applied_then(step: Step, fake: Fake) -> Step:
    """Apply the reward, then answer with ``step`` (the client cannot know it was applied)."""

    async def both(body: dict[str, Any]) -> Response | None:
        fake.apply(body)
        return await step(body)

    return both


def test_a_reward_retried_after_a_503_and_answered_duplicate_is_counted_once(
    fake: tuple[Fake, str],
) -> None:
    f, base = fake
    f.plan("rewards", applied_then(answer(503, {"detail": "timeout in Redis"}), f))
    with Client(base, **FAST) as c:
        r = c.reward("exp", "e1", 1.0)
    assert r.status is RewardStatus.DUPLICATE and r.retried and r.attempts == 2
    assert r.counted
    assert f.count("rewards") == 2 and f.applied == {"e1": 1.0}


def test_a_reward_is_retried_after_a_dropped_connection_and_a_timeout(
    fake: tuple[Fake, str],
) -> None:
    f, base = fake
    f.plan("rewards", applied_then(drop(), f), applied_then(stall(1.0), f))
    with Client(base, timeout=0.3, **FAST) as c:
        r = c.reward("exp", "e1", 1.0)
        assert (r.status, r.counted, r.attempts) == (RewardStatus.DUPLICATE, True, 3)
        f.plan("rewards", applied_then(drop(), f))
        batch = c.rewards("exp", [("e2", 1.0), ("e3", 0.0), ("e1", 1.0)])
    assert [b.status for b in batch] == ["duplicate"] * 3
    assert all(b.retried and b.attempts == 2 for b in batch)
    # e1 was applied before this batch: its duplicate is counted too (one reward either way)
    assert f.applied == {"e1": 1.0, "e2": 1.0, "e3": 0.0}


def test_a_duplicate_after_a_503_that_recorded_nothing_is_not_ours(
    fake: tuple[Fake, str],
) -> None:
    f, base = fake
    f.applied["e1"] = 0.0  # someone else rewarded it
    f.plan("rewards", answer(503, {"detail": "no Redis", "may_have_been_recorded": False}))
    with Client(base, **FAST) as c:
        r = c.reward("exp", "e1", 1.0)
    assert r.status is RewardStatus.DUPLICATE and r.attempts == 2 and not r.counted


def test_retry_after_is_honoured_and_a_long_one_is_not_waited_for(fake: tuple[Fake, str]) -> None:
    f, base = fake
    f.plan("rewards", answer(503, retry_after="0.3"))
    with Client(base, **FAST) as c:
        assert c.reward("exp", "e1", 1.0).counted
        first, second = f.times("rewards")
        assert second - first >= 0.3
        f.plan("rewards", answer(503, retry_after="120"))
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable, match="retry after 120 s") as err:
            c.reward("exp", "e2", 1.0)
        assert time.monotonic() - started < 5 and err.value.attempts == 1


def test_rewards_give_up_after_the_retries_and_say_it_may_have_been_recorded(
    fake: tuple[Fake, str],
) -> None:
    f, base = fake
    f.plan("rewards", *[answer(503) for _ in range(3)])
    with (
        Client(base, retries=2, **FAST) as c,
        pytest.raises(ServiceUnavailable, match="after 3 attempts") as err,
    ):
        c.reward("exp", "e1", 1.0)
    assert err.value.status == 503 and err.value.may_have_been_recorded
    assert "sending it again is safe" in str(err.value) and f.count("rewards") == 3


def test_a_predict_is_retried_only_when_nothing_can_have_been_recorded(
    fake: tuple[Fake, str],
) -> None:
    f, base = fake
    f.plan(
        "predict",
        answer(503, {"detail": "store down", "may_have_been_recorded": False}),
        answer(503, "<html>queue full</html>"),  # Ray Serve's proxy: not JSON
    )
    with Client(base, **FAST) as c:
        p = c.predict("exp", 1)
        assert f.count("predict") == 3 and p.event_id == "e3"
        for step in (
            answer(503, {"detail": "unsure", "may_have_been_recorded": True}),
            answer(503, {"detail": "an older server: no flag"}),
            answer(504, "gateway timeout"),
            drop(),
        ):
            f.plan("predict", step)
            before = f.count("predict")
            with pytest.raises(ServiceUnavailable, match="not retried") as err:
                c.predict("exp", 1)
            assert err.value.may_have_been_recorded and err.value.attempts == 1
            assert f.count("predict") == before + 1
            assert not f.script["predict"]


def test_a_predict_is_never_retried_after_a_timeout(fake: tuple[Fake, str]) -> None:
    f, base = fake
    f.plan("predict", stall(1.0))
    with (
        Client(base, timeout=0.2, **FAST) as c,
        pytest.raises(ServiceUnavailable, match="ReadTimeout") as err,
    ):
        c.predict("exp", 1)
    assert err.value.may_have_been_recorded and err.value.status is None
    assert f.count("predict") == 1


def test_a_refused_connection_is_retried_for_every_call_and_recorded_nothing() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Client(url, retries=2, **FAST) as c:
        with pytest.raises(ServiceUnavailable, match="after 3 attempts: ConnectError") as err:
            c.predict("exp", 1)
        assert err.value.attempts == 3 and not err.value.may_have_been_recorded
        assert "nothing was recorded" in str(err.value)
        with pytest.raises(ServiceUnavailable) as err2:
            c.pause("exp")
        assert err2.value.attempts == 3
    assert isinstance(err.value, ConnectionError) and isinstance(err.value, BanditServeError)


async def test_the_async_client_follows_the_same_rules(fake: tuple[Fake, str]) -> None:
    f, base = fake
    f.plan("rewards", applied_then(drop(), f))
    f.plan("predict", answer(503, "queue full"), stall(1.0))
    async with AsyncClient(base, timeout=0.3, **FAST) as c:
        r = await c.reward("exp", "e1", 1.0)
        assert r.counted and r.attempts == 2
        with pytest.raises(ServiceUnavailable, match="ReadTimeout"):
            await c.predict("exp", 1)  # first a 503 (retried), then a timeout (not)
    assert f.count("predict") == 2


def test_the_api_key_is_sent_as_a_bearer_header(fake: tuple[Fake, str]) -> None:
    f, base = fake
    f.key = "s3cret"
    with Client(base, **FAST) as c:
        with pytest.raises(AuthError, match="a valid API key is needed") as err:
            c.experiments()
        assert err.value.status == 401 and isinstance(err.value, PermissionError)
    with Client(base, api_key="s3cret", **FAST) as c:
        assert c.experiments() == []


def test_retry_after_parsing() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after("nan") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0


def test_importing_the_client_loads_neither_ray_nor_fastapi_nor_scipy() -> None:
    code = (
        "import sys, bandit_serve.client\n"
        "heavy = ('ray', 'fastapi', 'scipy', 'starlette', 'sklearn', 'bandit_serve.service')\n"
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
