"""The dashboard in a real browser: Debian's Chromium (``/usr/bin/chromium``), driven by
Playwright for Python, against a real service (BanditService over Redis, local models,
uvicorn in a thread).

A demo-like experiment of three arms gets 20 minutes of traffic (a clock shifted into the
past, moved a minute at a time), with rewards and a flaky third arm that a guardrail
flags. The page must load with no console errors, show every arm with the API's numbers,
and show a rollback done through the API within a few seconds. A second replica of the
same experiments with auth on (a ``read`` key, a predict-only key) checks that the page
asks once for a key, keeps it in sessionStorage and sends it only as a Bearer header. With
``BANDIT_SCREENSHOT=docs/dashboard.png`` the test saves a screenshot of that state (the
README shows it).

Chromium missing fails the test (CI installs it: ``./dev test``). Playwright only drives
the system browser; it never downloads one.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from bandit_serve.config import AppConfig, key_digest
from bandit_serve.service.core import BanditService
from bandit_serve.service.http import create_api
from bandit_serve.service.local import LocalModels
from bandit_serve.store import RedisStore
from tests.conftest import delete_experiment_keys, serve_in_thread

CHROMIUM = os.environ.get("BANDIT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[1]
REWARD_P = {"v1": 0.81, "v2": 0.94, "v3": 0.90}
MINUTES = 20
PER_MINUTE = 50
READ_KEY = "read-key-for-the-browser-test"
PREDICT_KEY = "predict-key-for-the-browser-test"
PAUSE_REASON = 'holiday <img src="x" onerror="document.title=1"> freeze'  # shown as text

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# -- the demo-like experiment's models (LocalModels imports them by name) --------------

_latency_rng = random.Random(11)
_v3_rng = random.Random(5)
V3_FAILURES = 0.5  # the guardrail's verdict has a wide margin (p < 1e-6 in trials)


async def _work(median_ms: float) -> None:
    await asyncio.sleep(median_ms / 1000 * _latency_rng.lognormvariate(0, 0.35))


async def model_v1(inputs: Any) -> Any:
    await _work(2)
    return {"digit": 1}


async def model_v2(inputs: Any) -> Any:
    await _work(3)
    return {"digit": 2}


async def model_v3(inputs: Any) -> Any:
    """A broken release: slower, and half of its calls fail."""
    await _work(6)
    if _v3_rng.random() < V3_FAILURES:
        raise RuntimeError("v3 failed on this input")
    return {"digit": 3}


class ShiftedClock:
    """The real time plus an offset the test moves (starts 20 minutes in the past)."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def __call__(self) -> float:
        return time.time() + self.offset


def demo_config(name: str, ab_name: str) -> AppConfig:
    model = "tests.test_dashboard_browser:model_"
    return AppConfig.model_validate(
        {
            "experiments": [
                {
                    "name": name,
                    "arms": [{"name": a, "model": f"{model}{a}"} for a in REWARD_P],
                    "policy": {"kind": "thompson", "min_share": 0.1},
                    "reward": {"kind": "bernoulli", "wait_seconds": 30},
                    "guardrails": {
                        "rules": [
                            {"metric": "error_rate", "max_increase": 0.05},
                            {"metric": "latency_p99", "max_ratio": 5},
                        ],
                        "min_calls": 30,
                        "check_interval_seconds": 0.5,
                        "on_violation": "alert",
                    },
                    "sync_interval_seconds": 0.1,
                },
                {
                    "name": ab_name,
                    "arms": [
                        {"name": "control", "model": f"{model}v1"},
                        {"name": "treatment", "model": f"{model}v2"},
                    ],
                    "policy": {"kind": "fixed"},
                    "reward": {"kind": "bernoulli", "wait_seconds": 30},
                },
            ]
        }
    )


