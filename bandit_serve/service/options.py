"""Run options of the service, in one place: the CLI, ``serve run``/``serve deploy``
(``deployments/serve.yaml``'s ``args``), the local engine's workers and the tests all
build this one model. Options marked "(Ray engine)" do nothing on the local engine.

No Ray here: the CLI imports it at start-up.
"""

from __future__ import annotations

import os

from pydantic import BaseModel, Field

from bandit_serve.config import AppConfig
from bandit_serve.errors import BanditServeError

__all__ = ["DEFAULT_REDIS_URL", "LOOPBACK", "AppArgs", "check_exposure", "resolve_redis_url"]

LOOPBACK = {"127.0.0.1", "localhost", "::1"}

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class AppArgs(BaseModel):
    """Arguments of the app builder (``serve run ...:build_app config=...``)."""

    config: str = Field(description="Experiment config file (YAML).")
    redis_url: str | None = Field(
        None, description="Redis URL (else REDIS_URL, else the config, else local)."
    )
    router_replicas: int = Field(2, ge=1, description="BanditRouter replicas (Ray engine).")
    max_ongoing_requests: int = Field(
        100,
        ge=1,
        description="Requests one router replica works on at once (the local engine: "
        "one worker holds this many plus the queue).",
    )
    max_queued_requests: int = Field(
        500,
        ge=-1,
        description="Queued beyond those; more get 503 + Retry-After (-1: no bound).",
    )
    retry_after_s: float = Field(
        1.0, ge=0, description="Retry-After (seconds, rounded up) on those 503 answers."
    )
    model_max_batch_size: int = Field(
        1,
        ge=1,
        description="Batch concurrent calls to a ModelVersion (@serve.batch) above 1 (Ray engine).",
    )
    model_batch_wait_s: float = Field(
        0.002, ge=0, description="How long a model batch waits to fill (Ray engine)."
    )
    model_timeout_s: float = Field(
        30.0, gt=0, description="A model call slower than this is the arm's error."
    )
    router_own_thread: bool = Field(
        False,
        description="Run the router's code on an event loop and thread of its own, Ray "
        "Serve's default; by default it shares the replica's loop, which costs less CPU "
        "per request (benchmarks/README.md) (Ray engine).",
    )


def resolve_redis_url(args_url: str | None, cfg: AppConfig) -> str:
    """The Redis URL: the argument, else REDIS_URL, else the config file, else local."""
    return args_url or os.environ.get("REDIS_URL") or cfg.redis_url or DEFAULT_REDIS_URL


def check_exposure(cfg: AppConfig, host: str, insecure: bool) -> None:
    """Refuse to serve an open API (no ``auth`` section) beyond this machine: at start-up
    and at every reload of the config (a change that drops ``auth`` while the service
    listens beyond loopback is refused, and the running config keeps serving)."""
    if cfg.auth is None and host not in LOOPBACK and not insecure:
        raise BanditServeError(
            f"refusing to serve without an auth section on {host}: add API keys "
            "(bandit-serve keys new NAME --scopes ...) or pass --insecure"
        )
