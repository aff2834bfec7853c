"""One API suite, every engine: the behaviour a client sees cannot drift between them.

Engines (one server per engine for the whole module, one config, one Redis):

- ``inprocess``: the local engine's app (:func:`create_local_app`) under uvicorn in a
  thread of this process: lifespan, background loops and all, no subprocess.
- ``local``: ``bandit-serve run --engine local --workers 2``, a real subprocess (two
  uvicorn workers sharing Redis; each must run its own background loops).
- ``ray``: ``bandit-serve run`` (Ray Serve, one router replica), for the tests marked
  with :data:`ALL`; it costs a Ray start (about 30 s here), once.

Every test runs on ``inprocess`` and ``local``; those in :data:`ALL` also on ``ray``
(predict and reward exactly once, the model's failure, auth, the sweeper, guardrails,
an arm with ``placement: router``, the operators' actions and the read routes, 404/409/
422 answers, sticky units). Each engine gets experiments of its own.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from bandit_serve.config import key_digest
from tests.conftest import delete_experiment_keys, free_port, serve_in_thread, start_run

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ["inprocess", "local"]
ALL = [*LOCAL, "ray"]
START_SECONDS = {"inprocess": 30.0, "local": 120.0, "ray": 300.0}


def where(inputs: Any) -> dict[str, Any]:
    """A model that says which process answered (a placement test's evidence)."""
    return {"pid": os.getpid(), "inputs": inputs}


def fails(inputs: Any) -> Any:
    raise RuntimeError("this model always fails")


class Engine:
    """A running server: its base URL, its experiments' names and its keys."""

    def __init__(self, kind: str, base: str, prefix: str, keys: dict[str, str]) -> None:
        self.kind = kind
        self.base = base
        self.prefix = prefix
        self.keys = keys
        self.client = httpx.Client(
            base_url=base, timeout=60, headers={"Authorization": f"Bearer {keys['all']}"}
        )

    def exp(self, short: str) -> str:
        return f"{self.prefix}-{short}"

    def predict(self, short: str, inputs: Any = 1, **extra: Any) -> httpx.Response:
        body = {"inputs": inputs, **extra}
        return self.client.post(f"/v1/experiments/{self.exp(short)}/predict", json=body)

    def reward(self, short: str, event_id: str, reward: float) -> httpx.Response:
        body = {"event_id": event_id, "reward": reward}
        return self.client.post(f"/v1/experiments/{self.exp(short)}/rewards", json=body)

    def arms(self, short: str) -> dict[str, dict[str, Any]]:
        r = self.client.get(f"/v1/experiments/{self.exp(short)}")
        assert r.status_code == 200, r.text
        return {a["name"]: a for a in r.json()["arms"]}

    def wait_for(self, what: str, ready: Callable[[], bool], seconds: float = 60) -> None:
        """Poll ``ready`` until it holds (a background loop's work), or fail naming it."""
        deadline = time.monotonic() + seconds
        while not ready():
            if time.monotonic() > deadline:
                pytest.fail(f"{self.kind}: {what} did not happen within {seconds:.0f} s")
            time.sleep(0.2)


def config(prefix: str, keys: dict[str, str]) -> dict[str, Any]:
    me = "tests.test_engines"

    def exp(short: str, arms: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
        return {
            "name": f"{prefix}-{short}",
            "arms": arms,
            "policy": {"kind": "thompson"},
            "reward": {"kind": "bernoulli", "wait_seconds": 600},
            "sync_interval_seconds": 0.2,
            **more,
        }

    echo = [
        {"name": "a", "model": "tests.fixtures.models:echo_a"},
        {"name": "b", "model": "tests.fixtures.models:echo_b"},
    ]
    return {
        "auth": {
            "keys": [
                {
                    "name": "all",
                    "sha256": key_digest(keys["all"]),
                    "scopes": ["predict:*", "reward:*", "read", "admin"],
                },
                {"name": "reader", "sha256": key_digest(keys["reader"]), "scopes": ["read"]},
            ]
        },
        "experiments": [
            exp("basic", echo),
            exp(
                "failing",
                [
                    {"name": "ok", "model": "tests.fixtures.models:echo_a"},
                    {"name": "bad", "model": f"{me}:fails"},
                ],
                policy={"kind": "fixed", "weights": [0.0, 1.0]},
            ),
            exp(
                "expiring",
                echo,
                reward={"kind": "bernoulli", "wait_seconds": 1, "on_expiry": "default"},
            ),
            exp(
                "guarded",
                [
                    {"name": "ok", "model": "tests.fixtures.models:echo_a"},
                    {"name": "bad", "model": f"{me}:fails"},
                ],
                policy={"kind": "fixed", "weights": [0.5, 0.5]},
                guardrails={
                    "rules": [{"metric": "error_rate", "max_increase": 0.02}],
                    "min_calls": 10,
                    "alpha": 0.05,
                    "check_interval_seconds": 0.2,
                },
            ),
            exp(
                "placed",
                [
                    {"name": "replica", "model": f"{me}:where"},
                    {"name": "router", "model": f"{me}:where", "placement": "router"},
                ],
                policy={"kind": "fixed", "weights": [0.5, 0.5]},
            ),
            exp("sticky", echo, assignment={"by": "unit_id", "salt": "engines"}),
            exp("ops", echo, policy={"kind": "fixed"}),
        ],
    }


def _wait_healthy(base: str, proc: subprocess.Popen[str] | None, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    out = ""
    if proc is not None:
        _stop(proc)
        out = proc.stdout.read() if proc.stdout is not None else ""
    pytest.fail(f"the server at {base} did not come up within {seconds:.0f} s:\n{out[-3000:]}")


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM to the supervisor we started; SIGKILL to its session if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def engine(
    request: pytest.FixtureRequest, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    kind: str = request.param
    prefix = f"eng-{kind}-{uuid.uuid4().hex[:8]}"
    keys = {"all": secrets.token_urlsafe(16), "reader": secrets.token_urlsafe(16)}
    cfg = config(prefix, keys)
    path = tmp_path_factory.mktemp(kind) / "engines.yaml"
    path.write_text(yaml.safe_dump(cfg))
    try:
        if kind == "inprocess":
            from bandit_serve.service.local import create_local_app
            from bandit_serve.service.options import AppArgs

            app = create_local_app(AppArgs(config=str(path), redis_url=redis_url))
            with serve_in_thread(app) as base:
                yield Engine(kind, base, prefix, keys)
            return
        port = free_port()
        extra = ["--engine", "local", "--workers", "2"] if kind == "local" else []
        if kind == "ray":
            extra = ["--router-replicas", "1"]
        proc = start_run(
            path, "--port", str(port), "--redis-url", redis_url, *extra, cwd=path.parent
        )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(base, proc, START_SECONDS[kind])
            yield Engine(kind, base, prefix, keys)
        finally:
            _stop(proc)
    finally:
        for e in cfg["experiments"]:
            delete_experiment_keys(redis_url, e["name"])


def engines(*kinds: str) -> pytest.MarkDecorator:
    """Run a test on these engines (one module-scoped server per engine, shared)."""
    return pytest.mark.parametrize("engine", kinds, indirect=True)


# -- every engine -------------------------------------------------------------------------


@engines(*ALL)
def test_predict_logs_and_rewards_count_exactly_once(engine: Engine) -> None:
    seen = {"a": 0, "b": 0}
    ids = []
    for i in range(20):
        r = engine.predict("basic", [i])
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["prediction"] == {"arm": body["arm"], "inputs": [i]}
        assert 0 < body["propensity"] <= 1 and body["in_experiment"] is True
        seen[body["arm"]] += 1
        ids.append(body["event_id"])
    arms = engine.arms("basic")
    assert {a: arms[a]["pulls"] for a in seen} == seen  # every returned id is in Redis
    assert sum(a["pending"] for a in arms.values()) == 20
    first = engine.reward("basic", ids[0], 1)
    assert (first.status_code, first.json()["status"]) == (200, "applied")
    again = engine.reward("basic", ids[0], 1)
    assert (again.status_code, again.json()["status"]) == (409, "duplicate")
    forged = engine.reward("basic", ids[1][:-4] + "abcd", 1)
    assert (forged.status_code, forged.json()["status"]) == (404, "unknown")
    batch = engine.client.post(
        f"/v1/experiments/{engine.exp('basic')}/rewards",
        json={"rewards": [{"event_id": e, "reward": 0} for e in ids[1:]]},
    )
    assert batch.status_code == 200 and batch.json()["counts"]["applied"] == 19
    arms = engine.arms("basic")
    assert sum(a["rewards"] for a in arms.values()) == 20
    assert sum(a["pending"] for a in arms.values()) == 0


@engines(*ALL)
def test_a_failing_model_is_502_and_counted_as_its_error(engine: Engine) -> None:
    r = engine.predict("failing")
    assert r.status_code == 502, r.text
    body = r.json()
    assert body["arm"] == "bad" and body["error_id"] and "failed" in body["detail"]
    bad = engine.arms("failing")["bad"]
    assert bad["errors"] >= 1 and bad["pending"] == 0


@engines(*ALL)
def test_keys_and_scopes(engine: Engine) -> None:
    url = f"{engine.base}/v1/experiments/{engine.exp('basic')}"
    assert httpx.post(f"{url}/predict", json={"inputs": 1}).status_code == 401
    reader = {"Authorization": f"Bearer {engine.keys['reader']}"}
    assert httpx.post(f"{url}/predict", json={"inputs": 1}, headers=reader).status_code == 403
    assert httpx.get(url, headers=reader).status_code == 200
    assert httpx.get(f"{engine.base}/healthz").status_code == 200  # always open
    metrics = httpx.get(f"{engine.base}/metrics")
    assert metrics.status_code == 200 and "bandit_decisions_total" in metrics.text


@engines(*ALL)
def test_the_sweeper_runs_in_every_engine(engine: Engine) -> None:
    """Decisions whose wait window passed get the default reward from the background
    sweeper (with two local workers, from either)."""
    for _ in range(3):
        assert engine.predict("expiring").status_code == 200

    def settled() -> bool:
        return sum(int(a["defaulted"]) for a in engine.arms("expiring").values()) == 3

    engine.wait_for("settling 3 expired decisions", settled)
    assert sum(a["pending"] for a in engine.arms("expiring").values()) == 0


@engines(*ALL)
def test_guardrails_roll_back_a_failing_arm(engine: Engine) -> None:
    def rolled_back() -> bool:
        engine.predict("guarded")  # traffic while we wait: 200 from ok, 502 from bad
        return bool(engine.arms("guarded")["bad"]["status"] == "rolled_back")

    engine.wait_for("the guardrail's rollback of 'bad'", rolled_back, seconds=120)
    events = engine.client.get(f"/v1/experiments/{engine.exp('guarded')}/events").json()
    assert [e["kind"] for e in events["events"]].count("rollback") == 1
    # The status is read from Redis; every router or worker obeys it at its next snapshot
    # refresh (sync_interval_seconds, 0.2 s here): 2 s leave room for a loaded CI machine.
    time.sleep(2.0)
    for _ in range(10):
        r = engine.predict("guarded")
        assert r.status_code == 200 and r.json()["arm"] == "ok"


@engines(*ALL)
def test_placement(engine: Engine) -> None:
    """On Ray an arm with ``placement: router`` answers from the router's own process,
    the other from a ModelVersion replica; the local engines run both in-process."""
    answered: dict[str, set[bool]] = {"replica": set(), "router": set()}
    for i in range(16):
        r = engine.predict("placed", i)
        assert r.status_code == 200, r.text
        body = r.json()
        same = body["prediction"]["pid"] == int(r.headers["x-bandit-replica"])
        answered[body["arm"]].add(same)
    assert answered["router"] == {True}
    assert answered["replica"] == ({False} if engine.kind == "ray" else {True})


# -- the local engines ----------------------------------------------------------------------


@engines(*ALL)
def test_the_operators_actions_and_the_read_routes(engine: Engine) -> None:
    """Pause, resume, promote, roll back a promoted arm, reset; the audit log, the
    analysis, the time series and the metrics: the same answers on every engine."""
    url = f"/v1/experiments/{engine.exp('ops')}"

    def post(path: str, body: Any = None, **params: str) -> dict[str, Any]:
        r = engine.client.post(f"{url}{path}", json=body, params=params)
        assert r.status_code == 200, r.text
        answer: dict[str, Any] = r.json()
        return answer

    def serving_only(arm: str) -> Callable[[], bool]:
        return lambda: all(engine.predict("ops").json()["arm"] == arm for _ in range(6))

    for i in range(10):
        assert engine.predict("ops", i).status_code == 200
    assert post("/pause", {"reason": "freeze"})["state"] == "paused"
    engine.wait_for("every router sending all traffic to the baseline", serving_only("a"))
    assert post("/pause")["changed"] is False
    assert post("/resume")["state"] == "running"
    assert post("/promote", {"arm": "b"})["arms"] == {"a": "retired", "b": "promoted"}
    engine.wait_for("every router sending all traffic to b", serving_only("b"))
    assert post("/arms/b/rollback", {"reason": "undo"})["arms"] == {
        "a": "active",
        "b": "rolled_back",
    }
    assert engine.client.post(f"{url}/arms/zz/rollback").status_code == 404
    assert engine.client.post(f"{url}/reset").status_code == 422  # no confirm
    events = engine.client.get(f"{url}/events").json()["events"]
    kinds = [e["kind"] for e in events if e["kind"] != "config_changed"]
    assert kinds == ["pause", "resume", "promote", "rollback"]
    assert events[-1]["reason"] == "undo" and events[-1]["actor"] == "all"
    analysis = engine.client.get(f"{url}/analysis").json()
    assert [a["name"] for a in analysis["arms"]] == ["a", "b"]
    series = engine.client.get(f"{url}/timeseries", params={"window_seconds": 600}).json()
    pulls = sum(b["arms"][a]["pulls"] for b in series["buckets"] for a in ("a", "b"))
    assert pulls == sum(a["pulls"] for a in engine.arms("ops").values()) >= 10
    metrics = engine.client.get("/metrics").text
    assert (
        f'bandit_arm_status{{arm="b",experiment="{engine.exp("ops")}",status="rolled_back"}} 1.0'
        in metrics
    )
    epoch = engine.client.get(url).json()["epoch"]
    post("/reset", confirm=engine.exp("ops"))
    view = engine.client.get(url).json()
    assert view["epoch"] == epoch + 1 and sum(a["pulls"] for a in view["arms"]) == 0
    assert {a["name"]: a["status"] for a in view["arms"]} == {"a": "active", "b": "rolled_back"}


@engines(*ALL)
def test_errors_and_actions(engine: Engine) -> None:
    assert engine.predict("nope").status_code == 404
    r = engine.client.post(f"/v1/experiments/{engine.exp('basic')}/predict", json={})
    assert r.status_code == 422
    url = f"/v1/experiments/{engine.exp('basic')}"
    r = engine.client.post(f"{url}/arms/a/rollback", json={"reason": "baseline"})
    assert r.status_code == 409  # the baseline cannot be rolled back
    r = engine.client.post(f"{url}/arms/b/rollback", json={"reason": "test"})
    assert r.status_code == 200 and r.json()["arms"]["b"] == "rolled_back"
    engine.wait_for(
        "every worker routing to a only",
        lambda: all(engine.predict("basic").json()["arm"] == "a" for _ in range(6)),
    )
    r = engine.client.post(f"{url}/arms/b/restore", json={})
    assert r.status_code == 200 and r.json()["arms"]["b"] == "active"


@engines(*ALL)
def test_sticky_units_keep_their_arm(engine: Engine) -> None:
    first = {}
    for u in range(8):
        r = engine.predict("sticky", u, unit_id=f"unit-{u}")
        assert r.status_code == 200
        first[u] = r.json()["arm"]
    for u in range(8):
        assert engine.predict("sticky", u, unit_id=f"unit-{u}").json()["arm"] == first[u]


@engines("local")
def test_two_workers_share_the_load_and_redis(engine: Engine) -> None:
    """Both worker processes answer (fresh connections, 8 at a time, land on either) and
    every decision either made is in Redis."""
    url = f"{engine.base}/v1/experiments/{engine.exp('basic')}/predict"
    before = sum(a["pulls"] for a in engine.arms("basic").values())
    pids: set[str] = set()

    def one(_: int) -> str:
        r = httpx.post(url, json={"inputs": 0}, headers=engine.client.headers, timeout=60)
        assert r.status_code == 200, r.text
        return r.headers["x-bandit-replica"]

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        for _ in range(5):
            pids |= set(pool.map(one, range(40)))
            if len(pids) == 2:
                break
    assert len(pids) == 2, pids
    assert all(psutil.pid_exists(int(p)) for p in pids)
    total = sum(a["pulls"] for a in engine.arms("basic").values())
    assert total - before >= 40
