"""A model endpoint that answers at once (``{"inputs": x}`` in, ``x`` out): the upstream
of ``benchmarks/arms.py``. A bare ASGI app, standard library only; run with
``python -m uvicorn benchmarks.upstream:app --http httptools --loop uvloop``."""

import json
from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    out = json.dumps(json.loads(body)["inputs"]).encode() if scope["method"] == "POST" else b"{}"
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": out})
