"""Who may call which route: API keys, scopes and per-key quotas, as ASGI middleware.

Every request is mapped to the scope it needs (:func:`required_scope`): predicting in an
experiment needs ``predict:<experiment>`` (or ``predict:*``), posting its rewards
``reward:<experiment>``, every state-changing action ``admin``, every other read
``read`` (``/docs`` and ``/openapi.json`` included); ``/healthz`` and the dashboard's
page and static files are open, ``/metrics`` too unless ``protect_metrics``. A request
without a valid ``Authorization: Bearer <key>`` is answered 401; a valid key without the
scope 403 (``admin`` does not imply ``read``). A key with ``rate_per_second`` spends a
token per request from a bucket shared by all replicas (in the store); an empty bucket
is answered 429 with ``Retry-After``. Without an ``auth`` section everything is open.

The key's name reaches the route in ``scope["state"]["key_name"]`` (the actor of an
action in the audit log).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from bandit_serve.config import ApiKeyConfig, AuthConfig, key_digest
from bandit_serve.service.limits import answer

__all__ = ["AuthMiddleware", "Authenticator", "required_scope"]

OPEN = "open"
_EXP = r"([A-Za-z0-9][A-Za-z0-9_.-]{0,63})"
_RULES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(r"^/healthz$"), OPEN),
    ("GET", re.compile(r"^/dashboard(/.*)?$"), OPEN),
    ("POST", re.compile(rf"^/v1/experiments/{_EXP}/predict$"), "predict:{0}"),
    ("POST", re.compile(rf"^/v1/experiments/{_EXP}/rewards$"), "reward:{0}"),
    ("POST", re.compile(r"^/v1/.*$"), "admin"),
]
Limiter = Callable[[ApiKeyConfig], Awaitable[float | None]]  # -> seconds to wait, or None


def required_scope(method: str, path: str, protect_metrics: bool) -> str:
    """The scope a request needs (``open`` for none)."""
    if path == "/metrics" and method in ("GET", "HEAD"):
        return "read" if protect_metrics else OPEN
    for m, pattern, scope in _RULES:
        if method == m or (m == "GET" and method == "HEAD"):
            found = pattern.match(path)
            if found:
                return scope.format(*found.groups())
    return "read"


def _covers(scopes: list[str], needed: str) -> bool:
    if needed in scopes:
        return True
    kind, _, _ = needed.partition(":")
    return kind in ("predict", "reward") and f"{kind}:*" in scopes


@dataclass(frozen=True)
class Authenticator:
    """The keys of an ``auth`` section, by digest."""

    config: AuthConfig

    def key_for(self, authorization: str | None) -> ApiKeyConfig | None:
        """The key a ``Bearer`` header carries, if it is one of ours."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        token = authorization[len("Bearer ") :].strip()
        if not token or len(token) > 512:
            return None
        digest = key_digest(token)
        for k in self.config.keys:  # constant-time comparison of every digest
            if hmac.compare_digest(k.sha256, digest):
                return k
        return None


class AuthMiddleware:
    """Checks the key and the scope of every HTTP request before the app sees it."""

    def __init__(
        self,
        app: ASGIApp,
        get_auth: Callable[[], Authenticator | None],
        limiter: Callable[[], Limiter | None],
    ) -> None:
        self.app = app
        self.get_auth = get_auth
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            auth = self.get_auth()
        except RuntimeError:  # the service is not configured yet (a replica starting)
            await answer(send, 503, "starting; retry", [(b"retry-after", b"1")])
            return
        if auth is None:
            await self.app(scope, receive, send)
            return
        needed = required_scope(scope["method"], scope["path"], auth.config.protect_metrics)
        if needed == OPEN:
            await self.app(scope, receive, send)
            return
        header = None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        key = auth.key_for(header)
        if key is None:
            await answer(
                send,
                401,
                "a valid API key is required: Authorization: Bearer <key>",
                [(b"www-authenticate", b'Bearer realm="bandit-serve"')],
            )
            return
        if not _covers(key.scopes, needed):
            await answer(send, 403, f"key {key.name!r} lacks the scope {needed!r}", [])
            return
        limiter = self.limiter()
        if key.rate_per_second is not None and limiter is not None:
            wait = await limiter(key)
            if wait is not None:
                seconds = max(1, int(wait + 0.999))
                await answer(
                    send,
                    429,
                    f"key {key.name!r} is over its quota of {key.rate_per_second:g} requests/s",
                    [(b"retry-after", str(seconds).encode())],
                )
                return
        scope.setdefault("state", {})["key_name"] = key.name
        await self.app(scope, receive, send)
