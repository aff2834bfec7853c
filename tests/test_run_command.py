"""`bandit-serve run` as a user runs it: starts its own Redis and Ray, serves, and on
SIGTERM leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import redis

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]


def test_run_starts_local_redis_serves_and_cleans_up_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "one.yaml"
    config.write_text(
        "experiments:\n"
        "  - name: one\n"
        "    arms:\n"
        "      - {name: a, model: 'tests.fixtures.models:echo_a'}\n"
        "      - {name: b, model: 'tests.fixtures.models:echo_b'}\n"
        "    policy: {kind: epsilon_greedy, epsilon: 0.5}\n"
        "    reward: {kind: bernoulli}\n"
    )
    http_port, redis_port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bandit_serve.cli",
            "run",
            str(config),
            "--port",
            str(http_port),
            "--redis-url",
            redis_url,
            "--router-replicas",
            "1",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 180
        ok = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.post(
                    f"http://127.0.0.1:{http_port}/v1/experiments/one/predict",
                    json={"inputs": 1},
                    timeout=5,
                )
                if r.status_code == 200:
                    ok = True
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert ok, "the service did not come up"
        assert redis.Redis.from_url(redis_url).ping()  # the Redis it started itself
        assert (tmp_path / "var" / "redis" / "appendonly.aof").exists() or any(
            (tmp_path / "var" / "redis").glob("appendonly*")
        )
        children = psutil.Process(proc.pid).children(recursive=True)
        assert any("redis-server" in " ".join(c.cmdline()) for c in children)
        assert any(
            "raylet" in " ".join(c.cmdline()) or "gcs_server" in " ".join(c.cmdline())
            for c in children
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "bandit-serve stopped" in out
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
    try:
        redis.Redis.from_url(redis_url, socket_connect_timeout=1).ping()
        raise AssertionError("the Redis the command started is still running")
    except redis.ConnectionError:
        pass


def test_run_without_redis_server_says_how_to_install(tmp_path: Path) -> None:
    config = ROOT / "configs" / "demo.yaml"
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # no redis-server on PATH
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bandit_serve.cli",
            "run",
            str(config),
            "--redis-url",
            f"redis://127.0.0.1:{free_port()}/0",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "redis-server is not installed" in r.stderr
    assert "apt-get install redis-server" in r.stderr


def test_run_with_a_bad_config_names_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiments: [{name: x}]\n")
    r = subprocess.run(
        [sys.executable, "-m", "bandit_serve.cli", "run", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert f"{bad}: experiments[0].arms: Field required" in r.stderr
