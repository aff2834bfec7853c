"""Arms that are model endpoints over HTTP (JSON, KServe v2, OpenAI-style chat), against
real servers on loopback started here, through the service's HTTP API on a real Redis:
answers equal the server's, refusals are the client's 422, failures are the arm's errors
(and guardrails roll the arm back), and a secret from the environment never leaks."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from bandit_serve.cli import app as cli
from bandit_serve.config import AppConfig
from bandit_serve.config.models import HttpModel
from bandit_serve.errors import ConfigError, InputRejected, ModelError
from bandit_serve.models.http import EndpointError, HttpArm, infer_datatype, tensors
from bandit_serve.service.core import BanditService
from bandit_serve.service.local import LocalModels
from bandit_serve.store import ArmStatus, RedisStore
from tests.conftest import ManualClock, delete_experiment_keys, free_port, serve_in_thread
from tests.fixtures.endpoints import Upstream, chat_answer, json_answer, score
from tests.test_service_api import Harness

SECRET = "tok-7f3e9c1d-NEVER-PRINT-ME"


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[Upstream, str]]:
    state = Upstream()
    with serve_in_thread(state.app()) as url:
        yield state, url


@pytest.fixture
def endpoint(upstream: tuple[Upstream, str]) -> tuple[Upstream, str]:
    state, url = upstream
    state.mode, state.delay, state.token = "ok", 1.0, None
    state.requests.clear()
    return state, url


def config(name: str, arms: dict[str, Any], **exp: Any) -> AppConfig:
    """An experiment whose arms are model references (a string names a function of
    tests.fixtures.models)."""
    exp.setdefault("policy", {"kind": "fixed"})
    exp.setdefault("reward", {"kind": "bernoulli", "wait_seconds": 60})
    return AppConfig.model_validate(
        {
            "experiments": [
                {
                    "name": name,
                    "arms": [
                        {
                            "name": a,
                            "model": m if isinstance(m, dict) else f"tests.fixtures.models:{m}",
                        }
                        for a, m in arms.items()
                    ],
                    "sync_interval_seconds": 0.01,
                    **exp,
                }
            ]
        }
    )


@pytest.fixture
async def harnesses(redis_url: str, exp_name: str) -> AsyncIterator[list[Harness]]:
    """Harnesses the test makes (closed, connections and keys cleaned up at the end)."""
    made: list[Harness] = []
    yield made
    for h in made:
        await h.models.aclose()
        await h.close()
    delete_experiment_keys(redis_url, exp_name)


def harness(made: list[Harness], cfg: AppConfig, redis_url: str, clock: ManualClock) -> Harness:
    """A Harness whose routers wait 10 s for a model (the arms' own timeout_s comes first;
    a busy machine must not turn answers into the router's timeouts)."""
    h = Harness(cfg, RedisStore.from_url(redis_url, clock=clock))
    h.service.model_timeout = 10.0
    for router in h.service.routers.values():
        router.model_timeout = 10.0
    made.append(h)
    return h


async def predict(h: Harness, name: str, inputs: Any) -> tuple[int, Any]:
    r = await h.predict(name, inputs)
    return r.status_code, r.json()


# -- json --------------------------------------------------------------------------------


async def test_json_arms_answer_what_the_endpoint_answers(
    endpoint: tuple[Upstream, str],
    harnesses: list[Harness],
    redis_url: str,
    exp_name: str,
    clock: ManualClock,
) -> None:
    _, url = endpoint
    ref = {"kind": "http", "url": f"{url}/predict", "protocol": "json", "timeout_s": 2.0}
    cfg = config(
        exp_name,
        {"whole": ref, "field": {**ref, "output_field": "prediction.total"}},
        policy={"kind": "fixed", "weights": [1, 1]},
    )
    h = harness(harnesses, cfg, redis_url, clock)
    seen = set()
    for i in range(20):
        inputs = [i, 2.5, -1]
        code, body = await predict(h, exp_name, inputs)
        assert code == 200, body
        want = json_answer(inputs)
        assert body["prediction"] == (
            want if body["arm"] == "whole" else want["prediction"]["total"]
        )
        seen.add(body["arm"])
    assert seen == {"whole", "field"}
    # the endpoint set a cookie on every answer: the arm's shared client keeps none
    assert all("cookie" not in headers for _, headers, _ in endpoint[0].requests)
    state = await h.state(exp_name)
    assert sum(a["calls"] for a in state.values()) == 20
    assert all(a["errors"] == 0 for a in state.values())


# -- kserve-v2 ---------------------------------------------------------------------------


async def test_kserve_v2_arm_sends_tensors_and_returns_the_first_output_reshaped(
    endpoint: tuple[Upstream, str],
    harnesses: list[Harness],
    redis_url: str,
    exp_name: str,
    clock: ManualClock,
) -> None:
    state, url = endpoint
    ref = {"kind": "http", "url": f"{url}/v2/models/ranker/infer", "protocol": "kserve-v2"}
    cfg = config(
        exp_name,
        {"ranker": ref, "norms": {**ref, "output_field": "norms"}},
        policy={"kind": "fixed", "weights": [1, 0]},
    )
    h = harness(harnesses, cfg, redis_url, clock)
    # one row (integers too: the model declares FP32, and gets FP32), then a list of rows
    code, body = await predict(h, exp_name, [1, 2, 3])
    assert code == 200 and body["prediction"] == pytest.approx(score([1, 2, 3]))
    rows = [[0.5, 1.5, -2.0], [3.0, 0.0, 1.0]]
    code, body = await predict(h, exp_name, rows)
    assert code == 200 and body["prediction"] == pytest.approx([score(r) for r in rows])
    sent = [b for path, _, b in state.requests if path.endswith("/infer")]
    assert sent[-1]["inputs"] == [
        {
            "name": "features",
            "shape": [2, 3],
            "datatype": "FP32",
            "data": [0.5, 1.5, -2.0, 3.0, 0.0, 1.0],
        }
    ]
    assert sent[0]["inputs"][0]["shape"] == [1, 3]  # one item: a batch axis added
    metadata_reads = [p for p, _, _ in state.requests if p == "/v2/models/ranker"]
    assert len(metadata_reads) == 1  # read once per arm
    # the output named by output_field, reshaped to its [n, 1]
    arm = HttpArm(HttpModel.model_validate({**ref, "output_field": "norms"}))
    try:
        norms = await arm.apredict(rows)
        assert [len(n) for n in norms] == [1, 1]
        assert [n[0] for n in norms] == pytest.approx([sum(x * x for x in r) ** 0.5 for r in rows])
        with pytest.raises(InputRejected, match="rectangle"):
            await arm.apredict([[1, 2, 3], [1, 2]])
        with pytest.raises(InputRejected, match="FP32 tensor takes finite numbers"):
            await arm.apredict(["a", "b", "c"])
    finally:
        await arm.aclose()


def test_kserve_v2_tensor_rules() -> None:
    assert infer_datatype([1, 2]) == "INT64"
    assert infer_datatype([1, 2.0]) == "FP32"
    assert infer_datatype([3e38, 1e39]) == "FP64"
    assert infer_datatype(["a", "b"]) == "BYTES"
    assert infer_datatype([True]) == "BOOL"
    with pytest.raises(InputRejected, match="mixed"):
        infer_datatype([1, "a"])
    # declared inputs give name and datatype; an object names its tensors
    declared = [{"name": "x", "datatype": "FP64", "shape": [-1, 2]}]
    assert tensors([[1, 2]], declared) == (
        [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1.0, 2.0]}],
        False,
    )
    assert tensors({"ids": [[1, 2], [3, 4]], "mask": [[True, False], [True, True]]}, []) == (
        [
            {"name": "ids", "shape": [2, 2], "datatype": "INT64", "data": [1, 2, 3, 4]},
            {
                "name": "mask",
                "shape": [2, 2],
                "datatype": "BOOL",
                "data": [True, False, True, True],
            },
        ],
        False,
    )
    assert tensors("hello", []) == (
        [{"name": "input-0", "shape": [1], "datatype": "BYTES", "data": ["hello"]}],
        False,
    )
    two = [{"name": "a"}, {"name": "b"}]
    with pytest.raises(InputRejected, match=r"takes 2 inputs \(a, b\)"):
        tensors([1, 2], two)
    with pytest.raises(InputRejected, match="INT64 tensor takes integers"):
        tensors([1.5], [{"name": "n", "datatype": "INT64", "shape": [-1]}])


