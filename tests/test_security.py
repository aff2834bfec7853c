"""Who gets in, and what bad input does: the auth matrix, body and nesting caps, strict
types, answers that never echo or crash, and a corpus of bad requests that changes
nothing (real Redis, the HTTP API without Ray)."""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from bandit_serve.config import AppConfig, key_digest
from bandit_serve.store import RedisStore
from tests.conftest import ManualClock, delete_experiment_keys
from tests.test_service_api import Harness, app_config

KEYS = {
    "web": ["predict:EXP"],
    "labeler": ["reward:EXP"],
    "ops": ["admin"],
    "reader": ["read"],
    "stranger": ["predict:other", "reward:other"],
    "everything": ["predict:*", "reward:*", "read", "admin"],
}


def secured(name: str, **auth: Any) -> AppConfig:
    raw = app_config(name, {"a": "echo_a", "b": "echo_b"}).model_dump()
    other = app_config("other", {"a": "echo_a"}).model_dump()["experiments"][0]
    raw["experiments"].append(other)
    raw["auth"] = {
        "keys": [
            {
                "name": k,
                "sha256": key_digest(f"key-{k}"),
                "scopes": [s.replace("EXP", name) for s in scopes],
            }
            for k, scopes in KEYS.items()
        ],
        **auth,
    }
    return AppConfig.model_validate(raw)


@pytest.fixture
async def h(redis_url: str, exp_name: str, clock: ManualClock) -> AsyncIterator[Harness]:
    harness = Harness(secured(exp_name), RedisStore.from_url(redis_url, clock=clock))
    yield harness
    await harness.close()
    delete_experiment_keys(redis_url, exp_name)
    delete_experiment_keys(redis_url, "other")


def bearer(key: str | None) -> dict[str, str]:
    return {} if key is None else {"Authorization": f"Bearer key-{key}"}


async def call(
    h: Harness, method: str, path: str, key: str | None, body: Any = None, **kw: Any
) -> httpx.Response:
    headers = {**bearer(key), **kw.pop("headers", {})}
    if method == "GET":
        return await h.client.get(path, headers=headers, **kw)
    return await h.client.post(path, json=body, headers=headers, **kw)


async def test_every_route_by_key(h: Harness, exp_name: str) -> None:
    base = f"/v1/experiments/{exp_name}"
    p = await call(h, "POST", f"{base}/predict", "web", {"inputs": 1})
    assert p.status_code == 200
    event = p.json()["event_id"]
    routes: list[tuple[str, str, Any, str]] = [  # method, path, body, the scope it needs
        ("POST", f"{base}/predict", {"inputs": 1}, "predict"),
        ("POST", f"{base}/rewards", {"event_id": event, "reward": 1}, "reward"),
        ("GET", "/v1/experiments", None, "read"),
        ("GET", base, None, "read"),
        ("GET", f"{base}/analysis", None, "read"),
        ("GET", f"{base}/timeseries", None, "read"),
        ("GET", f"{base}/events", None, "read"),
        ("GET", "/openapi.json", None, "read"),
        ("GET", "/docs", None, "read"),
        ("POST", f"{base}/pause", None, "admin"),
        ("POST", f"{base}/resume", None, "admin"),
        ("POST", f"{base}/arms/b/rollback", None, "admin"),
        ("POST", f"{base}/arms/b/restore", None, "admin"),
        ("POST", f"{base}/promote", {"arm": "b"}, "admin"),
        ("POST", f"{base}/reset?confirm={exp_name}", None, "admin"),
        ("GET", "/healthz", None, "open"),
        ("GET", "/metrics", None, "open"),
        ("GET", "/dashboard", None, "open"),
    ]
    allowed = {
        "web": {"predict"},
        "labeler": {"reward"},
        "ops": {"admin"},
        "reader": {"read"},
        "stranger": set(),
        "everything": {"predict", "reward", "read", "admin"},
    }
    for (method, path, body, needs), key in itertools.product(routes, [None, "bad", *KEYS]):
        r = await call(h, method, path, key, body)
        if needs == "open":
            want = {200}
        elif key is None or key == "bad":
            want = {401}
        elif needs in allowed[key]:
            want = {200, 409}  # a second reward for the same event is a duplicate
        else:
            want = {403}
        assert r.status_code in want, (method, path, key, r.status_code, r.text[:200])
        if r.status_code == 401:
            assert r.headers["www-authenticate"].startswith("Bearer")
        if r.status_code in (401, 403):
            assert "key-" not in r.text  # no key material in answers
    # the audit log names the key that acted (ops came first; the repeats changed nothing
    # but a reset, which is a fresh start each time)
    events = (await call(h, "GET", f"{base}/events", "reader")).json()["events"]
    acted = [(e["kind"], e["actor"]) for e in events if e["kind"] != "config_changed"]
    assert acted == [
        ("pause", "ops"),
        ("resume", "ops"),
        ("rollback", "ops"),
        ("restore", "ops"),
        ("promote", "ops"),
        ("reset", "ops"),
        ("reset", "everything"),
    ]