def with_service_loops(service: BanditService, store: RedisStore, app: ASGIApp) -> ASGIApp:
    """The app with the service's background loops (refresh, settle, guardrails) run on
    uvicorn's event loop, as a router replica runs them; stopped, and the store closed,
    when uvicorn shuts down."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                service.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await service.stop()
                await store.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    return wrapped


@dataclass
class Demo:
    base: str
    name: str
    ab_name: str
    redis_url: str


async def _drive(base: str, name: str, clock: ShiftedClock) -> None:
    """MINUTES minutes of traffic, one minute of the shifted clock at a time: predictions
    (8 at a time), then their rewards in one batch."""
    rng = random.Random(3)
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        sem = asyncio.Semaphore(8)

        async def one() -> dict[str, Any] | None:
            async with sem:
                r = await client.post(f"/v1/experiments/{name}/predict", json={"inputs": [1]})
            assert r.status_code in (200, 502), r.text  # 502: v3 failed (counted as an error)
            return r.json() if r.status_code == 200 else None

        for _ in range(MINUTES):
            made = [p for p in await asyncio.gather(*(one() for _ in range(PER_MINUTE))) if p]
            rewards = [
                {"event_id": p["event_id"], "reward": float(rng.random() < REWARD_P[p["arm"]])}
                for p in made
            ]
            r = await client.post(f"/v1/experiments/{name}/rewards", json={"rewards": rewards})
            assert r.json()["counts"]["applied"] == len(rewards), r.text
            clock.offset = min(0.0, clock.offset + 60)


@pytest.fixture(scope="module")
def demo(redis_url: str) -> Iterator[Demo]:
    suffix = uuid.uuid4().hex[:6]
    name, ab_name = f"digits-{suffix}", f"checkout-ab-{suffix}"
    clock = ShiftedClock(-60.0 * MINUTES)
    cfg = demo_config(name, ab_name)
    store = RedisStore.from_url(redis_url, clock=clock)
    service = BanditService(cfg, store, LocalModels(cfg), seed=7)
    app = with_service_loops(service, store, create_api(lambda: service))
    try:
        with serve_in_thread(app) as base:
            asyncio.run(_drive(base, name, clock))
            r = httpx.post(f"{base}/v1/experiments/{ab_name}/pause", json={"reason": PAUSE_REASON})
            assert r.status_code == 200, r.text
            yield Demo(base, name, ab_name, redis_url)
    finally:
        delete_experiment_keys(redis_url, name)
        delete_experiment_keys(redis_url, ab_name)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: `./dev test` installs Debian's "
            "chromium package (apt-get install chromium)."
        )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield b
        b.close()


@contextmanager
def opened(browser: Browser, url: str, **context: Any) -> Iterator[tuple[Page, list[str]]]:
    """A fresh browser context on ``url``; yields the page and the console errors (and
    uncaught exceptions) seen so far."""
    ctx = browser.new_context(**context)
    page = ctx.new_page()
    errors: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            errors.append(f"console: {msg.text} ({msg.location.get('url', '')})")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    try:
        page.goto(url)
        yield page, errors
    finally:
        ctx.close()


def api(base: str, path: str) -> dict[str, Any]:
    r = httpx.get(f"{base}{path}", timeout=10)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def arm_cell(page: Page, arm: str, field: str) -> Any:
    return page.locator(f'#arms tr[data-arm="{arm}"] td[data-field="{field}"]')


def test_the_dashboard_shows_the_apis_numbers_and_a_rollback(demo: Demo, browser: Browser) -> None:
    with opened(browser, f"{demo.base}/dashboard", viewport={"width": 1280, "height": 900}) as (
        page,
        errors,
    ):
        expect(page.locator("#exp-name")).to_have_text(demo.name, timeout=10_000)
        nav = page.locator("#experiments a")
        expect(nav).to_have_count(2)
        expect(page.locator(f'#experiments a[data-experiment="{demo.ab_name}"]')).to_contain_text(
            "paused"
        )

        view = api(demo.base, f"/v1/experiments/{demo.name}")
        assert [a["name"] for a in view["arms"]] == list(REWARD_P)
        assert all(a["status"] == "active" for a in view["arms"])
        for a in view["arms"]:
            row = page.locator(f'#arms tr[data-arm="{a["name"]}"]')
            expect(row).to_have_count(1)
            for field in ("pulls", "rewards", "pending", "errors"):
                expect(arm_cell(page, a["name"], field)).to_have_text(f"{a[field]:,}")
            expect(arm_cell(page, a["name"], "status")).to_have_text(a["status"])
        assert sum(a["pulls"] for a in view["arms"]) == MINUTES * PER_MINUTE
        assert next(a for a in view["arms"] if a["name"] == "v3")["errors"] > 0

        # the charts are drawn from the time buckets, one trace per arm in the legend
        for chart in ("share", "reward", "errors", "latency"):
            legend = page.locator(f"#chart-{chart} .legend .traces")
            expect(legend).to_have_count(3, timeout=10_000)
        expect(page.locator("#chart-share .legend")).to_contain_text("v3")

        # the guardrail flags the flaky arm; the analysis has a row per arm
        flagged = page.locator(
            '#guardrails tr[data-arm="v3"][data-rule="error_rate max_increase=0.05"] '
            'td[data-field="violated"]'
        )
        expect(flagged).to_have_text("violated", timeout=10_000)
        expect(page.locator('#violations li[data-arm="v3"]')).to_have_count(1)
        for arm in REWARD_P:
            expect(page.locator(f'#analysis tr[data-arm="{arm}"]')).to_have_count(1)
        analysis = api(demo.base, f"/v1/experiments/{demo.name}/analysis")
        srm = f"{analysis['srm_p_value']:.3f}" if analysis["srm_p_value"] >= 0.001 else "<0.001"
        expect(page.locator("#srm")).to_contain_text(f"p = {srm}")

        # a rollback through the API shows up within a few seconds (no reload)
        started = time.monotonic()
        r = httpx.post(
            f"{demo.base}/v1/experiments/{demo.name}/arms/v3/rollback",
            json={"reason": "guardrail alert: error rate above the baseline's"},
        )
        assert r.status_code == 200 and r.json()["arms"]["v3"] == "rolled_back", r.text
        expect(arm_cell(page, "v3", "status")).to_have_text("rolled_back", timeout=6_000)
        assert time.monotonic() - started < 6
        newest = page.locator("#events tbody tr").first
        expect(newest.locator('td[data-field="kind"]')).to_have_text("rollback")
        expect(newest.locator('td[data-field="reason"]')).to_have_text(
            "guardrail alert: error rate above the baseline's"
        )
        view = api(demo.base, f"/v1/experiments/{demo.name}")
        for a in view["arms"]:
            expect(arm_cell(page, a["name"], "status")).to_have_text(a["status"])
            expect(arm_cell(page, a["name"], "pulls")).to_have_text(f"{a['pulls']:,}")

        shot = os.environ.get("BANDIT_SCREENSHOT")
        if shot:
            _screenshot(page, ROOT / shot)

        # the other experiment, chosen from the list
        page.locator(f'#experiments a[data-experiment="{demo.ab_name}"]').click()
        expect(page.locator("#exp-name")).to_have_text(demo.ab_name, timeout=6_000)
        expect(page.locator("#exp-state")).to_have_text("paused")
        expect(page.locator("#guardrails-meta")).to_contain_text("No guardrails")
        # a reason from the API is text, never markup
        reason = page.locator('#events tr[data-kind="pause"] td[data-field="reason"]')
        expect(reason).to_have_text(PAUSE_REASON)
        assert page.locator("main img").count() == 0
        assert errors == [], errors


def _screenshot(page: Page, path: Path) -> None:
    """The whole page as a PNG of at most 256 colours (small enough for the README)."""
    from PIL import Image

    page.wait_for_timeout(500)  # let plotly finish drawing
    shot = Image.open(io.BytesIO(page.screenshot(full_page=True)))
    path.parent.mkdir(parents=True, exist_ok=True)
    shot.convert("RGB").quantize(colors=256).save(path, optimize=True)
    assert path.stat().st_size < 300_000, f"{path} is {path.stat().st_size} bytes"


def test_the_dashboard_reads_well_on_a_phone(demo: Demo, browser: Browser) -> None:
    phone = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2}
    with opened(browser, f"{demo.base}/dashboard#/{demo.name}", **phone) as (page, errors):
        expect(arm_cell(page, "v1", "pulls")).not_to_have_text("", timeout=10_000)
        expect(page.locator("#chart-latency .legend .traces")).to_have_count(3, timeout=10_000)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page is {width}px wide on a 390px screen"
        chart = page.locator("#chart-share").bounding_box()
        assert chart is not None and chart["width"] <= 390
        assert errors == [], errors


@pytest.fixture(scope="module")
def secured(demo: Demo) -> Iterator[str]:
    """A second replica of the demo (same Redis) with auth on: a ``read`` key and a key
    that may only predict. Yields its URL."""
    raw = demo_config(demo.name, demo.ab_name).model_dump()
    raw["auth"] = {
        "keys": [
            {"name": "reader", "sha256": key_digest(READ_KEY), "scopes": ["read"]},
            {"name": "app", "sha256": key_digest(PREDICT_KEY), "scopes": [f"predict:{demo.name}"]},
        ]
    }
    cfg = AppConfig.model_validate(raw)
    store = RedisStore.from_url(demo.redis_url)
    service = BanditService(cfg, store, LocalModels(cfg), seed=8)
    with serve_in_thread(with_service_loops(service, store, create_api(lambda: service))) as base:
        yield base


def test_with_auth_on_the_page_asks_once_for_a_key_and_sends_it_as_a_header(
    demo: Demo, secured: str, browser: Browser
) -> None:
    assert httpx.get(f"{secured}/v1/experiments").status_code == 401
    sent: list[tuple[str, str | None]] = []  # (url, authorization) of every request

    with opened(browser, "about:blank") as (page, errors):
        page.on("request", lambda r: sent.append((r.url, r.all_headers().get("authorization"))))
        page.goto(f"{secured}/dashboard")
        dialog = page.locator("#auth")
        expect(dialog).to_be_visible(timeout=10_000)
        expect(page.locator("#auth-error")).to_be_hidden()
        page.locator("#auth-key").fill(READ_KEY)
        page.locator("#auth-form button").click()
        expect(dialog).to_be_hidden()
        expect(page.locator("#exp-name")).to_have_text(demo.name, timeout=10_000)
        expect(arm_cell(page, "v1", "status")).not_to_have_text("")
        assert page.evaluate("sessionStorage.getItem('bandit-serve.api-key')") == READ_KEY
        # a reload in the same tab reuses the stored key: the form does not come back
        before = len(sent)
        page.reload()
        expect(page.locator("#status")).to_contain_text("updated", timeout=10_000)
        expect(page.locator("#exp-name")).to_have_text(demo.name)
        expect(dialog).to_be_hidden()
        after = [u for u, a in sent[before:] if "/v1/" in u and a == f"Bearer {READ_KEY}"]
        assert after, sent[before:]

    api_calls = [(u, a) for u, a in sent if "/v1/" in u]
    without = [u for u, a in api_calls if a != f"Bearer {READ_KEY}"]
    # only the first request went without a key: one form, then the key every time
    assert without == [f"{secured}/v1/experiments"], without
    page_files = [(u, a) for u, a in sent if "/dashboard" in u]
    assert {u.removeprefix(secured) for u, _ in page_files} >= {
        "/dashboard",
        "/dashboard/static/dashboard.js",
        "/dashboard/static/plotly.min.js",
    }
    assert all(a is None for _, a in page_files)  # the page itself needs no key
    assert not any(READ_KEY in u for u, _ in sent)  # never in a URL
    # Chromium logs each 401 answer as a failed resource; nothing else may fail
    others = [e for e in errors if "status of 401" not in e]
    assert others == [], others


def test_a_key_without_the_read_scope_is_asked_to_be_replaced(
    secured: str, browser: Browser
) -> None:
    with opened(browser, "about:blank") as (page, errors):
        # the tab already holds a key that may only predict
        page.add_init_script(f"sessionStorage.setItem('bandit-serve.api-key', '{PREDICT_KEY}')")
        page.goto(f"{secured}/dashboard")
        expect(page.locator("#auth")).to_be_visible(timeout=10_000)
        expect(page.locator("#auth-error")).to_contain_text("read scope")
        assert page.evaluate("sessionStorage.getItem('bandit-serve.api-key')") is None
        page.locator("#auth-key").fill(READ_KEY)
        page.locator("#auth-form button").click()
        expect(page.locator("#exp-name")).not_to_have_text("", timeout=10_000)
    assert [e for e in errors if "status of 403" not in e] == []


def test_the_page_and_its_files_are_served_with_a_policy_and_compressed(demo: Demo) -> None:
    r = httpx.get(f"{demo.base}/dashboard")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert re.search(r'src="dashboard/static/plotly\.min\.js"', r.text)
    lib = httpx.get(f"{demo.base}/dashboard/static/plotly.min.js")
    assert lib.status_code == 200 and lib.headers["content-encoding"] == "gzip"
    assert b"plotly.js" in lib.content[:200]
    again = httpx.get(
        f"{demo.base}/dashboard/static/plotly.min.js",
        headers={"If-None-Match": lib.headers["etag"]},
    )
    assert again.status_code == 304
    for bad in ("index.html", "..%2F__init__.py", "nope.js"):
        assert httpx.get(f"{demo.base}/dashboard/static/{bad}").status_code == 404
    schema = api(demo.base, "/openapi.json")
    assert not any(p.startswith("/dashboard") for p in schema["paths"])


def test_a_canary_and_its_shadow_arm_are_on_the_page(redis_url: str, browser: Browser) -> None:
    """The rollout cards: a canary's step, weight and phase, and a shadow arm's mirrored
    calls, each equal to the API's."""
    name = f"rollout-{uuid.uuid4().hex[:6]}"
    model = "tests.test_dashboard_browser:model_"
    cfg = AppConfig.model_validate(
        {
            "experiments": [
                {
                    "name": name,
                    "arms": [
                        {"name": "v1", "model": f"{model}v1"},
                        {"name": "v2", "model": f"{model}v2"},
                    ],
                    "baseline": "v1",
                    "policy": {
                        "kind": "canary",
                        "candidate": "v2",
                        "steps": [{"weight": 0.2, "min_calls": 1000}, {"weight": 0.5}],
                    },
                    "reward": {"kind": "bernoulli"},
                    "guardrails": {
                        "rules": [{"metric": "error_rate", "max_increase": 0.05}],
                        "check_interval_seconds": 0.5,
                        "on_violation": "rollback",
                    },
                    "shadow": {"rate": 1.0, "arms": [{"name": "v3", "model": f"{model}v2"}]},
                    "sync_interval_seconds": 0.1,
                }
            ]
        }
    )
    store = RedisStore.from_url(redis_url)
    service = BanditService(cfg, store, LocalModels(cfg), seed=3)
    app = with_service_loops(service, store, create_api(lambda: service))
    try:
        with serve_in_thread(app) as base:
            for _ in range(30):
                r = httpx.post(f"{base}/v1/experiments/{name}/predict", json={"inputs": [1]})
                assert r.status_code == 200, r.text
            deadline = time.monotonic() + 10
            view = api(base, f"/v1/experiments/{name}")
            while view["shadow"][0]["calls"] < 30 or view["canary"]["since"] is None:
                assert time.monotonic() < deadline, view
                time.sleep(0.2)
                view = api(base, f"/v1/experiments/{name}")
            with opened(browser, f"{base}/dashboard#{name}") as (page, errors):
                expect(page.locator("#exp-name")).to_have_text(name, timeout=10_000)
                canary = page.locator("#canary")
                expect(canary).to_be_visible()
                card = view["canary"]
                for key in ("phase", "step"):
                    value = page.locator(f'#canary-body dd[data-key="{key}"]')
                    expect(value).to_have_text(str(card[key]))
                assert (card["phase"], card["step"]) == ("running", 1)
                expect(page.locator('#canary-body dd[data-key="weight"]')).to_contain_text("20")
                row = page.locator('#shadow-table tr[data-arm="v3"]')
                expect(row).to_have_count(1)
                expect(row.locator('td[data-field="calls"]')).to_have_text("30")
                expect(row.locator('td[data-field="errors"]')).to_have_text("0")
                assert errors == []
    finally:
        delete_experiment_keys(redis_url, name)