# -- openai-chat -------------------------------------------------------------------------


async def test_chat_arms_route_among_models_and_prompts(
    endpoint: tuple[Upstream, str],
    harnesses: list[Harness],
    redis_url: str,
    exp_name: str,
    clock: ManualClock,
) -> None:
    state, url = endpoint
    chat = {"kind": "http", "url": f"{url}/v1/chat/completions", "protocol": "openai-chat"}
    arms = {
        "small": {**chat, "model": "tiny-1", "temperature": 0.2},
        "prompt-b": {**chat, "model": "tiny-1", "system": "be brief", "body": {"max_tokens": 7}},
    }
    cfg = config(exp_name, arms, policy={"kind": "fixed", "weights": [1, 1]})
    h = harness(harnesses, cfg, redis_url, clock)
    seen = set()
    for i in range(16):
        inputs: Any = (
            f"hello {i}"
            if i % 2
            else [
                {"role": "system", "content": "from the client"},
                {"role": "user", "content": f"hi {i}"},
            ]
        )
        code, body = await predict(h, exp_name, inputs)
        assert code == 200, body
        arm = body["arm"]
        seen.add(arm)
        messages = [{"role": "user", "content": inputs}] if isinstance(inputs, str) else inputs
        if arm == "prompt-b":
            messages = [{"role": "system", "content": "be brief"}, *messages]
        temperature = 0.2 if arm == "small" else None
        assert body["prediction"] == chat_answer("tiny-1", temperature, messages)
    assert seen == {"small", "prompt-b"}
    bodies = [b for p, _, b in state.requests if p == "/v1/chat/completions"]
    assert {b.get("max_tokens") for b in bodies} == {None, 7}
    assert all("stream" not in b for b in bodies)
    # inputs no chat arm takes: 422 before anything is logged
    before = await h.counted(exp_name)
    for bad in ([1, 2], [{"role": "user"}], {"prompt": "x"}, []):
        code, body = await predict(h, exp_name, bad)
        assert code == 422 and "prompt string or a list of messages" in body["detail"], body
    assert await h.counted(exp_name) == before
    # an upstream 400 (an empty prompt): the client's 422, the arm's rejection
    code, body = await predict(h, exp_name, "")
    assert code == 422 and "answered 400" in body["detail"] and url not in body["detail"]


