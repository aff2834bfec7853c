"""Request hygiene before any route runs: a body size cap and a JSON nesting cap.

:class:`BodyLimitMiddleware` reads a request's body as it streams in (with or without a
``Content-Length``), answers 413 as soon as it passes ``max_bytes`` (default 1 MiB)
without handing anything to the app, and answers 422 when a JSON body nests deeper than
``max_depth`` (default 32) — before the JSON parser, whose recursion a deep enough body
would otherwise exhaust. Accepted bodies are replayed to the app unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import numpy as np
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_DEPTH",
    "BodyLimitMiddleware",
    "answer",
    "json_depth",
]

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_DEPTH = 32
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_CLOSE = ((b"connection", b"close"),)  # the rest of a refused body is not read


def json_depth(body: bytes) -> int:
    """How deep a JSON text nests arrays and objects (brackets inside strings ignored)."""
    if body.count(b"[") + body.count(b"{") == 0:
        return 0
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)
    return int(np.cumsum(steps).max())


async def answer(
    send: Send, status: int, detail: str, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """A JSON ``{"detail": ...}`` answer from plain ASGI middleware (before any route)."""
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Caps request bodies and JSON nesting (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        too_big = f"the request body is larger than {self.max_bytes} bytes"
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await answer(send, 400, "the Content-Length header is not a number", _CLOSE)
                    return
                if declared > self.max_bytes:
                    await answer(send, 413, too_big, _CLOSE)
                    return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body: nothing to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await answer(send, 413, too_big, _CLOSE)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        # a body cannot nest deeper than it has opening brackets: most skip the scan
        opening = body.count(b"[") + body.count(b"{")
        if opening > self.max_depth and json_depth(body) > self.max_depth:
            await answer(
                send, 422, f"the JSON body nests deeper than {self.max_depth} levels", _CLOSE
            )
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for a disconnect

        await self.app(scope, replay, send)