async def test_protected_metrics_need_read(
    redis_url: str, exp_name: str, clock: ManualClock
) -> None:
    cfg = secured(exp_name, protect_metrics=True)
    h = Harness(cfg, RedisStore.from_url(redis_url, clock=clock))
    try:
        assert (await call(h, "GET", "/metrics", None)).status_code == 401
        assert (await call(h, "GET", "/metrics", "web")).status_code == 403
        assert (await call(h, "GET", "/metrics", "reader")).status_code == 200
        assert (await call(h, "GET", "/healthz", None)).status_code == 200
    finally:
        await h.close()
        delete_experiment_keys(redis_url, exp_name)


async def test_a_key_of_another_experiment_changes_nothing(h: Harness, exp_name: str) -> None:
    base = f"/v1/experiments/{exp_name}"
    before = (await call(h, "GET", base, "reader")).json()
    p = (await call(h, "POST", f"{base}/predict", "web", {"inputs": 1})).json()
    for key in ("stranger", "web", "reader", "ops"):
        r = await call(h, "POST", f"{base}/rewards", key, {"event_id": p["event_id"], "reward": 1})
        assert r.status_code == 403
    after = (await call(h, "GET", base, "reader")).json()
    assert [a["rewards"] for a in after["arms"]] == [a["rewards"] for a in before["arms"]]


async def test_bodies_over_the_cap_are_413_before_parsing(h: Harness, exp_name: str) -> None:
    url = f"/v1/experiments/{exp_name}/predict"
    big = b'{"inputs": "' + b"x" * (1024 * 1024) + b'"}'
    r = await h.client.post(
        url, content=big, headers={**bearer("web"), "content-type": "application/json"}
    )
    assert r.status_code == 413 and len(r.content) < 200

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: streamed
        yield b'{"inputs": "'
        for _ in range(20):
            yield b"y" * 65536
        yield b'"}'

    r = await h.client.post(
        url, content=chunks(), headers={**bearer("web"), "content-type": "application/json"}
    )
    assert r.status_code == 413 and len(r.content) < 200
    ok = await call(h, "POST", url, "web", {"inputs": "z" * 1000})
    assert ok.status_code == 200


async def test_answers_never_echo_and_never_break(h: Harness, exp_name: str) -> None:
    base = f"/v1/experiments/{exp_name}"
    huge = "q" * 500_000
    raw_cases = [
        ("predict", json.dumps({"inputs": 1, "unit_id": huge})),
        ("predict", json.dumps({"inputs": 1, "colour": huge})),
        ("predict", '{"inputs": 1, "unit_id": "\\ud800"}'),
        ("predict", '{"inputs": 1, "\\ud800": 1}'),
        ("rewards", '{"event_id": "\\ud800", "reward": 1}'),
        ("rewards", json.dumps({"event_id": "x", "reward": huge})),
        ("rewards", '{"event_id": "x", "reward": "1"}'),
        ("rewards", '{"event_id": "x", "reward": true}'),
        ("predict", "[" * 100 + "]" * 100),
        ("predict", '{"inputs": ' + "[" * 40 + "1" + "]" * 40 + "}"),
    ]
    key = {"predict": "web", "rewards": "labeler"}
    for route, raw in raw_cases:
        r = await h.client.post(
            f"{base}/{route}",
            content=raw.encode(),
            headers={**bearer(key[route]), "content-type": "application/json"},
        )
        assert r.status_code == 422, (raw[:80], r.status_code, r.text[:200])
        assert len(r.content) < 2000 and "qqqq" not in r.text
        r.json()  # valid JSON, whatever the input held
    # a context is not used for routing: odd strings in it are carried, not refused
    r = await h.client.post(
        f"{base}/predict",
        content=b'{"inputs": "\\udfff", "context": {"\\udfff": "\\ud800"}}',
        headers={**bearer("web"), "content-type": "application/json"},
    )
    assert r.status_code == 200 and r.json()["prediction"]["inputs"] == "\udfff"