# -- refusals, failures, guardrails ------------------------------------------------------


async def test_an_upstream_400_or_422_is_the_clients_422_and_the_arms_rejection(
    endpoint: tuple[Upstream, str],
    harnesses: list[Harness],
    redis_url: str,
    exp_name: str,
    clock: ManualClock,
) -> None:
    _, url = endpoint
    arms = {
        "json": {"kind": "http", "url": f"{url}/predict"},
        "kserve": {"kind": "http", "url": f"{url}/v2/models/ranker/infer", "protocol": "kserve-v2"},
    }
    cfg = config(exp_name, arms, policy={"kind": "fixed", "weights": [1, 1]})
    h = harness(harnesses, cfg, redis_url, clock)
    refused = {"json": 0, "kserve": 0}
    for _ in range(20):
        code, body = await predict(h, exp_name, [-1.0, 2.0, 3.0])
        assert code == 422, body
        arm = "json" if "'json'" in body["detail"] else "kserve"
        assert f"answered {400 if arm == 'json' else 422}" in body["detail"]
        refused[arm] += 1
    assert min(refused.values()) > 0
    state = await h.state(exp_name)
    for arm, n in refused.items():
        a = state[arm]
        assert (a["input_rejections"], a["errors"], a["calls"]) == (n, 0, n)
        assert a["pending"] == 0 and a["rewards"] == 0  # no reward can come for a refusal
        assert a["rejection_rate"] == 1.0
    code, _ = await predict(h, exp_name, [1.0, 2.0, 3.0])
    assert code == 200


async def test_down_or_slow_endpoints_are_model_errors_and_guardrails_roll_them_back(
    endpoint: tuple[Upstream, str], redis_url: str, exp_name: str, clock: ManualClock
) -> None:
    state, url = endpoint
    state.mode, state.delay = "slow", 1.0
    dead = f"http://127.0.0.1:{free_port()}/predict"  # nothing listens there
    arms = {
        "base": "echo_a",
        "slow": {"kind": "http", "url": f"{url}/predict", "timeout_s": 0.1},
        "down": {"kind": "http", "url": dead, "timeout_s": 0.5},
        "failing": {
            "kind": "http",
            "url": f"{url}/v2/models/ranker/infer",
            "protocol": "kserve-v2",
            "timeout_s": 0.1,
        },
    }
    g = {"rules": [{"metric": "error_rate", "max_increase": 0.02}], "min_calls": 10}
    cfg = config(exp_name, arms, guardrails=g)
    store = RedisStore.from_url(redis_url, clock=clock)
    models = LocalModels(cfg)
    service = BanditService(cfg, store, models, seed=3, model_timeout=2.0)
    router = service.router(exp_name)
    try:
        failures: dict[str, set[str]] = {}
        for i in range(100):
            if i == 40:
                state.mode = "fail"  # now 503s, promptly
            try:
                await router.predict([1.0, 2.0, 3.0])
            except ModelError as err:
                failures.setdefault(err.arm, set()).add(err.reason.split(":")[0])
        assert failures == {
            "slow": {"EndpointError"},
            "down": {"EndpointError"},
            "failing": {"EndpointError"},
        }
        totals = await store.snapshot(exp_name)
        for arm in ("slow", "down", "failing"):
            assert totals[arm].errors == totals[arm].calls >= 10
        assert totals["base"].errors == 0
        await router.check_guardrails()
        control = await store.control(exp_name)
        assert [control.status(a) for a in ("slow", "down", "failing")] == [
            ArmStatus.ROLLED_BACK
        ] * 3
        for _ in range(10):  # only the baseline serves now
            assert (await router.predict([1.0])).arm == "base"
    finally:
        await models.aclose()
        await store.close()
        delete_experiment_keys(redis_url, exp_name)


