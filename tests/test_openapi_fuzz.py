"""Schemathesis over /openapi.json, with a key that may do everything: no server error and
no status the spec does not document (a bounded run that fits CI)."""

from __future__ import annotations

from typing import Any

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
from bandit_serve.store import MemoryStore

KEY = "fuzz-key"
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
            }
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
SERVICE = BanditService(CFG, MemoryStore(), LocalModels(CFG), seed=0)
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", create_api(lambda: SERVICE), headers={"Authorization": f"Bearer {KEY}"}
)


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_server_error_and_no_undocumented_status(case: Any) -> None:
    if "name" in (case.path_parameters or {}):
        case.path_parameters["name"] = "fz"  # mostly the real experiment, so routes run
    case.call_and_validate(
        headers={"Authorization": f"Bearer {KEY}"},
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
