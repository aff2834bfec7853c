"""`bandit-serve analyze` against a live HTTP server (uvicorn, in-memory store)."""

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
                        {"name": "control", "model": "tests.fixtures.models:echo_a"},
                        {"name": "treatment", "model": "tests.fixtures.models:echo_b"},
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


def test_analyze_prints_the_table_and_explains_its_numbers(server: str) -> None:
    with httpx.Client(base_url=server) as c:
        for i in range(400):
            p = c.post("/v1/experiments/ab/predict", json={"inputs": i}).json()
            reward = 1 if (p["arm"] == "treatment" and i % 3 == 0) or i % 7 == 0 else 0
            c.post("/v1/experiments/ab/rewards", json={"event_id": p["event_id"], "reward": reward})
    result = CliRunner().invoke(app, ["analyze", "ab", "--url", server])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "each arm against control" in out and "two-proportion z-test" in out
    assert "treatment" in out and "sample ratio check" in out
    assert "fixed-horizon" in out and "mSPRT" in out
    bad = CliRunner().invoke(app, ["analyze", "ab", "--url", server, "--baseline", "zz"])
    assert bad.exit_code == 2 and "no arm named 'zz'" in bad.output