async def test_endpoint_errors_name_the_cause_without_the_input() -> None:
    port = free_port()
    arm = HttpArm(HttpModel(kind="http", url=f"http://127.0.0.1:{port}/p?key=abc", timeout_s=0.5))
    try:
        with pytest.raises(EndpointError, match="could not be reached") as err:
            await arm.apredict({"private": "x" * 20})
        assert "xxxxxxxx" not in str(err.value) and "key=abc" not in str(err.value)
    finally:
        await arm.aclose()


# -- secrets -----------------------------------------------------------------------------


async def test_a_secret_from_the_environment_never_leaks(
    endpoint: tuple[Upstream, str],
    harnesses: list[Harness],
    redis_url: str,
    exp_name: str,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    state, url = endpoint
    state.token = f"Bearer {SECRET}"
    monkeypatch.setenv("RANKER_TOKEN", SECRET)  # a bare token: sent as "Bearer <token>"
    auth = {"Authorization": "RANKER_TOKEN"}
    rows = {
        "kserve": {
            "kind": "http",
            "url": f"{url}/v2/models/ranker/infer",
            "protocol": "kserve-v2",
            "headers_from_env": auth,
            "timeout_s": 1.0,
        },
        "json": {
            "kind": "http",
            "url": f"{url}/predict",
            "headers_from_env": auth,
            "timeout_s": 1.0,
        },
    }
    chat = {
        "kind": "http",
        "url": f"{url}/v1/chat/completions",
        "protocol": "openai-chat",
        "model": "tiny-2",
        "headers_from_env": auth,
        "timeout_s": 1.0,
    }
    g = {"rules": [{"metric": "error_rate", "max_increase": 0.5}], "min_calls": 5}
    chat_exp = f"{exp_name}-chat"
    one = config(exp_name, rows, policy={"kind": "fixed", "weights": [1, 1]}, guardrails=g)
    two = config(chat_exp, {"base": "echo_a", "chat": chat}, guardrails=g)
    cfg = AppConfig.model_validate(
        {"experiments": [*one.model_dump()["experiments"], *two.model_dump()["experiments"]]}
    )
    assert SECRET not in cfg.model_dump_json()
    caplog.set_level(logging.DEBUG)  # every logger, httpx and httpcore included
    h = harness(harnesses, cfg, redis_url, clock)
    answers: list[str] = []
    phases: list[tuple[str, str, Any, set[str]]] = [  # until each arm named has answered
        ("ok", exp_name, [1.0, 2.0, 3.0], {"kserve", "json"}),
        ("ok", chat_exp, "hello", {"base", "chat"}),
        ("ok", exp_name, [-1.0, 2.0, 3.0], {"kserve", "json"}),  # refused: 400, 422
        ("fail", exp_name, [1.0, 2.0, 3.0], {"kserve", "json"}),  # 503
        ("fail", chat_exp, "hello", {"chat"}),
        ("slow", exp_name, [1.0, 2.0, 3.0], {"kserve"}),  # no answer within timeout_s
        ("slow", chat_exp, "hello", {"chat"}),
    ]
    for mode, name, inputs, arms in phases:
        state.mode, state.delay = mode, 2.0
        seen: set[str] = set()
        for _ in range(30):
            r = await h.predict(name, inputs)
            answers.append(r.text)
            seen |= {a for a in arms if f"'{a}'" in r.text or f'"arm":"{a}"' in r.text}
            if seen == arms:
                break
        assert seen == arms, (mode, name, seen)
    state.mode = "ok"
    for arm in ("kserve", "json", "chat"):
        assert any(f'"arm":"{arm}","prediction"' in a for a in answers), arm
    assert any("'kserve' refused the inputs" in a for a in answers)
    assert any("'json' refused the inputs" in a for a in answers)
    assert any("'chat' failed (EndpointError)" in a for a in answers)
    events = []
    for name in (exp_name, chat_exp):
        await h.service.router(name).check_guardrails()
        base = f"/v1/experiments/{name}"
        for path in ("", "/events", "/timeseries", "/analysis"):
            answers.append((await h.client.get(f"{base}{path}")).text)
        events += await h.store.events(name, None, 1000)
    answers.append((await h.client.get("/metrics")).text)
    answers.append((await h.client.get("/v1/experiments")).text)
    delete_experiment_keys(redis_url, chat_exp)
    # the header reached the endpoint, and nothing else carries the secret
    assert any(hdr.get("authorization") == f"Bearer {SECRET}" for _, hdr, _ in state.requests)
    records = caplog.records
    logs = "\n".join(f"{x.getMessage()} {x.exc_text or ''} {x.args!r}" for x in records)
    for text in [*answers, logs, repr(events), caplog.text]:
        assert SECRET not in text
    # the check command: endpoint reached (the right token), and one line when it is not
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    check = functools.partial(CliRunner().invoke, cli, ["check", str(cfg_file)])
    done = await asyncio.to_thread(check)  # a command: no event loop of ours around it
    assert done.exit_code == 0 and SECRET not in done.output, done.output
    state.token = "Bearer something-else"
    done = await asyncio.to_thread(check)
    assert done.exit_code == 2 and SECRET not in done.output
    lines = [ln for ln in done.output.splitlines() if ln.startswith("error:")]
    # the JSON route answers a GET 405 before looking at credentials: reached, so no line
    assert len(lines) == 2 and all("refused the credentials (401)" in ln for ln in lines), (
        done.output
    )


def test_a_missing_or_unsendable_variable_is_one_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("RANKER_TOKEN", raising=False)
    ref = {
        "kind": "http",
        "url": "http://127.0.0.1:9/v2/models/r/infer",
        "protocol": "kserve-v2",
        "headers_from_env": {"Authorization": "RANKER_TOKEN"},
    }
    cfg = config("e", {"a": "echo_a", "r": ref})
    with pytest.raises(ConfigError, match="environment variable RANKER_TOKEN is not set"):
        LocalModels(cfg)
    from bandit_serve.service.serve_app import _check_start

    with pytest.raises(
        ConfigError, match=r"arm 'r' of experiment 'e': environment variable RANKER_TOKEN"
    ):
        _check_start(cfg)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    r = CliRunner().invoke(cli, ["check", str(path)])
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert r.exit_code == 2 and len(errors) == 1, r.output
    assert errors[0].startswith("error: e/r: endpoint http://127.0.0.1:9/")
    assert "RANKER_TOKEN is not set" in errors[0]
    monkeypatch.setenv("RANKER_TOKEN", f"Bearer {SECRET}\r\nX-Evil: 1")
    with pytest.raises(ConfigError, match="cannot carry") as err:
        LocalModels(cfg)
    assert SECRET not in str(err.value)


def test_check_probes_each_endpoint(endpoint: tuple[Upstream, str], tmp_path: Path) -> None:
    _, url = endpoint
    dead = f"http://127.0.0.1:{free_port()}"
    arms = {
        "json": {"kind": "http", "url": f"{url}/predict"},
        "kserve": {"kind": "http", "url": f"{url}/v2/models/ranker/infer", "protocol": "kserve-v2"},
        "chat": {
            "kind": "http",
            "url": f"{url}/v1/chat/completions",
            "protocol": "openai-chat",
            "model": "m",
        },
        "gone": {"kind": "http", "url": f"{dead}/predict", "timeout_s": 0.5},
        "nomodel": {"kind": "http", "url": f"{url}/v2/models/other/infer", "protocol": "kserve-v2"},
        "wrongpath": {"kind": "http", "url": f"{url}/nothing-here"},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config("e", arms).model_dump(mode="json")))
    r = CliRunner().invoke(cli, ["check", str(path)])
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert r.exit_code == 2, r.output
    assert [e.split(":")[1].strip() for e in errors] == ["e/gone", "e/nomodel", "e/wrongpath"]
    assert "could not be reached (ConnectError)" in errors[0]
    assert "answered 404" in errors[1] and "answered 404 to a probe" in errors[2]
