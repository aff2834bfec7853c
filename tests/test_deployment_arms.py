"""On a real Ray Serve (ray.init(num_cpus=2)) and a real Redis: an arm that is a team's
own Serve app, deployed separately in the same Ray instance, called through its handle
(no ModelVersion made for it); beside it an ONNX arm and an HTTP endpoint's arm, each
hosted by a ModelVersion with batching. A config naming a deployment that does not exist
fails at start-up in one line (and ``check`` says so), instead of hanging."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import ray
import yaml
from ray import serve
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression

from bandit_serve.cli import _unloadable
from bandit_serve.config import load_config
from bandit_serve.errors import ConfigError
from bandit_serve.service.serve_app import AppArgs, build_app, model_deployment_name
from tests.conftest import delete_experiment_keys, free_port, serve_in_thread
from tests.fixtures.endpoints import Upstream, json_answer
from tests.fixtures.ranking import RankerV2, ranker_v2_score

ROOT = Path(__file__).resolve().parents[1]
APP = "bandit-arms-e2e"


def write_config(path: Path, name: str, ranker: dict[str, Any], **more: dict[str, Any]) -> Path:
    arms: list[dict[str, Any]] = [
        {"name": "base", "model": "tests.fixtures.models:echo_a"},
        {"name": "ranker", "model": ranker},
        *({"name": arm, "model": model} for arm, model in more.items()),
    ]
    path.write_text(
        yaml.safe_dump(
            {
                "experiments": [
                    {
                        "name": name,
                        "arms": arms,
                        "policy": {"kind": "fixed"},
                        "reward": {"kind": "bernoulli", "wait_seconds": 600},
                        "sync_interval_seconds": 0.1,
                    }
                ]
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def ray_serve() -> Iterator[str]:
    """A Ray instance with Serve on a free port, and the team's "ranking" app in it."""
    port = free_port()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(RankerV2.bind(), name="ranking", route_prefix=None)  # type: ignore[attr-defined]
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_an_arm_that_is_a_running_serve_deployment(
    ray_serve: str, redis_url: str, exp_name: str, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    est = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    onnx = tmp_path / "v3.onnx"
    onnx.write_bytes(to_onnx(est, x[:1]).SerializeToString())
    ref = {"kind": "deployment", "app": "ranking", "deployment": "RankerV2"}
    upstream = Upstream()
    try:
        with serve_in_thread(upstream.app()) as url:
            config = write_config(
                tmp_path / "cfg.yaml",
                exp_name,
                ref,
                v3={"kind": "onnx", "path": str(onnx)},
                ep={"kind": "http", "url": f"{url}/predict", "output_field": "prediction"},
            )
            args = AppArgs(config=str(config), redis_url=redis_url, router_replicas=1)
            run_arms(ray_serve, args, exp_name, est, rng)
    finally:
        delete_experiment_keys(redis_url, exp_name)


def run_arms(
    base_url: str, args: AppArgs, exp_name: str, est: Any, rng: np.random.Generator
) -> None:
    try:
        serve.run(
            build_app(args.model_copy(update={"model_max_batch_size": 4})),
            name=APP,
            route_prefix="/",
        )
        deployments = set(serve.status().applications[APP].deployments)
        assert model_deployment_name(exp_name, "ranker") not in deployments  # no copy of it
        assert model_deployment_name(exp_name, "v3") in deployments
        base = f"{base_url}/v1/experiments/{exp_name}"
        served = Counter[str]()
        direct = serve.get_deployment_handle("RankerV2", app_name="ranking")
        for row in rng.normal(size=(40, 4)).round(3).tolist():
            row[0] = abs(row[0])
            r = httpx.post(f"{base}/predict", json={"inputs": row}, timeout=30)
            assert r.status_code == 200, r.text
            body = r.json()
            served[body["arm"]] += 1
            if body["arm"] == "ranker":
                assert body["prediction"] == ranker_v2_score(row)
                assert body["prediction"] == direct.remote(row).result().tolist()
            elif body["arm"] == "v3":
                assert body["prediction"] == est.predict(np.asarray([row], np.float32))[0]
            elif body["arm"] == "ep":  # a ModelVersion's pooled client, batched
                assert body["prediction"] == json_answer(row)["prediction"]
        assert set(served) == {"base", "ranker", "v3", "ep"}
        # the ONNX arm's contract reaches the router through its handle: 422, nothing logged
        r = httpx.post(f"{base}/predict", json={"inputs": [1.0, 2.0, 3.0]}, timeout=30)
        assert r.status_code == 422 and "the contract of arm 'v3'" in r.text
        # the team's deployment (InputRejected) and the endpoint (400) refusing inputs: 422
        refused = 0
        for _ in range(30):
            r = httpx.post(f"{base}/predict", json={"inputs": [-1.0, 0, 0, 0]}, timeout=30)
            refused += r.status_code == 422
            assert r.status_code == 200 or "refused the inputs" in r.text, r.text
        state = {a["name"]: a for a in httpx.get(base, timeout=30).json()["arms"]}
        rejections = state["ranker"]["input_rejections"] + state["ep"]["input_rejections"]
        assert rejections == refused > 0  # the deployment's InputRejected, the endpoint's 400
        for arm in ("ranker", "ep"):
            a = state[arm]
            assert a["errors"] == 0 and a["calls"] == served[arm] + a["input_rejections"]
    finally:
        serve.delete(APP)


def test_a_deployment_that_does_not_exist_fails_at_start_up_in_one_line(
    ray_serve: str, redis_url: str, exp_name: str, tmp_path: Path
) -> None:
    for ref, want in [
        (
            {"kind": "deployment", "app": "ranking", "deployment": "RankerV3"},
            "Serve application 'ranking' has no deployment 'RankerV3' (it has: RankerV2)",
        ),
        (
            {"kind": "deployment", "app": "search", "deployment": "RankerV2"},
            "no Serve application 'search' is running (running: ranking)",
        ),
    ]:
        config = write_config(tmp_path / "cfg.yaml", exp_name, ref)
        started = time.monotonic()
        with pytest.raises(ConfigError) as err:
            build_app(AppArgs(config=str(config), redis_url=redis_url))
        assert time.monotonic() - started < 10  # an answer, not a hang
        message = str(err.value)
        assert message == f"arm 'ranker' of experiment '{exp_name}': {want}"
        assert "\n" not in message
        # bandit-serve check: the same, one line for the arm
        arms = load_config(config).experiments[0].arms
        assert _unloadable(arms) == [("ranker", want)]
    assert APP not in serve.status().applications
