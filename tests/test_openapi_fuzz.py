"""Schemathesis over /openapi.json, with a key that may do everything: no server error and
no status the spec does not document (a bounded run that fits CI), on real Redis, over
two experiments that switch on what can go wrong (guardrails, sticky units, a shadow
arm; a canary in a layer with bounded rewards)."""

from __future__ import annotations

import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bandit_serve.config import AppConfig, key_digest
from bandit_serve.service.core import BanditService
from bandit_serve.service.http import create_api
from bandit_serve.service.local import LocalModels
from bandit_serve.store import RedisStore
from tests.conftest import REDIS_URL, delete_experiment_keys

KEY = "fuzz-key"
ANSWERED: defaultdict[tuple[str, str], Counter[int]] = defaultdict(Counter)  # route -> statuses
CFG = AppConfig.model_validate(
    {
        "experiments": [
            {
                "name": "fz",
                "arms": [
                    {"name": "a", "model": "tests.fixtures.models:echo_a"},
                    {"name": "b", "model": "tests.fixtures.models:echo_b"},
                ],
                "policy": {"kind": "thompson"},
                "reward": {"kind": "bernoulli"},
                "guardrails": {"rules": [{"metric": "error_rate", "max_increase": 0.02}]},
                "assignment": {"by": "unit_id", "salt": "fz"},
                "shadow": {
                    "rate": 1.0,
                    "arms": [{"name": "s", "model": "tests.fixtures.models:echo_b"}],
                },
            },
            {
                "name": "fz-canary",
                "arms": [
                    {"name": "v1", "model": "tests.fixtures.models:echo_a"},
                    {"name": "v2", "model": "tests.fixtures.models:echo_b"},
                ],
                "baseline": "v1",
                "policy": {
                    "kind": "canary",
                    "candidate": "v2",
                    "steps": [{"weight": 0.1, "min_calls": 10}, {"weight": 0.5}],
                },
                "reward": {"kind": "bounded", "low": 0, "high": 10},
                "guardrails": {
                    "rules": [{"metric": "latency_p99", "max_ratio": 1.5}],
                    "on_violation": "rollback",
                },
                "layer": {"name": "l", "range": [0.0, 0.5]},
            },
        ],
        "auth": {
            "keys": [
                {
                    "name": "all",
                    "sha256": key_digest(KEY),
                    "scopes": ["predict:*", "reward:*", "read", "admin"],
                }
            ]
        },
    }
)
SERVICE = BanditService(CFG, RedisStore.from_url(REDIS_URL), LocalModels(CFG), seed=0)
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", create_api(lambda: SERVICE), headers={"Authorization": f"Bearer {KEY}"}
)


@pytest.fixture(scope="module", autouse=True)
def _fresh_experiments() -> Iterator[None]:
    for name in ("fz", "fz-canary"):
        delete_experiment_keys(REDIS_URL, name)
    yield
    for name in ("fz", "fz-canary"):
        delete_experiment_keys(REDIS_URL, name)


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_server_error_and_no_undocumented_status(case: Any) -> None:
    if "name" in (case.path_parameters or {}):
        # mostly the real experiments, so routes run: one with guardrails, sticky units
        # and a shadow arm, one a canary with a layer and bounded rewards
        which = zlib.crc32(repr((case.body, case.query)).encode()) % 2  # varies by case
        case.path_parameters["name"] = ("fz", "fz-canary")[which]
    response = case.call_and_validate(
        headers={"Authorization": f"Bearer {KEY}"},
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
    ANSWERED[(case.method, case.path)][response.status_code] += 1


def test_the_fuzzing_reached_redis() -> None:
    """Runs after the fuzzing (file order): answers of 200 show that the routes ran on
    Redis, not that every request was refused (a 503 is a documented status too)."""
    predict = ANSWERED[("POST", "/v1/experiments/{name}/predict")]
    view = ANSWERED[("GET", "/v1/experiments/{name}")]
    assert predict[200] > 0 and view[200] > 0, (predict, view)
    assert not any(c[503] for c in ANSWERED.values()), dict(ANSWERED)
