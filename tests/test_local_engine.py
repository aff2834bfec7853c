"""``bandit-serve run --engine local`` as a user runs it: its own Redis, workers that
reload the config in place, one-line errors, and a SIGTERM that leaves nothing behind.
(The API itself is tested on every engine in tests/test_engines.py.)"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from tests.conftest import delete_experiment_keys, free_port, run_cli, start_run

ROOT = Path(__file__).resolve().parents[1]

ONE = (
    "experiments:\n"
    "  - name: one\n"
    "    arms:\n"
    "      - {name: a, model: 'tests.fixtures.models:echo_a'}\n"
    "      - {name: b, model: 'tests.fixtures.models:echo_b'}\n"
    "    policy: {kind: epsilon_greedy, epsilon: 0.5}\n"
    "    reward: {kind: bernoulli}\n"
    "    sync_interval_seconds: 0.2\n"
)


def _run(tmp_path: Path, text: str, *extra: str) -> tuple[int, str]:
    """A run that is expected to fail at once: its exit code and output."""
    config = tmp_path / "cfg.yaml"
    config.write_text(text)
    return run_cli(
        tmp_path, "run", str(config), "--engine", "local", "--port", str(free_port()), *extra
    )


def _sleepy(tmp_path: Path, name: str) -> Path:
    """A config of one experiment whose one arm answers after 0.5 s (tests.fixtures)."""
    config = tmp_path / "cfg.yaml"
    config.write_text(
        f"experiments:\n  - name: {name}\n    arms:\n"
        "      - {name: a, model: 'tests.fixtures.models:sleepy'}\n"
        "    policy: {kind: fixed}\n    reward: {kind: bernoulli}\n"
    )
    return config


def _error_lines(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith("error:")]


def test_run_local_serves_reloads_and_sigterm_stops_everything(tmp_path: Path) -> None:
    """Two workers and the Redis it started; a config change reaches both workers in
    place; SIGTERM to the process group (systemd, Kubernetes) stops every process."""
    config = tmp_path / "one.yaml"
    config.write_text(ONE)
    http_port, redis_port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    proc = start_run(
        config,
        "--engine",
        "local",
        "--workers",
        "2",
        "--port",
        str(http_port),
        "--redis-url",
        redis_url,
        cwd=tmp_path,
    )
    base = f"http://127.0.0.1:{http_port}"
    started: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.post(f"{base}/v1/experiments/one/predict", json={"inputs": 1}).is_success:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, "did not come up"
            time.sleep(0.5)
        assert redis.Redis.from_url(redis_url).ping()  # the Redis it started itself
        started = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in started)
        assert "redis-server" in names and "raylet" not in names and "gcs_server" not in names
        workers = [c for c in started if "multiprocessing" in " ".join(c.cmdline())]
        assert len([w for w in workers if "spawn_main" in " ".join(w.cmdline())]) == 2

        config.write_text(ONE.replace("epsilon: 0.5}", "epsilon: 0.5}\n    baseline: b"))

        def every_worker_reloaded() -> bool:
            views = [httpx.get(f"{base}/v1/experiments/one").json() for _ in range(8)]
            return all(v["baseline"] == "b" for v in views)

        deadline = time.monotonic() + 60
        while not every_worker_reloaded():
            assert time.monotonic() < deadline, "the workers did not reload the config"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        began = time.monotonic()
        out, _ = proc.communicate(timeout=60)
    stopped_in = time.monotonic() - began
    _, alive = psutil.wait_procs(started, timeout=max(0.1, 15 - stopped_in))
    assert not alive, [p.cmdline() for p in alive]
    assert proc.returncode == 0, out[-3000:]
    assert "bandit-serve is up" in out and "local engine, 2 worker(s)" in out
    assert f"config {config} changed: reloaded" in out
    assert "bandit-serve stopped" in out and stopped_in < 15
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(redis_url, socket_connect_timeout=1).ping()


def test_a_model_that_does_not_load_is_one_line_naming_its_arm(
    tmp_path: Path, redis_url: str
) -> None:
    bad = ONE.replace("tests.fixtures.models:echo_b", "tests.fixtures.models:no_such_model")
    code, out = _run(tmp_path, bad, "--redis-url", redis_url)
    errors = _error_lines(out)
    assert code == 2 and len(errors) == 1, out
    assert errors[0].startswith("error: the model of experiment one arm b did not load:")
    assert "no_such_model" in errors[0] and "Traceback" not in out


def test_what_the_local_engine_cannot_do_is_one_line_each(tmp_path: Path, redis_url: str) -> None:
    deployment = ONE.replace(
        "{name: b, model: 'tests.fixtures.models:echo_b'}",
        "{name: b, model: {kind: deployment, app: ranking, deployment: RankerV2}}",
    )
    code, out = _run(tmp_path, deployment, "--redis-url", redis_url)
    assert code == 2 and _error_lines(out) == [
        "error: arm 'b' of experiment 'one' is a Ray Serve deployment (ranking/RankerV2); "
        "only the Ray Serve engine can call it"
    ], out
    code, out = _run(tmp_path, ONE, "--address", "127.0.0.1:1")
    assert code == 2 and len(_error_lines(out)) == 1 and "--address" in out, out
    code, out = _run(tmp_path, ONE, "--engine", "ray", "--workers", "2")
    assert code == 2 and _error_lines(out) == [
        "error: --workers is for --engine local; Ray scales with --router-replicas"
    ], out
    code, out = _run(tmp_path, ONE, "--engine", "spark")
    assert code == 2 and "--engine 'spark' is not one of: ray, local" in out, out
    code, out = _run(tmp_path, ONE, "--router-replicas", "4", "--model-batch-size", "8")
    assert code == 2 and _error_lines(out) == [
        "error: --router-replicas, --model-batch-size is for --engine ray (Ray Serve's "
        "replicas and batching); the local engine scales with --workers"
    ], out


def test_a_full_worker_answers_503_with_retry_after_and_records_nothing(
    tmp_path: Path, redis_url: str, exp_name: str
) -> None:
    """The local engine bounds what a worker holds (max_ongoing_requests plus
    max_queued_requests), as Ray Serve bounds a router replica's queue."""
    import asyncio

    from bandit_serve.service.local import create_local_app
    from bandit_serve.service.options import AppArgs
    from tests.conftest import delete_experiment_keys, serve_in_thread

    config = _sleepy(tmp_path, exp_name)
    args = AppArgs(
        config=str(config),
        redis_url=redis_url,
        max_ongoing_requests=2,
        max_queued_requests=1,
        retry_after_s=2.5,
    )
    try:
        with serve_in_thread(create_local_app(args, watch_interval=0)) as base:

            async def burst() -> list[httpx.Response]:
                async with httpx.AsyncClient(base_url=base, timeout=10) as c:
                    path = f"/v1/experiments/{exp_name}/predict"
                    return await asyncio.gather(
                        *(c.post(path, json={"inputs": i}) for i in range(6))
                    )

            answers = asyncio.run(burst())
            codes = sorted(r.status_code for r in answers)
            assert codes == [200, 200, 200, 503, 503, 503], [r.text for r in answers]
            for r in answers:
                if r.status_code == 503:
                    assert r.headers["retry-after"] == "3"
                    assert "nothing was recorded" in r.json()["detail"]
            assert httpx.get(f"{base}/healthz").status_code == 200
            (arm,) = httpx.get(f"{base}/v1/experiments/{exp_name}").json()["arms"]
            assert arm["pulls"] == 3
    finally:
        delete_experiment_keys(redis_url, exp_name)


