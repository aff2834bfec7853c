"""`bandit-serve arm ...` and `bandit-serve experiment ...` against a live HTTP server."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from typer.testing import CliRunner

from bandit_serve.cli import app
from bandit_serve.config import AppConfig
from bandit_serve.service.core import BanditService
from bandit_serve.service.http import create_api
from bandit_serve.service.local import LocalModels
from bandit_serve.store import MemoryStore
from tests.conftest import serve_in_thread


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
                }
            ]
        }
    )
    service = BanditService(cfg, MemoryStore(), LocalModels(cfg), seed=3)
    with serve_in_thread(create_api(lambda: service)) as base:
        yield base


def run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.output


def test_actions_and_events_from_the_command_line(server: str) -> None:
    url = ("--url", server)
    code, out = run("arm", "rollback", "ab", "v2", "--reason", "too slow", *url)
    assert code == 0 and "roll back v2: done" in out and "v2 rolled_back" in out, out
    code, out = run("arm", "rollback", "ab", "v2", *url)
    assert code == 0 and "nothing to do" in out
    code, out = run("arm", "rollback", "ab", "v1", *url)
    assert code == 2 and "409" in out and "baseline" in out
    code, out = run("arm", "restore", "ab", "v2", *url)
    assert code == 0 and "v2 active" in out
    assert run("experiment", "pause", "ab", *url)[1].count("Experiment paused") == 1
    assert "Experiment running" in run("experiment", "resume", "ab", *url)[1]
    code, out = run("experiment", "reset", "ab", *url)
    assert code == 2 and "--yes" in out
    code, out = run("experiment", "reset", "ab", "--yes", *url)
    assert code == 0 and "reset: done" in out
    code, out = run("experiment", "promote", "ab", "v2", *url)
    assert code == 0 and "v2 promoted" in out and "v1 retired" in out
    code, out = run("experiment", "events", "ab", *url)
    lines = out.strip().splitlines()
    kinds = [ln.split()[3] for ln in lines]
    assert kinds == [
        "rollback",
        "restore",
        "pause",
        "resume",
        "reset",
        "promote",
    ], out
    assert "by operator: too slow" in lines[0]
    first = lines[0].split()[0]
    code, out = run("experiment", "events", "ab", "--since", first, "--limit", "1", *url)
    assert code == 0 and out.split()[3] == "restore"
    code, out = run("experiment", "pause", "nope", *url)
    assert code == 2 and "404" in out
    assert httpx.get(f"{server}/v1/experiments/ab").json()["state"] == "promoted"


def test_an_unreachable_service_is_one_line(tmp_path: object) -> None:
    code, out = run("experiment", "pause", "ab", "--url", "http://127.0.0.1:9")
    assert code == 2 and "cannot reach http://127.0.0.1:9" in out
