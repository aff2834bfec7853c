"""API keys and scopes (the ``auth`` section of a config file).

::

    auth:
      keys:                               # or keys_file: path (same shape, YAML)
        - {name: web, sha256: "<hex of the key>", scopes: ["predict:digits"]}
        - {name: labeler, sha256: "...", scopes: ["reward:digits"], rate_per_second: 200}
        - {name: ops, sha256: "...", scopes: ["admin", "read"]}
      protect_metrics: false
      signing_keys_env: BANDIT_SERVE_SIGNING_KEYS   # "kid1:secret1,kid2:secret2"

Scopes: ``predict:<experiment|*>``, ``reward:<experiment|*>``, ``read`` (GET routes,
analysis, events, ``/docs``, ``/openapi.json``), ``admin`` (every state-changing
action; it does not imply ``read``). Keys are stored only as SHA-256 hex digests.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Self

from pydantic import Field, model_validator

from bandit_serve.config.base import Name, Strict, require_unique

__all__ = ["SCOPE_PATTERN", "ApiKeyConfig", "AuthConfig", "key_digest"]

SCOPE_PATTERN = r"^(?:(?:predict|reward):(?:\*|[A-Za-z0-9][A-Za-z0-9_.-]{0,63})|read|admin)$"
Scope = Annotated[str, Field(pattern=SCOPE_PATTERN)]


def key_digest(key: str) -> str:
    """The SHA-256 hex digest under which a key is configured."""
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeyConfig(Strict):
    """One API key: a name (the actor in the audit log), its digest, its scopes."""

    name: Name
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 hex of the key.")
    scopes: list[Scope] = Field(min_length=1, max_length=64)
    rate_per_second: float | None = Field(
        None, gt=0, le=1e6, description="Requests per second, shared by all replicas."
    )
    burst: int | None = Field(
        None, ge=1, le=10**7, description="Requests allowed at once (default: 1 s of rate)."
    )


class AuthConfig(Strict):
    """Who may call which route. Without this section the service runs open."""

    keys: list[ApiKeyConfig] = Field(default_factory=list)
    keys_file: str | None = Field(None, min_length=1)
    protect_metrics: bool = False
    signing_keys_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @model_validator(mode="after")
    def _keys(self) -> Self:
        if not self.keys and self.keys_file is None:
            raise ValueError("auth needs keys (or a keys_file)")
        require_unique([k.name for k in self.keys], "key names")
        require_unique([k.sha256 for k in self.keys], "key digests")
        return self

    def experiments_named(self) -> set[str]:
        """Experiments the scopes name (to check they exist)."""
        return {s.split(":", 1)[1] for k in self.keys for s in k.scopes if ":" in s} - {"*"}