def test_a_config_change_made_while_a_worker_starts_is_not_missed(
    tmp_path: Path, redis_url: str
) -> None:
    """A worker reads the config, loads its models, then starts watching the file: a
    change written in between must still reach it (it missed it before: CI saw one of
    two workers keep the old config for good)."""
    import uuid

    from bandit_serve.service.local import create_local_app
    from bandit_serve.service.options import AppArgs
    from tests.conftest import serve_in_thread

    name = f"race{uuid.uuid4().hex[:8]}"
    text = ONE.replace("name: one", f"name: {name}")
    config = tmp_path / "one.yaml"
    config.write_text(text)
    app = create_local_app(AppArgs(config=str(config), redis_url=redis_url), watch_interval=0.05)
    config.write_text(text.replace("epsilon: 0.5}", "epsilon: 0.5}\n    baseline: b"))
    os.utime(config, (time.time() + 5,) * 2)  # a coarse clock could give the same mtime
    with serve_in_thread(app) as base:
        deadline = time.monotonic() + 10
        while httpx.get(f"{base}/v1/experiments/{name}").json()["baseline"] != "b":
            assert time.monotonic() < deadline, "the change made during start-up was missed"
            time.sleep(0.1)


def test_a_client_that_goes_away_leaves_no_decision_behind(
    tmp_path: Path, redis_url: str, exp_name: str
) -> None:
    """uvicorn does not cancel a handler whose client left; the local engine watches for
    the disconnect, so the decision is withdrawn (no default reward later) while the
    model call still counts. An answered request keeps its decision."""
    from bandit_serve.service.local import create_local_app
    from bandit_serve.service.options import AppArgs
    from tests.conftest import delete_experiment_keys, serve_in_thread

    config = _sleepy(tmp_path, exp_name)
    app = create_local_app(AppArgs(config=str(config), redis_url=redis_url), watch_interval=0)
    path = f"/v1/experiments/{exp_name}/predict"
    body = b'{"inputs": [1]}'
    try:
        with serve_in_thread(app) as base:

            def arm() -> dict[str, int]:
                view = httpx.get(f"{base}/v1/experiments/{exp_name}").json()
                return dict(view["arms"][0])

            port = int(base.rsplit(":", 1)[1])
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(
                    f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                time.sleep(0.15)  # the model (0.5 s) is working: the client leaves
            deadline = time.monotonic() + 10
            while arm()["calls"] < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)
            a = arm()
            assert (a["calls"], a["pulls"], a["withdrawn"], a["pending"]) == (1, 1, 1, 0), a
            assert httpx.post(f"{base}{path}", json={"inputs": [1]}, timeout=5).status_code == 200
            a = arm()
            assert (a["calls"], a["pulls"], a["withdrawn"], a["pending"]) == (2, 2, 1, 1), a
    finally:
        delete_experiment_keys(redis_url, exp_name)