async def test_a_bad_input_corpus_gets_4xx_and_changes_nothing(h: Harness, exp_name: str) -> None:
    """More than 150 malformed requests across every route: never a 5xx, and the
    experiment's state is the same before and after."""
    base = f"/v1/experiments/{exp_name}"
    p = (await call(h, "POST", f"{base}/predict", "web", {"inputs": 1})).json()
    before = (await call(h, "GET", base, "reader")).json()
    events_before = (await call(h, "GET", f"{base}/events", "reader")).json()
    values: list[Any] = [
        None,
        True,
        -1,
        1e308,
        "",
        "x" * 600,
        [],
        {},
        [None],
        {"a": None},
        "NaN",
        "\u0000",
        "é",
        "🙂" * 50,
    ]

    def strings_only(v: Any) -> bool:  # a field that takes any short string
        return isinstance(v, str) and 0 < len(v) <= 256

    cases: list[tuple[str, str, Any, str]] = []
    for v in values:
        if not strings_only(v) and v is not None:
            cases.append(("POST", f"{base}/predict", {"inputs": 1, "unit_id": v}, "web"))
        if not isinstance(v, dict) and v is not None:
            cases.append(("POST", f"{base}/predict", {"inputs": 1, "context": v}, "web"))
        if v is not None and v != []:  # an empty batch is a valid no-op
            cases.append(("POST", f"{base}/rewards", {"rewards": v}, "labeler"))
        cases += [
            ("POST", f"{base}/rewards", {"event_id": v, "reward": 1}, "labeler"),
            ("POST", f"{base}/rewards", {"event_id": p["event_id"], "reward": str(v)}, "labeler"),
            ("POST", f"{base}/rewards", {"rewards": [{"event_id": v, "reward": v}]}, "labeler"),
            ("POST", f"{base}/promote", {"arm": v if v is not None else 1}, "ops"),
            ("POST", f"{base}/pause", {"reason": v if not isinstance(v, str) else v * 600}, "ops")
            if v != ""
            else ("POST", f"{base}/pause", {"reason": 1}, "ops"),
            ("POST", f"{base}/arms/{quote(str(v)[:20], safe='') or 'x'}/rollback", None, "ops"),
            ("GET", f"{base}/analysis?alpha={quote(str(v))}", None, "reader"),
            ("GET", f"{base}/events?since={quote(str(v)[:30])}", None, "reader"),
            ("GET", f"{base}/timeseries?window_seconds={quote(str(v))}", None, "reader"),
            ("POST", f"{base}/predict", {"inputs": v, "colour": v}, "web"),
        ]
    cases += [
        ("POST", f"{base}/predict", {}, "web"),
        ("POST", f"{base}/predict", {"inputs": None}, "web"),
        (
            "POST",
            f"{base}/predict",
            {"inputs": 1, "context": {str(i): i for i in range(65)}},
            "web",
        ),
        ("POST", f"{base}/rewards", {"event_id": "f" * 32, "reward": 1}, "labeler"),
        (
            "POST",
            f"{base}/rewards",
            {"rewards": [{"event_id": "x", "reward": 1}] * 1001},
            "labeler",
        ),
        ("POST", f"{base}/reset", None, "ops"),
        ("POST", f"{base}/reset?confirm=nope", None, "ops"),
        ("POST", f"{base}/arms/a/rollback", None, "ops"),  # the baseline
        ("POST", "/v1/experiments/nope/predict", {"inputs": 1}, "everything"),
        ("GET", "/v1/experiments/nope", None, "reader"),
        ("GET", f"{base}/analysis?baseline=zz", None, "reader"),
        ("GET", f"{base}/events?limit=0", None, "reader"),
        ("GET", f"{base}/events?limit=1001", None, "reader"),
    ]
    assert len(cases) >= 150
    statuses = []
    odd = []
    for method, path, body, key in cases:
        r = await call(h, method, path, key, body)
        statuses.append(r.status_code)
        if not 400 <= r.status_code < 500:
            odd.append((method, path, str(body)[:60], r.status_code))
        assert r.status_code < 500, (method, path, body, r.status_code, r.text[:200])
    after = (await call(h, "GET", base, "reader")).json()
    events_after = (await call(h, "GET", f"{base}/events", "reader")).json()
    assert after == before
    assert events_after == events_before
    assert not odd, odd


async def test_redis_at_maxmemory_is_a_clear_503_and_nothing_half_written(
    own_redis: Any, exp_name: str
) -> None:
    """At maxmemory (noeviction) the scripts are refused whole, before any write: the
    client gets 503 with Retry-After, and the counts are what they were."""
    import redis as sync_redis

    from bandit_serve.store import RedisStore

    store = RedisStore.from_url(own_redis.url, timeout=2.0)
    h = Harness(app_config(exp_name, {"a": "echo_a", "b": "echo_b"}), store)
    admin = sync_redis.Redis.from_url(own_redis.url)
    try:
        ok = (await h.predict(exp_name)).json()
        before = await store.snapshot(exp_name)
        used = int(admin.info("memory")["used_memory"])
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", str(used + 64 * 1024))
        filler = 0
        with contextlib.suppress(sync_redis.ResponseError):  # OOM: full
            while filler < 100_000:
                admin.set(f"filler:{filler}", "x" * 1024)
                filler += 1
        r = await h.predict(exp_name)
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert "127.0.0.1" not in r.text and r.json()["error_id"]
        r = await h.client.post(
            f"/v1/experiments/{exp_name}/rewards", json={"event_id": ok["event_id"], "reward": 1}
        )
        assert r.status_code == 503
        assert await store.snapshot(exp_name) == before  # nothing half-written
        admin.config_set("maxmemory", "0")
        assert (await h.predict(exp_name)).status_code == 200
        r = await h.client.post(
            f"/v1/experiments/{exp_name}/rewards", json={"event_id": ok["event_id"], "reward": 1}
        )
        assert r.json()["status"] == "applied"
    finally:
        admin.close()
        await h.close()