def test_a_reload_that_would_open_the_api_beyond_loopback_is_refused(
    tmp_path: Path, redis_url: str
) -> None:
    """Listening on 0.0.0.0 with auth on: a config change that drops the auth section is
    refused (the running config, auth included, keeps serving); a change that keeps auth
    is applied."""
    from bandit_serve.config import key_digest

    key = "k" * 40
    auth = f"auth:\n  keys:\n    - {{name: ops, sha256: '{key_digest(key)}', scopes: [read]}}\n"
    config = tmp_path / "one.yaml"
    config.write_text(auth + ONE)
    port = free_port()
    proc = start_run(
        config, "--engine", "local", "--host", "0.0.0.0", "--port", str(port),
        "--redis-url", redis_url, cwd=tmp_path,
    )  # fmt: skip
    view = f"http://127.0.0.1:{port}/v1/experiments/one"
    bearer = {"Authorization": f"Bearer {key}"}
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(view, headers=bearer).is_success:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, "did not come up"
            time.sleep(0.5)
        assert httpx.get(view).status_code == 401
        config.write_text(ONE.replace("epsilon: 0.5}", "epsilon: 0.5}\n    baseline: b"))
        time.sleep(3)  # three polls of the file
        assert httpx.get(view).status_code == 401  # still the running config: auth on
        assert httpx.get(view, headers=bearer).json()["baseline"] == "a"
        config.write_text(auth + ONE.replace("epsilon: 0.5}", "epsilon: 0.5}\n    baseline: b"))
        deadline = time.monotonic() + 30
        while httpx.get(view, headers=bearer).json()["baseline"] != "b":
            assert time.monotonic() < deadline, "a change that keeps auth was not applied"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert f"config {config} changed but did not deploy: refusing to serve without an auth" in out
    delete_experiment_keys(redis_url, "one")
